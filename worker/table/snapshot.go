package table

import (
	"bytes"
	"fmt"
	"math"
	"slices"

	"github.com/tokend/tokend/wire"
)

// Snapshot is the transferable state of a shard, for a planned handoff
// (no crash, no grace period): grants with their fences, value blocks, the
// fence position, and the queued requests in arrival order, so that a
// waiter keeps its place and its request id at the new owner. A snapshot
// without Waiters (from an old owner that does not move them) is valid: its
// clients retransmit to the new owner and queue there again. It is plain
// data (JSON works); the byte layout on the way is the shell's business.
type Snapshot struct {
	Epoch      uint32 // epoch of the exporting table
	Seq        uint64 // last sequence number it issued in that epoch
	MaxFence   uint64 // highest fence it issued or reclaimed
	ValuesLost bool   // unset values are still reported ValueLost (shard recovered from a crash)
	Tokens     []TokenState
	Waiters    []WaiterState // queued requests, in arrival order
}

// WaiterState is one queued request of a Snapshot: an acquire, or (Conv not
// 0) a conversion of the session's grant with fence Conv on the same token.
// Deadline and Since are in the exporting table's clock; a shell whose new
// owner runs another clock rebases them before Import (Snapshot.Rebase).
type WaiterState struct {
	Session    uint64
	Req        uint64
	Name       []byte
	Mode       wire.Mode
	Start, End uint64
	Conv       uint64 // fence of the grant being converted; 0 for an acquire
	Deadline   int64
	Since      int64
	Detect     bool
}

// TokenState is one token of a Snapshot.
type TokenState struct {
	Name       []byte
	ValueValid bool
	Value      []byte
	Grants     []GrantState // by fence
}

// GrantState is one grant of a TokenState.
type GrantState struct {
	Session    uint64
	Fence      uint64
	Mode       wire.Mode
	Start, End uint64
	Req        uint64 // the request that gave the grant its mode
	Async      bool   // granted from the queue: OpCancel of Req releases it
}

// Export returns a snapshot of the table, tokens sorted by name. It fails
// with ErrInGrace during the grace period: a shard whose grants are not all
// reclaimed cannot be handed on without its grace period; and with
// ErrEnding while a session is part-ended (EndSession): the new owner would
// take its grants as live.
func (t *Table) Export() (*Snapshot, error) {
	if t.grace {
		return nil, ErrInGrace
	}
	if t.ending > 0 {
		return nil, ErrEnding
	}
	s := &Snapshot{Epoch: t.epoch, Seq: t.seq, MaxFence: t.maxFence, ValuesLost: t.valuesLost}
	for _, page := range t.toks.pages {
		for o := range page {
			tok := &page[o]
			if tok.name == "" { // free or never used
				continue
			}
			ts := TokenState{Name: []byte(tok.name), ValueValid: tok.flags&tokValueValid != 0}
			if ts.ValueValid {
				ts.Value = []byte(tok.value)
			}
			for gi := tok.grants; gi != 0; {
				g := t.grs.at(gi)
				ts.Grants = append(ts.Grants, GrantState{Session: t.sess.at(g.sess).id, Fence: g.fence,
					Mode: g.mode, Start: g.start, End: g.end, Req: g.req, Async: g.flags&grantAsync != 0})
				gi = g.tnext
			}
			slices.SortFunc(ts.Grants, func(a, b GrantState) int { return cmpU64(a.Fence, b.Fence) })
			s.Tokens = append(s.Tokens, ts)
		}
	}
	slices.SortFunc(s.Tokens, func(a, b TokenState) int { return bytes.Compare(a.Name, b.Name) })
	s.Waiters = t.exportWaiters()
	return s, nil
}

// exportWaiters returns every queued request in arrival order, which is
// also the order within each of a token's two queues.
func (t *Table) exportWaiters() []WaiterState {
	if len(t.heap) == 0 {
		return nil
	}
	type arrived struct {
		arrival uint64
		wi      uint32
	}
	order := make([]arrived, len(t.heap))
	for i, wi := range t.heap {
		order[i] = arrived{t.wts.at(wi).arrival, wi}
	}
	slices.SortFunc(order, func(a, b arrived) int { return cmpU64(a.arrival, b.arrival) })
	out := make([]WaiterState, len(order))
	for i, a := range order {
		w := t.wts.at(a.wi)
		out[i] = WaiterState{Session: t.sess.at(w.sess).id, Req: w.req, Name: []byte(t.toks.at(w.tok).name),
			Mode: w.mode, Start: w.start, End: w.end, Deadline: w.deadline, Since: w.since, Detect: w.detect}
		if w.grant != 0 {
			out[i].Conv = t.grs.at(w.grant).fence
		}
	}
	return out
}

// Rebase moves the waiters' Deadline and Since from the exporting
// table's clock to another one, whose reading is delta above it at the
// same instant (the new owner's clock minus the old owner's), so that a
// queued request times out at the new owner when it would have at the old
// one. No deadline (math.MaxInt64) stays none; sums that would overflow
// are clamped.
func (s *Snapshot) Rebase(delta int64) {
	for i := range s.Waiters {
		w := &s.Waiters[i]
		if w.Deadline != math.MaxInt64 {
			w.Deadline = addClamped(w.Deadline, delta)
		}
		w.Since = addClamped(w.Since, delta)
	}
}

// addClamped returns a+b, clamped to the int64 range (never MaxInt64, which
// means "no deadline").
func addClamped(a, b int64) int64 {
	switch {
	case b > 0 && a > math.MaxInt64-1-b:
		return math.MaxInt64 - 1
	case b < 0 && a < math.MinInt64-b:
		return math.MinInt64
	}
	return a + b
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Import builds a table that continues the exported one under newEpoch,
// which must be above the snapshot's epoch: the same grants with the same
// fences, the same values, no grace period, and new fences from
// Fence(newEpoch, 1) on, above every fence in the snapshot. A snapshot that
// breaks an invariant (conflicting grants, fences not below newEpoch,
// duplicate names, bad sizes) is refused with ErrBadSnapshot. Limits are not
// applied to imported grants.
func Import(s *Snapshot, newEpoch uint32, cfg Config) (*Table, error) {
	if newEpoch <= s.Epoch {
		return nil, fmt.Errorf("%w: new epoch %d is not above the snapshot's %d", ErrBadEpoch, newEpoch, s.Epoch)
	}
	t, err := New(newEpoch, cfg)
	if err != nil {
		return nil, err
	}
	if s.MaxFence >= Fence(newEpoch, 0) {
		return nil, fmt.Errorf("%w: max fence %#x not below epoch %d", ErrBadSnapshot, s.MaxFence, newEpoch)
	}
	t.valuesLost = s.ValuesLost
	t.maxFence = s.MaxFence
	for i := range s.Tokens {
		ts := &s.Tokens[i]
		if !validName(ts.Name) || len(ts.Value) > MaxValueLen || !ts.ValueValid && len(ts.Value) > 0 {
			return nil, fmt.Errorf("%w: token %q: bad name or value", ErrBadSnapshot, ts.Name)
		}
		ti, h := t.lookup(ts.Name)
		if ti != 0 {
			return nil, fmt.Errorf("%w: token %q twice", ErrBadSnapshot, ts.Name)
		}
		if len(ts.Grants) == 0 && !ts.ValueValid {
			continue
		}
		ti = t.newToken(ts.Name, h)
		if ts.ValueValid {
			t.toks.at(ti).setValue(ts.Value)
		}
		for j := range ts.Grants {
			g := &ts.Grants[j]
			if err := t.checkImported(ti, g); err != nil {
				return nil, fmt.Errorf("%w: token %q: %v", ErrBadSnapshot, ts.Name, err)
			}
			si := t.sessions[g.Session]
			if si == 0 {
				si = t.newSession(g.Session)
			}
			t.maxFence = max(t.maxFence, g.Fence)
			gi := t.addGrant(ti, si, g.Mode, g.Start, g.End, g.Fence, g.Req)
			if g.Async {
				key := reqKey{g.Session, g.Req}
				if _, dup := t.byReq[key]; dup {
					return nil, fmt.Errorf("%w: token %q: request %d of session %d twice", ErrBadSnapshot, ts.Name, g.Req, g.Session)
				}
				t.grs.at(gi).flags |= grantAsync
				t.byReq[key] = gi | refGrant
			}
		}
	}
	for i := range s.Waiters {
		if err := t.importWaiter(&s.Waiters[i]); err != nil {
			return nil, fmt.Errorf("%w: waiter %d: %v", ErrBadSnapshot, i, err)
		}
	}
	return t, nil
}

// importWaiter queues ws at the tail of its token's queue, as it was at the
// old owner (the snapshot lists waiters in arrival order). It sends no
// revocations: the old owner sent them when the request queued. Limits are
// not applied, as for grants; what the snapshot cannot have held is refused.
func (t *Table) importWaiter(ws *WaiterState) error {
	if ws.Session == 0 || !validName(ws.Name) || !ws.Mode.Valid() || ws.Start >= ws.End {
		return fmt.Errorf("bad waiter %+v", *ws)
	}
	if _, dup := t.byReq[reqKey{ws.Session, ws.Req}]; dup {
		return fmt.Errorf("request %d of session %d twice", ws.Req, ws.Session)
	}
	ti, h := t.lookup(ws.Name)
	si := t.sessions[ws.Session]
	var gi uint32
	if ws.Conv != 0 {
		gi = t.findGrant(ti, ws.Session, ws.Conv)
		if gi == 0 {
			return fmt.Errorf("conversion of grant %#x not held by session %d on %q", ws.Conv, ws.Session, ws.Name)
		}
		g := t.grs.at(gi)
		if g.flags&grantConverting != 0 || g.start != ws.Start || g.end != ws.End || wire.Covers(g.mode, ws.Mode) {
			return fmt.Errorf("bad conversion of grant %#x", ws.Conv)
		}
		si = g.sess
	} else {
		if ti == 0 {
			ti = t.newToken(ws.Name, h)
		}
		if si == 0 {
			si = t.newSession(ws.Session)
		}
	}
	in := Input{Req: ws.Req, Deadline: ws.Deadline, Detect: ws.Detect}
	wi := t.addWaiter(ti, si, &in, ws.Mode, ws.Start, ws.End, gi)
	t.wts.at(wi).since = ws.Since
	return nil
}

// checkImported checks grant g against token ti's grants imported so far.
func (t *Table) checkImported(ti uint32, g *GrantState) error {
	if g.Session == 0 || !g.Mode.Valid() || g.Start >= g.End || FenceSeq(g.Fence) == 0 || g.Fence > t.maxFenceAllowed() {
		return fmt.Errorf("bad grant %+v", *g)
	}
	for gi := t.toks.at(ti).grants; gi != 0; {
		o := t.grs.at(gi)
		if o.fence == g.Fence {
			return fmt.Errorf("fence %#x twice", g.Fence)
		}
		if overlaps(o.start, o.end, g.Start, g.End) && !wire.Compatible(o.mode, g.Mode) {
			return fmt.Errorf("grants %#x and %#x conflict (invariant 1)", o.fence, g.Fence)
		}
		gi = o.tnext
	}
	return nil
}

// maxFenceAllowed is the highest fence a snapshot may carry into this table.
func (t *Table) maxFenceAllowed() uint64 { return Fence(t.epoch, 0) - 1 }

// Revokes appends the REVOKEs the queued requests call for now: for every
// grant, one per waiter of its token that it blocks, as when those
// requests queued. Import sends none; a new owner that imported queued
// requests sends these, since a REVOKE of the old owner may have been lost
// when it stopped retransmitting it (holders that got it already answer
// it again and hand it to no one twice: wire/SPEC.md section 12).
func (t *Table) Revokes(out []Output) []Output {
	for _, page := range t.toks.pages {
		for o := range page {
			tok := &page[o]
			if tok.name == "" || tok.q == 0 {
				continue
			}
			for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
				out = t.revokeFor(gi, out)
			}
		}
	}
	return out
}
