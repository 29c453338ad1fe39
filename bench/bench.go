package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Errors returned by this package.
var (
	// ErrTooManyErrors: a workload's operations failed more often than
	// maxErrors; the run stops rather than report nonsense.
	ErrTooManyErrors = errors.New("bench: too many failed operations")
	// ErrSkipped: a workload could not run here (a program it needs is not
	// installed); the report notes it, and it is not a failure.
	ErrSkipped = errors.New("bench: skipped")
)

// maxErrors bounds the failed operations one measurement tolerates (each is
// counted and reported) before it gives up with ErrTooManyErrors.
const maxErrors = 1000

// Config says what Run measures. Zero fields take the defaults of
// QuickConfig or FullConfig (see Defaults).
type Config struct {
	Quick    bool          // the short run: smaller held sets, shorter windows
	Clients  int           // C: concurrent clients in the throughput workloads
	Duration time.Duration // measurement window of one workload
	Warmup   time.Duration // run before each window, not measured
	MaxOps   int64         // per window, all clients together (a bound, rarely reached)
	Shards   int           // shards of every tokend cluster
	Payload  int           // echo datagram size in bytes (an ACQUIRE is ~100)

	// Leases of the tokend clusters: the daemon's defaults (worker 5 s,
	// session 10 s), not devcluster's 2 s test values, so that a shared
	// machine's hiccups do not expire sessions in the middle of a window.
	WorkerTTL  time.Duration
	SessionTTL time.Duration

	ContendedHold time.Duration // second contended variant: hold this long after a revoke before releasing

	Readers     int           // shared-heavy: PR readers
	Writers     int           // shared-heavy: EX writers
	ReadHold    time.Duration // shared-heavy: a reader holds PR this long (cut short by a revoke)
	WriteEvery  time.Duration // shared-heavy: a writer's pause between writes
	RangeWriter int           // byte ranges: writers on one token
	RangeSize   uint64        // byte ranges: bytes per writer's range

	Held        []int // held-set sizes (cumulative: each level adds to the last)
	Holders     int   // held set: raw sessions that hold the tokens
	WorkerSets  []int // worker counts for the scaling workload
	EtcdMembers []int // embedded etcd cluster sizes for the Mutex comparison

	// Failover: FailoverWorkers "tokend worker" processes of one "tokend
	// server", killed -9 FailoverKills times one after the other,
	// each but the last followed by a replacement process. The worker TTL
	// and grace period are short (etcd's minimum lease is 2 s) so that a
	// failover takes seconds; they apply to this workload only.
	FailoverWorkers int
	FailoverKills   int
	FailoverTTL     time.Duration
	FailoverGrace   time.Duration
	// FailoverSession is the session TTL of the failover cluster: 4 s as
	// in recovery.TestWorkerKill. A client renews its session every
	// third of it, and a renewal at another worker is what moves the
	// client's "home" (where it asks for the map first) off a dead worker;
	// with 10 s sessions and a 2 s grace, clients homed at the killed
	// worker lose their held tokens (see bench/README.md, Failover).
	FailoverSession time.Duration
	FailoverHeld    int           // tokens held in every shard (by different clients)
	FailoverPause   time.Duration // a shard's cycler pauses this long (±50 %) between pairs

	// Sessions: live sessions held at each level (doubling), each level
	// against a fresh tokend process, for SessionHold; the workload stops
	// at the first level past the knee.
	SessionLevels []int
	SessionHold   time.Duration

	// Only runs just the named workloads when non-empty (uncontended,
	// contended, shared, ranges, held, workers, failover, echo, etcd).
	Only []string

	// CPUProfile, if set, receives a pprof CPU profile of the tokend
	// uncontended workload at C clients (window only).
	CPUProfile io.Writer
	// HeldProfile, if set, receives a CPU profile of the uncontended
	// measurement at the largest held-set size.
	HeldProfile io.Writer
	// ContendedProfile, if set, receives a CPU profile of the tokend
	// contended workload (release on revoke).
	ContendedProfile io.Writer
	// AuthRounds is how many times the uncontended and contended loops run
	// against the authenticated and the --insecure process each (workload
	// noauth), alternating which goes first (AB BA AB ...), so that drift
	// and neighbours weigh on both alike; the auth on / off comparison is
	// the median of the rounds' ratios.
	AuthRounds int
	// ServerProfileDir, if set, starts the tokend processes with --pprof
	// and saves CPU profiles of each contended window (release on revoke)
	// against a tokend process there (the authenticated and the --insecure
	// process alike): the tokend process's as contended-<system>.pprof,
	// the bench process's (the Go clients) as
	// contended-<system>-clients.pprof.
	ServerProfileDir string
	// Progress, if set, is told what runs now (one line per step).
	Progress func(msg string)

	// serverCPU, if set, returns the CPU time the server processes the
	// bench started have used so far: measure reports it per window and
	// does not count it as other processes' CPU.
	serverCPU func() time.Duration
}

// QuickConfig returns the parameters of --quick: the whole comparison in
// well under two minutes on two cores.
func QuickConfig() Config {
	return Config{
		Quick: true, Clients: 16, Duration: 2 * time.Second, Warmup: 300 * time.Millisecond,
		MaxOps: 5_000_000, Shards: 256, Payload: 100,
		WorkerTTL: 5 * time.Second, SessionTTL: 10 * time.Second,
		ContendedHold: time.Millisecond,
		Readers:       16, Writers: 1, ReadHold: time.Millisecond, WriteEvery: 20 * time.Millisecond,
		RangeWriter: 8, RangeSize: 4096,
		Held: []int{1_000, 100_000, 1_000_000}, Holders: 4,
		WorkerSets: []int{1, 2, 4}, EtcdMembers: []int{1, 3},
		FailoverWorkers: 3, FailoverKills: 2, FailoverTTL: 2 * time.Second, FailoverGrace: 2 * time.Second,
		FailoverSession: 4 * time.Second,
		FailoverHeld:    2, FailoverPause: 20 * time.Millisecond,
		SessionLevels: []int{1_000, 4_000}, SessionHold: 4 * time.Second,
		AuthRounds: 3,
	}
}

// FullConfig returns the parameters of the full run: longer windows and a
// held set up to 10M tokens.
func FullConfig() Config {
	c := QuickConfig()
	c.Quick = false
	c.Duration, c.Warmup = 5*time.Second, time.Second
	c.MaxOps = 50_000_000
	c.Held = []int{1_000, 100_000, 1_000_000, 10_000_000}
	c.FailoverKills = 10
	c.SessionLevels = []int{1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000}
	c.SessionHold = 20 * time.Second // two session TTLs: six renewals each
	c.AuthRounds = 9
	return c
}

// Defaults fills the zero fields of c from QuickConfig (if c.Quick) or
// FullConfig.
func (c Config) Defaults() Config {
	d := FullConfig()
	if c.Quick {
		d = QuickConfig()
	}
	set := func(p *int, v int) {
		if *p == 0 {
			*p = v
		}
	}
	setD := func(p *time.Duration, v time.Duration) {
		if *p == 0 {
			*p = v
		}
	}
	set(&c.Clients, d.Clients)
	setD(&c.Duration, d.Duration)
	setD(&c.Warmup, d.Warmup)
	if c.MaxOps == 0 {
		c.MaxOps = d.MaxOps
	}
	set(&c.Shards, d.Shards)
	set(&c.AuthRounds, d.AuthRounds)
	set(&c.Payload, d.Payload)
	setD(&c.WorkerTTL, d.WorkerTTL)
	setD(&c.SessionTTL, d.SessionTTL)
	setD(&c.ContendedHold, d.ContendedHold)
	set(&c.Readers, d.Readers)
	set(&c.Writers, d.Writers)
	setD(&c.ReadHold, d.ReadHold)
	setD(&c.WriteEvery, d.WriteEvery)
	set(&c.RangeWriter, d.RangeWriter)
	if c.RangeSize == 0 {
		c.RangeSize = d.RangeSize
	}
	if c.Held == nil {
		c.Held = d.Held
	}
	set(&c.Holders, d.Holders)
	if c.WorkerSets == nil {
		c.WorkerSets = d.WorkerSets
	}
	if c.EtcdMembers == nil {
		c.EtcdMembers = d.EtcdMembers
	}
	set(&c.FailoverWorkers, d.FailoverWorkers)
	set(&c.FailoverKills, d.FailoverKills)
	setD(&c.FailoverTTL, d.FailoverTTL)
	setD(&c.FailoverGrace, d.FailoverGrace)
	setD(&c.FailoverSession, d.FailoverSession)
	set(&c.FailoverHeld, d.FailoverHeld)
	setD(&c.FailoverPause, d.FailoverPause)
	if c.SessionLevels == nil {
		c.SessionLevels = d.SessionLevels
	}
	setD(&c.SessionHold, d.SessionHold)
	return c
}

func (c *Config) progress(format string, args ...any) {
	if c.Progress != nil {
		c.Progress(fmt.Sprintf(format, args...))
	}
}

func (c *Config) runs(name string) bool {
	return len(c.Only) == 0 || slices.Contains(c.Only, name)
}

// Latency is a latency distribution's summary, in microseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p999_us"`
	Max   float64 `json:"max_us"`
	Mean  float64 `json:"mean_us"`
}

// hist is an HDR histogram of durations in nanoseconds, 1 ns .. 1 min at
// three significant digits.
type hist struct{ h *hdrhistogram.Histogram }

func newHist() *hist { return &hist{hdrhistogram.New(1, int64(time.Minute), 3)} }

func (h *hist) record(d time.Duration) {
	_ = h.h.RecordValue(min(max(int64(d), 1), int64(time.Minute))) // clamped, so never out of range
}

func (h *hist) merge(o *hist) { h.h.Merge(o.h) }

func (h *hist) summary() *Latency {
	if h.h.TotalCount() == 0 {
		return nil
	}
	us := func(v int64) float64 { return float64(v) / 1e3 }
	return &Latency{
		Count: h.h.TotalCount(),
		P50:   us(h.h.ValueAtQuantile(50)),
		P99:   us(h.h.ValueAtQuantile(99)),
		P999:  us(h.h.ValueAtQuantile(99.9)),
		Max:   us(h.h.Max()),
		Mean:  h.h.Mean() / 1e3,
	}
}

// rec is what one client goroutine of a measured loop records into. It
// is owned by that goroutine until the loop ends.
type rec struct {
	on     bool            // the current operation started inside the window
	stop   <-chan struct{} // closed when the window ends: stop waiting
	lat    [3]*hist
	ops    int64
	events int64 // workload-specific count (e.g. revocations seen)
	aux    int64 // a second kind of operation (e.g. writes among reads)
	errs   int64
	last   error
}

// record adds d to histogram i if the current operation is measured.
func (r *rec) record(i int, d time.Duration) {
	if r.on {
		r.lat[i].record(d)
	}
}

// pair runs and times one acquire+release: the acquire, the release and
// the pair each go to their histogram.
func (r *rec) pair(acquire, release func() error) error {
	t0 := time.Now()
	if err := acquire(); err != nil {
		return err
	}
	t1 := time.Now()
	if err := release(); err != nil {
		return err
	}
	t2 := time.Now()
	r.record(latAcquire, t1.Sub(t0))
	r.record(latRelease, t2.Sub(t1))
	r.record(latPair, t2.Sub(t0))
	return nil
}

// event counts one workload-specific event if the operation is measured.
func (r *rec) event() {
	if r.on {
		r.events++
	}
}

// tallyAux counts one operation of the second kind if it is measured.
func (r *rec) tallyAux() {
	if r.on {
		r.aux++
	}
}

// stopped reports whether the window has ended.
func (r *rec) stopped() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

// loopResult is what measure returns: the merged recordings of all clients.
type loopResult struct {
	window  time.Duration
	ops     int64
	events  int64
	aux     int64
	errs    int64
	lastErr error
	lat     [3]*hist
	cpu     time.Duration // process CPU time (user+sys) during the window
	server  time.Duration // CPU time of the server processes the bench started (cfg.serverCPU), meanwhile
	others  time.Duration // CPU time of every other process of the machine meanwhile
}

func (l *loopResult) rate() float64 {
	if l.window <= 0 {
		return 0
	}
	return float64(l.ops) / l.window.Seconds()
}

// endGrace bounds how long operations still in flight when the window
// ends may take before their context is canceled.
const endGrace = 2 * time.Second

// measure runs op in a closed loop on n goroutines (client i runs op(ctx, i,
// r) back to back) for cfg.Warmup + cfg.Duration, or until cfg.MaxOps
// operations completed in the window, whichever comes first. An operation
// counts if it started and ended inside the window. op reports its own
// latencies with r.record and should stop waiting when r.stop closes; an
// error is counted, and more than maxErrors stop the loop with
// ErrTooManyErrors. The window's process CPU time comes from getrusage.
func measure(ctx context.Context, cfg *Config, n int, op func(ctx context.Context, i int, r *rec) error) (loopResult, error) {
	stop := make(chan struct{})
	recs := make([]*rec, n)
	for i := range recs {
		recs[i] = &rec{stop: stop}
		for j := range recs[i].lat {
			recs[i].lat[j] = newHist()
		}
	}
	start := time.Now()
	winStart := start.Add(cfg.Warmup)
	end := winStart.Add(cfg.Duration)
	var (
		stopOnce sync.Once
		stopMu   sync.Mutex // guards stopped
		stopped  time.Time  // when the window ended (time, count or errors)
	)
	halt := func() {
		stopOnce.Do(func() {
			stopMu.Lock()
			stopped = time.Now()
			stopMu.Unlock()
			close(stop)
		})
	}
	timer := time.AfterFunc(time.Until(end), halt)
	defer timer.Stop()
	ctx, cancel := context.WithDeadline(ctx, end.Add(endGrace))
	defer cancel()
	var (
		total   atomic.Int64
		errs    atomic.Int64
		wg      sync.WaitGroup
		cpuOnce sync.Once
		cpu0    time.Duration
		busy0   time.Duration
		srv0    time.Duration
	)
	serverCPU := func() time.Duration {
		if cfg.serverCPU == nil {
			return 0
		}
		return cfg.serverCPU()
	}
	for i := range n {
		r := recs[i]
		wg.Go(func() {
			for ctx.Err() == nil && !r.stopped() {
				t0 := time.Now()
				r.on = !t0.Before(winStart)
				if r.on {
					cpuOnce.Do(func() { cpu0, busy0, srv0 = cpuTime(), machineBusy(), serverCPU() })
				}
				err := op(ctx, i, r)
				t1 := time.Now()
				if err != nil {
					if ctx.Err() != nil || r.stopped() {
						return
					}
					r.errs++
					r.last = err
					if errs.Add(1) > maxErrors {
						halt()
						cancel()
						return
					}
					continue
				}
				if r.on && t1.Before(end) {
					r.ops++
					if total.Add(1) >= cfg.MaxOps {
						halt()
					}
				}
			}
		})
	}
	wg.Wait()
	cpu1, busy1, srv1 := cpuTime(), machineBusy(), serverCPU()
	halt()
	stopMu.Lock()
	if stopped.After(end) {
		stopped = end
	}
	window := max(stopped.Sub(winStart), 0)
	stopMu.Unlock()
	res := loopResult{window: window}
	for j := range res.lat {
		res.lat[j] = newHist()
	}
	for _, r := range recs {
		res.ops += r.ops
		res.events += r.events
		res.aux += r.aux
		res.errs += r.errs
		if r.last != nil {
			res.lastErr = r.last
		}
		for j := range r.lat {
			res.lat[j].merge(r.lat[j])
		}
	}
	res.cpu = cpu1 - cpu0
	res.server = max(srv1-srv0, 0)
	if busy0 > 0 {
		res.others = max((busy1-busy0)-res.cpu-res.server, 0)
	}
	if errs.Load() > maxErrors {
		return res, fmt.Errorf("%w: %d, last: %v", ErrTooManyErrors, errs.Load(), res.lastErr)
	}
	return res, nil
}
