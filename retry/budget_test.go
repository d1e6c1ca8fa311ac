package retry_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/retry"
)

// clock is a fake monotonic clock, safe for concurrent use.
type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Duration      { return time.Duration(c.t.Load()) }
func (c *clock) set(d time.Duration)     { c.t.Store(int64(d)) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func budgetConfig(ratio float64, perSecond int, window time.Duration) retry.BudgetConfig {
	return retry.BudgetConfig{Ratio: &ratio, MinPerSecond: &perSecond, Window: window}
}

// drain withdraws until the budget refuses, returning how many it allowed.
func drain(b *retry.Budget) int {
	n := 0
	for b.TryWithdraw() {
		n++
	}
	return n
}

// Within one window the budget allows exactly ratio × requests +
// minPerSecond × window retries, and not one more.
func TestBudgetAllowsRatioPlusReserve(t *testing.T) {
	for _, tc := range []struct {
		ratio     float64
		perSecond int
		window    time.Duration
		requests  int
		want      int
	}{
		{0.2, 10, 10 * time.Second, 1000, 300}, // the defaults: 200 + 100
		{0.2, 10, 10 * time.Second, 0, 100},    // a cold service keeps its reserve
		{0.2, 0, 10 * time.Second, 1000, 200},
		{0.25, 0, time.Second, 7, 1}, // 1.75 rounds down
		{0, 3, 2 * time.Second, 1000, 6},
		{1, 1, time.Second, 50, 51},
		{0.333333, 0, time.Second, 3, 0}, // 0.999999 of a retry is not one
		{0.1, 0, time.Second, 10, 1},     // ratio 0.1 is exact in fixed point
	} {
		var clk clock
		clk.set(123 * time.Hour) // any start
		b := retry.NewBudget(budgetConfig(tc.ratio, tc.perSecond, tc.window), clk.now)
		for range tc.requests {
			b.Deposit()
		}
		if got := b.Available(); got != tc.want {
			t.Errorf("%+v: Available = %d", tc, got)
		}
		if got := drain(b); got != tc.want {
			t.Errorf("%+v: allowed %d retries", tc, got)
		}
		if b.Withdrawn() != uint64(tc.want) || b.Refused() != 1 || b.Available() != 0 {
			t.Errorf("%+v: withdrawn %d, refused %d, available %d", tc, b.Withdrawn(), b.Refused(), b.Available())
		}
	}
	// Defaults: an empty section is 20% + 10/s over 10s.
	var clk clock
	b := retry.NewBudget(retry.BudgetConfig{}, clk.now)
	for range 500 {
		b.Deposit()
	}
	if got := drain(b); got != 200 {
		t.Fatalf("defaults: allowed %d, want 100 + 100", got)
	}
	// Further requests earn further retries, at the ratio.
	for range 10 {
		b.Deposit()
	}
	if got := drain(b); got != 2 {
		t.Fatalf("10 more requests: allowed %d, want 2", got)
	}
}

// Deposits and withdrawals leave the window a tenth of it at a time: spent
// retries come back, and unspent credit expires, window seconds later.
func TestBudgetWindowSlides(t *testing.T) {
	var clk clock
	b := retry.NewBudget(budgetConfig(0.2, 10, 10*time.Second), clk.now)
	for range 1000 {
		b.Deposit()
	}
	if got := drain(b); got != 300 {
		t.Fatalf("allowed %d", got)
	}
	clk.set(9999 * time.Millisecond) // still in the window
	if got := b.Available(); got != 0 {
		t.Fatalf("at 9.999s: %d available", got)
	}
	clk.set(10 * time.Second) // the first generation left: its deposits and withdrawals
	if got := b.Available(); got != 100 {
		t.Fatalf("at 10s: %d available, want the reserve, 100", got)
	}
	// Credit earned and not spent expires.
	for range 1000 {
		b.Deposit()
	}
	if got := b.Available(); got != 300 {
		t.Fatalf("after 1000 requests: %d", got)
	}
	clk.advance(10 * time.Second)
	if got := b.Available(); got != 100 {
		t.Fatalf("a window later: %d, want 100", got)
	}
	// Retries spent in a later generation than the credit that paid for them
	// are a debt until they leave the window: the credit cannot pay twice.
	clk.set(100 * time.Second)
	for range 1000 {
		b.Deposit()
	}
	clk.set(109 * time.Second)
	if got := drain(b); got != 300 {
		t.Fatalf("allowed %d", got)
	}
	clk.set(110 * time.Second) // the credit left, the 300 withdrawals stay until 119s
	for range 1000 {
		b.Deposit()
	}
	if got := b.Available(); got != 0 { // 100 + 200 - 300
		t.Fatalf("at 110s: %d available, want 0", got)
	}
	clk.set(119 * time.Second)
	if got := b.Available(); got != 300 {
		t.Fatalf("at 119s: %d available, want 300", got)
	}
	// A long quiet spell empties the ring at once.
	clk.set(time.Hour)
	if got := b.Available(); got != 100 {
		t.Fatalf("an hour later: %d", got)
	}
}

// A retry storm, simulated: 100 requests a second for 60 seconds, every
// attempt failing and each request retrying up to twice while the budget
// allows. Retries stay within ratio × requests + minPerSecond × (seconds +
// window) (the reserve is there at the start, then renews each window), and
// the budget is actually used: at least ratio × requests + minPerSecond ×
// (seconds - window).
func TestBudgetRetryStorm(t *testing.T) {
	var clk clock
	const rate, seconds, window = 100, 60, 10
	b := retry.NewBudget(budgetConfig(0.2, 10, window*time.Second), clk.now)
	requests, retries := 0, 0
	for i := range rate * seconds {
		clk.set(time.Duration(i) * time.Second / rate)
		b.Deposit()
		requests++
		for range 2 {
			if !b.TryWithdraw() {
				break
			}
			retries++
		}
	}
	hi := 0.2*float64(requests) + 10*(seconds+window)
	lo := 0.2*float64(requests) + 10*(seconds-window)
	if float64(retries) > hi || float64(retries) < lo {
		t.Fatalf("%d requests made %d retries, want within [%v, %v]", requests, retries, lo, hi)
	}
	t.Logf("%d requests, %d retries (%.3f per request; bound %v)", requests, retries, float64(retries)/float64(requests), hi)
}

// 16 goroutines withdrawing at once never take more than the balance: with
// 1000 requests deposited, exactly 300 retries are granted in all.
func TestBudgetConcurrentWithdraw(t *testing.T) {
	for round := range 20 {
		var clk clock
		b := retry.NewBudget(budgetConfig(0.2, 10, 10*time.Second), clk.now)
		for range 1000 {
			b.Deposit()
		}
		var granted atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 16 {
			wg.Go(func() {
				<-start
				for range 100 {
					if b.TryWithdraw() {
						granted.Add(1)
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if got := granted.Load(); got != 300 {
			t.Fatalf("round %d: %d granted, want 300", round, got)
		}
		if b.Refused() != 16*100-300 {
			t.Fatalf("round %d: %d refused", round, b.Refused())
		}
	}
}

// Deposits, withdrawals and the clock's advance all racing: whenever a
// withdrawal is granted, the grants so far never exceed what every deposit so
// far plus the reserve could pay for (checked at the end, over a run shorter
// than one window, so nothing expires).
func TestBudgetConcurrentDepositAndWithdraw(t *testing.T) {
	var clk clock
	b := retry.NewBudget(budgetConfig(0.2, 10, 10*time.Second), clk.now)
	var deposits, granted atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 2000 {
				b.Deposit()
				deposits.Add(1)
			}
		})
	}
	for range 16 {
		wg.Go(func() {
			for range 500 {
				if b.TryWithdraw() {
					granted.Add(1)
				}
			}
		})
	}
	wg.Go(func() { // generations roll while all of that runs
		for range 90 {
			clk.advance(100 * time.Millisecond)
			time.Sleep(10 * time.Microsecond)
		}
	})
	wg.Wait()
	if bound := 0.2*float64(deposits.Load()) + 100; float64(granted.Load()) > bound {
		t.Fatalf("%d granted for %d deposits, bound %v", granted.Load(), deposits.Load(), bound)
	}
	if b.Withdrawn() != uint64(granted.Load()) {
		t.Fatalf("Withdrawn %d, granted %d", b.Withdrawn(), granted.Load())
	}
	// Everything deposited is there: what is left plus what was granted is
	// the whole balance.
	if got, want := granted.Load()+int64(b.Available()), int64(0.2*float64(deposits.Load())+100); got != want {
		t.Fatalf("granted + available = %d, want %d", got, want)
	}
}

// A budget whose ratio and minPerSecond are both 0 (which Validate rejects)
// allows nothing; a policy builds its budget from its section.
func TestBudgetFromPolicy(t *testing.T) {
	var clk clock
	if b := retry.NewBudget(budgetConfig(0, 0, time.Second), clk.now); b.TryWithdraw() || b.Available() != 0 {
		t.Fatal("an empty budget allowed a retry")
	}
	ratio := 0.5
	p := mustPolicy(t, retry.Config{Budget: retry.BudgetConfig{Ratio: &ratio}})
	ratio = 0 // the policy keeps its own copy
	b := p.NewBudget(clk.now)
	for range 10 {
		b.Deposit()
	}
	if got := drain(b); got != 5+100 {
		t.Fatalf("policy's budget allowed %d, want 105", got)
	}
	// The default clock works too.
	if b := retry.NewBudget(retry.BudgetConfig{}, nil); b.Available() != 100 {
		t.Fatalf("real clock: %d available", b.Available())
	}
}
