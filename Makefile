# lodestar's one test command is `make test`: vet, then every package's tests
# under the race detector, with a real Consul agent built (once, cached outside
# the repo) by scripts/consul.sh for the Consul feed's tests.
export GOTOOLCHAIN := local
GO ?= go

.PHONY: test vet consul demo bench

test: vet consul
	PATH="$$(dirname "$$(scripts/consul.sh | tail -n 1)"):$$PATH" LODESTAR_REQUIRE_CONSUL=1 \
		$(GO) test -race -count=1 -timeout 30m ./...

vet:
	$(GO) vet ./...

consul:
	scripts/consul.sh

demo:
	$(GO) run ./examples/demo

# Benchmarks are not part of `make test`; see benchmarks/RESULTS.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./benchmarks/
