package dns

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/lodestar-go/lodestar/resolver"
)

// TestSRVSilentTargetDoesNotStallTheFeed: a SRV target whose A query the DNS
// server never answers costs only its own addresses. On a fresh start the
// other targets are published without it; later changes of the other targets
// are published; once it has answered, a new silence keeps its last addresses;
// and every error names it.
func TestSRVSilentTargetDoesNotStallTheFeed(t *testing.T) {
	const good, silent = "good.lodestar.test.", "silent.lodestar.test."
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 10 1 8001 "+good, srvName+" 5 IN SRV 10 1 8002 "+silent)
	z.set(t, good, mdns.TypeA, good+" 5 IN A 127.0.0.1")
	z.set(t, silent, mdns.TypeA, silent+" 5 IN A 127.0.0.2")
	z.setSilent(silent, mdns.TypeA, true)

	o := fast(z)
	o.Timeout = 500 * time.Millisecond
	f, err := NewSRV(srvName, o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s := watch(t, f)

	// A fresh start: the silent target contributes nothing, the good one is served.
	u, i := s.WaitUpdate(t, 0, 5*time.Second, "the good target alone", hasAddrs("127.0.0.1:8001"))
	t.Logf("first set published %v after the start, with one target silent (Timeout 500ms)", u.At.Sub(start).Round(time.Millisecond))
	if z.count(silent, mdns.TypeA) == 0 {
		t.Fatal("the silent target's A query was never asked")
	}
	_, errs, _ := s.Snapshot()
	if !containsErr(errs, "SRV target "+silent, "no answer within 500ms", "left out") {
		t.Errorf("errors %v, want one naming %s, unanswered and left out", errs, silent)
	}
	if containsErr(errs, good) {
		t.Errorf("errors %v name the good target", errs)
	}

	// The good target changes: published, while the other stays silent.
	z.set(t, good, mdns.TypeA, good+" 5 IN A 127.0.0.3")
	_, i = s.WaitUpdate(t, i+1, 5*time.Second, "the good target's new address", hasAddrs("127.0.0.3:8001"))

	// The silent target answers: it joins.
	z.setSilent(silent, mdns.TypeA, false)
	_, i = s.WaitUpdate(t, i+1, 5*time.Second, "both targets", hasAddrs("127.0.0.3:8001", "127.0.0.2:8002"))

	// Silent again: it keeps its last addresses while the good one changes.
	_, errs0, _ := s.Snapshot()
	z.setSilent(silent, mdns.TypeA, true)
	z.set(t, good, mdns.TypeA, good+" 5 IN A 127.0.0.4")
	s.WaitUpdate(t, i+1, 5*time.Second, "the good target's change, the silent one kept", hasAddrs("127.0.0.4:8001", "127.0.0.2:8002"))
	errs = s.WaitErrors(t, len(errs0)+1, 5*time.Second)
	if !containsErr(errs[len(errs0):], "SRV target "+silent, "no answer within 500ms", "serving its last addresses") {
		t.Errorf("errors %v, want one naming %s, unanswered and served from its last addresses", errs[len(errs0):], silent)
	}
	checkNoRepeats(t, s)
}

// TestSRVTiersCountUsableRecordsOnly: records with port 0 or target "." take no
// tier, so the lowest usable SRV priority is tier 0, from a real DNS server and
// in SRVEndpoints.
func TestSRVTiersCountUsableRecordsOnly(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV,
		srvName+" 5 IN SRV 0 1 0 zero.lodestar.test.", // port 0
		srvName+" 5 IN SRV 5 1 8000 .",                // target "."
		srvName+" 5 IN SRV 10 1 8010 a.lodestar.test.",
		srvName+" 5 IN SRV 20 1 8020 b.lodestar.test.",
	)
	z.set(t, "zero.lodestar.test.", mdns.TypeA, "zero.lodestar.test. 5 IN A 127.0.0.9")
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	z.set(t, "b.lodestar.test.", mdns.TypeA, "b.lodestar.test. 5 IN A 127.0.0.2")
	f, err := NewSRV(srvName, fast(z))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	u, _ := s.WaitUpdate(t, 0, 5*time.Second, "the usable records", hasAddrs("127.0.0.1:8010", "127.0.0.2:8020"))
	for addr, tier := range map[string]int{"127.0.0.1:8010": 0, "127.0.0.2:8020": 1} {
		if ep, _ := byAddr(u.Endpoints, addr); ep.Priority != tier {
			t.Errorf("%s (SRV priority %s): tier %d, want %d", addr, ep.Metadata[MetaSRVPriority], ep.Priority, tier)
		}
	}
	if n := z.count("zero.lodestar.test.", mdns.TypeA); n != 0 {
		t.Errorf("the port-0 record's target was looked up %d times", n)
	}

	// The only usable record gets tier 0 whatever the unusable ones say.
	a := map[string][]netip.Addr{"a.": {netip.MustParseAddr("10.0.0.1")}, "z.": {netip.MustParseAddr("10.0.0.2")}}
	eps := SRVEndpoints([]*net.SRV{
		{Target: "z.", Port: 0, Priority: 0, Weight: 1},
		{Target: ".", Port: 80, Priority: 1, Weight: 1},
		{Target: "a.", Port: 80, Priority: 10, Weight: 1},
		nil,
	}, a)
	want := []resolver.Endpoint{{Address: "10.0.0.1:80", Weight: 16, Priority: 0, Metadata: map[string]string{
		MetaSRVTarget: "a.", MetaSRVPort: "80", MetaSRVPriority: "10", MetaSRVWeight: "1"}}}
	if !resolver.EqualSets(eps, want) {
		t.Errorf("got  %+v\nwant %+v", eps, want)
	}
}

// TestSRVNoUsableTarget: an answer of unusable records only is an error that
// says so, and publishes nothing.
func TestSRVNoUsableTarget(t *testing.T) {
	z := newZone(t)
	z.set(t, srvName, mdns.TypeSRV, srvName+" 5 IN SRV 0 1 0 a.lodestar.test.", srvName+" 5 IN SRV 1 1 80 .")
	z.set(t, "a.lodestar.test.", mdns.TypeA, "a.lodestar.test. 5 IN A 127.0.0.1")
	f, err := NewSRV(srvName, fast(z))
	if err != nil {
		t.Fatal(err)
	}
	s := watch(t, f)
	errs := s.WaitErrors(t, 2, 5*time.Second)
	if !strings.Contains(errs[0].Error(), "no usable target") {
		t.Errorf("error %v, want one saying no target is usable", errs[0])
	}
	if ups, _, _ := s.Snapshot(); len(ups) != 0 {
		t.Errorf("published %v", ups)
	}
}
