package consul

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

func checkNoRepeats(t *testing.T, s *recSink) { feedtest.CheckNoRepeats(t, s) }
