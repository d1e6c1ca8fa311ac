package main

import (
	"fmt"
	"strings"
	"testing"
)

// The custom algorithm works through both doors: the failing backend ends up
// with clearly less than a third (200) of the traffic in each. It typically gets
// 60-90 (it is tried while failure counts are still even); 150 leaves room for
// the unseeded randomness.
func TestRunSteersAwayFromFailures(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var a, b, failing int
		i := strings.Index(line, "healthy")
		if _, err := fmt.Sscanf(line[i:], "healthy %d, %d; failing %d", &a, &b, &failing); err != nil {
			t.Fatalf("unparsable line %q: %v", line, err)
		}
		if a+b+failing != 600 || failing >= 150 {
			t.Errorf("%s: want all 600 served and the failing backend under 150", line)
		}
	}
}
