package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// prober runs the checks of one endpoint. It belongs to the endpoint's
// goroutine, so it needs no lock.
type prober interface {
	// probe runs one check; nil means it passed. ctx carries the timeout.
	probe(ctx context.Context) error
	// close releases the prober's connections.
	close()
}

func (c *Checker) newProber(addr string) prober {
	switch {
	case c.cfg.HTTP != nil:
		return c.newHTTPProber(addr)
	case c.cfg.GRPC != nil:
		return &grpcProber{c: c, addr: addr}
	default:
		return &tcpProber{c: c, addr: addr}
	}
}

// dial connects through CheckerOptions.Dial or a zero net.Dialer.
func (c *Checker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if c.opts.Dial != nil {
		return c.opts.Dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// splitNetwork turns a dial address into a network and an address: "unix:"
// addresses (as grpc writes them) are unix sockets, the rest TCP.
func splitNetwork(addr string) (network, address string) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		return "unix", addr[len("unix://"):]
	case strings.HasPrefix(addr, "unix:"):
		return "unix", addr[len("unix:"):]
	case strings.HasPrefix(addr, "unix-abstract:"):
		return "unix", "@" + addr[len("unix-abstract:"):]
	case strings.HasPrefix(addr, "\x00"): // grpc's form of an abstract socket
		return "unix", addr
	}
	return "tcp", addr
}

// httpProber GETs the check's URL on one endpoint, over a transport of its
// own that keeps one connection alive between checks (Envoy reuses health
// check connections too) and uses no proxy.
type httpProber struct {
	tr       *http.Transport
	url      string
	host     string
	statuses []StatusRange
}

func (c *Checker) newHTTPProber(addr string) *httpProber {
	h := c.cfg.HTTP
	host := h.Host
	if host == "" {
		host = c.opts.Service
	}
	if host == "" {
		host = addr
	}
	tr := &http.Transport{
		DialContext:         c.dial,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     max(90*time.Second, 2*c.cfg.NoTrafficInterval),
		DisableCompression:  true,
	}
	if h.Scheme == "https" {
		cfg := c.opts.TLS.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = hostOnly(host)
		}
		tr.TLSClientConfig = cfg
	}
	return &httpProber{tr: tr, url: h.Scheme + "://" + addr + h.Path, host: host, statuses: h.ExpectedStatuses}
}

// hostOnly strips a port (and IPv6 brackets) from a Host header's value.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

func (p *httpProber) probe(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	if err != nil {
		return err
	}
	req.Host = p.host
	req.Header.Set("User-Agent", "lodestar-health-check")
	resp, err := p.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	// Read a little so that the connection can be reused; a longer body
	// costs the connection rather than the time to read it.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	_ = resp.Body.Close()
	for _, r := range p.statuses {
		if r.Contains(resp.StatusCode) {
			return nil
		}
	}
	want := make([]string, len(p.statuses))
	for i, r := range p.statuses {
		want[i] = r.String()
	}
	return fmt.Errorf("HTTP status %d, want %s", resp.StatusCode, strings.Join(want, " or "))
}

func (p *httpProber) close() { p.tr.CloseIdleConnections() }

// grpcProber calls Health/Check on a client connection of its own, made at
// the first check.
type grpcProber struct {
	c      *Checker
	addr   string
	conn   *grpc.ClientConn
	client healthpb.HealthClient
}

func (p *grpcProber) probe(ctx context.Context) error {
	if p.conn == nil {
		if err := p.connect(); err != nil {
			return err
		}
	}
	resp, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: p.c.cfg.GRPC.Service})
	if err != nil {
		return err
	}
	if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health status %v", s)
	}
	return nil
}

func (p *grpcProber) connect() error {
	c := p.c
	target := p.addr
	if _, _, err := net.SplitHostPort(target); err == nil {
		target = "passthrough:///" + target // resolved already: no DNS
	}
	var creds credentials.TransportCredentials
	if c.opts.GRPCCredentials != nil {
		creds = c.opts.GRPCCredentials // the channel's own, so checks connect as RPCs do
	} else if c.opts.TLS != nil {
		cfg := c.opts.TLS.Clone()
		if cfg.ServerName == "" && c.opts.Service != "" {
			cfg.ServerName = hostOnly(c.opts.Service)
		}
		creds = credentials.NewTLS(cfg)
	} else {
		creds = insecure.NewCredentials()
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithNoProxy(),
		grpc.WithDisableServiceConfig(),
		// Reconnect to a server that went away no slower than it is checked.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  min(time.Second, c.cfg.Interval),
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   c.cfg.Interval,
			},
			MinConnectTimeout: c.cfg.Timeout,
		}),
	}
	if c.opts.Service != "" {
		opts = append(opts, grpc.WithAuthority(c.opts.Service))
	}
	if c.opts.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			network, addr := splitNetwork(addr)
			return c.opts.Dial(ctx, network, addr)
		}))
	}
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return err
	}
	p.conn, p.client = conn, healthpb.NewHealthClient(conn)
	return nil
}

func (p *grpcProber) close() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
}

// tcpProber connects and closes.
type tcpProber struct {
	c    *Checker
	addr string
}

func (p *tcpProber) probe(ctx context.Context) error {
	network, addr := splitNetwork(p.addr)
	conn, err := p.c.dial(ctx, network, addr)
	if err != nil {
		return err
	}
	_ = conn.Close()
	return nil
}

func (p *tcpProber) close() {}
