package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/worker"
)

// workerHost returns the faultnet host of in-process worker i.
func workerHost(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)}) }

// clientHost returns the faultnet host of client i (one host per client,
// so that a rule per host is a rule per client link).
func clientHost(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, 2 + byte(i/250), byte(i%250 + 1)})
}

// inproc is an in-process cluster whose workers and clients all sit on one
// seeded faultnet network.
type inproc struct {
	t       *testing.T
	fn      *faultnet.Network
	c       *devcluster.Cluster
	workers int
}

func startInproc(t *testing.T, seed uint64, workers int, o devcluster.Options) *inproc {
	t.Helper()
	skipShort(t)
	fn := faultnet.New(seed)
	o.Workers = workers
	o.Conn = func(i int) (worker.PacketConn, error) {
		return fn.Listen(netip.AddrPortFrom(workerHost(i), 7700).String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &inproc{t: t, fn: fn, c: c, workers: workers}
}

// dial opens client i on its own faultnet host.
func (e *inproc) dial(i int, cfg clientlib.Config) (*clientlib.Client, *faultnet.Conn) {
	e.t.Helper()
	conn, err := e.fn.Listen(netip.AddrPortFrom(clientHost(i), 0).String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	cfg.Seeds = e.c.Seeds()
	cfg.PacketConn = conn
	if cfg.OnRevoke == nil {
		// Holders give tokens back when they are done, not on request:
		// a slow holder then loses its token to the lease, the case to test.
		cfg.OnRevoke = func(context.Context, *clientlib.Token, clientlib.Revocation) {}
	}
	var cl *clientlib.Client
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cl, err = clientlib.DialConfig(ctx, cfg)
		cancel()
		if err == nil || attempt == 2 {
			break
		}
	}
	if err != nil {
		e.t.Fatalf("client %d: %v", i, err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl, conn
}

// cutClient blackholes (on) or heals (off) every link of client i.
func (e *inproc) cutClient(i int, on bool) {
	for w := range e.workers {
		e.fn.SetHosts(clientHost(i), workerHost(w), faultnet.Rule{Cut: on})
		e.fn.SetHosts(workerHost(w), clientHost(i), faultnet.Rule{Cut: on})
	}
}

// heldTokens sums the workers' grants.
func (e *inproc) heldTokens() int {
	n := 0
	for _, w := range e.c.Workers() {
		n += w.HeldTokens()
	}
	return n
}

// waitNoGrants waits until the workers hold no grants (every client gave
// everything back): a request applied twice would leave one behind.
func (e *inproc) waitNoGrants(within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for e.heldTokens() > 0 {
		if time.Now().After(deadline) {
			e.t.Errorf("%d grants still held %v after every client gave its tokens back", e.heldTokens(), within)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// opsConfig shapes the operations of one client.
type opsConfig struct {
	tokens    []string
	ops       int           // operations per client (bounded also by until)
	until     time.Time     // stop starting operations after this
	opTimeout time.Duration // per Acquire/Release
	modes     []wire.Mode   // drawn uniformly; default EX
	ranges    bool          // half the acquires take a random byte range
	converts  bool          // holders sometimes convert up or down
	think     time.Duration // the critical section sleeps [0, think)
	register  bool          // writers read-modify-write the lock set, readers read it
	// pause, if set, is called in some critical sections after the read and
	// before the write, to model a process pause (see scenario 2).
	pause func(rng *rand.Rand) bool
	// redial, if set, replaces a client whose session expired.
	redial func() *clientlib.Client
}

// counters of a workload.
type counters struct {
	attempted, completed, failed atomic.Int64
	lost, converted              atomic.Int64
	pauses, lateRefused          atomic.Int64
	lateAccepted                 atomic.Int64
}

// workload drives clients and records what they see.
type workload struct {
	hist *check.History
	ls   *check.LockSet
	n    counters

	mu   sync.Mutex     // guards errs
	errs map[string]int // operation errors by kind, for the report
}

// opError counts a failed operation by the error's text, numbers and
// quoted names removed.
func (w *workload) opError(op string, err error) {
	msg := op + ": " + errText.ReplaceAllString(err.Error(), "_")
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.errs == nil {
		w.errs = map[string]int{}
	}
	if len(w.errs) < 50 {
		w.errs[msg]++
	}
}

var errText = regexp.MustCompile(`"[^"]*"|0x[0-9a-f]+|[0-9]+`)

func newWorkload() *workload {
	return &workload{hist: check.NewHistory(), ls: check.NewLockSet()}
}

// randRange returns a byte range on a small grid, so that ranges overlap
// often, or the whole token.
func randRange(rng *rand.Rand) (uint64, uint64) {
	if rng.IntN(2) == 0 {
		return 0, 0
	}
	s := uint64(rng.IntN(8)) * 1024
	return s, s + uint64(1+rng.IntN(3))*1024
}

// holding is one grant the workload holds, with its history bookkeeping.
type holding struct {
	w         *workload
	client    int
	tok       *clientlib.Token
	name      string
	fence     uint64
	mode      wire.Mode
	from      uint64
	to        uint64
	lastValid int64 // history time just before the last Valid() that said yes
}

// valid checks the token and advances lastValid when it is valid.
func (h *holding) valid() bool {
	t := h.w.hist.Now()
	if h.tok.Valid() {
		h.lastValid = t
		return true
	}
	return false
}

// end records the end of the grant: it stopped being relied on at
// lastValid; the release took effect by now if err is nil, else whenever.
func (h *holding) end(err error) {
	ret := check.Forever
	if err == nil {
		ret = h.w.hist.Now()
	}
	h.w.hist.Add(check.Input{Kind: check.OpRelease, Client: h.client, Token: h.name, Fence: h.fence}, check.Output{}, h.lastValid, ret)
}

// runClient runs cfg.ops operations of client id on cl.
func (w *workload) runClient(ctx context.Context, id int, cl *clientlib.Client, rng *rand.Rand, cfg opsConfig) {
	if cfg.opTimeout == 0 {
		cfg.opTimeout = 5 * time.Second
	}
	if len(cfg.modes) == 0 {
		cfg.modes = []wire.Mode{wire.EX}
	}
	for op := 0; op < cfg.ops && ctx.Err() == nil && (cfg.until.IsZero() || time.Now().Before(cfg.until)); op++ {
		w.n.attempted.Add(1)
		name := cfg.tokens[rng.IntN(len(cfg.tokens))]
		mode := cfg.modes[rng.IntN(len(cfg.modes))]
		var opts []clientlib.Option
		var start, end uint64
		if cfg.ranges {
			start, end = randRange(rng)
			opts = append(opts, clientlib.Range(start, end))
		}
		actx, cancel := context.WithTimeout(ctx, cfg.opTimeout)
		call := w.hist.Now()
		tok, err := cl.Acquire(actx, name, mode, opts...)
		ret := w.hist.Now()
		cancel()
		if err != nil {
			w.n.failed.Add(1)
			w.opError("acquire", err)
			if cfg.redial != nil && (errors.Is(err, clientlib.ErrSessionExpired) || errors.Is(err, clientlib.ErrClosed)) {
				if c := cfg.redial(); c != nil {
					cl = c
				}
			}
			sleepCtx(ctx, 10*time.Millisecond) // no spinning on a persistent error
			continue
		}
		h := &holding{w: w, client: id, tok: tok, name: name, fence: tok.Fence(), mode: mode, from: start, to: end,
			// Reliance starts with the first Valid check: a revocation
			// handler may give the grant back before Acquire returns.
			lastValid: call}
		w.hist.Add(check.Input{Kind: check.OpAcquire, Client: id, Token: name, Mode: mode, Start: start, End: end},
			check.Output{Fence: h.fence}, call, ret)
		w.critical(ctx, h, rng, cfg)
		if cfg.converts && rng.IntN(3) == 0 && h.valid() {
			w.convert(ctx, h, rng, cfg)
		}
		if err := h.tok.Err(); err != nil {
			// Lost while held (lease ran out, session expired).
			w.n.lost.Add(1)
			w.opError("held", err)
			h.end(errors.New("lost"))
			w.n.completed.Add(1)
			continue
		}
		h.valid()
		rctx, cancel := context.WithTimeout(ctx, cfg.opTimeout)
		err = tok.Release(rctx)
		cancel()
		if err != nil {
			w.opError("release", err)
		}
		h.end(err)
		w.n.completed.Add(1)
	}
}

// cells returns the lock-set registers a grant of [start, end) covers: one
// per 1 KiB cell of the range grid randRange draws from (the whole token
// covers them all), so that holders of disjoint ranges use disjoint
// registers.
func cells(name string, start, end uint64) []string {
	if wire.IsWhole(start, end) {
		start, end = 0, gridCells*1024
	}
	var out []string
	for c := start / 1024; c < min(end, gridCells*1024)/1024; c++ {
		out = append(out, fmt.Sprintf("%s#%d", name, c))
	}
	return out
}

// gridCells is the number of 1 KiB cells randRange's ranges fall in.
const gridCells = 11

// critical is the critical section under h: writers (PW, EX) do the lock
// set's read-modify-write on every cell of their range, protected readers
// (PR) read them; CR, CW and NL are unprotected modes and touch nothing.
// Each access is made only while the token was Valid at its start, as an
// application should.
func (w *workload) critical(ctx context.Context, h *holding, rng *rand.Rand, cfg opsConfig) {
	think := func() {
		if cfg.think > 0 {
			sleepCtx(ctx, time.Duration(rng.Int64N(int64(cfg.think))))
		}
	}
	if !h.valid() {
		return
	}
	writer := h.mode == wire.PW || h.mode == wire.EX
	if !cfg.register || (!writer && h.mode != wire.PR) {
		think()
		h.valid()
		return
	}
	for k, reg := range cells(h.name, h.from, h.to) {
		if k > 0 && !h.valid() {
			return
		}
		if !writer {
			w.ls.Register(reg).Read(h.fence)
			if k == 0 {
				think()
			}
			continue
		}
		paused := false
		_, err := w.ls.Update(reg, h.fence, func() {
			if k > 0 {
				return
			}
			think()
			if cfg.pause != nil && cfg.pause(rng) {
				// The process was paused: it resumes and writes on the
				// strength of its old check, as a stopped process would.
				paused = true
				w.n.pauses.Add(1)
				return
			}
			h.valid()
		})
		if paused {
			if errors.Is(err, check.ErrStaleFence) {
				w.n.lateRefused.Add(1)
			} else if err == nil {
				w.n.lateAccepted.Add(1)
			}
		}
	}
	h.valid()
}

// convert changes h's mode up or down and records it.
func (w *workload) convert(ctx context.Context, h *holding, rng *rand.Rand, cfg opsConfig) {
	to := cfg.modes[rng.IntN(len(cfg.modes))]
	if to == h.mode {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.opTimeout)
	call := w.hist.Now()
	// An upgrade waits at most 100 ms: two holders upgrading against each
	// other deadlock until one gives up (holders here do not answer
	// revocations).
	err := h.tok.Convert(cctx, to, clientlib.Wait(100*time.Millisecond))
	ret := w.hist.Now()
	cancel()
	if err != nil {
		w.opError("convert", err)
		return // unchanged, or lost (then ended by the caller)
	}
	nf := h.tok.Fence()
	w.hist.Add(check.Input{Kind: check.OpConvert, Client: h.client, Token: h.name, Fence: h.fence, Mode: to},
		check.Output{Fence: nf}, call, ret)
	w.n.converted.Add(1)
	h.fence, h.mode = nf, to
}

// verify runs the history check and the lock-set check and reports.
func (w *workload) verify(t *testing.T, perToken time.Duration) {
	t.Helper()
	res := w.hist.Check(perToken)
	t.Logf("history: %v", res)
	for _, s := range res.Illegal {
		t.Errorf("illegal history (invariants 1/2): %s", s)
	}
	if len(res.Unknown) > 0 {
		t.Logf("porcupine gave up on %d tokens within %v: %v", len(res.Unknown), perToken, res.Unknown)
	}
	ls := w.ls.Check()
	t.Logf("lock set: %v", ls)
	if !ls.OK() {
		t.Errorf("lock set: lost %v, duplicated %v, audit %v", ls.Lost, ls.Dup, ls.Audit)
	}
	t.Logf("ops: %d attempted, %d completed, %d failed, %d lost while held, %d converts, %d pauses (%d late writes refused, %d accepted)",
		w.n.attempted.Load(), w.n.completed.Load(), w.n.failed.Load(), w.n.lost.Load(), w.n.converted.Load(),
		w.n.pauses.Load(), w.n.lateRefused.Load(), w.n.lateAccepted.Load())
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, n := range w.errs {
		t.Logf("  %dx %s", n, k)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// runClients runs fn for clients 0..n-1 concurrently and waits.
func runClients(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); fn(i) }()
	}
	wg.Wait()
}

func tokenNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s/%d", prefix, i)
	}
	return out
}
