package resolver

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

const staticForm = "want static:///host:port,host:port"

// buildStatic parses "static:///host:port,host:port". A target that says more
// (user information, an authority, a query, a fragment) is rejected with an
// error naming the part, which it never quotes: Parse quotes the target,
// redacted.
func buildStatic(u *url.URL) (Feed, error) {
	switch {
	case u.Opaque != "":
		return nil, fmt.Errorf(`static target: no "//" after "static:" (%s)`, staticForm)
	case u.User != nil:
		return nil, fmt.Errorf("static target: unexpected user information in the authority (%s)", staticForm)
	case u.Host != "":
		return nil, fmt.Errorf("static target: unexpected authority %q (%s)", u.Host, staticForm)
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fmt.Errorf("static target: unexpected query: a static target takes no parameters (%s; set weights and other attributes with resolver.NewStatic)", staticForm)
	case u.Fragment != "" || u.RawFragment != "":
		return nil, fmt.Errorf("static target: unexpected fragment (%s)", staticForm)
	}
	list := strings.TrimPrefix(u.Path, "/")
	if list == "" {
		return nil, errors.New("static target: no addresses (" + staticForm + ")")
	}
	var eps []Endpoint
	for _, a := range strings.Split(list, ",") {
		eps = append(eps, Endpoint{Address: a})
	}
	if err := ValidateSet(eps); err != nil {
		return nil, fmt.Errorf("static target: %w", err)
	}
	st, err := NewStatic(eps...)
	if err != nil {
		return nil, err
	}
	return st, nil
}
