package retry

import (
	"math"
	"strings"
	"time"
)

// Idempotent reports whether an HTTP request may be sent twice without harm,
// by net/http's own rule (http.Transport replays such requests on a dead
// keep-alive connection): its method is GET (also the empty method), HEAD,
// OPTIONS, PUT, DELETE or TRACE, or its header has an "Idempotency-Key" or
// "X-Idempotency-Key" entry (any value, even none: the caller's mark). header
// is an http.Header, which is assignable to it; nil means no header. Methods
// are case-sensitive, as in HTTP. A caller can also mark a request idempotent
// through the front door's context option; that is the door's business.
func Idempotent(method string, header map[string][]string) bool {
	switch method {
	case "", "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE":
		return true
	}
	if header == nil {
		return false
	}
	if _, ok := header["Idempotency-Key"]; ok {
		return true
	}
	_, ok := header["X-Idempotency-Key"]
	return ok
}

// The HTTP-date formats a recipient must accept (RFC 9110, 5.6.7), as
// net/http's ParseTime reads them: IMF-fixdate, then the obsolete RFC 850
// and asctime forms.
var httpDateLayouts = [...]string{
	"Mon, 02 Jan 2006 15:04:05 GMT",
	time.RFC850,
	time.ANSIC,
}

// ParseRetryAfter reads an HTTP Retry-After value (RFC 9110, 10.2.3): either
// delay-seconds, a non-negative decimal integer, or an HTTP-date, in which
// case the delay is the date less now (0 for a date in the past). It reports
// false for anything else (a negative or fractional number, a date in another
// format, an empty value); surrounding spaces and tabs are ignored. A delay
// too long for a time.Duration is returned as the longest one. The caller
// caps it: Policy.Delay does.
func ParseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.Trim(v, " \t")
	if v == "" {
		return 0, false
	}
	if secs, ok := parseDigits(v); ok {
		if secs > uint64(math.MaxInt64/time.Second) {
			return math.MaxInt64, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if v[0] >= '0' && v[0] <= '9' || v[0] == '-' || v[0] == '+' {
		return 0, false // a number, but not delay-seconds
	}
	for _, layout := range httpDateLayouts {
		if t, err := time.Parse(layout, v); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	return 0, false
}

// ParseRetryPushback reads gRPC's grpc-retry-pushback-ms trailer (gRFC A6):
// a non-negative decimal integer of milliseconds, after which the server
// agrees to a retry. Per A6, a negative or malformed value means the server
// asks for no retry: retry is then false. The caller caps the delay:
// Policy.Delay does. A value too long for a time.Duration is returned as the
// longest one.
func ParseRetryPushback(v string) (delay time.Duration, retry bool) {
	ms, ok := parseDigits(v)
	if !ok {
		return 0, false
	}
	if ms > uint64(math.MaxInt64/time.Millisecond) {
		return math.MaxInt64, true
	}
	return time.Duration(ms) * time.Millisecond, true
}

// parseDigits parses a non-empty run of ASCII digits, saturating at
// math.MaxUint64 rather than failing on overflow.
func parseDigits(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (math.MaxUint64-9)/10 {
			n = math.MaxUint64
			continue
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}
