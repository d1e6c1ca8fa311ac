package outcome

import "testing"

func TestHTTPStatusClass(t *testing.T) {
	for code, want := range map[int]Class{
		200: Success, 204: Success, 301: Success, 400: ClientError, 404: ClientError,
		429: Overloaded, 500: ServerError, 501: ServerError, 502: GatewayError,
		503: GatewayError, 504: GatewayError, 505: ServerError,
	} {
		if got := HTTPStatusClass(code); got != want {
			t.Errorf("HTTPStatusClass(%d) = %v, want %v", code, got, want)
		}
	}
}

func TestClassNamesRoundTrip(t *testing.T) {
	for c := Success; c < numClasses; c++ {
		got, err := ParseClass(c.String())
		if err != nil || got != c {
			t.Errorf("ParseClass(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := ParseClass("fine"); err == nil {
		t.Error("ParseClass accepted an unknown name")
	}
	if s := Class(200).String(); s != "class(200)" {
		t.Errorf("unknown class prints %q", s)
	}
}

func TestCountedAndFailure(t *testing.T) {
	failures := map[Class]bool{Overloaded: true, ServerError: true, GatewayError: true, Timeout: true, LocalError: true, ConnectError: true}
	for c := Success; c < numClasses; c++ {
		if got := c.Failure(); got != failures[c] {
			t.Errorf("%v.Failure() = %v", c, got)
		}
		if got, want := c.Counted(), c != Canceled && c != NotSent; got != want {
			t.Errorf("%v.Counted() = %v", c, got)
		}
	}
}
