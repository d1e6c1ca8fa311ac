package grpcpolicy

import (
	"testing"
	"time"
)

// SetTestHookBackoff makes the retry interceptor call h as each retry starts
// waiting, until the end of the test.
func SetTestHookBackoff(t testing.TB, h func(d time.Duration)) {
	testHookBackoff.Store(&h)
	t.Cleanup(func() { testHookBackoff.Store(nil) })
}
