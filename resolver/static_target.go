package resolver

import (
	"fmt"
	"net/url"
	"strings"
)

// buildStatic parses "static:///host:port,host:port".
func buildStatic(u *url.URL) (Feed, error) {
	if u.Host != "" {
		return nil, fmt.Errorf("static target: unexpected authority %q (want static:///host:port,host:port)", u.Host)
	}
	list := strings.TrimPrefix(u.Path, "/")
	if list == "" {
		return nil, fmt.Errorf("static target: no addresses (want static:///host:port,host:port)")
	}
	var eps []Endpoint
	for _, a := range strings.Split(list, ",") {
		eps = append(eps, Endpoint{Address: a})
	}
	if err := ValidateSet(eps); err != nil {
		return nil, fmt.Errorf("static target: %w", err)
	}
	return &Static{eps: eps}, nil
}
