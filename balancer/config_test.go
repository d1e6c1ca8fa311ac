package balancer

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
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
		{`{"algorithm": {"maglev": {"tableSize": 65536}}}`, "tableSize: 65536 is not a prime in [3, 16777213]"},
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

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"algorithm": "maglev"}`, `{"algorithm": {"least_request": {"choiceCount": 3}}}`,
		`{"algorithm": {"round_robin": {"slowStart": {"window": "30s"}}}, "waitForEndpoints": "1s"}`,
		`{"algorithm": {"peak_ewma": {"decayTime": "5s"}}, "affinity": {"header": "X-A", "clientIP": true}}`,
		`{"algorithm": {"ring_hash": {"minRingSize": 10}}, "allowEmpty": true}`,
		`{"algorithm": {"bounded_load": {"balance": 1.1, "fallback": "round_robin"}}}`,
		`{"algorithm": {"least_request": {"activeRequestBias": 0.5, "slowStart": {"aggression": 3}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, js []byte) {
		c, err := ParseConfig(js)
		if err != nil {
			return
		}
		// What parses re-encodes, and the encoding parses to the same encoding.
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("%s parsed but does not encode: %v", js, err)
		}
		c2, err := ParseConfig(out)
		if err != nil {
			t.Fatalf("%s parsed, encoded as %s, which does not parse: %v", js, out, err)
		}
		out2, _ := json.Marshal(c2)
		if !bytes.Equal(out, out2) {
			t.Fatalf("round trip changed %s to %s", out, out2)
		}
	})
}
