// Package outcome names what happened to one request sent to one endpoint. Both
// front doors report outcomes in these terms, and the engine, the outlier detector,
// the breakers, the retry policy and the metrics all read the same classes, so a
// setting means the same thing for HTTP and for gRPC.
package outcome

import (
	"fmt"
	"time"
)

// Class sorts an outcome by whose fault it was and what it proves.
type Class uint8

const (
	// Success: the endpoint answered as it should (HTTP 1xx-3xx, gRPC OK).
	Success Class = iota
	// ClientError: the endpoint answered, and the answer blames the request
	// (HTTP 4xx except 429; gRPC INVALID_ARGUMENT, NOT_FOUND, ...). It says the
	// endpoint is alive, so health counts it as a success.
	ClientError
	// Overloaded: the endpoint shed the request (HTTP 429; gRPC RESOURCE_EXHAUSTED).
	Overloaded
	// ServerError: the endpoint failed the request (HTTP 500, 501, 505+; gRPC
	// INTERNAL, UNKNOWN, DATA_LOSS).
	ServerError
	// GatewayError: the endpoint or a proxy in front of it could not serve at all
	// (HTTP 502, 503, 504; gRPC UNAVAILABLE).
	GatewayError
	// Timeout: no answer before a deadline that was not the caller's own
	// cancellation (per-try timeout, gRPC DEADLINE_EXCEEDED from the server).
	Timeout
	// LocalError: the transport failed (connection refused or reset, TLS
	// failure) before a response arrived. The request may or may not have reached
	// the endpoint; ConnectError is the case where it provably did not.
	LocalError
	// ConnectError: the connection could not be made, so the request never left.
	ConnectError
	// Canceled: the caller gave up (its context was canceled or expired). Not the
	// endpoint's fault: it counts neither as success nor as failure.
	Canceled
	// NotSent: the request never went out (gRPC re-pick because the transport was
	// not ready). It counts neither as success nor as failure.
	NotSent
	numClasses
)

var classNames = [...]string{
	Success: "success", ClientError: "client_error", Overloaded: "overloaded",
	ServerError: "server_error", GatewayError: "gateway_error", Timeout: "timeout",
	LocalError: "local_error", ConnectError: "connect_error", Canceled: "canceled",
	NotSent: "not_sent",
}

// String returns the class's snake_case name, as used in configuration and metrics.
func (c Class) String() string {
	if c < numClasses {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// ParseClass returns the class a name (as printed by String) stands for.
func ParseClass(s string) (Class, error) {
	for i, n := range classNames {
		if n == s {
			return Class(i), nil
		}
	}
	return 0, fmt.Errorf("unknown outcome class %q (want one of %v)", s, classNames)
}

// Counted reports whether the class says anything about the endpoint's health:
// false for Canceled and NotSent.
func (c Class) Counted() bool { return c != Canceled && c != NotSent }

// Failure reports whether the class counts against the endpoint: every counted
// class except Success and ClientError.
func (c Class) Failure() bool { return c.Counted() && c != Success && c != ClientError }

// Outcome is what happened to one request on one endpoint.
type Outcome struct {
	// Class sorts the outcome.
	Class Class
	// Latency is the time from sending the request to the response headers (HTTP)
	// or to the end of the call (gRPC).
	Latency time.Duration
	// Code is the HTTP status or gRPC status code, 0 when there was no response.
	Code int
	// Err is the transport or call error, if any.
	Err error
	// At is when the outcome was known: the end of Latency. A front door that
	// measured Latency has it already (end := time.Now(); Latency =
	// end.Sub(start)) and should pass it on, so that the engine need not read
	// the clock again for algorithms that keep time (peak EWMA). The zero value
	// means "now": the engine reads its clock when it needs the time.
	At time.Time
}

// HTTPStatusClass returns the default class of an HTTP response status.
func HTTPStatusClass(code int) Class {
	switch {
	case code < 400:
		return Success
	case code == 429:
		return Overloaded
	case code < 500:
		return ClientError
	case code == 502 || code == 503 || code == 504:
		return GatewayError
	default:
		return ServerError
	}
}
