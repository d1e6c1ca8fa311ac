package retry

import "context"

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
