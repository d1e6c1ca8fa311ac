package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
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
//
// Its errors never carry a secret: they quote the target as Redact returns it,
// and they never quote the values Redact hides (see Redact).
func Parse(target string) (Feed, error) {
	f, err := parse(target)
	if err != nil {
		err = fmt.Errorf("lodestar: target %q: %w", Redact(target), err)
		if msg := err.Error(); scrubSecrets(msg, target) != msg {
			// A builder quoted a secret: keep neither its text nor its chain.
			return nil, errors.New(scrubSecrets(msg, target))
		}
		return nil, err
	}
	return f, nil
}

func parse(target string) (Feed, error) {
	if !strings.Contains(target, "://") {
		if scheme, _, ok := strings.Cut(target, ":"); ok && slices.Contains(Schemes(), scheme) {
			return nil, fmt.Errorf(`no "//" after "%s:" (want %s://[authority]/...)`, scheme, scheme)
		}
		return nil, fmt.Errorf("no scheme (want scheme://[authority]/..., scheme one of %v)", Schemes())
	}
	u, err := ParseURL(target)
	if err != nil {
		return nil, err
	}
	buildersMu.RLock()
	b, ok := builders[u.Scheme]
	buildersMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("unknown scheme %q (registered: %v; import the feed's package)", u.Scheme, Schemes())
	}
	return b(u)
}

// ParseURL is url.Parse with errors that never quote the target: url.Parse
// repeats the whole input in its errors, and its escape errors quote the
// characters after a '%', which may belong to a password. Target parsers use
// it to turn a target into a URL.
func ParseURL(target string) (*url.URL, error) {
	u, err := url.Parse(target)
	if err == nil {
		return u, nil
	}
	var ee url.EscapeError
	if errors.As(err, &ee) {
		return nil, errors.New("invalid %-escape (want '%' and two hex digits; write '%' itself as %25)")
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Its own errors quote at most a character of the host or the port.
		return nil, ue.Err
	}
	return nil, err
}

// ParseQuery is url.ParseQuery with errors that name the parameter but never
// quote a value, which may be a secret (a token), nor the name of a parameter
// written with ';', whose value it cannot tell apart. Target parsers use it
// for their query parameters.
func ParseQuery(raw string) (url.Values, error) {
	q := url.Values{}
	for i, seg := range strings.Split(raw, "&") {
		if seg == "" {
			continue
		}
		k, v, _ := strings.Cut(seg, "=")
		if strings.Contains(k, ";") {
			return nil, fmt.Errorf("parameter %d: ';' is not a separator (use '&')", i+1)
		}
		key, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("parameter %d: its name has an invalid %%-escape (want '%%' and two hex digits)", i+1)
		}
		if strings.Contains(v, ";") {
			return nil, fmt.Errorf("parameter %q: ';' is not a separator (use '&')", key)
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("parameter %q: its value has an invalid %%-escape (want '%%' and two hex digits)", key)
		}
		q[key] = append(q[key], val)
	}
	return q, nil
}

// redacted is what Redact puts in place of a secret.
const redacted = "REDACTED"

// Redact returns target with its secrets replaced by "REDACTED", for logs and
// errors. The secrets are the user information ("scheme://user:password@host/...",
// name and password, as the name may be a token too) and the value of every
// query or fragment parameter whose name contains "token", "secret",
// "password" or "passwd" in any case once percent-decoded ("?token=...",
// "?T%6Fken=...", "?api_token=..."), or cannot be decoded. Redact never fails:
// it works on the text as written, so a target url.Parse rejects (a bad '%'
// escape, a ';' between parameters) is redacted too, its parameters split at
// every '&', ';', '?' and '#'.
func Redact(target string) string {
	end := strings.IndexAny(target, "?#")
	if end < 0 {
		end = len(target)
	}
	return redactUserinfo(target[:end]) + redactParams(target[end:])
}

// redactUserinfo hides the user information of the authority in s, which
// holds no '?' or '#'.
func redactUserinfo(s string) string {
	if i, j, ok := userinfo(s); ok {
		return s[:i] + redacted + s[j:]
	}
	return s
}

// userinfo finds the user information in s, which holds no '?' or '#': s[i:j].
// The authority starts after the first "//" (at the start of s, after a scheme,
// when there is none, to be safe) and ends at the next '/'; like url.Parse, its
// user information ends at its last '@'.
func userinfo(s string) (i, j int, ok bool) {
	start := 0
	if k := strings.Index(s, "//"); k >= 0 {
		start = k + 2
	} else if k := strings.IndexByte(s, ':'); k >= 0 && k < strings.IndexByte(s, '@') {
		start = k + 1 // "scheme:user:password@host" or "user:password@host"
	}
	auth := s[start:]
	if k := strings.IndexByte(auth, '/'); k >= 0 {
		auth = auth[:k]
	}
	at := strings.LastIndexByte(auth, '@')
	if at <= 0 {
		return 0, 0, false
	}
	return start, start + at, true
}

// redactParams hides the values of secret parameters in s, the query and
// fragment of a target with their leading '?' or '#'.
func redactParams(s string) string {
	var b strings.Builder
	for _, seg := range paramSegments(s) {
		if k, _, ok := strings.Cut(seg[1:], "="); ok && secretName(k) {
			seg = seg[:1] + k + "=" + redacted
		}
		b.WriteString(seg)
	}
	return b.String()
}

// paramSegments splits s, which starts with a separator, before every '?',
// '#', '&' and ';': each segment is a separator and one parameter.
func paramSegments(s string) []string {
	var segs []string
	for len(s) > 0 {
		i := strings.IndexAny(s[1:], "?#&;") + 1
		if i == 0 {
			i = len(s)
		}
		segs = append(segs, s[:i])
		s = s[i:]
	}
	return segs
}

// secretWords are the words that make a parameter's value a secret.
var secretWords = []string{"token", "secret", "password", "passwd"}

// secretName reports whether a raw parameter name, percent-decoded (again and
// again, so that "%2574oken" counts too), contains a secret word in any case.
// A name with a '%' that starts no valid escape cannot be read, so it counts
// too.
func secretName(raw string) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] == '%' && (i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2])) {
			return true
		}
	}
	k := raw
	for range 4 {
		d := lenientUnescape(k)
		if d == k {
			break
		}
		k = d
	}
	k = strings.ToLower(k)
	for _, w := range secretWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	return false
}

// lenientUnescape decodes '+' and the valid %XX escapes of s and keeps the
// rest as it is.
func lenientUnescape(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b = append(b, ' ')
		case c == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]):
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// scrubSecrets replaces in msg every secret of target (as written and
// percent-decoded) that Redact hides. Secrets shorter than 4 bytes are left:
// replacing every "ab" would garble the message and hide next to nothing.
func scrubSecrets(msg, target string) string {
	for _, sec := range secretsOf(target) {
		if len(sec) >= 4 {
			msg = strings.ReplaceAll(msg, sec, redacted)
		}
	}
	return msg
}

// secretsOf returns the values Redact hides in target, as written and decoded.
func secretsOf(target string) []string {
	var out []string
	add := func(v string) {
		out = append(out, v)
		if d := lenientUnescape(v); d != v {
			out = append(out, d)
		}
	}
	end := strings.IndexAny(target, "?#")
	if end < 0 {
		end = len(target)
	}
	if i, j, ok := userinfo(target[:end]); ok {
		add(target[i:j])
		if _, pw, ok := strings.Cut(target[i:j], ":"); ok {
			add(pw)
		}
	}
	for _, seg := range paramSegments(target[end:]) {
		if k, v, ok := strings.Cut(seg[1:], "="); ok && secretName(k) && v != "" {
			add(v)
		}
	}
	return out
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
