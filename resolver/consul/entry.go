package consul

import (
	"errors"
	"fmt"
	"net"
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
// be served are left out; those that are broken (no address, a bad port, a
// duplicate address) are also described in the returned error.
func (f *Feed) endpoints(entries []*api.ServiceEntry) ([]resolver.Endpoint, error) {
	eps := make([]resolver.Endpoint, 0, len(entries))
	seen := make(map[string]bool, len(entries))
	var errs []error
	for _, e := range entries {
		ep, ok, err := f.opts.endpoint(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if seen[ep.Address] {
			errs = append(errs, fmt.Errorf("instance %s: address %s is also another instance's; left out", instanceID(e), ep.Address))
			continue
		}
		seen[ep.Address] = true
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) })
	if len(errs) > 0 {
		return eps, fmt.Errorf("left out %d instance(s): %w", len(errs), errors.Join(errs...))
	}
	return eps, nil
}

func instanceID(e *api.ServiceEntry) string {
	if e == nil || e.Service == nil {
		return "?"
	}
	if e.Node != nil {
		return e.Node.Node + "/" + e.Service.ID
	}
	return e.Service.ID
}

// endpoint maps one health entry. ok is false for an instance that is not to be
// served (critical, in maintenance, warning without IncludeWarning, or warning
// with a warning weight of 0); err describes an entry that cannot be mapped.
func (o *Options) endpoint(e *api.ServiceEntry) (ep resolver.Endpoint, ok bool, err error) {
	if e == nil || e.Service == nil {
		return ep, false, errors.New("health entry without a service")
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

	host := svc.Address
	if host == "" {
		host = node.Address
	}
	if host == "" {
		return ep, false, fmt.Errorf("instance %s: neither the service nor its node has an address", instanceID(e))
	}
	port := svc.DefaultPort()
	if port <= 0 || port > 65535 {
		return ep, false, fmt.Errorf("instance %s: port %d is not in 1-65535", instanceID(e), port)
	}
	ep.Address = net.JoinHostPort(host, strconv.Itoa(port))
	if h, _, err := net.SplitHostPort(ep.Address); err != nil || h != host {
		return ep, false, fmt.Errorf("instance %s: address %q is not a host name or IP address", instanceID(e), host)
	}
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
