package retry

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/internal/backoff"
)

// Defaults of the fields of Config and its sections, used when a field is
// omitted (nil or zero in Go).
const (
	DefaultMaxAttempts        = 3
	DefaultBackoffBase        = 25 * time.Millisecond
	DefaultBackoffMax         = time.Second
	DefaultJitter             = "full"
	DefaultBudgetRatio        = 0.2
	DefaultBudgetMinPerSecond = 10
	DefaultBudgetWindow       = 10 * time.Second
	DefaultHedgeDelay         = "p95"
	DefaultHedgeMaxExtra      = 1
)

const (
	minHedgeDelay, maxHedgeDelay           = time.Millisecond, time.Hour
	minHedgePercentile, maxHedgePercentile = 50.0, 99.9
	minStatus, maxStatus                   = 100, 599
	statusWords                            = maxStatus/64 + 1 // of Policy's status bit set
	conditionNames                         = "connect_error, reset, gateway_error, overloaded, timeout, server_error"
)

// The retryOn conditions (after Envoy's retry_on conditions, named as the
// outcome classes are, except "reset"), and the outcome class each stands
// for.
var conditions = [...]struct {
	name  string
	class outcome.Class
}{
	{"connect_error", outcome.ConnectError},
	{"reset", outcome.LocalError},
	{"gateway_error", outcome.GatewayError},
	{"overloaded", outcome.Overloaded},
	{"timeout", outcome.Timeout},
	{"server_error", outcome.ServerError},
}

// defaultRetryOn is the retryOn list used when the field is omitted.
var defaultRetryOn = []string{"connect_error", "reset", "gateway_error", "overloaded"}

// Config is a retry policy: the "retry" section of the balancer's
// configuration, the same JSON for the HTTP and the gRPC front door. The
// section being absent turns retries off. In JSON, with every field written:
//
//	{"maxAttempts": 3, "perTryTimeout": "500ms",
//	 "retryOn": ["connect_error", "reset", "gateway_error", "overloaded", "timeout"],
//	 "retryableStatuses": [502, 503, 504], "retryableCodes": ["UNAVAILABLE"],
//	 "backoff": {"base": "25ms", "max": "1s", "jitter": "full"},
//	 "budget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"},
//	 "hedge": {"delay": "p95", "maxExtra": 1}}
//
// An omitted field (nil or zero in Go) takes its default; "retry": {} is a
// policy of defaults. Every numeric and duration field carries a `range` tag,
// which the configuration's JSON decoder checks for every written field
// (zero included) and balancer.CheckRanges checks for Go-built values (the
// engine's Config.Validate calls it on this section); Validate checks names
// and the rules between fields. Durations are strings in JSON ("25ms").
//
// What is retried: a failed attempt whose outcome class is in RetryOn, or
// whose HTTP status is in RetryableStatuses, or whose gRPC code is in
// RetryableCodes, provided the retry is safe (see Policy.Retryable: a
// non-idempotent request is never sent twice), MaxAttempts is not reached, the
// caller's deadline leaves time, and the service's Budget allows it.
type Config struct {
	// MaxAttempts is the most attempts one request makes, the first
	// included: 1 means no retry (and no hedge). Hedges count here too: a
	// request sends at most min(Hedge.MaxExtra, MaxAttempts-1) hedges, and
	// its retries after them the attempts left. Default 3; range [1, 10].
	MaxAttempts int `json:"maxAttempts,omitzero" range:"[1, 10]"`

	// PerTryTimeout bounds each attempt (the caller's deadline still bounds
	// the whole request, every attempt and backoff included); an attempt cut
	// by it ends as outcome.Timeout, retried only if "timeout" is in
	// RetryOn. Default 0: no per-try bound; range [0, 1h].
	PerTryTimeout time.Duration `json:"perTryTimeout,omitzero" range:"[0, 1h]"`

	// RetryOn lists the failure conditions that are retried, by name:
	//
	//   - "connect_error": the connection could not be made
	//     (outcome.ConnectError); the request never left.
	//   - "reset": the transport failed before a response arrived
	//     (outcome.LocalError: connection reset, stream refused, ...).
	//   - "gateway_error": HTTP 502, 503, 504; gRPC UNAVAILABLE
	//     (outcome.GatewayError).
	//   - "overloaded": HTTP 429; gRPC RESOURCE_EXHAUSTED
	//     (outcome.Overloaded). The retry goes to another endpoint, after the
	//     server's Retry-After (capped, see Policy.Delay).
	//   - "timeout": a per-try timeout, or gRPC DEADLINE_EXCEEDED from the
	//     server (outcome.Timeout).
	//   - "server_error": HTTP 500, 501, 505+; gRPC INTERNAL, UNKNOWN,
	//     DATA_LOSS (outcome.ServerError).
	//
	// Default (nil): connect_error, reset, gateway_error, overloaded; written
	// as [] it retries no class (only RetryableStatuses and RetryableCodes).
	// "timeout" and "server_error" are not retried by default: a request
	// that timed out or failed inside the server was probably processed, and
	// retrying work a slow or failing service already did is how retries
	// turn a slowdown into an outage. A request that was never sent
	// (outcome.NotSent) is always retryable and needs no name here.
	RetryOn []string `json:"retryOn,omitzero"`

	// RetryableStatuses lists HTTP statuses retried in addition to RetryOn's
	// classes, such as 409. Each in [100, 599]. Default none (the default
	// classifier already sorts 502, 503 and 504 into gateway_error).
	RetryableStatuses []int `json:"retryableStatuses,omitzero"`

	// RetryableCodes lists gRPC status codes retried in addition to RetryOn's
	// classes, by their canonical names as in gRPC service configs
	// ("UNAVAILABLE", "ABORTED", "CANCELLED", ...; not "OK"). Default none
	// (UNAVAILABLE is already gateway_error).
	RetryableCodes []string `json:"retryableCodes,omitzero"`

	// Backoff spaces retries out; see BackoffConfig.
	Backoff BackoffConfig `json:"backoff,omitzero"`

	// Budget caps retries per service; see BudgetConfig.
	Budget BudgetConfig `json:"budget,omitzero"`

	// Hedge turns on hedging; nil (absent) means off. See HedgeConfig.
	Hedge *HedgeConfig `json:"hedge,omitempty"`
}

// BackoffConfig is the retry policy's "backoff" section: the delay before
// retry n (0 for the first) is drawn by Jitter from the exponential step
// min(Max, Base·2ⁿ). The definitions are the AWS Architecture Blog's
// ("Exponential Backoff And Jitter"): "full" draws from [0, step], "equal"
// from [step/2, step], "decorrelated" from [Base, 3·previous delay], capped at
// Max (so it stays within [Base, Max]).
type BackoffConfig struct {
	// Base is the first retry's step. Default 25ms; range [1ms, 1m].
	Base time.Duration `json:"base,omitzero" range:"[1ms, 1m]"`
	// Max caps every delay, the server's Retry-After included. Default 1s,
	// or Base if that is longer; range [1ms, 1h], and when written not less
	// than Base (Validate).
	Max time.Duration `json:"max,omitzero" range:"[1ms, 1h]"`
	// Jitter is "full" (the default), "equal" or "decorrelated".
	Jitter string `json:"jitter,omitempty"`
}

// BudgetConfig is the retry policy's "budget" section: Finagle's (and
// Linkerd's) retry budget, one per service. A retry (or hedge) is made only
// if, with it, the retries of the last Window stay within Ratio × the
// requests of the last Window plus MinPerSecond × Window (the window slides
// a tenth at a time); otherwise the request fails with its last real error.
// So a storm of T seconds, with every attempt failing, makes at most
// Ratio × requests + MinPerSecond × (T + Window) retries: the reserve is
// there at the start and renews each window. See Budget.
type BudgetConfig struct {
	// Ratio is the retries allowed per request, over the window. Default
	// 0.2; range [0, 1]; 0 leaves only MinPerSecond.
	Ratio *float64 `json:"ratio,omitempty" range:"[0, 1]"`
	// MinPerSecond is the retries allowed per second whatever the traffic,
	// so that a service with little traffic can still retry. Default 10;
	// range [0, 100000]; 0 leaves only Ratio.
	MinPerSecond *int `json:"minPerSecond,omitempty" range:"[0, 100000]"`
	// Window is how long a request counts towards the budget. Default 10s;
	// range [1s, 1h].
	Window time.Duration `json:"window,omitzero" range:"[1s, 1h]"`
}

// HedgeConfig is the retry policy's "hedge" section: after Delay with no
// answer, the request is sent again to another endpoint (up to MaxExtra
// times, one per Delay, within MaxAttempts), and the first good answer (one
// the policy does not retry) wins; the other attempts are cancelled. Only
// idempotent requests whose body can be replayed are hedged, and hedges
// draw on the same budget as retries. A percentile Delay hedges nothing
// until the service has MinLatencySamples latencies in its window (see
// Hedger).
type HedgeConfig struct {
	// Delay is how long to wait for an answer before hedging: a duration
	// string in [1ms, 1h] ("20ms"), or a percentile of the service's recent
	// latencies, "p" followed by a number in [50, 99.9] ("p95", "p99.9").
	// Default "p95". When PerTryTimeout is set, a fixed Delay must be below
	// it (Validate).
	Delay string `json:"delay,omitempty"`
	// MaxExtra is the most hedges one request sends, beyond its first
	// attempt. Default 1; range [1, 3].
	MaxExtra int `json:"maxExtra,omitzero" range:"[1, 3]"`
}

// Validate reports what is wrong with the names and between the fields:
// unknown or repeated retryOn conditions, statuses and codes; an unknown
// jitter; backoff.max below backoff.base; a budget that allows nothing; a bad
// hedge delay, or a fixed one not below perTryTimeout. Errors name the field
// by its JSON path, as in `retryOn[1]: unknown condition "5xx" (...)`. Each
// number's own range is in its `range` tag (checked by the configuration's
// codec, and by balancer.CheckRanges for Go-built values).
func (c *Config) Validate() error {
	if c == nil {
		return nil
	}
	for i, name := range c.RetryOn {
		if _, ok := conditionClass(name); !ok {
			return fmt.Errorf("retryOn[%d]: unknown condition %q (want one of %s)", i, name, conditionNames)
		}
		if j := slices.Index(c.RetryOn, name); j < i {
			return fmt.Errorf("retryOn[%d]: %q is already retryOn[%d]", i, name, j)
		}
	}
	for i, s := range c.RetryableStatuses {
		if s < minStatus || s > maxStatus {
			return fmt.Errorf("retryableStatuses[%d]: %d is not an HTTP status (want 100-599)", i, s)
		}
		if j := slices.Index(c.RetryableStatuses, s); j < i {
			return fmt.Errorf("retryableStatuses[%d]: %d is already retryableStatuses[%d]", i, s, j)
		}
	}
	for i, name := range c.RetryableCodes {
		code, err := parseCode(name)
		if err != nil {
			return fmt.Errorf("retryableCodes[%d]: %w", i, err)
		}
		if code == codes.OK {
			return fmt.Errorf("retryableCodes[%d]: \"OK\" is not a failure", i)
		}
		if j := slices.Index(c.RetryableCodes, name); j < i {
			return fmt.Errorf("retryableCodes[%d]: %q is already retryableCodes[%d]", i, name, j)
		}
	}
	if err := c.Backoff.validate(); err != nil {
		return err
	}
	if err := c.Budget.validate(); err != nil {
		return err
	}
	if h := c.Hedge; h != nil {
		d, _, err := parseHedgeDelay(cmp.Or(h.Delay, DefaultHedgeDelay))
		if err != nil {
			return fmt.Errorf("hedge.delay: %w", err)
		}
		if d > 0 && c.PerTryTimeout > 0 && d >= c.PerTryTimeout {
			return fmt.Errorf("hedge.delay: %v is not below perTryTimeout (%v), so no hedge would be sent before the attempt is cut", d, c.PerTryTimeout)
		}
	}
	return nil
}

func (b *BackoffConfig) validate() error {
	if b.Jitter != "" {
		if _, err := backoff.ParseJitter(b.Jitter); err != nil {
			return fmt.Errorf("backoff.jitter: %w", err)
		}
	}
	if b.Max != 0 && b.Max < b.effectiveBase() {
		what := "backoff.base"
		if b.Base == 0 {
			what += "'s default"
		}
		return fmt.Errorf("backoff.max: %v is less than %s (%v)", b.Max, what, b.effectiveBase())
	}
	return nil
}

func (b *BackoffConfig) effectiveBase() time.Duration {
	if b.Base > 0 {
		return b.Base
	}
	return DefaultBackoffBase
}

// backoffConfig is the section as an internal/backoff Config, defaults
// applied, values a Go caller built out of range made harmless.
func (b *BackoffConfig) backoffConfig(rnd func() uint64) backoff.Config {
	base := b.effectiveBase()
	limit := b.Max
	if limit <= 0 {
		limit = max(DefaultBackoffMax, base)
	}
	j, err := backoff.ParseJitter(cmp.Or(b.Jitter, DefaultJitter))
	if err != nil {
		j = backoff.Full
	}
	return backoff.Config{Base: base, Max: max(limit, base), Multiplier: 2, Jitter: j, Rand: rnd}.WithDefaults()
}

func (b *BudgetConfig) validate() error {
	ratio, perSecond, _ := b.settings()
	if ratio == 0 && perSecond == 0 {
		return errors.New("budget: ratio and minPerSecond are both 0, so no retry would ever be allowed (set maxAttempts to 1 to turn retries off)")
	}
	return nil
}

// settings returns the budget's values with defaults applied and clamped to
// their ranges.
func (b *BudgetConfig) settings() (ratio float64, minPerSecond int, window time.Duration) {
	ratio, minPerSecond, window = DefaultBudgetRatio, DefaultBudgetMinPerSecond, DefaultBudgetWindow
	if b.Ratio != nil {
		ratio = *b.Ratio
		if !(ratio > 0) { // 0, negative, NaN
			ratio = 0
		}
		ratio = min(ratio, 1)
	}
	if b.MinPerSecond != nil {
		minPerSecond = min(max(*b.MinPerSecond, 0), 100000)
	}
	if b.Window > 0 {
		window = min(max(b.Window, time.Second), time.Hour)
	}
	return ratio, minPerSecond, window
}

// conditionClass returns the outcome class a retryOn name stands for.
func conditionClass(name string) (outcome.Class, bool) {
	for _, c := range conditions {
		if c.name == name {
			return c.class, true
		}
	}
	return 0, false
}

// parseCode returns the gRPC code a canonical name (as in service configs:
// "UNAVAILABLE") stands for, by grpc's own table.
func parseCode(name string) (codes.Code, error) {
	var c codes.Code
	if name == "" || name[0] < 'A' || name[0] > 'Z' { // not a number: grpc's table also reads "14"
		return 0, fmt.Errorf("%q is not a gRPC code name (want one such as \"UNAVAILABLE\")", name)
	}
	if err := c.UnmarshalJSON([]byte(strconv.Quote(name))); err != nil {
		return 0, fmt.Errorf("%q is not a gRPC code name (want one such as \"UNAVAILABLE\")", name)
	}
	return c, nil
}

// parseHedgeDelay parses a hedge delay: a duration string in [1ms, 1h], or
// "p" and a percentile in [50, 99.9] written with digits and at most one
// point. Exactly one of d and percentile is non-zero on success.
func parseHedgeDelay(s string) (d time.Duration, percentile float64, err error) {
	if num, ok := strings.CutPrefix(s, "p"); ok {
		dots := 0
		for i := 0; i < len(num); i++ {
			switch {
			case num[i] == '.':
				dots++
			case num[i] < '0' || num[i] > '9':
				dots = 2
			}
		}
		p, perr := strconv.ParseFloat(num, 64)
		if num == "" || dots > 1 || perr != nil || num[0] == '.' || num[len(num)-1] == '.' {
			return 0, 0, fmt.Errorf("%q is not a percentile (want one such as \"p95\" or \"p99.9\")", s)
		}
		if p < minHedgePercentile || p > maxHedgePercentile {
			return 0, 0, fmt.Errorf("%q is out of range [p50, p99.9]", s)
		}
		return 0, p, nil
	}
	d, err = time.ParseDuration(s)
	if err != nil {
		return 0, 0, fmt.Errorf("%q is neither a duration (\"20ms\") nor a percentile (\"p95\")", s)
	}
	if d < minHedgeDelay || d > maxHedgeDelay {
		return 0, 0, fmt.Errorf("%v is out of range [1ms, 1h]", d)
	}
	return d, 0, nil
}
