package retry

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lodestar-go/lodestar/internal/monotime"
)

// budgetSlots is how many generations the budget's window is cut into:
// deposits and withdrawals leave the window one generation (a tenth of the
// window) at a time.
const budgetSlots = 10

// budgetScale is the fixed-point unit of the budget's ledger: a withdrawal
// costs budgetScale, a deposit earns ratio·budgetScale (rounded), so a ratio
// is exact to six decimal places.
const budgetScale = 1_000_000

// Budget is one service's retry budget, shared by all its requests: Finagle's
// RetryBudget (and Linkerd's, tower's TpsBudget). Every original request
// deposits (Deposit), every retry or hedge withdraws (TryWithdraw), and a
// withdrawal succeeds only if, with it, the withdrawals of the last window
// stay within
//
//	ratio × deposits of the last window + minPerSecond × window
//
// so that when every endpoint fails, retries add at most ratio (20% by
// default) to the load plus a trickle, instead of multiplying it by
// maxAttempts: over a storm of T seconds, at most ratio × requests +
// minPerSecond × (T + window) retries (TestBudgetRetryStorm). A credit pays
// for one retry only: a retry paid by a request that has since left the
// window stays in it as a debt until it leaves too.
//
// The ledger is a ring of budgetSlots generations of window/budgetSlots each,
// holding each generation's net balance (deposits earned less withdrawals
// spent, in fixed point); the budget's balance is the reserve (minPerSecond ×
// window) plus the ring's sum plus the current generation's. Within one window
// the bound above is exact; over time the window slides a generation at a
// time, so a deposit or withdrawal counts for between 0.9 and 1 window.
//
// Deposit is on every request's path and costs one clock read, one atomic
// load and one atomic add (no lock, no allocation; DepositAt saves the clock
// read for a caller that has just read the same clock); once per generation
// one caller takes the lock to roll the ring forward. TryWithdraw is on the
// retry path only and takes a mutex, which is what makes the bound hold under
// any concurrency: withdrawals are serialized, and deposits only ever raise
// the balance.
//
// Why not golang.org/x/time/rate: its Limiter refills at a fixed rate, while
// a retry budget's income is a share of the requests actually made, and each
// Allow takes a mutex and reads time.Now, which a Deposit per request would
// pay.
type Budget struct {
	// The hot word: every Deposit adds to it. On its own cache line so that
	// the read-mostly fields below are not invalidated by it.
	cur atomic.Int64 // the current generation's net balance
	_   [56]byte

	// Read by every Deposit; written once per generation.
	gen     atomic.Int64 // the current generation: clock reading / slot
	slot    time.Duration
	deposit int64 // fixed-point income per request
	reserve int64 // fixed-point minPerSecond × window
	now     func() time.Duration
	_       [24]byte

	// The retry path's: withdrawals and rotations.
	mu       sync.Mutex // serializes withdrawals and the ring's rotation
	ring     [budgetSlots]int64
	ringSum  int64
	granted  uint64
	refused  uint64
	disabled bool // ratio and minPerSecond are both 0: nothing is ever allowed
}

// NewBudget returns a budget for one service, configured by c (defaults
// applied, values out of range clamped). now reads a monotonic clock: a
// duration since any fixed point, never decreasing; nil means the package
// internal/monotime's clock (one clock read, where time.Now takes two). Tests
// pass a fake clock.
func NewBudget(c BudgetConfig, now func() time.Duration) *Budget {
	ratio, perSecond, window := c.settings()
	if now == nil {
		now = monotime.Now
	}
	b := &Budget{
		slot:    window / budgetSlots,
		deposit: int64(math.Round(ratio * budgetScale)),
		reserve: int64(math.Round(float64(perSecond) * window.Seconds() * budgetScale)),
		now:     now,
	}
	b.disabled = b.deposit == 0 && b.reserve == 0
	b.gen.Store(int64(now() / b.slot))
	return b
}

// Deposit records one original request (not a retry, not a hedge): it earns
// ratio retries for the window. It does not block and does not allocate.
func (b *Budget) Deposit() {
	if b.deposit != 0 {
		b.DepositAt(b.now())
	}
}

// DepositAt is Deposit for a caller that has just read the budget's clock
// (the now given to NewBudget, internal/monotime's by default): now is that
// reading.
func (b *Budget) DepositAt(now time.Duration) {
	if b.deposit == 0 {
		return
	}
	if g := int64(now / b.slot); g > b.gen.Load() {
		b.mu.Lock()
		b.rotate(g)
		b.mu.Unlock()
	}
	b.cur.Add(b.deposit)
}

// TryWithdraw asks for one retry (or hedge): it reports whether the budget
// allows it, and if so spends it. A refusal is counted (Refused); the
// request then fails with its last real error.
func (b *Budget) TryWithdraw() bool {
	g := int64(b.now() / b.slot)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rotate(g)
	if b.disabled || b.reserve+b.ringSum+b.cur.Load() < budgetScale {
		b.refused++
		return false
	}
	b.cur.Add(-budgetScale)
	b.granted++
	return true
}

// Available returns how many retries the budget would allow now.
func (b *Budget) Available() int {
	g := int64(b.now() / b.slot)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rotate(g)
	if b.disabled {
		return 0
	}
	return int(max(b.reserve+b.ringSum+b.cur.Load(), 0) / budgetScale)
}

// Withdrawn and Refused count the budget's answers since it was made: the
// retries it allowed and those it refused.
func (b *Budget) Withdrawn() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.granted
}

// Refused counts the retries the budget refused since it was made.
func (b *Budget) Refused() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// rotate moves the ledger forward to generation g, if it is behind: the
// current generation's balance goes into the ring, and generations that left
// the window leave the sum. Called with mu held.
func (b *Budget) rotate(g int64) {
	old := b.gen.Load()
	if g <= old {
		return
	}
	v := b.cur.Swap(0) // deposits racing this land in generation g: harmless
	if g-old >= budgetSlots {
		// Everything but the current generation is out of the window.
		b.ring = [budgetSlots]int64{}
		b.ringSum = 0
	} else {
		i := old % budgetSlots
		b.ringSum += v - b.ring[i]
		b.ring[i] = v
		for x := old + 1; x <= g; x++ {
			// Generation x's slot held generation x-budgetSlots, which has
			// left the window; generation g's own balance is in cur.
			i := x % budgetSlots
			b.ringSum -= b.ring[i]
			b.ring[i] = 0
		}
	}
	b.gen.Store(g)
}
