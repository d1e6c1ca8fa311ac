package balancer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/breaker"
	"github.com/lodestar-go/lodestar/health"
	"github.com/lodestar-go/lodestar/retry"
)

func TestParseConfigAlgorithms(t *testing.T) {
	for _, tc := range []struct {
		js   string
		want Algorithm
	}{
		{`{"algorithm": "round_robin"}`, &RoundRobin{}},
		{`{"algorithm": {"round_robin": {"slowStart": {"window": "30s", "aggression": 2, "minWeightPercent": 5}}}}`,
			&RoundRobin{SlowStart: SlowStart{Window: 30 * time.Second, Aggression: 2, MinWeightPercent: 5}}},
		{`{"algorithm": "weighted_round_robin"}`, &WeightedRoundRobin{}},
		{`{"algorithm": "random"}`, &Random{}},
		{`{"algorithm": "weighted_random"}`, &WeightedRandom{}},
		{`{"algorithm": {"least_request": {"choiceCount": 3, "activeRequestBias": 0}}}`, &LeastRequest{ChoiceCount: 3, ActiveRequestBias: new(float64)}},
		{`{"algorithm": {"peak_ewma": {"decayTime": "5s", "defaultRTT": "10ms", "failurePenalty": "2s"}}}`,
			&PeakEWMA{DecayTime: 5 * time.Second, DefaultRTT: 10 * time.Millisecond, FailurePenalty: 2 * time.Second}},
		{`{"algorithm": {"ring_hash": {"pointsPerEndpoint": 100, "minRingSize": 10, "maxRingSize": 1000, "fallback": "round_robin"}}}`,
			&RingHash{PointsPerEndpoint: 100, MinRingSize: 10, MaxRingSize: 1000, Fallback: "round_robin"}},
		{`{"algorithm": {"maglev": {"tableSize": 251}}}`, &Maglev{TableSize: 251}},
		{`{"algorithm": {"bounded_load": {"balance": 1.5, "pointsPerEndpoint": 50}}}`, &BoundedLoad{Balance: 1.5, PointsPerEndpoint: 50}},
	} {
		c, err := ParseConfig([]byte(tc.js))
		if err != nil {
			t.Errorf("%s: %v", tc.js, err)
			continue
		}
		got, _ := json.Marshal(c.Algorithm)
		want, _ := json.Marshal(tc.want)
		if c.Algorithm.Name() != tc.want.Name() || !bytes.Equal(got, want) {
			t.Errorf("%s: got %s %s, want %s %s", tc.js, c.Algorithm.Name(), got, tc.want.Name(), want)
		}
	}
}

func TestParseConfigAffinity(t *testing.T) {
	c, err := ParseConfig([]byte(`{"algorithm": "maglev", "affinity": {"header": "X-User", "cookie": "sid", "metadata": "x-user", "clientIP": true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := (Affinity{Header: "X-User", Cookie: "sid", Metadata: "x-user", ClientIP: true}); c.Affinity != want {
		t.Fatalf("affinity %+v, want %+v", c.Affinity, want)
	}
}

// Every error names the field it is about (and ranges name the range).
func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ js, want string }{
		{`{"algorithm": "nope"}`, `unknown name "nope"`},
		{`{"algorithm": {"least_request": {"choiceCount": 1}}}`, "choiceCount: 1 is out of range [2, 100]"},
		{`{"algorithm": {"least_request": {"activeRequestBias": -1}}}`, "activeRequestBias: -1 is out of range [0, 100]"},
		{`{"algorithm": {"least_request": {"choices": 3}}}`, `unknown field "choices"`},
		{`{"algorithm": {"least_request": {"choiceCount": "3"}}}`, "choiceCount"},
		{`{"algorithm": {"round_robin": {"slowStart": {"window": "2h"}}}}`, "slowStart.window: 2h0m0s is out of range [0, 1h]"},
		{`{"algorithm": {"round_robin": {"slowStart": {"window": "soon"}}}}`, "slowStart.window"},
		{`{"algorithm": {"weighted_round_robin": {"slowStart": {"aggression": -1}}}}`, "slowStart.aggression: -1 is out of range (0, 100]"},
		{`{"algorithm": {"least_request": {"slowStart": {"minWeightPercent": 101}}}}`, "slowStart.minWeightPercent: 101 is out of range (0, 100]"},
		{`{"algorithm": {"round_robin": {"slowStart": {"windw": "1s"}}}}`, `unknown field "windw"`},
		{`{"algorithm": {"random": {"x": 1}}}`, `unknown field "x"`},
		{`{"algorithm": {"peak_ewma": {"decayTime": "0.5ms"}}}`, "decayTime: 500µs is out of range [1ms, 1h]"},
		{`{"algorithm": {"peak_ewma": {"defaultRTT": "2m"}}}`, "defaultRTT: 2m0s is out of range [1µs, 1m]"},
		{`{"algorithm": {"peak_ewma": {"failurePenalty": "x"}}}`, "failurePenalty"},
		{`{"algorithm": {"ring_hash": {"pointsPerEndpoint": 70000}}}`, "pointsPerEndpoint: 70000 is out of range [1, 65536]"},
		{`{"algorithm": {"ring_hash": {"minRingSize": 2000, "maxRingSize": 1000}}}`, "minRingSize: 2000 is above maxRingSize 1000"},
		{`{"algorithm": {"ring_hash": {"maxRingSize": 99999999}}}`, "maxRingSize: 99999999 is out of range [1, 8388608]"},
		{`{"algorithm": {"ring_hash": {"fallback": "first"}}}`, `fallback: "first" is not one of "random", "round_robin"`},
		{`{"algorithm": {"maglev": {"tableSize": 65536}}}`, "tableSize: 65536 is not a prime"},
		{`{"algorithm": {"maglev": {"tableSize": 16777259}}}`, "tableSize: 16777259 is out of range [3, 16777213]"},
		{`{"algorithm": {"bounded_load": {"balance": 0.9}}}`, "balance: 0.9 is out of range [1, 100]"},
		{`{"affinity": {"header": "X User"}}`, `affinity.header: "X User" is not a valid HTTP header name`},
		{`{"affinity": {"cookie": "a;b"}}`, "affinity.cookie"},
		{`{"affinity": {"metadata": "X-User"}}`, "affinity.metadata"},
		{`{"affinity": {"metadata": "key-bin"}}`, "affinity.metadata"},
		{`{"affinity": {"headr": "x"}}`, `unknown field "headr"`},
		{`{"affinity": {"clientIP": "yes"}}`, "affinity.clientIP"},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.js, err, tc.want)
		}
	}
}

// Go-built configurations are validated the same way.
func TestValidateAlgorithms(t *testing.T) {
	nan := 0.0
	nan /= nan
	for _, a := range []Algorithm{
		&RoundRobin{SlowStart: SlowStart{Window: -1}},
		&RoundRobin{SlowStart: SlowStart{Aggression: nan}},
		&LeastRequest{ActiveRequestBias: &nan},
		&PeakEWMA{DecayTime: -time.Second},
		&RingHash{MinRingSize: -1},
		&Maglev{TableSize: 9},
		&BoundedLoad{Balance: nan},
		&BoundedLoad{PointsPerEndpoint: -1},
	} {
		if err := (Config{Algorithm: a}).Validate(); err == nil {
			t.Errorf("%s %+v validated", a.Name(), a)
		}
	}
	if err := (Config{Algorithm: &Maglev{TableSize: 65537}}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestAlgorithmsRegistered(t *testing.T) {
	got := strings.Join(Algorithms(), ",")
	for _, name := range []string{"bounded_load", "least_request", "maglev", "peak_ewma", "random", "ring_hash", "round_robin", "weighted_random", "weighted_round_robin"} {
		if !strings.Contains(got, name) {
			t.Errorf("%s not registered (have %s)", name, got)
		}
	}
}

// A section of the configuration: where its fields are written, and the path
// errors give them.
type section struct {
	name string              // as errors name it, e.g. "algorithm least_request: slowStart", "outlierDetection.successRate"
	wrap func(string) string // puts `"field": value` members where the section's fields go
}

func in(format string) func(string) string {
	return func(members string) string { return fmt.Sprintf(format, members) }
}

// sections lists every section of the configuration and every algorithm's
// options, built-in ones; TestConfigTablesCoverEveryField keeps it complete.
var sections = []section{
	{"", in(`{%s}`)},
	{"affinity", in(`{"affinity": {%s}}`)},
	{"algorithm round_robin", in(`{"algorithm": {"round_robin": {%s}}}`)},
	{"algorithm round_robin: slowStart", in(`{"algorithm": {"round_robin": {"slowStart": {%s}}}}`)},
	{"algorithm weighted_round_robin", in(`{"algorithm": {"weighted_round_robin": {%s}}}`)},
	{"algorithm weighted_round_robin: slowStart", in(`{"algorithm": {"weighted_round_robin": {"slowStart": {%s}}}}`)},
	{"algorithm random", in(`{"algorithm": {"random": {%s}}}`)},
	{"algorithm weighted_random", in(`{"algorithm": {"weighted_random": {%s}}}`)},
	{"algorithm least_request", in(`{"algorithm": {"least_request": {%s}}}`)},
	{"algorithm least_request: slowStart", in(`{"algorithm": {"least_request": {"slowStart": {%s}}}}`)},
	{"algorithm peak_ewma", in(`{"algorithm": {"peak_ewma": {%s}}}`)},
	{"algorithm ring_hash", in(`{"algorithm": {"ring_hash": {%s}}}`)},
	{"algorithm maglev", in(`{"algorithm": {"maglev": {%s}}}`)},
	{"algorithm bounded_load", in(`{"algorithm": {"bounded_load": {%s}}}`)},
	{"healthCheck", healthCheckWrap},
	{"healthCheck.http", in(`{"healthCheck": {"http": {%s}}}`)},
	{"healthCheck.grpc", in(`{"healthCheck": {"grpc": {%s}}}`)},
	{"healthCheck.tcp", in(`{"healthCheck": {"tcp": {%s}}}`)},
	{"outlierDetection", in(`{"outlierDetection": {%s}}`)},
	{"outlierDetection.successRate", in(`{"outlierDetection": {"successRate": {%s}}}`)},
	{"outlierDetection.failurePercentage", in(`{"outlierDetection": {"failurePercentage": {%s}}}`)},
	{"outlierDetection.latency", in(`{"outlierDetection": {"latency": {%s}}}`)},
	{"circuitBreaker", in(`{"circuitBreaker": {%s}}`)},
	{"retry", in(`{"retry": {%s}}`)},
	{"retry.backoff", in(`{"retry": {"backoff": {%s}}}`)},
	{"retry.budget", in(`{"retry": {"budget": {%s}}}`)},
	{"retry.hedge", in(`{"retry": {"hedge": {%s}}}`)},
}

// healthCheckWrap puts members in the healthCheck section, which must say
// exactly one kind of check: a TCP check, unless the members say the kind
// themselves (spelled exactly; a misspelled kind is an unknown field).
func healthCheckWrap(members string) string {
	for _, kind := range []string{`"http"`, `"grpc"`, `"tcp"`} {
		if strings.HasPrefix(members, kind+":") {
			return `{"healthCheck": {` + members + `}}`
		}
	}
	if members == "" {
		return `{"healthCheck": {"tcp": {}}}`
	}
	return `{"healthCheck": {"tcp": {}, ` + members + `}}`
}

// sectionType returns the Go type of a section, found from its name: an
// algorithm's options type ("algorithm least_request"), then, after ": ", the
// path of a section within it ("algorithm least_request: slowStart"), or the
// path of a section within Config ("", "affinity", "outlierDetection.latency").
func sectionType(t *testing.T, name string) reflect.Type {
	t.Helper()
	typ, path := reflect.TypeFor[Config](), name
	if rest, ok := strings.CutPrefix(name, "algorithm "); ok {
		alg, nested, _ := strings.Cut(rest, ": ")
		a, err := NewAlgorithm(alg, nil)
		if err != nil {
			t.Fatal(err)
		}
		typ, path = reflect.TypeOf(a).Elem(), nested
	}
	if path == "" {
		return typ
	}
	for part := range strings.SplitSeq(path, ".") {
		ti := typeInfoOf(typ)
		i, ok := ti.byName[part]
		if !ok {
			t.Fatalf("section %q: %v has no field %q", name, typ, part)
		}
		typ = ti.fields[i].typ
		if typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct {
			t.Fatalf("section %q: field %q is a %v, not a section", name, part, typ)
		}
	}
	return typ
}

// sectionFields returns the JSON field names of a section, from its Go type.
func sectionFields(t *testing.T, name string) []string {
	t.Helper()
	var names []string
	for _, f := range typeInfoOf(sectionType(t, name)).fields {
		names = append(names, f.name)
	}
	return names
}

// subsections returns the names of the sections nested in the section name:
// its fields that are structs or pointers to structs (the Algorithm interface
// and time.Duration are neither), named as errors name them.
func subsections(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	for _, f := range typeInfoOf(sectionType(t, name)).fields {
		typ := f.typ
		if typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct {
			continue
		}
		switch {
		case name == "":
			out = append(out, f.name)
		case strings.HasPrefix(name, "algorithm ") && !strings.Contains(name, ": "):
			out = append(out, name+": "+f.name)
		default:
			out = append(out, name+"."+f.name)
		}
	}
	return out
}

// goodValues holds a valid value for every field of every section, by name.
var goodValues = map[string]string{
	"algorithm": `"random"`, "affinity": `{"header": "X-A"}`, "allowEmpty": "true",
	"waitForEndpoints": `"1s"`, "initialDiscoveryTimeout": `"3s"`,
	"maxInFlightPerEndpoint": `10`, "panicThreshold": `30`,
	"header": `"X-A"`, "cookie": `"sid"`, "metadata": `"x-a"`, "clientIP": "true",
	"slowStart": `{"window": "10s"}`, "window": `"10s"`, "aggression": "2", "minWeightPercent": "20",
	"choiceCount": "3", "activeRequestBias": "0.5",
	"decayTime": `"5s"`, "defaultRTT": `"10ms"`, "failurePenalty": `"2s"`,
	"pointsPerEndpoint": "100", "minRingSize": "10", "maxRingSize": "100000", "fallback": `"round_robin"`,
	"tableSize": "251", "balance": "1.5",
	// healthCheck: jitter is at most the interval (default 5s), and
	// noTrafficInterval at least the interval.
	"healthCheck": `{"tcp": {}}`, "http": `{"path": "/healthz"}`, "grpc": `{"service": "grpc.health.v1.Health"}`, "tcp": `{}`,
	"interval": `"10s"`, "timeout": `"2s"`, "jitter": `"1s"`, "unhealthyThreshold": "3", "healthyThreshold": "2",
	"noTrafficInterval": `"60s"`, "path": `"/healthz?full=1"`, "expectedStatuses": `[[200, 299], [304, 304]]`, "host": `"api.example.com"`, "scheme": `"https"`,
	"service": `"grpc.health.v1.Health"`,
	// outlierDetection: maxEjectionTime is at least baseEjectionTime (default 30s).
	"outlierDetection": `{}`, "consecutiveFailures": "5", "consecutiveGatewayFailures": "5",
	"consecutiveLocalOriginFailures": "5", "consecutiveConnectionFailures": "5", "failureAccrual": "false", "baseEjectionTime": `"30s"`, "maxEjectionTime": `"300s"`,
	"maxEjectionPercent": "10", "successRate": `{}`, "failurePercentage": `{}`, "latency": `{}`,
	"endEjectionOnHealthy": "true", "minimumHosts": "5", "requestVolume": "100", "stdevFactor": "1.9",
	"threshold": "85", "quantile": "0.9", "factor": "3",
	// circuitBreaker ("consecutiveFailures" and "window" are above too).
	"circuitBreaker": `{}`, "failureRatio": "0.5", "minRequests": "20", "openTimeout": `"10s"`, "halfOpenRequests": "1",
	// retry ("window" is above too; "jitter" is the backoff's in retry.backoff, see sectionGoodValues).
	"retry": `{}`, "maxAttempts": "3", "perTryTimeout": `"500ms"`, "retryOn": `["connect_error", "timeout"]`,
	"retryableStatuses": `[502, 503]`, "retryableCodes": `["UNAVAILABLE"]`, "backoff": `{"base": "10ms"}`,
	"budget": `{"ratio": 0.1}`, "hedge": `{"delay": "20ms"}`, "base": `"25ms"`, "max": `"1s"`,
	"ratio": "0.2", "minPerSecond": "10", "delay": `"p95"`, "maxExtra": "2",
}

// sectionGoodValues overrides goodValues for a field of one section, keyed
// "section.field", where a name means different things in two sections.
var sectionGoodValues = map[string]string{
	"retry.backoff.jitter": `"decorrelated"`,
}

// goodValue returns a valid value of field in section sec.
func goodValue(sec, field string) (string, bool) {
	if v, ok := sectionGoodValues[sec+"."+field]; ok {
		return v, true
	}
	v, ok := goodValues[field]
	return v, ok
}

// caseVariants returns spellings of name that differ from it only in case.
func caseVariants(name string) []string {
	vs := []string{strings.ToLower(name), strings.ToUpper(name), strings.ToUpper(name[:1]) + name[1:]}
	var out []string
	for _, v := range vs {
		if v != name && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// Field names are exact: every field of every section, spelled in another
// case, is an unknown field, and the error names it, where it is, and the
// right spelling. Spelled right, each is accepted.
func TestParseConfigFieldNamesExact(t *testing.T) {
	for _, sec := range sections {
		fields := sectionFields(t, sec.name)
		for _, f := range fields {
			good, ok := goodValue(sec.name, f)
			if !ok {
				t.Errorf("section %q: no good value for field %q in goodValues", sec.name, f)
				continue
			}
			js := sec.wrap(fmt.Sprintf("%q: %s", f, good))
			if _, err := ParseConfig([]byte(js)); err != nil {
				t.Errorf("%s: %v", js, err)
			}
			for _, v := range caseVariants(f) {
				js := sec.wrap(fmt.Sprintf("%q: %s", v, good))
				_, err := ParseConfig([]byte(js))
				want := fmt.Sprintf("unknown field %q, did you mean %q?", v, f)
				if sec.name != "" {
					want = sec.name + ": " + want
				}
				if err == nil || !strings.HasPrefix(err.Error(), "lodestar config: ") || !strings.Contains(err.Error(), want) {
					t.Errorf("%s: error %v, want one containing %q", js, err, want)
				}
			}
		}
		if len(fields) == 0 { // random, weighted_random: any key is unknown
			js := sec.wrap(`"Seed": 1`)
			if _, err := ParseConfig([]byte(js)); err == nil || !strings.Contains(err.Error(), sec.name+`: unknown field "Seed"`) {
				t.Errorf("%s: error %v", js, err)
			}
		}
	}
}

// rangeCases is, for every field with a range, values just outside it and the
// Go zero value (which, written, must be in range too), in every section the
// field appears in.
var rangeCases = []struct {
	section, field string
	bad            []string // written values out of range
	ok             []string // written values in range, the zero value among them if it is
	rng            string
}{
	{"", "waitForEndpoints", []string{`"-1ns"`, `"-1s"`}, []string{`"0s"`, `"1h"`}, "[0, ∞)"},
	{"", "initialDiscoveryTimeout", []string{`"0s"`, `"999µs"`, `"10m1s"`}, []string{`"1ms"`, `"10m"`}, "[1ms, 10m]"},
	{"", "maxInFlightPerEndpoint", []string{`-1`, `1000001`}, []string{`0`, `1`, `1000000`}, "[0, 1000000]"},
	{"", "panicThreshold", []string{`-1`, `100.5`}, []string{`0`, `50`, `100`}, "[0, 100]"},
	{"algorithm least_request", "choiceCount", []string{"0", "1", "101", "-2", "99999999999999999999"}, []string{"2", "100"}, "[2, 100]"},
	{"algorithm least_request", "activeRequestBias", []string{"-1", "-0.001", "100.5", "1e300"}, []string{"0", "100"}, "[0, 100]"},
	{"algorithm peak_ewma", "decayTime", []string{`"0s"`, `"500µs"`, `"2h"`}, []string{`"1ms"`, `"1h"`}, "[1ms, 1h]"},
	{"algorithm peak_ewma", "defaultRTT", []string{`"0s"`, `"2m"`}, []string{`"1µs"`, `"1m"`}, "[1µs, 1m]"},
	{"algorithm peak_ewma", "failurePenalty", []string{`"0s"`, `"-1s"`, `"61m"`}, []string{`"1us"`, `"1h"`}, "[1µs, 1h]"},
	{"algorithm ring_hash", "pointsPerEndpoint", []string{"0", "-1", "65537"}, []string{"1", "65536"}, "[1, 65536]"},
	{"algorithm ring_hash", "minRingSize", []string{"0", "-5", "8388609"}, []string{"1", "1024"}, "[1, 8388608]"},
	{"algorithm ring_hash", "maxRingSize", []string{"0", "8388609"}, []string{"1024", "8388608"}, "[1, 8388608]"},
	{"algorithm maglev", "tableSize", []string{"0", "1", "2", "16777259"}, []string{"3", "16777213"}, "[3, 16777213]"},
	{"algorithm bounded_load", "balance", []string{"0", "0.999", "100.01", "-3"}, []string{"1", "100"}, "[1, 100]"},
	{"algorithm bounded_load", "pointsPerEndpoint", []string{"0", "65537"}, []string{"1", "65536"}, "[1, 65536]"},

	// healthCheck (with a TCP check). Jitter must not exceed the interval
	// (default 5s) and noTrafficInterval must not be shorter than it: the
	// ends of those ranges that only pass with the interval set are in
	// TestParseConfigRangeEndsWithCrossFieldRules.
	{"healthCheck", "interval", []string{`"0s"`, `"-1s"`, `"999µs"`, `"24h0m0.001s"`}, []string{`"1ms"`, `"24h"`}, "[1ms, 24h]"},
	{"healthCheck", "timeout", []string{`"0s"`, `"999µs"`, `"1h0m1s"`}, []string{`"1ms"`, `"1h"`}, "[1ms, 1h]"},
	{"healthCheck", "jitter", []string{`"-1ns"`, `"1h0m0.001s"`}, []string{`"0s"`, `"5s"`}, "[0, 1h]"},
	{"healthCheck", "unhealthyThreshold", []string{"0", "-1", "1001"}, []string{"1", "1000"}, "[1, 1000]"},
	{"healthCheck", "healthyThreshold", []string{"0", "-1", "1001", "99999999999999999999"}, []string{"1", "1000"}, "[1, 1000]"},
	{"healthCheck", "noTrafficInterval", []string{`"0s"`, `"999µs"`, `"24h0m1s"`}, []string{`"5s"`, `"24h"`}, "[1ms, 24h]"},

	// outlierDetection. maxEjectionTime must not be less than
	// baseEjectionTime (default 30s).
	{"outlierDetection", "consecutiveFailures", []string{"-1", "10001"}, []string{"0", "10000"}, "[0, 10000]"},
	{"outlierDetection", "consecutiveGatewayFailures", []string{"-1", "10001"}, []string{"0", "10000"}, "[0, 10000]"},
	{"outlierDetection", "consecutiveLocalOriginFailures", []string{"-1", "10001"}, []string{"0", "10000"}, "[0, 10000]"},
	{"outlierDetection", "consecutiveConnectionFailures", []string{"-1", "10001"}, []string{"0", "10000"}, "[0, 10000]"},
	{"outlierDetection", "interval", []string{`"0s"`, `"-1ms"`, `"999µs"`, `"24h0m0.001s"`}, []string{`"1ms"`, `"24h"`}, "[1ms, 24h]"},
	{"outlierDetection", "baseEjectionTime", []string{`"0s"`, `"999µs"`, `"25h"`}, []string{`"1ms"`, `"24h"`}, "[1ms, 24h]"},
	{"outlierDetection", "maxEjectionTime", []string{`"0s"`, `"-1s"`, `"24h0m1s"`}, []string{`"30s"`, `"24h"`}, "[1ms, 24h]"},
	{"outlierDetection", "maxEjectionPercent", []string{"-1", "101"}, []string{"0", "100"}, "[0, 100]"},
	{"outlierDetection.successRate", "minimumHosts", []string{"0", "-1", "100001"}, []string{"1", "100000"}, "[1, 100000]"},
	{"outlierDetection.successRate", "requestVolume", []string{"0", "1000000001", "99999999999999999999"}, []string{"1", "1000000000"}, "[1, 1000000000]"},
	{"outlierDetection.successRate", "stdevFactor", []string{"0", "-0", "-0.5", "100.001"}, []string{"0.001", "100"}, "(0, 100]"},
	{"outlierDetection.failurePercentage", "threshold", []string{"0", "-1", "101"}, []string{"1", "100"}, "[1, 100]"},
	{"outlierDetection.failurePercentage", "minimumHosts", []string{"0", "100001"}, []string{"1", "100000"}, "[1, 100000]"},
	{"outlierDetection.failurePercentage", "requestVolume", []string{"0", "1000000001"}, []string{"1", "1000000000"}, "[1, 1000000000]"},
	{"outlierDetection.latency", "quantile", []string{"0", "-0.1", "1.0001"}, []string{"1e-9", "0.5", "1"}, "(0, 1]"},
	{"outlierDetection.latency", "factor", []string{"0", "1", "-2", "1000.5"}, []string{"1.0001", "1000"}, "(1, 1000]"},
	{"outlierDetection.latency", "minimumHosts", []string{"0", "100001"}, []string{"1", "100000"}, "[1, 100000]"},
	{"outlierDetection.latency", "requestVolume", []string{"0", "1000000001"}, []string{"1", "1000000000"}, "[1, 1000000000]"},

	// circuitBreaker.
	{"circuitBreaker", "consecutiveFailures", []string{"-1", "1000001"}, []string{"0", "1000000"}, "[0, 1000000]"},
	{"circuitBreaker", "failureRatio", []string{"-0.1", "1.01", "1e300"}, []string{"0", "1"}, "[0, 1]"},
	{"circuitBreaker", "minRequests", []string{"0", "-1", "1000001"}, []string{"1", "1000000"}, "[1, 1000000]"},
	{"circuitBreaker", "window", []string{`"0s"`, `"999µs"`, `"24h0m0.001s"`}, []string{`"1ms"`, `"24h"`}, "[1ms, 24h]"},
	{"circuitBreaker", "openTimeout", []string{`"0s"`, `"-1s"`, `"24h1m"`}, []string{`"1ms"`, `"24h"`}, "[1ms, 24h]"},
	{"circuitBreaker", "halfOpenRequests", []string{"0", "1001"}, []string{"1", "1000"}, "[1, 1000]"},

	// retry. backoff.max must not be less than backoff.base (default 25ms),
	// and ratio and minPerSecond must not both be 0.
	{"retry", "maxAttempts", []string{"0", "-1", "11"}, []string{"1", "10"}, "[1, 10]"},
	{"retry", "perTryTimeout", []string{`"-1ns"`, `"1h0m0.001s"`}, []string{`"0s"`, `"1h"`}, "[0, 1h]"},
	{"retry.backoff", "base", []string{`"0s"`, `"999µs"`, `"1m0.001s"`}, []string{`"1ms"`, `"1s"`}, "[1ms, 1m]"},
	{"retry.backoff", "max", []string{`"0s"`, `"-1s"`, `"1h0m1s"`}, []string{`"25ms"`, `"1h"`}, "[1ms, 1h]"},
	{"retry.budget", "ratio", []string{"-0.1", "1.01"}, []string{"0", "1"}, "[0, 1]"},
	{"retry.budget", "minPerSecond", []string{"-1", "100001"}, []string{"0", "100000"}, "[0, 100000]"},
	{"retry.budget", "window", []string{`"0s"`, `"999ms"`, `"1h0m1s"`}, []string{`"1s"`, `"1h"`}, "[1s, 1h]"},
	{"retry.hedge", "maxExtra", []string{"0", "4"}, []string{"1", "3"}, "[1, 3]"},
}

// slowStartRange are SlowStart's ranges, checked in each algorithm that has it.
var slowStartRange = []struct {
	field   string
	bad, ok []string
	rng     string
}{
	{"window", []string{`"-1ms"`, `"1h0m1s"`}, []string{`"0s"`, `"1h"`}, "[0, 1h]"},
	{"aggression", []string{"0", "-1", "100.5"}, []string{"0.01", "100"}, "(0, 100]"},
	{"minWeightPercent", []string{"0", "-0", "101"}, []string{"0.5", "100"}, "(0, 100]"},
}

func allRangeCases() []struct {
	section, field string
	bad, ok        []string
	rng            string
} {
	cases := slices.Clone(rangeCases)
	for _, sec := range sections {
		if strings.HasSuffix(sec.name, ": slowStart") {
			for _, c := range slowStartRange {
				cases = append(cases, struct {
					section, field string
					bad, ok        []string
					rng            string
				}{sec.name, c.field, c.bad, c.ok, c.rng})
			}
		}
	}
	return cases
}

// Omitted means the default; written means checked: every field with a range,
// in every section, rejects a written value out of range, the Go zero value
// included when it is out of range, with the field and the range named.
func TestParseConfigExplicitValuesChecked(t *testing.T) {
	for _, c := range allRangeCases() {
		wrap := sectionWrap(t, c.section)
		for _, v := range c.bad {
			js := wrap(fmt.Sprintf("%q: %s", c.field, v))
			_, err := ParseConfig([]byte(js))
			want := fieldPath(c.section, c.field) + ": "
			if err == nil || !strings.HasPrefix(err.Error(), "lodestar config: "+want) ||
				!strings.Contains(err.Error(), " is out of range "+c.rng) {
				t.Errorf("%s: error %v, want %q...%q", js, err, "lodestar config: "+want, "is out of range "+c.rng)
			}
		}
		for _, v := range c.ok {
			js := wrap(fmt.Sprintf("%q: %s", c.field, v))
			if _, err := ParseConfig([]byte(js)); err != nil {
				t.Errorf("%s: %v", js, err)
			}
		}
		// Omitted, the field takes its default.
		if _, err := ParseConfig([]byte(wrap(""))); err != nil {
			t.Errorf("%s: %v", wrap(""), err)
		}
	}
	// The message for a written zero says how to get the default; nested
	// sections' fields are named by their path.
	for _, tc := range []struct{ js, want string }{
		{`{"algorithm": {"least_request": {"choiceCount": 0}}}`,
			"lodestar config: algorithm least_request: choiceCount: 0 is out of range [2, 100] (omit it for the default)"},
		{`{"healthCheck": {"tcp": {}, "interval": "0s"}}`,
			"lodestar config: healthCheck.interval: 0s is out of range [1ms, 24h] (omit it for the default)"},
		{`{"outlierDetection": {"successRate": {"stdevFactor": 0}}}`,
			"lodestar config: outlierDetection.successRate.stdevFactor: 0 is out of range (0, 100] (omit it for the default)"},
		{`{"outlierDetection": {"latency": {"factor": 1}}}`,
			"lodestar config: outlierDetection.latency.factor: 1 is out of range (1, 1000]"},
		{`{"circuitBreaker": {"minRequests": 0}}`,
			"lodestar config: circuitBreaker.minRequests: 0 is out of range [1, 1000000] (omit it for the default)"},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.js, err, tc.want)
		}
	}
}

// The ends of ranges that a cross-field rule (Validate) keeps out when the
// other field has its default are in range with the other field set.
func TestParseConfigRangeEndsWithCrossFieldRules(t *testing.T) {
	for _, js := range []string{
		`{"healthCheck": {"tcp": {}, "jitter": "1h", "interval": "1h"}}`,
		`{"healthCheck": {"tcp": {}, "noTrafficInterval": "1ms", "interval": "1ms"}}`,
		`{"outlierDetection": {"maxEjectionTime": "1ms", "baseEjectionTime": "1ms"}}`,
	} {
		if _, err := ParseConfig([]byte(js)); err != nil {
			t.Errorf("%s: %v", js, err)
		}
	}
	for _, tc := range []struct{ js, want string }{
		{`{"healthCheck": {"tcp": {}, "jitter": "1h"}}`, "lodestar config: healthCheck: jitter: 1h0m0s is longer than the interval, 5s"},
		{`{"healthCheck": {"tcp": {}, "noTrafficInterval": "1ms"}}`, "lodestar config: healthCheck: noTrafficInterval: 1ms is shorter than the interval, 5s"},
		{`{"outlierDetection": {"maxEjectionTime": "1ms"}}`, "lodestar config: outlierDetection: maxEjectionTime: 1ms is less than baseEjectionTime's default (30s)"},
		{`{"healthCheck": {}}`, "lodestar config: healthCheck: set exactly one of http, grpc and tcp (none is set)"},
		{`{"healthCheck": {"tcp": {}, "grpc": {}}}`, "lodestar config: healthCheck: set exactly one of http, grpc and tcp (grpc and tcp are set)"},
	} {
		_, err := ParseConfig([]byte(tc.js))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", tc.js, err, tc.want)
		}
	}
}

// fieldPath is how errors name field in section: "choiceCount" in the
// top-level section, "algorithm least_request: slowStart.window" in an
// algorithm's nested one, "outlierDetection.successRate.stdevFactor" in a
// section of Config.
func fieldPath(section, field string) string {
	head, nested, ok := strings.Cut(section, ": ")
	switch {
	case section == "":
		return field
	case ok:
		return head + ": " + nested + "." + field
	case strings.HasPrefix(section, "algorithm "):
		return section + ": " + field
	}
	return section + "." + field
}

func sectionWrap(t *testing.T, name string) func(string) string {
	for _, sec := range sections {
		if sec.name == name {
			return sec.wrap
		}
	}
	t.Fatalf("no section %q", name)
	return nil
}

// The tables above cover every field and every range tag of every section, so
// that a field added later is tested for exactness and range without a new
// test: its good value and (if it has a range) its range case must be added.
func TestConfigTablesCoverEveryField(t *testing.T) {
	for _, a := range Algorithms() {
		if strings.HasPrefix(a, "test_") {
			continue
		}
		if !slices.ContainsFunc(sections, func(s section) bool { return s.name == "algorithm "+a }) {
			t.Errorf("algorithm %s has no section in the tables", a)
		}
	}
	// Every section nested in a listed one is listed too.
	for _, sec := range sections {
		for _, sub := range subsections(t, sec.name) {
			if !slices.ContainsFunc(sections, func(s section) bool { return s.name == sub }) {
				t.Errorf("section %q has no entry in sections", sub)
			}
		}
	}
	cases := allRangeCases()
	for _, c := range cases {
		if !slices.ContainsFunc(sections, func(s section) bool { return s.name == c.section }) {
			t.Errorf("range case for %q in unknown section %q", c.field, c.section)
		}
	}
	for _, sec := range sections {
		for _, f := range typeInfoOf(sectionType(t, sec.name)).fields {
			if f.rng == nil {
				continue
			}
			if !slices.ContainsFunc(cases, func(c struct {
				section, field string
				bad, ok        []string
				rng            string
			}) bool {
				return c.section == sec.name && c.field == f.name && c.rng == f.rng.text
			}) {
				t.Errorf("section %q field %q (range %s) has no range case", sec.name, f.name, f.rng.text)
			}
		}
	}
}

// Go-built values are held to the same ranges by Validate, where the zero
// value means the default: same message, from the same tag.
func TestValidateUsesTheSameRanges(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Algorithm: &LeastRequest{ChoiceCount: 1}}, "lodestar config: algorithm least_request: choiceCount: 1 is out of range [2, 100]"},
		{Config{Algorithm: &LeastRequest{SlowStart: SlowStart{Aggression: -1}}}, "lodestar config: algorithm least_request: slowStart.aggression: -1 is out of range (0, 100]"},
		{Config{Algorithm: &PeakEWMA{DefaultRTT: time.Hour}}, "lodestar config: algorithm peak_ewma: defaultRTT: 1h0m0s is out of range [1µs, 1m]"},
		{Config{Algorithm: &RingHash{MaxRingSize: maxRingSize + 1}}, "lodestar config: algorithm ring_hash: maxRingSize: 8388609 is out of range [1, 8388608]"},
		{Config{WaitForEndpoints: -time.Second}, "lodestar config: waitForEndpoints: -1s is out of range [0, ∞)"},
		{Config{InitialDiscoveryTimeout: time.Hour}, "lodestar config: initialDiscoveryTimeout: 1h0m0s is out of range [1ms, 10m]"},
		{Config{HealthCheck: &health.HealthCheck{TCP: &health.TCPCheck{}, Timeout: 2 * time.Hour}},
			"lodestar config: healthCheck.timeout: 2h0m0s is out of range [1ms, 1h]"},
		{Config{OutlierDetection: &health.OutlierDetection{SuccessRate: &health.SuccessRate{StdevFactor: -1}}},
			"lodestar config: outlierDetection.successRate.stdevFactor: -1 is out of range (0, 100]"},
		{Config{OutlierDetection: &health.OutlierDetection{MaxEjectionPercent: new(101)}},
			"lodestar config: outlierDetection.maxEjectionPercent: 101 is out of range [0, 100]"},
		{Config{CircuitBreaker: &breaker.Config{FailureRatio: new(1.5)}},
			"lodestar config: circuitBreaker.failureRatio: 1.5 is out of range [0, 1]"},
		{Config{Retry: &retry.Config{MaxAttempts: 11}}, "lodestar config: retry.maxAttempts: 11 is out of range [1, 10]"},
		{Config{Retry: &retry.Config{RetryOn: []string{"5xx"}}}, `lodestar config: retry: retryOn[0]: unknown condition "5xx" (want one of connect_error, reset, gateway_error, overloaded, timeout, server_error)`},
	} {
		if err := tc.c.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
	// Zero values are the defaults, and the bounds are in range.
	for _, a := range []Algorithm{&LeastRequest{}, &PeakEWMA{}, &RingHash{}, &Maglev{}, &BoundedLoad{}, &RoundRobin{},
		&RingHash{MinRingSize: maxRingSize, MaxRingSize: maxRingSize}, &Maglev{TableSize: 16777213}} {
		if err := (Config{Algorithm: a}).Validate(); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []Config{
		{HealthCheck: &health.HealthCheck{GRPC: &health.GRPCCheck{}}},
		{OutlierDetection: &health.OutlierDetection{SuccessRate: &health.SuccessRate{}, FailurePercentage: &health.FailurePercentage{}, Latency: &health.LatencyOutlier{}}},
		{CircuitBreaker: &breaker.Config{}},
	} {
		if err := c.Validate(); err != nil {
			t.Error(err)
		}
	}
}

// Every built-in algorithm's options, every field set, survive MarshalJSON
// and ParseConfig unchanged.
func TestConfigRoundTrip(t *testing.T) {
	bias := 0.0
	ss := SlowStart{Window: 90 * time.Second, Aggression: 1.5, MinWeightPercent: 5}
	for _, c := range []Config{
		{},
		{Algorithm: &RoundRobin{SlowStart: ss}, AllowEmpty: true, WaitForEndpoints: 250 * time.Millisecond, InitialDiscoveryTimeout: 3 * time.Second},
		{Algorithm: &WeightedRoundRobin{SlowStart: ss}},
		{Algorithm: &Random{}},
		{Algorithm: &WeightedRandom{}},
		{Algorithm: &LeastRequest{ChoiceCount: 5, ActiveRequestBias: &bias, SlowStart: ss}},
		{Algorithm: &PeakEWMA{DecayTime: 3 * time.Second, DefaultRTT: 1500 * time.Microsecond, FailurePenalty: time.Minute}},
		{Algorithm: &RingHash{PointsPerEndpoint: 7, MinRingSize: 10, MaxRingSize: 20, Fallback: FallbackRoundRobin},
			Affinity: Affinity{Header: "X-U", Cookie: "c", Metadata: "x-u", ClientIP: true}},
		{Algorithm: &Maglev{TableSize: 251, Fallback: FallbackRandom}},
		{Algorithm: &BoundedLoad{Balance: 1.125, PointsPerEndpoint: 9, Fallback: FallbackRoundRobin}},
		{HealthCheck: &health.HealthCheck{
			HTTP:     &health.HTTPCheck{Path: "/healthz?x=1", ExpectedStatuses: []health.StatusRange{{200, 299}, {304, 304}}, Host: "api.example.com", Scheme: "https"},
			Interval: 2 * time.Second, Timeout: 500 * time.Millisecond, Jitter: time.Second, UnhealthyThreshold: 4, HealthyThreshold: 1, NoTrafficInterval: time.Minute,
		}},
		{HealthCheck: &health.HealthCheck{GRPC: &health.GRPCCheck{Service: "svc"}}},
		{HealthCheck: &health.HealthCheck{TCP: &health.TCPCheck{}}},
		{OutlierDetection: &health.OutlierDetection{
			ConsecutiveFailures: new(0), ConsecutiveGatewayFailures: new(3), ConsecutiveLocalOriginFailures: new(4),
			Interval: time.Second, BaseEjectionTime: time.Minute, MaxEjectionTime: time.Hour, MaxEjectionPercent: new(0),
			SuccessRate:          &health.SuccessRate{MinimumHosts: 2, RequestVolume: 10, StdevFactor: 1.5},
			FailurePercentage:    &health.FailurePercentage{Threshold: 50, MinimumHosts: 3, RequestVolume: 20},
			Latency:              &health.LatencyOutlier{Quantile: 0.99, Factor: 2.5, MinimumHosts: 4, RequestVolume: 30},
			EndEjectionOnHealthy: true,
		}},
		{OutlierDetection: &health.OutlierDetection{SuccessRate: &health.SuccessRate{}}},
		{CircuitBreaker: &breaker.Config{ConsecutiveFailures: new(0), FailureRatio: new(0.25), MinRequests: 7,
			Window: 30 * time.Second, OpenTimeout: 5 * time.Second, HalfOpenRequests: 3}},
		{CircuitBreaker: &breaker.Config{}},
		{Retry: &retry.Config{}},
		{Retry: &retry.Config{MaxAttempts: 4, PerTryTimeout: 300 * time.Millisecond, RetryOn: []string{"connect_error", "timeout"},
			RetryableStatuses: []int{503}, RetryableCodes: []string{"UNAVAILABLE"},
			Backoff: retry.BackoffConfig{Base: 5 * time.Millisecond, Max: 2 * time.Second, Jitter: "equal"},
			Budget:  retry.BudgetConfig{Ratio: new(0.1), MinPerSecond: new(0), Window: 20 * time.Second},
			Hedge:   &retry.HedgeConfig{Delay: "p99", MaxExtra: 2}}},
	} {
		js, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseConfig(js)
		if err != nil {
			t.Errorf("%s: %v", js, err)
			continue
		}
		if !reflect.DeepEqual(got, c) {
			t.Errorf("%s parsed as %+v, want %+v", js, got, c)
		}
	}
	js, _ := json.Marshal(Config{Algorithm: &PeakEWMA{DecayTime: 3 * time.Second}, WaitForEndpoints: time.Second})
	if want := `{"algorithm":{"peak_ewma":{"decayTime":"3s"}},"waitForEndpoints":"1s"}`; string(js) != want {
		t.Errorf("encoded %s, want %s", js, want)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"algorithm": "maglev"}`, `{"algorithm": {"least_request": {"choiceCount": 3}}}`,
		`{"algorithm": {"round_robin": {"slowStart": {"window": "30s"}}}, "waitForEndpoints": "1s"}`,
		`{"algorithm": {"peak_ewma": {"decayTime": "5s"}}, "affinity": {"header": "X-A", "clientIP": true}}`,
		`{"algorithm": {"ring_hash": {"minRingSize": 10}}, "allowEmpty": true}`,
		`{"algorithm": {"bounded_load": {"balance": 1.1, "fallback": "round_robin"}}}`,
		`{"algorithm": {"least_request": {"activeRequestBias": 0.5, "slowStart": {"aggression": 3}}}}`,
		`{"algorithm": {"least_request": {"choicecount": 3}}}`,
		`{"algorithm": {"least_request": {"choiceCount": 0}}}`,
		`{"algorithm": {"maglev": {"tableSize": 251, "tableSize": 251}}}`,
		`{"initialDiscoveryTimeout": "2s", "waitForEndpoints": "0s"} {}`,
		`{"algorithm": null, "affinity": null, "waitForEndpoints": null}`,
		`{"algorithm": {"least_request": {"activeRequestBias": -0}}}`,
		`{"healthCheck": {"http": {"path": "/h", "expectedStatuses": [[200, 299]]}, "interval": "1s", "jitter": "0s"}}`,
		`{"healthCheck": {"tcp": {}, "grpc": {"service": "x"}}}`,
		`{"outlierDetection": {"successRate": {}, "latency": {"factor": 2}, "maxEjectionPercent": 0}, "circuitBreaker": {"failureRatio": 0}}`,
		`{"outlierDetection": {"failurePercentage": {"threshold": 0}}, "circuitBreaker": {"consecutiveFailures": 0, "failureRatio": 0}}`,
		`{"subset": {"size": 20, "mode": "rendezvous", "clientId": "web-7f9c"}}`,
		`{"subset": {"size": 3, "mode": "deterministic", "clientIndex": 3, "clientCount": 60}}`,
		`{"subset": {"size": 0, "mode": "deterministic", "clientIndex": -1}}`,
		`{"locality": {"zone": "a", "region": "r", "minLocalEndpoints": 2}, "priority": {"overprovisioningFactor": 1.4}}`,
		`{"split": [{"name": "canary", "match": {"track": "canary"}, "weight": 50000}, {"match": {}, "weight": 950000}]}`,
		`{"retry": {"maxAttempts": 3, "perTryTimeout": "500ms", "retryOn": ["connect_error"], "budget": {"ratio": 0.2}, "hedge": {"delay": "p95", "maxExtra": 1}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		c, err := ParseConfig(js)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "lodestar config: ") {
				t.Fatalf("%s: error %q does not start %q", js, err, "lodestar config: ")
			}
			return
		}
		// What parses re-encodes, and the encoding parses to an equal config.
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("%s parsed but does not encode: %v", js, err)
		}
		c2, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("%s parsed, encoded as %s, which does not parse: %v", js, out, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("%s parsed as %+v, encoded as %s, parsed back as %+v", js, c, out, c2)
		}
		if out2, _ := json.Marshal(c2); !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed %s to %s", out, out2)
		}
	})
}

// The retry section as issue 11 and the README write it parses, every field
// in place.
func TestParseConfigRetryContract(t *testing.T) {
	c, err := ParseConfig([]byte(`{"retry": {"maxAttempts": 3, "perTryTimeout": "500ms",
		"retryOn": ["connect_error", "reset", "gateway_error", "overloaded", "timeout"],
		"retryableStatuses": [502, 503, 504], "retryableCodes": ["UNAVAILABLE"],
		"backoff": {"base": "25ms", "max": "1s", "jitter": "full"},
		"budget": {"ratio": 0.2, "minPerSecond": 10, "window": "10s"},
		"hedge": {"delay": "p95", "maxExtra": 1}}}`))
	if err != nil {
		t.Fatal(err)
	}
	r := c.Retry
	if r == nil || r.MaxAttempts != 3 || r.PerTryTimeout != 500*time.Millisecond || len(r.RetryOn) != 5 ||
		len(r.RetryableStatuses) != 3 || r.Backoff.Max != time.Second || *r.Budget.Ratio != 0.2 || r.Hedge.MaxExtra != 1 {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := ParseConfig([]byte(`{"retry": {"backoff": {"base": "2s", "max": "1s"}}}`)); err == nil ||
		!strings.HasPrefix(err.Error(), "lodestar config: retry: backoff.max") {
		t.Fatalf("max below base: %v", err)
	}
}
