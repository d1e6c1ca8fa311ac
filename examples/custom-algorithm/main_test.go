package main

import (
	"fmt"
	"strings"
	"testing"
)

// The custom algorithm works through both doors, with no waiting before the
// first request: every request is served, and the failing backend ends up with
// clearly less than a third (200) of the traffic. It gets about 1 pick in 9
// (67) plus a few before its first failure, typically 60-90; 120 is over six
// standard deviations above 67, room for the unseeded randomness. The output
// says what it shows and why.
func TestRunSteersAwayFromFailures(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	doors := 0
	for _, line := range strings.Split(s, "\n") {
		i := strings.Index(line, "healthy ")
		if !strings.HasPrefix(line, "HTTP,") && !strings.HasPrefix(line, "gRPC,") || i < 0 {
			continue
		}
		doors++
		var a, b, failing, failed int
		if _, err := fmt.Sscanf(line[i:], "healthy %d, %d; failing %d (%d of them", &a, &b, &failing, &failed); err != nil {
			t.Fatalf("unparsable line %q: %v", line, err)
		}
		if a+b+failing != requests || failing >= 120 || a <= failing || b <= failing || failed > failing {
			t.Errorf("%s: want all %d served, the failing backend under 120 and below each healthy one", line, requests)
		}
	}
	if doors != 2 {
		t.Errorf("want an HTTP and a gRPC result line, got %d in:\n%s", doors, s)
	}
	for _, want := range []string{"fair share would be 200", "Why those numbers", "1 pick in 9"} {
		if !strings.Contains(s, want) {
			t.Errorf("output does not explain itself (no %q):\n%s", want, s)
		}
	}
}
