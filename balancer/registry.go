package balancer

import (
	"slices"
	"sync"
)

// The process-wide list of live engines, for debug pages (package
// balancer/debugpage): every engine NewEngine made enters it, and Close takes
// it out. Neither is on the request path.
var liveEngines struct {
	mu      sync.Mutex
	engines []*Engine // in the order they were made
}

func register(e *Engine) {
	liveEngines.mu.Lock()
	liveEngines.engines = append(liveEngines.engines, e)
	liveEngines.mu.Unlock()
}

func unregister(e *Engine) {
	liveEngines.mu.Lock()
	if i := slices.Index(liveEngines.engines, e); i >= 0 {
		liveEngines.engines = slices.Delete(liveEngines.engines, i, i+1)
	}
	liveEngines.mu.Unlock()
}

// Engines returns every engine of the process that is not closed, in the
// order they were made: each HTTP Transport service's and each gRPC channel's
// that uses the lodestar policy, and any made with NewEngine directly.
func Engines() []*Engine {
	liveEngines.mu.Lock()
	defer liveEngines.mu.Unlock()
	return slices.Clone(liveEngines.engines)
}
