package balancer

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

// testEndpoints returns n endpoints 10.0.x.y:8080 with weight 1, sorted by address.
func testEndpoints(n int) []*Endpoint {
	eps := make([]*Endpoint, n)
	for i := range eps {
		eps[i] = newEndpoint(resolver.Endpoint{Address: addr(i)}, time.Unix(0, 0))
	}
	return eps
}

func addr(i int) string { return fmt.Sprintf("10.%d.%d.%d:8080", i>>16, (i>>8)&0xff, i&0xff) }

func resolverEndpoints(n int, weight func(i int) uint32) []resolver.Endpoint {
	eps := make([]resolver.Endpoint, n)
	for i := range eps {
		eps[i] = resolver.Endpoint{Address: addr(i)}
		if weight != nil {
			eps[i].Weight = weight(i)
		}
	}
	return eps
}

// seededRand returns a concurrency-safe seeded source (PCG behind a mutex:
// tests only).
func seededRand(seed uint64) func() uint64 {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func() uint64 {
		mu.Lock()
		defer mu.Unlock()
		return r.Uint64()
	}
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestEngine returns an engine running alg over eps, with a seeded source
// and the fake clock.
func newTestEngine(t testing.TB, alg Algorithm, clk *fakeClock, seed uint64, eps []resolver.Endpoint) *Engine {
	t.Helper()
	e, err := NewEngine(Config{Algorithm: alg}, Options{Now: clk.Now, Rand: seededRand(seed)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if eps != nil {
		e.Update(eps)
	}
	return e
}

func maxMean(s []float64) float64 {
	var sum, mx float64
	for _, v := range s {
		sum += v
		mx = max(mx, v)
	}
	return mx / (sum / float64(len(s)))
}
