package balancer

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// sequence picks n times through e (reporting each outcome at once) and names
// the endpoints by letter, A for the lowest address.
func sequence(t *testing.T, e *Engine, n int) string {
	t.Helper()
	letter := map[*Endpoint]byte{}
	for i, ep := range e.Endpoints() {
		letter[ep] = 'A' + byte(i)
	}
	var b strings.Builder
	for range n {
		ep, err := e.Pick(PickInfo{})
		if err != nil {
			t.Fatal(err)
		}
		b.WriteByte(letter[ep])
		e.Done(ep, outcome.Outcome{})
	}
	return b.String()
}

// zeroRand makes round robins start at the first endpoint.
func zeroRand() uint64 { return 0 }

func newSeqEngine(t *testing.T, alg Algorithm, weights ...uint32) *Engine {
	t.Helper()
	e, err := NewEngine(Config{Algorithm: alg}, Options{Rand: zeroRand})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.Update(resolverEndpoints(len(weights), func(i int) uint32 { return weights[i] }))
	return e
}

func TestRoundRobinSequence(t *testing.T) {
	e := newSeqEngine(t, &RoundRobin{}, 1, 5, 1) // weights ignored
	if got, want := sequence(t, e, 7), "ABCABCA"; got != want {
		t.Fatalf("sequence %s, want %s", got, want)
	}
}

func TestWeightedRoundRobinSequence(t *testing.T) {
	for _, tc := range []struct {
		weights []uint32
		want    string
	}{
		{[]uint32{5, 1, 1}, "AABAAAC" + "AABAAAC"}, // A runs 3 at most, across periods too
		{[]uint32{10, 2, 2}, "AABAAAC"},            // reduced by the gcd
		{[]uint32{3, 2}, "ABAAB" + "ABAAB"},
		{[]uint32{1, 2, 3}, "CBCACB" + "CBCACB"},
		{[]uint32{4, 4, 4}, "ABCABC"}, // equal: round robin
	} {
		e := newSeqEngine(t, &WeightedRoundRobin{}, tc.weights...)
		if got := sequence(t, e, len(tc.want)); got != tc.want {
			t.Errorf("weights %v: sequence %s, want %s", tc.weights, got, tc.want)
		}
	}
}

// The heaviest endpoint's longest run of consecutive picks, across periods,
// is the fewest possible, ⌈W/R⌉ (W its weight, R the others' total, after
// reduction by the gcd), and every endpoint gets exactly its weight's turns:
// a property over 2,000 random weight sets (seed 1), 2 to 12 endpoints with
// weights 1 to 50.
func TestWeightedRoundRobinShortestHeavyRuns(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 0))
	for range 2000 {
		weights := make([]uint64, 2+rng.IntN(11))
		for i := range weights {
			weights[i] = 1 + rng.Uint64N(50)
		}
		seq := edfSequence(weights, 1<<16)
		g := weights[0]
		for _, w := range weights {
			g = gcd(g, w)
		}
		var sum uint64
		h := 0
		for i, w := range weights {
			sum += w / g
			if w > weights[h] {
				h = i
			}
		}
		if uint64(len(seq)) != sum {
			t.Fatalf("weights %v: period %d, want %d", weights, len(seq), sum)
		}
		got := make([]uint64, len(weights))
		for _, i := range seq {
			got[i]++
		}
		for i := range weights {
			if got[i] != weights[i]/g {
				t.Fatalf("weights %v: endpoint %d has %d turns, want %d", weights, i, got[i], weights[i]/g)
			}
		}
		W, R := weights[h]/g, sum-weights[h]/g
		want := max(1, (W+R-1)/R)
		if run := longestCyclicRun(seq, uint32(h)); uint64(run) != want {
			t.Fatalf("weights %v: the heaviest runs %d in a row, want %d (⌈%d/%d⌉): %v", weights, run, want, W, R, seq)
		}
	}
}

// longestCyclicRun returns the longest run of x in seq repeated.
func longestCyclicRun(seq []uint32, x uint32) int {
	best, run := 0, 0
	for k := range 2 * len(seq) {
		if seq[k%len(seq)] == x {
			run++
			best = max(best, run)
		} else {
			run = 0
		}
	}
	return min(best, len(seq))
}

func TestWeightedRoundRobinEqualWeightsIsRoundRobin(t *testing.T) {
	p := (&WeightedRoundRobin{}).Build(BuildInfo{Endpoints: testEndpoints(10), Rand: zeroRand, Now: newFakeClock().Now})
	if _, ok := p.(*rrPicker); !ok {
		t.Fatalf("equal weights built %T, want the round robin picker", p)
	}
}

// With weights whose sum exceeds the table limit the schedule is scaled; shares
// stay within the stated rounding.
func TestWeightedRoundRobinScaledShares(t *testing.T) {
	eps := testEndpoints(1000)
	weights := make([]uint64, len(eps))
	var sum uint64
	for i := range weights {
		weights[i] = uint64(1000 + i*37%5000)
		sum += weights[i]
	}
	limit := 1 << 16
	seq := edfSequence(weights, limit)
	if len(seq) < limit*9/10 || len(seq) > limit*11/10 {
		t.Fatalf("period %d, want about %d", len(seq), limit)
	}
	got := make([]int, len(eps))
	for _, i := range seq {
		got[i]++
	}
	unit := float64(len(seq)) / float64(len(eps)) // entries per average endpoint
	for i, w := range weights {
		want := float64(w) / float64(sum) * float64(len(seq))
		if d := float64(got[i]) - want; d > 1 || d < -1 {
			t.Fatalf("endpoint %d: %d entries, want %.1f ±1 (unit %.1f)", i, got[i], want, unit)
		}
	}
}
