package health

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestHealthCheckValidate(t *testing.T) {
	httpCheck := func(h HTTPCheck) HealthCheck { return HealthCheck{HTTP: &h} }
	for _, tc := range []struct {
		name string
		cfg  HealthCheck
		want string // "" means valid; else a substring of the error
	}{
		{"http defaults", httpCheck(HTTPCheck{}), ""},
		{"grpc", HealthCheck{GRPC: &GRPCCheck{Service: "x"}}, ""},
		{"tcp", HealthCheck{TCP: &TCPCheck{}}, ""},
		{"full http", HealthCheck{
			HTTP:     &HTTPCheck{Path: "/healthz?full=1", ExpectedStatuses: []StatusRange{{200, 299}, {418, 418}}, Host: "users.internal:8080", Scheme: "https"},
			Interval: 5 * time.Second, Timeout: time.Second, Jitter: 500 * time.Millisecond,
			UnhealthyThreshold: 3, HealthyThreshold: 2, NoTrafficInterval: time.Minute,
		}, ""},
		{"timeout longer than interval", HealthCheck{TCP: &TCPCheck{}, Interval: 10 * time.Millisecond, Timeout: time.Second}, ""},
		{"interval longer than default noTrafficInterval", HealthCheck{TCP: &TCPCheck{}, Interval: 2 * time.Minute}, ""},
		{"none", HealthCheck{}, "set exactly one of http, grpc and tcp (none is set)"},
		{"two", HealthCheck{HTTP: &HTTPCheck{}, TCP: &TCPCheck{}}, "set exactly one of http, grpc and tcp (http and tcp are set)"},
		{"three", HealthCheck{HTTP: &HTTPCheck{}, GRPC: &GRPCCheck{}, TCP: &TCPCheck{}}, "(http and grpc and tcp are set)"},
		{"jitter over interval", HealthCheck{TCP: &TCPCheck{}, Interval: time.Second, Jitter: 2 * time.Second}, "jitter: 2s is longer than the interval, 1s"},
		{"jitter over default interval", HealthCheck{TCP: &TCPCheck{}, Jitter: 6 * time.Second}, "jitter: 6s is longer than the interval, 5s"},
		{"noTrafficInterval under interval", HealthCheck{TCP: &TCPCheck{}, Interval: time.Minute, NoTrafficInterval: time.Second}, "noTrafficInterval: 1s is shorter than the interval, 1m0s"},
		{"negative interval", HealthCheck{TCP: &TCPCheck{}, Interval: -time.Second}, "interval: -1s is negative"},
		{"negative timeout", HealthCheck{TCP: &TCPCheck{}, Timeout: -1}, "timeout: -1ns is negative"},
		{"negative threshold", HealthCheck{TCP: &TCPCheck{}, UnhealthyThreshold: -1}, "unhealthyThreshold: -1 is negative"},
		{"negative healthy threshold", HealthCheck{TCP: &TCPCheck{}, HealthyThreshold: -2}, "healthyThreshold: -2 is negative"},
		{"relative path", httpCheck(HTTPCheck{Path: "healthz"}), `http.path: "healthz" does not start with /`},
		{"path with space", httpCheck(HTTPCheck{Path: "/a b"}), `http.path: "/a b" is not a path`},
		{"path with fragment", httpCheck(HTTPCheck{Path: "/a#b"}), `http.path: "/a#b" is not a path`},
		{"empty statuses", httpCheck(HTTPCheck{ExpectedStatuses: []StatusRange{}}), "http.expectedStatuses: empty"},
		{"status too high", httpCheck(HTTPCheck{ExpectedStatuses: []StatusRange{{200, 299}, {600, 700}}}), "http.expectedStatuses[1]: [600, 700] is out of range: statuses are 100-599"},
		{"status too low", httpCheck(HTTPCheck{ExpectedStatuses: []StatusRange{{0, 200}}}), "http.expectedStatuses[0]: [0, 200] is out of range"},
		{"status range reversed", httpCheck(HTTPCheck{ExpectedStatuses: []StatusRange{{299, 200}}}), "http.expectedStatuses[0]: [299, 200] is empty: want lo ≤ hi"},
		{"bad host", httpCheck(HTTPCheck{Host: "a b"}), `http.host: "a b" is not a valid Host header`},
		{"host with path", httpCheck(HTTPCheck{Host: "a/b"}), `http.host: "a/b" is not a valid Host header`},
		{"bad scheme", httpCheck(HTTPCheck{Scheme: "ftp"}), `http.scheme: "ftp" is neither "http" nor "https"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v, want nil", err)
			case tc.want != "" && err == nil:
				t.Fatalf("Validate: nil, want an error containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("Validate: %q, want it to contain %q", err, tc.want)
			}
			if _, nerr := NewChecker(tc.cfg, CheckerOptions{}); (nerr == nil) != (err == nil) {
				t.Fatalf("NewChecker's error %v disagrees with Validate's %v", nerr, err)
			}
		})
	}
}

func TestHealthCheckDefaults(t *testing.T) {
	e := (&HealthCheck{HTTP: &HTTPCheck{}}).effective()
	want := HealthCheck{
		HTTP:     &HTTPCheck{Path: "/", ExpectedStatuses: []StatusRange{{200, 299}}, Scheme: "http"},
		Interval: 5 * time.Second, Timeout: time.Second, Jitter: 0,
		UnhealthyThreshold: 3, HealthyThreshold: 2, NoTrafficInterval: 60 * time.Second,
	}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("defaults: %+v (http %+v), want %+v (http %+v)", e, *e.HTTP, want, *want.HTTP)
	}
	if e := (&HealthCheck{TCP: &TCPCheck{}, Interval: 2 * time.Minute}).effective(); e.NoTrafficInterval != 2*time.Minute {
		t.Fatalf("noTrafficInterval with a 2m interval: %v, want the interval", e.NoTrafficInterval)
	}
}

// The JSON contract names exactly the fields of HealthCheck and
// HTTPCheck (the balancer's strict codec matches names exactly), and its
// non-duration parts decode with encoding/json too.
func TestHealthCheckJSONNames(t *testing.T) {
	contract := `{"http": {"path": "/healthz", "expectedStatuses": [[200, 299]], "host": "users", "scheme": "https"},
		"grpc": {"service": ""}, "tcp": {},
		"interval": "5s", "timeout": "1s", "jitter": "500ms",
		"unhealthyThreshold": 3, "healthyThreshold": 2, "noTrafficInterval": "60s"}`
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(contract), &m); err != nil {
		t.Fatal(err)
	}
	names := func(typ reflect.Type) map[string]bool {
		n := map[string]bool{}
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			n[name] = true
		}
		return n
	}
	fields := names(reflect.TypeFor[HealthCheck]())
	for k := range m {
		if !fields[k] {
			t.Errorf("contract field %q is not a field of HealthCheck", k)
		}
	}
	if len(fields) != len(m) {
		t.Errorf("HealthCheck has %d JSON fields, the contract %d", len(fields), len(m))
	}
	var hm map[string]json.RawMessage
	if err := json.Unmarshal(m["http"], &hm); err != nil {
		t.Fatal(err)
	}
	hfields := names(reflect.TypeFor[HTTPCheck]())
	for k := range hm {
		if !hfields[k] {
			t.Errorf("contract field http.%q is not a field of HTTPCheck", k)
		}
	}
	if !names(reflect.TypeFor[GRPCCheck]())["service"] {
		t.Error(`GRPCCheck has no "service"`)
	}

	var h HTTPCheck
	dec := json.NewDecoder(strings.NewReader(string(m["http"])))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		t.Fatal(err)
	}
	want := HTTPCheck{Path: "/healthz", ExpectedStatuses: []StatusRange{{200, 299}}, Host: "users", Scheme: "https"}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("http: %+v, want %+v", h, want)
	}
	for _, js := range []string{`{"grpc": {"service": "echo"}}`, `{"grpc": {}}`, `{"tcp": {}}`} {
		var c HealthCheck
		if err := json.Unmarshal([]byte(js), &c); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("%s: %v", js, err)
		}
	}
	out, err := json.Marshal(HealthCheck{TCP: &TCPCheck{}})
	if err != nil || string(out) != `{"tcp":{}}` {
		t.Fatalf("Marshal: %s, %v", out, err)
	}
}

func TestStatusRangeJSON(t *testing.T) {
	for _, tc := range []struct {
		js   string
		want StatusRange
		err  string
	}{
		{"[200, 299]", StatusRange{200, 299}, ""},
		{"[418,418]", StatusRange{418, 418}, ""},
		{"[200]", StatusRange{}, "got 1 elements"},
		{"[200, 299, 300]", StatusRange{}, "got 3 elements"},
		{"[200, 2.5]", StatusRange{}, "two integers"},
		{`["200", 299]`, StatusRange{}, "two integers"},
		{"200", StatusRange{}, "two integers"},
		{"{}", StatusRange{}, "two integers"},
	} {
		var r StatusRange
		err := json.Unmarshal([]byte(tc.js), &r)
		if tc.err == "" {
			if err != nil || r != tc.want {
				t.Errorf("%s: %v, %v; want %v", tc.js, r, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want one containing %q", tc.js, err, tc.err)
		}
	}
	if s := (StatusRange{200, 299}).String(); s != "200-299" {
		t.Errorf("String: %q", s)
	}
	if s := (StatusRange{418, 418}).String(); s != "418" {
		t.Errorf("String: %q", s)
	}
	out, _ := json.Marshal([]StatusRange{{200, 299}})
	if string(out) != "[[200,299]]" {
		t.Errorf("Marshal: %s", out)
	}
}

// Every range tag parses as the balancer's codec reads them, and every
// default lies in its field's range (a default outside it could not be
// written out and read back).
func TestRangeTagsHoldDefaults(t *testing.T) {
	defaults := (&HealthCheck{TCP: &TCPCheck{}}).effective()
	v := reflect.ValueOf(defaults)
	tagged := 0
	for i := range v.NumField() {
		f := v.Type().Field(i)
		tag, ok := f.Tag.Lookup("range")
		if !ok {
			continue
		}
		tagged++
		if len(tag) < 2 || !strings.ContainsAny(tag[:1], "[(") || !strings.ContainsAny(tag[len(tag)-1:], "])") {
			t.Fatalf("%s: range tag %q is not an interval", f.Name, tag)
		}
		lo, hi, ok := strings.Cut(tag[1:len(tag)-1], ", ")
		if !ok {
			t.Fatalf("%s: range tag %q: want \"lo, hi\"", f.Name, tag)
		}
		parse := func(s string) int64 {
			if f.Type == reflect.TypeFor[time.Duration]() {
				d, err := time.ParseDuration(s)
				if err != nil {
					t.Fatalf("%s: range tag %q: %v", f.Name, tag, err)
				}
				return int64(d)
			}
			x, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				t.Fatalf("%s: range tag %q: %v", f.Name, tag, err)
			}
			return x
		}
		x := v.Field(i).Int()
		if l := parse(lo); x < l || tag[0] == '(' && x == l {
			t.Errorf("%s: default %d is below its range %s", f.Name, x, tag)
		}
		if h := parse(hi); x > h || tag[len(tag)-1] == ')' && x == h {
			t.Errorf("%s: default %d is above its range %s", f.Name, x, tag)
		}
	}
	if tagged != 6 {
		t.Fatalf("%d fields with range tags, want 6", tagged)
	}
}

func TestJitterBounds(t *testing.T) {
	for _, r := range []uint64{0, 1, 499_999_999, 500_000_000, 500_000_001, 1<<64 - 1} {
		c, err := NewChecker(HealthCheck{TCP: &TCPCheck{}, Jitter: 500 * time.Millisecond}, CheckerOptions{Rand: func() uint64 { return r }})
		if err != nil {
			t.Fatal(err)
		}
		if j := c.jitter(); j < 0 || j > 500*time.Millisecond {
			t.Errorf("Rand %d: jitter %v, want it in [0, 500ms]", r, j)
		}
	}
	c, _ := NewChecker(HealthCheck{TCP: &TCPCheck{}}, CheckerOptions{Rand: func() uint64 { return 12345 }})
	if j := c.jitter(); j != 0 {
		t.Errorf("no jitter configured: %v", j)
	}
}
