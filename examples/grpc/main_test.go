package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// The example runs end to end, and its ring_hash part shows what it says:
// every user's RPCs went to one backend (run fails otherwise), every user is
// listed once, the users spread over more than one backend, and each user is
// on the backend lodestar's ring_hash picks for its key over the same four
// addresses. The servers' ports are random, so which backend a user lands on
// varies from run to run; these properties do not.
func TestExampleRuns(t *testing.T) {
	var out strings.Builder
	if err := run(&out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	s := out.String()
	t.Log("\n" + s)

	var addrs []string
	placed := map[string]string{} // user → backend name
	used := 0
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(line, "target: static:///"); ok {
			addrs = strings.Split(rest, ",")
		}
		name, list, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok || len(name) != 1 || !strings.Contains(list, " users") {
			continue
		}
		var n int
		if _, err := fmt.Sscanf(list, "%d users", &n); err != nil {
			t.Fatalf("unparsable line %q: %v", line, err)
		}
		us := strings.Fields(list)[2:]
		if len(us) != n {
			t.Errorf("%q: %d users listed, says %d", line, len(us), n)
		}
		if n > 0 {
			used++
		}
		for _, u := range us {
			if prev, dup := placed[u]; dup {
				t.Errorf("%s listed on %s and %s", u, prev, name)
			}
			placed[u] = name
		}
	}
	if len(addrs) != 4 || len(placed) != users {
		t.Fatalf("want 4 target addresses and %d placed users, got %d and %d in:\n%s", users, len(addrs), len(placed), s)
	}
	if used < 2 {
		t.Errorf("the users did not spread: %d backend(s) used", used)
	}
	if !strings.Contains(s, fmt.Sprintf("the users spread over %s backends", spreadWords(used))) {
		t.Errorf("the spread line does not say %d backends", used)
	}

	// The algorithm's own answer: an engine with ring_hash over the same
	// addresses, picking with each user's key hashed as the policy hashes it.
	eng, err := balancer.NewEngine(balancer.Config{Algorithm: &balancer.RingHash{}}, balancer.Options{Service: "check"})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	var eps []resolver.Endpoint
	for _, a := range addrs {
		eps = append(eps, resolver.Endpoint{Address: a})
	}
	eng.Update(eps)
	for user, name := range placed {
		ep, err := eng.Pick(balancer.PickInfo{Hash: balancer.HashKey(user), HasHash: true})
		if err != nil {
			t.Fatal(err)
		}
		eng.Done(ep, outcome.Outcome{Class: outcome.Success})
		if want := string(rune('a' + slices.Index(addrs, ep.Address()))); want != name {
			t.Errorf("%s landed on %s; ring_hash over the same addresses says %s", user, name, want)
		}
	}
}

func spreadWords(used int) string {
	if used == 4 {
		return "all 4"
	}
	return fmt.Sprintf("%d of the 4", used)
}
