package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The example runs end to end through both doors and shows what it says:
//
//  1. with a backend hard down, no idempotent request fails with retries on;
//     without the retry section, round robin sends exactly a quarter of them
//     to the dead backend, and those fail;
//  2. a write that reached the backend that dropped its connection is sent
//     once and fails; marked idempotent, it is retried elsewhere and
//     succeeds;
//  3. the backend that asked for a pause gets no request during it (its
//     count stays at the one request that asked), and gets requests again
//     after it;
//  4. in the storm, every request fails, retries happen, and the attempts
//     stay within the budget's bound, below maxAttempts × requests.
//
// Counts that depend on timing (how many requests phase 3 sends, how the
// retries spread) are not asserted beyond these properties.
func TestExampleRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)

	for _, door := range []struct{ name, read, write, mark string }{
		{"HTTP", "GET", "POST", "lodestar.WithIdempotent"},
		{"gRPC", "EmptyCall", "UnaryCall", "retry.WithIdempotent"},
	} {
		t.Run(door.name, func(t *testing.T) {
			sec := section(t, s, "\n== "+door.name+":", "\n== ")

			// 1. A hard-down backend.
			p := section(t, sec, "\n1. ", "\n2. ")
			with := row(t, p, "with retries")
			if with.sent != phase1Requests || with.failed != 0 {
				t.Errorf("phase 1 with retries: %d sent, %d failed; want %d, 0", with.sent, with.failed, phase1Requests)
			}
			if with.attempts <= int64(with.sent) || with.withdrawn == 0 {
				t.Errorf("phase 1 with retries: %d attempts, %d withdrawn: no retry happened", with.attempts, with.withdrawn)
			}
			without := row(t, p, "without retries (no retry section)")
			// gRPC: a answers UNAVAILABLE, which failure accrual leaves to
			// the application, so a keeps its round-robin quarter. HTTP: a
			// refuses connections, and failure accrual (on by default) ejects
			// it after 5 in a row, so fewer fail.
			wantFailed := phase1Requests / 4
			if door.name == "HTTP" {
				wantFailed = 5
			}
			if without.sent != phase1Requests || without.failed != wantFailed || without.attempts != int64(without.sent) {
				t.Errorf("phase 1 without retries: %d sent, %d failed, %d attempts; want %d, %d, %d",
					without.sent, without.failed, without.attempts, phase1Requests, wantFailed, phase1Requests)
			}

			// 2. Safety.
			p = section(t, sec, "\n2. ", "\n3. ")
			once := row(t, p, door.write)
			if once.sent != 1 || once.failed != 1 || once.attempts != 1 || once.recv[2] != 1 {
				t.Errorf("phase 2 %s: %+v; want sent once, to c, failed, no retry", door.write, once)
			}
			marked := row(t, p, door.write+" + "+door.mark)
			if marked.failed != 0 || marked.recv[2] != 1 || marked.attempts < 2 {
				t.Errorf("phase 2 marked %s: %+v; want c's attempt, then a retry that succeeded", door.write, marked)
			}
			if !strings.Contains(p, "the "+door.write+": failed: ") || !strings.Contains(p, "the marked "+door.write+": answered by ") {
				t.Errorf("phase 2 does not say the %s failed and the marked one was answered:\n%s", door.write, p)
			}

			// 3. Overload: the pause is kept.
			p = section(t, sec, "\n3. ", "\n4. ")
			if first := row(t, p, "one "+door.read+" for d's user"); first.failed != 0 || first.recv[3] != 1 || first.attempts < 2 {
				t.Errorf("phase 3 first request: %+v; want d's answer, then a retry that succeeded", first)
			}
			if load := row(t, p, door.read+"s every 5ms"); load.failed != 0 {
				t.Errorf("phase 3 load: %d of %d failed", load.failed, load.sent)
			}
			paused := 0
			for _, line := range strings.Split(p, "\n") {
				if strings.Contains(line, "(paused)") {
					paused++
					if !strings.HasSuffix(line, "d    1") {
						t.Errorf("phase 3 %q: d's count is not 1 (the request that asked for the pause)", line)
					}
				}
			}
			if paused == 0 {
				t.Error("phase 3: no sample during the pause")
			}
			var during, after int
			var secs float64
			line := lineWith(t, p, "d received ")
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "d received %d requests during its %fs pause, %d after it", &during, &secs, &after); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if during != 0 || after == 0 || secs < 0.9 {
				t.Errorf("phase 3 %q: want none during a pause of about 1s, some after", line)
			}

			// 4. The storm stays within the budget's bound.
			p = section(t, sec, "\n4. ", "\n\n")
			st := row(t, p, "storm")
			if st.sent != stormRequests || st.failed != stormRequests {
				t.Errorf("storm: %d sent, %d failed; want every one of %d to fail", st.sent, st.failed, stormRequests)
			}
			if st.refused == 0 || st.attempts != int64(st.sent)+st.withdrawn {
				t.Errorf("storm: %+v; want refusals, and an attempt for each request and each retry granted", st)
			}
			var attempts, bound int64
			line = lineWith(t, p, "   attempts ")
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "attempts %d ≤ bound %d", &attempts, &bound); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if attempts != st.attempts || attempts > bound || attempts <= stormRequests || attempts >= 3*stormRequests {
				t.Errorf("storm %q: want %d attempts, more than %d, within the bound, and below %d", line, st.attempts, stormRequests, 3*stormRequests)
			}
		})
	}
	if !strings.Contains(s, "What it shows:") {
		t.Error("no closing explanation")
	}
}

// section returns the part of s from the first from to the next to after it
// (or the end).
func section(t *testing.T, s, from, to string) string {
	t.Helper()
	i := strings.Index(s, from)
	if i < 0 {
		t.Fatalf("no %q in:\n%s", from, s)
	}
	s = s[i+len(from):]
	if j := strings.Index(s, to); j >= 0 {
		s = s[:j]
	}
	return s
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

var rowRE = regexp.MustCompile(`^ {5}(\S.*?) {2,}(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\S+) +(\S+)$`)

// row reads the table row labelled label in s.
func row(t *testing.T, s, label string) counts {
	t.Helper()
	for _, line := range strings.Split(s, "\n") {
		m := rowRE.FindStringSubmatch(line)
		if m == nil || m[1] != label {
			continue
		}
		n := make([]int64, 9)
		for i, f := range m[2:] {
			if f == "-" {
				continue
			}
			v, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			n[i] = v
		}
		return counts{sent: int(n[0]), failed: int(n[1]), attempts: n[2],
			recv: [4]int{int(n[3]), int(n[4]), int(n[5]), int(n[6])}, withdrawn: n[7], refused: n[8], noBudget: m[9] == "-"}
	}
	t.Fatalf("no row %q in:\n%s", label, s)
	return counts{}
}
