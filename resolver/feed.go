package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lodestar-go/lodestar/internal/backoff"
)

// A Sink receives what a Feed finds. A Feed calls its Sink from one goroutine at a
// time; a Sink must not block for long.
type Sink interface {
	// Update replaces the whole endpoint set. The Sink owns the slice afterwards.
	Update(endpoints []Endpoint)
	// ReportError says the feed failed to refresh. The last set given to Update
	// stays in force; the feed keeps retrying on its own.
	ReportError(err error)
}

// A Feed is a discovery source: a stream of full endpoint sets.
//
// Watch delivers the current set to s as soon as it knows it, then every changed
// set, until ctx is done; then it returns ctx's error promptly. A feed that fails
// reports the error to s, keeps the last good set in force (it sends nothing) and
// retries with backoff on its own. Watch returns early only when the feed cannot
// go on at all; Run restarts it then.
//
// A Feed may be watched by several Sinks at once, each through its own Watch call.
type Feed interface {
	Watch(ctx context.Context, s Sink) error
}

// Builder makes a Feed from a parsed target URL, such as "dns:///api.internal:8080".
// It must validate the target and return an error naming what is wrong.
type Builder func(target *url.URL) (Feed, error)

var (
	buildersMu    sync.RWMutex
	builders      = map[string]Builder{}
	registerHooks []func(scheme string)
)

// Register makes a feed scheme available to Parse (and so to the HTTP transport's
// targets and the gRPC resolver adapters). Registering a scheme again replaces it.
// Call it from an init function.
func Register(scheme string, b Builder) {
	buildersMu.Lock()
	builders[scheme] = b
	hooks := registerHooks
	buildersMu.Unlock()
	for _, h := range hooks {
		h(scheme)
	}
}

// OnRegister calls hook with every feed scheme registered so far and then with
// each scheme Register registers later, whatever the package initialisation
// order. The gRPC resolver adapters use it to register lodestar's schemes with
// grpc. Call it from an init function; hook runs on the registering goroutine.
func OnRegister(hook func(scheme string)) {
	buildersMu.Lock()
	registerHooks = append(registerHooks[:len(registerHooks):len(registerHooks)], hook)
	buildersMu.Unlock()
	for _, s := range Schemes() {
		hook(s)
	}
}

// Schemes returns the registered feed schemes, sorted.
func Schemes() []string {
	buildersMu.RLock()
	defer buildersMu.RUnlock()
	s := make([]string, 0, len(builders))
	for k := range builders {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Parse builds the Feed a target names, for example "static:///10.0.0.1:80,10.0.0.2:80".
// The scheme selects the registered Builder; a feed package must be imported for
// its scheme to be known (the static feed is always registered).
func Parse(target string) (Feed, error) {
	f, err := parse(target)
	if err != nil {
		return nil, fmt.Errorf("lodestar: target %q: %w", Redact(target), err)
	}
	return f, nil
}

func parse(target string) (Feed, error) {
	if !strings.Contains(target, "://") {
		return nil, fmt.Errorf("no scheme (want scheme://[authority]/..., scheme one of %v)", Schemes())
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, errors.Unwrap(err) // url.Error repeats the whole target
	}
	buildersMu.RLock()
	b, ok := builders[u.Scheme]
	buildersMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown scheme %q (registered: %v; import the feed's package)", u.Scheme, Schemes())
	}
	return b(u)
}

// secretParams are target query parameters whose values Redact hides.
var secretParams = []string{"token", "password", "secret"}

// Redact returns target with the values of secret query parameters (token,
// password, secret) replaced, for logs and errors.
func Redact(target string) string {
	i := strings.IndexByte(target, '?')
	if i < 0 {
		return target
	}
	params := strings.Split(target[i+1:], "&")
	for j, p := range params {
		k, _, _ := strings.Cut(p, "=")
		for _, s := range secretParams {
			if strings.EqualFold(k, s) {
				params[j] = k + "=REDACTED"
			}
		}
	}
	return target[:i+1] + strings.Join(params, "&")
}

// RunOptions tune Run. The zero value is ready to use.
type RunOptions struct {
	// Backoff spaces out restarts of a Watch that returned early.
	// Zero fields take backoff.Default's values.
	Backoff backoff.Config
}

// Run watches f into s until ctx is done, restarting Watch with backoff and jitter
// whenever it returns early (each early return is reported to s). It returns when
// ctx is done.
func Run(ctx context.Context, f Feed, s Sink, opts RunOptions) {
	for attempt := 0; ; attempt++ {
		err := f.Watch(ctx, s)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("feed stopped without an error")
		}
		s.ReportError(fmt.Errorf("lodestar: feed stopped, restarting: %w", err))
		t := time.NewTimer(opts.Backoff.Delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
