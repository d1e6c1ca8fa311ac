package main

import (
	"os"
	"testing"
)

// The example runs end to end against a real agent when one is available.
func TestExampleRuns(t *testing.T) {
	bin := findConsul()
	if bin == "" {
		if os.Getenv("LODESTAR_REQUIRE_CONSUL") == "1" {
			t.Fatal("no consul binary (run scripts/consul.sh)")
		}
		t.Skip("no consul binary; run scripts/consul.sh")
	}
	if err := run(bin); err != nil {
		t.Fatal(err)
	}
}
