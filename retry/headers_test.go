package retry_test

import (
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/retry"
)

func TestIdempotent(t *testing.T) {
	for _, tc := range []struct {
		method string
		header http.Header
		want   bool
	}{
		{"GET", nil, true}, {"", nil, true}, {"HEAD", nil, true}, {"OPTIONS", nil, true},
		{"PUT", nil, true}, {"DELETE", nil, true}, {"TRACE", nil, true},
		{"POST", nil, false}, {"PATCH", nil, false}, {"CONNECT", nil, false}, {"get", nil, false},
		{"POST", http.Header{}, false},
		{"POST", http.Header{"Idempotency-Key": {"a1"}}, true},
		{"POST", http.Header{"Idempotency-Key": nil}, true}, // present without a value: net/http's rule
		{"PATCH", http.Header{"X-Idempotency-Key": {"b2"}}, true},
		{"POST", http.Header{"Idempotency-Keys": {"x"}}, false},
	} {
		if got := retry.Idempotent(tc.method, tc.header); got != tc.want {
			t.Errorf("Idempotent(%q, %v) = %v, want %v", tc.method, tc.header, got, tc.want)
		}
	}
	h := http.Header{}
	h.Set("idempotency-key", "k") // canonicalised by Set, as net/http stores it
	if !retry.Idempotent("POST", h) {
		t.Error("a key set through Header.Set not seen")
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"120", 2 * time.Minute, true},
		{" 5\t", 5 * time.Second, true},
		{"007", 7 * time.Second, true},
		{"99999999999999999999999", math.MaxInt64, true}, // saturates
		{"9223372037", math.MaxInt64, true},              // just past MaxInt64 nanoseconds
		{"9223372036", 9223372036 * time.Second, true},
		{"Sun, 01 Mar 2026 12:00:30 GMT", 30 * time.Second, true}, // IMF-fixdate
		{"Sunday, 01-Mar-26 12:01:00 GMT", time.Minute, true},     // RFC 850
		{"Sun Mar  1 12:00:10 2026", 10 * time.Second, true},      // asctime
		{"Sun, 01 Mar 2026 11:00:00 GMT", 0, true},                // in the past
		{"Thu, 01 Jan 1970 00:00:00 GMT", 0, true},
		{"", 0, false},
		{"  ", 0, false},
		{"-1", 0, false},
		{"+5", 0, false},
		{"1.5", 0, false},
		{"5s", 0, false},
		{"0x10", 0, false},
		{"soon", 0, false},
		{"Sun, 01 Mar 2026 12:00:30 UTC", 0, false}, // IMF-fixdate says GMT
		{"2026-03-01T12:00:30Z", 0, false},          // RFC 3339 is not an HTTP-date
		{"Sun, 32 Mar 2026 12:00:30 GMT", 0, false},
	} {
		got, ok := retry.ParseRetryAfter(tc.v, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tc.v, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseRetryPushback(t *testing.T) {
	for _, tc := range []struct {
		v     string
		want  time.Duration
		retry bool
	}{
		{"0", 0, true},
		{"250", 250 * time.Millisecond, true},
		{"99999999999999999999", math.MaxInt64, true},
		{"-1", 0, false}, // the server asks for no retry
		{"", 0, false},
		{"1.5", 0, false},
		{" 5", 0, false},
		{"abc", 0, false},
	} {
		got, retry := retry.ParseRetryPushback(tc.v)
		if got != tc.want || retry != tc.retry {
			t.Errorf("ParseRetryPushback(%q) = %v, %v; want %v, %v", tc.v, got, retry, tc.want, tc.retry)
		}
	}
}

// FuzzParseRetryAfter: any value parses to a non-negative delay or is
// refused, never a panic; digits alone always parse.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Sun, 01 Mar 2026 12:00:30 GMT", "Sunday, 01-Mar-26 12:01:00 GMT",
		"Sun Mar  1 12:00:10 2026", "-1", "", "1.5", "99999999999999999999999"} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := retry.ParseRetryAfter(v, now)
		if d < 0 || !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v, %v", v, d, ok)
		}
		p, retry := retry.ParseRetryPushback(v)
		if p < 0 || !retry && p != 0 {
			t.Fatalf("ParseRetryPushback(%q) = %v, %v", v, p, retry)
		}
	})
}
