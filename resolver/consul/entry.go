package consul

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar/resolver"
)

// Metadata keys the feed adds to every endpoint, next to the service's own meta.
const (
	// MetaTagPrefix prefixes each service tag: tag "canary" is the key
	// "tag:canary" with value "true".
	MetaTagPrefix = "tag:"
	// MetaNodePrefix prefixes each key of the node's meta.
	MetaNodePrefix = "node:"
	// MetaNode is the Consul node name.
	MetaNode = "consul.node"
	// MetaServiceID is the service instance's ID.
	MetaServiceID = "consul.service_id"
	// MetaDatacenter is the node's datacenter.
	MetaDatacenter = "consul.datacenter"
	// MetaHealth is the instance's aggregated health: "passing" or "warning".
	MetaHealth = "consul.health"
	// MetaNamespace and MetaPartition are the instance's namespace and admin
	// partition (Consul Enterprise), present only when set.
	MetaNamespace = "consul.namespace"
	MetaPartition = "consul.partition"
)

// endpoints maps a health answer to a set sorted by address. Entries that cannot
// be served are left out; those that are broken (no address, an address that is
// not a host, a bad port, a duplicate address) are also counted in the returned
// error, one for the whole answer, which names their service IDs by reason.
func (f *Feed) endpoints(entries []*api.ServiceEntry) ([]resolver.Endpoint, error) {
	eps := make([]resolver.Endpoint, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	var drops []*dropError
	for _, e := range entries {
		ep, ok, err := f.opts.endpoint(e)
		if err != nil {
			var d *dropError
			if !errors.As(err, &d) {
				d = &dropError{why: "that cannot be mapped", id: instanceID(e), msg: err.Error()}
			}
			drops = append(drops, d)
			continue
		}
		if !ok {
			continue
		}
		if seen[ep.Address] {
			drops = append(drops, &dropError{why: "whose address is also another instance's", id: instanceID(e),
				detail: ep.Address, msg: fmt.Sprintf("instance %s: address %s is also another instance's; left out", instanceID(e), ep.Address)})
			continue
		}
		seen[ep.Address] = true
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) })
	if len(drops) == 0 {
		return eps, nil
	}
	// One clause per reason, in the order the reasons first appear.
	var whys []string
	byWhy := map[string][]string{}
	for _, d := range drops {
		if _, ok := byWhy[d.why]; !ok {
			whys = append(whys, d.why)
		}
		item := d.id
		if d.detail != "" {
			item += " (" + d.detail + ")"
		}
		byWhy[d.why] = append(byWhy[d.why], item)
	}
	clauses := make([]string, len(whys))
	for i, why := range whys {
		clauses[i] = fmt.Sprintf("%d %s: %s", len(byWhy[why]), why, strings.Join(byWhy[why], ", "))
	}
	return eps, fmt.Errorf("left out %d instance(s) that cannot be served, serving the other %d: %s",
		len(drops), len(eps), strings.Join(clauses, "; "))
}

// dropError says why an entry cannot be served.
type dropError struct {
	why    string // the reason, shared by the entries it groups: "whose port is not in 1-65535"
	id     string // the instance: its service ID, or "node/ID" when the node is known
	detail string // what is wrong with this one, such as its address; may be empty
	msg    string // the whole error
}

func (e *dropError) Error() string { return e.msg }

func instanceID(e *api.ServiceEntry) string {
	if e == nil || e.Service == nil {
		return "?"
	}
	if e.Node != nil && e.Node.Node != "" {
		return e.Node.Node + "/" + e.Service.ID
	}
	return e.Service.ID
}

// validHost reports whether h is an IP address (an IPv6 one may carry a zone)
// or a DNS host name: labels of 1-63 letters, digits, '-' and '_', at most 253
// characters in all, with an optional final dot. It rejects what instances are
// often registered with by mistake: "10.0.0.1:8080", "web internal", a URL.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	n := strings.TrimSuffix(h, ".")
	if n == "" || len(n) > 253 {
		return false
	}
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// endpoint maps one health entry. ok is false for an instance that is not to be
// served (critical, in maintenance, warning without IncludeWarning, or warning
// with a warning weight of 0); err describes an entry that cannot be mapped.
func (o *Options) endpoint(e *api.ServiceEntry) (ep resolver.Endpoint, ok bool, err error) {
	if e == nil || e.Service == nil {
		return ep, false, &dropError{why: "without a service", id: "?", msg: "health entry without a service"}
	}
	svc, node := e.Service, e.Node
	if node == nil {
		node = &api.Node{}
	}

	status := e.Checks.AggregatedStatus()
	var weight int
	switch {
	case status == api.HealthPassing:
		weight = svc.Weights.Passing
	case status == api.HealthWarning && o.IncludeWarning:
		weight = svc.Weights.Warning
		if weight <= 0 {
			return ep, false, nil // Consul's way of saying "no traffic while warning"
		}
	default:
		return ep, false, nil
	}

	host, from := svc.Address, "service address"
	if host == "" {
		host, from = node.Address, "node address"
	}
	id := instanceID(e)
	if host == "" {
		return ep, false, &dropError{why: "with neither a service nor a node address", id: id,
			msg: fmt.Sprintf("instance %s: neither the service nor its node has an address", id)}
	}
	if !validHost(host) {
		return ep, false, &dropError{why: "whose address is not a host name or IP address", id: id, detail: fmt.Sprintf("%s %q", from, host),
			msg: fmt.Sprintf("instance %s: %s %q is not a host name or IP address", id, from, host)}
	}
	port := svc.DefaultPort()
	if port <= 0 || port > 65535 {
		return ep, false, &dropError{why: "whose port is not in 1-65535", id: id, detail: fmt.Sprintf("port %d", port),
			msg: fmt.Sprintf("instance %s: port %d is not in 1-65535", id, port)}
	}
	ep.Address = net.JoinHostPort(host, strconv.Itoa(port))
	if weight > 0 {
		ep.Weight = uint32(min(weight, resolver.MaxWeight))
	}

	md := make(map[string]string, len(svc.Meta)+len(svc.Tags)+len(node.Meta)+6)
	for k, v := range svc.Meta {
		md[k] = v
	}
	for _, t := range svc.Tags {
		md[MetaTagPrefix+t] = "true"
	}
	for k, v := range node.Meta {
		md[MetaNodePrefix+k] = v
	}
	set := func(k, v string) {
		if v != "" {
			md[k] = v
		}
	}
	set(MetaNode, node.Node)
	set(MetaServiceID, svc.ID)
	dc := node.Datacenter
	if dc == "" {
		dc = svc.Datacenter
	}
	set(MetaDatacenter, dc)
	set(MetaHealth, status)
	set(MetaNamespace, svc.Namespace)
	set(MetaPartition, svc.Partition)
	ep.Metadata = md

	var svcLoc, nodeLoc api.Locality
	if svc.Locality != nil {
		svcLoc = *svc.Locality
	}
	if node.Locality != nil {
		nodeLoc = *node.Locality
	}
	look := func(key, svcLocV, nodeLocV string) string {
		if key == "" {
			return ""
		}
		if v := svc.Meta[key]; v != "" {
			return v
		}
		for _, t := range svc.Tags {
			if v, ok := strings.CutPrefix(t, key+"="); ok && v != "" {
				return v
			}
		}
		if v := node.Meta[key]; v != "" {
			return v
		}
		if svcLocV != "" {
			return svcLocV
		}
		return nodeLocV
	}
	ep.Locality = resolver.Locality{
		Region:  look(o.RegionKey, svcLoc.Region, nodeLoc.Region),
		Zone:    look(o.ZoneKey, svcLoc.Zone, nodeLoc.Zone),
		SubZone: look(o.SubZoneKey, "", ""),
	}
	if p := look(o.PriorityKey, "", ""); p != "" {
		if n, err := strconv.ParseUint(p, 10, 31); err == nil {
			ep.Priority = int(n)
		}
	}
	return ep, true, nil
}
