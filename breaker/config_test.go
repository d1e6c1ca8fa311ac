package breaker

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	got := Config{}.settings()
	want := settings{consecutive: 5, ratio: 0.5, minRequests: 20, window: 10 * time.Second,
		openTimeout: 10 * time.Second, halfOpen: 1}
	if got != want {
		t.Fatalf("defaults %+v, want %+v", got, want)
	}
	// Written zeros turn the rules off; other fields keep their defaults.
	got = Config{ConsecutiveFailures: ptr(0), FailureRatio: ptr(0.25)}.settings()
	if got.consecutive != 0 || got.ratio != 0.25 || got.minRequests != 20 {
		t.Fatalf("settings %+v", got)
	}
	got = Config{FailureRatio: ptr(0.0)}.settings()
	if got.consecutive != 5 || got.ratio != 0 {
		t.Fatalf("settings %+v", got)
	}
	// Values beyond what the breaker can hold are clamped (ranges are the
	// codec's job; New must not misbehave on Go-built values).
	got = Config{ConsecutiveFailures: ptr(-3), FailureRatio: ptr(math.NaN()), HalfOpenRequests: 1 << 20,
		Window: 3, MinRequests: math.MaxInt}.settings()
	if got.consecutive != 0 || got.ratio != 0 || got.halfOpen != maxHalfOpen || got.window != WindowBuckets ||
		got.minRequests != math.MaxUint32 {
		t.Fatalf("clamped settings %+v", got)
	}
	if got := (Config{FailureRatio: ptr(7.0)}).settings().ratio; got != 1 {
		t.Fatalf("ratio %v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{}, {ConsecutiveFailures: ptr(0)}, {FailureRatio: ptr(0.0)}, {ConsecutiveFailures: ptr(1), FailureRatio: ptr(1.0)}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	err := Config{ConsecutiveFailures: ptr(0), FailureRatio: ptr(0.0)}.Validate()
	if err == nil || !strings.Contains(err.Error(), "never open") {
		t.Fatalf("both rules off: %v", err)
	}
}

// The JSON names are the contract of issue 10; the engine's strict codec reads
// them (durations as strings), encoding/json is used here only for the names.
func TestConfigJSONNames(t *testing.T) {
	js, err := json.Marshal(Config{ConsecutiveFailures: ptr(5), FailureRatio: ptr(0.5), MinRequests: 20,
		Window: 1, OpenTimeout: 1, HalfOpenRequests: 1})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"consecutiveFailures":5,"failureRatio":0.5,"minRequests":20,"window":1,"openTimeout":1,"halfOpenRequests":1}`
	if string(js) != want {
		t.Fatalf("got %s\nwant %s", js, want)
	}
	if js, _ := json.Marshal(Config{}); string(js) != "{}" {
		t.Fatalf("zero Config: %s", js)
	}
}
