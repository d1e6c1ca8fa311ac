package main

import (
	"fmt"
	"strings"
	"testing"
)

// The example runs end to end and shows what it says: phase 1 all in the
// caller's zone; phase 2 the zone spill near the formula's 66.7% (seeded,
// ±5 points for a 4000-request run); phase 3 no failed request and
// everything on the passive site; phase 4 a rising share on the primary and
// then all local again. Timings are not asserted.
func TestExampleRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)
	phase := func(n int) string {
		i := strings.Index(s, fmt.Sprintf("\n%d. ", n))
		if i < 0 {
			t.Fatalf("no phase %d in:\n%s", n, s)
		}
		sec := s[i+1:]
		if j := strings.Index(sec, fmt.Sprintf("\n%d. ", n+1)); j >= 0 {
			sec = sec[:j]
		}
		return sec
	}
	zone := func(sec, z string) float64 {
		i := strings.Index(sec, "by zone:")
		if i < 0 {
			t.Fatalf("no zone line in:\n%s", sec)
		}
		line := sec[i:]
		j := strings.Index(line, z+" ")
		if j < 0 {
			t.Fatalf("no %s in %q", z, line)
		}
		var v float64
		fmt.Sscanf(line[j+len(z)+1:], "%f%%", &v)
		return v
	}
	for _, n := range []int{1, 2, 3, 4} {
		if sec := phase(n); !strings.Contains(sec, "; 0 failed") {
			t.Errorf("phase %d: requests failed:\n%s", n, sec)
		}
	}
	if v := zone(phase(1), "us-east-1a"); v != 100 {
		t.Errorf("phase 1: %.1f%% in us-east-1a, want 100", v)
	}
	if v := zone(phase(2), "us-east-1a"); v < 61.7 || v > 71.7 {
		t.Errorf("phase 2: %.1f%% in us-east-1a, want 66.7±5", v)
	}
	if v := zone(phase(3), "us-west-2a") + zone(phase(3), "us-west-2b"); v != 100 {
		t.Errorf("phase 3: %.1f%% on the passive site, want 100", v)
	}
	p4 := phase(4)
	var ramp [6]int
	i := strings.Index(p4, "per 250ms:")
	if i < 0 {
		t.Fatalf("no ramp line in:\n%s", p4)
	}
	if _, err := fmt.Sscanf(p4[i+len("per 250ms:"):], " %d%% %d%% %d%% %d%% %d%% %d%%", &ramp[0], &ramp[1], &ramp[2], &ramp[3], &ramp[4], &ramp[5]); err != nil {
		t.Fatal(err)
	}
	if ramp[0] >= 100 || ramp[0] >= ramp[5] {
		t.Errorf("phase 4: the primary's share %v did not grow gradually", ramp)
	}
	if v := zone(p4, "us-east-1a"); v != 100 {
		t.Errorf("phase 4: %.1f%% in us-east-1a at the end, want 100", v)
	}
}
