package resolver

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

func init() { Register("static", buildStatic) }

// Static is a Feed over a fixed list that can be replaced at run time with Set.
// Every watcher sees the set in force when it starts, then each replacement.
type Static struct {
	mu      sync.Mutex
	eps     []Endpoint
	changed chan struct{} // closed and replaced on every Set
}

// NewStatic returns a Static feed over eps, which it validates.
func NewStatic(eps ...Endpoint) (*Static, error) {
	if err := ValidateSet(eps); err != nil {
		return nil, fmt.Errorf("lodestar: static feed: %w", err)
	}
	return &Static{eps: slices.Clone(eps), changed: make(chan struct{})}, nil
}

// NewStaticAddrs returns a Static feed over "host:port" addresses of weight 1.
func NewStaticAddrs(addrs ...string) (*Static, error) {
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = Endpoint{Address: a}
	}
	return NewStatic(eps...)
}

// Set replaces the feed's set; watchers receive it at once. An invalid set is
// rejected with an error and changes nothing.
func (s *Static) Set(eps ...Endpoint) error {
	if err := ValidateSet(eps); err != nil {
		return fmt.Errorf("lodestar: static feed: %w", err)
	}
	s.mu.Lock()
	s.eps = slices.Clone(eps)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// Endpoints returns a copy of the set in force.
func (s *Static) Endpoints() []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.eps)
}

// Watch implements Feed.
func (s *Static) Watch(ctx context.Context, sink Sink) error {
	for {
		s.mu.Lock()
		eps, changed := slices.Clone(s.eps), s.changed
		s.mu.Unlock()
		sink.Update(eps)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
