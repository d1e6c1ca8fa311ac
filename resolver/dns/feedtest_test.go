package dns

import (
	"testing"

	"github.com/lodestar-go/lodestar/internal/feedtest"
)

// Short names for the shared feed-test helpers.
type (
	recSink = feedtest.Recorder
	update  = feedtest.Update
)

var (
	newRecSink = feedtest.NewRecorder
	watch      = feedtest.Watch
	addrs      = feedtest.Addrs
	hasAddrs   = feedtest.HasAddrs
	byAddr     = feedtest.ByAddr
)

// checkNoRepeats also checks that the DNS feed never published an empty set.
func checkNoRepeats(t *testing.T, s *recSink) {
	t.Helper()
	feedtest.CheckNoRepeats(t, s)
	ups, _, _ := s.Snapshot()
	for i, u := range ups {
		if len(u.Endpoints) == 0 {
			t.Errorf("update %d is empty", i)
		}
	}
}
