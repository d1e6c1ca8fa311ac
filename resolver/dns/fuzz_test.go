package dns

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/resolver"
)

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"dns:///api.internal:8080", "dns://127.0.0.1:5353/api.internal.:80?network=ip4",
		"srv:///_http._tcp.api.internal", "srv://[::1]/_x._udp.y?minInterval=1s&maxInterval=2s&timeout=3s",
		"dns:///[::1]:80", "dns:///a", "srv:///a..b", "dns:a:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		feed, err := ParseTarget(target)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "dns target") && !strings.HasPrefix(err.Error(), "srv target") {
				t.Errorf("error %q does not say which target kind it is about", err)
			}
			return
		}
		o := feed.Options()
		if o.MinInterval <= 0 || o.MaxInterval < o.MinInterval || o.Timeout <= 0 || o.Resolver == nil {
			t.Errorf("%q: options %+v", target, o)
		}
		if !feed.srv {
			if _, _, err := net.SplitHostPort(net.JoinHostPort(feed.name, feed.port)); err != nil {
				t.Errorf("%q: host %q port %q", target, feed.name, feed.port)
			}
		}
	})
}

// FuzzSRVEndpoints maps arbitrary SRV answers: the set must always be valid,
// sorted, without duplicates, with weights in range and tiers dense from 0.
func FuzzSRVEndpoints(f *testing.F) {
	f.Add([]byte{0, 10, 0, 5, 0x1f, 0x90, 0, 1, 0, 0, 0, 0x50, 1})
	f.Add([]byte{255, 255, 255, 255, 255, 255, 2, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		targets := []string{"a.", "b.", "c.", "."}
		addrs := map[string][]netip.Addr{
			"a.": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::ffff:10.0.0.1")},
			"b.": {netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("2001:db8::1")},
			"c.": {netip.MustParseAddr("fe80::1%eth0")},
		}
		var srvs []*net.SRV
		for len(data) >= 7 {
			srvs = append(srvs, &net.SRV{
				Priority: uint16(data[0])<<8 | uint16(data[1]),
				Weight:   uint16(data[2])<<8 | uint16(data[3]),
				Port:     uint16(data[4])<<8 | uint16(data[5]),
				Target:   targets[int(data[6])%len(targets)],
			})
			data = data[7:]
		}
		eps := SRVEndpoints(srvs, addrs)
		if err := resolver.ValidateSet(eps); err != nil {
			t.Fatalf("invalid set %+v: %v", eps, err)
		}
		// Tiers rank the priorities of usable records only (port ≠ 0, target ≠ ".").
		var prios []int
		for _, r := range srvs {
			if r.Port != 0 && r.Target != "." && !slices.Contains(prios, int(r.Priority)) {
				prios = append(prios, int(r.Priority))
			}
		}
		slices.Sort(prios)
		for i, ep := range eps {
			if i > 0 && eps[i-1].Address >= ep.Address {
				t.Errorf("not sorted: %s before %s", eps[i-1].Address, ep.Address)
			}
			if ep.Weight == 0 || ep.Weight > resolver.MaxWeight {
				t.Errorf("%s: weight %d", ep.Address, ep.Weight)
			}
			if p, _ := strconv.Atoi(ep.Metadata[MetaSRVPriority]); ep.Priority < 0 || ep.Priority >= len(prios) || prios[ep.Priority] != p {
				t.Errorf("%s: tier %d for SRV priority %d, want its rank among the usable priorities %v", ep.Address, ep.Priority, p, prios)
			}
			if ep.Metadata[MetaSRVTarget] == "" || ep.Metadata[MetaSRVWeight] == "" {
				t.Errorf("%s: metadata %v", ep.Address, ep.Metadata)
			}
		}
	})
}
