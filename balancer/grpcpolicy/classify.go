package grpcpolicy

import (
	"context"
	"strings"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

// A Classifier sorts the outcome of one RPC, as grpc reports it to the picked
// endpoint's Done callback, into an outcome class. ctx is the RPC's context and
// method its full method name ("/pkg.Service/Method"). It runs once per RPC and
// must be cheap; it is not called for an RPC that was never attempted (nil error
// and no bytes sent), which is always outcome.NotSent.
type Classifier func(ctx context.Context, method string, info grpcbalancer.DoneInfo) outcome.Class

// DefaultCodeClasses maps each gRPC status code to its default outcome class,
// the gRPC counterpart of outcome.HTTPStatusClass:
//
//	OK                                            success
//	INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
//	PERMISSION_DENIED, UNAUTHENTICATED,
//	FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE    client_error
//	RESOURCE_EXHAUSTED                            overloaded
//	UNKNOWN, INTERNAL, UNIMPLEMENTED, DATA_LOSS   server_error
//	UNAVAILABLE                                   gateway_error
//	DEADLINE_EXCEEDED                             timeout
//	CANCELLED                                     canceled
//
// DefaultClassifier refines these by what the RPC's context and transport say;
// see there.
func DefaultCodeClasses() map[codes.Code]outcome.Class {
	m := make(map[codes.Code]outcome.Class, len(defaultClasses))
	for c, cl := range defaultClasses {
		m[codes.Code(c)] = cl
	}
	return m
}

var defaultClasses = [...]outcome.Class{
	codes.OK:                 outcome.Success,
	codes.Canceled:           outcome.Canceled,
	codes.Unknown:            outcome.ServerError,
	codes.InvalidArgument:    outcome.ClientError,
	codes.DeadlineExceeded:   outcome.Timeout,
	codes.NotFound:           outcome.ClientError,
	codes.AlreadyExists:      outcome.ClientError,
	codes.PermissionDenied:   outcome.ClientError,
	codes.ResourceExhausted:  outcome.Overloaded,
	codes.FailedPrecondition: outcome.ClientError,
	codes.Aborted:            outcome.ClientError,
	codes.OutOfRange:         outcome.ClientError,
	codes.Unimplemented:      outcome.ServerError,
	codes.Internal:           outcome.ServerError,
	codes.Unavailable:        outcome.GatewayError,
	codes.DataLoss:           outcome.ServerError,
	codes.Unauthenticated:    outcome.ClientError,
}

// DefaultClassifier is the Classifier used unless Options.Classifier sets one:
//
//   - no error: Success;
//   - the RPC's own context ended (the caller canceled it or its deadline
//     passed): Canceled, whatever the code, as on the HTTP side;
//   - UNAVAILABLE with nothing received from the endpoint is a transport
//     failure, not an answer: ConnectError when nothing was sent either (the
//     RPC never left), LocalError otherwise;
//   - a stream the server reset (HTTP/2 RST_STREAM) before sending anything
//     is LocalError, a reset before any response, whatever code grpc maps the
//     reset to (INTERNAL for most, CANCELLED for CANCEL), except
//     RESOURCE_EXHAUSTED (ENHANCE_YOUR_CALM, flow control: the server is
//     overloaded, not broken);
//   - any other status: its class in DefaultCodeClasses (unknown codes are
//     ServerError).
func DefaultClassifier(ctx context.Context, method string, info grpcbalancer.DoneInfo) outcome.Class {
	return classify(ctx, info, nil)
}

// ClassifyCodes returns DefaultClassifier with the classes of some status codes
// replaced, for example {codes.NotFound: outcome.ServerError} for a service whose
// NOT_FOUND means a missing shard. The context and transport refinements of
// DefaultClassifier still apply, except that an overridden UNAVAILABLE keeps
// its class even when nothing was received.
func ClassifyCodes(overrides map[codes.Code]outcome.Class) Classifier {
	m := make(map[codes.Code]outcome.Class, len(overrides))
	for c, cl := range overrides {
		m[c] = cl
	}
	return func(ctx context.Context, _ string, info grpcbalancer.DoneInfo) outcome.Class {
		return classify(ctx, info, m)
	}
}

func classify(ctx context.Context, info grpcbalancer.DoneInfo, overrides map[codes.Code]outcome.Class) outcome.Class {
	if info.Err == nil {
		return outcome.Success
	}
	if ctx != nil && ctx.Err() != nil {
		return outcome.Canceled
	}
	code := status.Code(info.Err)
	if cl, ok := overrides[code]; ok {
		return cl
	}
	if !info.BytesReceived {
		if code == codes.Unavailable {
			if !info.BytesSent {
				return outcome.ConnectError
			}
			return outcome.LocalError
		}
		if code != codes.ResourceExhausted && streamReset(info.Err) {
			return outcome.LocalError
		}
	}
	if int(code) < len(defaultClasses) {
		return defaultClasses[code]
	}
	return outcome.ServerError
}

// rstPrefix starts the message of the status grpc-go's HTTP/2 client gives a
// stream the server reset (http2_client.go, handleRSTStream); grpc exports no
// other mark of it.
const rstPrefix = "stream terminated by RST_STREAM"

// streamReset reports whether err is grpc's status for a stream the server
// reset.
func streamReset(err error) bool {
	st, ok := status.FromError(err)
	return ok && strings.HasPrefix(st.Message(), rstPrefix)
}
