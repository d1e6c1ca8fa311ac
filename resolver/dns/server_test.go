package dns

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/lodestar-go/lodestar/resolver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// zone is a real DNS server on 127.0.0.1 (UDP and TCP on the same port) whose
// answers tests change as they go.
type zone struct {
	addr string // "127.0.0.1:port"

	mu      sync.Mutex
	records map[key][]mdns.RR
	rcode   map[string]int // name → forced rcode (SERVFAIL, NXDOMAIN, ...)
	drop    bool           // answer nothing at all
	queries map[key]int
	servers []*mdns.Server
}

type key struct {
	name  string
	qtype uint16
}

func newZone(t *testing.T) *zone {
	t.Helper()
	z := &zone{records: map[key][]mdns.RR{}, rcode: map[string]int{}, queries: map[key]int{}}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP on 127.0.0.1")
	}
	z.addr = pc.LocalAddr().String()
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: z}, {Listener: ln, Handler: z}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		<-started
		z.servers = append(z.servers, s)
	}
	t.Cleanup(func() {
		for _, s := range z.servers {
			_ = s.Shutdown()
		}
	})
	return z
}

func (z *zone) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	z.mu.Lock()
	drop := z.drop
	if len(r.Question) == 1 {
		q := r.Question[0]
		k := key{strings.ToLower(q.Name), q.Qtype}
		z.queries[k]++
		if rc, ok := z.rcode[k.name]; ok {
			m.Rcode = rc
		} else {
			for _, rr := range z.records[k] {
				m.Answer = append(m.Answer, mdns.Copy(rr))
			}
			if len(m.Answer) == 0 && !z.known(k.name) {
				m.Rcode = mdns.RcodeNameError
			}
		}
	}
	z.mu.Unlock()
	if drop {
		return
	}
	_ = w.WriteMsg(m)
}

// known reports whether name has any record (else NXDOMAIN). z.mu is held.
func (z *zone) known(name string) bool {
	for k, rrs := range z.records {
		if k.name == name && len(rrs) > 0 {
			return true
		}
	}
	return false
}

// set replaces the records of name and type with rrs, given in zone-file form
// ("api.test. 5 IN A 127.0.0.1").
func (z *zone) set(t *testing.T, name string, qtype uint16, rrs ...string) {
	t.Helper()
	parsed := make([]mdns.RR, 0, len(rrs))
	for _, s := range rrs {
		rr, err := mdns.NewRR(s)
		if err != nil {
			t.Fatalf("record %q: %v", s, err)
		}
		parsed = append(parsed, rr)
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records[key{strings.ToLower(name), qtype}] = parsed
}

func (z *zone) fail(name string, rcode int) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if rcode == mdns.RcodeSuccess {
		delete(z.rcode, strings.ToLower(name))
	} else {
		z.rcode[strings.ToLower(name)] = rcode
	}
}

func (z *zone) setDrop(drop bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.drop = drop
}

func (z *zone) count(name string, qtype uint16) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[key{strings.ToLower(name), qtype}]
}

// ---- a recording Sink ----

type update struct {
	at  time.Time
	eps []resolver.Endpoint
}

type recSink struct {
	mu      sync.Mutex
	updates []update
	errs    []error
	changed chan struct{}
}

func newRecSink() *recSink { return &recSink{changed: make(chan struct{})} }

func (s *recSink) Update(eps []resolver.Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates = append(s.updates, update{time.Now(), eps})
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *recSink) ReportError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err)
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *recSink) snapshot() ([]update, []error, chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.updates), slices.Clone(s.errs), s.changed
}

func (s *recSink) waitUpdate(t *testing.T, from int, timeout time.Duration, what string, ok func([]resolver.Endpoint) bool) (update, int) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ups, errs, changed := s.snapshot()
		for i := from; i < len(ups); i++ {
			if ok(ups[i].eps) {
				return ups[i], i
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			var last []resolver.Endpoint
			if len(ups) > 0 {
				last = ups[len(ups)-1].eps
			}
			t.Fatalf("no update with %s within %v; last set %v; errors %v", what, timeout, addrs(last), errs)
		}
	}
}

func (s *recSink) waitErrors(t *testing.T, n int, timeout time.Duration) []error {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		_, errs, changed := s.snapshot()
		if len(errs) >= n {
			return errs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%d errors within %v, want %d: %v", len(errs), timeout, n, errs)
		}
	}
}

// watch runs f.Watch into a new recSink until the test ends, then checks it
// returns promptly with the context's error.
func watch(t *testing.T, f resolver.Feed) *recSink {
	t.Helper()
	s := newRecSink()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Watch(ctx, s) }()
	t.Cleanup(func() {
		cancel()
		start := time.Now()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
			if d := time.Since(start); d > 500*time.Millisecond {
				t.Errorf("Watch took %v to return after cancel", d)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Watch did not return within 5s of cancel")
		}
	})
	return s
}

func addrs(eps []resolver.Endpoint) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.Address
	}
	slices.Sort(out)
	return out
}

func hasAddrs(want ...string) func([]resolver.Endpoint) bool {
	slices.Sort(want)
	return func(eps []resolver.Endpoint) bool { return slices.Equal(addrs(eps), want) }
}

func byAddr(eps []resolver.Endpoint, addr string) (resolver.Endpoint, bool) {
	for _, ep := range eps {
		if ep.Address == addr {
			return ep, true
		}
	}
	return resolver.Endpoint{}, false
}

func checkNoRepeats(t *testing.T, s *recSink) {
	t.Helper()
	ups, _, _ := s.snapshot()
	for i := 1; i < len(ups); i++ {
		if resolver.EqualSets(ups[i-1].eps, ups[i].eps) {
			t.Errorf("updates %d and %d publish the same set %v", i-1, i, addrs(ups[i].eps))
		}
	}
	for i, u := range ups {
		if len(u.eps) == 0 {
			t.Errorf("update %d is empty", i)
		}
		if err := resolver.ValidateSet(u.eps); err != nil {
			t.Errorf("update %d: %v", i, err)
		}
	}
}
