package main

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/debugpage"
	"github.com/lodestar-go/lodestar/resolver"
)

// The demo runs end to end (small load) and prints a table for every
// registered algorithm in which every request is accounted for; run fails if
// any request, the first ones included, got no answer. Each table has the
// rows that say what the protections did to each of the five backends (how
// many ejections, breaker openings and health changes depends on timing, so
// only the rows' shape is checked: a "-" or a count per backend).
func TestDemoRuns(t *testing.T) {
	var out strings.Builder
	// While each run goes, its balancer is on the debug page the demo serves.
	var pages, shown int
	onTransport = func(url string) {
		pages++
		resp, err := http.Get(url + "?format=json")
		if err != nil {
			t.Errorf("the debug page: %v", err)
			return
		}
		defer resp.Body.Close()
		var page debugpage.Page
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Errorf("the debug page's JSON: %v", err)
			return
		}
		for _, b := range page.Balancers {
			if b.Service == "demo" && b.Door == "http" && len(b.Endpoints) == len(specs) {
				shown++
				return
			}
		}
	}
	defer func() { onTransport = nil }()
	if err := run(&out, 200, 4); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if !regexp.MustCompile(`(?m)^debug page: http://127\.0\.0\.1:\d+/\?refresh=1`).MatchString(s) {
		t.Errorf("the demo does not print the debug page's address:\n%s", s)
	}
	if n := len(balancer.Algorithms()); pages != n || shown != n {
		t.Errorf("the debug page was read during %d of %d runs and showed the demo's balancer in %d", pages, n, shown)
	}
	for _, name := range balancer.Algorithms() {
		i := strings.Index(s, "== "+name+"  (200 requests")
		if i < 0 {
			t.Errorf("no table for %s in:\n%s", name, s)
			continue
		}
		table, _, _ := strings.Cut(s[i:], "\n\n")
		lines := strings.Split(table, "\n")
		if len(lines) != 6 {
			t.Errorf("%s: want a title, a header, the figures and 3 protection rows, got:\n%s", name, table)
			continue
		}
		for j, row := range []struct{ label, cell string }{
			{"ejected", `^(-|\d+× \w+(, \d+× \w+)*)$`},
			{"breaker", `^(-|opened \d+×)$`},
			{"health", `^(-|down \d+×)$`},
		} {
			line := lines[3+j]
			rest, ok := strings.CutPrefix(line, row.label)
			if !ok {
				t.Errorf("%s: want the %q row, got %q", name, row.label, line)
				continue
			}
			cells := strings.Split(strings.TrimSpace(rest), "  ")
			var got []string
			for _, c := range cells {
				if c = strings.TrimSpace(c); c != "" {
					got = append(got, c)
				}
			}
			if len(got) != len(specs) {
				t.Errorf("%s: %q row: want %d cells, got %q", name, row.label, len(specs), got)
			}
			for _, c := range got {
				if !regexp.MustCompile(row.cell).MatchString(c) {
					t.Errorf("%s: %q row: bad cell %q", name, row.label, c)
				}
			}
		}
	}
}

// The demo does not wait before its first request: with every algorithm, a
// fresh Transport's first request is answered, and so are 16 first requests
// sent at once on a fresh Transport.
func TestFirstRequestsNeedNoWait(t *testing.T) {
	var eps []resolver.Endpoint
	for i, s := range specs {
		srv := startBackend(s, uint64(i))
		defer srv.Close()
		eps = append(eps, resolver.Endpoint{Address: srv.Listener.Addr().String()})
	}
	for _, name := range balancer.Algorithms() {
		for _, n := range []int{1, 16} {
			for range 10 {
				alg, err := balancer.NewAlgorithm(name, nil)
				if err != nil {
					t.Fatal(err)
				}
				res, err := drive(alg, eps, n, n, "")
				if err != nil {
					t.Fatal(err)
				}
				if res.total != n || res.sendErrs != 0 {
					t.Fatalf("%s, %d first requests on a fresh Transport: %d sent, %d unanswered (first: %v)", name, n, res.total, res.sendErrs, res.firstErr)
				}
			}
		}
	}
}
