package lodestar

import (
	"context"
	"net/http"

	"github.com/lodestar-go/lodestar/balancer"
)

// affinity extracts a request's affinity key for the hashing algorithms.
type affinity struct{}

func newAffinity(balancer.Config) affinity { return affinity{} }

// pickInfo returns the pick information for req.
func (a affinity) pickInfo(ctx context.Context, req *http.Request) balancer.PickInfo {
	return balancer.PickInfo{Ctx: ctx}
}
