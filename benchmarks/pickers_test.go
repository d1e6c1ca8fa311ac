package benchmarks

// Picker benchmarks: every lodestar algorithm, picked and reported through
// balancer.Engine (the real hot path: snapshot load, pick, in-flight count,
// Done), and grpc-go v1.85.0's round_robin, least_request_experimental,
// weighted_round_robin and ring_hash_experimental pickers (Pick plus the Done
// callback when the picker returns one), at 10 to 10,000 endpoints, serial and
// parallel. Run them with
//
//	go test ./benchmarks/ -run '^$' -bench 'Pickers|Rebuild|MaglevBuild|RingBuild' -benchtime=200ms -count=1
//
// Names are Pickers/<algorithm>/<implementation>/n=<endpoints>/<serial|parallel>.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gbal "google.golang.org/grpc/balancer"
	_ "google.golang.org/grpc/balancer/leastrequest"
	_ "google.golang.org/grpc/balancer/ringhash"
	_ "google.golang.org/grpc/balancer/roundrobin"
	_ "google.golang.org/grpc/balancer/weightedroundrobin"
	"google.golang.org/grpc/connectivity"
	estats "google.golang.org/grpc/experimental/stats"
	"google.golang.org/grpc/metadata"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	lb "github.com/lodestar-go/lodestar/balancer"
	"github.com/lodestar-go/lodestar/balancer/outcome"
	"github.com/lodestar-go/lodestar/resolver"
)

var pickSizes = []int{10, 100, 1000, 10000}

// pickKeys are the affinity keys the hashing benchmarks cycle through.
var pickKeys = func() []string {
	k := make([]string, 1024)
	for i := range k {
		k[i] = fmt.Sprintf("user-%d", i*7919)
	}
	return k
}()

const pickKeyMask = 1023

func pickAddr(i int) string { return fmt.Sprintf("10.%d.%d.%d:8080", i>>16, (i>>8)&0xff, i&0xff) }

// lodestarCase is one lodestar algorithm as benchmarked.
type lodestarCase struct {
	name     string // the row it is compared in
	alg      func() lb.Algorithm
	weighted bool // endpoints get unequal weights (1-4)
	keyed    bool // picks carry an affinity key, hashed per pick
	// doneClock leaves Outcome.At zero, so that Done reads the clock itself.
	// Otherwise the outcome carries its time, as a front door that measured
	// the latency has it (refreshed every 1,024 picks here).
	doneClock bool
}

var lodestarCases = []lodestarCase{
	{"round_robin", func() lb.Algorithm { return &lb.RoundRobin{} }, false, false, false},
	{"weighted_round_robin", func() lb.Algorithm { return &lb.WeightedRoundRobin{} }, true, false, false},
	{"weighted_round_robin_equal", func() lb.Algorithm { return &lb.WeightedRoundRobin{} }, false, false, false},
	{"random", func() lb.Algorithm { return &lb.Random{} }, false, false, false},
	{"weighted_random", func() lb.Algorithm { return &lb.WeightedRandom{} }, true, false, false},
	{"least_request", func() lb.Algorithm { return &lb.LeastRequest{} }, false, false, false},
	{"least_request_weighted", func() lb.Algorithm { return &lb.LeastRequest{} }, true, false, false},
	{"peak_ewma", func() lb.Algorithm { return &lb.PeakEWMA{} }, false, false, false},
	{"peak_ewma_done_reads_clock", func() lb.Algorithm { return &lb.PeakEWMA{} }, false, false, true},
	{"ring_hash", func() lb.Algorithm { return &lb.RingHash{} }, false, true, false},
	{"maglev", func() lb.Algorithm { return &lb.Maglev{} }, false, true, false},
	{"bounded_load", func() lb.Algorithm { return &lb.BoundedLoad{} }, false, true, false},
}

// grpcCase is one grpc-go policy as benchmarked.
type grpcCase struct {
	name   string // the row it is compared in
	policy string
	config string
	keyed  bool // picks carry the request hash header in outgoing metadata
}

var grpcCases = []grpcCase{
	{"round_robin", "round_robin", "", false},
	{"least_request", "least_request_experimental", `{"choiceCount": 2}`, false},
	{"weighted_round_robin", "weighted_round_robin", `{}`, false},
	{"ring_hash", "ring_hash_experimental", `{"requestHashHeader": "x-affinity"}`, true},
}

func newPickEngine(b *testing.B, alg lb.Algorithm, n int, weighted bool) *lb.Engine {
	b.Helper()
	// A discarding logger: BenchmarkRebuild's ejections would otherwise log
	// a line each, and measure the log.
	eng, err := lb.NewEngine(lb.Config{Algorithm: alg}, lb.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	eps := make([]resolver.Endpoint, n)
	for i := range eps {
		eps[i] = resolver.Endpoint{Address: pickAddr(i)}
		if weighted {
			eps[i].Weight = uint32(i%4 + 1)
		}
	}
	eng.Update(eps)
	if len(eng.Eligible()) != n {
		b.Fatalf("engine has %d endpoints, want %d", len(eng.Eligible()), n)
	}
	return eng
}

func BenchmarkPickers(b *testing.B) {
	for _, c := range lodestarCases {
		for _, n := range pickSizes {
			b.Run(fmt.Sprintf("%s/lodestar/n=%d", c.name, n), func(b *testing.B) {
				eng := newPickEngine(b, c.alg(), n, c.weighted)
				b.Run("serial", func(b *testing.B) {
					b.ReportAllocs()
					done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
					for i := 0; i < b.N; i++ {
						if i&1023 == 0 && !c.doneClock {
							done.At = time.Now()
						}
						info := lb.PickInfo{}
						if c.keyed {
							info = lb.PickInfo{Hash: lb.HashKey(pickKeys[i&pickKeyMask]), HasHash: true}
						}
						ep, err := eng.Pick(info)
						if err != nil {
							b.Fatal(err)
						}
						eng.Done(ep, done)
					}
				})
				b.Run("parallel", func(b *testing.B) {
					b.ReportAllocs()
					b.RunParallel(func(pb *testing.PB) {
						i := rand.IntN(len(pickKeys))
						done := outcome.Outcome{Class: outcome.Success, Latency: time.Millisecond}
						for n := 0; pb.Next(); n++ {
							if n&1023 == 0 && !c.doneClock {
								done.At = time.Now()
							}
							info := lb.PickInfo{}
							if c.keyed {
								info = lb.PickInfo{Hash: lb.HashKey(pickKeys[i&pickKeyMask]), HasHash: true}
								i++
							}
							ep, err := eng.Pick(info)
							if err != nil {
								b.Error(err)
								return
							}
							eng.Done(ep, done)
						}
					})
				})
			})
		}
	}
	for _, c := range grpcCases {
		for _, n := range pickSizes {
			b.Run(fmt.Sprintf("%s/grpc/n=%d", c.name, n), func(b *testing.B) {
				ctxs := make([]context.Context, len(pickKeys))
				for i := range ctxs {
					ctxs[i] = context.Background()
					if c.keyed {
						ctxs[i] = metadata.AppendToOutgoingContext(ctxs[i], "x-affinity", pickKeys[i])
					}
				}
				p := grpcPicker(b, c, n, ctxs)
				pick := func(i int) {
					res, err := p.Pick(gbal.PickInfo{FullMethodName: "/bench.Service/Call", Ctx: ctxs[i&pickKeyMask]})
					if err != nil {
						b.Fatal(err)
					}
					if res.Done != nil {
						res.Done(gbal.DoneInfo{})
					}
				}
				b.Run("serial", func(b *testing.B) {
					b.ReportAllocs()
					for i := 0; i < b.N; i++ {
						pick(i)
					}
				})
				b.Run("parallel", func(b *testing.B) {
					b.ReportAllocs()
					b.RunParallel(func(pb *testing.PB) {
						i := rand.IntN(len(pickKeys))
						for pb.Next() {
							pick(i)
							i++
						}
					})
				})
			})
		}
	}
}

// BenchmarkPickerOnly measures lodestar pickers without the engine (no
// in-flight count, no Done): the like-for-like figure against grpc-go's round
// robin, whose picker has no Done callback.
func BenchmarkPickerOnly(b *testing.B) {
	for _, c := range lodestarCases {
		if c.name == "bounded_load" { // it counts in flight itself; its cost needs Done
			continue
		}
		for _, n := range []int{10, 10000} {
			b.Run(fmt.Sprintf("%s/n=%d", c.name, n), func(b *testing.B) {
				eng := newPickEngine(b, c.alg(), n, c.weighted)
				p := c.alg().Build(lb.BuildInfo{Endpoints: eng.Eligible(), Now: time.Now, Rand: rand.Uint64})
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					info := lb.PickInfo{}
					if c.keyed {
						info = lb.PickInfo{Hash: lb.HashKey(pickKeys[i&pickKeyMask]), HasHash: true}
					}
					if _, err := p.Pick(info); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRebuild (a rebuild after one condition change at 10,000
// endpoints) lives in package balancer, next to the pace it must step past:
// go test ./balancer/ -run '^$' -bench 'BenchmarkRebuild$'.

// BenchmarkRebuildOnUpdate measures a discovery update at 10,000 endpoints that
// removes or restores one endpoint (a different one each time): validation,
// membership, the sorted set and the new picker. A restored endpoint is a new
// member (the removed one drained), so ring_hash and bounded_load add its
// points to their second ring and now and then lag, so the engine builds a
// fresh ring off the updating goroutine; the max-ms metric is the slowest
// single update of the run, which shows any such
// cost, and ns/op the amortized one (on ring_hash and bounded_load it includes
// the engine's background refreshes, which share the machine's cores); p50-ms
// and p99-ms are the median and 99th percentile single update.
func BenchmarkRebuildOnUpdate(b *testing.B) {
	const n = 10000
	for _, c := range lodestarCases {
		if c.name == "weighted_round_robin_equal" || c.name == "least_request_weighted" || c.name == "peak_ewma_done_reads_clock" {
			continue
		}
		b.Run(fmt.Sprintf("%s/n=%d", c.name, n), func(b *testing.B) {
			eng := newPickEngine(b, c.alg(), n, c.weighted)
			full := make([]resolver.Endpoint, n)
			for i := range full {
				full[i] = resolver.Endpoint{Address: pickAddr(i)}
				if c.weighted {
					full[i].Weight = uint32(i%4 + 1)
				}
			}
			// Sorted by address, as the feeds deliver their answers.
			slices.SortFunc(full, func(a, b resolver.Endpoint) int { return strings.Compare(a.Address, b.Address) })
			short := make([]resolver.Endpoint, 0, n-1)
			took := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				if i&1 == 0 {
					k := (i / 2 * 7919) % n // a different endpoint each time
					short = append(append(short[:0], full[:k]...), full[k+1:]...)
					eng.Update(short)
				} else {
					eng.Update(full)
				}
				took = append(took, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
		})
	}
}

// BenchmarkMaglevBuild measures building the default 65,537-slot table.
func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			eps := newPickEngine(b, &lb.RoundRobin{}, n, false).Eligible()
			alg := &lb.Maglev{}
			info := lb.BuildInfo{Endpoints: eps, Now: time.Now, Rand: rand.Uint64}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				alg.Build(info)
			}
		})
	}
}

// BenchmarkRingBuild measures building the default ring (2,048 points per
// endpoint).
func BenchmarkRingBuild(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			eps := newPickEngine(b, &lb.RoundRobin{}, n, false).Eligible()
			alg := &lb.RingHash{}
			info := lb.BuildInfo{Endpoints: eps, Now: time.Now, Rand: rand.Uint64}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				alg.Build(info)
			}
		})
	}
}

// grpcPicker builds grpc-go's policy c over n endpoints on a fake ClientConn
// whose SubConns all become READY, and returns the picker it publishes. For
// ring hash, whose connections are lazy, it picks every benchmark key until
// each key's endpoint is ready.
func grpcPicker(b *testing.B, c grpcCase, n int, ctxs []context.Context) gbal.Picker {
	b.Helper()
	builder := gbal.Get(c.policy)
	if builder == nil {
		b.Fatalf("grpc policy %s is not registered", c.policy)
	}
	cc := &fakeCC{}
	bal := builder.Build(cc, gbal.BuildOptions{})
	b.Cleanup(bal.Close)
	var cfg serviceconfig.LoadBalancingConfig
	if parser, ok := builder.(gbal.ConfigParser); ok && c.config != "" {
		var err error
		if cfg, err = parser.ParseConfig(json.RawMessage(c.config)); err != nil {
			b.Fatal(err)
		}
	}
	eps := make([]gresolver.Endpoint, n)
	for i := range eps {
		eps[i] = gresolver.Endpoint{Addresses: []gresolver.Address{{Addr: pickAddr(i)}}}
	}
	if err := bal.UpdateClientConnState(gbal.ClientConnState{
		ResolverState:  gresolver.State{Endpoints: eps},
		BalancerConfig: cfg,
	}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	defer func() { b.Logf("%s over %d endpoints ready in %v", c.policy, n, time.Since(start)) }()
	cc.readyAll()
	for round := 0; ; round++ {
		p, state := cc.current()
		if p == nil {
			b.Fatalf("%s published no picker (state %v)", c.policy, state)
		}
		failed := false
		for _, ctx := range ctxs {
			_, err := p.Pick(gbal.PickInfo{FullMethodName: "/bench.Service/Call", Ctx: ctx})
			if errors.Is(err, gbal.ErrNoSubConnAvailable) {
				failed = true
			} else if err != nil {
				b.Fatalf("%s: pick: %v", c.policy, err)
			}
		}
		if !failed && state == connectivity.Ready {
			return p
		}
		if round > 100_000 {
			b.Fatalf("%s: not ready after %d rounds (state %v)", c.policy, round, state)
		}
		cc.readyAll()
		runtime.Gosched() // lets a policy's own goroutines (if any) create SubConns
	}
}

// fakeCC is the minimum of a grpc ClientConn a policy needs: it hands out
// fake SubConns and records the published picker.
type fakeCC struct {
	gbal.ClientConn // embedded for grpc's embedding guard; unimplemented methods panic

	mu      sync.Mutex
	pending []*fakeSC
	picker  gbal.Picker
	state   connectivity.State
}

func (cc *fakeCC) NewSubConn(addrs []gresolver.Address, opts gbal.NewSubConnOptions) (gbal.SubConn, error) {
	sc := &fakeSC{listener: opts.StateListener}
	cc.mu.Lock()
	cc.pending = append(cc.pending, sc)
	cc.mu.Unlock()
	return sc, nil
}

func (cc *fakeCC) RemoveSubConn(gbal.SubConn)                        {}
func (cc *fakeCC) UpdateAddresses(gbal.SubConn, []gresolver.Address) {}
func (cc *fakeCC) ResolveNow(gresolver.ResolveNowOptions)            {}
func (cc *fakeCC) Target() string                                    { return "bench" }
func (cc *fakeCC) MetricsRecorder() estats.MetricsRecorder           { return noMetrics{} }
func (cc *fakeCC) current() (gbal.Picker, connectivity.State) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.picker, cc.state
}
func (cc *fakeCC) UpdateState(s gbal.State) {
	cc.mu.Lock()
	cc.picker, cc.state = s.Picker, s.ConnectivityState
	cc.mu.Unlock()
}

// readyAll moves every SubConn the policy asked to connect to CONNECTING and
// then READY, as grpc-go's own test ClientConn does, outside the policy's calls.
func (cc *fakeCC) readyAll() {
	for {
		cc.mu.Lock()
		var ready, waiting []*fakeSC
		for _, sc := range cc.pending {
			if sc.connected() {
				ready = append(ready, sc)
			} else {
				waiting = append(waiting, sc)
			}
		}
		cc.pending = waiting
		cc.mu.Unlock()
		if len(ready) == 0 {
			return
		}
		for _, sc := range ready {
			sc.listener(gbal.SubConnState{ConnectivityState: connectivity.Connecting})
			sc.listener(gbal.SubConnState{ConnectivityState: connectivity.Ready})
			if h := sc.health(); h != nil {
				h(gbal.SubConnState{ConnectivityState: connectivity.Ready})
			}
		}
	}
}

type fakeSC struct {
	gbal.SubConn // embedded for grpc's embedding guard

	listener func(gbal.SubConnState)
	mu       sync.Mutex
	conn     bool
	healthL  func(gbal.SubConnState)
}

func (sc *fakeSC) Connect()        { sc.mu.Lock(); sc.conn = true; sc.mu.Unlock() }
func (sc *fakeSC) connected() bool { sc.mu.Lock(); defer sc.mu.Unlock(); return sc.conn }
func (sc *fakeSC) health() func(gbal.SubConnState) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.healthL
}
func (sc *fakeSC) UpdateAddresses([]gresolver.Address) {}
func (sc *fakeSC) Shutdown()                           {}
func (sc *fakeSC) RegisterHealthListener(f func(gbal.SubConnState)) {
	sc.mu.Lock()
	sc.healthL = f
	sc.mu.Unlock()
}
func (sc *fakeSC) GetOrBuildProducer(gbal.ProducerBuilder) (gbal.Producer, func()) {
	return nil, func() {}
}

// noMetrics discards the policies' metrics.
type noMetrics struct{ estats.MetricsRecorder }

func (noMetrics) RecordInt64Count(*estats.Int64CountHandle, int64, ...string)             {}
func (noMetrics) RecordFloat64Count(*estats.Float64CountHandle, float64, ...string)       {}
func (noMetrics) RecordInt64Histo(*estats.Int64HistoHandle, int64, ...string)             {}
func (noMetrics) RecordFloat64Histo(*estats.Float64HistoHandle, float64, ...string)       {}
func (noMetrics) RecordInt64Gauge(*estats.Int64GaugeHandle, int64, ...string)             {}
func (noMetrics) RecordInt64UpDownCount(*estats.Int64UpDownCountHandle, int64, ...string) {}
func (noMetrics) RegisterAsyncReporter(estats.AsyncMetricReporter, ...estats.AsyncMetric) func() {
	return func() {}
}

// BenchmarkStateMemory reports the heap an engine holds at 10,000 endpoints
// with each algorithm (endpoints, snapshot and picker state), measured as the
// live heap after a GC with the engine minus before it. One op builds one
// engine; run it with -benchtime=1x.
func BenchmarkStateMemory(b *testing.B) {
	const n = 10000
	for _, c := range lodestarCases {
		if c.name == "weighted_round_robin_equal" || c.name == "peak_ewma_done_reads_clock" {
			continue
		}
		b.Run(fmt.Sprintf("%s/n=%d", c.name, n), func(b *testing.B) {
			var ms runtime.MemStats
			var total uint64
			for range b.N {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				before := ms.HeapAlloc
				eng := newPickEngine(b, c.alg(), n, c.weighted)
				runtime.GC()
				runtime.ReadMemStats(&ms)
				total += ms.HeapAlloc - before
				runtime.KeepAlive(eng)
			}
			b.ReportMetric(float64(total)/float64(b.N)/(1<<20), "MiB")
		})
	}
}
