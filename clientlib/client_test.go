package clientlib

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokend/tokend/testkit/allocs"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// poll calls check every 5 ms until it returns true or d passes, and
// reports whether it did. It is for conditions that no event announces
// (the fake's state, a client's fields); the package's tests poll only
// through it (eventually, always; Eventually and Always in export_test.go).
func poll(d time.Duration, check func() bool) bool {
	end := time.Now().Add(d)
	for !check() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // the poll interval: real time is the point
	}
	return true
}

// eventually waits until cond holds, failing the test after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// always checks that cond holds throughout d, failing the test as soon as
// it does not.
func always(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	failed := false
	poll(d, func() bool {
		failed = !cond()
		return failed
	})
	if failed {
		t.Fatalf("%s stopped holding", what)
	}
}

// keepalives counts the KEEPALIVEs the fake workers have seen from c.
func keepalives(fc *fakeCluster, c *Client) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	n := 0
	for _, s := range fc.seen {
		if s.typ == wire.TypeKeepalive && s.sess == c.Session() {
			n++
		}
	}
	return n
}

func waitClosed(t testing.TB, ch <-chan struct{}, d time.Duration, what string) time.Time {
	t.Helper()
	select {
	case <-ch:
		return time.Now()
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	return time.Time{}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestAcquireRelease(t *testing.T) {
	fc := newFakeCluster(t, 1, fakeConfig{})
	c := fc.dial(t, Config{}) // no token cache: every release reaches the worker
	ctx := ctxT(t, 5*time.Second)

	tok, err := c.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Name() != "a" || tok.Mode() != wire.EX || wire.FenceEpoch(tok.Fence()) != 1 || wire.FenceSeq(tok.Fence()) != 1 {
		t.Fatalf("token %q %v fence %#x", tok.Name(), tok.Mode(), tok.Fence())
	}
	if s, e := tok.Range(); s != 0 || e != wire.WholeEnd {
		t.Fatalf("range [%d, %d), want the whole token", s, e)
	}
	if !tok.Valid() || time.Until(tok.ValidUntil()) < time.Second || isClosed(tok.Lost()) || tok.Err() != nil {
		t.Fatalf("fresh token: valid %v until %v lost %v err %v", tok.Valid(), tok.ValidUntil(), isClosed(tok.Lost()), tok.Err())
	}
	if _, ok := tok.Value(); ok {
		t.Fatal("value valid on a token that never had one")
	}
	if gs := fc.grants(0, "a"); len(gs) != 1 || gs[0].fence != tok.Fence() || gs[0].sess != c.Session() {
		t.Fatalf("worker grants %+v", gs)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "a"); len(gs) != 0 {
		t.Fatalf("grants after release: %+v", gs)
	}
	if tok.Valid() || !errors.Is(tok.Err(), ErrNotHeld) || isClosed(tok.Lost()) {
		t.Fatalf("released token: valid %v err %v lost %v", tok.Valid(), tok.Err(), isClosed(tok.Lost()))
	}
	if err := tok.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second release: %v, want ErrNotHeld", err)
	}

	tok2, err := c.Acquire(ctx, "a", wire.PR, Range(10, 20))
	if err != nil {
		t.Fatal(err)
	}
	if tok2.Fence() <= tok.Fence() {
		t.Fatalf("fence did not grow: %#x then %#x", tok.Fence(), tok2.Fence())
	}
	if s, e := tok2.Range(); s != 10 || e != 20 {
		t.Fatalf("range [%d, %d), want [10, 20)", s, e)
	}
	if _, err := c.Acquire(ctx, "", wire.EX); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("empty name: %v", err)
	}
	if _, err := c.Acquire(ctx, "a", wire.Mode(9)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("bad mode: %v", err)
	}

	// Close gives back what is held and closes the session.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "a"); len(gs) != 0 {
		t.Fatalf("grants after Close: %+v", gs)
	}
	waitClosed(t, tok2.Lost(), time.Second, "Lost after Close")
	if !errors.Is(tok2.Err(), ErrClosed) {
		t.Fatalf("err after Close: %v", tok2.Err())
	}
	if _, err := c.Acquire(ctx, "a", wire.EX); !errors.Is(err, ErrClosed) {
		t.Fatalf("acquire after Close: %v", err)
	}
}

func TestTryConflict(t *testing.T) {
	fc := newFakeCluster(t, 2, fakeConfig{})
	// Without the cache: c1's cached grant would go on conflicting with a
	// Try (TestCachedGrantConflictsWithTry).
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	t1, err := c1.Acquire(ctx, "t", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Acquire(ctx, "t", wire.PR, Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("try: %v, want ErrConflict", err)
	}
	if _, err := c2.Acquire(ctx, "t", wire.EX, Wait(0)); !errors.Is(err, ErrConflict) {
		t.Fatalf("wait(0): %v, want ErrConflict", err)
	}
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Acquire(ctx, "t", wire.PR, Try()); err != nil {
		t.Fatal(err)
	}
}

func TestValueAndConvert(t *testing.T) {
	fc := newFakeCluster(t, 3, fakeConfig{})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	w, err := c.Acquire(ctx, "v", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Release(ctx, SetValue([]byte("hello"))); err != nil {
		t.Fatal(err)
	}
	r, err := c.Acquire(ctx, "v", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := r.Value(); !ok || string(v) != "hello" {
		t.Fatalf("value %q %v", v, ok)
	}
	if err := r.Convert(ctx, wire.NL, SetValue([]byte("x"))); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("value set by a reader: %v", err)
	}
	f := r.Fence()
	if err := r.Convert(ctx, wire.EX); err != nil {
		t.Fatal(err)
	}
	if r.Mode() != wire.EX || r.Fence() <= f {
		t.Fatalf("upgrade: mode %v fence %#x (was %#x)", r.Mode(), r.Fence(), f)
	}
	f = r.Fence()
	if err := r.Convert(ctx, wire.PR, SetValue([]byte("bye"))); err != nil {
		t.Fatal(err)
	}
	if r.Mode() != wire.PR || r.Fence() != f {
		t.Fatalf("downgrade: mode %v fence %#x (was %#x)", r.Mode(), r.Fence(), f)
	}
	// Another reader blocks an upgrade.
	c2 := fc.dial(t, Config{})
	if _, err := c2.Acquire(ctx, "v", wire.PR); err != nil {
		t.Fatal(err)
	}
	if err := r.Convert(ctx, wire.EX, Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting upgrade: %v", err)
	}
	if r.Mode() != wire.PR || r.Fence() != f || !r.Valid() {
		t.Fatal("a refused upgrade changed the token")
	}
}

// TestLossyNetwork runs acquire/release cycles of two clients over a network
// that drops 30 % and duplicates 20 % of datagrams, and checks the client's
// side of at-most-once: ids never reused for another request, ack <= id (the
// wire codec), every request applied at most once, nothing left unfinished.
func TestLossyNetwork(t *testing.T) {
	fc := newFakeCluster(t, 42, fakeConfig{workers: 2})
	for s := uint32(0); s < 8; s++ {
		fc.setOwner(s, 1, 1, false) // half the shards on each worker
	}
	fc.net.SetDefault(faultnet.Rule{Drop: 0.3, Duplicate: 0.2})
	var cs []*Client
	for range 2 {
		cs = append(cs, fc.dial(t, Config{Seeds: []string{fc.addr(0), fc.addr(1)}, RTOMax: 100 * time.Millisecond}))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 12 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				name := fmt.Sprintf("c%d/%d", i, j%5)
				mode := wire.EX
				if j%3 == 0 {
					name, mode = "shared", wire.PR
				}
				tok, err := c.Acquire(ctx, name, mode)
				if err == nil {
					if !tok.Valid() {
						err = fmt.Errorf("%s: not valid right after the grant", name)
					} else {
						err = tok.Release(ctx)
					}
				}
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	fc.mu.Lock()
	for k, n := range fc.applied {
		if n > 1 {
			t.Errorf("request %d of session %#x applied %d times", k.req, k.sess, n)
		}
	}
	seen := len(fc.seen)
	fc.mu.Unlock()
	st := fc.net.Stats()
	t.Logf("%d datagrams at the workers; network: %+v", seen, st)
	if st.Dropped == 0 || st.Duplicated == 0 {
		t.Fatal("the network injected no faults")
	}
	for _, c := range cs {
		c.mu.Lock()
		for _, cl := range c.pending {
			if cl.typ != wire.TypeKeepalive && cl.typ != wire.TypeMapRequest {
				t.Errorf("request %d (%v) still unfinished", cl.id, cl.typ)
			}
		}
		c.mu.Unlock()
		if n := len(c.slots); n != 0 {
			t.Errorf("%d in-flight slots still taken", n)
		}
	}
}

// TestRevokeDefaultRelease: a waiter makes the worker revoke the holder; the
// default handler releases, the waiter gets GRANT_ASYNC.
func TestRevokeDefaultRelease(t *testing.T) {
	fc := newFakeCluster(t, 4, fakeConfig{})
	c1 := fc.dial(t, Config{})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	t1, err := c1.Acquire(ctx, "x", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := c2.Acquire(ctx, "x", wire.EX) // queued, revoke, release, async grant
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, t1.Lost(), time.Second, "the revoked token's Lost")
	if !errors.Is(t1.Err(), ErrRevoked) || t1.Valid() {
		t.Fatalf("revoked token: err %v valid %v", t1.Err(), t1.Valid())
	}
	if t2.Fence() <= t1.Fence() || !t2.Valid() {
		t.Fatalf("async grant: fence %#x (holder had %#x) valid %v", t2.Fence(), t1.Fence(), t2.Valid())
	}
	if gs := fc.grants(0, "x"); len(gs) != 1 || gs[0].sess != c2.Session() {
		t.Fatalf("worker grants %+v", gs)
	}
}

// TestRevokeCallback: the application's handler sees each (fence, wanted,
// range) once, however often the REVOKE comes, and may downgrade.
func TestRevokeCallback(t *testing.T) {
	fc := newFakeCluster(t, 5, fakeConfig{})
	type call struct {
		t      *Token
		wanted wire.Mode
	}
	calls := make(chan call, 10)
	c := fc.dial(t, Config{OnRevoke: func(ctx context.Context, t *Token, r Revocation) {
		wanted := r.Wanted
		calls <- call{t, wanted}
		if wanted == wire.NL {
			_ = t.Release(ctx)
		} else {
			_ = t.Convert(ctx, wanted)
		}
	}})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "y", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	// The same revocation twice (as after a new owner restarted its sequence).
	fc.sendRevoke(0, c.Session(), "y", f, wire.PR)
	fc.sendRevoke(0, c.Session(), "y", f, wire.PR)
	select {
	case got := <-calls:
		if got.t != tok || got.wanted != wire.PR {
			t.Fatalf("handler called with %v wanted %v", got.t.Name(), got.wanted)
		}
	case <-time.After(time.Second):
		t.Fatal("OnRevoke not called")
	}
	eventually(t, time.Second, "downgrade to PR", func() bool { return tok.Mode() == wire.PR })
	if tok.Fence() != f {
		t.Fatal("a downgrade changed the fence")
	}
	eventually(t, time.Second, "REVOKEs acknowledged", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return len(fc.workers[0].revs) == 0
	})
	select {
	case got := <-calls:
		t.Fatalf("handler called twice for one revocation (wanted %v)", got.wanted)
	case <-time.After(100 * time.Millisecond):
	}
	fc.sendRevoke(0, c.Session(), "y", f, wire.NL)
	select {
	case got := <-calls:
		if got.wanted != wire.NL {
			t.Fatalf("wanted %v, want NL", got.wanted)
		}
	case <-time.After(time.Second):
		t.Fatal("OnRevoke not called for the stronger revocation")
	}
	eventually(t, time.Second, "release", func() bool { return len(fc.grants(0, "y")) == 0 })
}

// TestRevokeUnknownFence: a REVOKE for a fence the client does not hold is
// acknowledged and answered with RELEASE of that fence (SPEC.md 12).
// TestRevokeRacingGrantAsync: when a holder releases, the worker sends the
// next waiter its GRANT_ASYNC and, as a third client waits too, the REVOKE
// of that fresh grant, back to back. The client reads the REVOKE before
// the waiting Acquire has taken the grant; it must hand it over as soon as
// the grant is taken, not when the worker retransmits it (which this fake
// never does).
func TestRevokeRacingGrantAsync(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{noRevokeRTX: true})
	revoked := make(chan uint64, 4)
	onRevoke := func(_ context.Context, tok *Token, _ Revocation) { revoked <- tok.Fence() }
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	c2 := fc.dial(t, Config{OnRevoke: onRevoke})
	c3 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	ctx := ctxT(t, 10*time.Second)
	for round := range 20 {
		name := fmt.Sprintf("race/%d", round)
		t1, err := c1.Acquire(ctx, name, wire.EX)
		if err != nil {
			t.Fatal(err)
		}
		got2, got3 := make(chan *Token, 1), make(chan *Token, 1)
		go func() {
			tok, err := c2.Acquire(ctx, name, wire.EX)
			if err != nil {
				t.Error(err)
			}
			got2 <- tok
		}()
		eventually(t, 5*time.Second, "c2 queued", func() bool { return fc.waiters(0, name) == 1 })
		go func() {
			tok, err := c3.Acquire(ctx, name, wire.EX)
			if err != nil {
				t.Error(err)
			}
			got3 <- tok
		}()
		eventually(t, 5*time.Second, "c3 queued", func() bool { return fc.waiters(0, name) == 2 })
		if err := t1.Release(ctx); err != nil {
			t.Fatal(err)
		}
		t2 := <-got2
		if t2 == nil {
			t.FailNow()
		}
		select {
		case f := <-revoked:
			if f != t2.Fence() {
				t.Fatalf("round %d: revoked fence %#x, c2 holds %#x", round, f, t2.Fence())
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the REVOKE that came with the grant was never handed to the application", round)
		}
		if err := t2.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if t3 := <-got3; t3 == nil {
			t.FailNow()
		} else if err := t3.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRevokeUnknownFence(t *testing.T) {
	fc := newFakeCluster(t, 6, fakeConfig{})
	c := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {
		t.Error("OnRevoke called for a fence the client does not hold")
	}})
	stray := wire.MakeFence(1, 999)
	fc.sendRevoke(0, c.Session(), "z", stray, wire.NL)
	eventually(t, time.Second, "RELEASE of the stray fence and REVOKE_ACK", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, f := range fc.releases {
			if f == stray {
				return len(fc.workers[0].revs) == 0
			}
		}
		return false
	})
}

// TestRedirect: a stale map sends a request to the old owner, which answers
// NOT_OWNER; the client follows the hint, or refreshes its map.
func TestRedirect(t *testing.T) {
	fc := newFakeCluster(t, 7, fakeConfig{workers: 2})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	sb := wire.Shard([]byte("b"), fc.cfg.shardCount)
	sc := wire.Shard([]byte("c"), fc.cfg.shardCount)
	if sb == sc {
		t.Fatal("pick names in different shards")
	}
	fc.setOwner(sb, 1, 2, false)
	tb, err := c.Acquire(ctx, "b", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(1, "b"); len(gs) != 1 || gs[0].fence != tb.Fence() || wire.FenceEpoch(tb.Fence()) != 2 {
		t.Fatalf("grant at the new owner: %+v, token fence %#x", gs, tb.Fence())
	}
	// The reply's map version makes the client refresh its map.
	eventually(t, time.Second, "map refresh", func() bool { return c.mapVer.Load() == 2 })

	// Without a hint, the client refreshes the map and goes to the owner.
	fc.mu.Lock()
	fc.owner[sc], fc.epoch[sc] = 1, 3
	fc.mapVersion++
	fc.workers[0].tokens = map[string]*fakeToken{}
	fc.mu.Unlock()
	fc.noHints(true)
	tc, err := c.Acquire(ctx, "c", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(1, "c"); len(gs) != 1 || gs[0].fence != tc.Fence() {
		t.Fatalf("grant at the owner: %+v", gs)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.notOwner < 2 {
		t.Fatalf("%d NOT_OWNER answers; the test did not exercise redirects", fc.notOwner)
	}
}

// TestMapPagination: a map served three runs per reply is assembled from
// several MAP requests, and every token request goes straight to its owner.
func TestMapPagination(t *testing.T) {
	fc := newFakeCluster(t, 8, fakeConfig{workers: 2, shardCount: 64, runsPerPage: 3})
	for s := uint32(0); s < 64; s++ {
		fc.setOwner(s, int(s/4)%2, 1+s/8, false) // 16 runs
	}
	c := fc.dial(t, Config{})
	fc.mu.Lock()
	reqs := fc.mapRequests
	fc.mu.Unlock()
	if reqs < 6 {
		t.Fatalf("%d MAP requests for 16 runs at 3 per page", reqs)
	}
	c.mu.Lock()
	for s := uint32(0); s < 64; s++ {
		rt, ok := c.dm.lookup(s)
		if !ok || rt.addr.String() != fc.addr(int(s/4)%2) || rt.epoch != 1+s/8 {
			t.Errorf("shard %d: route %+v %v", s, rt, ok)
		}
	}
	c.mu.Unlock()
	ctx := ctxT(t, 5*time.Second)
	for i := range 20 {
		if _, err := c.Acquire(ctx, fmt.Sprintf("p%d", i), wire.PR); err != nil {
			t.Fatal(err)
		}
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.notOwner != 0 {
		t.Fatalf("%d NOT_OWNER answers with a complete map", fc.notOwner)
	}
}

// TestLostWhenWorkerSilent: the worker goes silent; the token goes into
// jeopardy at its deadline and is declared lost at deadline + grace − margin,
// before the worker could grant it to anyone else.
func TestLostWhenWorkerSilent(t *testing.T) {
	fc := newFakeCluster(t, 9, fakeConfig{workerTTL: 400 * time.Millisecond, grace: 300 * time.Millisecond})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "l", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "two keepalives", func() bool { return keepalives(fc, c) >= 2 })
	fc.setSilent(0, true)
	fc.mu.Lock()
	lastVouch := fc.workers[0].vouch[c.Session()]
	fc.mu.Unlock()
	// In jeopardy, the token's deadline has passed: no answer of the
	// silent worker is left to move it, and Lost is planned for good.
	eventually(t, 2*time.Second, "jeopardy", func() bool { return !tok.Valid() })
	jeopardy := time.Now()
	if isClosed(tok.Lost()) {
		t.Fatalf("token valid until it was lost (%v)", tok.Err())
	}
	c.mu.Lock()
	planned := c.lostAt(tok.lease)
	plannedReal := time.Now().Add(planned.Sub(c.now()))
	c.mu.Unlock()
	// The worker may grant a conflicting token validity + grace after its
	// last vouching reply: Lost must be due before (invariant 1).
	if limit := lastVouch.Add(fc.cfg.validity + fc.cfg.grace); !plannedReal.Before(limit) {
		t.Fatalf("lost due %v after the last vouch, after the worker's limit %v",
			plannedReal.Sub(lastVouch), limit.Sub(lastVouch))
	}
	lost := waitClosed(t, tok.Lost(), 3*time.Second, "Lost")
	if !errors.Is(tok.Err(), ErrLost) {
		t.Fatalf("err %v, want ErrLost", tok.Err())
	}
	if d := lost.Sub(plannedReal); d < -5*time.Millisecond || d > 250*time.Millisecond {
		t.Fatalf("Lost closed %v after it was due", d)
	}
	if d := lost.Sub(jeopardy); d < fc.cfg.grace/2 {
		t.Fatalf("lost only %v after jeopardy; grace is %v", d, fc.cfg.grace)
	}
	t.Logf("after the last vouching reply: jeopardy %v, lost due %v, closed %v",
		jeopardy.Sub(lastVouch), plannedReal.Sub(lastVouch), lost.Sub(lastVouch))
	fc.setSilent(0, false)
}

// TestReclaimAfterEpochChange: the owner crashes, the shard moves to another
// worker at a new epoch in its grace period; the client reclaims the token
// there with its old fence.
// The timings (W = 1s, G = 1.5s) leave time to notice the crash, fetch
// the map and reclaim before the grant is declared lost; a client that
// does not reclaim still fails, only later.
func TestReclaimAfterEpochChange(t *testing.T) {
	fc := newFakeCluster(t, 10, fakeConfig{workers: 2, workerTTL: time.Second, grace: 1500 * time.Millisecond})
	c := fc.dial(t, Config{Seeds: []string{fc.addr(0), fc.addr(1)}, RTOMax: 50 * time.Millisecond})
	ctx := ctxT(t, 15*time.Second)
	tok, err := c.Acquire(ctx, "r", wire.EX, Range(0, 100))
	if err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	shard := wire.Shard([]byte("r"), fc.cfg.shardCount)
	fc.setSilent(0, true) // crash
	fc.setOwner(shard, 1, 2, true)
	eventually(t, 4*time.Second, "reclaim at the new owner", func() bool {
		gs := fc.grants(1, "r")
		return len(gs) == 1 && gs[0].fence == f
	})
	eventually(t, 2*time.Second, "token valid at the new owner", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return tok.lease != nil && tok.lease.key.epoch == 2 && c.now().Before(tok.validUntilLocked())
	})
	if isClosed(tok.Lost()) || tok.Fence() != f {
		t.Fatalf("after reclaim: lost %v (%v) fence %#x, want %#x", isClosed(tok.Lost()), tok.Err(), tok.Fence(), f)
	}
	if _, ok := tok.Value(); ok {
		t.Fatal("value valid after a crash")
	}
	// The new owner hears DONE (SPEC §13, "Early end of grace"), and only
	// after the reclaim it follows.
	eventually(t, 2*time.Second, "DONE at the new owner", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return strings.Contains(fc.reclaimDone[1], "d")
	})
	fc.mu.Lock()
	order := fc.reclaimDone[1]
	fc.mu.Unlock()
	if !strings.HasPrefix(order, "r") || strings.Index(order, "d") < strings.LastIndex(order, "r") {
		t.Fatalf("new owner saw %q (r: RECLAIM applied, d: DONE), want the reclaim first", order)
	}
	// The reclaimed grant holds: another client cannot get it. Its Try is
	// answered GRACE, and retried, until the new owner's grace period
	// ends; then CONFLICT.
	c2 := fc.dial(t, Config{Seeds: []string{fc.addr(1)}})
	if _, err := c2.Acquire(ctx, "r", wire.EX, Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("conflicting acquire after reclaim: %v", err)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	fc.setSilent(0, false)
}

func TestReclaimRefused(t *testing.T) {
	fc := newFakeCluster(t, 11, fakeConfig{workers: 2, workerTTL: time.Second, grace: 1500 * time.Millisecond})
	fc.refuseReclaim = true
	c := fc.dial(t, Config{Seeds: []string{fc.addr(0), fc.addr(1)}, RTOMax: 50 * time.Millisecond})
	ctx := ctxT(t, 10*time.Second)
	tok, err := c.Acquire(ctx, "r", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	fc.setSilent(0, true)
	fc.setOwner(wire.Shard([]byte("r"), fc.cfg.shardCount), 1, 2, true)
	waitClosed(t, tok.Lost(), 4*time.Second, "Lost after RECLAIM_REFUSED")
	if !errors.Is(tok.Err(), ErrLost) || tok.Valid() || !strings.Contains(tok.Err().Error(), "RECLAIM_REFUSED") {
		t.Fatalf("err %v valid %v", tok.Err(), tok.Valid())
	}
	fc.setSilent(0, false)
}

// TestCancelOnContextEnd: a queued acquire whose context ends is canceled
// at the worker.
func TestCancelOnContextEnd(t *testing.T) {
	fc := newFakeCluster(t, 12, fakeConfig{})
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}}) // holds on
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	t1, err := c1.Acquire(ctx, "q", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	_, err = c2.Acquire(short, "q", wire.EX)
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire: %v, want ErrTimeout and DeadlineExceeded", err)
	}
	var target uint64
	fc.mu.Lock()
	for _, s := range fc.seen {
		if s.typ == wire.TypeAcquire && s.sess == c2.Session() {
			target = s.req
		}
	}
	fc.mu.Unlock()
	eventually(t, time.Second, "CANCEL of the queued acquire", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, x := range fc.cancels {
			if x == target {
				return true
			}
		}
		return false
	})
	if n := fc.waiters(0, "q"); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	eventually(t, time.Second, "cleanup finished", func() bool {
		c2.mu.Lock()
		defer c2.mu.Unlock()
		return c2.pending[target] == nil
	})
	// The worker grants the next waiter, if any, as it applies the
	// RELEASE, before it answers it.
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "q"); len(gs) != 0 {
		t.Fatalf("the canceled acquire was granted: %+v", gs)
	}
}

// TestSessionExpired: the worker no longer knows the session; every token
// is lost and new requests fail.
func TestSessionExpired(t *testing.T) {
	fc := newFakeCluster(t, 13, fakeConfig{workerTTL: 400 * time.Millisecond})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "s", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	fc.expireSession(c.Session())
	waitClosed(t, tok.Lost(), 2*time.Second, "Lost after the session ended")
	if !errors.Is(tok.Err(), ErrSessionExpired) {
		t.Fatalf("err %v", tok.Err())
	}
	if _, err := c.Acquire(ctx, "s", wire.EX); !errors.Is(err, ErrSessionExpired) {
		t.Fatalf("acquire: %v", err)
	}
}

// TestSessionRenewFailover: the home worker goes silent; the session is
// renewed at another worker and outlives its TTL.
func TestSessionRenewFailover(t *testing.T) {
	fc := newFakeCluster(t, 14, fakeConfig{workers: 2, sessionTTL: 600 * time.Millisecond})
	for s := range fc.cfg.shardCount {
		fc.setOwner(s, 1, 2, false)
	}
	c := fc.dial(t, Config{RTOMax: 50 * time.Millisecond})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "h", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	fc.setSilent(0, true)
	// Two session TTLs: the session is renewed at worker 1, more than once,
	// and the token stays valid throughout.
	c.mu.Lock()
	past := c.now().Add(3 * fc.cfg.sessionTTL) // a renewal sent two TTLs from now ends later
	c.mu.Unlock()
	renewedPast := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.sessDL.After(past) && c.home.String() == fc.addr(1)
	}
	poll(5*fc.cfg.sessionTTL, func() bool {
		if !tok.Valid() || isClosed(tok.Lost()) {
			t.Fatalf("token valid %v lost %v (%v)", tok.Valid(), isClosed(tok.Lost()), tok.Err())
		}
		return renewedPast()
	})
	if !renewedPast() {
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Fatalf("home %s, want %s; session deadline %v past the first two TTLs", c.home, fc.addr(1), c.sessDL.Sub(past))
	}
	fc.setSilent(0, false)
}

func TestDialUnavailable(t *testing.T) {
	fc := newFakeCluster(t, 15, fakeConfig{})
	fc.setSilent(0, true)
	conn, err := fc.net.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = DialConfig(ctxT(t, 200*time.Millisecond), Config{Seeds: []string{fc.addr(0)}, PacketConn: conn, KeyFile: fc.keyFile})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial: %v", err)
	}
	if _, err := Dial(ctxT(t, time.Second)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("dial without seeds: %v", err)
	}
}

// TestCloseStopsEverything: Close with a queued acquire in flight and a held
// token returns promptly, fails the waiter with ErrClosed and leaves no
// goroutine behind.
func TestCloseStopsEverything(t *testing.T) {
	fc := newFakeCluster(t, 16, fakeConfig{})
	ignore := goleak.IgnoreCurrent() // the fake's goroutines
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	if _, err := c1.Acquire(ctx, "k", wire.EX); err != nil {
		t.Fatal(err)
	}
	var got atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := c2.Acquire(ctx, "k", wire.EX)
		got.Store(err)
	}()
	eventually(t, time.Second, "queued", func() bool { return fc.waiters(0, "k") == 1 })
	start := time.Now()
	_ = c2.Close()
	_ = c1.Close()
	<-done
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err, _ := got.Load().(error); !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter: %v, want ErrClosed", err)
	}
	goleak.VerifyNone(t, ignore)
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// testLogger logs to t (go test -v shows it).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// TestContentionUnderLoss: two clients take turns on one exclusive token
// over a lossy network, through queueing, REVOKE (and its retransmission),
// release and GRANT_ASYNC (or its recovery by re-polling). At no time do
// both consider themselves holders (invariant 1, as seen by the clients).
func TestContentionUnderLoss(t *testing.T) {
	// The daemon's default leases: this test is about handoffs under loss,
	// not about leases that expire when 30% of keepalives are lost.
	fc := newFakeCluster(t, 77, fakeConfig{sessionTTL: 10 * time.Second, workerTTL: 5 * time.Second, grace: 5 * time.Second})
	fc.net.SetDefault(faultnet.Rule{Drop: 0.3, Duplicate: 0.2})
	var holders atomic.Int32
	var dropped sync.Map // *Token -> *atomic.Bool: counted out of holders
	drop := func(tok *Token) {
		v, _ := dropped.LoadOrStore(tok, new(atomic.Bool))
		if v.(*atomic.Bool).CompareAndSwap(false, true) {
			holders.Add(-1) // before the RELEASE goes out
		}
	}
	onRevoke := func(_ context.Context, tok *Token, _ Revocation) {
		drop(tok)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tok.Release(ctx)
	}
	var cs []*Client
	for range 2 {
		cs = append(cs, fc.dial(t, Config{OnRevoke: onRevoke, RTOMax: 100 * time.Millisecond}))
	}
	var wg sync.WaitGroup
	var grants atomic.Int32
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 4 {
				ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
				tok, err := c.Acquire(ctx, "hot", wire.EX)
				if err != nil {
					cancel()
					t.Error(err)
					return
				}
				grants.Add(1)
				if n := holders.Add(1); n > 1 {
					t.Errorf("%d clients hold the exclusive token", n)
				}
				// Hold it until the other client's request, queued
				// behind it, has it revoked (onRevoke releases it), or
				// for 10 ms once the other client is done.
				select {
				case <-tok.Done():
				case <-time.After(10 * time.Millisecond):
				}
				drop(tok)
				if err := tok.Release(ctx); err != nil && !errors.Is(err, ErrNotHeld) {
					t.Error(err)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if grants.Load() != 8 {
		t.Fatalf("%d grants, want 8", grants.Load())
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for k, n := range fc.applied {
		if n > 1 {
			t.Errorf("request %d of session %#x applied %d times", k.req, k.sess, n)
		}
	}
}

// TestReceiveNoAlloc: verifying a GRANT's tag and handing it to its
// waiting request does not allocate.
func TestReceiveNoAlloc(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	fc := newFakeCluster(t, 17, fakeConfig{})
	c := fc.dial(t, Config{})
	cl := &call{typ: wire.TypeAcquire, body: wire.Acquire{Mode: wire.EX, Name: []byte("n")}, routed: true}
	if err := c.register(context.Background(), cl, false); err != nil {
		t.Fatal(err)
	}
	defer c.finish(cl)
	h := wire.Header{Type: wire.TypeAcquireReply, Session: c.Session(), Request: cl.id, Shard: 1, Epoch: 1,
		MapVersion: c.mapVer.Load()}
	b, err := wire.Grant{Fence: wire.MakeFence(1, 1), Mode: wire.EX, ValidityMs: 1000,
		ValueFlags: wire.ValueValid, Value: []byte("v")}.Append(nil, h)
	if err == nil {
		err = fc.fw.Seal(b) // verified under the session key in every run
	}
	if err != nil {
		t.Fatal(err)
	}
	from := addrPortOf(fc.workers[0].conn.LocalAddr())
	var r reply
	var mr wire.MapReply
	out := make([]byte, 0, wire.MaxDatagram)
	out = c.handle(b, from, &r, &mr, out)
	select {
	case <-cl.ch:
	default:
		t.Fatal("the GRANT was not handed to its request")
	}
	n := allocs.PerRun(200, func() {
		out = c.handle(b, from, &r, &mr, out)
		<-cl.ch
	})
	if n != 0 {
		t.Fatalf("%v allocations per reply", n)
	}
}

// TestRealUDP: with no PacketConn the client opens its own UDP socket and
// Close closes it.
func TestRealUDP(t *testing.T) {
	fc := newFakeCluster(t, 18, fakeConfig{realUDP: true})
	ignore := goleak.IgnoreCurrent()
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "u", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	conn := c.conn
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.WriteTo([]byte("x"), conn.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("socket not closed: %v", err)
	}
	goleak.VerifyNone(t, ignore)
}

// TestConvertCanceled: an upgrade that waits in the queue when its context
// ends is canceled; the token keeps its mode and fence.
func TestConvertCanceled(t *testing.T) {
	fc := newFakeCluster(t, 19, fakeConfig{})
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}}) // holds on
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	t1, err := c1.Acquire(ctx, "cv", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := c2.Acquire(ctx, "cv", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	f := t2.Fence()
	short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
	defer cancel()
	err = t2.Convert(short, wire.EX)
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("convert: %v", err)
	}
	if t2.Mode() != wire.PR || t2.Fence() != f || !t2.Valid() || isClosed(t2.Lost()) {
		t.Fatalf("after a canceled upgrade: mode %v fence %#x (was %#x) valid %v err %v",
			t2.Mode(), t2.Fence(), f, t2.Valid(), t2.Err())
	}
	if n := fc.waiters(0, "cv"); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
	// Once the other reader is gone the upgrade goes through, queued then granted.
	done := make(chan error, 1)
	go func() { done <- t2.Convert(ctx, wire.EX) }()
	eventually(t, time.Second, "queued upgrade", func() bool { return fc.waiters(0, "cv") == 1 })
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if t2.Mode() != wire.EX || t2.Fence() <= f {
		t.Fatalf("upgrade: mode %v fence %#x", t2.Mode(), t2.Fence())
	}
}

// TestAckSkipsQueued: while a request waits in a queue (answered QUEUED),
// the ack of later requests moves past it (SPEC.md 11: the worker keeps it
// whatever the ack), while its own re-polls carry an ack no higher than
// its id; it is granted as usual, and its outcome acknowledged (GRANT_ACK).
func TestAckSkipsQueued(t *testing.T) {
	fc := newFakeCluster(t, 20, fakeConfig{})
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	t1, err := c1.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c2.Acquire(ctx, "a", wire.EX)
		done <- err
	}()
	eventually(t, time.Second, "queued", func() bool { return fc.waiters(0, "a") == 1 })
	// And the client has the QUEUED: until then its acks rightly hold at
	// the request (the reply may still be in its socket's buffer).
	eventually(t, time.Second, "QUEUED at the client", func() bool {
		c2.mu.Lock()
		defer c2.mu.Unlock()
		for _, cl := range c2.pending {
			if cl.typ == wire.TypeAcquire && cl.exempt {
				return true
			}
		}
		return false
	})
	var queued uint64
	fc.mu.Lock()
	for _, s := range fc.seen {
		if s.typ == wire.TypeAcquire && s.sess == c2.Session() {
			queued = s.req
		}
	}
	fc.mu.Unlock()
	for i := range 3 {
		if _, err := c2.Acquire(ctx, fmt.Sprintf("b%d", i), wire.PR); err != nil {
			t.Fatal(err)
		}
	}
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Acquire(ctx, "c", wire.PR); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "the GRANT_ACK", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, s := range fc.seen {
			if s.sess == c2.Session() && s.typ == wire.TypeGrantAck {
				return true
			}
		}
		return false
	})
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var past, held int
	for _, s := range fc.seen {
		switch {
		case s.sess != c2.Session() || s.typ != wire.TypeAcquire:
		case s.req == queued && s.ack > queued:
			t.Errorf("the queued request %d sent with ack %d", s.req, s.ack)
		case s.req > queued && s.ack > queued:
			past++
		case s.req > queued:
			held++
		}
	}
	if past < 4 || held != 0 {
		t.Fatalf("acks: %d later acquires moved the ack past the queued %d, %d held it", past, queued, held)
	}
}

// TestConvertCanceledAfterGrant: the upgrade is granted (GRANT_ASYNC lost)
// just before the CANCEL, which releases the whole grant; the worker answers
// CANCELED for the target either way. The client must find out that it no
// longer holds the token.
func TestConvertCanceledAfterGrant(t *testing.T) {
	fc := newFakeCluster(t, 21, fakeConfig{})
	c1 := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 10*time.Second)
	t1, err := c1.Acquire(ctx, "cg", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := c2.Acquire(ctx, "cg", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	// The upgrade must be granted at the worker before its context ends
	// (1s: time for a loaded machine to do the three steps below), and the
	// cancel must be done before t2, unvouched since the cut, is declared
	// lost (W + G = 3s after the cut).
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- t2.Convert(short, wire.EX) }()
	eventually(t, time.Second, "queued upgrade", func() bool { return fc.waiters(0, "cg") == 1 })
	// Nothing from the worker reaches c2 now: the GRANT_ASYNC is lost.
	fc.net.SetLink(fc.workers[0].conn.LocalAddr(), c2.conn.LocalAddr(), faultnet.Rule{Cut: true})
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "upgrade granted at the worker", func() bool {
		gs := fc.grants(0, "cg")
		return len(gs) == 1 && gs[0].mode == wire.EX
	})
	eventually(t, 4*time.Second, "CANCEL", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return len(fc.cancels) > 0
	})
	fc.net.ClearRules()
	err = <-done
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrLost) {
		t.Fatalf("convert: %v", err)
	}
	if !isClosed(t2.Lost()) || t2.Valid() || !strings.Contains(fmt.Sprint(t2.Err()), "released the grant") {
		t.Fatalf("token still believed held, or not known to be released: valid %v err %v", t2.Valid(), t2.Err())
	}
	if gs := fc.grants(0, "cg"); len(gs) != 0 {
		t.Fatalf("worker grants %+v", gs)
	}
}
