//go:build linux

package failover

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/wire"
)

// checker watches every grant the test's clients hold and is the fenced
// register their critical sections write to. It checks, in real time:
//
//   - invariant 1: no two conflicting holders consider their grants Valid
//     at the same instant (checked at every grant and every 20 ms);
//   - invariant 2: a grant that conflicts with earlier ones carries a
//     higher fence than all of them;
//   - the register never refuses an access from a holder that believes its
//     token Valid: an EX write is refused when its fence is below the
//     highest fence the register has seen, a PR read when its fence is below
//     the highest write's;
//   - invariant 3 for the long-held tokens: their Lost never closes and their
//     fence never changes.
type checker struct {
	mu       sync.Mutex // guards the fields below
	holders  map[string]map[*clientlib.Token]wire.Mode
	maxAny   map[string]uint64 // highest fence granted, any mode
	maxEx    map[string]uint64 // highest fence of an EX grant
	regMax   map[string]uint64 // register: highest fence of any access
	regMaxW  map[string]uint64 // register: highest fence of a write
	held     []*heldToken
	lostSeen map[*heldToken]bool
	invalid  map[*heldToken]time.Time // held tokens not Valid now, since when
	gaps     []validityGap            // stretches in which a held token was not Valid

	violations []string
	grants     int
	accesses   int
	skipped    int // accesses not made because the holder's token was not Valid
}

func newChecker() *checker {
	return &checker{
		holders: map[string]map[*clientlib.Token]wire.Mode{},
		maxAny:  map[string]uint64{}, maxEx: map[string]uint64{},
		regMax: map[string]uint64{}, regMaxW: map[string]uint64{},
		lostSeen: map[*heldToken]bool{},
		invalid:  map[*heldToken]time.Time{},
	}
}

// validityGap is a stretch of time in which a held token was not Valid
// (in jeopardy: its worker did not vouch for it).
type validityGap struct {
	from, to time.Time
	tok      *heldToken
}

func (c *checker) violate(format string, args ...any) {
	msg := time.Now().Format("15:04:05.000 ") + fmt.Sprintf(format, args...)
	if len(c.violations) < 100 {
		c.violations = append(c.violations, msg)
	}
}

// granted records a new grant of tok (not a reclaim) and checks
// invariants 1 and 2 against the other holders.
func (c *checker) granted(tok *clientlib.Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.grants++
	name, mode, fence := tok.Name(), tok.Mode(), tok.Fence()
	for h, hm := range c.holders[name] {
		if !wire.Compatible(hm, mode) && h.Valid() && tok.Valid() {
			c.violate("invariant 1: %s granted %v fence %#x while %v fence %#x is Valid", name, mode, fence, hm, h.Fence())
		}
	}
	if mode == wire.EX && fence <= c.maxAny[name] {
		c.violate("invariant 2: %s EX fence %#x not above %#x", name, fence, c.maxAny[name])
	}
	if mode != wire.EX && fence <= c.maxEx[name] {
		c.violate("invariant 2: %s %v fence %#x not above EX fence %#x", name, mode, fence, c.maxEx[name])
	}
	c.maxAny[name] = max(c.maxAny[name], fence)
	if mode == wire.EX {
		c.maxEx[name] = max(c.maxEx[name], fence)
	}
	if c.holders[name] == nil {
		c.holders[name] = map[*clientlib.Token]wire.Mode{}
	}
	c.holders[name][tok] = mode
}

// releasing forgets tok as a holder; call it before Release.
func (c *checker) releasing(tok *clientlib.Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.holders[tok.Name()], tok)
}

// access is one critical-section step under tok: an EX holder writes the
// register, a PR holder reads it, both fenced. It is made only if tok is
// Valid (checked under the register's lock, so that nothing can happen in
// between); a refusal of such an access is a violation.
func (c *checker) access(tok *clientlib.Token, mode wire.Mode, fence uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !tok.Valid() {
		c.skipped++
		return
	}
	c.accesses++
	name := tok.Name()
	if mode == wire.EX {
		if fence < c.regMax[name] {
			c.violate("register refused a write to %s with fence %#x (highest seen %#x) from a holder whose token is Valid",
				name, fence, c.regMax[name])
			return
		}
		c.regMaxW[name] = max(c.regMaxW[name], fence)
	} else if fence < c.regMaxW[name] {
		c.violate("register refused a %v read of %s with fence %#x (highest write %#x) from a holder whose token is Valid",
			mode, name, fence, c.regMaxW[name])
		return
	}
	c.regMax[name] = max(c.regMax[name], fence)
}

// scan checks that the Valid holders of each token are compatible, and
// that the long-held tokens are neither lost nor changed; each held token
// that is Valid also accesses the register.
func (c *checker) scan() {
	c.mu.Lock()
	for name, hs := range c.holders {
		if len(hs) < 2 {
			continue
		}
		var valid []*clientlib.Token
		for h := range hs {
			if h.Valid() {
				valid = append(valid, h)
			}
		}
		for i := range valid {
			for j := i + 1; j < len(valid); j++ {
				a, b := valid[i], valid[j]
				if !wire.Compatible(hs[a], hs[b]) {
					c.violate("invariant 1: %s held Valid as %v fence %#x and %v fence %#x at once", name, hs[a], a.Fence(), hs[b], b.Fence())
				}
			}
		}
	}
	held := c.held
	c.mu.Unlock()
	for _, h := range held {
		select {
		case <-h.tok.Lost():
			c.mu.Lock()
			if !c.lostSeen[h] {
				c.lostSeen[h] = true
				c.violate("invariant 3: held token %s (client %d, fence %#x) lost: %v", h.name, h.client, h.fence, h.tok.Err())
			}
			c.mu.Unlock()
			continue
		default:
		}
		if f := h.tok.Fence(); f != h.fence {
			c.mu.Lock()
			c.violate("held token %s changed fence from %#x to %#x", h.name, h.fence, f)
			c.mu.Unlock()
		}
		c.access(h.tok, h.mode, h.fence)
		valid, now := h.tok.Valid(), time.Now()
		c.mu.Lock()
		if since, ok := c.invalid[h]; ok && valid {
			delete(c.invalid, h)
			c.gaps = append(c.gaps, validityGap{since, now, h})
		} else if !ok && !valid {
			c.invalid[h] = now
		}
		c.mu.Unlock()
	}
}

// longestGap returns the longest stretch, overlapping [t0, t1], in which a
// held token was not Valid (one still open counts up to t1).
func (c *checker) longestGap(t0, t1 time.Time) (time.Duration, *heldToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var d time.Duration
	var tok *heldToken
	consider := func(from, to time.Time, h *heldToken) {
		if to.After(t0) && from.Before(t1) && to.Sub(from) > d {
			d, tok = to.Sub(from), h
		}
	}
	for _, g := range c.gaps {
		consider(g.from, g.to, g.tok)
	}
	for h, since := range c.invalid {
		consider(since, t1, h)
	}
	return d, tok
}

func (c *checker) report(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Logf("checker: %d grants, %d register accesses, %d skipped (holder not Valid)", c.grants, c.accesses, c.skipped)
	for _, v := range c.violations {
		t.Error(v)
	}
}

// heldToken is a token a client holds for the whole test.
type heldToken struct {
	client int
	name   string
	shard  uint32
	mode   wire.Mode
	fence  uint64
	tok    *clientlib.Token
}

// grantEv is one successful ACQUIRE of the cycling load.
type grantEv struct {
	at    time.Time // when Acquire returned
	took  time.Duration
	shard uint32
	fence uint64
}

// opErr is an operation of the load that returned an error.
type opErr struct {
	at    time.Time
	shard uint32
	op    string
	err   error
}

// load runs clients that hold tokens in every shard for the whole test and
// cycle EX and PR grants of other tokens in every shard.
type load struct {
	t       *testing.T
	start   time.Time
	shards  uint32
	chk     *checker
	clients []*clientlib.Client
	conns   []*tapConn
	logs    *proc.Buffer
	cancel  context.CancelFunc // set once the goroutines run
	wg      sync.WaitGroup
	stopped sync.Once

	mu          sync.Mutex // guards the fields below
	grants      []grantEv
	errs        []opErr
	heldRevokes int // REVOKEs for long-held tokens (nobody conflicts with them)
}

type loadConfig struct {
	seeds           []string
	keyFile         string // the client key file
	shards          uint32
	clients         int // default 4
	cyclersPerShard int // default 2, on different clients
	tokensPerShard  int // cycled tokens per shard; default 2
	opTimeout       time.Duration
}

// nameIn returns a token name with the given prefix that hashes to shard.
func nameIn(prefix string, shard, shards uint32) string {
	for i := 0; ; i++ {
		n := fmt.Sprintf("%s/%d", prefix, i)
		if wire.Shard([]byte(n), shards) == shard {
			return n
		}
	}
}

func startLoad(t *testing.T, start time.Time, cfg loadConfig) *load {
	t.Helper()
	if cfg.clients == 0 {
		cfg.clients = 4
	}
	if cfg.cyclersPerShard == 0 {
		cfg.cyclersPerShard = 2
	}
	if cfg.tokensPerShard == 0 {
		cfg.tokensPerShard = 2
	}
	if cfg.opTimeout == 0 {
		cfg.opTimeout = 15 * time.Second
	}
	l := &load{t: t, start: start, shards: cfg.shards, chk: newChecker(), logs: &proc.Buffer{Max: 256 << 10}}
	logger := slog.New(slog.NewTextHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Every client holds, in every shard, an EX token of its own and the
	// shard's shared PR token.
	heldNames := map[string]bool{} // read-only once the clients run
	for s := range cfg.shards {
		heldNames[nameIn("hs", s, cfg.shards)] = true
		for ci := range cfg.clients {
			heldNames[nameIn(fmt.Sprintf("h%d", ci), s, cfg.shards)] = true
		}
	}
	t.Cleanup(func() {
		l.stop()
		if t.Failed() {
			t.Logf("--- last client logs:\n%s", l.logs)
		}
	})
	for ci := range cfg.clients {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn := newTapConn(t)
		l.conns = append(l.conns, conn)
		c, err := clientlib.DialConfig(ctx, clientlib.Config{
			Seeds:      cfg.seeds,
			KeyFile:    cfg.keyFile,
			PacketConn: conn,
			// No token cache: the load measures the workers, when a shard
			// grants again after a failure and which worker answered; a
			// grant served from a client's cache answers neither.
			Logger: logger.With("client", ci),
			// Cyclers give their grants back within milliseconds anyway; a
			// REVOKE of a long-held token is a bug (nobody conflicts).
			OnRevoke: func(_ context.Context, tok *clientlib.Token, _ clientlib.Revocation) {
				if heldNames[tok.Name()] {
					l.mu.Lock()
					l.heldRevokes++
					l.mu.Unlock()
				}
			},
		})
		cancel()
		if err != nil {
			conn.Close()
			t.Fatalf("client %d: %v", ci, err)
		}
		l.clients = append(l.clients, c)
	}
	for ci, c := range l.clients {
		for s := range cfg.shards {
			for _, hm := range []struct {
				name string
				mode wire.Mode
			}{{nameIn(fmt.Sprintf("h%d", ci), s, cfg.shards), wire.EX}, {nameIn("hs", s, cfg.shards), wire.PR}} {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				tok, err := c.Acquire(ctx, hm.name, hm.mode)
				cancel()
				if err != nil {
					t.Fatalf("client %d: holding %s: %v", ci, hm.name, err)
				}
				l.chk.granted(tok)
				l.chk.held = append(l.chk.held, &heldToken{client: ci, name: hm.name, shard: s, mode: hm.mode, fence: tok.Fence(), tok: tok})
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for s := range cfg.shards {
		names := make([]string, cfg.tokensPerShard)
		for i := range names {
			names[i] = nameIn(fmt.Sprintf("c%d", i), s, cfg.shards)
		}
		for k := range cfg.cyclersPerShard {
			ci := (int(s) + k) % len(l.clients)
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				l.cycle(ctx, ci, s, names, cfg.opTimeout, rand.New(rand.NewPCG(uint64(s), uint64(k))))
			}()
		}
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				l.chk.scan()
			}
		}
	}()
	logf(t, start, "load running: %d clients, %d held tokens, %d cyclers", len(l.clients), len(l.chk.held),
		int(cfg.shards)*cfg.cyclersPerShard)
	return l
}

// cycle acquires one of names (EX or PR), accesses the register under it,
// and releases it, until ctx ends.
func (l *load) cycle(ctx context.Context, ci int, shard uint32, names []string, opTimeout time.Duration, rng *rand.Rand) {
	c := l.clients[ci]
	pause := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	for ctx.Err() == nil {
		name := names[rng.IntN(len(names))]
		mode := wire.EX
		if rng.IntN(10) < 4 {
			mode = wire.PR
		}
		actx, cancel := context.WithTimeout(ctx, opTimeout)
		began := time.Now()
		tok, err := c.Acquire(actx, name, mode)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.opError(shard, "acquire "+name, err)
			pause(50 * time.Millisecond)
			continue
		}
		fence := tok.Fence()
		l.mu.Lock()
		now := time.Now()
		l.grants = append(l.grants, grantEv{at: now, took: now.Sub(began), shard: shard, fence: fence})
		l.mu.Unlock()
		l.chk.granted(tok)
		for range 2 {
			l.chk.access(tok, mode, fence)
			if !pause(time.Millisecond) {
				break
			}
		}
		l.chk.releasing(tok)
		rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err = tok.Release(rctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			l.opError(shard, "release "+name, err)
		}
		pause(time.Duration(2+rng.IntN(8)) * time.Millisecond)
	}
}

func (l *load) opError(shard uint32, op string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, opErr{at: time.Now(), shard: shard, op: op, err: err})
}

// stop ends the load and closes the clients; safe to call twice.
func (l *load) stop() {
	l.stopped.Do(func() {
		if l.cancel != nil {
			l.cancel()
		}
		l.wg.Wait()
		for _, c := range l.clients {
			c.Close()
		}
		for _, c := range l.conns {
			c.Close()
		}
	})
}

// firstGrant returns the first grant after t0 in one of shards at an epoch
// above the one given for it.
func (l *load) firstGrant(t0 time.Time, shards map[uint32]uint32) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.grants {
		if g.at.After(t0) {
			if e, ok := shards[g.shard]; ok && wire.FenceEpoch(g.fence) > e {
				return g.at, true
			}
		}
	}
	return time.Time{}, false
}

// grantedIn reports which of shards have had a grant after t0 at an epoch
// above the one given.
func (l *load) grantedIn(t0 time.Time, shards map[uint32]uint32) map[uint32]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[uint32]bool{}
	for i := len(l.grants) - 1; i >= 0 && l.grants[i].at.After(t0); i-- {
		g := l.grants[i]
		if e, ok := shards[g.shard]; ok && wire.FenceEpoch(g.fence) > e {
			out[g.shard] = true
		}
	}
	return out
}

// grantsAfter returns the grants after t0.
func (l *load) grantsAfter(t0 time.Time) []grantEv {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := sort.Search(len(l.grants), func(i int) bool { return l.grants[i].at.After(t0) })
	return slices.Clone(l.grants[i:])
}

// slowest returns the longest Acquire that began after t0 and returned by
// t1 in a shard not in exclude, and its shard.
func (l *load) slowest(t0, t1 time.Time, exclude map[uint32]uint32) (time.Duration, uint32) {
	var d time.Duration
	var shard uint32
	for _, g := range l.grantsAfter(t0) {
		if _, ex := exclude[g.shard]; !ex && !g.at.After(t1) && g.at.Add(-g.took).After(t0) && g.took > d {
			d, shard = g.took, g.shard
		}
	}
	return d, shard
}

func (l *load) allErrors() []opErr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// heldIn returns the long-held tokens in shards.
func (l *load) heldIn(shards map[uint32]uint32) []*heldToken {
	var out []*heldToken
	for _, h := range l.chk.held {
		if _, ok := shards[h.shard]; ok {
			out = append(out, h)
		}
	}
	return out
}

// waitReclaimed waits until every token of hs is vouched for beyond
// after (ValidUntil later than that: a live worker renewed it, so it was
// reclaimed if its worker died) and returns when that happened.
func waitReclaimed(hs []*heldToken, after time.Time, within time.Duration) (time.Time, []*heldToken) {
	deadline := time.Now().Add(within)
	pending := slices.Clone(hs)
	for {
		pending = slices.DeleteFunc(pending, func(h *heldToken) bool { return h.tok.ValidUntil().After(after) })
		now := time.Now()
		if len(pending) == 0 || now.After(deadline) {
			return now, pending
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *load) report(t *testing.T) {
	t.Helper()
	l.chk.report(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("load: %d grants, %d operation errors", len(l.grants), len(l.errs))
	if l.heldRevokes > 0 {
		t.Errorf("%d REVOKEs of long-held tokens, which nobody conflicts with", l.heldRevokes)
	}
}

func describeErrs(start time.Time, errs []opErr) string {
	var b strings.Builder
	for i, e := range errs {
		if i == 20 {
			fmt.Fprintf(&b, "\n  ... and %d more", len(errs)-20)
			break
		}
		fmt.Fprintf(&b, "\n  [%6.2fs] shard %d: %s: %v", e.at.Sub(start).Seconds(), e.shard, e.op, e.err)
	}
	return b.String()
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
