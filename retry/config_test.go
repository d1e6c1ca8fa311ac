package retry_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/retry"
)

// carrier is a test algorithm whose options hold a retry section, so that the
// engine's strict codec (which the balancer's Config will use for "retry")
// decodes and checks retry.Config exactly as it will in production.
type carrier struct {
	Retry retry.Config `json:"retry"`
}

func (*carrier) Name() string                             { return "retry-carrier" }
func (*carrier) Build(balancer.BuildInfo) balancer.Picker { return nil }
func (c *carrier) Validate() error {
	if err := balancer.CheckRanges(c); err != nil {
		return err
	}
	return c.Retry.Validate()
}

func init() { balancer.Register("retry-carrier", func() balancer.Algorithm { return &carrier{} }) }

// decode reads a retry section through the strict codec.
func decode(t *testing.T, js string) (retry.Config, error) {
	t.Helper()
	a, err := balancer.NewAlgorithm("retry-carrier", json.RawMessage(`{"retry": `+js+`}`))
	if err != nil {
		return retry.Config{}, err
	}
	return a.(*carrier).Retry, nil
}

// The contract JSON decodes through the strict codec, validates, and
// means what it says.
func TestConfigContractJSON(t *testing.T) {
	const contract = `{"maxAttempts": 3, "perTryTimeout": "500ms",
	  "retryOn": ["connect_error", "reset", "gateway_error", "overloaded", "timeout"],
	  "retryableStatuses": [502, 503, 504], "retryableCodes": ["UNAVAILABLE"],
	  "backoff": {"base": "25ms", "max": "1s", "jitter": "full"},
	  "budget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"},
	  "hedge": {"delay": "p95", "maxExtra": 1}}`
	c, err := decode(t, contract)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxAttempts != 3 || c.PerTryTimeout != 500*time.Millisecond || len(c.RetryOn) != 5 ||
		len(c.RetryableStatuses) != 3 || c.RetryableCodes[0] != "UNAVAILABLE" ||
		c.Backoff != (retry.BackoffConfig{Base: 25 * time.Millisecond, Max: time.Second, Jitter: "full"}) ||
		*c.Budget.Ratio != 0.2 || *c.Budget.MinPerSecond != 10 || c.Budget.Window != 10*time.Second ||
		*c.Hedge != (retry.HedgeConfig{Delay: "p95", MaxExtra: 1}) {
		t.Fatalf("decoded %+v", c)
	}
	p, err := retry.NewPolicy(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := p.Hedge(); !ok || h != (retry.Hedge{Percentile: 95, MaxExtra: 1}) {
		t.Fatalf("hedge %+v %v", h, ok)
	}
	if p.MaxAttempts() != 3 || p.PerTryTimeout() != 500*time.Millisecond {
		t.Fatalf("policy %d %v", p.MaxAttempts(), p.PerTryTimeout())
	}
	// An empty section is a policy of defaults.
	c, err = decode(t, `{}`)
	if err != nil {
		t.Fatal(err)
	}
	p, err = retry.NewPolicy(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Hedge(); ok || p.MaxAttempts() != retry.DefaultMaxAttempts || p.PerTryTimeout() != 0 {
		t.Fatalf("defaults: hedge %v, attempts %d, per-try %v", ok, p.MaxAttempts(), p.PerTryTimeout())
	}
}

// What the strict codec rejects, each error naming the field.
func TestConfigStrictCodec(t *testing.T) {
	for _, tc := range []struct{ js, want string }{
		{`{"maxAttempts": 0}`, "maxAttempts: 0 is out of range [1, 10]"},
		{`{"maxAttempts": 11}`, "maxAttempts: 11 is out of range [1, 10]"},
		{`{"maxAttempt": 2}`, `unknown field "maxAttempt", did you mean "maxAttempts"?`},
		{`{"perTryTimeout": 500}`, `perTryTimeout: want a duration string`},
		{`{"perTryTimeout": "2h"}`, "perTryTimeout: 2h0m0s is out of range [0, 1h]"},
		{`{"backoff": {"base": "0s"}}`, "backoff.base: 0s is out of range [1ms, 1m]"},
		{`{"backoff": {"max": "2h"}}`, "backoff.max: 2h0m0s is out of range [1ms, 1h]"},
		{`{"backoff": {"base": "100ms", "max": "50ms"}}`, "backoff.max: 50ms is less than backoff.base (100ms)"},
		{`{"backoff": {"jitter": "none"}}`, `backoff.jitter: unknown jitter "none"`},
		{`{"budget": {"ratio": 1.5}}`, "budget.ratio: 1.5 is out of range [0, 1]"},
		{`{"budget": {"minPerSecond": -1}}`, "budget.minPerSecond: -1 is out of range [0, 100000]"},
		{`{"budget": {"window": "100ms"}}`, "budget.window: 100ms is out of range [1s, 1h]"},
		{`{"budget": {"ratio": 0, "minPerSecond": 0}}`, "budget: ratio and minPerSecond are both 0"},
		{`{"hedge": {"maxExtra": 4}}`, "hedge.maxExtra: 4 is out of range [1, 3]"},
		{`{"hedge": {"delay": "p100"}}`, `hedge.delay: "p100" is out of range [p50, p99.9]`},
		{`{"retryOn": ["reset", "5xx"]}`, `retryOn[1]: unknown condition "5xx"`},
		{`{"retryableStatuses": [503, 99]}`, "retryableStatuses[1]: 99 is not an HTTP status (want 100-599)"},
		{`{"retryableCodes": ["Unavailable"]}`, `retryableCodes[0]: "Unavailable" is not a gRPC code name`},
	} {
		_, err := decode(t, tc.js)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.js, err, tc.want)
		}
	}
	// Written zeros that the ranges admit mean what they say.
	c, err := decode(t, `{"perTryTimeout": "0s", "retryOn": [], "budget": {"ratio": 0}}`)
	if err != nil {
		t.Fatal(err)
	}
	if c.RetryOn == nil || len(c.RetryOn) != 0 || *c.Budget.Ratio != 0 {
		t.Fatalf("decoded %+v", c)
	}
}

// The range tags parse, and hold what the fields' documentation says, under
// the codec's own checker (balancer.CheckRanges, for Go-built values).
func TestConfigRanges(t *testing.T) {
	zero, one, half := 0, 1.0, 0.5
	ok := []retry.Config{
		{},
		{MaxAttempts: 1, PerTryTimeout: time.Hour, Backoff: retry.BackoffConfig{Base: time.Millisecond, Max: time.Hour},
			Budget: retry.BudgetConfig{Ratio: &one, MinPerSecond: &zero, Window: time.Second}, Hedge: &retry.HedgeConfig{MaxExtra: 3}},
		{MaxAttempts: 10, Backoff: retry.BackoffConfig{Base: time.Minute, Max: time.Millisecond},
			Budget: retry.BudgetConfig{Ratio: &half, Window: time.Hour}, Hedge: &retry.HedgeConfig{MaxExtra: 1}},
	}
	for _, c := range ok {
		if err := balancer.CheckRanges(&c); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	two, neg := 2.0, -1
	bad := map[string]retry.Config{
		"maxAttempts":         {MaxAttempts: 11},
		"perTryTimeout":       {PerTryTimeout: -time.Second},
		"backoff.base":        {Backoff: retry.BackoffConfig{Base: 2 * time.Minute}},
		"backoff.max":         {Backoff: retry.BackoffConfig{Max: time.Microsecond}},
		"budget.ratio":        {Budget: retry.BudgetConfig{Ratio: &two}},
		"budget.minPerSecond": {Budget: retry.BudgetConfig{MinPerSecond: &neg}},
		"budget.window":       {Budget: retry.BudgetConfig{Window: 2 * time.Hour}},
		"hedge.maxExtra":      {Hedge: &retry.HedgeConfig{MaxExtra: 4}},
	}
	for name, c := range bad {
		err := balancer.CheckRanges(&c)
		if err == nil || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%s: got %v, want an out-of-range error naming it", name, err)
		}
	}
}

// Validate's rules between fields and on names, each error naming the field.
func TestConfigValidate(t *testing.T) {
	zero, fifth := 0, 0.2
	zf := 0.0
	for _, tc := range []struct {
		name string
		cfg  retry.Config
		want string // "" means valid; else a substring of the error
	}{
		{"empty", retry.Config{}, ""},
		{"all conditions", retry.Config{RetryOn: []string{"connect_error", "reset", "gateway_error", "overloaded", "timeout", "server_error"}}, ""},
		{"no conditions", retry.Config{RetryOn: []string{}}, ""},
		{"statuses and codes", retry.Config{RetryableStatuses: []int{100, 409, 599}, RetryableCodes: []string{"UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"}}, ""},
		{"jitters", retry.Config{Backoff: retry.BackoffConfig{Jitter: "decorrelated"}}, ""},
		{"equal jitter", retry.Config{Backoff: retry.BackoffConfig{Jitter: "equal"}}, ""},
		{"base above max default", retry.Config{Backoff: retry.BackoffConfig{Base: 5 * time.Second}}, ""},
		{"max equals base", retry.Config{Backoff: retry.BackoffConfig{Base: time.Second, Max: time.Second}}, ""},
		{"ratio only", retry.Config{Budget: retry.BudgetConfig{MinPerSecond: &zero}}, ""},
		{"min only", retry.Config{Budget: retry.BudgetConfig{Ratio: &zf}}, ""},
		{"fixed hedge", retry.Config{PerTryTimeout: time.Second, Hedge: &retry.HedgeConfig{Delay: "20ms"}}, ""},
		{"percentile hedge", retry.Config{PerTryTimeout: time.Millisecond, Hedge: &retry.HedgeConfig{Delay: "p99.9"}}, ""},
		{"hedge p50", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p50"}}, ""},
		{"default hedge", retry.Config{Hedge: &retry.HedgeConfig{}, Budget: retry.BudgetConfig{Ratio: &fifth}}, ""},

		{"unknown condition", retry.Config{RetryOn: []string{"reset", "5xx"}}, `retryOn[1]: unknown condition "5xx" (want one of connect_error, reset, gateway_error, overloaded, timeout, server_error)`},
		{"class name is not a condition", retry.Config{RetryOn: []string{"local_error"}}, `retryOn[0]: unknown condition "local_error"`},
		{"condition twice", retry.Config{RetryOn: []string{"reset", "timeout", "reset"}}, `retryOn[2]: "reset" is already retryOn[0]`},
		{"status too low", retry.Config{RetryableStatuses: []int{503, 99}}, "retryableStatuses[1]: 99 is not an HTTP status (want 100-599)"},
		{"status too high", retry.Config{RetryableStatuses: []int{600}}, "retryableStatuses[0]: 600 is not an HTTP status"},
		{"status twice", retry.Config{RetryableStatuses: []int{503, 503}}, "retryableStatuses[1]: 503 is already retryableStatuses[0]"},
		{"code in Go's spelling", retry.Config{RetryableCodes: []string{"Unavailable"}}, `retryableCodes[0]: "Unavailable" is not a gRPC code name`},
		{"code as a number", retry.Config{RetryableCodes: []string{"14"}}, `retryableCodes[0]: "14" is not a gRPC code name`},
		{"American CANCELED", retry.Config{RetryableCodes: []string{"CANCELED"}}, `retryableCodes[0]: "CANCELED" is not a gRPC code name`},
		{"code OK", retry.Config{RetryableCodes: []string{"UNAVAILABLE", "OK"}}, `retryableCodes[1]: "OK" is not a failure`},
		{"code twice", retry.Config{RetryableCodes: []string{"ABORTED", "ABORTED"}}, `retryableCodes[1]: "ABORTED" is already retryableCodes[0]`},
		{"unknown jitter", retry.Config{Backoff: retry.BackoffConfig{Jitter: "Full"}}, `backoff.jitter: unknown jitter "Full"`},
		{"max below base", retry.Config{Backoff: retry.BackoffConfig{Base: 100 * time.Millisecond, Max: 50 * time.Millisecond}}, "backoff.max: 50ms is less than backoff.base (100ms)"},
		{"max below default base", retry.Config{Backoff: retry.BackoffConfig{Max: 10 * time.Millisecond}}, "backoff.max: 10ms is less than backoff.base's default (25ms)"},
		{"budget allows nothing", retry.Config{Budget: retry.BudgetConfig{Ratio: &zf, MinPerSecond: &zero}}, "budget: ratio and minPerSecond are both 0"},
		{"hedge garbage", retry.Config{Hedge: &retry.HedgeConfig{Delay: "soon"}}, `hedge.delay: "soon" is neither a duration ("20ms") nor a percentile ("p95")`},
		{"hedge p100", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p100"}}, `hedge.delay: "p100" is out of range [p50, p99.9]`},
		{"hedge p49", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p49.99"}}, `hedge.delay: "p49.99" is out of range`},
		{"hedge p99.99", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p99.99"}}, `out of range [p50, p99.9]`},
		{"hedge p1e2", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p1e2"}}, `hedge.delay: "p1e2" is not a percentile`},
		{"hedge p95.", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p95."}}, `is not a percentile`},
		{"hedge pNaN", retry.Config{Hedge: &retry.HedgeConfig{Delay: "pNaN"}}, `is not a percentile`},
		{"hedge p", retry.Config{Hedge: &retry.HedgeConfig{Delay: "p"}}, `is not a percentile`},
		{"hedge delay too short", retry.Config{Hedge: &retry.HedgeConfig{Delay: "10us"}}, "hedge.delay: 10µs is out of range [1ms, 1h]"},
		{"hedge after per-try timeout", retry.Config{PerTryTimeout: 500 * time.Millisecond, Hedge: &retry.HedgeConfig{Delay: "500ms"}}, "hedge.delay: 500ms is not below perTryTimeout (500ms)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, perr := retry.NewPolicy(tc.cfg, nil); (perr == nil) != (err == nil) {
				t.Fatalf("NewPolicy's error %v disagrees with Validate's %v", perr, err)
			}
		})
	}
	var nilConfig *retry.Config
	if err := nilConfig.Validate(); err != nil {
		t.Fatalf("nil section: %v", err)
	}
}

// The JSON names are the contract: encoding/json writes them back as the
// strict codec reads them, omitted fields stay omitted, and an empty retryOn
// (no class retried) stays distinct from an omitted one (the default).
func TestConfigRoundTrip(t *testing.T) {
	c, err := decode(t, `{"retryOn": [], "backoff": {"jitter": "equal"}, "hedge": {"delay": "20ms"}}`)
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"retryOn":[],"backoff":{"jitter":"equal"},"hedge":{"delay":"20ms"}}`
	if string(js) != want {
		t.Fatalf("encoding/json: %s\nwant %s", js, want)
	}
	back, err := decode(t, string(js))
	if err != nil {
		t.Fatal(err)
	}
	if back.RetryOn == nil || back.Hedge.Delay != "20ms" || back.Backoff.Jitter != "equal" {
		t.Fatalf("round trip: %+v", back)
	}
}
