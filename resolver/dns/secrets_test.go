package dns

import (
	"net/url"
	"strings"
	"testing"

	"github.com/lodestar-go/lodestar/internal/feedtest"
	"github.com/lodestar-go/lodestar/resolver"
)

const testToken = feedtest.Token

func leaked(msg string) bool { return feedtest.Leaked(msg) }

// TestTargetErrorsNeverCarrySecrets runs every error path of the dns and srv
// target parsers, through ParseTarget and through resolver.Parse, with a token
// in the target wherever the path can be reached with one, and checks that no
// part of it appears in the error, while the error names what is wrong.
func TestTargetErrorsNeverCarrySecrets(t *testing.T) {
	const T = testToken
	for _, tc := range []struct {
		target, want string
		parseOnly    bool // resolver.Parse rejects it before the parser: ParseTarget only
	}{
		// url.Parse.
		{target: "dns:///a:80%zz?token=" + T, want: "invalid %-escape"},
		{target: "srv://u:%" + T + "@h/_x._tcp.a", want: "invalid %-escape"},
		{target: "dns://u:" + T + "@h:port/a:80?token=" + T, want: "invalid port"},
		{target: "srv://u:" + T + "^@h/_x._tcp.a", want: "invalid userinfo"},
		// The scheme.
		{target: "consul://u:" + T + "@h/web?token=" + T, want: "neither dns nor srv", parseOnly: true},
		{target: "srv:u:" + T + "@h?token=" + T, want: `no "//" after "srv:"`},
		{target: "dns:a:80?token=" + T, want: `no "//" after "dns:"`},
		// User information, fragment, authority, path.
		{target: "dns://u:" + T + "@10.0.0.1/a:80?token=" + T, want: "unexpected user information"},
		{target: "srv://" + T + "@10.0.0.1/_x._tcp.a", want: "unexpected user information"},
		{target: "dns:///a:80?token=" + T + "#x", want: "unexpected fragment"},
		{target: "srv:///_x._tcp.a#token=" + T, want: "unexpected fragment"},
		{target: "srv:///_x._tcp.a#x?token=" + T, want: "unexpected fragment"},
		{target: "dns://10.0.0.1:99999/a:80?token=" + T, want: "not in 1-65535"},
		{target: "dns://:53/a:80?token=" + T, want: "empty host"},
		{target: "srv://[::1]x/_x._tcp.a?token=" + T, want: "invalid port"},
		{target: "srv:///?token=" + T, want: "no name"},
		{target: "dns:///a/b:80?token=" + T, want: "more than one segment"},
		// The query.
		{target: "dns:///a:80?a=1;token=" + T, want: `parameter "a": ';' is not a separator`},
		{target: "dns:///a:80?token=" + T + ";a=1", want: `parameter "token": ';' is not a separator`},
		{target: "srv:///_x._tcp.a?x;token=" + T, want: "parameter 1: ';' is not a separator"},
		{target: "dns:///a:80?to%zzken=" + T, want: "parameter 1: its name has an invalid %-escape"},
		{target: "dns:///a:80?token=" + T + "%zz", want: `parameter "token": its value has an invalid %-escape`},
		{target: "dns:///a:80?token=%" + T, want: `parameter "token": its value has an invalid %-escape`},
		{target: "dns:///a:80?token=" + T, want: `unknown parameter "token"`},
		{target: "srv:///_x._tcp.a?t%6Fken=" + T, want: `unknown parameter "token"`},
		{target: "srv:///_x._tcp.a?TOKEN=" + T, want: `unknown parameter "TOKEN"`},
		{target: "dns:///a:80?password=" + T, want: `unknown parameter "password"`},
		{target: "dns:///a:80?token=" + T + "&token=" + T, want: `"token" given 2 times`},
		// Reached only with a valid query of known parameters, so no token can
		// be there; checked for what they name.
		{target: "dns:///a:80?network=ip5", want: "network="},
		{target: "dns:///a:80?timeout=-1s", want: "timeout="},
		{target: "dns:///a:80?minInterval=2m", want: "MinInterval"},
		{target: "dns:///a", want: "want name:port"},
		{target: "dns:///a:0", want: "not in 1-65535"},
		{target: "srv:///a..b", want: "label"},
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
				t.Errorf("%s(%q): the error leaks the secret: %v", via, tc.target, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s(%q): error %q does not name %q", via, tc.target, err, tc.want)
			}
		}
	}
}

// secretTarget builds a target of scheme with testToken in a secret place
// (which says where: bit 0 a query parameter, bit 1 the user information)
// around the fuzzer's pieces, and reports false when the pieces could move the
// token out of its secret place or hold it themselves.
func secretTarget(scheme, user, host, path, before, after string, key, sep, which uint8) (string, bool) {
	keys := []string{"token", "TOKEN", "Token", "t%6Fken", "%74oken", "T%4FKEN", "%2574oken", "password", "secret", "api_token"}
	seps := []string{"&", ";", "?", "#"}
	for _, p := range []string{user, host, path, before, after} {
		if holdsToken(p) {
			return "", false
		}
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	if which&2 != 0 {
		if strings.ContainsAny(user, "/?#") || strings.ContainsAny(host, "/?#") {
			return "", false // the authority would end before the token
		}
		b.WriteString(user + ":" + testToken + "@")
	}
	b.WriteString(host + "/" + path + "?" + before)
	if which&1 != 0 || which&2 == 0 {
		b.WriteString(seps[int(sep)%len(seps)] + keys[int(key)%len(keys)] + "=" + testToken)
	}
	b.WriteString("&" + after)
	return b.String(), true
}

// holdsToken reports whether s holds the token, as written or percent-decoded.
func holdsToken(s string) bool {
	for range 3 {
		if strings.Contains(strings.ToLower(s), strings.ToLower(testToken)) {
			return true
		}
		d, err := url.PathUnescape(s)
		if err != nil {
			return false // the parsers reject it before decoding it
		}
		s = d
	}
	return false
}

func fuzzSecrets(f *testing.F, scheme, path string) {
	f.Add("", "", path, "", "", uint8(0), uint8(0), uint8(1))
	f.Add("u", "", path, "network=ip4", "x", uint8(3), uint8(1), uint8(3))
	f.Add("u", "127.0.0.1:53", path, "a=%zz", "", uint8(6), uint8(2), uint8(2))
	f.Add("", "", path+"%zz", "", "#f", uint8(1), uint8(3), uint8(1))
	f.Add("u%", "h:port", "", ";", "", uint8(4), uint8(0), uint8(2))
	f.Add("", "[::1]", path, "timeout=1s", "minInterval=%", uint8(2), uint8(0), uint8(1))
	f.Fuzz(func(t *testing.T, user, host, path, before, after string, key, sep, which uint8) {
		target, ok := secretTarget(scheme, user, host, path, before, after, key, sep, which)
		if !ok {
			return
		}
		if _, err := ParseTarget(target); err != nil && strings.Contains(err.Error(), testToken) {
			t.Fatalf("ParseTarget(%q): the error holds the token: %v", target, err)
		}
		if _, err := resolver.Parse(target); err != nil && strings.Contains(err.Error(), testToken) {
			t.Fatalf("resolver.Parse(%q): the error holds the token: %v", target, err)
		}
	})
}

// FuzzDNSTargetSecrets: whatever surrounds it, a token in a secret place of a
// dns target never appears in an error.
func FuzzDNSTargetSecrets(f *testing.F) { fuzzSecrets(f, SchemeDNS, "api.internal:8080") }

// FuzzSRVTargetSecrets: the same for srv targets.
func FuzzSRVTargetSecrets(f *testing.F) { fuzzSecrets(f, SchemeSRV, "_http._tcp.api.internal") }
