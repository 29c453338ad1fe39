package clientlib

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/tokend/tokend/wire"
)

// Token is a grant held by this client: a token name in a mode over a byte
// range, identified by its fence. Its methods are safe for concurrent use.
//
// A token is valid while the worker that granted it vouches for its shard
// and the session lives (ValidUntil). When that ends without the worker
// answering, the token is "in jeopardy" (Valid is false) and the client tries
// to reclaim it from the shard's new owner; if it cannot, Lost is closed.
type Token struct {
	c     *Client
	name  string
	op    chan struct{} // size 1: serialises Release and Convert (a lock that honours ctx)
	shard uint32
	// What the handle held when Release kept its grant cached (cacheLocked):
	// its grant is then &releasedGrant. Guarded by c.mu.
	relMode   wire.Mode
	relVstate ValueState
	relFence  uint64
	relValue  []byte
	// *grant is the grant record, guarded by c.mu (the pointer too): a
	// cache hit hands the cached record out under a new handle, so a hit
	// allocates only a handle.
	*grant
}

// grant is a Token's state. A released handle whose grant stayed cached
// points to releasedGrant, which nobody writes.
type grant struct {
	// Guarded by c.mu:
	lost       chan struct{} // Lost's channel, made on first use (most tokens are just released)
	lostClosed bool          // Lost is closed, or will be closed when made
	done       chan struct{} // Done's channel, made on first use
	doneClosed bool          // Done is closed, or will be closed when made
	mode       wire.Mode
	fence      uint64
	start, end uint64
	value      []byte
	vstate     ValueState
	lease      *lease
	state      tokenState
	err        error
	reclaiming bool
	revokes    map[revokeKey]bool // revocations handed to the application for this fence
	// pending: granted, but Acquire has not returned it yet (it waits for
	// the grant to be confirmed valid). Nobody relies on it, so the grace
	// rule does not declare it lost, and its revocations wait in deferred
	// until the application has the token.
	pending  bool
	deferred []func()
	jeopardy bool // OnJeopardy was called for the current stretch of doubt
	// upgrade withdraws the upgrading Convert that waits in the token's
	// queue, so that Release and a downgrade never wait behind it.
	upgrade context.CancelCauseFunc
	// cached: a grant the application released, kept for a re-acquire
	// (cache.go); no application handle points to it. cachedAt is when,
	// cprev and cnext its neighbours in the LRU list.
	cached       bool
	cachedAt     time.Time
	cprev, cnext *Token
}

// releasedGrant is the grant of every handle released into the cache:
// released (ErrNotHeld), Done closed, Lost never closed; read-only.
var releasedGrant = grant{state: tokReleased, err: ErrNotHeld, done: closedChan, doneClosed: true,
	lost: make(chan struct{}), end: wire.WholeEnd}

// cachedAway reports whether t was released into the cache (its grant
// went on under another handle). Under c.mu.
func (t *Token) cachedAway() bool { return t.grant == &releasedGrant }

// Revocation is a worker's request that this client give back a grant
// because another request conflicts with it (Config.OnRevoke).
type Revocation struct {
	Fence      uint64    // the grant it concerns
	Mode       wire.Mode // the mode held under Fence when the REVOKE arrived
	Wanted     wire.Mode // keep at most this mode (wire.NL: release the token)
	Start, End uint64    // the range the conflicting request wants
}

// TokenState is what a Token is now (Token.State).
type TokenState uint8

const (
	// TokenValid: held, and valid now (Valid is true).
	TokenValid TokenState = iota
	// TokenInJeopardy: held, but its validity ran out without renewal; the
	// client is renewing or reclaiming it. Do not rely on it.
	TokenInJeopardy
	// TokenReleased: given back by Release (or by the library after a
	// conversion was canceled; Err says).
	TokenReleased
	// TokenLost: lost (Err says why; Lost is closed).
	TokenLost
)

func (s TokenState) String() string {
	switch s {
	case TokenValid:
		return "valid"
	case TokenInJeopardy:
		return "in jeopardy"
	case TokenReleased:
		return "released"
	case TokenLost:
		return "lost"
	}
	return fmt.Sprintf("TokenState(%d)", uint8(s))
}

// ValueState says what Token.Value holds.
type ValueState uint8

const (
	ValueNone  ValueState = iota // no value block was ever set for the token
	ValueValid                   // Value returns it
	ValueLost                    // it was lost with a crashed worker before anyone could give it back
	// ValueUnknown: the grant came from the token cache after part of it
	// was given back to another client, who may have set the value since;
	// acquire with the cache off to read it.
	ValueUnknown
)

func (s ValueState) String() string {
	switch s {
	case ValueNone:
		return "none"
	case ValueValid:
		return "valid"
	case ValueLost:
		return "lost"
	case ValueUnknown:
		return "unknown"
	}
	return fmt.Sprintf("ValueState(%d)", uint8(s))
}

type tokenState uint8

const (
	tokHeld tokenState = iota
	tokReleased
	tokLost
)

type revokeKey struct {
	wanted     wire.Mode
	start, end uint64
}

type strayKey struct {
	name  string
	fence uint64
}

// Name returns the token's name.
func (t *Token) Name() string { return t.name }

// Mode returns the mode held.
func (t *Token) Mode() wire.Mode {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.cachedAway() {
		return t.relMode
	}
	return t.mode
}

// Range returns the byte range [start, end) held; the whole token is
// (0, wire.WholeEnd).
func (t *Token) Range() (start, end uint64) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return t.start, t.end
}

// Fence returns the grant's fence: it strictly increases for the token
// across all grants, so storage can refuse writes from an older holder. An
// upgrading Convert changes it; a downgrade and a reclaim keep it.
func (t *Token) Fence() uint64 {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.cachedAway() {
		return t.relFence
	}
	return t.fence
}

// Value returns a copy of the token's value block as of the grant and
// whether it is valid (it is not if none was set, or if it was lost in a
// worker crash: ValueState tells which).
func (t *Token) Value() (v []byte, valid bool) {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.cachedAway() {
		return slices.Clone(t.relValue), t.relVstate == ValueValid
	}
	return slices.Clone(t.value), t.vstate == ValueValid
}

// ValueState tells a valid value block from one never set and one lost.
func (t *Token) ValueState() ValueState {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.cachedAway() {
		return t.relVstate
	}
	return t.vstate
}

// State returns what the token is now: valid, in jeopardy, released or
// lost, in one call.
func (t *Token) State() TokenState {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case t.state == tokReleased:
		return TokenReleased
	case t.state == tokLost:
		return TokenLost
	case c.now().Before(t.validUntilLocked()):
		return TokenValid
	}
	return TokenInJeopardy
}

// ValidUntil returns the conservative local deadline of the grant: the
// earlier of the session's and the shard lease's, counted from when the
// requests that renewed them were first sent, less the client margin. It is
// the zero time once the token is no longer held.
func (t *Token) ValidUntil() time.Time {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return t.validUntilLocked()
}

func (t *Token) validUntilLocked() time.Time {
	if t.state != tokHeld || t.lease == nil {
		return time.Time{}
	}
	dl := t.lease.deadline
	if t.c.sessDL.Before(dl) {
		dl = t.c.sessDL
	}
	return dl
}

// Valid reports whether the grant is valid now: held, and before
// ValidUntil. A held token that is not valid is in jeopardy: act on it only
// with its fence checked by storage.
func (t *Token) Valid() bool {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now().Before(t.validUntilLocked())
}

// Lost returns a channel closed when the client can no longer be sure the
// grant is valid and cannot get it back (Err says why): the session ended,
// the grant was neither vouched for nor reclaimed within the grace period,
// the reclaim was refused, the default revocation handler gave it back, or
// the Client was closed. It is closed before any other client can be
// granted a conflicting token. It is not closed by the application's own
// Release.
func (t *Token) Lost() <-chan struct{} {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.lost == nil {
		if t.lostClosed {
			return closedChan
		}
		t.lost = make(chan struct{})
	}
	return t.lost
}

// Done returns a channel closed when the token ends for any reason: the
// application's Release, a loss (Lost closes too) or Close. Err then says
// which.
func (t *Token) Done() <-chan struct{} {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	if t.done == nil {
		if t.doneClosed {
			return closedChan
		}
		t.done = make(chan struct{})
	}
	return t.done
}

// closedChan is the Lost or Done channel of a token that ended before
// anyone asked for it.
var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// closeLostLocked closes Lost (made lazily: most tokens are released, and
// nobody looks at their Lost channel).
func (t *Token) closeLostLocked() {
	t.lostClosed = true
	if t.lost != nil {
		close(t.lost)
	}
}

// endLocked ends the token: state (released or lost) with err, out of the
// client's indexes, Done closed; with lost, Lost too.
func (t *Token) endLocked(state tokenState, err error, lost bool) {
	if t.cachedAway() {
		return
	}
	t.c.detachLocked(t)
	t.settleLocked(state, err, lost)
}

// settleLocked is endLocked for a t already out of the client's indexes.
func (t *Token) settleLocked(state tokenState, err error, lost bool) {
	if t.cachedAway() {
		return // ended already; releasedGrant is read-only
	}
	t.state, t.err = state, err
	t.deferred = nil
	if lost {
		t.closeLostLocked()
	}
	if !t.doneClosed {
		t.doneClosed = true
		if t.done != nil {
			close(t.done)
		}
	}
}

// Err returns nil while the token is held, ErrNotHeld after Release, and
// otherwise why Lost was closed (wrapping ErrLost, ErrSessionExpired,
// ErrRevoked or ErrClosed).
func (t *Token) Err() error {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	return t.err
}

func (t *Token) errLocked() error {
	if t.err != nil {
		return t.err
	}
	return ErrNotHeld
}

// lock takes the token's operation lock.
func (t *Token) lock(ctx context.Context) error {
	select {
	case t.op <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.c.ctx.Done():
		return ErrClosed
	}
}

func (t *Token) unlock() { <-t.op }

// Acquire asks for the token name (1..255 bytes) in mode over the whole
// token or Range, waiting in the token's queue until it is granted, Wait
// passes (ErrTimeout) or ctx ends, unless Try is given (ErrConflict at once).
// Holders of conflicting grants are asked to give them back (OnRevoke).
//
// When ctx ends while the request is queued or unanswered, Acquire returns at
// once and the client cancels the request in the background (CANCEL), giving
// back the grant if it was made meanwhile.
func (c *Client) Acquire(ctx context.Context, name string, mode wire.Mode, opts ...Option) (*Token, error) {
	o := collectOptions(opts)
	switch {
	case len(name) == 0 || len(name) > wire.MaxName:
		return nil, fmt.Errorf("%s: %w: name must be 1..%d bytes", acquireOp(name), ErrBadRequest, wire.MaxName)
	case !mode.Valid():
		return nil, fmt.Errorf("%s: %w: mode %d", acquireOp(name), ErrBadRequest, mode)
	case o.hasValue:
		return nil, fmt.Errorf("%s: %w: SetValue is for Release and Convert", acquireOp(name), ErrBadRequest)
	case !wire.IsWhole(o.start, o.end) && o.start >= o.end:
		return nil, fmt.Errorf("%s: %w: empty range [%d, %d)", acquireOp(name), ErrBadRequest, o.start, o.end)
	}
	if c.cacheMax > 0 {
		c.mu.Lock()
		if c.state == stateOpen {
			if t := c.hitLocked(name, mode, o.start, o.end); t != nil {
				c.mu.Unlock()
				c.cacheHits.Add(1)
				return t, nil
			}
			var drop [4]uint64
			fences := c.missLocked(name, mode, o.start, o.end, c.now(), drop[:0])
			c.mu.Unlock()
			c.cacheMisses.Add(1)
			if len(fences) > 0 {
				// Given back first: the worker would make this request
				// wait for (or, with Try, fail on) this session's own
				// cached grant.
				c.giveBack(ctx, wire.Shard([]byte(name), c.shardCount), name, fences)
			}
		} else {
			c.mu.Unlock()
		}
	}
	if err := c.usable(); err != nil {
		return nil, fmt.Errorf("%s: %w", acquireOp(name), err)
	}
	try, waitMs := waitParams(ctx, &o)
	cl := newCall()
	cl.acq = wire.Acquire{Try: try, Detect: o.detect, Grow: o.grow, Mode: mode, WaitMs: waitMs, Start: o.start, End: o.end, Name: cl.nameBytes(name)}
	cl.typ, cl.body, cl.name, cl.routed = wire.TypeAcquire, &cl.acq, name, true
	cl.shard = wire.Shard(cl.acq.Name, c.shardCount)
	if err := c.register(ctx, cl, true); err != nil {
		putCall(cl)
		return nil, fmt.Errorf("%s: %w", acquireOp(name), err)
	}
	r, res, err := c.exchange(ctx, cl, exOpts{})
	if err != nil {
		if ctx.Err() != nil && cl.sends > 0 {
			// It may have been queued or even granted: cancel it in the
			// background; the id stays unfinished until that is done.
			// abandonAcquire keeps cl: it does not go back to the pool.
			if !c.spawn(func() { c.abandonAcquire(cl) }) {
				c.finish(cl)
			}
		} else {
			c.finish(cl)
			putCall(cl)
		}
		return nil, giveUp(acquireOp(name), err, res)
	}
	if r.h.Status != wire.StatusOK {
		c.finish(cl)
		putCall(cl)
		return nil, statusError(acquireOp(name), &r)
	}
	t := &Token{c: c, name: name, shard: cl.shard, op: make(chan struct{}, 1), grant: &grant{pending: true}}
	c.mu.Lock()
	c.finishLocked(cl)
	if c.state != stateOpen && c.state != stateClosing {
		// The session ended or the client closed as the grant arrived.
		err := c.closedErrLocked()
		c.mu.Unlock()
		putCall(cl)
		return nil, fmt.Errorf("%s: %w", acquireOp(name), err)
	}
	c.byName[name] = append(c.byName[name], t)
	c.applyGrantLocked(t, cl, &r)
	fresh := c.freshLocked(t)
	c.mu.Unlock()
	putCall(cl)
	if !fresh {
		if err := c.confirm(ctx, t); err != nil {
			return nil, fmt.Errorf("%s: %w", acquireOp(name), err)
		}
	}
	return t, nil
}

// freshFor is the validity a grant has left, at least, when Acquire or
// Convert returns it: half the workers' lease TTL W (or of the session TTL
// S if that is shorter), less the margin. Every grant of a worker that can
// vouch for its lease has more (it renews its lease every W/4, the client
// its session every S/3); only a grant made after a long wait in a queue,
// or while the worker cannot renew its lease, needs confirming first.
func (c *Client) freshFor() time.Duration {
	d := min(c.workerTTL, c.sessionTTL)
	return (d - c.margin(d)) / 2
}

// freshLocked reports whether t is valid for at least freshFor; if so, a
// pending t is handed to the application (its deferred revocations run).
func (c *Client) freshLocked(t *Token) bool {
	if t.state != tokHeld || t.validUntilLocked().Sub(c.now()) < c.freshFor() {
		return false
	}
	if t.pending {
		t.pending = false
		for _, run := range t.deferred {
			c.spawnLocked(run)
		}
		t.deferred = nil
	}
	return true
}

// confirm waits until t is valid for at least freshFor (SPEC.md 13): a
// grant that waited in a queue may come with a validity counted from the
// first send of its request, long ago. A KEEPALIVE sent now for its shard
// makes the worker vouch anew, counted from now; if the shard moved, the
// reclaim at its new owner does. If ctx ends first, or t is lost, a pending
// t is given back and confirm returns why.
func (c *Client) confirm(ctx context.Context, t *Token) error {
	poll, pollC := c.clk.NewTimer(time.Hour) // reset before each wait
	defer poll.Stop()
	for {
		c.mu.Lock()
		if c.freshLocked(t) {
			c.mu.Unlock()
			return nil
		}
		if t.state != tokHeld {
			err := t.errLocked()
			c.mu.Unlock()
			return fmt.Errorf("granted, then %w", err)
		}
		if l := t.lease; l != nil && !l.moved {
			c.keepaliveSoonLocked(l.key.addr)
		}
		if c.sessDL.Sub(c.now()) < c.freshFor() && !c.renewing {
			c.nextRenew = time.Time{}
			kick(c.maintKick)
		}
		if c.vouched == nil {
			c.vouched = make(chan struct{})
		}
		vouched := c.vouched
		c.mu.Unlock()
		resetTimer(poll, pollC, max(c.cfg.RTOMin, 50*time.Millisecond))
		var err error
		select {
		case <-vouched:
			continue
		case <-pollC:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("granted, but %w: the worker did not vouch for the grant before the context ended: %w", ErrUnavailable, ctx.Err())
		case <-c.ctx.Done():
			err = ErrClosed
		case <-c.dead:
			err = c.deadError()
		}
		c.mu.Lock()
		if t.pending && t.state == tokHeld {
			fence := t.fence
			t.endLocked(tokReleased, err, false)
			if c.state == stateOpen {
				c.strayLocked(t.shard, t.name, fence)
			}
		}
		c.mu.Unlock()
		return err
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func acquireOp(name string) string { return fmt.Sprintf("clientlib: acquire %q", name) }

func (c *Client) closedErrLocked() error {
	if c.state == stateDead {
		return c.deadErr
	}
	return ErrClosed
}

// waitParams turns the options and ctx into ACQUIRE/CONVERT's TRY and wait_ms.
func waitParams(ctx context.Context, o *reqOptions) (try bool, ms uint32) {
	if o.try || (o.hasWait && o.wait <= 0) {
		return true, 0
	}
	if o.hasWait {
		return false, durMs(o.wait)
	}
	if dl, ok := ctx.Deadline(); ok {
		// A context's deadline is in the system's time.
		return false, durMs(time.Until(dl))
	}
	return false, wire.WaitForever
}

// durMs rounds d up to whole milliseconds in 1..WaitForever-1.
func durMs(d time.Duration) uint32 {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	switch {
	case ms < 1:
		return 1
	case ms >= time.Duration(wire.WaitForever):
		return wire.WaitForever - 1
	}
	return uint32(ms)
}

// applyGrantLocked makes t hold the grant in r (a GRANT answering cl, or
// GRANT_ASYNC for it) and renews the lease of the shard it came from. An
// asynchronous grant gets the later of the lease's current deadline and the
// grant's own validity counted from cl's first send (SPEC.md 13); either
// way, a deadline that is near makes a keepalive go out at once.
func (c *Client) applyGrantLocked(t *Token, cl *call, r *reply) {
	l := c.leaseLocked(leaseKey{r.from, t.shard, r.h.Epoch})
	if !l.planned {
		// A lease to watch, maybe a worker to keep alive: maintLoop must
		// plan anew. (A planned lease's deadline only moves later, which
		// the current plan covers: waking maintLoop for every grant cost a
		// goroutine hop and a pass over the leases per acquire.)
		kick(c.maintKick)
	}
	c.extendLocked(l, c.leaseEnd(cl.firstSend, r.validity))
	if r.fence != t.fence {
		t.revokes = nil
	}
	t.fence, t.mode, t.start, t.end = r.fence, r.mode, r.start, r.end
	t.value, t.vstate = r.value()
	c.attachLocked(t, l)
	if l.deadline.Sub(c.now()) < c.kaInterval() {
		c.keepaliveSoonLocked(l.key.addr)
	}
	c.checkMovedLocked(l)
}

func (c *Client) leaseLocked(k leaseKey) *lease {
	l := c.leases[k]
	if l == nil {
		l = &lease{key: k, tokens: map[*grant]*Token{}}
		c.leases[k] = l
	}
	return l
}

func (c *Client) attachLocked(t *Token, l *lease) {
	if t.lease == l {
		return
	}
	if t.lease != nil {
		delete(t.lease.tokens, t.grant)
	}
	t.lease = l
	l.tokens[t.grant] = t
}

// detachLocked forgets t: it leaves its lease, the name index and the
// cache.
func (c *Client) detachLocked(t *Token) {
	if t.cached {
		c.unlinkLocked(t)
		t.cached = false
	}
	if t.lease != nil {
		delete(t.lease.tokens, t.grant)
		t.lease = nil
	}
	ts := slices.DeleteFunc(c.byName[t.name], func(u *Token) bool { return u == t })
	if len(ts) == 0 {
		delete(c.byName, t.name)
	} else {
		c.byName[t.name] = ts
	}
}

// findLocked returns the held token name with fence, or nil.
func (c *Client) findLocked(name []byte, fence uint64) *Token {
	for _, t := range c.byName[string(name)] {
		if t.fence == fence {
			return t
		}
	}
	return nil
}

// loseLocked declares t lost with err and closes Lost. With release, the
// grant is also given back (best effort), in case the worker still has it.
func (c *Client) loseLocked(t *Token, err error, release bool) {
	if t.state != tokHeld {
		return
	}
	quiet := t.pending || t.cached
	t.endLocked(tokLost, err, true)
	if errors.Is(err, ErrClosed) || quiet {
		// Close ends what is still held, and a grant Acquire never
		// returned, or one in the cache, was nobody's: neither is news
		// for the operator.
		c.log.Debug("token ended", "token", t.name, "fence", t.fence, "err", err)
	} else {
		c.log.Warn("token lost", "token", t.name, "fence", t.fence, "err", err)
		if h := c.cfg.OnLost; h != nil {
			c.spawnLocked(func() { h(t, err) })
		}
	}
	if release && c.state == stateOpen {
		c.strayLocked(t.shard, t.name, t.fence)
	}
}

func (c *Client) loseAllLocked(err error, release bool) {
	var all []*Token
	for _, ts := range c.byName {
		all = append(all, ts...)
	}
	for _, t := range all {
		c.loseLocked(t, err, release)
	}
}

// Release gives the token back. With SetValue (PW and EX holders only) it
// also sets the token's value block. With Config.TokenCache set, a
// grant nobody else asked for is kept cached for a re-acquire instead of
// being sent back (see "Token cache" in the package documentation); to
// the application it is released all the same. The token stops being valid at once,
// whatever the outcome: if the worker cannot be reached before ctx ends, the
// grant ends with a later revocation or with the session. It returns
// ErrNotHeld if the token was already released, the reason it was lost if it
// was, and ErrNotHeld (from the worker) if the worker did not know the grant.
func (t *Token) Release(ctx context.Context, opts ...ReleaseOption) error {
	return t.release(ctx, collectReleaseOptions(opts), nil)
}

// release gives the token back; reason, if not nil, closes Lost with it
// (the library releasing on the application's behalf).
func (t *Token) release(ctx context.Context, o releaseOptions, reason error) error {
	c := t.c
	if reason == nil && !o.hasValue && c.cacheMax > 0 && t.cacheRelease() {
		return nil
	}
	if len(o.value) > wire.MaxValue {
		return fmt.Errorf("%s: %w: value longer than %d bytes", releaseOp(t.name), ErrBadRequest, wire.MaxValue)
	}
	t.withdrawUpgrade()
	if err := t.lock(ctx); err != nil {
		return fmt.Errorf("%s: %w", releaseOp(t.name), err)
	}
	defer t.unlock()
	c.mu.Lock()
	if t.state != tokHeld {
		err := t.errLocked()
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", releaseOp(t.name), err)
	}
	if o.hasValue && !t.mode.Writes() {
		c.mu.Unlock()
		return fmt.Errorf("%s: %w: a %s holder cannot set the value", releaseOp(t.name), ErrBadRequest, t.mode)
	}
	fence := t.fence
	var heldAt uint32 // the shard epoch whose owner vouches for the grant
	if t.lease != nil {
		heldAt = t.lease.key.epoch
	}
	if reason == nil && !o.hasValue && c.cacheableLocked(t) {
		c.cacheLocked(t)
		c.mu.Unlock()
		return nil
	}
	if reason != nil {
		t.endLocked(tokReleased, reason, true)
	} else {
		t.endLocked(tokReleased, ErrNotHeld, false)
	}
	// While this RELEASE is in flight the fence is no longer a Token, but
	// it is not a stray either: a REVOKE for it must not send a second
	// RELEASE, which could overtake ours and turn our retransmission into
	// NOT_HELD.
	key := strayKey{t.name, fence}
	inFlight := !c.strays[key]
	if inFlight {
		c.strays[key] = true
	}
	c.mu.Unlock()
	cl := newCall()
	cl.rel = wire.Release{Fence: fence, Name: cl.nameBytes(t.name), HasValue: o.hasValue, Value: o.value}
	cl.typ, cl.body, cl.shard, cl.routed = wire.TypeRelease, &cl.rel, t.shard, true
	var r reply
	var res exResult
	regErr := c.register(ctx, cl, true)
	err := regErr
	if err == nil {
		r, res, err = c.exchange(ctx, cl, exOpts{})
	}
	c.mu.Lock()
	c.finishLocked(cl) // nothing if register failed
	if inFlight {
		delete(c.strays, key)
	}
	c.mu.Unlock()
	putCall(cl)
	switch {
	case regErr != nil:
		return fmt.Errorf("%s: %w", releaseOp(t.name), regErr)
	case err != nil:
		return giveUp(releaseOp(t.name), err, res)
	}
	if r.h.Status == wire.StatusNotHeld && r.h.Epoch > heldAt && heldAt != 0 && !o.hasValue {
		// The shard moved (its worker died, or a rebalance) before this
		// client reclaimed the grant, and the RELEASE followed it to the
		// new owner, which does not have the grant: it ended with the
		// move, and nothing is left to give back. Had the grant been
		// carried over (reclaimed, handed off) the new owner would have it.
		// (A value to set is not stored, so that case stays an error.)
		return nil
	}
	if r.h.Status != wire.StatusOK {
		return statusError(releaseOp(t.name), &r)
	}
	return nil
}

func releaseOp(name string) string { return fmt.Sprintf("clientlib: release %q", name) }

// ReleaseRange gives back only [start, end) of the grant, a prefix or a
// suffix of its range (Range(0, 0) style whole-token bounds as in Range),
// and keeps the rest under the same fence (wire/SPEC.md section 10, RELEASE
// flag RANGE): what a holder of a grown grant (Grow) does when a REVOKE
// names a part it does not need. Range then reports what is left; the
// fence must no longer be used for the bytes given back. A range equal to
// the grant's is a full Release. Errors: ErrBadRequest for a range that is
// not a prefix or suffix (nothing changes), ErrNotHeld if the token is not
// held (also while it sits released in the token cache).
func (t *Token) ReleaseRange(ctx context.Context, start, end uint64) error {
	c := t.c
	op := releaseOp(t.name)
	if wire.IsWhole(start, end) {
		start, end = wire.WholeStart, wire.WholeEnd
	}
	if err := t.lock(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	c.mu.Lock()
	if t.state != tokHeld || t.cachedAway() {
		err := t.errLocked()
		c.mu.Unlock()
		t.unlock()
		return fmt.Errorf("%s: %w", op, err)
	}
	gs, ge := t.start, t.end
	if wire.IsWhole(gs, ge) {
		gs, ge = wire.WholeStart, wire.WholeEnd
	}
	if start == gs && end == ge {
		c.mu.Unlock()
		t.unlock()
		return t.Release(ctx)
	}
	prefix := start == gs && end > gs && end < ge
	suffix := end == ge && start > gs && start < ge
	if !prefix && !suffix {
		c.mu.Unlock()
		t.unlock()
		return fmt.Errorf("%s: %w: [%d, %d) is not a prefix or suffix of the grant [%d, %d)", op, ErrBadRequest, start, end, gs, ge)
	}
	fence := t.fence
	c.mu.Unlock()
	defer t.unlock()
	cl := newCall()
	cl.rel = wire.Release{Fence: fence, Name: cl.nameBytes(t.name), HasRange: true, Start: start, End: end}
	cl.typ, cl.body, cl.shard, cl.routed = wire.TypeRelease, &cl.rel, t.shard, true
	var r reply
	var res exResult
	regErr := c.register(ctx, cl, true)
	err := regErr
	if err == nil {
		r, res, err = c.exchange(ctx, cl, exOpts{})
	}
	c.mu.Lock()
	c.finishLocked(cl)
	if err == nil && r.h.Status == wire.StatusOK && t.fence == fence {
		if prefix {
			t.start = end
		} else {
			t.end = start
		}
	}
	c.mu.Unlock()
	putCall(cl)
	switch {
	case regErr != nil:
		return fmt.Errorf("%s: %w", op, regErr)
	case err != nil:
		return giveUp(op, err, res)
	case r.h.Status != wire.StatusOK:
		return statusError(op, &r)
	}
	return nil
}

// Proof returns a fence proof of this grant: its token name, fence, mode
// and range, signed by the worker serving the token with the cluster's
// fence key (docs/SECURITY.md §4). Send it to storage with the write:
// storage checks it with fenceproof.Verify and the cluster's public fence
// key (tokenctl fence-key, or /tokend/fence-key in etcd) without calling
// tokend, then compares the fence as before. Asking is a round trip to the
// worker; a proof stays true of its fence, so one per grant is enough.
//
// It fails with ErrNotHeld if the token is no longer held (released, lost,
// or converted to a new fence since), and with ErrBadRequest against a
// cluster that runs without authentication (--insecure), whose workers
// have no key to sign with.
func (t *Token) Proof(ctx context.Context) ([]byte, error) {
	c := t.c
	op := fmt.Sprintf("clientlib: fence proof of %q", t.name)
	if err := t.lock(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer t.unlock()
	c.mu.Lock()
	if t.state != tokHeld {
		err := t.errLocked()
		c.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	body := wire.FenceProof{Fence: t.fence, Start: t.start, End: t.end, Name: []byte(t.name)}
	c.mu.Unlock()
	cl := &call{typ: wire.TypeFenceProof, body: body, shard: t.shard, routed: true}
	if err := c.register(ctx, cl, true); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	r, res, err := c.exchange(ctx, cl, exOpts{})
	c.finish(cl)
	switch {
	case err != nil:
		return nil, giveUp(op, err, res)
	case r.h.Status != wire.StatusOK:
		return nil, statusError(op, &r)
	}
	return r.proof, nil
}

// Convert changes the mode of the grant in place. A downgrade (to a mode
// that mode covers, wire.Covers) is immediate, keeps the fence and may set
// the value block (SetValue, from PW or EX). An upgrade may wait like
// Acquire (Try, Wait, ctx) and gets a new fence. Range is ignored.
//
// If ctx ends while an upgrade waits, the client cancels it and finds out
// what happened before returning: the token is then either unchanged, or
// converted (Convert returns nil), or, if the worker had granted the
// conversion just before the cancel released it, no longer held (Lost closes).
func (t *Token) Convert(ctx context.Context, mode wire.Mode, opts ...Option) error {
	c := t.c
	op := fmt.Sprintf("clientlib: convert %q to %s", t.name, mode)
	o := collectOptions(opts)
	if !mode.Valid() {
		return fmt.Errorf("%s: %w: mode %d", op, ErrBadRequest, mode)
	}
	if len(o.value) > wire.MaxValue {
		return fmt.Errorf("%s: %w: value longer than %d bytes", op, ErrBadRequest, wire.MaxValue)
	}
	c.mu.Lock()
	cur := t.mode
	c.mu.Unlock()
	if wire.Covers(cur, mode) {
		t.withdrawUpgrade() // a downgrade does not wait behind a queued upgrade
	}
	if err := t.lock(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	confirm, err := t.convertLocked(ctx, op, mode, &o)
	t.unlock()
	if err != nil || !confirm {
		return err
	}
	if err := c.confirm(ctx, t); err != nil {
		return fmt.Errorf("%s: converted, but %w", op, err)
	}
	return nil
}

// errWithdrawn ends an upgrade that waited in the queue when the
// application releases or downgrades the same token meanwhile.
var errWithdrawn = fmt.Errorf("%w: the upgrade was withdrawn because the token is being released or downgraded", ErrCanceled)

// withdrawUpgrade cancels the upgrading Convert of t that waits, if any;
// the Convert then settles the token's state and returns.
func (t *Token) withdrawUpgrade() {
	t.c.mu.Lock()
	up := t.upgrade
	t.c.mu.Unlock()
	if up != nil {
		up(errWithdrawn)
	}
}

// convertLocked is Convert under the token's operation lock; confirm says
// that the conversion was granted but is not yet valid for freshFor.
func (t *Token) convertLocked(ctx context.Context, op string, mode wire.Mode, o *reqOptions) (confirm bool, err error) {
	c := t.c
	c.mu.Lock()
	if t.state != tokHeld {
		err := t.errLocked()
		c.mu.Unlock()
		return false, fmt.Errorf("%s: %w", op, err)
	}
	cur, fence := t.mode, t.fence
	c.mu.Unlock()
	down := wire.Covers(cur, mode)
	switch {
	case mode == cur && !o.hasValue:
		return false, nil
	case o.hasValue && (!down || !cur.Writes()):
		return false, fmt.Errorf("%s: %w: only a downgrade from PW or EX can set the value", op, ErrBadRequest)
	}
	try, waitMs := waitParams(ctx, o)
	body := wire.Convert{Try: try, Detect: o.detect, Fence: fence, Mode: mode, WaitMs: waitMs, Name: []byte(t.name),
		HasValue: o.hasValue, Value: o.value}
	cl := &call{typ: wire.TypeConvert, body: body, name: t.name, shard: t.shard, routed: true}
	if err := c.register(ctx, cl, true); err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	uctx := ctx
	if !down {
		var cancel context.CancelCauseFunc
		uctx, cancel = context.WithCancelCause(ctx)
		c.mu.Lock()
		t.upgrade = cancel
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			t.upgrade = nil
			c.mu.Unlock()
			cancel(nil)
		}()
	}
	r, res, err := c.exchange(uctx, cl, exOpts{})
	if err != nil {
		if uctx.Err() == nil || cl.sends == 0 {
			c.finish(cl)
			return false, giveUp(op, err, res)
		}
		if cause := context.Cause(uctx); cause != nil {
			err = cause
		}
		if down {
			// A downgrade never waits; it may or may not have been applied.
			// Holding the weaker mode is the safe belief.
			c.mu.Lock()
			if t.state == tokHeld && t.fence == fence {
				t.mode = mode
			}
			c.finishLocked(cl)
			c.mu.Unlock()
			return false, giveUp(op, err, res)
		}
		return false, t.abandonConvert(cl, fence, giveUp(op, err, res))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finishLocked(cl)
	if r.h.Status == wire.StatusOK {
		if t.state != tokHeld {
			return false, nil
		}
		c.applyGrantLocked(t, cl, &r)
		return !c.freshLocked(t), nil
	}
	if r.h.Status == wire.StatusNotHeld {
		// The worker does not have the grant: believing otherwise is unsafe.
		c.loseLocked(t, fmt.Errorf("%w: the worker does not know the grant (convert answered NOT_HELD)", ErrLost), false)
	}
	return false, statusError(op, &r)
}

// abandonConvert cancels an upgrade whose caller gave up and settles the
// token's state from what the worker says (see Convert). cl is finished.
func (t *Token) abandonConvert(cl *call, fence uint64, cause error) error {
	c := t.c
	ctx, cancel := c.withTimeout(c.ctx, cleanupTimeout)
	defer cancel()
	out, r := c.abandon(ctx, cl)
	// cl is finished (deferred) only after the outcome is applied, so that
	// a REVOKE of the new fence, parked meanwhile, finds it.
	defer c.finish(cl)
	if out == outCanceled {
		// Withdrawn from the queue, or granted and then released (with the
		// whole grant) by the CANCEL: a worker may answer CANCELED either
		// way. A conversion to the mode held, with the old fence, tells.
		out, r = t.probe(ctx, fence)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.state != tokHeld || t.fence != fence {
		return cause
	}
	switch out {
	case outWithdrawn:
		return cause
	case outHeld:
		c.applyGrantLocked(t, cl, &r)
		return nil
	case outReleased:
		t.endLocked(tokReleased, fmt.Errorf("%w: the conversion was granted as it was canceled, which released the grant", ErrLost), true)
		return fmt.Errorf("%w; %w", cause, t.err)
	}
	c.loseLocked(t, fmt.Errorf("%w: outcome of a canceled conversion unknown", ErrLost), true)
	return fmt.Errorf("%w; %w", cause, t.err)
}

// probe asks whether the grant fence of t still stands, with a CONVERT to
// the mode held (a downgrade to itself: immediate, nothing changes): OK
// means it does (outWithdrawn), NOT_HELD that it is gone (outReleased).
func (t *Token) probe(ctx context.Context, fence uint64) (abandonOutcome, reply) {
	c := t.c
	c.mu.Lock()
	mode := t.mode
	c.mu.Unlock()
	cl := &call{typ: wire.TypeConvert, body: wire.Convert{Fence: fence, Mode: mode, Name: []byte(t.name)},
		name: t.name, shard: t.shard, routed: true}
	if c.register(ctx, cl, false) != nil {
		return outUnknown, reply{}
	}
	defer c.finish(cl)
	r, _, err := c.exchange(ctx, cl, exOpts{stopAtQueued: true})
	switch {
	case err != nil:
		return outUnknown, reply{}
	case r.h.Status == wire.StatusOK && r.fence == fence:
		return outWithdrawn, r
	case r.h.Status == wire.StatusNotHeld:
		return outReleased, r
	}
	return outUnknown, r
}

// abandonOutcome is what became of a canceled ACQUIRE or CONVERT.
type abandonOutcome uint8

const (
	outUnknown   abandonOutcome = iota // the worker could not be asked
	outWithdrawn                       // nothing was granted (or it ended otherwise)
	outHeld                            // it was granted and the grant stands
	outReleased                        // it was granted and the CANCEL released that grant
	outCanceled                        // the CANCEL did something: withdrawn or released
)

// abandon withdraws target, an ACQUIRE or CONVERT whose caller gave up:
// CANCEL it, then resend the target's id to learn its outcome from the reply
// cache (SPEC.md 11, 14). A target that turns out queued (it arrived after
// the CANCEL) is canceled again. A target answered GRANT stands if the
// CANCEL found nothing to cancel, and was released by the CANCEL otherwise;
// any other answer after a successful CANCEL is outCanceled. The caller
// finishes target afterwards.
func (c *Client) abandon(ctx context.Context, target *call) (abandonOutcome, reply) {
	for range 4 {
		cc := &call{typ: wire.TypeCancel, body: wire.Cancel{Target: target.id}, shard: target.shard, routed: true}
		if c.register(ctx, cc, false) != nil {
			return outUnknown, reply{}
		}
		r, _, err := c.exchange(ctx, cc, exOpts{})
		c.finish(cc)
		if err != nil {
			return outUnknown, reply{}
		}
		canceled := r.h.Status == wire.StatusOK
		target.drain()
		p, _, err := c.exchange(ctx, target, exOpts{stopAtQueued: true})
		switch {
		case err != nil:
			return outUnknown, reply{}
		case p.h.Status == wire.StatusQueued:
			continue
		case p.h.Status == wire.StatusOK && canceled:
			return outReleased, p
		case p.h.Status == wire.StatusOK:
			return outHeld, p
		case canceled:
			return outCanceled, p
		}
		return outWithdrawn, p
	}
	return outUnknown, reply{}
}

// abandonAcquire cancels an ACQUIRE whose caller gave up and gives back the
// grant if one stands; then it finishes the id.
func (c *Client) abandonAcquire(cl *call) {
	defer c.finish(cl)
	ctx, cancel := c.withTimeout(c.ctx, cleanupTimeout)
	defer cancel()
	out, r := c.abandon(ctx, cl)
	c.log.Debug("abandoned acquire", "token", cl.name, "request", cl.id, "outcome", out)
	if out == outHeld {
		c.mu.Lock()
		c.strayLocked(cl.shard, cl.name, r.fence)
		c.mu.Unlock()
	}
}

// strayLocked gives back, in the background, a grant this client holds at a
// worker but not as a Token (an abandoned acquire granted anyway, a REVOKE
// for an unknown fence, a lost token), once per (name, fence) at a time.
func (c *Client) strayLocked(shard uint32, name string, fence uint64) {
	key := strayKey{name, fence}
	if c.strays[key] {
		return
	}
	c.strays[key] = true
	ok := c.spawnLocked(func() {
		defer func() {
			c.mu.Lock()
			delete(c.strays, key)
			c.mu.Unlock()
		}()
		ctx, cancel := c.withTimeout(c.ctx, cleanupTimeout)
		defer cancel()
		cl := &call{typ: wire.TypeRelease, body: wire.Release{Fence: fence, Name: []byte(name)}, shard: shard, routed: true}
		if c.register(ctx, cl, false) != nil {
			return
		}
		defer c.finish(cl)
		r, _, err := c.exchange(ctx, cl, exOpts{})
		c.log.Debug("released stray grant", "token", name, "fence", fence, "status", r.h.Status, "err", err)
	})
	if !ok {
		delete(c.strays, key)
	}
}

// onRevoke handles a REVOKE (SPEC.md 12): acknowledge it; hand it to the
// application once per (fence, wanted, range); give back a fence this client
// does not hold. While an ACQUIRE, CONVERT or RECLAIM of the same name is
// unfinished the fence may be about to become ours: the REVOKE is then
// parked, unacknowledged, and handled as if it arrived anew as soon as the
// last of them finishes (typically: a GRANT_ASYNC and the REVOKE for the
// next waiter arrive together, and the REVOKE is read before the waiting
// Acquire has taken the grant). Called by recvLoop; out is its send buffer.
func (c *Client) onRevoke(h wire.Header, m *wire.Revoke, from netip.AddrPort, out []byte) []byte {
	c.mu.Lock()
	ah, ua, ack, run := c.revokeLocked(h, m, from)
	if run != nil {
		c.spawnLocked(run)
	}
	c.mu.Unlock()
	if !ack {
		return out
	}
	return c.sendAck(ah, h.Request, ua, out)
}

// revokeLocked does onRevoke's work under c.mu and returns the header of
// the REVOKE_ACK to send, or ack false when the REVOKE is parked, and the
// call of the application's handler to run on a goroutine of its own, if
// any.
func (c *Client) revokeLocked(h wire.Header, m *wire.Revoke, from netip.AddrPort) (ah wire.Header, ua *net.UDPAddr, ack bool, run func()) {
	t := c.findLocked(m.Name, m.Fence)
	if t == nil && c.inflight[string(m.Name)] > 0 {
		c.parkRevokeLocked(h, m, from)
		return wire.Header{}, nil, false, nil
	}
	c.nextReq++ // REVOKE_ACK takes a fresh id, finished as soon as it is sent
	ah = wire.Header{Type: wire.TypeRevokeAck, Session: c.session.Load(), Request: c.nextReq,
		Ack: c.ackLocked(c.nextReq), Shard: h.Shard, Epoch: h.Epoch, MapVersion: c.mapVer.Load()}
	ua = c.udpAddrLocked(from)
	if c.state == stateOpen {
		switch {
		case t == nil:
			c.strayLocked(h.Shard, string(m.Name), m.Fence)
		case t.cached:
			c.revokeCachedLocked(t, m.Start, m.End)
		case !t.revokes[revokeKey{m.Mode, m.Start, m.End}]:
			if t.revokes == nil {
				t.revokes = map[revokeKey]bool{}
			}
			t.revokes[revokeKey{m.Mode, m.Start, m.End}] = true
			handler := c.cfg.OnRevoke
			if handler == nil {
				handler = c.defaultRevoke
			}
			rev := Revocation{Fence: t.fence, Mode: t.mode, Wanted: m.Mode, Start: m.Start, End: m.End}
			run = func() {
				ctx, cancel := c.withTimeout(c.ctx, c.cfg.HandlerTimeout)
				defer cancel()
				handler(ctx, t, rev)
			}
			if t.pending {
				// Acquire has not returned t yet: the application gets the
				// revocation once it has the token (freshLocked).
				t.deferred = append(t.deferred, run)
				run = nil
			}
		}
	}
	return ah, ua, true, run
}

// sendAck seals and sends a one-way acknowledgement of request target
// with header ah: REVOKE_ACK or GRANT_ACK, as ah.Type says. out is a send
// buffer.
func (c *Client) sendAck(ah wire.Header, target uint64, ua *net.UDPAddr, out []byte) []byte {
	var err error
	if ah.Type == wire.TypeGrantAck {
		out, err = wire.GrantAck{Target: target}.Append(out[:0], ah)
	} else {
		out, err = wire.RevokeAck{Target: target}.Append(out[:0], ah)
	}
	if err == nil {
		err = c.sealSession(out)
	}
	if err != nil {
		c.log.Error("cannot encode "+ah.Type.String(), "err", err)
		return out
	}
	if q := c.sendq; q != nil && q.hold(out, ua) {
		// It goes ahead of the next request to that worker, in one
		// BUNDLE (typically the RELEASE that follows a revocation), or
		// alone within ackHold.
		c.sent.Add(1)
		return out
	}
	c.write(out, ua, false)
	return out
}

// parkedRevoke is a REVOKE waiting for the requests of its name to finish.
type parkedRevoke struct {
	h    wire.Header
	m    wire.Revoke // Name is nil: see name
	name string
	from netip.AddrPort
}

// maxParked bounds the parked REVOKEs of a client; beyond it a REVOKE is
// dropped and its retransmission brings it back.
const maxParked = 1024

// parkRevokeLocked keeps a REVOKE until the unfinished requests of its
// name finish (finishLocked). A retransmission of one already parked
// (same worker, same REVOKE id) is not kept twice.
func (c *Client) parkRevokeLocked(h wire.Header, m *wire.Revoke, from netip.AddrPort) {
	ps := c.parked[string(m.Name)]
	for i := range ps {
		if ps[i].h.Request == h.Request && ps[i].from == from {
			return
		}
	}
	if c.nParked >= maxParked {
		return
	}
	p := parkedRevoke{h: h, m: *m, name: string(m.Name), from: from}
	p.m.Name = nil
	if c.parked == nil {
		c.parked = map[string][]parkedRevoke{}
	}
	c.parked[p.name] = append(ps, p)
	c.nParked++
}

// unparkLocked hands the REVOKEs parked for name to a goroutine that
// handles them as if they arrived now. It runs once the caller releases
// c.mu, so after the grant that finished the last request of name has
// been taken (Acquire, Convert and reclaim take it in the same critical
// section as they finish).
func (c *Client) unparkLocked(name string) {
	ps := c.parked[name]
	if len(ps) == 0 {
		return
	}
	delete(c.parked, name)
	c.nParked -= len(ps)
	c.spawnLocked(func() {
		var out []byte
		var last func() // the last handler runs here, after the acks
		for i := range ps {
			p := &ps[i]
			m := p.m
			m.Name = []byte(p.name)
			c.mu.Lock()
			ah, ua, ack, run := c.revokeLocked(p.h, &m, p.from)
			if run != nil {
				if last != nil {
					c.spawnLocked(last)
				}
				last = run
			}
			c.mu.Unlock()
			if ack {
				out = c.sendAck(ah, p.h.Request, ua, out)
			}
		}
		if last != nil {
			last() // this goroutine is the handler's own (Close waits for it)
		}
	})
}

// defaultRevoke is the OnRevoke used when Config.OnRevoke is nil: it gives
// the token back (whatever mode is wanted), closing Lost with ErrRevoked.
func (c *Client) defaultRevoke(ctx context.Context, t *Token, _ Revocation) {
	if err := t.release(ctx, releaseOptions{}, ErrRevoked); err != nil && !errors.Is(err, ErrNotHeld) {
		c.log.Debug("release on revocation", "token", t.name, "err", err)
	}
}

// checkMovedLocked starts reclaiming the tokens of l if the map has a newer
// epoch for its shard (a crash or a move of the shard, SPEC.md 13).
func (c *Client) checkMovedLocked(l *lease) {
	rt, ok := c.dm.lookup(l.key.shard)
	if !ok || rt.none || rt.epoch <= l.key.epoch {
		return
	}
	if !l.moved {
		l.moved = true
		if len(l.tokens) == 0 {
			return // an empty lease kept for the next grant (maintain drops it)
		}
		c.log.Info("shard moved; reclaiming", "shard", l.key.shard, "from", l.key.addr.String(),
			"epoch", l.key.epoch, "to", rt.addr.String(), "new_epoch", rt.epoch, "tokens", len(l.tokens))
	}
	for _, t := range l.tokens {
		c.startReclaimLocked(t)
	}
}

func (c *Client) startReclaimLocked(t *Token) {
	if t.reclaiming || t.state != tokHeld {
		return
	}
	t.reclaiming = c.spawnLocked(func() { c.reclaim(t) })
}

// reclaim asks the shard's new owner to reinstate t with its old fence
// (RECLAIM), retrying GRACE and the other retryable answers until the
// token's lost time. OK makes t valid again under the new epoch;
// RECLAIM_REFUSED loses it.
func (c *Client) reclaim(t *Token) {
	defer func() {
		c.mu.Lock()
		t.reclaiming = false
		if t.state == tokHeld && t.lease != nil && t.lease.moved {
			c.startReclaimLocked(t) // moved again meanwhile
		}
		c.mu.Unlock()
		kick(c.maintKick) // a DONE may wait for this reclaim (done.go)
	}()
	c.mu.Lock()
	l := t.lease
	if t.state != tokHeld || l == nil || !l.moved {
		c.mu.Unlock()
		return
	}
	fence := t.fence
	body := wire.Reclaim{Fence: fence, Mode: t.mode, Start: t.start, End: t.end, Name: []byte(t.name)}
	if t.vstate == ValueValid && (t.mode == wire.PR || t.mode.Writes()) {
		// The holder's copy of the value block: the new owner recovers a
		// value lost in the crash from it (SPEC.md 13).
		body.HasValue, body.Value = true, slices.Clone(t.value)
	}
	lostAt := c.lostAt(l)
	if t.pending {
		// Not yet the application's: it may take as long as a new owner
		// may accept it (its grace), counted from now at the earliest.
		lostAt = later(lostAt, c.now().Add(c.workerTTL+c.grace))
	}
	left := lostAt.Sub(c.now())
	c.mu.Unlock()
	ctx, cancel := c.withTimeout(c.ctx, left)
	defer cancel()
	cl := &call{typ: wire.TypeReclaim, body: body, name: t.name, shard: t.shard, routed: true,
		minEpoch: l.key.epoch + 1}
	if c.register(ctx, cl, true) != nil {
		return
	}
	r, _, err := c.exchange(ctx, cl, exOpts{})
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finishLocked(cl)
	if err != nil || t.state != tokHeld || t.fence != fence {
		return // out of time (maintain declares it lost), closed, or released meanwhile
	}
	switch r.h.Status {
	case wire.StatusOK:
		c.applyGrantLocked(t, cl, &r)
		c.log.Info("token reclaimed", "token", t.name, "fence", fence, "worker", r.from.String(), "epoch", r.h.Epoch)
	case wire.StatusReclaimRefused:
		c.loseLocked(t, statusError(fmt.Sprintf("clientlib: reclaim %q", t.name), &r), true)
	default:
		c.loseLocked(t, fmt.Errorf("%w: reclaim %q answered %s %s", ErrLost, t.name, r.h.Status, r.msg), true)
	}
}
