package debugpage_test

import (
	"encoding/json"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar"
	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/debugpage"
	_ "github.com/lodestar-go/lodestar/resolver/consul" // scheme consul://
)

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// rowRE matches an endpoint's table row and captures its address, state and
// breaker state.
var rowRE = regexp.MustCompile(`<tr class="r-[a-z]+" data-endpoint="([^"]+)" data-state="([^"]*)" data-breaker="([^"]*)">`)

// rows returns, by address, the state and breaker state the page shows.
func rows(t *testing.T, page string) map[string][2]string {
	t.Helper()
	out := map[string][2]string{}
	for _, m := range rowRE.FindAllStringSubmatch(page, -1) {
		out[html.UnescapeString(m[1])] = [2]string{html.UnescapeString(m[2]), html.UnescapeString(m[3])}
	}
	return out
}

// The HTML page shows both balancers and every endpoint with its state:
// the ejected one with its reason and end, the one whose breaker is open,
// the healthy ones eligible; the gRPC channel's endpoints too.
func TestPageShowsEveryEndpoint(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()
	code, html, hdr := get(t, srv.URL+"/")
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %d %s", code, hdr.Get("Content-Type"))
	}
	checkPage(t, f, html)
}

// checkPage checks what the page (as served, or as a browser rendered it)
// says about f's balancers.
func checkPage(t *testing.T, f *fixture, page string) {
	t.Helper()
	got := rows(t, page)
	want := map[string][2]string{
		f.ok1: {"eligible", "closed"}, f.ok2: {"eligible", "closed"},
		f.ejected: {"ejected", "closed"}, f.tripped: {"breaker open", "open"},
	}
	for _, a := range f.grpcAddrs {
		want[a] = [2]string{"eligible", ""}
	}
	for addr, w := range want {
		if g, ok := got[addr]; !ok {
			t.Errorf("the page has no row for %s", addr)
		} else if g != w {
			t.Errorf("%s: the page shows state %q, breaker %q; want %q, %q", addr, g[0], g[1], w[0], w[1])
		}
	}
	for _, s := range []string{
		`data-service="users"`, `data-door="http"`, `data-door="grpc"`,
		"consecutive_gateway_failures, ejected for 10m0s", // why the endpoint is ejected
		"until ",                        // and until when
		"circuit breaker closed → open", // the breaker's trip, as an event
		"eu-west / eu-west-1a",          // a locality
		"static:///" + f.grpcAddrs[0],   // the channel's target
	} {
		if !strings.Contains(html.UnescapeString(page), s) {
			t.Errorf("the page does not show %q", s)
		}
	}
}

// The JSON form carries the same data with the documented schema: the field
// names of Page, balancer.EngineStatus, EndpointStatus, ConditionStatus,
// LatencyStatus and EventStatus are fixed here, so that a change to them is a
// deliberate one (and the docs change with it).
func TestJSONSchema(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()
	code, js, hdr := get(t, srv.URL+"/?format=json")
	if code != 200 || hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("?format=json: %d %s", code, hdr.Get("Content-Type"))
	}
	_, js2, _ := get(t, srv.URL+"/json")
	var page, page2 debugpage.Page
	if err := json.Unmarshal([]byte(js), &page); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(js2), &page2); err != nil {
		t.Fatal(err)
	}
	if len(page.Balancers) != 2 || len(page2.Balancers) != 2 {
		t.Fatalf("%d and %d balancers, want 2 (the HTTP service and the gRPC channel)", len(page.Balancers), len(page2.Balancers))
	}
	var users *balancer.EngineStatus
	for i, b := range page.Balancers {
		if b.Door == "http" && b.Service == "users" {
			users = &page.Balancers[i]
		}
	}
	if users == nil {
		t.Fatal("no http/users balancer in the JSON")
	}
	if users.Discovered != 4 || users.Eligible != 2 || users.Algorithm != "round_robin" {
		t.Errorf("users: %d discovered, %d eligible, %s", users.Discovered, users.Eligible, users.Algorithm)
	}
	for _, es := range users.Endpoints {
		switch es.Address {
		case f.ejected:
			if len(es.Conditions) != 1 || es.Conditions[0].Name != "ejected" || es.Conditions[0].Until == nil ||
				!es.Conditions[0].Until.After(users.At) || es.Ejections != 1 || es.Outcomes["gateway_error"] != 5 {
				t.Errorf("ejected endpoint: %+v", es)
			}
		case f.tripped:
			if es.Breaker != "open" || es.Outcomes["server_error"] < 10 {
				t.Errorf("tripped endpoint: %+v", es)
			}
		case f.ok1:
			if es.Locality.Zone != "eu-west-1a" || es.Weight != 2 || es.Latency.Samples == 0 || es.Latency.P99Millis < es.Latency.P50Millis {
				t.Errorf("ok1: %+v", es)
			}
		}
	}

	// The schema, field by field.
	var raw map[string]any
	if err := json.Unmarshal([]byte(js), &raw); err != nil {
		t.Fatal(err)
	}
	keys := func(v any) []string {
		var ks []string
		for k := range v.(map[string]any) {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}
	expect := func(what string, got []string, want ...string) {
		t.Helper()
		slices.Sort(want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s fields: %q, want %q", what, got, want)
		}
	}
	expect("page", keys(raw), "generatedAt", "balancers")
	var rawUsers map[string]any
	for _, b := range raw["balancers"].([]any) {
		if b.(map[string]any)["service"] == "users" {
			rawUsers = b.(map[string]any)
		}
	}
	expect("balancer", keys(rawUsers), "door", "service", "target", "algorithm", "panicking", "discovered", "eligible",
		"inFlight", "maxInFlightPerEndpoint", "shareWindowSeconds", "endpoints", "events", "at")
	for _, e := range rawUsers["endpoints"].([]any) {
		ep := e.(map[string]any)
		expect("endpoint", keys(ep), "address", "locality", "priority", "weight", "state", "conditions", "breaker",
			"slowStartPercent", "atLimit", "inFlight", "latency", "recentAttempts", "sharePercent", "outcomes", "ejections")
		expect("latency", keys(ep["latency"]), "samples", "ewmaMs", "p50Ms", "p99Ms")
		if ep["address"] == f.ejected {
			expect("condition", keys(ep["conditions"].([]any)[0]), "name", "why", "until")
		}
	}
	ev := rawUsers["events"].([]any)[0]
	expect("event", keys(ev), "at", "kind", "address", "from", "to")
}

// The page only reads: other methods are refused; ?refresh=N adds a meta
// refresh and anything else but a sane number is refused.
func TestReadOnlyAndRefresh(t *testing.T) {
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", resp.StatusCode)
	}
	_, html, _ := get(t, srv.URL+"/?refresh=5")
	if !strings.Contains(html, `<meta http-equiv="refresh" content="5">`) {
		t.Error("?refresh=5 has no meta refresh")
	}
	for _, bad := range []string{"0", "x", "99999", "-1"} {
		if code, body, _ := get(t, srv.URL+"/?refresh="+bad); code != 400 || !strings.Contains(body, "refresh") {
			t.Errorf("?refresh=%s: %d %q", bad, code, body)
		}
	}
	if _, html, _ := get(t, srv.URL+"/"); strings.Contains(html, "http-equiv") {
		t.Error("a meta refresh without ?refresh")
	}
}

// A balancer whose target carries credentials shows on the page redacted,
// and its discovery error (the agent is down) without them.
func TestPageShowsNoSecret(t *testing.T) {
	const token = "s3cr3t-t0ken-4242"
	tr, err := lodestar.NewTransport(lodestar.Options{
		Services: map[string]lodestar.Service{"orders": {
			Target: "consul://127.0.0.1:1/orders?token=" + token,
			Config: balancer.Config{InitialDiscoveryTimeout: 100 * time.Millisecond},
		}},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	eng := tr.Engine("orders")
	deadline := time.Now().Add(10 * time.Second)
	for eng.Status().DiscoveryError == "" {
		if time.Now().After(deadline) {
			t.Fatal("no discovery error from a Consul agent that is not there")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()
	for _, u := range []string{"/", "/json"} {
		_, body, _ := get(t, srv.URL+u)
		if !strings.Contains(body, "orders") || !strings.Contains(body, "127.0.0.1:1") {
			t.Errorf("%s does not show the orders balancer", u)
		}
		if strings.Contains(body, token) {
			t.Errorf("%s shows the Consul token", u)
		}
	}
}

// A closed engine leaves the page.
func TestClosedEngineLeavesThePage(t *testing.T) {
	e, err := balancer.NewEngine(balancer.Config{}, balancer.Options{Service: "short-lived", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(debugpage.Handler())
	defer srv.Close()
	if _, html, _ := get(t, srv.URL+"/"); !strings.Contains(html, "short-lived") {
		t.Fatal("a live engine is not on the page")
	}
	e.Close()
	if _, html, _ := get(t, srv.URL+"/"); strings.Contains(html, "short-lived") {
		t.Fatal("a closed engine is still on the page")
	}
}
