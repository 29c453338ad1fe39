package table

import (
	"slices"

	"github.com/tokend/tokend/wire"
)

// TokenView is one token as Describe reports it, for operators: plain data
// copied out of the table, valid after the next Step.
type TokenView struct {
	Name string
	// Grants is at most limit grants, the ones the table has held longest,
	// sorted by fence. NGrants counts them all.
	Grants  []GrantView
	NGrants int
	// Waiters is the first limit queued requests in queue order
	// (conversions first, then acquires; Position 1 is next in line).
	// NWaiters counts them all.
	Waiters    []WaiterView
	NWaiters   int
	ValueValid bool
}

// GrantView is one grant of a TokenView.
type GrantView struct {
	Session    uint64
	Fence      uint64
	Mode       wire.Mode
	Start, End uint64
	Req        uint64 // the request that gave the grant its mode
	Converting bool   // a conversion of it is queued (among the Waiters, with its Fence)
	// Since is the now of the Step that gave this table the grant: granted,
	// or reclaimed after a failover. 0 for a grant imported in a handoff
	// (the snapshot does not carry it).
	Since int64
}

// WaiterView is one queued request of a TokenView.
type WaiterView struct {
	Session, Req uint64
	Mode         wire.Mode // the mode asked for
	Start, End   uint64
	Fence        uint64 // a conversion: the fence of the grant it converts; 0 for an acquire
	Position     int    // 1 = next in line
	Since        int64  // the now of the Step that queued it
	Deadline     int64  // when it times out (math.MaxInt64: never)
}

// Describe reports who holds and who waits for the token name, without
// changing anything: ok is false if the table keeps nothing of it (nobody
// holds or waits, and it has no value block). limit (at least 1) bounds the
// grants and the waiters copied, so the cost is one walk of the token's
// grant list and limit steps of its queue, whatever the queue's length.
func (t *Table) Describe(name []byte, limit int) (v TokenView, ok bool) {
	limit = max(limit, 1)
	ti, _ := t.lookup(name)
	if ti == 0 {
		return v, false
	}
	tok := t.toks.at(ti)
	v.Name, v.ValueValid = tok.name, tok.flags&tokValueValid != 0
	// The list is newest first: keep its last limit entries, in a ring.
	ring := make([]GrantView, 0, min(limit, 64))
	for gi := tok.grants; gi != 0; {
		g := t.grs.at(gi)
		gv := GrantView{Session: t.sess.at(g.sess).id, Fence: g.fence, Mode: g.mode, Start: g.start, End: g.end, Since: g.since,
			Req: g.req, Converting: g.flags&grantConverting != 0}
		if len(ring) < limit {
			ring = append(ring, gv)
		} else {
			ring[v.NGrants%limit] = gv
		}
		v.NGrants++
		gi = g.tnext
	}
	slices.SortFunc(ring, func(a, b GrantView) int { return cmpU64(a.Fence, b.Fence) })
	v.Grants = ring
	if tok.q == 0 {
		return v, true
	}
	q := t.qs.at(tok.q)
	v.NWaiters = int(q.n)
	for _, head := range [2]uint32{q.conv, q.wait} {
		for wi := head; wi != 0 && len(v.Waiters) < limit; {
			w := t.wts.at(wi)
			wv := WaiterView{Session: t.sess.at(w.sess).id, Req: w.req, Mode: w.mode, Start: w.start, End: w.end,
				Position: len(v.Waiters) + 1, Since: w.since, Deadline: w.deadline}
			if w.grant != 0 {
				wv.Fence = t.grs.at(w.grant).fence
			}
			v.Waiters = append(v.Waiters, wv)
			wi = w.next
		}
	}
	return v, true
}

// Held reports the grant with fence on token name if session holds it,
// without changing anything (a FENCE_PROOF, wire/SPEC.md §5).
func (t *Table) Held(session uint64, name []byte, fence uint64) (GrantView, bool) {
	ti, _ := t.lookup(name)
	gi := t.findGrant(ti, session, fence)
	if gi == 0 {
		return GrantView{}, false
	}
	g := t.grs.at(gi)
	return GrantView{Session: session, Fence: g.fence, Mode: g.mode, Start: g.start, End: g.end, Req: g.req,
		Since: g.since, Converting: g.flags&grantConverting != 0}, true
}
