// Package load is the workload of the chaos suite, importable so that
// every suite that injects faults (in-process, real processes, separate
// hosts) drives clients the same way and judges them by the same checks:
// clients acquire, hold, convert and release tokens in random modes and
// ranges, writers read-modify-write a fenced lock set under their grants,
// and every operation goes into a history that check.History judges with
// porcupine.
package load

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/wire"
)

// Config shapes the operations of one client.
type Config struct {
	Tokens    []string
	Ops       int           // operations per client (bounded also by until)
	Until     time.Time     // stop starting operations after this
	OpTimeout time.Duration // per Acquire/Release
	Modes     []wire.Mode   // drawn uniformly; default EX
	Ranges    bool          // half the acquires take a random byte range
	Grow      bool          // with Ranges, half the ranged acquires ask with clientlib.Grow: the history records the range granted
	Converts  bool          // holders sometimes convert up or down
	Batch     bool          // a quarter of the operations take 2-3 whole tokens at once with AcquireBatch
	Think     time.Duration // the critical section sleeps [0, think)
	Register  bool          // writers read-modify-write the lock set, readers read it
	// pause, if set, is called in some critical sections after the read and
	// before the write, to model a process pause (see scenario 2).
	Pause func(rng *rand.Rand) bool
	// Stop, once closed, stops the client from starting operations; the
	// one in progress finishes (ending ctx instead cancels it, and counts
	// it failed).
	Stop <-chan struct{}
	// Redial, if set, replaces a client whose session expired.
	Redial func() *clientlib.Client
}

// Counters count what a workload did.
type Counters struct {
	Attempted, Completed, Failed atomic.Int64
	Lost, Converted              atomic.Int64
	Revoked                      atomic.Int64 // released on revocation while held: not lost
	Pauses, LateRefused          atomic.Int64
	LateAccepted                 atomic.Int64
	Cached                       atomic.Int64 // acquires served from the client's token cache
	Grown                        atomic.Int64 // acquires granted a larger range than asked (Config.Grow)
	Batched                      atomic.Int64 // grants taken by AcquireBatch (Config.Batch)
}

// Workload drives clients and records what they see.
type Workload struct {
	Hist *check.History
	LS   *check.LockSet
	N    Counters

	mu   sync.Mutex     // guards errs
	errs map[string]int // operation errors by kind, for the report
}

// opError counts a failed operation by the error's text, numbers and
// quoted names removed.
func (w *Workload) opError(op string, err error) {
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

// New returns an empty workload.
func New() *Workload {
	return &Workload{Hist: check.NewHistory(), LS: check.NewLockSet()}
}

// RandRange returns a byte range on a small grid, so that ranges overlap
// often, or the whole token.
func RandRange(rng *rand.Rand) (uint64, uint64) {
	if rng.IntN(2) == 0 {
		return 0, 0
	}
	s := uint64(rng.IntN(8)) * 1024
	return s, s + uint64(1+rng.IntN(3))*1024
}

// Holding is one grant the workload holds, with its history bookkeeping.
// RunClient makes its own; a scenario that takes a grant by hand records
// it with Hold.
type Holding struct {
	w         *Workload
	client    int
	tok       *clientlib.Token
	name      string
	fence     uint64
	mode      wire.Mode
	from      uint64
	to        uint64
	lastValid int64 // history time just before the last Valid() that said yes
}

// Hold records a grant of tok (in mode, whole token) that client acquired
// at history time call and returned at ret.
func (w *Workload) Hold(client int, tok *clientlib.Token, name string, mode wire.Mode, call, ret int64) *Holding {
	h := &Holding{w: w, client: client, tok: tok, name: name, fence: tok.Fence(), mode: mode, lastValid: ret}
	w.Hist.Add(check.Input{Kind: check.OpAcquire, Client: client, Token: name, Mode: mode}, check.Output{Fence: h.fence}, call, ret)
	return h
}

// Valid checks the token and advances lastValid when it is valid.
func (h *Holding) Valid() bool {
	t := h.w.Hist.Now()
	if h.tok.Valid() {
		h.lastValid = t
		return true
	}
	return false
}

// End records the end of the grant: it stopped being relied on at
// lastValid; the release took effect by now if err is nil, else whenever.
func (h *Holding) End(err error) {
	ret := check.Forever
	if err == nil {
		ret = h.w.Hist.Now()
	}
	h.w.Hist.Add(check.Input{Kind: check.OpRelease, Client: h.client, Token: h.name, Fence: h.fence}, check.Output{}, h.lastValid, ret)
}

// RunClient runs cfg.Ops operations of client id on cl.
func (w *Workload) RunClient(ctx context.Context, id int, cl *clientlib.Client, rng *rand.Rand, cfg Config) {
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = 5 * time.Second
	}
	if len(cfg.Modes) == 0 {
		cfg.Modes = []wire.Mode{wire.EX}
	}
	// The fences this client was granted, per token: an acquire that
	// returns one of them again was served from the client's token cache
	// (check.Input.Cached), which the model allows only while nothing that
	// conflicts with it was granted since.
	mine := map[string]map[uint64]bool{}
	for op := 0; op < cfg.Ops && ctx.Err() == nil && (cfg.Until.IsZero() || time.Now().Before(cfg.Until)) && !stopped(cfg.Stop); op++ {
		w.N.Attempted.Add(1)
		if cfg.Batch && len(cfg.Tokens) >= 3 && rng.IntN(4) == 0 {
			if !w.batch(ctx, id, cl, rng, cfg, mine) && cfg.Redial != nil {
				if c := cfg.Redial(); c != nil {
					cl = c
				}
			}
			continue
		}
		name := cfg.Tokens[rng.IntN(len(cfg.Tokens))]
		mode := cfg.Modes[rng.IntN(len(cfg.Modes))]
		var opts []clientlib.Option
		var start, end uint64
		if cfg.Ranges {
			start, end = RandRange(rng)
			opts = append(opts, clientlib.Range(start, end))
			if cfg.Grow && rng.IntN(2) == 0 {
				opts = append(opts, clientlib.Grow())
			}
		}
		actx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
		call := w.Hist.Now()
		tok, err := cl.Acquire(actx, name, mode, opts...)
		ret := w.Hist.Now()
		cancel()
		if err != nil {
			w.N.Failed.Add(1)
			w.opError("acquire", err)
			if cfg.Redial != nil && (errors.Is(err, clientlib.ErrSessionExpired) || errors.Is(err, clientlib.ErrClosed)) {
				if c := cfg.Redial(); c != nil {
					cl = c
				}
			}
			SleepCtx(ctx, 10*time.Millisecond) // no spinning on a persistent error
			continue
		}
		fence := tok.Fence()
		cached := seen(mine, name, fence)
		if s, e := tok.Range(); !cached && cfg.Grow && (s != start || e != end) && !wire.IsWhole(start, end) {
			// Grown: the model and the critical section take the range
			// granted, which covers the one asked.
			start, end = s, e
			w.N.Grown.Add(1)
		}
		if cached {
			// The grant as the cache kept it: its mode covers the one
			// asked, its range (the whole token) the range asked.
			mode = tok.Mode()
			start, end = tok.Range()
			w.N.Cached.Add(1)
		}
		h := &Holding{w: w, client: id, tok: tok, name: name, fence: fence, mode: mode, from: start, to: end,
			// Reliance starts with the first Valid check: a revocation
			// handler may give the grant back before Acquire returns.
			lastValid: call}
		w.Hist.Add(check.Input{Kind: check.OpAcquire, Client: id, Token: name, Mode: mode, Start: start, End: end, Cached: cached},
			check.Output{Fence: h.fence}, call, ret)
		w.critical(ctx, h, rng, cfg)
		if cfg.Converts && rng.IntN(3) == 0 && h.Valid() {
			w.convert(ctx, h, rng, cfg)
			mine[name][h.fence] = true
		}
		// Given back on another client's request (the library's default),
		// or lost while held (lease ran out, session expired): release
		// tells.
		w.release(ctx, h, cfg)
		w.N.Completed.Add(1)
	}
}

// seen reports whether this client was granted fence on name before (an
// acquire that returns it again was served from the token cache), and
// notes it.
func seen(mine map[string]map[uint64]bool, name string, fence uint64) bool {
	if mine[name] == nil {
		mine[name] = map[uint64]bool{}
	}
	old := mine[name][fence]
	mine[name][fence] = true
	return old
}

// release gives h back, unless the client lost it or gave it back on a
// revocation meanwhile, and records the end of the grant.
func (w *Workload) release(ctx context.Context, h *Holding, cfg Config) {
	if err := h.tok.Err(); err != nil {
		if errors.Is(err, clientlib.ErrRevoked) {
			w.N.Revoked.Add(1)
		} else {
			w.N.Lost.Add(1)
			w.opError("held", err)
		}
		h.End(errors.New("lost"))
		return
	}
	h.Valid()
	rctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	err := h.tok.Release(rctx)
	cancel()
	if err != nil {
		w.opError("release", err)
	}
	h.End(err)
}

// batch takes 2 or 3 distinct whole tokens with one AcquireBatch, runs the
// critical section under each grant, and releases them. Each grant goes
// into the history as an acquire over the batch's whole call: the batch is
// all-or-none, so the client relies on none of them before it returns. It
// reports false when the session is gone (the caller redials).
func (w *Workload) batch(ctx context.Context, id int, cl *clientlib.Client, rng *rand.Rand, cfg Config, mine map[string]map[uint64]bool) bool {
	pick := rng.Perm(len(cfg.Tokens))[:2+rng.IntN(2)]
	reqs := make([]clientlib.BatchRequest, len(pick))
	for k, i := range pick {
		reqs[k] = clientlib.BatchRequest{Name: cfg.Tokens[i], Mode: cfg.Modes[rng.IntN(len(cfg.Modes))]}
	}
	actx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	call := w.Hist.Now()
	toks, err := cl.AcquireBatch(actx, reqs)
	ret := w.Hist.Now()
	cancel()
	if err != nil {
		w.N.Failed.Add(1)
		w.opError("batch", err)
		SleepCtx(ctx, 10*time.Millisecond)
		return !errors.Is(err, clientlib.ErrSessionExpired) && !errors.Is(err, clientlib.ErrClosed)
	}
	hs := make([]*Holding, len(toks))
	for k, tok := range toks {
		r := reqs[k]
		mode, fence := r.Mode, tok.Fence()
		start, end := uint64(0), uint64(0)
		cached := seen(mine, r.Name, fence)
		if cached {
			// A shard with a cached name, or whose batch met a
			// conflict, is taken by one Acquire per token, which the
			// cache may serve: the grant as it was kept.
			mode = tok.Mode()
			start, end = tok.Range()
			w.N.Cached.Add(1)
		}
		hs[k] = &Holding{w: w, client: id, tok: tok, name: r.Name, fence: fence, mode: mode, from: start, to: end, lastValid: call}
		w.Hist.Add(check.Input{Kind: check.OpAcquire, Client: id, Token: r.Name, Mode: mode, Start: start, End: end, Cached: cached, Batch: true},
			check.Output{Fence: fence}, call, ret)
		w.N.Batched.Add(1)
	}
	for _, h := range hs {
		w.critical(ctx, h, rng, cfg)
	}
	for _, h := range hs {
		w.release(ctx, h, cfg)
	}
	w.N.Completed.Add(1)
	return true
}

// Cells returns the lock-set registers a grant of [start, end) covers: one
// per 1 KiB cell of the range grid RandRange draws from (the whole token
// covers them all), so that holders of disjoint ranges use disjoint
// registers.
func Cells(name string, start, end uint64) []string {
	if wire.IsWhole(start, end) {
		start, end = 0, GridCells*1024
	}
	var out []string
	for c := start / 1024; c < min(end, GridCells*1024)/1024; c++ {
		out = append(out, fmt.Sprintf("%s#%d", name, c))
	}
	return out
}

// GridCells is the number of 1 KiB cells RandRange's ranges fall in.
const GridCells = 11

// critical is the critical section under h: writers (PW, EX) do the lock
// set's read-modify-write on every cell of their range, protected readers
// (PR) read them; CR, CW and NL are unprotected modes and touch nothing.
// Each access is made only while the token was Valid at its start, as an
// application should.
func (w *Workload) critical(ctx context.Context, h *Holding, rng *rand.Rand, cfg Config) {
	think := func() {
		if cfg.Think > 0 {
			SleepCtx(ctx, time.Duration(rng.Int64N(int64(cfg.Think))))
		}
	}
	if !h.Valid() {
		return
	}
	writer := h.mode == wire.PW || h.mode == wire.EX
	if !cfg.Register || (!writer && h.mode != wire.PR) {
		think()
		h.Valid()
		return
	}
	for k, reg := range Cells(h.name, h.from, h.to) {
		if k > 0 && !h.Valid() {
			return
		}
		if !writer {
			w.LS.Register(reg).Read(h.fence)
			if k == 0 {
				think()
			}
			continue
		}
		paused := false
		_, err := w.LS.Update(reg, h.fence, func() {
			if k > 0 {
				return
			}
			think()
			if cfg.Pause != nil && cfg.Pause(rng) {
				// The process was paused: it resumes and writes on the
				// strength of its old check, as a stopped process would.
				paused = true
				w.N.Pauses.Add(1)
				return
			}
			h.Valid()
		})
		if paused {
			if errors.Is(err, check.ErrStaleFence) {
				w.N.LateRefused.Add(1)
			} else if err == nil {
				w.N.LateAccepted.Add(1)
			}
		}
	}
	h.Valid()
}

// convert changes h's mode up or down and records it.
func (w *Workload) convert(ctx context.Context, h *Holding, rng *rand.Rand, cfg Config) {
	to := cfg.Modes[rng.IntN(len(cfg.Modes))]
	if to == h.mode {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.OpTimeout)
	call := w.Hist.Now()
	// An upgrade waits at most 100 ms: two holders upgrading against each
	// other deadlock until one gives up (holders here do not answer
	// revocations).
	err := h.tok.Convert(cctx, to, clientlib.Wait(100*time.Millisecond))
	ret := w.Hist.Now()
	cancel()
	if err != nil {
		w.opError("convert", err)
		return // unchanged, or lost (then ended by the caller)
	}
	nf := h.tok.Fence()
	w.Hist.Add(check.Input{Kind: check.OpConvert, Client: h.client, Token: h.name, Fence: h.fence, Mode: to},
		check.Output{Fence: nf}, call, ret)
	w.N.Converted.Add(1)
	h.fence, h.mode = nf, to
}

// Verify runs the history check and the lock-set check and reports.
func (w *Workload) Verify(t testing.TB, perToken time.Duration) {
	t.Helper()
	res := w.Hist.Check(perToken)
	t.Logf("history: %v", res)
	for _, s := range res.Illegal {
		t.Errorf("illegal history (invariants 1/2): %s", s)
	}
	if len(res.Unknown) > 0 {
		t.Logf("porcupine gave up on %d tokens within %v: %v", len(res.Unknown), perToken, res.Unknown)
	}
	ls := w.LS.Check()
	t.Logf("lock set: %v", ls)
	if !ls.OK() {
		t.Errorf("lock set: lost %v, duplicated %v, audit %v", ls.Lost, ls.Dup, ls.Audit)
	}
	t.Logf("ops: %d attempted, %d completed (%d from a token cache, %d grown, %d grants by batch), %d failed, %d released on revocation, %d lost while held, %d converts, %d pauses (%d late writes refused, %d accepted)",
		w.N.Attempted.Load(), w.N.Completed.Load(), w.N.Cached.Load(), w.N.Grown.Load(), w.N.Batched.Load(), w.N.Failed.Load(), w.N.Revoked.Load(), w.N.Lost.Load(), w.N.Converted.Load(),
		w.N.Pauses.Load(), w.N.LateRefused.Load(), w.N.LateAccepted.Load())
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, n := range w.errs {
		t.Logf("  %dx %s", n, k)
	}
}

func stopped(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// SleepCtx sleeps for d or until ctx ends; it reports whether ctx is still
// alive.
func SleepCtx(ctx context.Context, d time.Duration) bool {
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

// RunClients runs fn for clients 0..n-1 concurrently and waits.
func RunClients(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); fn(i) }()
	}
	wg.Wait()
}

// TokenNames returns n names prefix/0 .. prefix/n-1.
func TokenNames(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s/%d", prefix, i)
	}
	return out
}
