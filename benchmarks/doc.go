// Package benchmarks holds side-by-side benchmarks of lodestar against its
// peers (grpc-go's own load-balancing policies, plain net/http) and the
// scenario harness. It has no API; run it with
//
//	go test -run '^$' -bench . ./benchmarks/
package benchmarks
