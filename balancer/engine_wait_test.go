package balancer

import (
	"context"
	"errors"
	"testing"
	"time"

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
