package consul

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/lodestar-go/lodestar/internal/feedtest"
	"github.com/lodestar-go/lodestar/resolver"
)

const testToken = feedtest.Token

func leaked(msg string) bool { return feedtest.Leaked(msg) }

// TestTargetErrorsNeverCarryTheToken runs every error path of the consul target
// parser, through ParseTarget and through resolver.Parse, with the token in the
// target wherever the path can be reached with one, and checks that no part of
// it appears in the error, while the error names what is wrong.
func TestTargetErrorsNeverCarryTheToken(t *testing.T) {
	const T = testToken
	for _, tc := range []struct {
		target, want string
		parseOnly    bool // resolver.Parse rejects it before the parser: ParseTarget only
	}{
		// url.Parse.
		{target: "consul:///web%zz?token=" + T, want: "invalid %-escape"},
		{target: "consul://u:%" + T + "@h/web", want: "invalid %-escape"},
		{target: "consul://u:" + T + "%zz@h/web", want: "invalid %-escape"},
		{target: "consul://u:" + T + "@h:port/web?token=" + T, want: "invalid port"},
		{target: "consul://u:" + T + "^@h/web", want: "invalid userinfo"},
		{target: "consul://u:" + T + "@h h/web?token=" + T, want: "invalid character"},
		// The scheme.
		{target: "dns://u:" + T + "@h/web?token=" + T, want: `scheme "dns" is not "consul"`, parseOnly: true},
		{target: "consul:u:" + T + "@h/web?token=" + T, want: `no "//" after "consul:"`},
		{target: "consul:web?token=" + T, want: `no "//" after "consul:"`},
		// User information, fragment, authority, path.
		{target: "consul://u:" + T + "@127.0.0.1:8500/web?token=" + T, want: "user information in the authority is not supported"},
		{target: "consul://" + T + "@127.0.0.1:8500/web", want: "user information in the authority is not supported"},
		{target: "consul:///web?token=" + T + "#x", want: "unexpected fragment"},
		{target: "consul:///web#token=" + T, want: "unexpected fragment"},
		{target: "consul:///web#x?token=" + T, want: "unexpected fragment"},
		{target: "consul://127.0.0.1:99999/web?token=" + T, want: "not in 1-65535"},
		{target: "consul://127.0.0.1:0/web?token=" + T, want: "not in 1-65535"},
		{target: "consul://:8500/web?token=" + T, want: "empty host"},
		{target: "consul://[::1]x/web?token=" + T, want: "invalid port"},
		{target: "consul:///?token=" + T, want: "no service name"},
		{target: "consul://127.0.0.1?token=" + T, want: "no service name"},
		{target: "consul:///web/x?token=" + T, want: "more than one segment"},
		// The query.
		{target: "consul:///web?a=1;token=" + T, want: `parameter "a": ';' is not a separator`},
		{target: "consul:///web?token=" + T + ";a=1", want: `parameter "token": ';' is not a separator`},
		{target: "consul:///web?x;token=" + T, want: "parameter 1: ';' is not a separator"},
		{target: "consul:///web?dc=a&to%zzken=" + T, want: "parameter 2: its name has an invalid %-escape"},
		{target: "consul:///web?token=" + T + "%zz", want: `parameter "token": its value has an invalid %-escape`},
		{target: "consul:///web?token=%" + T, want: `parameter "token": its value has an invalid %-escape`},
		{target: "consul:///web?t%6Fken=" + T + "%zz", want: `parameter "token": its value has an invalid %-escape`},
		{target: "consul:///web?token=" + T + "&token=" + T, want: `"token" given 2 times`},
		{target: "consul:///web?t%6Fken=" + T + "&token=" + T, want: `"token" given 2 times`},
		{target: "consul:///web?token=", want: "parameter token: empty value"},
		{target: "consul:///web?TOKEN=" + T, want: `unknown parameter "TOKEN"`},
		{target: "consul:///web?Token=" + T, want: `unknown parameter "Token"`},
		{target: "consul:///web?acl_token=" + T, want: `unknown parameter "acl_token"`},
		{target: "consul:///web?T%6Fken=" + T, want: `unknown parameter "Token"`},
		// A bad parameter next to a good token.
		{target: "consul:///web?token=" + T + "&stale=maybe", want: "stale="},
		{target: "consul:///web?token=" + T + "&wait=11m", want: "WaitTime"},
		{target: "consul:///web?t%6Fken=" + T + "&wait=-1s", want: "wait="},
		{target: "consul:///web?token=" + T + "&tag=", want: `"tag" is empty`},
		{target: "consul:///web?token=" + T + "&dc=", want: "dc="},
		{target: "consul:///web?token=" + T + "&colour=blue", want: `unknown parameter "colour"`},
		{target: "consul:///web?token=" + T + "&dc=a&dc=b", want: `"dc" given 2 times`},
	} {
		for _, via := range []string{"ParseTarget", "resolver.Parse"} {
			var err error
			if via == "ParseTarget" {
				_, err = ParseTarget(tc.target)
			} else if !tc.parseOnly {
				_, err = resolver.Parse(tc.target)
			} else {
				continue
			}
			if err == nil {
				t.Errorf("%s(%q): no error", via, tc.target)
				continue
			}
			if leaked(err.Error()) {
				t.Errorf("%s(%q): the error leaks the token: %v", via, tc.target, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s(%q): error %q does not name %q", via, tc.target, err, tc.want)
			}
		}
	}
	// The token is still taken, under each spelling of its name.
	for _, target := range []string{"consul:///web?token=" + T, "consul:///web?t%6Fken=" + T, "consul:///web?%74oken=" + T} {
		o, err := ParseTarget(target)
		if err != nil || o.Token != T {
			t.Errorf("ParseTarget(%q): token %q, %v", resolver.Redact(target), o.Token, err)
		}
	}
}

// secretTarget builds a target with testToken in a secret place (which says
// where: bit 0 a query parameter, bit 1 the user information) around the
// fuzzer's pieces, and reports false when the pieces could move the token out
// of its secret place or hold it themselves.
func secretTarget(user, host, path, before, after string, key, sep, which uint8) (target, keyName string, ok bool) {
	keys := []string{"token", "TOKEN", "Token", "t%6Fken", "%74oken", "T%4FKEN", "%2574oken", "password", "secret", "api_token"}
	seps := []string{"&", ";", "?", "#"}
	for _, p := range []string{user, host, path, before, after} {
		if holdsToken(p) {
			return "", "", false
		}
	}
	var b strings.Builder
	b.WriteString("consul://")
	if which&2 != 0 {
		if strings.ContainsAny(user, "/?#") || strings.ContainsAny(host, "/?#") {
			return "", "", false // the authority would end before the token
		}
		b.WriteString(user + ":" + testToken + "@")
	}
	b.WriteString(host + "/" + path + "?" + before)
	if which&1 != 0 || which&2 == 0 {
		keyName = keys[int(key)%len(keys)]
		b.WriteString(seps[int(sep)%len(seps)] + keyName + "=" + testToken)
	}
	b.WriteString("&" + after)
	return b.String(), keyName, true
}

// holdsToken reports whether s holds the token, as written or percent-decoded.
func holdsToken(s string) bool {
	for range 3 {
		if strings.Contains(strings.ToLower(s), strings.ToLower(testToken)) {
			return true
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return false // the parser rejects it before decoding it
		}
		s = d
	}
	return false
}

// FuzzConsulTargetSecrets: whatever surrounds it, the token in a secret place
// of a consul target never appears in an error, nor in the feed's String.
func FuzzConsulTargetSecrets(f *testing.F) {
	f.Add("", "", "web", "", "", uint8(0), uint8(0), uint8(1))
	f.Add("u", "127.0.0.1:8500", "web", "tag=a", "dc=b", uint8(3), uint8(0), uint8(1))
	f.Add("u", "h", "web", "a=%zz", "", uint8(6), uint8(2), uint8(2))
	f.Add("", "", "web%zz", "", "#f", uint8(1), uint8(3), uint8(1))
	f.Add("u%", "h:port", "", ";", "", uint8(4), uint8(1), uint8(3))
	f.Add("", "[::1]", "web", "wait=1s", "stale=maybe", uint8(0), uint8(0), uint8(1))
	f.Fuzz(func(t *testing.T, user, host, path, before, after string, key, sep, which uint8) {
		target, _, ok := secretTarget(user, host, path, before, after, key, sep, which)
		if !ok {
			return
		}
		if _, err := ParseTarget(target); err != nil && strings.Contains(err.Error(), testToken) {
			t.Fatalf("ParseTarget(%q): the error holds the token: %v", target, err)
		}
		feed, err := resolver.Parse(target)
		if err != nil {
			if strings.Contains(err.Error(), testToken) {
				t.Fatalf("resolver.Parse(%q): the error holds the token: %v", target, err)
			}
			return
		}
		if s := feed.(*Feed).String(); strings.Contains(s, testToken) {
			t.Fatalf("the feed of %q describes itself with the token: %s", target, s)
		}
	})
}

// TestFeedErrorsNeverCarryTheToken: the errors a running feed reports never
// hold its token or a password, whatever quotes them: an unreachable agent
// (the HTTP client quotes the request URL), an address with user information
// (the dialer quotes it), an agent that echoes the token in its error body.
func TestFeedErrorsNeverCarryTheToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there any more: connection refused

	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "rejected token "+r.Header.Get("X-Consul-Token")+" for "+r.URL.String(), http.StatusInternalServerError)
	}))
	defer echo.Close()

	for _, tc := range []struct {
		name string
		feed func() (resolver.Feed, error)
		want string // in the errors
	}{
		{"unreachable, token in the target", func() (resolver.Feed, error) {
			return resolver.Parse("consul://" + closed + "/web?token=" + testToken + "&dc=dc1&tag=a")
		}, "connection refused"},
		{"unreachable, token and basic auth in the options", func() (resolver.Feed, error) {
			return New(Options{Service: "web", Address: closed, Token: testToken,
				Config: &api.Config{HttpAuth: &api.HttpBasicAuth{Username: "u", Password: testToken}}})
		}, "connection refused"},
		{"an agent that echoes the token", func() (resolver.Feed, error) {
			return New(Options{Service: "web", Address: echo.URL, Token: testToken})
		}, "500 (rejected token REDACTED for /v1/health/service/web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := tc.feed()
			if err != nil {
				t.Fatal(err)
			}
			cf := f.(*Feed)
			cf.opts.Backoff.Base, cf.opts.Backoff.Max = time.Millisecond, 5*time.Millisecond
			if strings.Contains(cf.String(), testToken) {
				t.Errorf("String() = %q holds the token", cf)
			}
			s := watch(t, f)
			errs := s.WaitErrors(t, 3, 10*time.Second)
			t.Logf("reported: %v", errs[0])
			for _, err := range errs {
				if strings.Contains(err.Error(), testToken) {
					t.Errorf("reported error holds the token: %v", err)
				}
			}
			if !errorsContain(errs, tc.want) {
				t.Errorf("errors %v, want one with %q", errs, tc.want)
			}
			if ups, _, _ := s.Snapshot(); len(ups) != 0 {
				t.Errorf("published %v", ups)
			}
		})
	}
}

// TestNewRejectsUserinfoInTheAddress: the api client would take user
// information for part of the host name (and quote it in every error), so New
// rejects it, without quoting it.
func TestNewRejectsUserinfoInTheAddress(t *testing.T) {
	for _, addr := range []string{
		"http://user:" + testToken + "@127.0.0.1:8500",
		"https://user:" + testToken + "%21@consul.internal:8501/",
		testToken + "@127.0.0.1:8500",
		"user:" + testToken + "@127.0.0.1:8500",
	} {
		for _, o := range []Options{
			{Service: "web", Address: addr},
			{Service: "web", Config: &api.Config{Address: addr}},
		} {
			_, err := New(o)
			if err == nil || !strings.Contains(err.Error(), "user information is not supported") {
				t.Errorf("New with agent address %q: %v, want an error about user information", resolver.Redact(addr), err)
			}
			if err != nil && leaked(err.Error()) {
				t.Errorf("New with agent address %q: the error leaks the password: %v", resolver.Redact(addr), err)
			}
		}
	}
	for _, addr := range []string{"127.0.0.1:8500", "https://consul.internal:8501", "unix:///run/consul@1/http.sock"} {
		if _, err := New(Options{Service: "web", Address: addr}); err != nil {
			t.Errorf("New with agent address %q: %v", addr, err)
		}
	}
}

// TestScrub: scrub leaves an error without secrets as it is, and otherwise
// returns the same text without them and without the chain that holds them.
func TestScrub(t *testing.T) {
	base := fmt.Errorf("wrapped: %w", http.ErrServerClosed)
	if got := scrub(base, []string{"", testToken}); got != base {
		t.Errorf("scrub changed an error without secrets: %v", got)
	}
	err := fmt.Errorf("token %s refused: %w", testToken, http.ErrServerClosed)
	got := scrub(err, []string{"", "other", testToken})
	if got.Error() != "token REDACTED refused: "+http.ErrServerClosed.Error() {
		t.Errorf("scrub = %q", got)
	}
	for e := got; e != nil; e = unwrap(e) {
		if strings.Contains(e.Error(), testToken) {
			t.Errorf("the scrubbed error's chain holds the token: %v", e)
		}
	}
}

func unwrap(err error) error {
	u, ok := err.(interface{ Unwrap() error })
	if !ok {
		return nil
	}
	return u.Unwrap()
}
