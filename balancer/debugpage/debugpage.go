// Package debugpage serves a read-only page that shows every lodestar
// balancer in the process: each HTTP Transport service and each gRPC channel
// using the lodestar policy, with, per endpoint, its locality, priority,
// weight, state (eligible, not connected, unhealthy, ejected until when and
// why, breaker state, slow-start ramp, at its concurrency limit), requests in
// flight, recent latency, share of recent requests and outcome counts, and
// the balancer's recent events (membership, ejections, breaker trips,
// discovery errors).
//
// The application mounts the handler where it likes:
//
//	mux.Handle("/debug/lodestar/", http.StripPrefix("/debug/lodestar", debugpage.Handler()))
//
// The page is HTML rendered on the server (html/template), readable without
// JavaScript; ?refresh=N reloads it every N seconds (a meta tag). The same
// data is JSON at ?format=json or at the path "/json" (the Page type is its
// schema). The handler only reads: it answers GET and HEAD, and shows no
// secret (targets are redacted, endpoint metadata is left out).
//
// What it shows comes from balancer.Engines (every engine not closed) and
// balancer.Engine.Status; it costs the request path nothing.
package debugpage

import (
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lodestar-go/lodestar/balancer"
)

// Page is the JSON the handler serves at ?format=json (and /json): every
// balancer's status. See balancer.EngineStatus for each field.
type Page struct {
	// GeneratedAt is when the page was made (wall clock).
	GeneratedAt time.Time `json:"generatedAt"`
	// Balancers lists every live engine, in the order they were made.
	Balancers []balancer.EngineStatus `json:"balancers"`
}

// Options configure a handler; the zero value shows every engine in the
// process.
type Options struct {
	// Engines lists the engines to show. nil means balancer.Engines.
	Engines func() []*balancer.Engine
	// Title heads the page. Default "lodestar balancers".
	Title string
}

// Handler returns the debug page's handler for every engine in the process.
func Handler() http.Handler { return New(Options{}) }

// New returns the debug page's handler with opts.
func New(opts Options) http.Handler {
	if opts.Engines == nil {
		opts.Engines = balancer.Engines
	}
	if opts.Title == "" {
		opts.Title = "lodestar balancers"
	}
	return &handler{opts: opts}
}

type handler struct{ opts Options }

// maxRefresh bounds ?refresh=N, in seconds.
const maxRefresh = 3600

// Snapshot returns the page's data now.
func (h *handler) snapshot() Page {
	p := Page{GeneratedAt: time.Now(), Balancers: []balancer.EngineStatus{}}
	for _, e := range h.opts.Engines() {
		p.Balancers = append(p.Balancers, e.Status())
	}
	return p
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the lodestar debug page is read-only", http.StatusMethodNotAllowed)
		return
	}
	q := r.URL.Query()
	page := h.snapshot()
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if q.Get("format") == "json" || strings.HasSuffix(r.URL.Path, "/json") || r.URL.Path == "json" {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(page)
		return
	}
	refresh := 0
	if v := q.Get("refresh"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxRefresh {
			http.Error(w, fmt.Sprintf("refresh: want a number of seconds from 1 to %d, got %q", maxRefresh, v), http.StatusBadRequest)
			return
		}
		refresh = n
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTemplate.Execute(w, view{Title: h.opts.Title, Refresh: refresh, Page: page}); err != nil {
		// Headers are out: the page is cut short, which its reader sees.
		fmt.Fprintf(w, "<p>render error: %s</p>", template.HTMLEscapeString(err.Error()))
	}
}

// view is what the template renders.
type view struct {
	Title   string
	Refresh int
	Page
}

//go:embed page.html.tmpl
var templates embed.FS

var pageTemplate = template.Must(template.New("page.html.tmpl").Funcs(template.FuncMap{
	"stateClass": stateClass,
	"pct":        func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"ms":         formatMillis,
	"barWidth":   barWidth,
	"maxLatency": maxLatency,
	"clock":      func(t time.Time) string { return t.Format("15:04:05.000") },
	"until":      until,
	"outcomes":   outcomeList,
	"reverse":    reverse,
	"total":      totalOutcomes,
}).ParseFS(templates, "page.html.tmpl"))

// stateClass returns the CSS class for an endpoint's state.
func stateClass(es balancer.EndpointStatus) string {
	switch {
	case es.State == "draining":
		return "draining"
	case len(es.Conditions) == 0 && es.AtLimit:
		return "limit"
	case len(es.Conditions) == 0 && es.SlowStartPercent < 100:
		return "ramping"
	case len(es.Conditions) == 0:
		return "eligible"
	}
	// The most telling condition wins the colour.
	for _, c := range []struct{ name, class string }{
		{"unhealthy", "unhealthy"}, {"ejected", "ejected"}, {"breaker open", "breaker"},
		{"paused", "paused"}, {"not connected", "notconnected"},
	} {
		for _, x := range es.Conditions {
			if x.Name == c.name {
				return c.class
			}
		}
	}
	return "other"
}

// formatMillis formats a latency in milliseconds with sensible precision.
func formatMillis(ms float64) string {
	switch {
	case ms == 0:
		return "–"
	case ms < 1:
		return strconv.FormatFloat(ms*1000, 'f', 0, 64) + " µs"
	case ms < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64) + " ms"
	case ms < 10000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(ms/1000, 'f', 1, 64) + " s"
}

// barWidth returns v as a percentage of of, for a bar's width, within [0, 100].
func barWidth(v, of float64) string {
	if of <= 0 || v <= 0 {
		return "0"
	}
	return strconv.FormatFloat(min(100, 100*v/of), 'f', 1, 64)
}

// maxLatency returns the largest p99 of the engine's endpoints, the scale of
// its latency bars.
func maxLatency(st balancer.EngineStatus) float64 {
	m := 0.0
	for _, es := range st.Endpoints {
		m = max(m, es.Latency.P99Millis)
	}
	return m
}

// until says when t is, from now (the status's time).
func until(t *time.Time, now time.Time) string {
	if t == nil {
		return ""
	}
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "until " + t.Format("15:04:05") + " (now)"
	}
	return "until " + t.Format("15:04:05") + " (in " + d.String() + ")"
}

type outcomeCount struct {
	Class string
	N     uint64
	Bad   bool
}

// outcomeList returns the outcome counts in class order.
func outcomeList(m map[string]uint64) []outcomeCount {
	var out []outcomeCount
	for _, c := range []string{"success", "client_error", "overloaded", "server_error", "gateway_error",
		"timeout", "local_error", "connect_error", "canceled", "not_sent"} {
		if n := m[c]; n > 0 {
			out = append(out, outcomeCount{Class: c, N: n, Bad: c != "success" && c != "client_error" && c != "canceled" && c != "not_sent"})
		}
	}
	return out
}

func totalOutcomes(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// reverse returns the events newest first.
func reverse(evs []balancer.EventStatus) []balancer.EventStatus {
	out := make([]balancer.EventStatus, len(evs))
	for i, ev := range evs {
		out[len(evs)-1-i] = ev
	}
	return out
}
