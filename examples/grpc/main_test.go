package main

import "testing"

// The example runs end to end: it exits the process (failing the test) if any
// step of it fails.
func TestExampleRuns(t *testing.T) { main() }
