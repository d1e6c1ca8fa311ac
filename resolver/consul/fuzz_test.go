package consul

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{
		"consul:///web",
		"consul://127.0.0.1:8500/web?tag=a&tag=b&dc=dc1&near=_agent&stale=true&passingOnly=false",
		"consul://[::1]/web?filter=Service.Meta.v%20%3D%3D%20%222%22&ns=a&partition=b&wait=1m",
		"consul://h:1/x?zoneKey=az&priorityKey=-",
		"consul:///web/x", "consul:web", "consul://u@h/web", "consul:///web?token=a&token=b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		o, err := ParseTarget(target)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "consul target") {
				t.Errorf("error %q does not say it is about the consul target", err)
			}
			return
		}
		if err := o.Validate(); err != nil {
			t.Errorf("ParseTarget(%q) accepted options that do not validate: %v", target, err)
		}
		if _, err := New(o); err != nil {
			t.Errorf("New with options parsed from %q: %v", target, err)
		}
	})
}

// FuzzEntryMapping maps an arbitrary health entry: the mapping must not panic,
// and whatever it serves must be a valid endpoint carrying the entry's meta.
func FuzzEntryMapping(f *testing.F) {
	f.Add("10.0.0.1", "", 8080, 1, 1, "passing", "zone=a", "zone", "b", "region", "r", true)
	f.Add("", "2001:db8::1", 0, 0, 0, "warning", "priority=3", "priority", "x", "k", "v", false)
	f.Add("host.internal", "", 70000, -1, 5, "critical", "", "", "", "tag:x", "y", true)
	f.Fuzz(func(t *testing.T, svcAddr, nodeAddr string, port, passing, warning int, status, tag, metaKey, metaVal, nodeKey, nodeVal string, warn bool) {
		o := Options{Service: "web", IncludeWarning: warn}
		o.setDefaults()
		e := &api.ServiceEntry{
			Node: &api.Node{Node: "n", Address: nodeAddr, Meta: map[string]string{nodeKey: nodeVal}},
			Service: &api.AgentService{ID: "id", Address: svcAddr, Port: port, Tags: []string{tag},
				Meta: map[string]string{metaKey: metaVal}, Weights: api.AgentWeights{Passing: passing, Warning: warning}},
			Checks: api.HealthChecks{{CheckID: "c", Status: status}},
		}
		ep, ok, err := o.endpoint(e)
		if err != nil || !ok {
			return
		}
		if err := ep.Validate(); err != nil {
			t.Errorf("served an invalid endpoint: %v", err)
		}
		host, p, err := net.SplitHostPort(ep.Address)
		if err != nil || p != strconv.Itoa(port) || (host != svcAddr && (svcAddr != "" || host != nodeAddr)) {
			t.Errorf("address %q from service address %q, node address %q, port %d", ep.Address, svcAddr, nodeAddr, port)
		}
		if status != api.HealthPassing && (status != api.HealthWarning || !warn) {
			t.Errorf("served an instance whose health is %q (IncludeWarning %v)", status, warn)
		}
		if port <= 0 || port > 65535 {
			t.Errorf("served port %d", port)
		}
		if ep.Metadata["tag:"+tag] != "true" {
			t.Errorf("tag %q not kept: %v", tag, ep.Metadata)
		}
		if ep.Priority < 0 || ep.Weight > 1<<20 {
			t.Errorf("priority %d weight %d out of range", ep.Priority, ep.Weight)
		}
		if !strings.ContainsAny(metaKey, ":.") && metaKey != "" && ep.Metadata[metaKey] != metaVal {
			t.Errorf("meta %q=%q not kept: %v", metaKey, metaVal, ep.Metadata)
		}
	})
}
