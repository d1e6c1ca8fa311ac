package balancer

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
)

// Environment variables that give the client's subsetting identity when the
// subset section does not (SubsetConfig.ClientID, ClientIndex, ClientCount).
const (
	EnvClientID    = "LODESTAR_CLIENT_ID"
	EnvClientIndex = "LODESTAR_CLIENT_INDEX"
	EnvClientCount = "LODESTAR_CLIENT_COUNT"
)

// Subsetting modes (SubsetConfig.Mode).
const (
	// SubsetRendezvous ranks endpoints by a rendezvous (highest random
	// weight) hash of the client id and the endpoint's address, as gRFC A68
	// and httplb do: no coordination between clients.
	SubsetRendezvous = "rendezvous"
	// SubsetDeterministic is the Google SRE book's deterministic subsetting:
	// clients with consecutive indexes share out a shuffle of the backends.
	SubsetDeterministic = "deterministic"
)

// SubsetConfig limits each client (each engine: a Transport's service, a gRPC
// channel) to a subset of the service's endpoints, so that many clients times
// many backends do not make every client connect to every backend. Only the
// subset's members are picked; the HTTP door opens connections only to them,
// the gRPC door makes SubConns only for them (and the higher-ranked endpoints
// they replace, see below).
//
// In JSON:
//
//	{"size": 20, "mode": "rendezvous", "clientId": "web-7f9c"}
//	{"size": 20, "mode": "deterministic", "clientIndex": 3, "clientCount": 60}
//
// Every endpoint has a rank, fixed by the client's identity and the endpoint's
// address. The subset is the Size best-ranked eligible endpoints: one that is
// unhealthy, ejected, breaker-open or paused is replaced by the next-ranked
// one, and takes its place back when it recovers. Not being connected does not
// count against an endpoint (the gRPC door connects only subset members).
// With locality, priority tiers or a split in force, each group (split rule ×
// priority tier × zone group) gets its own subset of Size.
type SubsetConfig struct {
	// Size is how many endpoints each client uses (per group, see above).
	// 0 means the default, 20; valid 1-100000. A service with Size or fewer
	// endpoints (in a group) is used whole.
	Size int `json:"size,omitempty" range:"[1, 100000]"`
	// Mode is "rendezvous" (the default) or "deterministic".
	//
	// rendezvous needs nothing but a client id and no coordination; the
	// number of clients per backend is binomial, so the busiest backend
	// carries about 1.5 times the mean (1,000 clients, 1,000 endpoints,
	// subset 20; see benchmarks/RESULTS.md). Removing a backend changes only
	// the subsets that held it.
	//
	// deterministic needs each client's index (a StatefulSet ordinal, for
	// instance): clients 0..k-1 of one round share out one shuffle of the
	// backends, size each, so backends carry the same number of clients to
	// within one round. A change in the number of backends reshuffles
	// (the rounds' shuffles depend on it).
	Mode string `json:"mode,omitempty"`
	// ClientID identifies the client for rendezvous: clients with the same
	// id get the same subset. Empty means the LODESTAR_CLIENT_ID environment
	// variable; when that is empty too, a random id made once per process.
	ClientID string `json:"clientId,omitempty"`
	// ClientIndex is the client's index for deterministic (0, 1, 2, ...).
	// nil means the LODESTAR_CLIENT_INDEX environment variable; deterministic
	// without either is an error. Valid 0-10000000.
	ClientIndex *int `json:"clientIndex,omitempty" range:"[0, 10000000]"`
	// ClientCount is the number of clients, for deterministic: optional, it
	// checks ClientIndex (which must be below it). nil means the
	// LODESTAR_CLIENT_COUNT environment variable, if set. Valid 1-10000000.
	ClientCount *int `json:"clientCount,omitempty" range:"[1, 10000000]"`
}

// DefaultSubsetSize is SubsetConfig.Size's default.
const DefaultSubsetSize = 20

// subsetParams is a SubsetConfig resolved: defaults and the environment
// applied, checked.
type subsetParams struct {
	size          int
	deterministic bool
	clientID      string
	index, count  int // deterministic; count 0 when unknown
}

// resolve applies the defaults and the environment to s and checks it.
// Errors name the field (and the environment variable) by its path under
// "subset".
func (s *SubsetConfig) resolve() (subsetParams, error) {
	var p subsetParams
	if err := CheckRanges(s); err != nil {
		return p, inField("subset", err)
	}
	p.size = s.Size
	if p.size == 0 {
		p.size = DefaultSubsetSize
	}
	switch s.Mode {
	case "", SubsetRendezvous:
		p.clientID = s.ClientID
		if p.clientID == "" {
			p.clientID = os.Getenv(EnvClientID)
		}
		if p.clientID == "" {
			p.clientID = processClientID()
		}
		return p, nil
	case SubsetDeterministic:
		p.deterministic = true
	default:
		return p, fmt.Errorf("subset.mode: unknown mode %q (want %q or %q)", s.Mode, SubsetRendezvous, SubsetDeterministic)
	}
	idx, ok, err := intFromConfigOrEnv(s.ClientIndex, EnvClientIndex, 0)
	if err != nil {
		return p, err
	}
	if !ok {
		return p, fmt.Errorf("subset.clientIndex: required with mode %q: set it, or the %s environment variable", SubsetDeterministic, EnvClientIndex)
	}
	cnt, ok, err := intFromConfigOrEnv(s.ClientCount, EnvClientCount, 1)
	if err != nil {
		return p, err
	}
	if ok && idx >= cnt {
		return p, fmt.Errorf("subset.clientIndex: %d is not below subset.clientCount %d", idx, cnt)
	}
	p.index, p.count = idx, cnt
	return p, nil
}

// intFromConfigOrEnv returns *v, or the integer in the environment variable
// env when v is nil; ok is false when neither is set. An environment value
// that is not an integer of at least lo (and at most 10000000) is an error
// naming the variable.
func intFromConfigOrEnv(v *int, env string, lo int) (n int, ok bool, err error) {
	if v != nil {
		return *v, true, nil
	}
	s := os.Getenv(env)
	if s == "" {
		return 0, false, nil
	}
	n, err = strconv.Atoi(s)
	if err != nil || n < lo || n > 10000000 {
		return 0, false, fmt.Errorf("subset: environment variable %s: want an integer in [%d, 10000000]", env, lo)
	}
	return n, true, nil
}

var processID = sync.OnceValue(func() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "lodestar-" + hex.EncodeToString(b[:])
})

// processClientID returns the random client id made once per process, used
// for rendezvous when neither the config nor LODESTAR_CLIENT_ID gives one.
func processClientID() string { return processID() }
