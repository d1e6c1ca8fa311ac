package balancer

import (
	"fmt"
	"slices"
	"testing"

	"github.com/lodestar-go/lodestar/resolver"
)

// The subsetting simulation: real engines, fed a static set, no sockets.
// 1,000 clients × 1,000 endpoints, subset 20. Every figure is deterministic:
// rendezvous clients are "client-0".."client-999" (the ranking's only
// randomness is the hash of the client id), deterministic clients are indexes
// 0..999. The figures are recorded in benchmarks/RESULTS.md ("Subsetting"):
//
//	go test -run TestSubsetSimulation -v ./balancer/

// Under -race (the whole suite's run) it runs at 300 × 300, same subset size
// and mean, to keep the suite's time: the assertions hold there too.
var (
	simClients   = 1000
	simEndpoints = 1000
)

const simSize = 20

// simEngines returns an engine per client, fed set.
func simEngines(t *testing.T, mode string, clients []int, set []resolver.Endpoint) []*Engine {
	t.Helper()
	out := make([]*Engine, len(clients))
	for i, c := range clients {
		sc := SubsetConfig{Size: simSize, Mode: mode, ClientID: fmt.Sprintf("client-%d", c)}
		if mode == SubsetDeterministic {
			sc.ClientIndex = new(c)
		}
		// Without per-endpoint metric attributes, which would cost most of the time.
		e, err := NewEngine(Config{Subset: &sc}, Options{Logger: quietLogs, MetricsOmitEndpoint: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		e.Update(set)
		out[i] = e
	}
	return out
}

// subsetsOf returns each engine's subset, by address.
func subsetsOf(engines []*Engine) [][]string {
	out := make([][]string, len(engines))
	for i, e := range engines {
		out[i] = addrs(e.Eligible())
	}
	return out
}

// spread returns max/mean of clients per endpoint over n endpoints.
func spread(subsets [][]string, n int) (maxOverMean float64, maxN, minN int) {
	per := map[string]int{}
	total := 0
	for _, s := range subsets {
		for _, a := range s {
			per[a]++
			total++
		}
	}
	minN = total
	for _, c := range per {
		maxN, minN = max(maxN, c), min(minN, c)
	}
	if len(per) < n {
		minN = 0
	}
	return float64(maxN) / (float64(total) / float64(n)), maxN, minN
}

// moved counts the client–backend pairs of before that after no longer has.
func moved(before, after [][]string) (n, total int) {
	for i := range before {
		for _, a := range before[i] {
			total++
			if !slices.Contains(after[i], a) {
				n++
			}
		}
	}
	return n, total
}

func TestSubsetSimulation(t *testing.T) {
	if testing.Short() {
		t.Skip("simulation of 1,100 engines per mode")
	}
	if raceOn {
		simClients, simEndpoints = 300, 300
	}
	t.Logf("%d clients × %d endpoints, subset %d", simClients, simEndpoints, simSize)
	set := resolverEndpoints(simEndpoints, nil)
	clients := make([]int, simClients)
	for i := range clients {
		clients[i] = i
	}
	var extra []int // the 10% more clients
	for i := simClients; i < simClients*11/10; i++ {
		extra = append(extra, i)
	}
	for _, mode := range []string{SubsetRendezvous, SubsetDeterministic} {
		t.Run(mode, func(t *testing.T) {
			engines := simEngines(t, mode, clients, set)
			base := subsetsOf(engines)
			for i, s := range base {
				if len(s) != simSize {
					t.Fatalf("client %d: %d members, want %d", i, len(s), simSize)
				}
			}
			ratio, maxN, minN := spread(base, simEndpoints)
			t.Logf("%s: clients per backend max/mean %.3f (max %d, min %d, mean %d)", mode, ratio, maxN, minN, simClients*simSize/simEndpoints)
			if mode == SubsetDeterministic && ratio > 1.05 {
				t.Errorf("deterministic: max/mean %.3f, want ≤ 1.05", ratio)
			}
			if mode == SubsetRendezvous && ratio > 2.5 {
				t.Errorf("rendezvous: max/mean %.3f, want ≤ 2.5 (binomial, expect about 1.5-1.8)", ratio)
			}

			// 10% more clients: each client's subset depends on its own id
			// or index only, so the existing ones keep theirs; measured
			// rather than assumed, with the spread of the grown fleet.
			grown := append(slices.Clone(engines), simEngines(t, mode, extra, set)...)
			pairs, total := moved(base, subsetsOf(grown[:simClients]))
			ratio, maxN, _ = spread(subsetsOf(grown), simEndpoints)
			t.Logf("%s: 10%% more clients moved %d of %d existing pairs; max/mean now %.3f (max %d)", mode, pairs, total, ratio, maxN)
			if pairs*10 > total {
				t.Errorf("%s: 10%% more clients moved %d of %d pairs, want ≤ 10%%", mode, pairs, total)
			}

			// Remove one backend (the first by address) from every client's
			// set and see which subsets change.
			gone := set[0].Address
			for _, e := range engines {
				e.Update(set[1:])
			}
			after := subsetsOf(engines)
			changed, holders, wrong := 0, 0, 0
			for i := range base {
				held := slices.Contains(base[i], gone)
				diff := !slices.Equal(base[i], after[i])
				if held {
					holders++
				}
				if diff {
					changed++
				}
				if diff && !held {
					wrong++
				}
			}
			pairs, total = moved(base, after)
			t.Logf("%s: removing one backend changed %d subsets (%d held it), moved %d of %d pairs (%.2f%%)",
				mode, changed, holders, pairs, total, 100*float64(pairs)/float64(total))
			if mode == SubsetRendezvous {
				if wrong > 0 || changed != holders || pairs != holders {
					t.Errorf("rendezvous: %d subsets changed that did not hold the backend; %d changed, %d held it, %d pairs moved", wrong, changed, holders, pairs)
				}
			}

		})
	}
}
