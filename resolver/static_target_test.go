package resolver

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

// testToken stands for an ACL token or a password in the secret tests. Every
// 3-character piece of it is unusual enough that finding one in an error
// means the secret, or part of it, leaked.
const testToken = "Zq9SeCrEt7Xw"

// leaked reports whether msg holds testToken or any 3-character piece of it.
func leaked(msg string) bool {
	for i := 0; i+3 <= len(testToken); i++ {
		if strings.Contains(msg, testToken[i:i+3]) {
			return true
		}
	}
	return false
}

func TestRedact(t *testing.T) {
	const T = testToken
	for _, tc := range []struct{ in, want string }{
		{"consul://agent/web?tag=a&token=" + T, "consul://agent/web?tag=a&token=REDACTED"},
		{"consul:///web?TOKEN=" + T + "&dc=x", "consul:///web?TOKEN=REDACTED&dc=x"},
		{"consul:///web?ToKeN=" + T, "consul:///web?ToKeN=REDACTED"},
		{"consul:///web?t%6Fken=" + T, "consul:///web?t%6Fken=REDACTED"},
		{"consul:///web?%74%6F%6B%65%6E=" + T, "consul:///web?%74%6F%6B%65%6E=REDACTED"},
		{"consul:///web?T%4FKEN=" + T, "consul:///web?T%4FKEN=REDACTED"},
		{"consul:///web?%2574oken=" + T, "consul:///web?%2574oken=REDACTED"}, // encoded twice
		{"x:///a?api_token=" + T + "&client_secret=" + T + "&Password=" + T + "&passwd=" + T,
			"x:///a?api_token=REDACTED&client_secret=REDACTED&Password=REDACTED&passwd=REDACTED"},
		// What url.Parse or url.ParseQuery reject is redacted all the same.
		{"consul:///web?a=1;token=" + T, "consul:///web?a=1;token=REDACTED"},
		{"consul:///web?token=" + T + ";a=1", "consul:///web?token=REDACTED;a=1"},
		{"consul:///web?token=" + T + "%zz", "consul:///web?token=REDACTED"},
		{"consul:///web%zz?token=" + T, "consul:///web%zz?token=REDACTED"},
		{"consul:///web?dc=1?token=" + T, "consul:///web?dc=1?token=REDACTED"},
		{"consul:///web?to%zzken=" + T + "&dc=%zz", "consul:///web?to%zzken=REDACTED&dc=%zz"}, // a name that cannot be read
		{"consul:///web?a%=" + T, "consul:///web?a%=REDACTED"},
		{"consul:///web?token=" + T + "&token=" + T, "consul:///web?token=REDACTED&token=REDACTED"},
		{"consul:///web#token=" + T, "consul:///web#token=REDACTED"},
		{"consul:///web#frag?token=" + T, "consul:///web#frag?token=REDACTED"},
		{"consul:///web?token=" + T + "#x&secret=" + T, "consul:///web?token=REDACTED#x&secret=REDACTED"},
		// User information, user name and password: the name may be a token too.
		{"consul://user:" + T + "@agent:8500/web", "consul://REDACTED@agent:8500/web"},
		{"consul://:" + T + "@agent/web", "consul://REDACTED@agent/web"},
		{"consul://" + T + "@agent/web", "consul://REDACTED@agent/web"},
		{"consul://user:p@" + T + "@agent/web?x=1", "consul://REDACTED@agent/web?x=1"},
		{"consul://user:" + T + "%zz@agent/web", "consul://REDACTED@agent/web"},
		{"consul://u:" + T + "@a/w?token=" + T, "consul://REDACTED@a/w?token=REDACTED"},
		// Without "//", what looks like user information is redacted, to be safe.
		{"user:" + T + "@10.0.0.1:80", "user:REDACTED@10.0.0.1:80"},
		{"consul:user:" + T + "@agent/web", "consul:REDACTED@agent/web"},
		// Nothing secret: unchanged.
		{"consul://@agent/web", "consul://@agent/web"},
		{"consul://[::1]:8500/web?tag=a&dc=b", "consul://[::1]:8500/web?tag=a&dc=b"},
		{"static:///10.0.0.1:80,10.0.0.2:80", "static:///10.0.0.1:80,10.0.0.2:80"},
		{"static:///user:x@10.0.0.1:80", "static:///user:x@10.0.0.1:80"}, // a path, not user information
		{"consul:///web?token", "consul:///web?token"},
		{"consul:///web?tokens=", "consul:///web?tokens=REDACTED"},
		{"", ""},
		{"?", "?"},
		{"?=&;#", "?=&;#"},
	} {
		got := Redact(tc.in)
		if got != tc.want {
			t.Errorf("Redact(%q)\n got  %q\n want %q", tc.in, got, tc.want)
		}
		if again := Redact(got); again != got {
			t.Errorf("Redact is not idempotent on %q: %q", got, again)
		}
	}
}

// TestParseErrorsNeverCarrySecrets runs every error path of Parse and of the
// static target parser with a token (or a password) in the target, and checks
// that no part of it appears in the error, while the error names what is wrong.
func TestParseErrorsNeverCarrySecrets(t *testing.T) {
	const T = testToken
	for _, tc := range []struct{ target, want string }{
		// Parse itself.
		{"10.0.0.1:80?token=" + T, "no scheme"},
		{"user:" + T + "@10.0.0.1:80", "no scheme"},
		{"static:///10.0.0.1:80%zz?token=" + T, "invalid %-escape"},
		{"static://u:%" + T + "@h/10.0.0.1:80", "invalid %-escape"}, // url.Parse would quote "%Zq"
		{"static://u:" + T + "%zz@h/10.0.0.1:80", "invalid %-escape"},
		{"static://u:" + T + "@h:port/10.0.0.1:80?token=" + T, "invalid port"},
		{"static://u:" + T + "@h h/10.0.0.1:80?token=" + T, "invalid character"},
		{"static://u:" + T + "^@h/10.0.0.1:80", "invalid userinfo"},
		{"static://u:" + T + "@[::1/10.0.0.1:80", "missing ']'"},
		{"static:///10.0.0.1:80\x7f?token=" + T, "invalid control character"},
		{"nosuch://u:" + T + "@h/x?token=" + T, `unknown scheme "nosuch"`},
		// The static parser.
		{"static:u:" + T + "@h?token=" + T, `no "//" after "static:"`},
		{"u:" + T + "@h?token=" + T, "no scheme"},
		{"static://u:" + T + "@/10.0.0.1:80", "unexpected user information"},
		{"static://" + T + "@/10.0.0.1:80", "unexpected user information"},
		{"static://h/10.0.0.1:80?token=" + T, "unexpected authority"},
		{"static:///10.0.0.1:80?weight=5&token=" + T, "unexpected query"},
		{"static:///10.0.0.1:80?T%6Fken=" + T, "unexpected query"},
		{"static:///10.0.0.1:80?a=1;token=" + T, "unexpected query"},
		{"static:///10.0.0.1:80?token=" + T + "%zz", "unexpected query"},
		{"static:///10.0.0.1:80?token=" + T + "#x", "unexpected query"},
		{"static:///10.0.0.1:80#token=" + T, "unexpected fragment"},
		{"static:///10.0.0.1:80#x?token=" + T, "unexpected fragment"},
		// Reached only without a query or user information, so no secret can
		// be there; checked for what they name.
		{"static:///", "no addresses"},
		{"static:///10.0.0.1", "want host:port"},
		{"static:///10.0.0.1:80,10.0.0.1:80", "appears twice"},
	} {
		_, err := Parse(tc.target)
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.target)
			continue
		}
		if leaked(err.Error()) {
			t.Errorf("Parse(%q): the error leaks the secret: %v", tc.target, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q): error %q does not name %q", tc.target, err, tc.want)
		}
	}
}

// TestParseScrubsWhatABuilderQuotes: a feed package's builder that quotes its
// whole URL does not leak the token through Parse either.
func TestParseScrubsWhatABuilderQuotes(t *testing.T) {
	Register("leaky-test", func(u *url.URL) (Feed, error) {
		return nil, fmt.Errorf("cannot use %s (password %q)", u, func() string { p, _ := u.User.Password(); return p }())
	})
	for _, target := range []string{
		"leaky-test://u:" + testToken + "@h/x?token=" + testToken,
		"leaky-test://h/x?Token=" + testToken,
		"leaky-test://u:" + testToken + "@h/x",
	} {
		_, err := Parse(target)
		if err == nil || strings.Contains(err.Error(), testToken) {
			t.Errorf("Parse(%q) = %v, want an error without the token", target, err)
		}
		if err != nil && !strings.Contains(err.Error(), "cannot use") {
			t.Errorf("Parse(%q) = %v, want the builder's error, scrubbed", target, err)
		}
	}
}

// TestStaticTargetRejectsWhatItDoesNotUse: a static target takes addresses
// only; a query, a fragment or user information is an error naming it.
func TestStaticTargetRejectsWhatItDoesNotUse(t *testing.T) {
	for target, want := range map[string]string{
		"static:///10.0.0.1:80?weight=5":      "unexpected query: a static target takes no parameters",
		"static:///10.0.0.1:80?":              "unexpected query",
		"static:///10.0.0.1:80#primary":       "unexpected fragment",
		"static://admin@/10.0.0.1:80":         "unexpected user information",
		"static://admin:pw@/10.0.0.1:80":      "unexpected user information",
		"static:10.0.0.1:80":                  `no "//" after "static:"`,
		"static://10.0.0.1:80/":               "unexpected authority",
		"static:///10.0.0.1:80,10.0.0.2:80?x": "unexpected query",
	} {
		f, err := Parse(target)
		if err == nil {
			t.Errorf("Parse(%q) accepted it: %v", target, f.(*Static).Endpoints())
			continue
		}
		if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "lodestar: target ") {
			t.Errorf("Parse(%q) = %q, want an error naming %q", target, err, want)
		}
		if strings.Count(err.Error(), "lodestar:") != 1 {
			t.Errorf("Parse(%q) = %q, want 'lodestar:' once", target, err)
		}
	}
	// What it does take still works.
	f, err := Parse("static:///10.0.0.1:80,[::1]:443")
	if err != nil {
		t.Fatal(err)
	}
	if got := f.(*Static).Endpoints(); len(got) != 2 || got[1].Address != "[::1]:443" {
		t.Errorf("endpoints %v", got)
	}
}
