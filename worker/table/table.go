package table

import (
	"fmt"
	"hash/maphash"
	"math"

	"github.com/tokend/tokend/wire"
)

// Records. They are kept in slabs and linked by uint32 indices (0 = none);
// all but token are free of pointers. Sizes matter: a held, uncontended
// token costs one token, one grant, one index entry and its name.

// token is one named token: its grants, its queue and its value block.
type token struct {
	name   string // copied once, when the token is created
	value  string // the value block, when flags&tokValueValid
	hnext  uint32 // next token with the same name hash
	grants uint32 // first grant (list through grant.tnext, newest first)
	q      uint32 // the token's queue, 0 while nobody waits
	flags  uint8
}

const (
	tokValueValid = 1 << iota
	tokTouched    // in Table.touched, to be woken
)

// grant is one granted lock.
type grant struct {
	fence        uint64
	start, end   uint64
	req          uint64 // the request that gave the grant its current mode
	since        int64  // the table's now when it took the grant (0: imported)
	tok, sess    uint32
	tnext        uint32 // next grant of the token
	sprev, snext uint32 // the session's grants
	mode         wire.Mode
	flags        uint8
}

const (
	grantAsync      = 1 << iota // granted from the queue: byReq[(session, req)] points here
	grantConverting             // a conversion of this grant is queued
)

// waiter is a queued acquire (grant == 0) or conversion of grant.
type waiter struct {
	req          uint64
	start, end   uint64
	deadline     int64
	since        int64  // now when it was queued (for Edge.Since)
	arrival      uint64 // tie-break for equal deadlines
	tok, sess    uint32
	grant        uint32
	prev, next   uint32 // the token's conversion or acquire queue
	sprev, snext uint32 // the session's waiters
	heap         int32  // position in Table.heap
	mode         wire.Mode
	detect       bool // Input.Detect: its wait is reported by WaitEdges
}

// queue holds a token's waiters: conversions first, then acquires, each in
// arrival order.
type queue struct {
	conv, convTail uint32
	wait, waitTail uint32
	n              uint32
}

// session is a client session's footprint in this table. It exists while
// the session has grants or waiters here.
type session struct {
	id      uint64
	grants  uint32 // first grant (list through grant.snext, newest first)
	waiters uint32 // first waiter (list through waiter.snext, newest first)
	n       uint32 // grants + queued acquires, for Config.MaxGrantsPerSession
	conv    uint32 // queued conversions (n + conv is the footprint EndSession drops)
	// ending: EndSession has started and not finished. The session gains
	// nothing more: its requests are answered StatusSessionExpired and its
	// waiters are never granted (they block those behind them until a step
	// drops them, as they did before).
	ending bool
}

type reqKey struct{ sess, req uint64 }

// refGrant tags a byReq entry that names a grant rather than a waiter.
const refGrant = 1 << 31

// Table is the token state of one shard. It is not safe for concurrent use:
// one goroutine owns it (or a mutex guards it).
type Table struct {
	cfg        Config
	epoch      uint32
	seq        uint64 // last sequence number issued in this epoch
	maxFence   uint64 // highest fence issued, reclaimed or imported (invariant 2)
	now        int64  // latest now seen
	grace      bool   // recovering: only reclaims until graceEnd
	graceEnd   int64
	valuesLost bool // recovered from a crash: unset values are reported ValueLost
	arrivals   uint64
	ending     int // sessions with ending set

	seed     maphash.Seed
	index    map[uint64]uint32 // name hash -> first token of the chain
	sessions map[uint64]uint32 // session id -> session record
	byReq    map[reqKey]uint32 // (session, req) -> waiter, or grant|refGrant if granted from the queue

	toks  slab[token]
	grs   slab[grant]
	wts   slab[waiter]
	qs    slab[queue]
	sess  slab[session]
	heap  []uint32 // waiters by (deadline, arrival)
	touch []uint32 // scratch: tokens to wake
	fresh []uint32 // scratch: grants made by one wake
	cycle []uint32 // scratch: conversions, for convCycle
	seen  []bool   // scratch for convCycle
	stack []int    // scratch for convCycle
}

// New returns an empty table for a shard at the given epoch (1..MaxEpoch).
func New(epoch uint32, cfg Config) (*Table, error) {
	if epoch == 0 || epoch > MaxEpoch {
		return nil, fmt.Errorf("%w: %d (want 1..%d)", ErrBadEpoch, epoch, MaxEpoch)
	}
	return &Table{
		cfg:      cfg,
		epoch:    epoch,
		now:      math.MinInt64,
		seed:     maphash.MakeSeed(),
		index:    make(map[uint64]uint32),
		sessions: make(map[uint64]uint32),
		byReq:    make(map[reqKey]uint32),
	}, nil
}

// NewRecovering returns an empty table for a shard whose previous owner
// crashed. Until now reaches graceEnd it accepts only OpReclaim and
// OpEndSession (invariant 6); every value block is reported ValueLost until
// a writer sets it.
func NewRecovering(epoch uint32, graceEnd int64, cfg Config) (*Table, error) {
	t, err := New(epoch, cfg)
	if err != nil {
		return nil, err
	}
	t.grace, t.graceEnd, t.valuesLost = true, graceEnd, true
	return t, nil
}

// Epoch returns the table's shard epoch.
func (t *Table) Epoch() uint32 { return t.epoch }

// InGrace reports whether the table is still in its grace period (as of the
// latest now it was given).
func (t *Table) InGrace() bool { return t.grace }

// EndGrace ends the grace period now, before its deadline, and reports
// whether the table was in one. The caller has established that no session
// may still reclaim a grant here (worker/grace): from now on reclaims of
// grants the table does not hold are refused and new requests are served
// (invariant 6 holds because every grant of the previous owner has been
// reclaimed or given up). Values nobody recovered stay ValueLost.
func (t *Table) EndGrace() bool {
	was := t.grace
	t.grace = false
	return was
}

// Stats returns what the table holds.
func (t *Table) Stats() Stats {
	return Stats{Tokens: t.toks.live, Grants: t.grs.live, Waiters: t.wts.live, Sessions: t.sess.live, Seq: t.seq}
}

// NextDeadline returns when the table next needs a Tick: the earliest wait
// deadline, or the end of the grace period. ok is false when nothing is due.
func (t *Table) NextDeadline() (deadline int64, ok bool) {
	if len(t.heap) > 0 {
		deadline, ok = t.wts.at(t.heap[0]).deadline, true
	}
	if t.grace && (!ok || t.graceEnd < deadline) {
		deadline, ok = t.graceEnd, true
	}
	return deadline, ok
}

// Tick applies what is due at now: waiters whose deadline has passed get
// StatusTimeout and leave their queue (which may grant others), and the
// grace period ends. now is monotonic nanoseconds; a now earlier than one
// seen before is treated as that one.
func (t *Table) Tick(now int64, out []Output) []Output {
	return t.advance(now, out)
}

// Step applies one input at time now and appends the replies and effects to
// out, in the order they happen: first what Tick(now) would do, then the
// reply, then its consequences. Every input except OpEndSession and
// OpDeadlock gets exactly one KindReply. A malformed input gets
// StatusBadRequest and changes nothing (invariant 7); a request of a session
// being ended in steps gets StatusSessionExpired and changes nothing.
func (t *Table) Step(in Input, now int64, out []Output) []Output {
	if in.Op == OpEndSession {
		t.markEnding(in.Session)
	}
	out = t.advance(now, out)
	switch in.Op {
	case OpAcquire, OpConvert, OpRelease, OpCancel, OpReclaim:
		if t.isEnding(in.Session) {
			return reply(out, &in, StatusSessionExpired)
		}
	}
	switch in.Op {
	case OpAcquire:
		return t.acquire(&in, out)
	case OpConvert:
		return t.convert(&in, out)
	case OpRelease:
		return t.release(&in, out)
	case OpCancel:
		return t.cancel(&in, out)
	case OpReclaim:
		return t.reclaim(&in, out)
	case OpEndSession:
		out, _ = t.endSession(in.Session, -1, out)
		return out
	case OpDeadlock:
		return t.deadlock(in.Session, in.Target, out)
	}
	return reply(out, &in, StatusBadRequest)
}

func reply(out []Output, in *Input, st Status) []Output {
	return append(out, Output{Kind: KindReply, Status: st, Session: in.Session, Req: in.Req})
}

func validName(n []byte) bool { return len(n) >= 1 && len(n) <= MaxNameLen }

func overlaps(s1, e1, s2, e2 uint64) bool { return s1 < e2 && s2 < e1 }

// conflicts[m] has bit n set when modes m and n are incompatible.
var conflicts = func() (c [6]uint8) {
	for a := wire.NL; a <= wire.EX; a++ {
		for b := wire.NL; b <= wire.EX; b++ {
			if !wire.Compatible(a, b) {
				c[a] |= 1 << b
			}
		}
	}
	return c
}()

// wanted[held][want] is the strongest mode a holder of held may keep while a
// request for want is granted: the highest mode covered by held and
// compatible with want (NL: release).
var wanted = func() (w [6][6]wire.Mode) {
	for h := wire.NL; h <= wire.EX; h++ {
		for r := wire.NL; r <= wire.EX; r++ {
			for m := wire.EX; ; m-- {
				if wire.Covers(h, m) && wire.Compatible(m, r) {
					w[h][r] = m
					break
				}
				if m == wire.NL {
					break
				}
			}
		}
	}
	return w
}()

// Wanted returns the strongest mode a holder of held may keep so that a
// request for want becomes compatible with it (wire.NL: release).
func Wanted(held, want wire.Mode) wire.Mode {
	if !held.Valid() || !want.Valid() {
		return wire.NL
	}
	return wanted[held][want]
}

// advance moves the clock: ends the grace period and expires waiters.
func (t *Table) advance(now int64, out []Output) []Output {
	if now > t.now {
		t.now = now
	}
	if t.grace && t.now >= t.graceEnd {
		t.grace = false
	}
	if len(t.heap) == 0 || t.wts.at(t.heap[0]).deadline > t.now {
		return out
	}
	touched := t.touch[:0]
	for len(t.heap) > 0 {
		wi := t.heap[0]
		w := t.wts.at(wi)
		if w.deadline > t.now {
			break
		}
		touched = t.mark(touched, w.tok)
		si := w.sess
		out = append(out, Output{Kind: KindAsync, Status: StatusTimeout, Session: t.sess.at(si).id,
			Req: w.req, Name: t.toks.at(w.tok).name})
		t.dropWaiter(wi)
		t.maybeFreeSession(si)
	}
	return t.wakeAll(touched, out)
}

// mark adds token ti to the list of tokens to wake, once.
func (t *Table) mark(list []uint32, ti uint32) []uint32 {
	tok := t.toks.at(ti)
	if tok.flags&tokTouched == 0 {
		tok.flags |= tokTouched
		list = append(list, ti)
	}
	return list
}

// wakeAll wakes the marked tokens in the order they were marked.
func (t *Table) wakeAll(list []uint32, out []Output) []Output {
	for _, ti := range list {
		t.toks.at(ti).flags &^= tokTouched
		out = t.wake(ti, out)
		t.maybeFreeToken(ti)
	}
	t.touch = list[:0]
	return out
}

// ---- requests ----

func (t *Table) acquire(in *Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || in.Start >= in.End || in.SetValue {
		return reply(out, in, StatusBadRequest)
	}
	if t.grace {
		return reply(out, in, StatusGrace)
	}
	si := t.sessions[in.Session]
	if lim := t.cfg.MaxGrantsPerSession; lim > 0 && si != 0 && int(t.sess.at(si).n) >= lim {
		return reply(out, in, StatusLimit)
	}
	ti, h := t.lookup(in.Name)
	if ti == 0 || t.admissible(t.toks.at(ti), 0, in.Mode, in.Start, in.End, false) {
		fence, ok := t.nextFence()
		if !ok {
			return reply(out, in, StatusExhausted)
		}
		if ti == 0 {
			ti = t.newToken(in.Name, h)
		}
		if si == 0 {
			si = t.newSession(in.Session)
		}
		start, end := in.Start, in.End
		if in.Grow {
			start, end = t.grow(ti, in.Session, start, end)
		}
		gi := t.addGrant(ti, si, in.Mode, start, end, fence, in.Req)
		return append(out, t.grantOut(KindReply, in.Session, in.Req, gi))
	}
	if in.Try {
		return reply(out, in, StatusConflict)
	}
	if st := t.canQueue(ti, in); st != StatusOK {
		return reply(out, in, st)
	}
	if si == 0 {
		si = t.newSession(in.Session)
	}
	wi := t.addWaiter(ti, si, in, in.Mode, in.Start, in.End, 0)
	return t.queued(in, wi, out)
}

// grow returns the range an acquire with Grow gets on token ti (0: new):
// [start, end) itself unless nobody but session id holds or waits on the
// token; then the largest range around it that overlaps none of the
// session's own grants there (the whole token if it has none).
func (t *Table) grow(ti uint32, id, start, end uint64) (uint64, uint64) {
	if ti == 0 {
		return WholeStart, WholeEnd
	}
	tok := t.toks.at(ti)
	if tok.q != 0 {
		return start, end
	}
	lo, hi := WholeStart, WholeEnd
	for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
		g := t.grs.at(gi)
		switch {
		case t.sess.at(g.sess).id != id, overlaps(g.start, g.end, start, end):
			return start, end
		case g.end <= start && g.end > lo:
			lo = g.end
		case g.start >= end && g.start < hi:
			hi = g.start
		}
	}
	return lo, hi
}

// canQueue checks whether request in may wait on token ti.
func (t *Table) canQueue(ti uint32, in *Input) Status {
	if in.Deadline <= t.now {
		return StatusTimeout
	}
	if tok := t.toks.at(ti); tok.q != 0 {
		if lim := t.cfg.MaxWaitersPerToken; lim > 0 && int(t.qs.at(tok.q).n) >= lim {
			return StatusLimit
		}
	}
	if _, dup := t.byReq[reqKey{in.Session, in.Req}]; dup {
		return StatusBadRequest // the same request is already queued
	}
	return StatusOK
}

// queued answers a request that now waits as wi, and revokes what blocks it.
func (t *Table) queued(in *Input, wi uint32, out []Output) []Output {
	w := t.wts.at(wi)
	out = append(out, Output{Kind: KindReply, Status: StatusQueued, Session: in.Session, Req: in.Req,
		Position: t.position(wi), Mode: w.mode, Start: w.start, End: w.end, Name: t.toks.at(w.tok).name})
	// Revoke every holder that conflicts with the new waiter.
	for gi := t.toks.at(w.tok).grants; gi != 0; {
		g := t.grs.at(gi)
		if gi != w.grant && overlaps(g.start, g.end, w.start, w.end) && !wire.Compatible(g.mode, w.mode) {
			out = t.revoke(out, gi, wi)
		}
		gi = g.tnext
	}
	return out
}

func (t *Table) convert(in *Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || len(in.Value) > MaxValueLen {
		return reply(out, in, StatusBadRequest)
	}
	if t.grace {
		return reply(out, in, StatusGrace)
	}
	ti, _ := t.lookup(in.Name)
	gi := t.findGrant(ti, in.Session, in.Fence)
	if gi == 0 {
		return reply(out, in, StatusNotHeld)
	}
	g := t.grs.at(gi)
	down := wire.Covers(g.mode, in.Mode)
	if g.flags&grantConverting != 0 || in.SetValue && !(down && g.mode.Writes()) {
		return reply(out, in, StatusBadRequest)
	}
	tok := t.toks.at(ti)
	if down {
		// A downgrade never waits and keeps the fence.
		if in.SetValue {
			tok.setValue(in.Value)
		}
		g.mode = in.Mode
		t.rebind(gi, in.Req)
		out = append(out, t.grantOut(KindReply, in.Session, in.Req, gi))
		out = t.wake(ti, out)
		out = t.revokeFor(gi, out)
		t.maybeFreeToken(ti)
		return out
	}
	if t.admissible(tok, gi, in.Mode, g.start, g.end, true) {
		fence, ok := t.nextFence()
		if !ok {
			return reply(out, in, StatusExhausted)
		}
		g.fence, g.mode = fence, in.Mode
		t.rebind(gi, in.Req)
		out = append(out, t.grantOut(KindReply, in.Session, in.Req, gi))
		return t.revokeFor(gi, out)
	}
	if in.Try {
		return reply(out, in, StatusConflict)
	}
	if st := t.canQueue(ti, in); st != StatusOK {
		return reply(out, in, st)
	}
	if t.convCycle(tok, gi, in.Mode) {
		// A conversion deadlock: answered at once, and the grant stays.
		return reply(out, in, StatusDeadlock)
	}
	wi := t.addWaiter(ti, g.sess, in, in.Mode, g.start, g.end, gi)
	return t.queued(in, wi, out)
}

func (t *Table) release(in *Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || len(in.Value) > MaxValueLen {
		return reply(out, in, StatusBadRequest)
	}
	if t.grace {
		return reply(out, in, StatusGrace)
	}
	ti, _ := t.lookup(in.Name)
	gi := t.findGrant(ti, in.Session, in.Fence)
	if gi == 0 {
		return reply(out, in, StatusNotHeld)
	}
	g := t.grs.at(gi)
	partial := in.Partial && !(in.Start == g.start && in.End == g.end)
	if partial {
		prefix := in.Start == g.start && in.End > g.start && in.End < g.end
		suffix := in.End == g.end && in.Start > g.start && in.Start < g.end
		if !prefix && !suffix || g.flags&grantConverting != 0 {
			return reply(out, in, StatusBadRequest)
		}
	}
	if in.SetValue {
		if !g.mode.Writes() {
			return reply(out, in, StatusBadRequest)
		}
		t.toks.at(ti).setValue(in.Value)
	}
	if partial {
		// Shrink: the rest keeps its fence; waiters it no longer blocks
		// may go, and those it still blocks are revoked again.
		if in.Start == g.start {
			g.start = in.End
		} else {
			g.end = in.Start
		}
		out = append(out, Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req,
			Fence: g.fence, Mode: g.mode, Start: g.start, End: g.end, Name: t.toks.at(ti).name})
		out = t.wake(ti, out)
		out = t.revokeFor(gi, out)
		t.maybeFreeToken(ti)
		return out
	}
	si := g.sess
	out = append(out, Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req,
		Fence: g.fence, Name: t.toks.at(ti).name})
	out = t.dropGrant(gi, out)
	t.maybeFreeSession(si)
	out = t.wake(ti, out)
	t.maybeFreeToken(ti)
	return out
}

func (t *Table) cancel(in *Input, out []Output) []Output {
	if in.Session == 0 {
		return reply(out, in, StatusBadRequest)
	}
	if t.grace {
		return reply(out, in, StatusGrace)
	}
	ref, ok := t.byReq[reqKey{in.Session, in.Target}]
	if !ok {
		return reply(out, in, StatusNotHeld)
	}
	var ti, si uint32
	if ref&refGrant != 0 {
		// Granted meanwhile: release that grant.
		gi := ref &^ refGrant
		g := t.grs.at(gi)
		ti, si = g.tok, g.sess
		out = append(out, Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req,
			Released: true, Fence: g.fence, Name: t.toks.at(ti).name})
		out = t.dropGrant(gi, out)
	} else {
		w := t.wts.at(ref)
		ti, si = w.tok, w.sess
		name := t.toks.at(ti).name
		out = append(out,
			Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req, Name: name},
			Output{Kind: KindAsync, Status: StatusCanceled, Session: in.Session, Req: w.req, Name: name})
		t.dropWaiter(ref)
	}
	t.maybeFreeSession(si)
	out = t.wake(ti, out)
	t.maybeFreeToken(ti)
	return out
}

func (t *Table) reclaim(in *Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || in.Start >= in.End || len(in.Value) > MaxValueLen {
		return reply(out, in, StatusBadRequest)
	}
	ti, h := t.lookup(in.Name)
	// A grant of an earlier epoch that this table already holds exactly as
	// claimed (session, fence, mode, range) is confirmed at any time: a
	// retransmitted reclaim, or, after a planned handoff (Import), a client
	// re-asserting at the new owner a grant that came over with the
	// snapshot. It changes nothing.
	if gi := t.findGrant(ti, in.Session, in.Fence); gi != 0 && FenceEpoch(in.Fence) < t.epoch {
		if g := t.grs.at(gi); g.mode == in.Mode && g.start == in.Start && g.end == in.End {
			return append(out, t.grantOut(KindReply, in.Session, in.Req, gi))
		}
	}
	// Anything else only during grace, and only fences of earlier epochs:
	// every fence issued later (this epoch) is then above every reclaimed
	// one.
	if !t.grace || FenceSeq(in.Fence) == 0 || FenceEpoch(in.Fence) == 0 || FenceEpoch(in.Fence) >= t.epoch {
		return reply(out, in, StatusReclaimRefused)
	}
	if ti != 0 {
		for gi := t.toks.at(ti).grants; gi != 0; {
			g := t.grs.at(gi)
			if g.fence == in.Fence {
				if t.sess.at(g.sess).id == in.Session && g.mode == in.Mode && g.start == in.Start && g.end == in.End {
					return append(out, t.grantOut(KindReply, in.Session, in.Req, gi)) // the same reclaim again
				}
				return reply(out, in, StatusReclaimRefused)
			}
			if overlaps(g.start, g.end, in.Start, in.End) && !wire.Compatible(g.mode, in.Mode) {
				return reply(out, in, StatusReclaimRefused)
			}
			gi = g.tnext
		}
	}
	si := t.sessions[in.Session]
	if lim := t.cfg.MaxGrantsPerSession; lim > 0 && si != 0 && int(t.sess.at(si).n) >= lim {
		return reply(out, in, StatusLimit)
	}
	if ti == 0 {
		ti = t.newToken(in.Name, h)
	}
	if si == 0 {
		si = t.newSession(in.Session)
	}
	t.maxFence = max(t.maxFence, in.Fence)
	gi := t.addGrant(ti, si, in.Mode, in.Start, in.End, in.Fence, in.Req)
	t.recoverValue(t.toks.at(ti), in)
	return append(out, t.grantOut(KindReply, in.Session, in.Req, gi))
}

// recoverValue takes the value block of a token whose values were lost in
// a crash from a reclaiming holder's copy, by the DLM's rule: a PW or EX
// holder's copy is the value (nobody else could write it), and so is a PR
// holder's (no writer coexists with PR, so every PR holder has the same
// one). CR, CW and NL holders may have seen an older value than a PW
// holder wrote since: their copies are ignored. A token nobody recovers it
// for keeps ValueLost.
func (t *Table) recoverValue(tok *token, in *Input) {
	if !t.valuesLost || !in.SetValue || tok.flags&tokValueValid != 0 {
		return
	}
	switch in.Mode {
	case wire.PR, wire.PW, wire.EX:
		tok.setValue(in.Value)
	}
}

// deadlock ends the queued request (id, req), chosen by a deadlock detector,
// with StatusDeadlock; anything else (granted meanwhile, gone) is left
// alone.
func (t *Table) deadlock(id, req uint64, out []Output) []Output {
	ref, ok := t.byReq[reqKey{id, req}]
	if !ok || ref&refGrant != 0 {
		return out
	}
	w := t.wts.at(ref)
	ti, si := w.tok, w.sess
	out = append(out, Output{Kind: KindAsync, Status: StatusDeadlock, Session: id, Req: req, Name: t.toks.at(ti).name})
	t.dropWaiter(ref)
	t.maybeFreeSession(si)
	out = t.wake(ti, out)
	t.maybeFreeToken(ti)
	return out
}

// ---- deadlocks ----

// convCycle reports whether a conversion of grant gi to mode, were it
// queued now (last in tok's conversion queue), would close a cycle among
// the token's queued conversions. Conversion c waits for conversion d when
// their ranges overlap and d's grant conflicts with c's new mode (d's holder
// keeps that grant until d is granted), or d is queued ahead of c with a
// conflicting mode (FIFO). Acquires are not part of such cycles: nothing on
// the token waits for an acquire that a conversion ahead of it does not
// already wait for, and acquires hold nothing here. Cycles that run through
// other tokens are the detector's (WaitEdges).
func (t *Table) convCycle(tok *token, gi uint32, mode wire.Mode) bool {
	if tok.q == 0 {
		return false
	}
	g := t.grs.at(gi)
	convs := t.cycle[:0]
	for wi := t.qs.at(tok.q).conv; wi != 0; wi = t.wts.at(wi).next {
		convs = append(convs, wi)
	}
	defer func() { t.cycle = convs[:0] }()
	// waits reports whether conversion a (index i in queue order) waits
	// for conversion b (index j).
	waits := func(i, j int) bool {
		a, b := t.wts.at(convs[i]), t.wts.at(convs[j])
		if !overlaps(a.start, a.end, b.start, b.end) {
			return false
		}
		return !wire.Compatible(t.grs.at(b.grant).mode, a.mode) || j < i && !wire.Compatible(b.mode, a.mode)
	}
	// Search from the new conversion: every queued conversion it waits
	// for, then what those wait for; a cycle closes when one of them
	// waits for the new conversion, i.e. g's current mode blocks it.
	seen := t.seen[:0]
	for range convs {
		seen = append(seen, false)
	}
	defer func() { t.seen = seen[:0] }()
	stack := t.stack[:0]
	defer func() { t.stack = stack[:0] }()
	for j, wi := range convs {
		d := t.wts.at(wi)
		if overlaps(d.start, d.end, g.start, g.end) &&
			(!wire.Compatible(t.grs.at(d.grant).mode, mode) || !wire.Compatible(d.mode, mode)) {
			seen[j] = true
			stack = append(stack, j)
		}
	}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if c := t.wts.at(convs[i]); overlaps(c.start, c.end, g.start, g.end) && !wire.Compatible(g.mode, c.mode) {
			return true
		}
		for j := range convs {
			if !seen[j] && waits(i, j) {
				seen[j] = true
				stack = append(stack, j)
			}
		}
	}
	return false
}

// WaitEdges appends to out the waits of every request queued at or before
// queuedBy (on the now clock) with Input.Detect set (its session holds its
// grants until the request ends, so its waits are a session's): for each, one Edge per overlapping grant that
// conflicts with it (other than the grant it converts) and one per
// conflicting request queued ahead of it on its token. Edges of one waiter
// are consecutive. A detector joins them across tables into a wait-for graph
// between sessions; this table alone answers the cycles among the
// conversions of one token (StatusDeadlock at once).
func (t *Table) WaitEdges(queuedBy int64, out []Edge) []Edge {
	for _, wi := range t.heap {
		w := t.wts.at(wi)
		if w.since > queuedBy || !w.detect {
			continue // too young, or not part of cross-token detection (SPEC §19)
		}
		tok := t.toks.at(w.tok)
		e := Edge{Session: t.sess.at(w.sess).id, Req: w.req, Since: w.since, Conv: w.grant != 0, Name: tok.name}
		for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
			g := t.grs.at(gi)
			if gi != w.grant && overlaps(g.start, g.end, w.start, w.end) && !wire.Compatible(g.mode, w.mode) {
				e.Holder, e.Fence, e.HolderReq = t.sess.at(g.sess).id, g.fence, 0
				out = append(out, e)
			}
		}
		q := t.qs.at(tok.q)
		for _, head := range [2]uint32{q.conv, q.wait} {
			if head == q.wait && w.grant != 0 {
				break // a conversion waits only for conversions ahead
			}
			for ai := head; ai != 0 && ai != wi; ai = t.wts.at(ai).next {
				a := t.wts.at(ai)
				if overlaps(a.start, a.end, w.start, w.end) && !wire.Compatible(a.mode, w.mode) {
					e.Holder, e.Fence, e.HolderReq = t.sess.at(a.sess).id, 0, a.req
					out = append(out, e)
				}
			}
		}
	}
	return out
}

// EndSession ends session id here (its lease is gone) in a bounded step:
// first what Tick(now) would do, then it drops at most limit of the
// session's waiters and grants (limit < 0: all of them; 0: none, it only
// marks the session part-ended), waiters first, newest first, then grants,
// newest first, and wakes the tokens they were on, appending the
// asynchronous grants and revokes that follow. The session's own waiters
// get no outcome (but those whose deadline has passed time out as in
// Tick). done reports that the session has nothing left here (Footprint is
// 0); until then it is part-ended: it gains nothing (its requests are
// answered StatusSessionExpired, its waiters are never granted) and Export
// fails with ErrEnding. Steps until done drop what OpEndSession drops, in
// the same order, so that a session of millions of grants is ended without
// stopping the shard for the whole of it.
func (t *Table) EndSession(id uint64, limit int, now int64, out []Output) (_ []Output, done bool) {
	t.markEnding(id)
	out = t.advance(now, out)
	return t.endSession(id, limit, out)
}

// markEnding marks session id (if it has anything here) as ending, before
// the clock moves: a waiter of it that the Tick part of the step would
// grant stays a waiter, to be dropped.
func (t *Table) markEnding(id uint64) {
	if si := t.sessions[id]; si != 0 {
		if s := t.sess.at(si); !s.ending {
			s.ending = true
			t.ending++
		}
	}
}

// Footprint is the number of grants plus queued requests (acquires and
// conversions) of session in this table: what ending it drops.
func (t *Table) Footprint(session uint64) int {
	if si := t.sessions[session]; si != 0 {
		s := t.sess.at(si)
		return int(s.n + s.conv)
	}
	return 0
}

// Ending reports whether session is part-ended here: EndSession has
// started on it and not finished.
func (t *Table) Ending(session uint64) bool { return t.isEnding(session) }

func (t *Table) isEnding(id uint64) bool {
	if t.ending == 0 {
		return false
	}
	si := t.sessions[id]
	return si != 0 && t.sess.at(si).ending
}

// endSession drops at most limit (< 0: all) of what the session has here,
// its waiters newest first, then its grants newest first, and wakes the
// tokens it touched in that order.
func (t *Table) endSession(id uint64, limit int, out []Output) ([]Output, bool) {
	si := t.sessions[id]
	if si == 0 {
		return out, true
	}
	s := t.sess.at(si)
	touched := t.touch[:0]
	n := 0
	for s.waiters != 0 && (limit < 0 || n < limit) {
		wi := s.waiters
		touched = t.mark(touched, t.wts.at(wi).tok)
		t.dropWaiter(wi)
		n++
	}
	for s.grants != 0 && (limit < 0 || n < limit) {
		gi := s.grants
		touched = t.mark(touched, t.grs.at(gi).tok)
		out = t.dropGrant(gi, out)
		n++
	}
	done := s.grants == 0 && s.waiters == 0
	t.maybeFreeSession(si)
	return t.wakeAll(touched, out), done
}

// ---- granting ----

// nextFence issues the next fence of this epoch; ok is false when the
// sequence is exhausted (the table refuses rather than wraps).
func (t *Table) nextFence() (fence uint64, ok bool) {
	if t.seq >= MaxSeq {
		return 0, false
	}
	t.seq++
	f := Fence(t.epoch, t.seq)
	if f <= t.maxFence {
		// Unreachable: reclaimed and imported fences are from earlier epochs.
		panic(fmt.Sprintf("table: invariant 2 (fences only grow) broken: new fence %#x <= %#x", f, t.maxFence))
	}
	t.maxFence = f
	return f, true
}

// admissible reports whether a new request (or, with conv, a conversion of
// grant self) for mode on [start, end) may be granted now: it must be
// compatible with every overlapping grant and every overlapping request
// queued ahead of it (all conversions; for an acquire also all acquires).
func (t *Table) admissible(tok *token, self uint32, mode wire.Mode, start, end uint64, conv bool) bool {
	for gi := tok.grants; gi != 0; {
		g := t.grs.at(gi)
		if gi != self && overlaps(g.start, g.end, start, end) && !wire.Compatible(g.mode, mode) {
			return false
		}
		gi = g.tnext
	}
	if tok.q == 0 {
		return true
	}
	q := t.qs.at(tok.q)
	if !t.clearAhead(q.conv, 0, mode, start, end) {
		return false
	}
	return conv || t.clearAhead(q.wait, 0, mode, start, end)
}

// clearAhead reports whether the waiters from wi up to (not including) stop,
// or to the end of the list, are all compatible with mode on [start, end).
func (t *Table) clearAhead(wi, stop uint32, mode wire.Mode, start, end uint64) bool {
	for wi != stop && wi != 0 {
		w := t.wts.at(wi)
		if overlaps(w.start, w.end, start, end) && !wire.Compatible(w.mode, mode) {
			return false
		}
		wi = w.next
	}
	return true
}

// wake grants, in queue order, every waiter of token ti that has become
// grantable, then revokes the new grants from the waiters they block.
func (t *Table) wake(ti uint32, out []Output) []Output {
	tok := t.toks.at(ti)
	if tok.q == 0 {
		return out
	}
	q := t.qs.at(tok.q)
	// Mode masks filter out most exact scans: gmask has the modes of the
	// grants, ahead those of the waiters passed over so far.
	var gmask, ahead uint8
	for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
		gmask |= 1 << t.grs.at(gi).mode
	}
	fresh := t.fresh[:0]
	for pass := 0; pass < 2; pass++ {
		wi := q.conv
		if pass == 1 {
			wi = q.wait
		}
		for wi != 0 {
			w := t.wts.at(wi)
			next := w.next
			c := conflicts[w.mode]
			ok := gmask&c == 0 || t.grantsAdmit(tok, w)
			if ok && t.ending > 0 && t.sess.at(w.sess).ending {
				ok = false // its session is being ended: it gains nothing
			}
			if ok && ahead&c != 0 {
				if pass == 0 {
					ok = t.clearAhead(q.conv, wi, w.mode, w.start, w.end)
				} else {
					ok = t.clearAhead(q.conv, 0, w.mode, w.start, w.end) &&
						t.clearAhead(q.wait, wi, w.mode, w.start, w.end)
				}
			}
			if !ok {
				ahead |= 1 << w.mode
				wi = next
				continue
			}
			if fence, ok := t.nextFence(); ok {
				gi := t.grantWaiter(wi, fence)
				fresh = append(fresh, gi)
				gmask |= 1 << t.grs.at(gi).mode
				out = append(out, t.grantOut(KindAsync, t.sess.at(t.grs.at(gi).sess).id, t.grs.at(gi).req, gi))
			} else {
				si := w.sess
				out = append(out, Output{Kind: KindAsync, Status: StatusExhausted,
					Session: t.sess.at(si).id, Req: w.req, Name: tok.name})
				t.dropWaiter(wi)
				t.maybeFreeSession(si)
			}
			wi = next
		}
	}
	if len(fresh) > 0 && q.n > 0 {
		for pass := 0; pass < 2; pass++ {
			wi := q.conv
			if pass == 1 {
				wi = q.wait
			}
			for ; wi != 0; wi = t.wts.at(wi).next {
				w := t.wts.at(wi)
				for _, gi := range fresh {
					g := t.grs.at(gi)
					if gi != w.grant && overlaps(g.start, g.end, w.start, w.end) && !wire.Compatible(g.mode, w.mode) {
						out = t.revoke(out, gi, wi)
					}
				}
			}
		}
	}
	t.fresh = fresh[:0]
	return out
}

// grantsAdmit reports whether waiter w is compatible with every overlapping
// grant of tok other than the one it converts.
func (t *Table) grantsAdmit(tok *token, w *waiter) bool {
	for gi := tok.grants; gi != 0; {
		g := t.grs.at(gi)
		if gi != w.grant && overlaps(g.start, g.end, w.start, w.end) && !wire.Compatible(g.mode, w.mode) {
			return false
		}
		gi = g.tnext
	}
	return true
}

// grantWaiter turns waiter wi into a grant with the given fence and returns
// the grant.
func (t *Table) grantWaiter(wi uint32, fence uint64) uint32 {
	w := t.wts.at(wi)
	key := reqKey{t.sess.at(w.sess).id, w.req}
	gi := w.grant
	if gi != 0 {
		g := t.grs.at(gi)
		t.rebind(gi, w.req)
		g.fence, g.mode = fence, w.mode
	} else {
		gi = t.addGrant(w.tok, w.sess, w.mode, w.start, w.end, fence, w.req)
	}
	t.dropWaiter(wi)
	t.grs.at(gi).flags |= grantAsync
	t.byReq[key] = gi | refGrant
	return gi
}

// rebind records that request req gave grant gi its current mode.
func (t *Table) rebind(gi uint32, req uint64) {
	g := t.grs.at(gi)
	if g.flags&grantAsync != 0 {
		delete(t.byReq, reqKey{t.sess.at(g.sess).id, g.req})
		g.flags &^= grantAsync
	}
	g.req = req
}

// revokeFor revokes grant gi (just granted or converted) from every waiter
// of its token that it blocks.
func (t *Table) revokeFor(gi uint32, out []Output) []Output {
	g := t.grs.at(gi)
	tok := t.toks.at(g.tok)
	if tok.q == 0 {
		return out
	}
	q := t.qs.at(tok.q)
	for _, wi := range [2]uint32{q.conv, q.wait} {
		for ; wi != 0; wi = t.wts.at(wi).next {
			w := t.wts.at(wi)
			if w.grant != gi && overlaps(g.start, g.end, w.start, w.end) && !wire.Compatible(g.mode, w.mode) {
				out = t.revoke(out, gi, wi)
			}
		}
	}
	return out
}

func (t *Table) revoke(out []Output, gi, wi uint32) []Output {
	g, w := t.grs.at(gi), t.wts.at(wi)
	return append(out, Output{Kind: KindRevoke, Session: t.sess.at(g.sess).id, Fence: g.fence,
		Mode: wanted[g.mode][w.mode], Start: w.start, End: w.end, Name: t.toks.at(g.tok).name})
}

func (t *Table) grantOut(kind Kind, sessID, req uint64, gi uint32) Output {
	g := t.grs.at(gi)
	tok := t.toks.at(g.tok)
	o := Output{Kind: kind, Status: StatusOK, Session: sessID, Req: req, Fence: g.fence, Mode: g.mode,
		Start: g.start, End: g.end, Name: tok.name}
	o.Value, o.VFlags = t.valueOf(tok)
	return o
}

// valueOf is the value block of tok as a grant reports it.
func (t *Table) valueOf(tok *token) (string, ValueFlags) {
	switch {
	case tok.flags&tokValueValid != 0:
		return tok.value, ValueValid
	case t.valuesLost:
		return "", ValueLost
	}
	return "", 0
}

func (tok *token) setValue(v []byte) {
	if tok.flags&tokValueValid == 0 || tok.value != string(v) {
		tok.value = string(v)
	}
	tok.flags |= tokValueValid
}

// position is a waiter's place in its token's queue (1 = next in line).
func (t *Table) position(wi uint32) uint32 {
	w := t.wts.at(wi)
	q := t.qs.at(t.toks.at(w.tok).q)
	n := uint32(1)
	head := q.conv
	if w.grant == 0 {
		for c := q.conv; c != 0; c = t.wts.at(c).next {
			n++
		}
		head = q.wait
	}
	for c := head; c != wi; c = t.wts.at(c).next {
		n++
	}
	return n
}

// ---- records ----

// weakHash makes all names of the same length collide; tests set it to
// exercise the hash chains.
var weakHash = false

func (t *Table) hash(name []byte) uint64 {
	if weakHash {
		return uint64(len(name))
	}
	return maphash.Bytes(t.seed, name)
}

func (t *Table) hashString(name string) uint64 {
	if weakHash {
		return uint64(len(name))
	}
	return maphash.String(t.seed, name)
}

// lookup finds a token by name; h is the name's hash, for newToken.
func (t *Table) lookup(name []byte) (ti uint32, h uint64) {
	h = t.hash(name)
	for ti = t.index[h]; ti != 0; {
		tok := t.toks.at(ti)
		if tok.name == string(name) {
			return ti, h
		}
		ti = tok.hnext
	}
	return 0, h
}

func (t *Table) newToken(name []byte, h uint64) uint32 {
	ti := t.toks.alloc()
	tok := t.toks.at(ti)
	tok.name = string(name)
	tok.hnext = t.index[h]
	t.index[h] = ti
	return ti
}

// maybeFreeToken frees token ti's queue if empty, and the token itself
// when it has no grants, no waiters and no valid value.
func (t *Table) maybeFreeToken(ti uint32) {
	tok := t.toks.at(ti)
	if tok.q != 0 && t.qs.at(tok.q).n == 0 {
		t.qs.release(tok.q)
		tok.q = 0
	}
	if tok.grants != 0 || tok.q != 0 || tok.flags&tokValueValid != 0 {
		return
	}
	h := t.hashString(tok.name)
	if head := t.index[h]; head == ti {
		if tok.hnext != 0 {
			t.index[h] = tok.hnext
		} else {
			delete(t.index, h)
		}
	} else {
		p := t.toks.at(head)
		for p.hnext != ti {
			p = t.toks.at(p.hnext)
		}
		p.hnext = tok.hnext
	}
	t.toks.release(ti)
}

func (t *Table) newSession(id uint64) uint32 {
	si := t.sess.alloc()
	t.sess.at(si).id = id
	t.sessions[id] = si
	return si
}

func (t *Table) maybeFreeSession(si uint32) {
	s := t.sess.at(si)
	if s.grants == 0 && s.waiters == 0 {
		if s.ending {
			t.ending--
		}
		delete(t.sessions, s.id)
		t.sess.release(si)
	}
}

// findGrant returns the grant of token ti with the given fence held by
// session id, or 0.
func (t *Table) findGrant(ti uint32, id, fence uint64) uint32 {
	if ti == 0 {
		return 0
	}
	for gi := t.toks.at(ti).grants; gi != 0; {
		g := t.grs.at(gi)
		if g.fence == fence {
			if t.sess.at(g.sess).id == id {
				return gi
			}
			return 0
		}
		gi = g.tnext
	}
	return 0
}

func (t *Table) addGrant(ti, si uint32, mode wire.Mode, start, end, fence, req uint64) uint32 {
	gi := t.grs.alloc()
	tok, s := t.toks.at(ti), t.sess.at(si)
	*t.grs.at(gi) = grant{fence: fence, start: start, end: end, req: req, tok: ti, sess: si,
		tnext: tok.grants, snext: s.grants, mode: mode, since: t.now}
	tok.grants = gi
	if s.grants != 0 {
		t.grs.at(s.grants).sprev = gi
	}
	s.grants = gi
	s.n++
	return gi
}

// dropGrant removes grant gi. A conversion of it still queued ends with
// StatusCanceled. The caller frees the session and wakes the token.
func (t *Table) dropGrant(gi uint32, out []Output) []Output {
	g := t.grs.at(gi)
	tok, s := t.toks.at(g.tok), t.sess.at(g.sess)
	if g.flags&grantConverting != 0 {
		for wi := t.qs.at(tok.q).conv; wi != 0; wi = t.wts.at(wi).next {
			if w := t.wts.at(wi); w.grant == gi {
				out = append(out, Output{Kind: KindAsync, Status: StatusCanceled, Session: s.id, Req: w.req, Name: tok.name})
				t.dropWaiter(wi)
				break
			}
		}
	}
	if g.flags&grantAsync != 0 {
		delete(t.byReq, reqKey{s.id, g.req})
	}
	if tok.grants == gi {
		tok.grants = g.tnext
	} else {
		p := t.grs.at(tok.grants)
		for p.tnext != gi {
			p = t.grs.at(p.tnext)
		}
		p.tnext = g.tnext
	}
	if g.sprev != 0 {
		t.grs.at(g.sprev).snext = g.snext
	} else {
		s.grants = g.snext
	}
	if g.snext != 0 {
		t.grs.at(g.snext).sprev = g.sprev
	}
	s.n--
	t.grs.release(gi)
	return out
}

// addWaiter queues request in on token ti for session si: a conversion of
// grant gi, or an acquire when gi is 0.
func (t *Table) addWaiter(ti, si uint32, in *Input, mode wire.Mode, start, end uint64, gi uint32) uint32 {
	wi := t.wts.alloc()
	w := t.wts.at(wi)
	t.arrivals++
	*w = waiter{req: in.Req, start: start, end: end, deadline: in.Deadline, since: t.now, arrival: t.arrivals,
		tok: ti, sess: si, grant: gi, mode: mode, detect: in.Detect}
	tok := t.toks.at(ti)
	if tok.q == 0 {
		tok.q = t.qs.alloc()
	}
	q := t.qs.at(tok.q)
	head, tail := &q.wait, &q.waitTail
	if gi != 0 {
		head, tail = &q.conv, &q.convTail
		t.grs.at(gi).flags |= grantConverting
	}
	w.prev = *tail
	if *tail != 0 {
		t.wts.at(*tail).next = wi
	} else {
		*head = wi
	}
	*tail = wi
	q.n++
	s := t.sess.at(si)
	w.snext = s.waiters
	if s.waiters != 0 {
		t.wts.at(s.waiters).sprev = wi
	}
	s.waiters = wi
	if gi == 0 {
		s.n++
	} else {
		s.conv++
	}
	t.heapPush(wi)
	t.byReq[reqKey{s.id, in.Req}] = wi
	return wi
}

// dropWaiter removes waiter wi from its queue, session, the deadline heap
// and byReq. The caller frees the session and wakes the token.
func (t *Table) dropWaiter(wi uint32) {
	w := t.wts.at(wi)
	q := t.qs.at(t.toks.at(w.tok).q)
	head, tail := &q.wait, &q.waitTail
	if w.grant != 0 {
		head, tail = &q.conv, &q.convTail
		t.grs.at(w.grant).flags &^= grantConverting
	}
	if w.prev != 0 {
		t.wts.at(w.prev).next = w.next
	} else {
		*head = w.next
	}
	if w.next != 0 {
		t.wts.at(w.next).prev = w.prev
	} else {
		*tail = w.prev
	}
	q.n--
	s := t.sess.at(w.sess)
	if w.sprev != 0 {
		t.wts.at(w.sprev).snext = w.snext
	} else {
		s.waiters = w.snext
	}
	if w.snext != 0 {
		t.wts.at(w.snext).sprev = w.sprev
	}
	if w.grant == 0 {
		s.n--
	} else {
		s.conv--
	}
	t.heapRemove(int(w.heap))
	if key := (reqKey{s.id, w.req}); t.byReq[key] == wi {
		delete(t.byReq, key)
	}
	t.wts.release(wi)
}

// ---- deadline heap ----

func (t *Table) heapLess(i, j int) bool {
	a, b := t.wts.at(t.heap[i]), t.wts.at(t.heap[j])
	if a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.arrival < b.arrival
}

func (t *Table) heapSwap(i, j int) {
	t.heap[i], t.heap[j] = t.heap[j], t.heap[i]
	t.wts.at(t.heap[i]).heap = int32(i)
	t.wts.at(t.heap[j]).heap = int32(j)
}

func (t *Table) heapPush(wi uint32) {
	t.heap = append(t.heap, wi)
	i := len(t.heap) - 1
	t.wts.at(wi).heap = int32(i)
	t.heapUp(i)
}

func (t *Table) heapRemove(i int) {
	n := len(t.heap) - 1
	if i != n {
		t.heapSwap(i, n)
	}
	t.heap = t.heap[:n]
	if i < n && !t.heapDown(i) {
		t.heapUp(i)
	}
}

func (t *Table) heapUp(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !t.heapLess(i, p) {
			return
		}
		t.heapSwap(i, p)
		i = p
	}
}

func (t *Table) heapDown(i0 int) bool {
	i, n := i0, len(t.heap)
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		j := l
		if r := l + 1; r < n && t.heapLess(r, l) {
			j = r
		}
		if !t.heapLess(j, i) {
			break
		}
		t.heapSwap(i, j)
		i = j
	}
	return i > i0
}

// SessionLoad returns the grants plus queued acquires of session in this
// table: what Config.MaxGrantsPerSession bounds.
func (t *Table) SessionLoad(session uint64) int {
	if si, ok := t.sessions[session]; ok {
		return int(t.sess.at(si).n)
	}
	return 0
}

// Queued reports whether request req of session waits in the table, and
// its place in its token's queue (1 = next in line), as a QUEUED reply
// would give it. A request granted from the queue is no longer queued.
func (t *Table) Queued(session, req uint64) (position uint32, ok bool) {
	ref, ok := t.byReq[reqKey{session, req}]
	if !ok || ref&refGrant != 0 {
		return 0, false
	}
	return t.position(ref), true
}
