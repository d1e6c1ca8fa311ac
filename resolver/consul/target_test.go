package consul

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar/resolver"
)

func TestParseTarget(t *testing.T) {
	o, err := ParseTarget("consul://127.0.0.1:8501/web?tag=a&tag=b&dc=dc2&near=_agent&filter=Service.Meta.v%20%3D%3D%20%222%22&token=s3cret&stale=true&passingOnly=false&ns=team&partition=p1&zoneKey=az&regionKey=geo&subzoneKey=rack&priorityKey=tier&wait=30s")
	if err != nil {
		t.Fatal(err)
	}
	want := Options{
		Service: "web", Address: "127.0.0.1:8501", Tags: []string{"a", "b"}, Datacenter: "dc2",
		Near: "_agent", Filter: `Service.Meta.v == "2"`, Token: "s3cret", AllowStale: true,
		IncludeWarning: true, Namespace: "team", Partition: "p1", ZoneKey: "az", RegionKey: "geo",
		SubZoneKey: "rack", PriorityKey: "tier", WaitTime: 30 * time.Second,
	}
	if !slices.Equal(o.Tags, want.Tags) {
		t.Errorf("tags %v, want %v", o.Tags, want.Tags)
	}
	o.Tags, want.Tags = nil, nil
	if !reflect.DeepEqual(o, want) {
		t.Errorf("got  %+v\nwant %+v", o, want)
	}

	for target, want := range map[string]Options{
		"consul:///web":                        {Service: "web"},
		"consul://consul.internal/web":         {Service: "web", Address: "consul.internal:8500"},
		"consul://[::1]:8500/web":              {Service: "web", Address: "[::1]:8500"},
		"consul://[::1]/web":                   {Service: "web", Address: "[::1]:8500"},
		"consul:///web?passingOnly=true":       {Service: "web"},
		"consul:///web?stale=false":            {Service: "web"},
		"consul:///my-svc?near=node-1&dc=east": {Service: "my-svc", Near: "node-1", Datacenter: "east"},
	} {
		o, err := ParseTarget(target)
		if err != nil {
			t.Errorf("%s: %v", target, err)
			continue
		}
		if o.Tags != nil || want.Tags != nil {
			t.Errorf("%s: tags %v", target, o.Tags)
		}
		if !reflect.DeepEqual(o, want) {
			t.Errorf("%s:\n got  %+v\n want %+v", target, o, want)
		}
	}
}

func TestParseTargetErrorsNameThePart(t *testing.T) {
	for target, part := range map[string]string{
		"consul://":                          "no service name",
		"consul:///":                         "no service name",
		"consul://127.0.0.1:8500":            "no service name",
		"consul:///web/extra":                "more than one segment",
		"consul:///web?tag=":                 `"tag" is empty`,
		"consul:///web?dc=":                  "dc=",
		"consul:///web?stale=maybe":          "stale=",
		"consul:///web?passingOnly=yes":      "passingOnly=",
		"consul:///web?wait=forever":         "wait=",
		"consul:///web?wait=-1s":             "wait=",
		"consul:///web?wait=11m":             "WaitTime",
		"consul:///web?colour=blue":          `unknown parameter "colour"`,
		"consul:///web?dc=a&dc=b":            `"dc" given 2 times`,
		"consul:///web?token=":               "parameter token",
		"consul://127.0.0.1:99999/web":       "port",
		"consul://127.0.0.1:0/web":           "port",
		"consul://:8500/web":                 "empty host",
		"consul://user:pw@127.0.0.1:8500/w":  "user information",
		"consul:///web#frag":                 "fragment",
		"consul:web":                         "//[authority]/service",
		"dns:///web":                         "scheme",
		"consul:///web?filter=%zz":           "query",
		"consul://127.0.0.1:8500/web?near=":  "near=",
		"consul://127.0.0.1:8500/web?ns=&x=": "",
	} {
		_, err := ParseTarget(target)
		if err == nil {
			t.Errorf("%s: no error", target)
			continue
		}
		if !strings.Contains(err.Error(), part) {
			t.Errorf("%s: error %q does not name %q", target, err, part)
		}
	}
	// A bad token value is not echoed.
	if _, err := ParseTarget("consul:///web?token=a&token=b"); err == nil || strings.Contains(err.Error(), "a&") {
		t.Errorf("repeated token: %v", err)
	}
}

func TestRegisteredScheme(t *testing.T) {
	if !slices.Contains(resolver.Schemes(), "consul") {
		t.Fatalf("consul scheme not registered: %v", resolver.Schemes())
	}
	f, err := resolver.Parse("consul://127.0.0.1:8500/web?tag=x")
	if err != nil {
		t.Fatal(err)
	}
	cf := f.(*Feed)
	o := cf.Options()
	if o.Service != "web" || o.WaitTime != DefaultWaitTime || o.QueryRate != DefaultQueryRate || o.ZoneKey != "zone" || o.PriorityKey != "priority" {
		t.Errorf("defaults not applied: %+v", o)
	}
	if s := cf.String(); !strings.Contains(s, "127.0.0.1:8500") || !strings.Contains(s, "web") {
		t.Errorf("String() = %q", s)
	}
	if _, err := resolver.Parse("consul:///"); err == nil || !strings.Contains(err.Error(), "no service name") {
		t.Errorf("resolver.Parse of a bad target: %v", err)
	}
}

func TestDefaultAgentAddress(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:18555")
	f, err := New(Options{Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if f.addr != "127.0.0.1:18555" {
		t.Errorf("agent address %q, want CONSUL_HTTP_ADDR's 127.0.0.1:18555", f.addr)
	}
	t.Setenv("CONSUL_HTTP_ADDR", "")
	f, err = New(Options{Service: "web", Config: &api.Config{Address: "10.0.0.1:8500"}, Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if f.addr != "127.0.0.1:1" {
		t.Errorf("Options.Address did not override Config.Address: %q", f.addr)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o     Options
		field string
	}{
		{Options{}, "Options.Service"},
		{Options{Service: "a/b"}, "Options.Service"},
		{Options{Service: "a", WaitTime: -1}, "Options.WaitTime"},
		{Options{Service: "a", WaitTime: time.Hour}, "Options.WaitTime"},
		{Options{Service: "a", ResponseTimeout: -1}, "Options.ResponseTimeout"},
		{Options{Service: "a", QueryRate: -1}, "Options.QueryRate"},
		{Options{Service: "a", Tags: []string{"x", ""}}, "Options.Tags[1]"},
	} {
		_, err := New(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New(%+v) = %v, want an error naming %s", tc.o, err, tc.field)
		}
	}
}

func TestEntryMapping(t *testing.T) {
	o := Options{Service: "web"}
	o.setDefaults()
	e := &api.ServiceEntry{
		Node: &api.Node{Node: "n1", Address: "10.0.0.1", Datacenter: "dc1",
			Meta: map[string]string{"rack": "r7", "zone": "node-zone", "region": "node-region"}},
		Service: &api.AgentService{ID: "web-1", Service: "web", Address: "2001:db8::1", Port: 8080,
			Tags:     []string{"canary", "zone=tag-zone", "priority=2"},
			Meta:     map[string]string{"version": "3"},
			Weights:  api.AgentWeights{Passing: 9, Warning: 1},
			Locality: &api.Locality{Region: "svc-region", Zone: "svc-zone"}, Namespace: "ns1"},
		Checks: api.HealthChecks{{CheckID: "a", Status: api.HealthPassing}},
	}
	ep, ok, err := o.endpoint(e)
	if err != nil || !ok {
		t.Fatalf("endpoint: %v %v", ok, err)
	}
	if ep.Address != "[2001:db8::1]:8080" || ep.Weight != 9 || ep.Priority != 2 {
		t.Errorf("endpoint %+v", ep)
	}
	// Zone from the tag, region from the node meta: both before the service's
	// Consul locality.
	if want := (resolver.Locality{Region: "node-region", Zone: "tag-zone"}); ep.Locality != want {
		t.Errorf("locality %+v, want %+v", ep.Locality, want)
	}
	for k, v := range map[string]string{"version": "3", "tag:canary": "true", "node:rack": "r7",
		MetaNode: "n1", MetaServiceID: "web-1", MetaDatacenter: "dc1", MetaHealth: "passing", MetaNamespace: "ns1"} {
		if ep.Metadata[k] != v {
			t.Errorf("metadata[%q] = %q, want %q", k, ep.Metadata[k], v)
		}
	}
	if _, ok := ep.Metadata[MetaPartition]; ok {
		t.Errorf("empty partition kept: %v", ep.Metadata)
	}

	// Keys can be renamed or turned off.
	o2 := Options{Service: "web", ZoneKey: "rack", RegionKey: "-", PriorityKey: "-"}
	o2.setDefaults()
	ep, _, _ = o2.endpoint(e)
	if want := (resolver.Locality{Zone: "r7"}); ep.Locality != want || ep.Priority != 0 {
		t.Errorf("renamed keys: locality %+v priority %d", ep.Locality, ep.Priority)
	}
	// Without any key, the Consul locality.
	e.Node.Meta = nil
	o3 := Options{Service: "web", ZoneKey: "-"}
	o3.setDefaults()
	ep, _, _ = o3.endpoint(e)
	if want := (resolver.Locality{Region: "svc-region"}); ep.Locality != want {
		t.Errorf("Consul locality: %+v, want %+v", ep.Locality, want)
	}

	// Node address when the service has none; a bad priority is ignored.
	e.Service.Address, e.Service.Tags = "", []string{"priority=high"}
	ep, _, _ = o.endpoint(e)
	if ep.Address != "10.0.0.1:8080" || ep.Priority != 0 {
		t.Errorf("fallbacks: %+v", ep)
	}

	// Broken entries are errors; unhealthy ones are just left out.
	e.Service.Port = 0
	if _, _, err := o.endpoint(e); err == nil || !strings.Contains(err.Error(), "port 0") {
		t.Errorf("port 0: %v", err)
	}
	e.Service.Port, e.Node.Address = 80, ""
	if _, _, err := o.endpoint(e); err == nil || !strings.Contains(err.Error(), "address") {
		t.Errorf("no address: %v", err)
	}
	e.Checks[0].Status = api.HealthCritical
	if _, ok, err := o.endpoint(e); ok || err != nil {
		t.Errorf("critical: %v %v", ok, err)
	}
}

func TestEndpointsDropDuplicates(t *testing.T) {
	f := &Feed{opts: Options{Service: "web"}}
	f.opts.setDefaults()
	mk := func(id string, port int) *api.ServiceEntry {
		return &api.ServiceEntry{Node: &api.Node{Address: "10.0.0.1"}, Service: &api.AgentService{ID: id, Port: port}}
	}
	eps, err := f.endpoints([]*api.ServiceEntry{mk("b", 2), mk("a", 1), mk("dup", 2), nil, mk("bad", 0)})
	if got := addrs(eps); !slices.Equal(got, []string{"10.0.0.1:1", "10.0.0.1:2"}) {
		t.Errorf("endpoints %v", got)
	}
	if err == nil || !strings.Contains(err.Error(), "left out 3") {
		t.Errorf("error %v, want 3 left out", err)
	}
	if !slices.IsSortedFunc(eps, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) }) {
		t.Errorf("not sorted by address: %v", addrs(eps))
	}
}

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct{ prev, got, want uint64 }{
		{0, 0, 1}, {0, 5, 5}, {5, 5, 5}, {5, 9, 9}, {9, 5, 0}, {9, 0, 0}, {1, 0, 0},
	} {
		if n := nextIndex(tc.prev, tc.got); n != tc.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, n, tc.want)
		}
	}
}
