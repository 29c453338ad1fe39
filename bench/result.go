package bench

import "fmt"

// Result is one measured line of the report.
type Result struct {
	Workload string `json:"workload"`          // uncontended, contended, shared-heavy, ranges, held, workers, echo
	Variant  string `json:"variant,omitempty"` // e.g. "prompt", "overlapping", "1000000 held", "2 workers"
	System   string `json:"system"`            // tokend, etcd-1, etcd-3, udp-echo
	Clients  int    `json:"clients"`           // concurrent clients (operations in flight)
	// Round numbers the repeated windows of the auth on / off comparison
	// (Config.AuthRounds) after the first; 0 for every other row. Only
	// that comparison reads rows of a later round.
	Round int `json:"round,omitempty"`

	WindowS float64 `json:"window_s"` // measured seconds
	Count   int64   `json:"count"`    // operations completed in the window
	Unit    string  `json:"unit"`     // what one operation is: "pair" (acquire+release), "handoff", ...
	Rate    float64 `json:"rate_per_s"`
	Errors  int64   `json:"errors"`
	// LastError is the last failed operation's error, if any failed.
	LastError string `json:"last_error,omitempty"`

	// Latencies, the first one is shown in the table.
	Latencies []NamedLatency `json:"latencies,omitempty"`
	// Extra holds workload-specific numbers (CPU, memory, revocations).
	Extra []Metric `json:"extra,omitempty"`
	Note  string   `json:"note,omitempty"`
}

// NamedLatency is the latency of one kind of operation of a workload.
type NamedLatency struct {
	Of string `json:"of"` // e.g. "acquire", "release", "round trip"
	Latency
}

// Metric is a named number with its unit.
type Metric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// with fills r's counts and rate from a measured loop and names its
// latency histograms (in order: histogram 0, 1, 2; "" skips one).
func (r Result) with(l *loopResult, names ...string) Result {
	r.WindowS = l.window.Seconds()
	r.Count = l.ops
	r.Rate = l.rate()
	r.Errors = l.errs
	if l.window > 0 && l.others > 0 {
		// The machine may be shared: say how busy the rest of it was.
		r.metric("others_cpu", l.others.Seconds()/l.window.Seconds(), "cores")
	}
	if l.window > 0 && l.server > 0 {
		r.metric("server_cpu", l.server.Seconds()/l.window.Seconds(), "cores")
	}
	if l.lastErr != nil {
		r.LastError = l.lastErr.Error()
	}
	for i, n := range names {
		if n == "" || i >= len(l.lat) {
			continue
		}
		if s := l.lat[i].summary(); s != nil {
			r.Latencies = append(r.Latencies, NamedLatency{Of: n, Latency: *s})
		}
	}
	return r
}

// metric appends an extra number.
func (r *Result) metric(name string, v float64, unit string) {
	r.Extra = append(r.Extra, Metric{Name: name, Value: v, Unit: unit})
}

// lat returns the latency of op, or nil.
func (r *Result) lat(of string) *Latency {
	for i := range r.Latencies {
		if r.Latencies[i].Of == of {
			return &r.Latencies[i].Latency
		}
	}
	return nil
}

// cpuMetrics adds the window's CPU time and operations per CPU-second:
// the bench process (clients; and the servers too when they run in it)
// plus the server processes the bench started.
func (r *Result) cpuMetrics(l *loopResult) {
	cpu := l.cpu + l.server
	if cpu <= 0 {
		return
	}
	r.metric("cpu", cpu.Seconds()/max(l.window.Seconds(), 1e-9), "cores")
	r.metric("per_cpu_s", float64(l.ops)/cpu.Seconds(), "ops/CPU-s")
}

// label is the row's variant with its round, if any.
func (r *Result) label() string {
	if r.Round <= 1 {
		return r.Variant
	}
	if r.Variant == "" {
		return fmt.Sprintf("round %d", r.Round)
	}
	return fmt.Sprintf("%s, round %d", r.Variant, r.Round)
}
