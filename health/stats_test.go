package health

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lodestar-go/lodestar/balancer/outcome"
)

func intp(v int) *int { return &v }

// recordN records n outcomes of class c and returns the reasons of those
// that fired, in order.
func recordN(s *Stats, d *Detector, c outcome.Class, n int) []Reason {
	var fired []Reason
	for range n {
		if eject, why := s.Record(d, c, time.Millisecond); eject {
			fired = append(fired, why)
		}
	}
	return fired
}

func TestRecordConsecutiveFailuresFireAtThresholdOnce(t *testing.T) {
	d := NewDetector(OutlierDetection{}) // consecutiveFailures 5 by default
	s := NewStats()
	now := time.Unix(1000, 0)
	if fired := recordN(s, d, outcome.ServerError, 4); len(fired) != 0 {
		t.Fatalf("fired %v before the threshold", fired)
	}
	eject, why := s.Record(d, outcome.Timeout, 0)
	if !eject || why != ReasonConsecutiveFailures {
		t.Fatalf("5th failure: Record = %v, %q; want true, %q", eject, why, ReasonConsecutiveFailures)
	}
	if _, ok := d.Ejected(s, why, now); !ok {
		t.Fatal("Ejected: ok = false for an endpoint not ejected")
	}
	// Ejected: failures go on (in-flight requests, panic mode) but nothing fires.
	if fired := recordN(s, d, outcome.ConnectError, 50); len(fired) != 0 {
		t.Fatalf("fired %v while ejected", fired)
	}
	// Un-ejected: a fresh run of 5 is needed.
	if _, ok := d.Uneject(s); !ok {
		t.Fatal("Uneject: ok = false for an ejected endpoint")
	}
	if fired := recordN(s, d, outcome.ServerError, 4); len(fired) != 0 {
		t.Fatalf("fired %v 4 failures after un-ejection", fired)
	}
	if fired := recordN(s, d, outcome.ServerError, 1); len(fired) != 1 {
		t.Fatalf("5th failure after un-ejection fired %v, want once", fired)
	}
}

// TestRecordRefusedEjectionFiresAgain: when the engine does not eject (Admit
// said no), the run starts again, and the next threshold failures fire again.
func TestRecordRefusedEjectionFiresAgain(t *testing.T) {
	d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(3)})
	s := NewStats()
	if fired := recordN(s, d, outcome.ServerError, 9); len(fired) != 3 {
		t.Fatalf("9 failures, threshold 3, not ejected: fired %d times, want 3", len(fired))
	}
}

func TestRecordSuccessResets(t *testing.T) {
	d := NewDetector(OutlierDetection{})
	for _, ok := range []outcome.Class{outcome.Success, outcome.ClientError} {
		s := NewStats()
		recordN(s, d, outcome.ServerError, 4)
		s.Record(d, ok, time.Millisecond)
		if fired := recordN(s, d, outcome.ServerError, 4); len(fired) != 0 {
			t.Fatalf("%v did not end the run: fired %v", ok, fired)
		}
		if fired := recordN(s, d, outcome.ServerError, 1); len(fired) != 1 {
			t.Fatalf("after %v, the 5th failure fired %v, want once", ok, fired)
		}
	}
}

func TestRecordIgnoresNotCounted(t *testing.T) {
	// A periodic detector (failure percentage on), so that Counts counts.
	d := NewDetector(OutlierDetection{FailurePercentage: &FailurePercentage{}})
	s := NewStats()
	recordN(s, d, outcome.ServerError, 4)
	for _, c := range []outcome.Class{outcome.NotSent, outcome.Canceled} {
		if fired := recordN(s, d, c, 10); len(fired) != 0 {
			t.Fatalf("%v fired %v", c, fired)
		}
	}
	if succ, fail := s.Counts(); succ != 0 || fail != 4 {
		t.Fatalf("Counts = %d, %d; want 0, 4 (NotSent and Canceled not counted)", succ, fail)
	}
	if fired := recordN(s, d, outcome.ServerError, 1); len(fired) != 1 {
		t.Fatalf("the run survived NotSent and Canceled, so the 5th failure should fire; fired %v", fired)
	}
}

func TestRecordGatewayFailures(t *testing.T) {
	d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(0), ConsecutiveGatewayFailures: intp(3)})
	s := NewStats()
	recordN(s, d, outcome.GatewayError, 2)
	s.Record(d, outcome.ServerError, 0) // an answer of another class ends the run
	if fired := recordN(s, d, outcome.GatewayError, 2); len(fired) != 0 {
		t.Fatalf("fired %v: a 500 should have ended the run", fired)
	}
	s.Record(d, outcome.ConnectError, 0) // no answer: the run goes on
	if fired := recordN(s, d, outcome.GatewayError, 1); len(fired) != 1 || fired[0] != ReasonConsecutiveGatewayFailures {
		t.Fatalf("3rd gateway error fired %v, want [%s]", fired, ReasonConsecutiveGatewayFailures)
	}
	// Only gateway errors count.
	if fired := recordN(s, d, outcome.ServerError, 10); len(fired) != 0 {
		t.Fatalf("server errors fired %v with only the gateway detector on", fired)
	}
}

func TestRecordLocalOriginFailures(t *testing.T) {
	d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(0), ConsecutiveLocalOriginFailures: intp(3)})
	s := NewStats()
	s.Record(d, outcome.ConnectError, 0)
	s.Record(d, outcome.Timeout, 0)
	s.Record(d, outcome.GatewayError, 0) // an answer came: the run ends
	s.Record(d, outcome.LocalError, 0)
	s.Record(d, outcome.ConnectError, 0)
	eject, why := s.Record(d, outcome.Timeout, 0)
	if !eject || why != ReasonConsecutiveLocalOriginFailures {
		t.Fatalf("3rd local-origin failure: Record = %v, %q; want true, %q", eject, why, ReasonConsecutiveLocalOriginFailures)
	}
}

func TestRecordReasonPrecedence(t *testing.T) {
	d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(3), ConsecutiveGatewayFailures: intp(3), ConsecutiveLocalOriginFailures: intp(3)})
	s := NewStats()
	if fired := recordN(s, d, outcome.GatewayError, 3); len(fired) != 1 || fired[0] != ReasonConsecutiveGatewayFailures {
		t.Fatalf("3 gateway errors fired %v, want [%s] once", fired, ReasonConsecutiveGatewayFailures)
	}
	if fired := recordN(s, d, outcome.ConnectError, 3); len(fired) != 1 || fired[0] != ReasonConsecutiveLocalOriginFailures {
		t.Fatalf("3 connect errors fired %v, want [%s] once", fired, ReasonConsecutiveLocalOriginFailures)
	}
	if fired := recordN(s, d, outcome.Overloaded, 3); len(fired) != 1 || fired[0] != ReasonConsecutiveFailures {
		t.Fatalf("3 overloaded fired %v, want [%s] once", fired, ReasonConsecutiveFailures)
	}
}

func TestRecordNilDetectorCountsOnly(t *testing.T) {
	s := NewStats()
	if fired := recordN(s, nil, outcome.ServerError, 100); len(fired) != 0 {
		t.Fatalf("nil detector fired %v", fired)
	}
	recordN(s, nil, outcome.Success, 7)
	if succ, fail := s.Counts(); succ != 7 || fail != 100 {
		t.Fatalf("Counts = %d, %d; want 7, 100", succ, fail)
	}
}

// TestRecordConcurrent: 16 goroutines record failures at once (run it with
// -race).
func TestRecordConcurrent(t *testing.T) {
	const workers = 16
	run := func(d *Detector, s *Stats, perWorker int, onFire func(Reason)) {
		var start, wg sync.WaitGroup
		start.Add(1)
		for range workers {
			wg.Go(func() {
				start.Wait()
				for range perWorker {
					if eject, why := s.Record(d, outcome.ServerError, time.Millisecond); eject {
						onFire(why)
					}
				}
			})
		}
		start.Done()
		wg.Wait()
	}

	t.Run("one crossing fires once", func(t *testing.T) {
		for range 200 {
			d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(workers)})
			s := NewStats()
			var fired atomic.Int64
			run(d, s, 1, func(Reason) { fired.Add(1) })
			if n := fired.Load(); n != 1 {
				t.Fatalf("%d failures at once, threshold %d: fired %d times, want 1", workers, workers, n)
			}
		}
	})

	t.Run("at most once per run", func(t *testing.T) {
		const threshold, per = 5, 1000
		d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(threshold), FailurePercentage: &FailurePercentage{}})
		s := NewStats()
		var fired atomic.Int64
		run(d, s, per, func(Reason) { fired.Add(1) })
		if n := fired.Load(); n < 1 || n > workers*per/threshold {
			t.Fatalf("fired %d times for %d failures, threshold %d: want 1..%d", n, workers*per, threshold, workers*per/threshold)
		}
		if _, fail := s.Counts(); fail != workers*per {
			t.Fatalf("counted %d failures, want %d", fail, workers*per)
		}
	})

	t.Run("one ejection", func(t *testing.T) {
		d := NewDetector(OutlierDetection{ConsecutiveFailures: intp(5)})
		s := NewStats()
		var ejections atomic.Int64
		now := time.Unix(1000, 0)
		run(d, s, 1000, func(why Reason) {
			if _, ok := d.Ejected(s, why, now); ok {
				ejections.Add(1)
			}
		})
		if n := ejections.Load(); n != 1 {
			t.Fatalf("%d ejections, want 1", n)
		}
	})
}

func TestRecordAllocs(t *testing.T) {
	d := NewDetector(OutlierDetection{
		ConsecutiveGatewayFailures: intp(5), ConsecutiveLocalOriginFailures: intp(5),
		Latency: &LatencyOutlier{},
	})
	s := NewStats()
	classes := []outcome.Class{outcome.Success, outcome.ServerError, outcome.GatewayError, outcome.ConnectError, outcome.NotSent}
	i := 0
	if n := testing.AllocsPerRun(10000, func() {
		s.Record(d, classes[i%len(classes)], time.Duration(i)*time.Microsecond)
		i++
	}); n != 0 {
		t.Fatalf("Record allocates %v times per call", n)
	}
}

// BenchmarkRecord measures Record with every detector on (latency
// histogram included): a success (the common case), a failure, and
// successes from all CPUs on one endpoint.
func BenchmarkRecord(b *testing.B) {
	d := NewDetector(OutlierDetection{
		ConsecutiveGatewayFailures: intp(5), ConsecutiveLocalOriginFailures: intp(5),
		SuccessRate: &SuccessRate{}, FailurePercentage: &FailurePercentage{}, Latency: &LatencyOutlier{},
	})
	b.Run("success", func(b *testing.B) {
		s := NewStats()
		b.ReportAllocs()
		for b.Loop() {
			s.Record(d, outcome.Success, 3*time.Millisecond)
		}
	})
	b.Run("failure", func(b *testing.B) {
		s := NewStats()
		b.ReportAllocs()
		for b.Loop() {
			s.Record(d, outcome.GatewayError, 3*time.Millisecond)
		}
	})
	b.Run("success-no-detector", func(b *testing.B) {
		s := NewStats()
		b.ReportAllocs()
		for b.Loop() {
			s.Record(nil, outcome.Success, 3*time.Millisecond)
		}
	})
	b.Run("success-parallel", func(b *testing.B) {
		s := NewStats()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.Record(d, outcome.Success, 3*time.Millisecond)
			}
		})
	})
}
