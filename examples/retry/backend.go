package main

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// mode is how a backend answers requests at the moment.
type mode int32

const (
	modeOK          mode = iota // answers every request
	modeDown                    // HTTP: its server is closed; gRPC: UNAVAILABLE to everything
	modeReset                   // reads the request, then drops the connection
	modeOverloaded              // 429 with Retry-After: 1; gRPC RESOURCE_EXHAUSTED with grpc-retry-pushback-ms: 1000
	modeUnavailable             // 503; gRPC UNAVAILABLE
)

// backend is one server, the same for both doors: its mode and the time
// every request reached it.
type backend struct {
	name, addr string
	mode       atomic.Int32
	stop       func() // stops the server; a second call does nothing
	down       func() // makes it hard down

	mu       sync.Mutex
	arrivals []time.Time
}

func (b *backend) setMode(m mode) { b.mode.Store(int32(m)) }

// arrived records a request reaching b and returns how to answer it.
func (b *backend) arrived() mode {
	b.mu.Lock()
	b.arrivals = append(b.arrivals, time.Now())
	b.mu.Unlock()
	return mode(b.mode.Load())
}

// count returns how many requests have reached b.
func (b *backend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.arrivals)
}

// arrivedIn returns how many requests reached b within [from, to).
func (b *backend) arrivedIn(from, to time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, t := range b.arrivals {
		if !t.Before(from) && t.Before(to) {
			n++
		}
	}
	return n
}

// startHTTP starts an HTTP backend on 127.0.0.1. Hard down, its server is
// closed: its listener with it, so connections to its address are refused.
func startHTTP(name string) (*backend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{name: name, addr: lis.Addr().String()}
	srv := &http.Server{
		Handler:  http.HandlerFunc(b.serveHTTP),
		ErrorLog: log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			srv.Close()
			<-done
		})
	}
	b.down = func() {
		b.setMode(modeDown)
		b.stop()
	}
	return b, nil
}

func (b *backend) serveHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body) // the request is read in full, whatever comes next
	switch b.arrived() {
	case modeReset:
		// Drop the connection without a word: the client cannot tell
		// whether the request was processed.
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
			return
		}
		panic(http.ErrAbortHandler)
	case modeOverloaded:
		w.Header().Set("Retry-After", "1")
		http.Error(w, b.name+": overloaded", http.StatusTooManyRequests)
	case modeUnavailable:
		http.Error(w, b.name+": unavailable", http.StatusServiceUnavailable)
	default:
		io.WriteString(w, b.name)
	}
}

// grpcBackend is a gRPC backend: the interop TestService, EmptyCall as the
// idempotent read and UnaryCall as the write.
type grpcBackend struct {
	testgrpc.UnimplementedTestServiceServer
	*backend
	conns sync.Map // remote address → net.Conn, for modeReset
}

func (g *grpcBackend) EmptyCall(ctx context.Context, _ *testgrpc.Empty) (*testgrpc.Empty, error) {
	if err := g.answer(ctx); err != nil {
		return nil, err
	}
	return &testgrpc.Empty{}, nil
}

func (g *grpcBackend) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if err := g.answer(ctx); err != nil {
		return nil, err
	}
	return &testgrpc.SimpleResponse{}, nil
}

// answer records the call and returns its error, if it is to fail.
func (g *grpcBackend) answer(ctx context.Context) error {
	switch g.arrived() {
	case modeDown, modeUnavailable:
		return status.Error(codes.Unavailable, g.name+": unavailable")
	case modeOverloaded:
		grpc.SetTrailer(ctx, metadata.Pairs("grpc-retry-pushback-ms", "1000"))
		return status.Error(codes.ResourceExhausted, g.name+": overloaded")
	case modeReset:
		// Drop the call's connection (the request has been read): the
		// client cannot tell whether it was processed.
		if p, ok := peer.FromContext(ctx); ok {
			if c, ok := g.conns.LoadAndDelete(p.Addr.String()); ok {
				c.(net.Conn).Close()
			}
		}
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// trackingListener records the accepted connections of a gRPC backend, so
// that modeReset can close the one a call came on.
type trackingListener struct {
	net.Listener
	g *grpcBackend
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.g.conns.Store(c.RemoteAddr().String(), c)
	}
	return c, err
}

// startGRPC starts a gRPC backend on 127.0.0.1. Hard down, it answers
// UNAVAILABLE to everything.
func startGRPC(name string) (*backend, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &grpcBackend{backend: &backend{name: name, addr: lis.Addr().String()}}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, g)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(trackingListener{lis, g}); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Printf("gRPC backend %s: %v", name, err)
		}
	}()
	var once sync.Once
	g.stop = func() {
		once.Do(func() {
			srv.Stop()
			<-done
		})
	}
	g.down = func() { g.setMode(modeDown) }
	return g.backend, nil
}
