package benchmarks

import (
	"fmt"
	"log/slog"
	"testing"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/resolver"
)

// BenchmarkSubsetRebuild measures a rebuild at 10,000 endpoints with a subset
// of 20 (round robin), side by side with the same engine without subsetting:
//
//   - member: eject or readmit a subset member (the subset changes: the
//     next-ranked endpoint joins or leaves);
//   - outsider: eject or readmit an endpoint outside the subset (its
//     condition changes, the subset does not);
//   - update: a discovery update that removes or restores one endpoint (the
//     ranking is remade: each group's endpoints sorted by their cached keys).
//
// Run it with
//
//	go test ./benchmarks/ -run '^$' -bench 'SubsetRebuild' -benchmem -benchtime=200x -count=1
func BenchmarkSubsetRebuild(b *testing.B) {
	const n = 10000
	full := make([]resolver.Endpoint, n)
	for i := range full {
		full[i] = resolver.Endpoint{Address: pickAddr(i)}
	}
	for _, mode := range []string{"off", lb.SubsetRendezvous, lb.SubsetDeterministic} {
		newEngine := func(b *testing.B) *lb.Engine {
			cfg := lb.Config{}
			if mode != "off" {
				cfg.Subset = &lb.SubsetConfig{Size: 20, Mode: mode, ClientID: "bench", ClientIndex: new(7)}
			}
			eng, err := lb.NewEngine(cfg, lb.Options{Logger: slog.New(slog.DiscardHandler), MetricsOmitEndpoint: true})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { eng.Close() })
			eng.Update(full)
			return eng
		}
		b.Run(fmt.Sprintf("subset=%s/member/n=%d", mode, n), func(b *testing.B) {
			eng := newEngine(b)
			addr := eng.Eligible()[0].Address()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				eng.SetCondition(addr, lb.Ejected, i&1 == 0)
			}
		})
		b.Run(fmt.Sprintf("subset=%s/outsider/n=%d", mode, n), func(b *testing.B) {
			eng := newEngine(b)
			var addr string
			for _, ep := range eng.Endpoints() {
				if eng.InSubset(ep) == (mode == "off") {
					addr = ep.Address()
					break
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				eng.SetCondition(addr, lb.Ejected, i&1 == 0)
			}
		})
		b.Run(fmt.Sprintf("subset=%s/update/n=%d", mode, n), func(b *testing.B) {
			eng := newEngine(b)
			short := full[1:]
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if i&1 == 0 {
					eng.Update(short)
				} else {
					eng.Update(full)
				}
			}
		})
	}
}
