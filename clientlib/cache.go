package clientlib

import (
	"context"
	"fmt"
	"time"

	"github.com/tokend/tokend/wire"
)

// The token cache (see "Token cache" in the package documentation): a
// grant the application releases while nobody else wants it stays held at
// the worker, as a Token no application handle points to, and the next
// compatible Acquire of its name takes it with no datagram. Everything
// here is guarded by Client.mu.

// Cache defaults.
const (
	// DefaultTokenCache is a good Config.TokenCache: how many released
	// grants a Client keeps cached.
	DefaultTokenCache = 1024
	// DefaultTokenCacheIdle is how long a cached grant waits for a
	// re-acquire when Config.TokenCacheIdle is 0.
	DefaultTokenCacheIdle = 30 * time.Second
	// maxBackgroundReleases bounds the grants being given back in the
	// background beyond which a full cache keeps no more (cacheableLocked).
	maxBackgroundReleases = 64
)

// tokenCache is the LRU list of cached grants: head is the most recently
// released, tail the next to go. Guarded by Client.mu.
type tokenCache struct {
	head, tail *Token
	n          int
}

// cacheRelease is Release's fast path: if no operation holds t's
// operation lock and t is cacheable, t's grant is cached and cacheRelease
// reports true; otherwise Release goes on as without the cache (it waits
// for the lock, withdraws an upgrade, and looks again).
//
// It does not take the operation lock: every holder of that lock (Release,
// Convert, Proof) looks at t under c.mu right after taking it, so an empty
// lock seen under c.mu means that any operation not yet seen will find t
// released, and one already under way (say a Convert waiting for its
// answer) is seen.
func (t *Token) cacheRelease() bool {
	c := t.c
	c.mu.Lock()
	ok := len(t.op) == 0 && c.cacheableLocked(t)
	if ok {
		c.cacheLocked(t)
	}
	c.mu.Unlock()
	return ok
}

// cacheableLocked reports whether releasing t may keep its grant cached
// instead of sending RELEASE: the cache is on and the session open; t is
// the application's (not pending), held, not being reclaimed (its
// validity is checked when it is handed out again); no REVOKE was seen for its fence (someone else wants it);
// and its value block cannot change while it is cached: mode PR, PW or EX
// over the whole token, so no other session may hold a writing grant
// beside it (a CR or NL grant, or one of a byte range, may see a PW
// holder of another range set the value meanwhile, and would hand out a
// stale value).
//
// A full cache evicts a grant for each one it keeps, with a RELEASE in the
// background; while maxBackgroundReleases of those are in flight (a
// worker slow to answer), Release gives its grant back itself instead, so
// an application that churns through names cannot pile up goroutines.
func (c *Client) cacheableLocked(t *Token) bool {
	if c.cacheMax <= 0 || c.state != stateOpen || t.state != tokHeld || t.pending || t.cached ||
		t.reclaiming || len(t.revokes) > 0 || t.upgrade != nil {
		return false
	}
	if c.cache.n >= c.cacheMax && len(c.strays) >= maxBackgroundReleases {
		return false
	}
	if t.mode != wire.PR && t.mode != wire.PW && t.mode != wire.EX {
		return false
	}
	if t.start != 0 || t.end != wire.WholeEnd {
		return false
	}
	l := t.lease
	return l != nil && !l.moved
}

// cacheLocked ends the application's handle t as released and keeps its
// grant under a new Token, the cache entry, which takes t's place in the
// name index and its lease (so keepalives, reclaims and REVOKEs find it as
// any held grant). The entry shares t's operation lock: the old handle can
// only fail with ErrNotHeld from now on. If the cache is full, its least
// recently released entry is given back in the background.
//
// The grant record moves to the entry (a small handle, the only
// allocation of a release and re-acquire) with the application's Lost and
// Done channels cleared; t keeps what it held (relMode, relFence, ...) and
// points to releasedGrant. The entry's
// idle time counts from maintain's last pass (not from a clock read here:
// Release's fast path reads no clock), so it may end up to one pass early.
func (c *Client) cacheLocked(t *Token) {
	at := c.lastMaint
	g := t.grant
	done := g.done
	// The application's period of the grant ends: what cacheableLocked
	// did not already require to be zero is cleared (field by field: a
	// whole-struct store costs write barriers for every pointer).
	g.done, g.doneClosed, g.lost, g.lostClosed, g.err = nil, false, nil, false, nil
	if g.revokes != nil {
		g.revokes = nil
	}
	if g.deferred != nil {
		g.deferred = nil
	}
	g.jeopardy, g.cached, g.cachedAt = false, true, at
	n := &Token{c: c, name: t.name, op: t.op, shard: t.shard, grant: g}
	ts := c.byName[t.name]
	for i := range ts {
		if ts[i] == t {
			ts[i] = n
		}
	}
	g.lease.tokens[g] = n
	t.relMode, t.relVstate, t.relFence, t.relValue = g.mode, g.vstate, g.fence, g.value
	t.grant = &releasedGrant
	if done != nil {
		close(done)
	}
	c.pushLocked(n)
	if c.maintNext.After(at.Add(c.cacheIdle)) {
		kick(c.maintKick) // its idle time ends before maintain would look
	}
	for c.cache.n > c.cacheMax {
		c.evictLocked(c.cache.tail)
	}
}

// hitLocked returns a cached grant of name that serves an Acquire of mode
// over [start, end), taken out of the cache and handed to the caller, or
// nil. It serves when its mode covers mode (wire.Covers: every mode that
// conflicts with the one asked conflicts with it), its range contains the
// one asked, and it is valid for at least freshFor, the validity Acquire
// promises any grant it returns.
//
// It reads the clock with Since, not Now: deadlines carry a monotonic
// reading, so with the real clock that is one monotonic read (time.Since),
// a quarter of the cost of time.Now's wall and monotonic reads.
func (c *Client) hitLocked(name string, mode wire.Mode, start, end uint64) *Token {
	for _, t := range c.byName[name] {
		if !t.cached || !covers[t.mode][mode] || !rangeContains(t.start, t.end, start, end) {
			continue
		}
		if t.state != tokHeld || -c.clk.Since(t.validUntilLocked()) < c.freshFor() {
			continue
		}
		c.unlinkLocked(t)
		t.cached = false
		return t
	}
	return nil
}

// missLocked takes out of the cache the grants of name that must not stay
// beside a new request for mode over [start, end): those that conflict
// with it (the worker would make this session's request wait for its own
// cached grant, or fail it with Try) and those no longer fresh enough to
// serve a hit. It ends them and returns their fences, which the caller
// gives back (giveBack) before it sends its request.
func (c *Client) missLocked(name string, mode wire.Mode, start, end uint64, now time.Time, out []uint64) []uint64 {
	ts := c.byName[name]
	for i := 0; i < len(ts); i++ {
		t := ts[i]
		if !t.cached {
			continue
		}
		conflicts := !wire.Compatible(t.mode, mode) && rangesOverlap(t.start, t.end, start, end)
		if !conflicts && t.validUntilLocked().Sub(now) >= c.freshFor() {
			continue
		}
		fence := t.fence
		t.endLocked(tokReleased, ErrNotHeld, false) // detaches t: ts shrinks
		c.cacheDropped.Add(1)
		if k := (strayKey{name, fence}); !c.strays[k] {
			c.strays[k] = true // a REVOKE meanwhile does not send a second RELEASE
			out = append(out, fence)
		}
		ts = c.byName[name]
		i--
	}
	return out
}

// giveBack releases the grants of name with fences, which missLocked took
// out of the cache, one at a time, and clears their stray marks. Errors are
// logged: a grant not given back ends with a REVOKE or with the session.
func (c *Client) giveBack(ctx context.Context, shard uint32, name string, fences []uint64) {
	for _, fence := range fences {
		err := c.releaseFence(ctx, shard, name, fence)
		c.mu.Lock()
		delete(c.strays, strayKey{name, fence})
		c.mu.Unlock()
		if err != nil {
			c.log.Debug("giving back a cached grant", "token", name, "fence", fence, "err", err)
		}
	}
}

// releaseFence sends RELEASE of fence and waits for the answer.
func (c *Client) releaseFence(ctx context.Context, shard uint32, name string, fence uint64) error {
	cl := &call{typ: wire.TypeRelease, body: wire.Release{Fence: fence, Name: []byte(name)}, shard: shard, routed: true}
	if err := c.register(ctx, cl, false); err != nil {
		return err
	}
	defer c.finish(cl)
	r, _, err := c.exchange(ctx, cl, exOpts{})
	if err != nil {
		return err
	}
	if r.h.Status != wire.StatusOK {
		return fmt.Errorf("RELEASE answered %s %s", r.h.Status, r.msg)
	}
	return nil
}

// evictLocked takes t out of the cache and gives its grant back in the
// background (LRU bound, idle time).
func (c *Client) evictLocked(t *Token) {
	fence := t.fence
	t.endLocked(tokReleased, ErrNotHeld, false)
	c.cacheEvictions.Add(1)
	if c.state == stateOpen {
		c.strayLocked(t.shard, t.name, fence)
	}
}

// expireCacheLocked evicts the cached grants idle for TokenCacheIdle and
// returns when the next one will be.
func (c *Client) expireCacheLocked(now time.Time) time.Time {
	for t := c.cache.tail; t != nil; t = c.cache.tail {
		at := t.cachedAt.Add(c.cacheIdle)
		if now.Before(at) {
			return at
		}
		c.evictLocked(t)
	}
	return now.Add(time.Hour)
}

// pushLocked puts t at the head of the LRU list.
func (c *Client) pushLocked(t *Token) {
	t.cprev, t.cnext = nil, c.cache.head
	if c.cache.head != nil {
		c.cache.head.cprev = t
	} else {
		c.cache.tail = t
	}
	c.cache.head = t
	c.cache.n++
}

// unlinkLocked takes t out of the LRU list.
func (c *Client) unlinkLocked(t *Token) {
	if t.cprev != nil {
		t.cprev.cnext = t.cnext
	} else {
		c.cache.head = t.cnext
	}
	if t.cnext != nil {
		t.cnext.cprev = t.cprev
	} else {
		c.cache.tail = t.cprev
	}
	t.cprev, t.cnext = nil, nil
	c.cache.n--
}

// revokeCachedLocked answers a REVOKE of the cached grant t, which wants
// [start, end) of it: out of the cache, and RELEASE at once; the
// application never hears of it. A grant grown beyond what the REVOKE
// wants (GPFS) is split instead when the wanted part is a prefix or suffix
// of it: that part goes back with a RELEASE flagged RANGE and the rest
// stays cached under the same fence (splitCachedLocked).
func (c *Client) revokeCachedLocked(t *Token, start, end uint64) {
	gs, ge := normRange(t.start, t.end)
	ws, we := normRange(start, end)
	switch {
	case we <= gs || ge <= ws:
		// Nothing of what is left: a REVOKE of the part a split already
		// gives back (its RANGE release is on its way).
		return
	case ws <= gs && ge <= we:
		// All of it (or a hole in the middle, below): give it back whole.
	case ws <= gs:
		c.splitCachedLocked(t, gs, we, we, ge)
		return
	case ge <= we:
		c.splitCachedLocked(t, ws, ge, gs, ws)
		return
	}
	fence := t.fence
	t.endLocked(tokReleased, ErrRevoked, false)
	c.cacheRevoked.Add(1)
	c.strayLocked(t.shard, t.name, fence)
}

// splitCachedLocked gives back [gs, ge) of the cached grant t and keeps
// [ks, ke) cached. The entry shrinks at once (holding less than the worker
// believes is safe); a hit on it then reports ValueUnknown, since another
// client may set the token's value from the part given back. If the
// worker does not take the partial release, the whole grant goes back.
func (c *Client) splitCachedLocked(t *Token, gs, ge, ks, ke uint64) {
	fence := t.fence
	t.start, t.end = ks, ke
	t.vstate, t.value = ValueUnknown, nil
	c.cacheSplits.Add(1)
	key := strayKey{t.name, fence}
	if c.strays[key] {
		return
	}
	c.strays[key] = true
	ok := c.spawnLocked(func() {
		ctx, cancel := c.withTimeout(c.ctx, cleanupTimeout)
		defer cancel()
		cl := &call{typ: wire.TypeRelease, shard: t.shard, routed: true,
			body: wire.Release{Fence: fence, Name: []byte(t.name), HasRange: true, Start: gs, End: ge}}
		err := c.register(ctx, cl, false)
		var r reply
		if err == nil {
			r, _, err = c.exchange(ctx, cl, exOpts{})
			c.finish(cl)
		}
		c.mu.Lock()
		delete(c.strays, key)
		if (err != nil || r.h.Status != wire.StatusOK) && t.cached && t.fence == fence {
			c.log.Debug("splitting a cached grant", "token", t.name, "fence", fence, "status", r.h.Status, "err", err)
			c.unlinkLocked(t)
			t.endLocked(tokReleased, ErrRevoked, false)
			c.cacheRevoked.Add(1)
			c.strayLocked(t.shard, t.name, fence)
		}
		c.mu.Unlock()
	})
	if !ok {
		delete(c.strays, key)
	}
}

// covers is wire.Covers as a table, for the hit path (modes are valid
// there: Acquire checked the one asked, grants carry valid ones).
var covers = func() (tab [wire.EX + 1][wire.EX + 1]bool) {
	for a := range tab {
		for b := range tab[a] {
			tab[a][b] = wire.Covers(wire.Mode(a), wire.Mode(b))
		}
	}
	return tab
}()

// rangeContains reports whether [s1, e1) contains [s2, e2); the whole
// token's spellings (wire.IsWhole) count as [0, WholeEnd).
func rangeContains(s1, e1, s2, e2 uint64) bool {
	s1, e1 = normRange(s1, e1)
	s2, e2 = normRange(s2, e2)
	return s1 <= s2 && e2 <= e1
}

func rangesOverlap(s1, e1, s2, e2 uint64) bool {
	s1, e1 = normRange(s1, e1)
	s2, e2 = normRange(s2, e2)
	return s1 < e2 && s2 < e1
}

func normRange(s, e uint64) (uint64, uint64) {
	if wire.IsWhole(s, e) {
		return 0, wire.WholeEnd
	}
	return s, e
}
