package balancer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

// refusing is an algorithm whose pickers find no endpoint they can use.
type refusing struct{}

func (refusing) Name() string           { return "refusing" }
func (refusing) Validate() error        { return nil }
func (refusing) Build(BuildInfo) Picker { return refusing{} }
func (refusing) Pick(PickInfo) (*Endpoint, error) {
	return nil, &NoEndpointsError{Service: "svc", Reason: "the picker refuses"}
}

// A picker that refuses while endpoints exist: a waiting pick ends with the
// picker's error when the wait runs out (not with a nil endpoint and no error).
func TestWaitEndsWithPickerError(t *testing.T) {
	e, err := NewEngine(Config{Algorithm: refusing{}, WaitForEndpoints: 10 * time.Millisecond}, Options{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update([]resolver.Endpoint{{Address: "127.0.0.1:1"}})
	ep, err := e.Pick(PickInfo{Ctx: context.Background()})
	if ep != nil || !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("Pick = %v, %v; want nil and the picker's NoEndpointsError", ep, err)
	}
}

// New endpoints start with Options.InitialConditions: not picked until cleared,
// and slow start ramps from when they clear.
func TestInitialConditions(t *testing.T) {
	now := time.Unix(1000, 0)
	e, err := NewEngine(Config{}, Options{InitialConditions: NotConnected, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	e.Update([]resolver.Endpoint{{Address: "127.0.0.1:1"}, {Address: "127.0.0.1:2"}})
	if _, err := e.Pick(PickInfo{}); !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("Pick before any endpoint is connected: err = %v, want ErrNoEndpoints", err)
	}
	now = now.Add(time.Minute)
	e.SetCondition("127.0.0.1:2", NotConnected, false)
	for range 5 {
		ep, err := e.Pick(PickInfo{})
		if err != nil || ep.Address() != "127.0.0.1:2" {
			t.Fatalf("Pick = %v, %v; want the connected endpoint", ep, err)
		}
		e.Done(ep, outcome.Outcome{})
	}
	if got := e.Endpoint("127.0.0.1:2").EligibleSince(); !got.Equal(now) {
		t.Fatalf("EligibleSince = %v, want the time its condition cleared (%v)", got, now)
	}
	// An endpoint that stays across updates keeps its cleared state.
	e.Update([]resolver.Endpoint{{Address: "127.0.0.1:2"}, {Address: "127.0.0.1:3"}})
	if got := len(e.Eligible()); got != 1 {
		t.Fatalf("%d eligible after an update, want 1 (the connected one)", got)
	}
}
