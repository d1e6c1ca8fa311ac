package balancer

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// A user's algorithm, registered from a test: its options are decoded through
// the same path as the built-in ones' and get the same exactness, nested
// structs, maps, slices and embedded structs included, with nothing to write
// but tags.
type testExactOptions struct {
	Tries   int                        `json:"tries,omitempty" range:"[1, 10]"`
	Backoff time.Duration              `json:"backoff,omitempty" range:"[1ms, 1m]"`
	Ratio   *float64                   `json:"ratio,omitempty" range:"(0, 1]"`
	Label   string                     `json:"label,omitempty"`
	Limits  TestExactLimits            `json:"limits,omitzero"`
	Zones   map[string]TestExactLimits `json:"zones,omitempty"`
	Steps   []TestExactLimits          `json:"steps,omitempty"`
	TestExactEmbedded
	Ramp SlowStart `json:"ramp,omitzero"`
}

// TestExactLimits is a nested section of testExactOptions (exported only so
// that it can be embedded).
type TestExactLimits struct {
	Max  uint16 `json:"max,omitempty" range:"[1, 1000]"`
	Soft bool   `json:"soft,omitempty"`
}

// TestExactEmbedded is embedded in testExactOptions: its fields are promoted.
type TestExactEmbedded struct {
	Priority int8 `json:"priority,omitempty" range:"(-∞, 5]"`
}

func (*testExactOptions) Name() string { return "test_exact" }

func (a *testExactOptions) Validate() error {
	if err := CheckRanges(a); err != nil {
		return err
	}
	if err := inField("limits", CheckRanges(&a.Limits)); err != nil {
		return err
	}
	return a.Ramp.Validate()
}

func (*testExactOptions) Build(info BuildInfo) Picker { return (&RoundRobin{}).Build(info) }

func init() { Register("test_exact", func() Algorithm { return &testExactOptions{Tries: 3} }) }

func TestRegisteredAlgorithmExactness(t *testing.T) {
	opts := func(members string) string { return `{"algorithm": {"test_exact": {` + members + `}}}` }
	for _, tc := range []struct{ js, want string }{
		{opts(`"Tries": 2`), `algorithm test_exact: unknown field "Tries", did you mean "tries"?`},
		{opts(`"BACKOFF": "1s"`), `algorithm test_exact: unknown field "BACKOFF", did you mean "backoff"?`},
		{opts(`"limits": {"Max": 2}`), `algorithm test_exact: limits: unknown field "Max", did you mean "max"?`},
		{opts(`"zones": {"eu": {"SOFT": true}}`), `algorithm test_exact: zones."eu": unknown field "SOFT", did you mean "soft"?`},
		{opts(`"steps": [{"max": 1}, {"mAx": 1}]`), `algorithm test_exact: steps[1]: unknown field "mAx", did you mean "max"?`},
		{opts(`"Priority": 1`), `algorithm test_exact: unknown field "Priority", did you mean "priority"?`},
		{opts(`"ramp": {"Window": "1s"}`), `algorithm test_exact: ramp: unknown field "Window", did you mean "window"?`},
		{opts(`"tries": 0`), "algorithm test_exact: tries: 0 is out of range [1, 10] (omit it for the default)"},
		{opts(`"tries": 11`), "algorithm test_exact: tries: 11 is out of range [1, 10]"},
		{opts(`"backoff": "0s"`), "algorithm test_exact: backoff: 0s is out of range [1ms, 1m] (omit it for the default)"},
		{opts(`"ratio": 0`), "algorithm test_exact: ratio: 0 is out of range (0, 1] (omit it for the default)"},
		{opts(`"limits": {"max": 0}`), "algorithm test_exact: limits.max: 0 is out of range [1, 1000] (omit it for the default)"},
		{opts(`"limits": {"max": 70000}`), "algorithm test_exact: limits.max: 70000 is out of range [1, 1000]"},
		{opts(`"limits": {"max": -1}`), "algorithm test_exact: limits.max: want a non-negative integer, got -1"},
		{opts(`"zones": {"eu": {"max": 1001}}`), `algorithm test_exact: zones."eu".max: 1001 is out of range [1, 1000]`},
		{opts(`"steps": [{"max": 1}, {"max": 0}]`), "algorithm test_exact: steps[1].max: 0 is out of range [1, 1000] (omit it for the default)"},
		{opts(`"priority": 6`), "algorithm test_exact: priority: 6 is out of range (-∞, 5]"},
		{opts(`"priority": 300`), "algorithm test_exact: priority: 300 is out of range (-∞, 5]"},
		{opts(`"ramp": {"aggression": 0}`), "algorithm test_exact: ramp.aggression: 0 is out of range (0, 100] (omit it for the default)"},
		{opts(`"tries": 2, "tries": 2`), `algorithm test_exact: duplicate field "tries"`},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if want := "lodestar config: " + tc.want; err == nil || err.Error() != want {
			t.Errorf("%s:\n got %v\nwant %s", tc.js, err, want)
		}
	}

	// Omitted fields keep the algorithm's own defaults (Tries: 3); written
	// ones in range are taken; the whole round-trips.
	c, err := ParseConfig([]byte(opts(`"backoff": "250ms", "ratio": 1, "limits": {"max": 7}, "zones": {"eu": {"soft": true, "max": 1}},
		"steps": [{"max": 2}], "priority": -100, "ramp": {"window": "1m"}, "label": "x"`)))
	if err != nil {
		t.Fatal(err)
	}
	one := 1.0
	want := &testExactOptions{Tries: 3, Backoff: 250 * time.Millisecond, Ratio: &one, Label: "x", Limits: TestExactLimits{Max: 7},
		Zones: map[string]TestExactLimits{"eu": {Max: 1, Soft: true}}, Steps: []TestExactLimits{{Max: 2}},
		TestExactEmbedded: TestExactEmbedded{Priority: -100}, Ramp: SlowStart{Window: time.Minute}}
	if !reflect.DeepEqual(c.Algorithm, want) {
		t.Fatalf("parsed %+v, want %+v", c.Algorithm, want)
	}
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"backoff":"250ms"`) {
		t.Errorf("durations of a registered algorithm encode as strings: %s", js)
	}
	c2, err := ParseConfig(js)
	if err != nil || !reflect.DeepEqual(c2, c) {
		t.Fatalf("round trip of %s: %+v, %v", js, c2, err)
	}

	// NewAlgorithm, which the gRPC policy's ParseConfig reaches through
	// ParseConfig, applies the same rules.
	if _, err := NewAlgorithm("test_exact", json.RawMessage(`{"tries": 0}`)); err == nil ||
		err.Error() != "algorithm test_exact: tries: 0 is out of range [1, 10] (omit it for the default)" {
		t.Errorf("NewAlgorithm: %v", err)
	}
	if _, err := NewAlgorithm("least_request", json.RawMessage(`{"choicecount": 3}`)); err == nil ||
		!strings.Contains(err.Error(), `unknown field "choicecount", did you mean "choiceCount"?`) {
		t.Errorf("NewAlgorithm: %v", err)
	}

	// Go-built, the zero value is the default and CheckRanges checks the rest.
	if err := (Config{Algorithm: &testExactOptions{}}).Validate(); err != nil {
		t.Error(err)
	}
	if err := (Config{Algorithm: &testExactOptions{Limits: TestExactLimits{Max: 1001}}}).Validate(); err == nil ||
		err.Error() != "lodestar config: algorithm test_exact: limits.max: 1001 is out of range [1, 1000]" {
		t.Errorf("Validate: %v", err)
	}
}

func TestCheckRanges(t *testing.T) {
	nan, negZero := 0.0, 0.0
	nan /= nan
	negZero = -negZero
	type opts struct {
		I   int           `range:"[2, 100]"`
		U   uint          `range:"(1, 9)"`
		F   float32       `range:"(0, ∞)"`
		D   time.Duration `range:"[1µs, 1h]"`
		P   *float64      `range:"[0, 1]"`
		Any string
	}
	for _, tc := range []struct {
		v    opts
		want string // "" for valid
	}{
		{opts{}, ""},
		{opts{I: 2, U: 2, F: 1e30, D: time.Microsecond, P: new(float64)}, ""},
		{opts{F: float32(negZero)}, ""}, // -0 is the zero value
		{opts{I: 1}, "I: 1 is out of range [2, 100]"},
		{opts{I: -1}, "I: -1 is out of range [2, 100]"},
		{opts{U: 1}, "U: 1 is out of range (1, 9)"},
		{opts{U: 9}, "U: 9 is out of range (1, 9)"},
		{opts{F: -0.5}, "F: -0.5 is out of range (0, ∞)"},
		{opts{F: float32(nan)}, "F: NaN is out of range (0, ∞)"},
		{opts{D: time.Nanosecond}, "D: 1ns is out of range [1µs, 1h]"},
		{opts{P: &nan}, "P: NaN is out of range [0, 1]"},
		{opts{P: new(float64(2))}, "P: 2 is out of range [0, 1]"},
	} {
		err := CheckRanges(&tc.v)
		if got := ""; err != nil {
			got = err.Error()
			if got != tc.want {
				t.Errorf("%+v: %q, want %q", tc.v, got, tc.want)
			}
		} else if tc.want != "" {
			t.Errorf("%+v: valid, want %q", tc.v, tc.want)
		}
		if err2 := CheckRanges(tc.v); (err == nil) != (err2 == nil) {
			t.Errorf("%+v: by value %v, by pointer %v", tc.v, err2, err)
		}
	}
	// A malformed tag is reported, not ignored, by CheckRanges and the decoder.
	type bad struct {
		S string `json:"s" range:"[1, 2]"`
	}
	if err := CheckRanges(&bad{}); err == nil || !strings.Contains(err.Error(), "range tag") {
		t.Errorf("string with a range: %v", err)
	}
	if err := decodeStrict([]byte(`{"s": "x"}`), &bad{}); err == nil || !strings.Contains(err.Error(), "range tag") {
		t.Errorf("decoding a string with a range: %v", err)
	}
	for _, tag := range []string{"1, 2", "[1 2]", "[1, ∞]", "[a, 2]", "[1, 2h]"} {
		if _, err := parseRange(tag, reflect.TypeFor[int]()); err == nil {
			t.Errorf("range tag %q parsed", tag)
		}
	}
}

// The codec's edge cases: JSON syntax, trailing data, null, and encoding/json's
// field rules for embedding and name conflicts.
func TestStrictJSON(t *testing.T) {
	type inner struct {
		A int `json:"a"`
		B int `json:"b"`
	}
	type outer struct {
		inner // unexported embedded: not promoted (reflect cannot set through it)
		*TestExactLimits
		B     string `json:"b"`
		C     []int  `json:"c"`
		D     any    `json:"d"`
		E     [2]int `json:"e"`
		Skip  int    `json:"-"`
		Dash  int    `json:"-,"`
		NoTag float64
	}
	var v outer
	err := decodeStrict([]byte(`{"b": "s", "c": [1, 2], "d": {"x": [true]}, "e": [7], "-": 4, "NoTag": 1.5, "max": 5, "soft": true}`), &v)
	if err != nil {
		t.Fatal(err)
	}
	if v.B != "s" || len(v.C) != 2 || v.E != [2]int{7, 0} || v.Dash != 4 || v.NoTag != 1.5 || v.TestExactLimits == nil || v.Max != 5 || !v.Soft {
		t.Fatalf("decoded %+v", v)
	}
	for _, tc := range []struct{ js, want string }{
		{`{"a": 1}`, `unknown field "a"`},
		{`{"Skip": 1}`, `unknown field "Skip"`},
		{`{"notag": 1}`, `unknown field "notag", did you mean "NoTag"?`},
		{`{"e": [1, 2, 3]}`, `e: want at most 2 elements`},
		{`{"c": [1, "x"]}`, `c[1]: want an integer, got "x"`},
		{`{"max": 0}`, `max: 0 is out of range [1, 1000] (omit it for the default)`},
		{`{"b": "s"} x`, `trailing data after JSON value`},
		{`{"b": "s"}]`, `trailing data after JSON value`},
		{`{"b": "s",}`, `invalid character`},
		{`{"b": 1}`, `b: want a string, got 1`},
	} {
		var v outer
		if err := decodeStrict([]byte(tc.js), &v); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.js, err, tc.want)
		}
	}
	// null is "not written": it keeps the default and is not range-checked.
	a := &testExactOptions{Tries: 3}
	if err := decodeStrict([]byte(`{"tries": null, "ratio": null, "limits": null}`), a); err != nil || a.Tries != 3 {
		t.Errorf("null: %+v, %v", a, err)
	}
	// Encoding follows the same field rules and is what decoding reads.
	js, err := encodeJSON(&outer{B: "x", TestExactLimits: &TestExactLimits{Max: 2}, E: [2]int{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"max":2,"b":"x","c":null,"d":null,"e":[1,2],"-":0,"NoTag":0}`; string(js) != want {
		t.Errorf("encoded %s, want %s", js, want)
	}
}
