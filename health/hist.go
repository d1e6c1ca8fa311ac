package health

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The latency histogram: fixed log-linear buckets of atomic counters, the
// shape of an HDR histogram with 3 bits of mantissa. Each power of two from
// 2^10 ns (~1 µs) to 2^37 ns (~137 s) is split into 8 equal sub-buckets, so a
// bucket's width is at most 1/8 of its lower bound and its midpoint is within
// 6.25% of every value in it: a quantile read from the histogram is within
// 6.25% of the true one (for latencies in range; below ~1 µs everything falls
// in one bucket, above ~137 s in the last one). Adding a sample is one
// leading-zero count and one uncontended atomic add; there are no locks and
// no allocation. Counters are 32 bits: the histogram holds one interval's
// samples and is drained each interval.
const (
	histSubBits = 3
	histSub     = 1 << histSubBits // sub-buckets per power of two
	histMinExp  = 10               // 2^10 ns: the first bucket's upper bound
	histMaxExp  = 37               // 2^37 ns: the last bucket's upper bound
	histBuckets = 1 + (histMaxExp-histMinExp)*histSub
)

// histogram counts latencies in log-linear buckets; the zero value is empty.
type histogram struct {
	b [histBuckets]atomic.Uint32
}

// histBucket returns the bucket of a latency of ns nanoseconds.
func histBucket(ns int64) int {
	if ns < 1<<histMinExp {
		return 0
	}
	e := bits.Len64(uint64(ns)) - 1 // 2^e <= ns < 2^(e+1)
	if e >= histMaxExp {
		return histBuckets - 1
	}
	sub := int(uint64(ns)>>(e-histSubBits)) & (histSub - 1)
	return 1 + (e-histMinExp)*histSub + sub
}

// histBounds returns bucket i's range [lo, hi) in nanoseconds.
func histBounds(i int) (lo, hi int64) {
	if i == 0 {
		return 0, 1 << histMinExp
	}
	e := histMinExp + (i-1)/histSub
	sub := int64((i - 1) % histSub)
	return (histSub + sub) << (e - histSubBits), (histSub + sub + 1) << (e - histSubBits)
}

// add counts one latency.
func (h *histogram) add(d time.Duration) {
	h.b[histBucket(int64(d))].Add(1)
}

// drain moves the counts into buf, leaving the histogram empty (bucket by
// bucket: a sample added meanwhile lands in this interval or the next), and
// returns the number of samples moved.
func (h *histogram) drain(buf *[histBuckets]uint32) (total uint64) {
	for i := range h.b {
		var n uint32
		if h.b[i].Load() != 0 { // most buckets are empty: read before writing
			n = h.b[i].Swap(0)
		}
		buf[i] = n
		total += uint64(n)
	}
	return total
}

// histQuantile returns the q-quantile (0 < q <= 1) of the total samples
// counted in buf: the midpoint of the bucket holding the sample of rank
// ⌈q·total⌉. It returns 0 when total is 0.
func histQuantile(buf *[histBuckets]uint32, total uint64, q float64) time.Duration {
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	rank = max(rank, 1)
	rank = min(rank, total)
	var cum uint64
	for i, n := range buf {
		cum += uint64(n)
		if cum >= rank {
			lo, hi := histBounds(i)
			return time.Duration(lo + (hi-lo)/2)
		}
	}
	lo, hi := histBounds(histBuckets - 1)
	return time.Duration(lo + (hi-lo)/2)
}
