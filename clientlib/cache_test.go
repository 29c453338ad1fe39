package clientlib

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeworker"
	"github.com/tokend/tokend/wire"
)

// tokenRequests counts the token requests (ACQUIRE, RELEASE, CONVERT,
// RECLAIM, CANCEL) the fake workers have received from c.
func tokenRequests(fc *fakeCluster, c *Client) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	n := 0
	for _, s := range fc.seen {
		switch s.typ {
		case wire.TypeAcquire, wire.TypeRelease, wire.TypeConvert, wire.TypeReclaim, wire.TypeCancel:
			if s.sess == c.Session() {
				n++
			}
		}
	}
	return n
}

// handOff moves shard to worker w at epoch by a planned handoff: the new
// owner imports the old owner's table (grants, fences, values).
// Queued requests move too, and the new owner revokes the holders that
// block them.
func (fc *fakeCluster) handOff(shard uint32, w int, epoch uint32) {
	fc.mu.Lock()
	fc.syncLocked()
	fc.mu.Unlock()
	// Without fc.mu: the handoff may send REVOKEs, which fc.observe sees.
	fc.fw.SetOwner(shard, w, epoch, fakeworker.Handoff)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.owner[shard], fc.epoch[shard] = w, epoch
	fc.synced[shard], fc.syncedEpoch[shard] = w, epoch
	fc.mapVersion = fc.fw.MapVersion()
}

// noRevoke is an OnRevoke that fails the test: the library must answer
// REVOKEs of cached grants itself.
func noRevoke(t *testing.T) func(context.Context, *Token, Revocation) {
	return func(_ context.Context, tok *Token, r Revocation) {
		t.Errorf("OnRevoke called for %q fence %#x (%+v)", tok.Name(), tok.Fence(), r)
	}
}

// TestCacheHitSendsNoDatagram: a released grant stays held at the worker,
// and an Acquire it covers gets it back with the same fence, valid, and
// without a datagram; the released handle stays released.
func TestCacheHitSendsNoDatagram(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 5*time.Second)

	t1, err := c.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	f := t1.Fence()
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "a"); len(gs) != 1 || gs[0].fence != f || gs[0].sess != c.Session() {
		t.Fatalf("worker grants after a cached release: %+v", gs)
	}
	if st := t1.State(); st != TokenReleased || !isClosed(t1.Done()) || isClosed(t1.Lost()) || !errors.Is(t1.Err(), ErrNotHeld) {
		t.Fatalf("released handle: state %v done %v lost %v err %v", st, isClosed(t1.Done()), isClosed(t1.Lost()), t1.Err())
	}
	if s := c.Stats(); s.Cached != 1 {
		t.Fatalf("stats after release: %+v", s)
	}

	before := tokenRequests(fc, c)
	for i, want := range []struct {
		mode       wire.Mode
		start, end uint64
	}{{wire.EX, 0, 0}, {wire.PR, 0, 0}, {wire.CW, 10, 20}, {wire.EX, 0, wire.WholeEnd}} {
		t2, err := c.Acquire(ctx, "a", want.mode, Range(want.start, want.end))
		if err != nil {
			t.Fatal(err)
		}
		if t2 == t1 || t2.Fence() != f || t2.Mode() != wire.EX || t2.State() != TokenValid || !t2.Valid() {
			t.Fatalf("hit %d: same handle %v fence %#x (want %#x) mode %v state %v", i, t2 == t1, t2.Fence(), f, t2.Mode(), t2.State())
		}
		if s, e := t2.Range(); s != 0 || e != wire.WholeEnd {
			t.Fatalf("hit %d: range [%d, %d), want the whole token", i, s, e)
		}
		if time.Until(t2.ValidUntil()) < c.freshFor()-50*time.Millisecond {
			t.Fatalf("hit %d: valid only until %v", i, t2.ValidUntil())
		}
		if err := t2.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := t2.Release(ctx); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("second release of a cached handle: %v", err)
		}
	}
	if n := tokenRequests(fc, c); n != before {
		t.Fatalf("%d token requests for cache hits, want none", n-before)
	}
	if s := c.Stats(); s.CacheHits != 4 || s.CacheMisses != 1 || s.Cached != 1 {
		t.Fatalf("stats: %+v", s)
	}

	// Close gives the cached grant back (SESSION_CLOSE).
	c.Close()
	if gs := fc.grants(0, "a"); len(gs) != 0 {
		t.Fatalf("grants after Close: %+v", gs)
	}
}

// TestCacheKeepsOnlyWhatCannotChange: the cache never loses a value write
// (Release with SetValue reaches the worker), keeps the value of a
// downgrade that set it, and does not keep grants whose value block
// another session could set meanwhile (CR, NL, a byte range) nor grants
// someone asked for (REVOKE seen).
func TestCacheKeepsOnlyWhatCannotChange(t *testing.T) {
	fc := newFakeCluster(t, 32, fakeConfig{})
	var revoked atomic.Int32
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: func(context.Context, *Token, Revocation) { revoked.Add(1) }})
	ctx := ctxT(t, 5*time.Second)

	tok, err := c.Acquire(ctx, "v", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Release(ctx, SetValue([]byte("one"))); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "v"); len(gs) != 0 {
		t.Fatalf("a release with a value must reach the worker; grants %+v", gs)
	}
	tok, err = c.Acquire(ctx, "v", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := tok.Value(); !ok || string(v) != "one" {
		t.Fatalf("value %q %v", v, ok)
	}
	if err := tok.Convert(ctx, wire.PW, SetValue([]byte("two"))); err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	tok, err = c.Acquire(ctx, "v", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := tok.Value(); tok.Fence() != f || !ok || string(v) != "two" {
		t.Fatalf("hit: fence %#x (want %#x) value %q %v", tok.Fence(), f, v, ok)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name       string
		mode       wire.Mode
		start, end uint64
	}{{"cr", wire.CR, 0, 0}, {"nl", wire.NL, 0, 0}, {"cw", wire.CW, 0, 0}, {"range", wire.EX, 0, 4096}} {
		tok, err := c.Acquire(ctx, tc.name, tc.mode, Range(tc.start, tc.end))
		if err != nil {
			t.Fatal(err)
		}
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if gs := fc.grants(0, tc.name); len(gs) != 0 {
			t.Fatalf("%s: not cacheable, yet the worker still has %+v", tc.name, gs)
		}
	}

	// A grant whose REVOKE the application saw is given back.
	tok, err = c.Acquire(ctx, "r", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	fc.sendRevoke(0, c.Session(), "r", tok.Fence(), wire.NL)
	eventually(t, 2*time.Second, "the application's OnRevoke", func() bool { return revoked.Load() == 1 })
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if gs := fc.grants(0, "r"); len(gs) != 0 {
		t.Fatalf("a revoked grant was kept: %+v", gs)
	}
	if s := c.Stats(); s.Cached != 1 || s.CacheHits != 1 { // "v" only
		t.Fatalf("stats: %+v", s)
	}
}

// TestCachedGrantRevokedWithoutApplication: another client's conflicting
// request revokes a cached grant; the library gives it back at once
// without calling OnRevoke, the other client is granted, and this client's
// next Acquire goes to the worker and waits its turn.
func TestCachedGrantRevokedWithoutApplication(t *testing.T) {
	fc := newFakeCluster(t, 33, fakeConfig{})
	c1 := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: noRevoke(t)})
	c2 := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: func(context.Context, *Token, Revocation) {}}) // holds until it releases
	ctx := ctxT(t, 5*time.Second)

	t1, err := c1.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	t2, err := c2.Acquire(ctx, "a", wire.PR) // queues, revokes c1's cached EX
	if err != nil {
		t.Fatal(err)
	}
	if t2.Fence() <= t1.Fence() {
		t.Fatalf("fence %#x after cached %#x", t2.Fence(), t1.Fence())
	}
	if s := c1.Stats(); s.CacheRevoked != 1 || s.Cached != 0 {
		t.Fatalf("c1 stats: %+v", s)
	}
	before := tokenRequests(fc, c1)
	got := make(chan *Token, 1)
	go func() {
		t3, err := c1.Acquire(ctx, "a", wire.EX)
		if err != nil {
			t.Error(err)
		}
		got <- t3
	}()
	eventually(t, 2*time.Second, "c1's acquire queued at the worker", func() bool { return fc.waiters(0, "a") == 1 })
	if err := t2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	t3 := <-got
	if t3 == nil || t3.Fence() <= t2.Fence() {
		t.Fatalf("c1 re-acquired %v", t3)
	}
	if n := tokenRequests(fc, c1); n == before {
		t.Fatal("c1's acquire after the revocation was served without the worker")
	}
}

// TestCachedGrantConflictsWithTry: to other clients a cached grant is held:
// their Try of a conflicting mode fails (no REVOKE is sent for a Try), and
// a request that waits gets it after the library gives it back. The
// client's own Try is not blocked by its cache: the conflicting cached
// grant is given back first.
func TestCachedGrantConflictsWithTry(t *testing.T) {
	fc := newFakeCluster(t, 34, fakeConfig{})
	c1 := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: noRevoke(t)})
	c2 := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)

	tok, err := c1.Acquire(ctx, "a", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	tok, err = c1.Acquire(ctx, "a", wire.EX, Try()) // the cached PR goes first
	if err != nil {
		t.Fatalf("own try against own cached grant: %v", err)
	}
	if s := c1.Stats(); s.CacheDropped != 1 {
		t.Fatalf("stats: %+v", s)
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Acquire(ctx, "a", wire.EX, Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("other client's try against a cached grant: %v, want ErrConflict", err)
	}
	t2, err := c2.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if t2.Fence() <= tok.Fence() {
		t.Fatalf("fence %#x after %#x", t2.Fence(), tok.Fence())
	}
}

// TestCacheRevokeRacesReacquire: one client re-acquires its cached grant
// while another's request revokes it, again and again. Whoever wins, the
// worker holds exactly the grant of the client that holds a valid token
// (never both: invariant 1), and fences only grow.
func TestCacheRevokeRacesReacquire(t *testing.T) {
	fc := newFakeCluster(t, 35, fakeConfig{})
	// Holders do not answer revocations: each gives its token back when
	// its check is done, so the worker's grants are stable meanwhile.
	idle := func(context.Context, *Token, Revocation) {}
	cs := []*Client{fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: idle}), fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: idle})}
	ctx := ctxT(t, 60*time.Second)
	var mu sync.Mutex
	var last uint64
	var hits, grants int
	check := func(c *Client, tok *Token) {
		mu.Lock()
		defer mu.Unlock()
		grants++
		if tok.Fence() < last {
			t.Errorf("fence %#x after %#x", tok.Fence(), last)
		}
		if tok.Fence() == last {
			hits++
		}
		last = tok.Fence()
		if !tok.Valid() {
			return
		}
		gs := fc.grants(0, "race")
		if len(gs) != 1 || gs[0].sess != c.Session() || gs[0].fence != tok.Fence() {
			t.Errorf("client holds %#x validly, worker has %+v", tok.Fence(), gs)
		}
	}
	const rounds = 100
	rng := []*rand.Rand{rand.New(rand.NewPCG(35, 0)), rand.New(rand.NewPCG(35, 1))}
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds && !t.Failed(); r++ {
				tok, err := c.Acquire(ctx, "race", wire.EX)
				if err != nil {
					t.Error(err)
					return
				}
				check(c, tok)
				// Hold it a little, and wait a little after releasing it,
				// so that REVOKEs arrive both while the application holds
				// the grant and while it is cached.
				time.Sleep(time.Duration(rng[i].IntN(400)) * time.Microsecond)
				if err := tok.Release(ctx); err != nil {
					t.Error(err)
					return
				}
				time.Sleep(time.Duration(rng[i].IntN(400)) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d grants, %d cached re-acquires; revoked while cached: %d and %d", grants, hits,
		cs[0].Stats().CacheRevoked, cs[1].Stats().CacheRevoked)
}

// TestCacheOff: by default (Config.TokenCache 0) there is no token cache:
// every release reaches the worker and every acquire is a new grant.
func TestCacheOff(t *testing.T) {
	fc := newFakeCluster(t, 36, fakeConfig{})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	var last uint64
	for range 3 {
		tok, err := c.Acquire(ctx, "a", wire.EX)
		if err != nil {
			t.Fatal(err)
		}
		if tok.Fence() <= last {
			t.Fatalf("fence %#x after %#x", tok.Fence(), last)
		}
		last = tok.Fence()
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if gs := fc.grants(0, "a"); len(gs) != 0 {
			t.Fatalf("grants after release: %+v", gs)
		}
	}
	if s := c.Stats(); s.CacheHits != 0 || s.CacheMisses != 0 || s.Cached != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestCacheBounds: beyond TokenCache the least recently released grant is
// given back, and so is a grant idle for TokenCacheIdle.
func TestCacheBounds(t *testing.T) {
	fc := newFakeCluster(t, 37, fakeConfig{})
	c := fc.dial(t, Config{TokenCache: 2, TokenCacheIdle: 700 * time.Millisecond})
	ctx := ctxT(t, 5*time.Second)
	release := func(name string) {
		t.Helper()
		tok, err := c.Acquire(ctx, name, wire.EX)
		if err != nil {
			t.Fatal(err)
		}
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	release("n0")
	release("n1")
	release("n0") // a hit: n0 is now the most recently released
	release("n2") // evicts n1
	eventually(t, 2*time.Second, "n1 given back", func() bool { return len(fc.grants(0, "n1")) == 0 })
	if len(fc.grants(0, "n0")) != 1 || len(fc.grants(0, "n2")) != 1 {
		t.Fatalf("n0 %+v n2 %+v", fc.grants(0, "n0"), fc.grants(0, "n2"))
	}
	if s := c.Stats(); s.CacheEvictions != 1 || s.Cached != 2 || s.CacheHits != 1 {
		t.Fatalf("stats: %+v", s)
	}
	eventually(t, 3*time.Second, "idle grants given back", func() bool {
		return len(fc.grants(0, "n0")) == 0 && len(fc.grants(0, "n2")) == 0
	})
	if s := c.Stats(); s.CacheEvictions != 3 || s.Cached != 0 {
		t.Fatalf("stats: %+v", s)
	}
	// While maxBackgroundReleases grants are being given back in the
	// background (a slow worker), a full cache keeps no more: Release
	// gives its grant back itself.
	c = fc.dial(t, Config{TokenCache: 2}) // idle for 30 s: nothing expires here
	release("m0")
	release("m1")
	c.mu.Lock()
	for i := range maxBackgroundReleases {
		c.strays[strayKey{"busy", uint64(i)}] = true
	}
	c.mu.Unlock()
	release("m2")
	if gs := fc.grants(0, "m2"); len(gs) != 0 {
		t.Fatalf("m2 kept with the background releases at their bound: %+v", gs)
	}
	if s := c.Stats(); s.Cached != 2 || s.CacheEvictions != 0 {
		t.Fatalf("stats: %+v", s)
	}
	c.mu.Lock()
	for i := range maxBackgroundReleases {
		delete(c.strays, strayKey{"busy", uint64(i)})
	}
	c.mu.Unlock()
	if _, err := DialConfig(ctx, Config{Seeds: []string{fc.addr(0)}, TokenCache: -1}); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("negative TokenCache: %v", err)
	}
}

// TestCachedGrantAcrossCrash: a cached grant on a shard whose worker
// crashes is reclaimed at the new owner like a held one (same fence), and
// a re-acquire afterwards is served from the cache, without a datagram.
func TestCachedGrantAcrossCrash(t *testing.T) {
	fc := newFakeCluster(t, 38, fakeConfig{workers: 2, workerTTL: time.Second, grace: 1500 * time.Millisecond})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, Seeds: []string{fc.addr(0), fc.addr(1)}, RTOMax: 50 * time.Millisecond, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 15*time.Second)
	tok, err := c.Acquire(ctx, "r", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	shard := wire.Shard([]byte("r"), fc.cfg.shardCount)
	fc.setSilent(0, true) // crash
	fc.setOwner(shard, 1, 2, true)
	eventually(t, 4*time.Second, "the cached grant reclaimed at the new owner", func() bool {
		gs := fc.grants(1, "r")
		return len(gs) == 1 && gs[0].fence == f && gs[0].sess == c.Session()
	})
	// A hit once the reclaimed grant is fresh again.
	var hit *Token
	eventually(t, 3*time.Second, "a cache hit after the reclaim", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		hit = c.hitLocked("r", wire.EX, 0, 0)
		return hit != nil
	})
	if hit.Fence() != f || !hit.Valid() {
		t.Fatalf("hit fence %#x (want %#x) valid %v", hit.Fence(), f, hit.Valid())
	}
	if err := hit.Release(ctx); err != nil {
		t.Fatal(err)
	}
	fc.setSilent(0, false)
}

// TestCachedGrantAcrossHandoff: after a planned handoff the client confirms
// its cached grant at the new owner (RECLAIM), and re-acquires it there
// from the cache.
func TestCachedGrantAcrossHandoff(t *testing.T) {
	fc := newFakeCluster(t, 39, fakeConfig{workers: 2})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, Seeds: []string{fc.addr(0), fc.addr(1)}, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 10*time.Second)
	tok, err := c.Acquire(ctx, "h", wire.PW)
	if err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	shard := wire.Shard([]byte("h"), fc.cfg.shardCount)
	fc.handOff(shard, 1, 2)
	// Replies carry the new map version; a keepalive's makes the client
	// refetch the map and confirm its grant at the new owner.
	eventually(t, 5*time.Second, "the cached grant confirmed at the new owner", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, u := range c.byName["h"] {
			if u.cached && u.lease != nil && u.lease.key.epoch == 2 {
				return true
			}
		}
		return false
	})
	before := tokenRequests(fc, c)
	hit, err := c.Acquire(ctx, "h", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if hit.Fence() != f || !hit.Valid() || tokenRequests(fc, c) != before {
		t.Fatalf("after handoff: fence %#x (want %#x) valid %v, %d requests", hit.Fence(), f, hit.Valid(), tokenRequests(fc, c)-before)
	}
	// The new owner revokes it for another client like any grant.
	c2 := fc.dial(t, Config{TokenCache: DefaultTokenCache, Seeds: []string{fc.addr(1)}})
	if err := hit.Release(ctx); err != nil {
		t.Fatal(err)
	}
	t2, err := c2.Acquire(ctx, "h", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if t2.Fence() <= f {
		t.Fatalf("fence %#x after %#x", t2.Fence(), f)
	}
	if s := c.Stats(); s.CacheRevoked != 1 {
		t.Fatalf("stats: %+v", s)
	}
}

// TestCachedGrantCarriesValueAcrossCrash: a cached grant is reclaimed with
// the holder's copy of the value block, like a held one, so the value
// survives the crash of its worker even though nobody holds the token.
func TestCachedGrantCarriesValueAcrossCrash(t *testing.T) {
	fc := newFakeCluster(t, 40, fakeConfig{workers: 2, workerTTL: time.Second, grace: 1500 * time.Millisecond})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, Seeds: []string{fc.addr(0), fc.addr(1)}, RTOMax: 50 * time.Millisecond, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 15*time.Second)
	tok, err := c.Acquire(ctx, "val", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Release(ctx, SetValue([]byte("kept"))); err != nil {
		t.Fatal(err)
	}
	tok, err = c.Acquire(ctx, "val", wire.PW)
	if err != nil {
		t.Fatal(err)
	}
	f := tok.Fence()
	if err := tok.Release(ctx); err != nil { // cached, with the value
		t.Fatal(err)
	}
	shard := wire.Shard([]byte("val"), fc.cfg.shardCount)
	fc.setSilent(0, true) // crash
	fc.setOwner(shard, 1, 2, true)
	eventually(t, 4*time.Second, "the cached grant reclaimed at the new owner", func() bool {
		gs := fc.grants(1, "val")
		return len(gs) == 1 && gs[0].fence == f
	})
	// Another client waits for the token: the cached grant is revoked and
	// given back, and the value came along.
	c2 := fc.dial(t, Config{TokenCache: DefaultTokenCache, Seeds: []string{fc.addr(1)}})
	t2, err := c2.Acquire(ctx, "val", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := t2.Value(); !ok || string(v) != "kept" || t2.Fence() <= f {
		t.Fatalf("after the crash: value %q %v (state %v), fence %#x after %#x", v, ok, t2.ValueState(), t2.Fence(), f)
	}
	if s := c.Stats(); s.CacheRevoked != 1 {
		t.Fatalf("stats: %+v", s)
	}
	fc.setSilent(0, false)
}

// TestCachedReleaseLeavesOldHandle: a release into the cache moves the
// grant record to a new handle (the Token layout: a handle over a grant);
// the application's old handle keeps what it held, with its own Done
// (closed) and Lost (never closed) channels, and whatever happens to the
// grant under the next handle does not reach it.
func TestCachedReleaseLeavesOldHandle(t *testing.T) {
	fc := newFakeCluster(t, 40, fakeConfig{})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 5*time.Second)

	t1, err := c.Acquire(ctx, "o", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	f := t1.Fence()
	done1, lost1 := t1.Done(), t1.Lost()
	if err := t1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if !isClosed(done1) || isClosed(lost1) {
		t.Fatalf("after the cached release: done %v lost %v", isClosed(done1), isClosed(lost1))
	}
	t2, err := c.Acquire(ctx, "o", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if t2 == t1 || t2.Fence() != f {
		t.Fatalf("hit: same handle %v fence %#x, want %#x", t2 == t1, t2.Fence(), f)
	}
	done2, lost2 := t2.Done(), t2.Lost()
	if isClosed(done2) || isClosed(lost2) || t2.Err() != nil {
		t.Fatalf("hit handle: done %v lost %v err %v", isClosed(done2), isClosed(lost2), t2.Err())
	}
	if err := t2.Convert(ctx, wire.PR); err != nil { // a downgrade keeps the fence
		t.Fatal(err)
	}
	if err := t1.Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("release of the old handle: %v", err)
	}
	if err := t1.Convert(ctx, wire.NL); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("convert of the old handle: %v", err)
	}
	c.Close() // ends the grant under t2
	if !isClosed(done2) || !errors.Is(t2.Err(), ErrClosed) {
		t.Fatalf("hit handle after Close: done %v err %v", isClosed(done2), t2.Err())
	}
	if t1.Mode() != wire.EX || t1.Fence() != f || t1.State() != TokenReleased || t1.Valid() ||
		!errors.Is(t1.Err(), ErrNotHeld) || isClosed(t1.Lost()) || isClosed(lost1) || !isClosed(t1.Done()) {
		t.Fatalf("old handle: mode %v fence %#x state %v err %v lost %v", t1.Mode(), t1.Fence(), t1.State(), t1.Err(), isClosed(lost1))
	}
	if s, e := t1.Range(); s != 0 || e != wire.WholeEnd {
		t.Fatalf("old handle range [%d, %d)", s, e)
	}
}

// TestCacheGrowSequentialWriter: with Grow and the token cache, a writer
// that acquires page after page of one object sends one ACQUIRE: the first
// is granted the whole token, the others are cache hits.
func TestCacheGrowSequentialWriter(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache, OnRevoke: noRevoke(t)})
	ctx := ctxT(t, 5*time.Second)
	before := tokenRequests(fc, c)
	const page = 4096
	for i := uint64(0); i < 16; i++ {
		tk, err := c.Acquire(ctx, "file", wire.PW, Range(i*page, (i+1)*page), Grow())
		if err != nil {
			t.Fatal(err)
		}
		if s, e := tk.Range(); s != 0 || e != wire.WholeEnd {
			t.Fatalf("page %d: range [%d, %d), want the whole token", i, s, e)
		}
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := tokenRequests(fc, c) - before; n != 1 {
		t.Fatalf("%d token requests for 16 pages with Grow, want 1", n)
	}
	if s := c.Stats(); s.CacheMisses != 1 || s.CacheHits != 15 {
		t.Fatalf("stats: %+v", s)
	}
	// Without Grow each page is its own grant: 16 ACQUIREs (a cached page
	// cannot serve the next one).
	before = tokenRequests(fc, c)
	for i := uint64(0); i < 16; i++ {
		tk, err := c.Acquire(ctx, "other", wire.PW, Range(i*page, (i+1)*page))
		if err != nil {
			t.Fatal(err)
		}
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := tokenRequests(fc, c) - before; n < 16 {
		t.Fatalf("%d token requests for 16 pages without Grow, want at least 16", n)
	}
}
