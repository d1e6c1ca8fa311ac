package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// Defaults of HealthCheck's fields, applied to a field left out (or zero).
const (
	// DefaultCheckInterval is Interval's default. Envoy has none (interval is
	// required there); 5s is Google Cloud load balancers' default.
	DefaultCheckInterval = 5 * time.Second
	// DefaultCheckTimeout is Timeout's default (Kubernetes probes' default).
	DefaultCheckTimeout = time.Second
	// DefaultUnhealthyThreshold is UnhealthyThreshold's default (Kubernetes
	// probes' failureThreshold). Envoy requires the field.
	DefaultUnhealthyThreshold = 3
	// DefaultHealthyThreshold is HealthyThreshold's default. Envoy requires
	// the field; 2 means one lucky answer does not bring an endpoint back.
	DefaultHealthyThreshold = 2
	// DefaultNoTrafficInterval is NoTrafficInterval's default (Envoy's
	// no_traffic_interval default).
	DefaultNoTrafficInterval = 60 * time.Second
	// DefaultHTTPPath is HTTPCheck.Path's default. Envoy requires the field;
	// "/" is the default of AWS's and Google's load balancers.
	DefaultHTTPPath = "/"
)

// DefaultExpectedStatuses is HTTPCheck.ExpectedStatuses' default: any 2xx.
// (Envoy's default is 200 only.) Do not modify it.
var DefaultExpectedStatuses = []StatusRange{{200, 299}}

// HealthCheck configures active health checks: lodestar asks each endpoint
// directly, on a timer, whether it is healthy, and an endpoint that fails
// UnhealthyThreshold checks in a row is marked unhealthy until it passes
// HealthyThreshold checks in a row (Envoy's active health checking). It is the
// "healthCheck" section of the balancer's configuration:
//
//	"healthCheck": {
//	  "http": {"path": "/healthz", "expectedStatuses": [[200, 299]]},
//	  "interval": "5s", "timeout": "1s", "jitter": "500ms",
//	  "unhealthyThreshold": 3, "healthyThreshold": 2, "noTrafficInterval": "60s"
//	}
//
// Exactly one of HTTP, GRPC and TCP says what a check is. Every other field
// has a default, applied when it is left out (or, in Go, zero). A value that
// is written must lie in the range of its `range` tag (the configuration's
// JSON decoder and balancer.CheckRanges check those); Validate checks what
// relates fields to each other and what a range cannot say.
//
// Checks of one endpoint never overlap: the next check starts Interval (plus
// jitter) after the previous one ended, so a Timeout longer than the Interval
// is allowed; it only stretches the time between checks of an endpoint that
// does not answer.
type HealthCheck struct {
	// HTTP checks with an HTTP GET: the endpoint is healthy when it answers
	// with an expected status.
	HTTP *HTTPCheck `json:"http,omitempty"`
	// GRPC checks with the gRPC health protocol (grpc.health.v1.Health/Check):
	// the endpoint is healthy when it answers SERVING.
	GRPC *GRPCCheck `json:"grpc,omitempty"`
	// TCP checks by connecting: the endpoint is healthy when a TCP connection
	// to it is established (it is closed at once).
	TCP *TCPCheck `json:"tcp,omitempty"`

	// Interval is the time from the end of one check of an endpoint to the
	// start of the next, for endpoints that carry traffic or are failing
	// checks. Default 5s (DefaultCheckInterval). Valid when set: 1ms-24h.
	Interval time.Duration `json:"interval,omitempty" range:"[1ms, 24h]"`
	// Timeout bounds one check, connecting included; a check that has not
	// passed by then fails. Default 1s (DefaultCheckTimeout). Valid when set:
	// 1ms-1h.
	Timeout time.Duration `json:"timeout,omitempty" range:"[1ms, 1h]"`
	// Jitter adds a random time, uniform in [0, Jitter], to every wait
	// between checks and delays each new endpoint's first check as much, so
	// that the checks of many endpoints (and of many clients) spread out.
	// Default 0: none, and a new endpoint is checked at once. Valid when set:
	// 0-1h, and at most Interval.
	Jitter time.Duration `json:"jitter,omitempty" range:"[0, 1h]"`
	// UnhealthyThreshold is how many consecutive failed checks mark a healthy
	// endpoint unhealthy. Default 3 (DefaultUnhealthyThreshold). Valid when
	// set: 1-1000.
	UnhealthyThreshold int `json:"unhealthyThreshold,omitempty" range:"[1, 1000]"`
	// HealthyThreshold is how many consecutive passed checks mark an
	// unhealthy endpoint healthy again. Default 2 (DefaultHealthyThreshold).
	// Valid when set: 1-1000.
	HealthyThreshold int `json:"healthyThreshold,omitempty" range:"[1, 1000]"`
	// NoTrafficInterval replaces Interval for a healthy endpoint that carries
	// no traffic (as the engine tells through CheckerOptions.HasTraffic) and
	// has no failed check in its current run; it saves checks of idle
	// endpoints (Envoy's no_traffic_interval). An endpoint that is unhealthy
	// or has begun failing is checked every Interval, traffic or not, so it
	// is found down, and back up, as fast as a busy one. Default 60s
	// (DefaultNoTrafficInterval) or Interval if that is longer. Valid when
	// set: 1ms-24h, and at least Interval.
	NoTrafficInterval time.Duration `json:"noTrafficInterval,omitempty" range:"[1ms, 24h]"`
}

// HTTPCheck is an HTTP health check: a GET of Path on the endpoint's address,
// over HTTP/1.1 (https included), with the User-Agent
// "lodestar-health-check" and no proxy. A response's status decides;
// redirects are not followed (a 3xx is judged like any other status), and
// the body is read (up to 4 KiB) and ignored.
type HTTPCheck struct {
	// Path is the request's path, with an optional query, starting with "/".
	// Default "/" (DefaultHTTPPath).
	Path string `json:"path,omitempty"`
	// ExpectedStatuses are the statuses of a passed check, as inclusive
	// [lo, hi] ranges within 100-599. Default [[200, 299]]
	// (DefaultExpectedStatuses).
	ExpectedStatuses []StatusRange `json:"expectedStatuses,omitempty"`
	// Host is the Host header (and, for https, the TLS server name unless
	// CheckerOptions.TLS names one). Default: the service's name
	// (CheckerOptions.Service), or the endpoint's address if that is empty.
	Host string `json:"host,omitempty"`
	// Scheme is "http" (the default) or "https". Over https the server's
	// certificate is verified with CheckerOptions.TLS.
	Scheme string `json:"scheme,omitempty"`
}

// GRPCCheck is a gRPC health check: a call of grpc.health.v1.Health/Check
// with Service on a connection of the check's own (not the one requests use),
// passing when the answer is SERVING. Plaintext unless CheckerOptions.TLS is
// set.
//
// gRPC has its own client-side health checking, which the lodestar gRPC
// policy honours: a service config's "healthCheckConfig": {"serviceName":
// ...} makes grpc watch (Health/Watch, a stream) each endpoint's serving
// status on the connection requests use, and an endpoint that is not SERVING
// is not connected as far as the engine is concerned. That needs no
// configuration here and reacts to the server's push at once, but it has no
// thresholds, interval or timeout and only works for servers that implement
// Watch. This check polls Check on its own connection with the thresholds
// and timing of HealthCheck, so it also catches a server that hangs, and it
// works the same way as the HTTP and TCP checks. Both can be used together:
// an endpoint is then picked only while both say it is healthy.
type GRPCCheck struct {
	// Service is the service name sent in the request. Default "": the
	// server's overall health.
	Service string `json:"service,omitempty"`
}

// TCPCheck is a TCP health check: the endpoint is healthy when a connection
// to its address can be established within the timeout. It has no options
// (in JSON, "tcp": {}).
type TCPCheck struct{}

// StatusRange is an inclusive range of HTTP statuses, [lo, hi]; in JSON a
// two-element array such as [200, 299].
type StatusRange [2]int

// Contains reports whether status lies in r.
func (r StatusRange) Contains(status int) bool { return r[0] <= status && status <= r[1] }

// String formats r as "200-299" (or "200" for a single status).
func (r StatusRange) String() string {
	if r[0] == r[1] {
		return strconv.Itoa(r[0])
	}
	return strconv.Itoa(r[0]) + "-" + strconv.Itoa(r[1])
}

// UnmarshalJSON reads r from a JSON array of exactly two integers.
func (r *StatusRange) UnmarshalJSON(js []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil || raw == nil {
		return errors.New("want [lo, hi], two integers")
	}
	if len(raw) != 2 {
		return fmt.Errorf("want [lo, hi], two integers, got %d elements", len(raw))
	}
	var v StatusRange
	for i, e := range raw {
		x, err := strconv.Atoi(string(e))
		if err != nil {
			return errors.New("want [lo, hi], two integers")
		}
		v[i] = x
	}
	*r = v
	return nil
}

// validate checks r alone.
func (r StatusRange) validate() error {
	switch {
	case r[0] < 100 || r[0] > 599 || r[1] < 100 || r[1] > 599:
		return fmt.Errorf("[%d, %d] is out of range: statuses are 100-599", r[0], r[1])
	case r[0] > r[1]:
		return fmt.Errorf("[%d, %d] is empty: want lo ≤ hi", r[0], r[1])
	}
	return nil
}

// Validate reports the first invalid field of c, naming it by its JSON path
// within the section (as in "http.expectedStatuses[1]: [600, 700] is out of
// range: statuses are 100-599"). It checks what the `range` tags cannot:
// exactly one kind of check, the HTTP check's fields, Jitter ≤ Interval and
// NoTrafficInterval ≥ Interval (the effective values, defaults applied), and
// that no duration or threshold is negative, so that a Go-built value that
// never met the JSON decoder is safe to run.
func (c *HealthCheck) Validate() error {
	var kinds []string
	if c.HTTP != nil {
		kinds = append(kinds, "http")
	}
	if c.GRPC != nil {
		kinds = append(kinds, "grpc")
	}
	if c.TCP != nil {
		kinds = append(kinds, "tcp")
	}
	switch len(kinds) {
	case 0:
		return errors.New("set exactly one of http, grpc and tcp (none is set)")
	case 1:
	default:
		return fmt.Errorf("set exactly one of http, grpc and tcp (%s are set)", strings.Join(kinds, " and "))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"interval", c.Interval}, {"timeout", c.Timeout}, {"jitter", c.Jitter}, {"noTrafficInterval", c.NoTrafficInterval}} {
		if d.v < 0 {
			return fmt.Errorf("%s: %v is negative", d.name, d.v)
		}
	}
	if c.UnhealthyThreshold < 0 {
		return fmt.Errorf("unhealthyThreshold: %d is negative", c.UnhealthyThreshold)
	}
	if c.HealthyThreshold < 0 {
		return fmt.Errorf("healthyThreshold: %d is negative", c.HealthyThreshold)
	}
	e := c.effective()
	if e.Jitter > e.Interval {
		return fmt.Errorf("jitter: %v is longer than the interval, %v", e.Jitter, e.Interval)
	}
	if c.NoTrafficInterval != 0 && c.NoTrafficInterval < e.Interval {
		return fmt.Errorf("noTrafficInterval: %v is shorter than the interval, %v", c.NoTrafficInterval, e.Interval)
	}
	if h := c.HTTP; h != nil {
		if err := h.validate(); err != nil {
			return fmt.Errorf("http.%w", err)
		}
	}
	return nil
}

func (h *HTTPCheck) validate() error {
	if h.Path != "" {
		if !strings.HasPrefix(h.Path, "/") {
			return fmt.Errorf("path: %q does not start with /", h.Path)
		}
		if _, err := url.ParseRequestURI(h.Path); err != nil || strings.ContainsAny(h.Path, " \t\r\n#") {
			return fmt.Errorf("path: %q is not a path with an optional query", h.Path)
		}
	}
	if h.ExpectedStatuses != nil && len(h.ExpectedStatuses) == 0 {
		return errors.New("expectedStatuses: empty (leave it out for the default, [[200, 299]])")
	}
	for i, r := range h.ExpectedStatuses {
		if err := r.validate(); err != nil {
			return fmt.Errorf("expectedStatuses[%d]: %w", i, err)
		}
	}
	if h.Host != "" && (!httpguts.ValidHostHeader(h.Host) || strings.ContainsAny(h.Host, "/?#@")) {
		return fmt.Errorf("host: %q is not a valid Host header", h.Host)
	}
	switch h.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf(`scheme: %q is neither "http" nor "https"`, h.Scheme)
	}
	return nil
}

// effective returns c with its defaults applied.
func (c *HealthCheck) effective() HealthCheck {
	e := *c
	if e.Interval == 0 {
		e.Interval = DefaultCheckInterval
	}
	if e.Timeout == 0 {
		e.Timeout = DefaultCheckTimeout
	}
	if e.UnhealthyThreshold == 0 {
		e.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if e.HealthyThreshold == 0 {
		e.HealthyThreshold = DefaultHealthyThreshold
	}
	if e.NoTrafficInterval == 0 {
		e.NoTrafficInterval = max(DefaultNoTrafficInterval, e.Interval)
	}
	if c.HTTP != nil {
		h := *c.HTTP
		if h.Path == "" {
			h.Path = DefaultHTTPPath
		}
		if h.ExpectedStatuses == nil {
			h.ExpectedStatuses = DefaultExpectedStatuses
		}
		if h.Scheme == "" {
			h.Scheme = "http"
		}
		e.HTTP = &h
	}
	return e
}
