package dns

import (
	"net"
	"strings"
	"sync"
	"testing"

	mdns "github.com/miekg/dns"
	"go.uber.org/goleak"
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
	silent  map[key]bool   // queries never answered
	queries map[key]int
	servers []*mdns.Server
}

type key struct {
	name  string
	qtype uint16
}

func newZone(t *testing.T) *zone {
	t.Helper()
	z := &zone{records: map[key][]mdns.RR{}, rcode: map[string]int{}, queries: map[key]int{}, silent: map[key]bool{}}
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
		drop = drop || z.silent[k]
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

// setSilent makes the server never answer queries for name and qtype (or
// answer them again).
func (z *zone) setSilent(name string, qtype uint16, silent bool) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.silent[key{strings.ToLower(name), qtype}] = silent
}

func (z *zone) count(name string, qtype uint16) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[key{strings.ToLower(name), qtype}]
}

// ---- a recording Sink ----
