package resolver

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

func init() { Register("static", buildStatic) }

// A Subscriber is a Feed that delivers synchronously. Subscribe gives s the set
// in force before it returns, then every replacement before the call that made
// it returns, until cancel is called; deliveries to one Sink never overlap.
// Consumers that can (the engine's Start, the gRPC resolver adapter) prefer
// Subscribe to Watch: no goroutine, and no window in which a consumer has not
// seen a change its feed already made.
//
// A Sink subscribed this way must not call back into the feed from Update.
type Subscriber interface {
	Feed
	Subscribe(s Sink) (cancel func())
}

// Static is a Feed over a fixed list that can be replaced at run time with Set.
// Every watcher sees the set in force when it starts, then each replacement.
// It is a Subscriber: when Set returns, every subscribed Sink (every Transport
// service and gRPC channel using the feed) has the new set in force.
type Static struct {
	mu    sync.Mutex // held while delivering, so deliveries stay in order
	eps   []Endpoint
	sinks map[*staticSub]struct{}
}

type staticSub struct{ sink Sink }

var _ Subscriber = (*Static)(nil)

// NewStatic returns a Static feed over eps, which it validates.
func NewStatic(eps ...Endpoint) (*Static, error) {
	if err := ValidateSet(eps); err != nil {
		return nil, fmt.Errorf("lodestar: static feed: %w", err)
	}
	return &Static{eps: slices.Clone(eps)}, nil
}

// NewStaticAddrs returns a Static feed over "host:port" addresses of weight 1.
func NewStaticAddrs(addrs ...string) (*Static, error) {
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = Endpoint{Address: a}
	}
	return NewStatic(eps...)
}

// Set replaces the feed's set. Every Sink subscribed to the feed has received
// it when Set returns: after Set, no new pick of an engine watching the feed
// goes to a removed endpoint, and added endpoints can be picked (through gRPC,
// once their connection is ready). An invalid set is rejected with an error and
// changes nothing.
func (s *Static) Set(eps ...Endpoint) error {
	if err := ValidateSet(eps); err != nil {
		return fmt.Errorf("lodestar: static feed: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eps = slices.Clone(eps)
	for sub := range s.sinks {
		sub.sink.Update(slices.Clone(s.eps))
	}
	return nil
}

// Endpoints returns a copy of the set in force.
func (s *Static) Endpoints() []Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.eps)
}

// Subscribe implements Subscriber: sink has the set in force when it returns,
// and each Set's set when that Set returns, until cancel is called. cancel may
// be called more than once.
func (s *Static) Subscribe(sink Sink) (cancel func()) {
	sub := &staticSub{sink: sink}
	s.mu.Lock()
	if s.sinks == nil {
		s.sinks = map[*staticSub]struct{}{}
	}
	s.sinks[sub] = struct{}{}
	sink.Update(slices.Clone(s.eps))
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.sinks, sub)
		s.mu.Unlock()
	}
}

// Watch implements Feed: it subscribes s until ctx is done.
func (s *Static) Watch(ctx context.Context, sink Sink) error {
	cancel := s.Subscribe(sink)
	defer cancel()
	<-ctx.Done()
	return ctx.Err()
}
