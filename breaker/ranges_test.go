package breaker_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/breaker"
)

// The range tags parse, and hold what Config's documentation says, under the
// codec's own checker.
func TestConfigRanges(t *testing.T) {
	zero, one, two := 0, 1, 2.0
	half, neg := 0.5, -1
	ok := []breaker.Config{
		{},
		{ConsecutiveFailures: &zero, FailureRatio: &half},
		{ConsecutiveFailures: &one, MinRequests: 1, Window: time.Millisecond, OpenTimeout: 24 * time.Hour, HalfOpenRequests: 1000},
	}
	for _, c := range ok {
		if err := balancer.CheckRanges(c); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	bad := map[string]breaker.Config{
		"consecutiveFailures": {ConsecutiveFailures: &neg},
		"failureRatio":        {FailureRatio: &two},
		"minRequests":         {MinRequests: -1},
		"window":              {Window: time.Microsecond},
		"openTimeout":         {OpenTimeout: 25 * time.Hour},
		"halfOpenRequests":    {HalfOpenRequests: 1001},
	}
	for name, c := range bad {
		err := balancer.CheckRanges(c)
		if err == nil || !strings.HasPrefix(err.Error(), name+":") {
			t.Errorf("%s: got %v, want an out-of-range error naming it", name, err)
		}
	}
}
