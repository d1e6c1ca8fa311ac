package balancer

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/resolver"
)

func hashPicker(t *testing.T, alg Algorithm, eps []*Endpoint) Picker {
	t.Helper()
	return alg.Build(BuildInfo{Endpoints: eps, Rand: seededRand(1), Now: newFakeClock().Now})
}

// ringShares returns each endpoint's exact share of the hash space.
func ringShares(p Picker, n int) []float64 {
	switch p := p.(type) {
	case *ringPicker[uint16]:
		return p.shares(n)
	case *ringPicker[uint32]:
		return p.shares(n)
	}
	panic(fmt.Sprintf("%T", p))
}

func maglevShares(p Picker, n int) []float64 {
	s := make([]float64, n)
	switch p := p.(type) {
	case *maglevPicker[uint16]:
		for _, o := range p.table {
			s[o]++
		}
	case *maglevPicker[uint32]:
		for _, o := range p.table {
			s[o]++
		}
	default:
		panic(fmt.Sprintf("%T", p))
	}
	return s
}

// Balance is measured exactly, as each endpoint's share of the hash space (ring)
// or of the table's slots (Maglev), not by sampling keys.
func TestHashBalance(t *testing.T) {
	for _, n := range []int{10, 100, 1000} {
		eps := testEndpoints(n)
		if r := maxMean(ringShares(hashPicker(t, &RingHash{}, eps), n)); r > 1.10 {
			t.Errorf("ring_hash at %d endpoints: max/mean %.3f > 1.10", n, r)
		} else {
			t.Logf("ring_hash at %d endpoints: max/mean %.3f", n, r)
		}
		if r := maxMean(maglevShares(hashPicker(t, &Maglev{}, eps), n)); r > 1.02 {
			t.Errorf("maglev at %d endpoints: max/mean %.3f > 1.02", n, r)
		} else {
			t.Logf("maglev at %d endpoints: max/mean %.3f", n, r)
		}
	}
}

func TestHashWeights(t *testing.T) {
	eps := testEndpoints(10)
	eps[3].setInfo(resolver.Endpoint{Address: eps[3].addr, Weight: 3})
	for name, shares := range map[string][]float64{
		"ring_hash": ringShares(hashPicker(t, &RingHash{}, eps), 10),
		"maglev":    maglevShares(hashPicker(t, &Maglev{}, eps), 10),
	} {
		var sum float64
		for _, s := range shares {
			sum += s
		}
		if got := shares[3] / sum; got < 3.0/12*0.95 || got > 3.0/12*1.05 {
			t.Errorf("%s: weight-3 endpoint of 12 units has share %.3f, want %.3f ±5%%", name, got, 3.0/12)
		}
	}
}

// keysOn maps keys 0..k-1 (hashed as the front doors hash) to endpoint addresses.
func keysOn(p Picker, k int) []string {
	out := make([]string, k)
	for i := range out {
		ep, _ := p.Pick(PickInfo{Hash: HashKey(fmt.Sprint("key-", i)), HasHash: true})
		release(p, ep)
		out[i] = ep.Address()
	}
	return out
}

// Removing one endpoint of N moves its keys, about 1/N, and (ring hash) no
// other key, (Maglev) at most 1% more.
func TestHashDisruption(t *testing.T) {
	const keys = 100_000
	for _, n := range []int{10, 100, 1000} {
		eps := testEndpoints(n)
		victim := eps[n/2].Address()
		rest := append(append([]*Endpoint{}, eps[:n/2]...), eps[n/2+1:]...)
		for _, alg := range []Algorithm{&RingHash{}, &Maglev{}} {
			before := keysOn(hashPicker(t, alg, eps), keys)
			after := keysOn(hashPicker(t, alg, rest), keys)
			var moved, movedOther, onVictim int
			for i := range before {
				if before[i] == victim {
					onVictim++
				}
				if before[i] != after[i] {
					moved++
					if before[i] != victim {
						movedOther++
					}
				}
			}
			frac, extra := float64(moved)/keys, float64(movedOther)/keys
			t.Logf("%s n=%d: %.4f of keys moved (1/N = %.4f), %.4f not from the removed endpoint", alg.Name(), n, frac, 1/float64(n), extra)
			if moved < onVictim {
				t.Errorf("%s n=%d: %d keys moved but %d were on the removed endpoint", alg.Name(), n, moved, onVictim)
			}
			// The removed endpoint's keys: 1/N, give or take its balance (±10%)
			// and sampling.
			if lim := 1.2/float64(n) + 0.002; float64(onVictim)/keys > lim {
				t.Errorf("%s n=%d: removed endpoint held %.4f of keys, want ≈ 1/N", alg.Name(), n, float64(onVictim)/keys)
			}
			switch alg.(type) {
			case *RingHash:
				if movedOther != 0 {
					t.Errorf("ring_hash n=%d: %d keys moved between endpoints that stayed", n, movedOther)
				}
			case *Maglev:
				if extra > 0.01 {
					t.Errorf("maglev n=%d: %.4f of keys moved between endpoints that stayed, want ≤ 0.01", n, extra)
				}
			}
		}
	}
}

// The same key goes to the same endpoint on every build, and a request
// without a key falls back (round robin: in turn).
func TestHashAffinityAndFallback(t *testing.T) {
	eps := testEndpoints(50)
	for _, alg := range []Algorithm{&RingHash{Fallback: FallbackRoundRobin}, &Maglev{Fallback: FallbackRoundRobin}, &BoundedLoad{Fallback: FallbackRoundRobin}} {
		a, b := keysOn(hashPicker(t, alg, eps), 1000), keysOn(hashPicker(t, alg, eps), 1000)
		distinct := map[string]bool{}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%s: key %d went to %s, then %s", alg.Name(), i, a[i], b[i])
			}
			distinct[a[i]] = true
		}
		if len(distinct) < 40 {
			t.Errorf("%s: 1000 keys reached only %d of 50 endpoints", alg.Name(), len(distinct))
		}
		p := hashPicker(t, alg, eps)
		first, _ := p.Pick(PickInfo{})
		release(p, first)
		for i := 1; i <= 50; i++ {
			ep, _ := p.Pick(PickInfo{})
			release(p, ep)
			if want := eps[(indexOf(eps, first)+i)%50]; ep != want {
				t.Fatalf("%s: keyless pick %d went to %s, want %s (round robin)", alg.Name(), i, ep.Address(), want.Address())
			}
		}
	}
}

// release undoes a self-counting picker's count (the engine's Done would).
func release(p Picker, ep *Endpoint) {
	if _, ok := p.(SelfCounting); ok {
		ep.inflight.Add(-1)
	}
}

func indexOf(eps []*Endpoint, ep *Endpoint) int {
	for i, e := range eps {
		if e == ep {
			return i
		}
	}
	return -1
}

func TestMaglevTableSize(t *testing.T) {
	p := hashPicker(t, &Maglev{TableSize: 251}, testEndpoints(10)).(*maglevPicker[uint16])
	if len(p.table) != 251 {
		t.Fatalf("table of %d slots, want 251", len(p.table))
	}
	// More endpoints than slots: the table grows to a prime ≥ 100 per endpoint.
	p = hashPicker(t, &Maglev{TableSize: 251}, testEndpoints(300)).(*maglevPicker[uint16])
	if len(p.table) < 30000 || !isPrime(uint64(len(p.table))) {
		t.Fatalf("300 endpoints: table of %d slots", len(p.table))
	}
	// Entries are 16 bits below 65,535 endpoints: 128 KiB at the default size.
	if p16 := hashPicker(t, &Maglev{}, testEndpoints(1000)).(*maglevPicker[uint16]); len(p16.table)*2 > 256<<10 {
		t.Fatalf("default table %d bytes", len(p16.table)*2)
	}
}

// find agrees with a binary search of the sorted ring, at the edges too.
func TestRingFind(t *testing.T) {
	eps := testEndpoints(37)
	r := buildRing[uint16](eps, ringPoints(eps, 50, 1, 1<<20))
	if !slices.IsSorted(r.hashes) {
		t.Fatal("ring not sorted")
	}
	rnd := seededRand(8)
	probe := []uint64{0, 1, ^uint64(0), r.hashes[0], r.hashes[len(r.hashes)-1], r.hashes[0] - 1, r.hashes[len(r.hashes)-1] + 1}
	for range 100_000 {
		probe = append(probe, rnd())
	}
	for i := 0; i < len(r.hashes); i += 7 {
		probe = append(probe, r.hashes[i], r.hashes[i]+1, r.hashes[i]-1)
	}
	for _, h := range probe {
		want, _ := slices.BinarySearch(r.hashes, h)
		if want == len(r.hashes) {
			want = 0
		}
		if got := r.find(h); got != want {
			t.Fatalf("find(%x) = %d, want %d", h, got, want)
		}
	}
}

// Balance does not hang on the addresses' form.
func TestRingBalanceOtherAddresses(t *testing.T) {
	for _, form := range []string{"host-%d.svc.cluster.local:443", "[2001:db8::%x]:8080", "192.168.%d.1:80"} {
		eps := make([]*Endpoint, 1000)
		for i := range eps {
			eps[i] = newEndpoint(resolver.Endpoint{Address: fmt.Sprintf(form, i)}, time.Unix(0, 0))
		}
		if r := maxMean(ringShares(hashPicker(t, &RingHash{}, eps), len(eps))); r > 1.10 {
			t.Errorf("%s: max/mean %.3f > 1.10", form, r)
		}
	}
}
