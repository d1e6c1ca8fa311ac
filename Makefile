# lodestar's one test command is `make test`: vet, then every package's tests
# under the race detector, with a real Consul agent built (once, cached outside
# the repo) by scripts/consul.sh for the Consul feed's tests, and Debian's
# chromium (installed once by scripts/chromium.sh) for the debug page's
# browser test.
export GOTOOLCHAIN := local
GO ?= go

.PHONY: test vet consul chromium demo bench screenshot

test: vet consul chromium
	PATH="$$(dirname "$$(scripts/consul.sh | tail -n 1)"):$$PATH" LODESTAR_REQUIRE_CONSUL=1 \
		LODESTAR_CHROMIUM="$$(scripts/chromium.sh | tail -n 1)" LODESTAR_REQUIRE_CHROMIUM=1 \
		$(GO) test -race -count=1 -timeout 30m ./...

vet:
	$(GO) vet ./...

consul:
	scripts/consul.sh

chromium:
	scripts/chromium.sh

# docs/debug-page.png is the browser test's screenshot.
screenshot: chromium
	LODESTAR_CHROMIUM="$$(scripts/chromium.sh | tail -n 1)" LODESTAR_REQUIRE_CHROMIUM=1 \
		LODESTAR_SCREENSHOT="$(CURDIR)/docs/debug-page.png" \
		$(GO) test -count=1 -run '^TestPageInBrowser$$' -v ./balancer/debugpage/

demo:
	$(GO) run ./examples/demo

# Benchmarks are not part of `make test`; see benchmarks/RESULTS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./benchmarks/
