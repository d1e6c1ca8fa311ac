package resolver

import (
	"strings"
	"testing"
)

// secretTarget builds a target of scheme with testToken in a secret place
// (which says where: bit 0 a query parameter, bit 1 the password) around the
// fuzzer's pieces, and reports false when the pieces could move the token out
// of its secret place or hold it themselves.
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
		// The token is the password only while the authority ends after it.
		if strings.ContainsAny(user, "/?#") || strings.ContainsAny(host, "/?#") {
			return "", false
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
		s = lenientUnescape(s)
	}
	return false
}

// FuzzStaticTargetSecrets: whatever surrounds it, a token in a secret place of
// a static target never appears in Parse's error, nor in Redact's result.
func FuzzStaticTargetSecrets(f *testing.F) {
	f.Add("", "", "10.0.0.1:80", "", "", uint8(0), uint8(0), uint8(1))
	f.Add("u", "", "10.0.0.1:80", "weight=5", "x", uint8(3), uint8(1), uint8(3))
	f.Add("u", "h", "10.0.0.1:80", "a=%zz", "", uint8(6), uint8(2), uint8(2))
	f.Add("", "", "10.0.0.1:80%zz", "", "#f", uint8(1), uint8(3), uint8(1))
	f.Add("u%", "h:port", "", ";", "", uint8(4), uint8(0), uint8(2))
	f.Fuzz(func(t *testing.T, user, host, path, before, after string, key, sep, which uint8) {
		target, ok := secretTarget("static", user, host, path, before, after, key, sep, which)
		if !ok {
			return
		}
		if r := Redact(target); strings.Contains(r, testToken) {
			t.Fatalf("Redact(%q) = %q keeps the token", target, r)
		}
		if _, err := Parse(target); err != nil && strings.Contains(err.Error(), testToken) {
			t.Fatalf("Parse(%q): the error holds the token: %v", target, err)
		}
	})
}
