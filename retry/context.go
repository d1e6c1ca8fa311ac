package retry

import (
	"context"
	"time"
)

type idempotentKey struct{}

// WithIdempotent marks the requests (HTTP) and calls (gRPC) made with the
// returned context as idempotent: a front door with a retry policy may then
// send them again after they may have reached a server, whatever their HTTP
// method or gRPC method. Mark only requests that are harmless to repeat.
// lodestar.WithIdempotent is the same mark.
func WithIdempotent(ctx context.Context) context.Context {
	return context.WithValue(ctx, idempotentKey{}, true)
}

// IsIdempotent reports whether ctx carries the mark of WithIdempotent.
func IsIdempotent(ctx context.Context) bool { return ctx.Value(idempotentKey{}) != nil }

// Wait waits d, the delay before a retry, or until ctx ends, whose error it
// returns then (at once, whatever is left of d). d ≤ 0 returns ctx.Err().
func Wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
