package clientlib

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// encoder is a wire body: every request struct of package wire.
type encoder interface {
	Append(dst []byte, h wire.Header) ([]byte, error)
}

// call is one request id and everything needed to (re)send it. Only the
// goroutine running exchange touches its fields after register, except ch,
// which recvLoop fills under c.mu.
type call struct {
	id   uint64
	typ  wire.Type
	body encoder
	name string // token name, counted in c.inflight while unfinished ("" = not)
	// names: the token names of an ACQUIRE_BATCH, each counted in
	// c.inflight like name, so that a REVOKE of one of its grants that
	// overtakes the reply is parked, not taken for a stray's.
	names    []string
	shard    uint32
	routed   bool   // token request: destination and epoch come from the map
	minEpoch uint32 // routed: wait for a route at this epoch or later (RECLAIM)
	slot     bool   // holds one of c.slots

	dest      netip.AddrPort // fixed destination, or the latest one used
	epoch     uint32         // header epoch of the latest send
	hintAddr  netip.AddrPort // NOT_OWNER/STALE_EPOCH hint newer than the map
	hintEpoch uint32
	firstSend time.Time // when the id was first sent: leases count from here
	sends     int
	// exempt: answered QUEUED, so the ack no longer waits for it (SPEC.md
	// 11). Guarded by c.mu. restart: cl is to be answered anew, at fast
	// retransmission: send sent it, answered QUEUED, to its shard's new
	// owner or epoch (under the same id, SPEC.md 18), or exchange gave it
	// a fresh id after UNKNOWN_REQUEST; exchange clears it.
	exempt  bool
	restart bool

	ch  chan reply // answers to this id, GRANT_ASYNC included
	buf []byte
	// mac tags a SESSION_OPEN that carries a cookie (open key, client to
	// worker); nil: the zero tag. Other requests take the session's.
	mac *auth.MAC
	// exchange's retransmission timer, kept for reuse with the clock
	// that made it.
	timer      clock.Timer
	timerC     <-chan time.Time
	timerClock clock.Clock

	// Bodies of pooled calls (newCall): body points at one of them, so
	// that putting it in the encoder interface does not allocate, and its
	// name is a copy in nameBuf.
	acq     wire.Acquire
	rel     wire.Release
	batch   wire.AcquireBatch // AcquireBatch (not pooled: batch.go makes its own call)
	nameBuf []byte            // cap wire.MaxName
}

// callPool recycles the calls of the hot path (Acquire, Release) with
// their channel, send buffer and timer, so that such a request allocates
// none of them.
var callPool = sync.Pool{New: func() any {
	return &call{ch: make(chan reply, 4), buf: make([]byte, 0, wire.MaxDatagram), nameBuf: make([]byte, 0, wire.MaxName)}
}}

// newCall returns a blank call from the pool. Give it back with putCall
// once nothing can refer to it any more.
func newCall() *call { return callPool.Get().(*call) }

// putCall recycles cl. The caller guarantees that cl is finished (so that
// recvLoop no longer delivers to it) and that no goroutine keeps it.
func putCall(cl *call) {
	cl.drain()
	if cl.timer != nil {
		cl.timer.Stop()
	}
	*cl = call{ch: cl.ch, buf: cl.buf[:0], timer: cl.timer, timerC: cl.timerC, timerClock: cl.timerClock, nameBuf: cl.nameBuf[:0]}
	callPool.Put(cl)
}

// nameBytes returns name as bytes, copied into cl's nameBuf.
func (cl *call) nameBytes(name string) []byte {
	cl.nameBuf = append(cl.nameBuf[:0], name...)
	return cl.nameBuf
}

// accepts reports whether a datagram of type t answers c.
func (cl *call) accepts(t wire.Type) bool {
	if t == wire.TypeGrantAsync {
		return cl.typ == wire.TypeAcquire || cl.typ == wire.TypeConvert
	}
	return t == cl.typ.Reply()
}

// deliver hands r to the waiting exchange; if it is not keeping up, the
// answer is dropped like a lost datagram (retransmission recovers it).
func (cl *call) deliver(r *reply) {
	select {
	case cl.ch <- *r:
	default:
	}
}

// drain discards answers that are already queued.
func (cl *call) drain() {
	for {
		select {
		case <-cl.ch:
		default:
			return
		}
	}
}

// reply is a decoded answer, copied out of the receive buffer.
type reply struct {
	h     wire.Header
	from  netip.AddrPort
	async bool // GRANT_ASYNC rather than a reply

	// GRANT
	fence      uint64
	mode       wire.Mode
	validity   uint32
	start, end uint64
	vflags     uint8
	vlen       uint8
	val        [wire.MaxValue]byte

	position  uint32 // QUEUED
	msg       string // ERROR, NOT_OWNER
	hintAddr  string // NOT_OWNER
	hintEpoch uint32

	sess   wire.SessionReply // SESSION_OPEN reply
	keys   *sessionKeys      // SESSION_OPEN OK: the session's MACs, its tag verified (nil: insecure)
	unauth bool              // SESSION_OPEN OK with the zero tag, to a client with a key
	cookie [wire.CookieLen]byte

	kaTTL      uint32 // KEEPALIVE reply
	kaValidity uint32
	kaStatuses []wire.Status

	page *mapPage // MAP reply

	proof []byte // FENCE_PROOF reply

	batch []batchGrant // GRANT_BATCH, copied
	entry uint8        // BATCH_CONFLICT: the entry that conflicted
}

// batchGrant is one grant of a GRANT_BATCH, copied out of the buffer.
type batchGrant struct {
	fence      uint64
	mode       wire.Mode
	start, end uint64
	vflags     uint8
	val        []byte
}

func (r *reply) value() ([]byte, ValueState) {
	switch {
	case r.vflags&wire.ValueValid != 0:
		return append([]byte{}, r.val[:r.vlen]...), ValueValid
	case r.vflags&wire.ValueLost != 0:
		return nil, ValueLost
	}
	return nil, ValueNone
}

// decode fills r from datagram b whose header r.h has been parsed. Only the
// rare kinds (error texts, keepalive and map replies) allocate.
func (r *reply) decode(b []byte, mr *wire.MapReply) error {
	switch r.h.Kind() {
	case wire.KindGrant:
		var g wire.Grant
		if err := g.Decode(r.h, b); err != nil {
			return err
		}
		r.fence, r.mode, r.validity = g.Fence, g.Mode, g.ValidityMs
		r.start, r.end, r.vflags = g.Start, g.End, g.ValueFlags
		r.vlen = uint8(copy(r.val[:], g.Value))
	case wire.KindQueued:
		var q wire.Queued
		if err := q.Decode(r.h, b); err != nil {
			return err
		}
		r.position = q.Position
	case wire.KindEmpty:
		var e wire.Empty
		return e.Decode(r.h, b)
	case wire.KindError:
		var e wire.ErrorBody
		if err := e.Decode(r.h, b); err != nil {
			return err
		}
		r.msg = string(e.Message)
	case wire.KindNotOwner:
		var n wire.NotOwner
		if err := n.Decode(r.h, b); err != nil {
			return err
		}
		r.msg, r.hintAddr, r.hintEpoch = string(n.Message), string(n.Addr), n.Epoch
	case wire.KindSessionReply:
		return r.sess.Decode(r.h, b)
	case wire.KindCookie:
		var ck wire.Cookie
		if err := ck.Decode(r.h, b); err != nil {
			return err
		}
		r.cookie = ck.Cookie
	case wire.KindKeepaliveReply:
		var k wire.KeepaliveReply
		if err := k.Decode(r.h, b); err != nil {
			return err
		}
		r.kaTTL, r.kaValidity = k.SessionTTLMs, k.ValidityMs
		r.kaStatuses = append([]wire.Status(nil), k.Statuses...)
	case wire.KindMapReply:
		if err := mr.Decode(r.h, b); err != nil {
			return err
		}
		r.page = newMapPage(mr)
	case wire.KindGrantBatch:
		var g wire.GrantBatch
		if err := g.Decode(r.h, b); err != nil {
			return err
		}
		r.validity = g.ValidityMs
		for _, x := range g.Grants {
			r.batch = append(r.batch, batchGrant{x.Fence, x.Mode, x.Start, x.End, x.ValueFlags, append([]byte(nil), x.Value...)})
		}
	case wire.KindBatchConflict:
		var bc wire.BatchConflict
		if err := bc.Decode(r.h, b); err != nil {
			return err
		}
		r.entry, r.msg = bc.Entry, string(bc.Message)
	case wire.KindProof:
		var p wire.Proof
		if err := p.Decode(r.h, b); err != nil {
			return err
		}
		r.proof = append([]byte(nil), p.Proof...)
	default:
		return fmt.Errorf("%w: %v", wire.ErrKind, r.h.Kind())
	}
	return nil
}

// register gives cl a fresh request id and makes it unfinished. With slot,
// it first waits for one of the maxInFlight slots (user requests).
func (c *Client) register(ctx context.Context, cl *call, slot bool) error {
	if slot {
		select {
		case c.slots <- struct{}{}:
			cl.slot = true
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return ErrClosed
		}
	}
	if cl.ch == nil {
		cl.ch = make(chan reply, 4)
	}
	if cl.buf == nil {
		cl.buf = make([]byte, 0, wire.MaxDatagram)
	}
	c.mu.Lock()
	c.nextReq++
	cl.id = c.nextReq
	c.unfinished = append(c.unfinished, cl.id)
	c.pending[cl.id] = cl
	if cl.name != "" {
		c.inflight[cl.name]++
	}
	for _, n := range cl.names {
		c.inflight[n]++
	}
	c.mu.Unlock()
	return nil
}

// finish ends cl's request id: the ack may move past it and its answers are
// ignored from now on.
func (c *Client) finish(cl *call) {
	c.mu.Lock()
	c.finishLocked(cl)
	c.mu.Unlock()
}

func (c *Client) finishLocked(cl *call) {
	if c.pending[cl.id] != cl {
		return
	}
	delete(c.pending, cl.id)
	if i, ok := slices.BinarySearch(c.unfinished, cl.id); ok {
		c.unfinished = slices.Delete(c.unfinished, i, i+1)
	}
	if cl.name != "" {
		c.unflightLocked(cl.name)
	}
	for _, n := range cl.names {
		c.unflightLocked(n)
	}
	if cl.slot {
		cl.slot = false
		<-c.slots
	}
}

// unflightLocked ends one unfinished request of token name; the last one
// hands the REVOKEs parked meanwhile back to revokeLocked.
func (c *Client) unflightLocked(name string) {
	if c.inflight[name]--; c.inflight[name] <= 0 {
		delete(c.inflight, name)
		c.unparkLocked(name)
	}
}

// ackLocked is the header ack of a request: the oldest unfinished id that
// is not exempt (answered QUEUED: the worker keeps those whatever the ack,
// SPEC.md 11), never above the request's own id since that is unfinished.
func (c *Client) ackLocked(own uint64) uint64 {
	for _, id := range c.unfinished {
		if id >= own {
			break
		}
		if cl := c.pending[id]; cl != nil && cl.exempt {
			continue
		}
		return id
	}
	return own
}

// reissueLocked gives cl, a request answered QUEUED that its shard's new
// owner answered UNKNOWN_REQUEST under its id, a fresh request id: the old
// id was not applied there and never will be (the new owner did not get
// it with the shard, and answers any copy of it the same way, since it is
// below the ack there: SPEC.md 18), and copies of it that went to the old
// owner carry the old epoch; so the request is still applied at most once.
func (c *Client) reissueLocked(cl *call) {
	delete(c.pending, cl.id)
	if i, ok := slices.BinarySearch(c.unfinished, cl.id); ok {
		c.unfinished = slices.Delete(c.unfinished, i, i+1)
	}
	c.nextReq++
	cl.id = c.nextReq
	c.unfinished = append(c.unfinished, cl.id)
	c.pending[cl.id] = cl
	cl.exempt, cl.restart, cl.sends = false, true, 0
}

// markQueued makes cl exempt from the ack: it was answered QUEUED.
func (c *Client) markQueued(cl *call) {
	c.mu.Lock()
	if c.pending[cl.id] == cl {
		cl.exempt = true
	}
	c.mu.Unlock()
}

// targetLocked says where cl goes now and at which epoch.
func (c *Client) targetLocked(cl *call) (netip.AddrPort, uint32, bool) {
	if !cl.routed {
		return cl.dest, 0, cl.dest.IsValid()
	}
	rt, ok := c.dm.lookup(cl.shard)
	if cl.hintEpoch != 0 && cl.hintEpoch >= cl.minEpoch && (!ok || rt.none || cl.hintEpoch > rt.epoch) {
		return cl.hintAddr, cl.hintEpoch, true
	}
	if !ok || rt.none || rt.epoch == 0 || rt.epoch < cl.minEpoch {
		return netip.AddrPort{}, 0, false
	}
	return rt.addr, rt.epoch, true
}

// routeMoved reports whether cl would now go to another worker or epoch
// than it was last sent to.
func (c *Client) routeMoved(cl *call) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	dest, epoch, ok := c.targetLocked(cl)
	return ok && (dest != cl.dest || epoch != cl.epoch)
}

// send (re)sends cl with a fresh ack and map version. It reports false when
// there is nowhere to send it (no owner known for the shard).
func (c *Client) send(cl *call) bool {
	c.mu.Lock()
	dest, epoch, ok := c.targetLocked(cl)
	if !ok {
		c.mu.Unlock()
		return false
	}
	if cl.exempt && cl.sends > 0 && (dest != cl.dest || epoch != cl.epoch) {
		// Answered QUEUED, and the shard moved: ask the new owner under
		// the same id (SPEC.md 17.13, 18). It got the request with the
		// shard (a planned handoff): it answers as the old owner would
		// have, and the request keeps its place. Otherwise it answers
		// UNKNOWN_REQUEST, and exchange sends it again under a fresh id.
		// cl stays exempt: the new owner keeps the request whatever the
		// ack, if it knows it.
		cl.restart = true
	}
	h := wire.Header{Type: cl.typ, Session: c.session.Load(), Request: cl.id, Ack: c.ackLocked(cl.id),
		Shard: cl.shard, Epoch: epoch, MapVersion: c.mapVer.Load()}
	if cl.typ == wire.TypeSessionOpen {
		h.Session, h.Ack = 0, 0
	}
	ua := c.udpAddrLocked(dest)
	c.mu.Unlock()
	if cl.sends == 0 {
		cl.firstSend = c.now()
	}
	b, err := cl.body.Append(cl.buf[:0], h)
	if err != nil {
		// The public API checks its arguments, so this is a bug here.
		c.log.Error("cannot encode request", "type", cl.typ, "err", err)
		return false
	}
	if cl.typ == wire.TypeSessionOpen {
		if cl.mac != nil {
			err = cl.mac.Seal(b)
		}
	} else {
		err = c.sealSession(b)
	}
	if err != nil {
		c.log.Error("cannot seal request", "type", cl.typ, "err", err)
		return false
	}
	cl.buf = b[:0]
	cl.dest, cl.epoch = dest, epoch
	cl.sends++
	if cl.sends > 1 {
		// A retransmission goes alone, never in a BUNDLE (SPEC §22): if
		// an older worker took over this address, it still answers.
		c.writeAlone(b, ua)
		return true
	}
	c.write(b, ua, true)
	return true
}

// graceRetryMax is the longest a request answered GRACE waits before it
// is sent again (±25 %).
const graceRetryMax = 200 * time.Millisecond

// exOpts modify exchange.
type exOpts struct {
	stopAtQueued bool          // return a QUEUED answer instead of re-polling, and UNKNOWN_REQUEST instead of asking under a fresh id
	keepSession  bool          // UNKNOWN_SESSION/SESSION_EXPIRED are plain answers (SESSION_CLOSE)
	rtoMax       time.Duration // caps the retransmission timeout below Config.RTOMax (0: no cap)
}

// exResult says how far an exchange got.
type exResult struct {
	answered bool           // some worker answered this id
	queued   bool           // the latest answer was QUEUED
	retry    wire.Status    // the latest answer was this retryable status (0: none)
	dest     netip.AddrPort // where the latest send went (invalid: nowhere, no route)
}

// exchange sends cl until it has a final answer (SPEC.md 12): retransmission
// with RTO doubling from RTOMin to RTOMax with ±25 % jitter; after QUEUED a
// re-poll every 500 ms; after a retryable status the same id again after a
// backoff, following NOT_OWNER/STALE_EPOCH hints and map refreshes. It
// returns the answer with err == nil whatever its status (OK, a final error,
// or QUEUED with stopAtQueued), or an error when ctx ends, the client closes
// or the session dies. It does not finish cl.
func (c *Client) exchange(ctx context.Context, cl *call, o exOpts) (reply, exResult, error) {
	var res exResult
	rto, backoff := c.cfg.RTOMin, c.cfg.RTOMin
	rtoMax := c.cfg.RTOMax
	if o.rtoMax > 0 {
		rtoMax = max(min(rtoMax, o.rtoMax), c.cfg.RTOMin)
	}
	grow := func(d *time.Duration) time.Duration {
		cur := *d
		*d = min(2**d, rtoMax)
		return jitter(cur)
	}
	if cl.timer == nil || cl.timerClock != c.clk {
		cl.timer, cl.timerC = c.clk.NewTimer(time.Hour)
		cl.timerClock = c.clk
	}
	timer, timerC := cl.timer, cl.timerC
	defer timer.Stop() // and resetTimer drops what it may have delivered: reusable
	sendNow := true
	var mapWait <-chan struct{}
	var verAtKick uint64
	// While QUEUED, a new map may have moved the shard: re-poll at once at
	// the new owner (under the same id: a planned handoff moves queued
	// requests, SPEC.md 18) instead of at the next 500 ms poll.
	var moved <-chan struct{}
	for {
		if sendNow {
			sendNow = false
			if c.send(cl) {
				if cl.restart {
					// At the shard's new owner (same id, or a fresh one):
					// fast retransmission until it is answered.
					cl.restart, res.queued, rto = false, false, c.cfg.RTOMin
				}
				res.dest = cl.dest
				if res.queued {
					resetTimer(timer, timerC, c.cfg.pollEvery)
				} else {
					resetTimer(timer, timerC, grow(&rto))
				}
			} else {
				mapWait, verAtKick = c.requestMap(), c.mapVer.Load()
				resetTimer(timer, timerC, grow(&backoff))
			}
		}
		select {
		case <-ctx.Done():
			return reply{}, res, ctx.Err()
		case <-c.ctx.Done():
			return reply{}, res, ErrClosed
		case <-c.dead:
			return reply{}, res, c.deadError()
		case <-timerC:
			sendNow = true
			if cl.routed && moved == nil {
				// Unanswered: its worker may be dead. Follow a new map
				// at once rather than at the next retransmission, up to
				// RTOMax later (a failover's requests reach the new
				// owner as soon as its clients see the map).
				moved = c.newMap()
			}
		case <-moved:
			moved = c.newMap()
			if c.routeMoved(cl) {
				sendNow = true
				if !res.queued {
					rto = c.cfg.RTOMin // another worker: a fresh schedule
				}
			}
		case <-mapWait:
			mapWait = nil
			if c.mapVer.Load() != verAtKick {
				sendNow = true
			}
		case r := <-cl.ch:
			if r.h.Request != cl.id || c.epochPassed(cl, r.h.Epoch) {
				continue
			}
			s := r.h.Status
			if s.Retryable() {
				if r.from != cl.dest || r.h.Epoch != cl.epoch {
					continue // the answer to an earlier send, elsewhere
				}
				res.answered, res.retry, res.queued = true, s, false
				if s == wire.StatusNotOwner || s == wire.StatusStaleEpoch {
					mapWait, verAtKick = c.requestMap(), c.mapVer.Load()
					if c.takeHint(cl, &r) {
						sendNow = true // a newer owner than the map knows: go there at once
						continue
					}
				}
				d := grow(&backoff)
				if s == wire.StatusGrace {
					// A grace period may end early, as soon as every
					// live session has reclaimed (SPEC §13): ask again
					// soon rather than up to RTOMax later.
					d = min(d, jitter(graceRetryMax))
				}
				resetTimer(timer, timerC, d)
				continue
			}
			if s == wire.StatusUnknownRequest && cl.routed && !o.stopAtQueued && (cl.typ == wire.TypeAcquire || cl.typ == wire.TypeConvert) {
				if r.from != cl.dest || r.h.Epoch != cl.epoch {
					continue // the answer to an earlier send, elsewhere
				}
				// The shard's owner does not know this id (a request
				// answered QUEUED by a previous owner that did not hand
				// it over): not applied, so the same request goes again
				// under a fresh id (SPEC.md 18). Not for a request whose
				// caller gave up (abandon asks with stopAtQueued): there
				// the answer says that nothing stands.
				c.mu.Lock()
				c.reissueLocked(cl)
				c.mu.Unlock()
				res.answered, res.retry, res.queued = true, 0, false
				sendNow = true
				continue
			}
			res.answered, res.retry = true, 0
			if s == wire.StatusQueued {
				c.markQueued(cl)
				if o.stopAtQueued {
					return r, res, nil
				}
				if !res.queued {
					res.queued = true
					resetTimer(timer, timerC, c.cfg.pollEvery)
					moved = c.newMap()
				}
				continue
			}
			if !r.async && cl.exempt {
				// The outcome of a request answered QUEUED, learned by a
				// re-poll: the worker may forget it (a GRANT_ASYNC is
				// acknowledged as it arrives, in handle).
				c.sendGrantAck(r.h, cl.id, r.from, nil)
			}
			if (s == wire.StatusUnknownSession || s == wire.StatusSessionExpired) && !o.keepSession {
				c.sessionGone(fmt.Errorf("%w (worker %s: %s)", ErrSessionExpired, r.from, s))
			}
			return r, res, nil
		}
	}
}

// epochPassed reports whether an answer to the routed request cl about
// epoch comes from a shard epoch that is over: cl has since been sent at a
// newer one, or the map has one. The shard then has a new owner, and cl
// follows it (same id, SPEC §17.13); the old owner's table is gone, or
// goes as soon as it sees the map. A final answer from it (typically a
// GRANT_ASYNC from a worker that hung past its lease and woke up,
// recovery.TestWorkerHang) would give a grant that is not valid and that
// only a reclaim could save, instead of one from the new owner.
// Retryable answers from elsewhere are ignored anyway (exchange).
func (c *Client) epochPassed(cl *call, epoch uint32) bool {
	if !cl.routed {
		return false
	}
	if epoch < cl.epoch {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rt, ok := c.dm.lookup(cl.shard)
	return ok && !rt.none && rt.epoch > epoch
}

// takeHint records a NOT_OWNER/STALE_EPOCH hint that names a newer epoch
// than cl's route, and reports whether it changes where cl goes.
func (c *Client) takeHint(cl *call, r *reply) bool {
	if !cl.routed || r.hintAddr == "" || r.hintEpoch == 0 || r.hintEpoch <= cl.epoch {
		return false
	}
	ap, err := netip.ParseAddrPort(r.hintAddr)
	if err != nil {
		return false // no DNS on this path; the map refresh will tell
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	if r.hintEpoch <= cl.hintEpoch {
		return false
	}
	cl.hintAddr, cl.hintEpoch = ap, r.hintEpoch
	return true
}

// jitter multiplies d by a uniformly random factor in [0.75, 1.25].
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.75 + 0.5*rand.Float64()))
}

// giveUp is the error of a request that ended without a final answer.
func giveUp(op string, err error, res exResult) error {
	if errors.Is(err, ErrClosed) || errors.Is(err, ErrSessionExpired) {
		return fmt.Errorf("%s: %w", op, err)
	}
	at := "no route to the token's shard"
	if res.dest.IsValid() {
		at = "worker " + res.dest.String()
	}
	switch {
	case res.queued:
		return fmt.Errorf("%s: %w while queued at %s: %w", op, ErrTimeout, at, err)
	case res.retry != 0:
		return fmt.Errorf("%s: %w (last answer %s from %s): %w", op, ErrUnavailable, res.retry, at, err)
	case !res.answered:
		return fmt.Errorf("%s: %w (no answer from %s): %w", op, ErrUnavailable, at, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
