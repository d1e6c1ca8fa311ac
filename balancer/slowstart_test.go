package balancer

import (
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// rampEngine runs alg over two settled endpoints (addr 0 and 1) and adds a third
// (addr 2) at the fake clock's current time, then advances the clock by age.
func rampEngine(t *testing.T, alg Algorithm, weights []uint32, age time.Duration) (*Engine, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	w := func(i int) uint32 { return weights[i] }
	e := newTestEngine(t, alg, clk, 21, resolverEndpoints(2, w))
	clk.Advance(time.Hour) // the first two have finished ramping
	e.Update(resolverEndpoints(3, w))
	clk.Advance(age)
	return e, clk
}

func share(counts []int, i int) float64 {
	sum := 0
	for _, c := range counts {
		sum += c
	}
	return float64(counts[i]) / float64(sum)
}

func TestSlowStartRamp(t *testing.T) {
	const window = 60 * time.Second
	const draws = 60_000
	for _, tc := range []struct {
		name    string
		alg     func(SlowStart) Algorithm
		weights []uint32
		ss      SlowStart
		age     time.Duration
		want    float64 // the new endpoint's share
	}{
		// Round robin: the new endpoint's weight is f·1 against 1 and 1.
		{"rr linear quarter", rr, []uint32{1, 1, 1}, SlowStart{Window: window}, window / 4, 0.25 / 2.25},
		{"rr linear half", rr, []uint32{1, 1, 1}, SlowStart{Window: window}, window / 2, 0.5 / 2.5},
		{"rr aggression 2", rr, []uint32{1, 1, 1}, SlowStart{Window: window, Aggression: 2}, window / 4, 0.5 / 2.5},
		{"rr aggression 0.5", rr, []uint32{1, 1, 1}, SlowStart{Window: window, Aggression: 0.5}, window / 2, 0.25 / 2.25},
		{"rr min weight", rr, []uint32{1, 1, 1}, SlowStart{Window: window}, time.Millisecond, 0.1 / 2.1},
		{"rr min weight 30%", rr, []uint32{1, 1, 1}, SlowStart{Window: window, MinWeightPercent: 30}, window / 10, 0.3 / 2.3},
		{"rr done", rr, []uint32{1, 1, 1}, SlowStart{Window: window}, window, 1.0 / 3},
		// Weighted round robin: weights 1 and 3 settled, the new one 2·f.
		{"wrr half", wrr, []uint32{1, 3, 2}, SlowStart{Window: window}, window / 2, 1.0 / 5},
		{"wrr done", wrr, []uint32{1, 3, 2}, SlowStart{Window: window}, 2 * window, 2.0 / 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := rampEngine(t, tc.alg(tc.ss), tc.weights, tc.age)
			got := share(countPicks(t, e, draws), 2)
			if d := got - tc.want; d > 0.01 || d < -0.01 {
				t.Fatalf("new endpoint's share %.4f, want %.4f ±0.01 (seed 21)", got, tc.want)
			}
		})
	}
}

func rr(ss SlowStart) Algorithm  { return &RoundRobin{SlowStart: ss} }
func wrr(ss SlowStart) Algorithm { return &WeightedRoundRobin{SlowStart: ss} }

// Least request: requests are held in batches so in-flight counts matter; a
// ramping endpoint takes clearly less than its share, and its full share once
// the window has passed.
func TestSlowStartLeastRequest(t *testing.T) {
	const window = time.Minute
	batchShare := func(age time.Duration) float64 {
		e, _ := rampEngine(t, &LeastRequest{SlowStart: SlowStart{Window: window}}, []uint32{1, 1, 1}, age)
		newEp := e.Endpoint(addr(2))
		got, total := 0, 0
		for range 200 {
			var held []*Endpoint
			for range 30 {
				ep, _ := e.Pick(PickInfo{})
				held = append(held, ep)
				if ep == newEp {
					got++
				}
				total++
			}
			for _, ep := range held {
				e.Done(ep, outcome.Outcome{})
			}
		}
		return float64(got) / float64(total)
	}
	ramping, done := batchShare(window/4), batchShare(window)
	if ramping > 0.2 || ramping < 0.03 {
		t.Errorf("at a quarter of the window the new endpoint took %.3f, want well under 1/3 and above 0", ramping)
	}
	if done < 0.30 || done > 0.37 {
		t.Errorf("after the window the new endpoint took %.3f, want about 1/3", done)
	}
}

// An endpoint back from ejection ramps again, from when its condition cleared.
func TestSlowStartAfterEjection(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &RoundRobin{SlowStart: SlowStart{Window: time.Minute}}, clk, 5, resolverEndpoints(3, nil))
	clk.Advance(time.Hour)
	e.SetCondition(addr(2), Ejected, true)
	clk.Advance(time.Hour)
	e.SetCondition(addr(2), Ejected, false)
	clk.Advance(15 * time.Second)
	if got, want := share(countPicks(t, e, 60_000), 2), 0.25/2.25; got-want > 0.01 || want-got > 0.01 {
		t.Fatalf("returning endpoint's share %.4f, want %.4f", got, want)
	}
}

// Once every endpoint has ramped, picks stop reading the clock.
func TestSlowStartStopsReadingClock(t *testing.T) {
	clk := newFakeClock()
	var reads int
	now := func() time.Time { reads++; return clk.Now() }
	e, err := NewEngine(Config{Algorithm: &RoundRobin{SlowStart: SlowStart{Window: time.Minute}}}, Options{Now: now, Rand: seededRand(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update([]resolver.Endpoint{{Address: addr(0)}, {Address: addr(1)}})
	clk.Advance(2 * time.Minute)
	for range 10 {
		ep, _ := e.Pick(PickInfo{})
		e.Done(ep, outcome.Outcome{})
	}
	reads = 0
	for range 10 {
		ep, _ := e.Pick(PickInfo{})
		e.Done(ep, outcome.Outcome{})
	}
	if reads != 0 {
		t.Fatalf("picks after the ramp read the clock %d times", reads)
	}
}
