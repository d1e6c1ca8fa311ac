package main

import (
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/balancer"
)

// The demo runs end to end (small load) and prints a table for every
// registered algorithm in which every request is accounted for.
func TestDemoRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out, 200, 4); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, name := range balancer.Algorithms() {
		if !strings.Contains(s, "== "+name+"  (200 requests") {
			t.Errorf("no table for %s in:\n%s", name, s)
		}
	}
}
