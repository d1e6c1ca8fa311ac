package main

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// The example runs end to end through both doors and shows what it says, in
// the same order on each: c's ejection (by the gateway detector) and its end,
// with c getting nothing while ejected and its share ramping up after; d's
// breaker opening, half-open with exactly one probe reaching d, closing, with
// d getting nothing while open; b marked unhealthy by its health check and
// healthy again, getting nothing in between; no panic, and every request
// answered. Counts that depend on timing (how many requests, which shares)
// are not asserted beyond these properties.
func TestExampleRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)

	for _, door := range []struct{ name, fail, check string }{
		{"HTTP", "503", "health check: 2 consecutive http checks failed, the last: HTTP status 503"},
		{"gRPC", "UNAVAILABLE", "health check: 2 consecutive grpc checks failed, the last: gRPC health status NOT_SERVING"},
	} {
		t.Run(door.name, func(t *testing.T) {
			i := strings.Index(s, "== "+door.name+":")
			if i < 0 {
				t.Fatalf("no %s section", door.name)
			}
			sec := s[i:]
			if j := strings.Index(sec[1:], "\n== "); j >= 0 {
				sec = sec[:j+1]
			}

			// The events, in this order.
			inOrder(t, sec,
				"condition changed  c: eligible → ejected  (outlier detection: consecutive_gateway_failures, ejected for 1s)",
				"condition changed  c: ejected → eligible  (outlier detection: ejection time over)",
				"breaker changed    d: circuit breaker closed → open",
				"condition changed  d: eligible → breaker open  (circuit breaker closed → open)",
				"breaker changed    d: circuit breaker open → half-open",
				"condition changed  d: breaker open → eligible  (circuit breaker open → half-open)",
				"breaker changed    d: circuit breaker half-open → closed",
				"condition changed  b: eligible → unhealthy  ("+door.check,
				"condition changed  b: unhealthy → eligible  (health check: 2 consecutive "+strings.ToLower(door.name)+" checks passed)",
			)

			// c failed 3 requests in a row, which ejected it, plus at most
			// one per other client already sent to it; and, should an
			// earlier success be reported after a failure (resetting the
			// run), one more per client.
			var n int
			line := lineWith(t, sec, "c answered ")
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "c answered %d requests with "+door.fail, &n); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if n < 3 || n > 3+2*(workers-1) {
				t.Errorf("%q: want 3 to %d failed requests", line, 3+2*(workers-1))
			}

			// Out of the rotation means no request at all.
			for _, w := range []struct{ label, backend string }{
				{"while c is ejected", "c"},
				{"while d's breaker is open", "d"},
				{"while b is unhealthy", "b"},
			} {
				sh := shares(t, lineWith(t, sec, w.label))
				if sh[w.backend] != 0 {
					t.Errorf("%s: %s got %v%%", w.label, w.backend, sh[w.backend])
				}
				for name, v := range sh {
					if name != w.backend && v == 0 {
						t.Errorf("%s: %s got nothing", w.label, name)
					}
				}
			}
			if sh := shares(t, lineWith(t, sec, "all healthy")); len(sh) != 4 || sh["a"] == 0 || sh["b"] == 0 || sh["c"] == 0 || sh["d"] == 0 {
				t.Errorf("all healthy: want every backend to get requests, got %v", sh)
			}

			// Half-open lets exactly its one probe through.
			if !strings.Contains(sec, "half-open: 1 probe request reached d;") {
				t.Errorf("want exactly 1 probe reaching d while half-open in:\n%s", sec)
			}

			// Slow start: c's share grows over its window.
			line = lineWith(t, sec, "c's share in slow start, per 250ms:")
			var ramp [4]int
			if _, err := fmt.Sscanf(line[strings.Index(line, ":")+1:], " %d%% %d%% %d%% %d%%", &ramp[0], &ramp[1], &ramp[2], &ramp[3]); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if ramp[0] >= ramp[3] {
				t.Errorf("%q: c's share did not grow through slow start", line)
			}

			if !strings.Contains(sec, "panic mode: never; 0 requests without an answer") {
				t.Errorf("want no panic and every request answered in:\n%s", sec)
			}
		})
	}
	if !strings.Contains(s, "What it shows:") {
		t.Error("no closing explanation")
	}
}

// inOrder checks that want appear in s, each after the previous one.
func inOrder(t *testing.T, s string, want ...string) {
	t.Helper()
	rest := s
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			if strings.Contains(s, w) {
				t.Errorf("%q is out of order in:\n%s", w, s)
			} else {
				t.Errorf("no %q in:\n%s", w, s)
			}
			continue
		}
		rest = rest[i+len(w):]
	}
}

// lineWith returns the first line of s that contains sub.
func lineWith(t *testing.T, s, sub string) string {
	t.Helper()
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return line
		}
	}
	t.Fatalf("no line with %q in:\n%s", sub, s)
	return ""
}

var shareRE = regexp.MustCompile(`\b([abcd]) +(\d+)%`)

// shares reads "a  33%  b   0%  ..." into a map.
func shares(t *testing.T, line string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, g := range shareRE.FindAllStringSubmatch(line, -1) {
		var v float64
		fmt.Sscan(g[2], &v)
		m[g[1]] = v
	}
	if len(m) != 4 {
		t.Fatalf("%q: want the shares of a, b, c and d", line)
	}
	return m
}
