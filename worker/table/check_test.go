package table

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tokend/tokend/wire"
)

// This file holds what the scenario, randomized and fuzz tests share: a
// structural check of a Table (every link, count and index consistent, and
// invariant 1), a canonical dump of its state, and a driver that runs the
// Table and the naive model side by side.

// forTokens calls f for every token reachable from the name index.
func (t *Table) forTokens(f func(ti uint32, tok *token)) {
	for _, head := range t.index {
		for ti := head; ti != 0; ti = t.toks.at(ti).hnext {
			f(ti, t.toks.at(ti))
		}
	}
}

// queueOrder returns a token's waiters in queue order.
func (t *Table) queueOrder(tok *token) []uint32 {
	if tok.q == 0 {
		return nil
	}
	var ws []uint32
	q := t.qs.at(tok.q)
	for _, wi := range [2]uint32{q.conv, q.wait} {
		for ; wi != 0; wi = t.wts.at(wi).next {
			ws = append(ws, wi)
		}
	}
	return ws
}

// check verifies the table's internal consistency and invariant 1
// (mutual exclusion: overlapping grants of a token have compatible modes).
func (t *Table) check() error {
	var errs []string
	fail := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	ntok, ngr, nwt, nq := 0, 0, 0, 0
	sessGrants := map[uint32]int{}
	sessWaiters := map[uint32]int{}
	sessN := map[uint32]int{}
	sessConv := map[uint32]int{}
	reqs := map[reqKey]uint32{}
	t.forTokens(func(ti uint32, tok *token) {
		ntok++
		if h := t.hashString(tok.name); t.index[h] == 0 {
			fail("token %q: not indexed under its hash", tok.name)
		}
		if tok.flags&tokTouched != 0 {
			fail("token %q: touched flag left set", tok.name)
		}
		var gs []*grant
		fences := map[uint64]bool{}
		for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
			g := t.grs.at(gi)
			ngr++
			gs = append(gs, g)
			if g.tok != ti {
				fail("grant %#x: tok %d, on token %d", g.fence, g.tok, ti)
			}
			if fences[g.fence] {
				fail("token %q: fence %#x twice", tok.name, g.fence)
			}
			fences[g.fence] = true
			if g.start >= g.end || !g.mode.Valid() || g.fence == 0 {
				fail("grant %#x: bad fields %+v", g.fence, *g)
			}
			if g.fence > t.maxFence {
				fail("grant %#x above maxFence %#x", g.fence, t.maxFence)
			}
			sessGrants[g.sess]++
			sessN[g.sess]++
			if g.flags&grantAsync != 0 {
				reqs[reqKey{t.sess.at(g.sess).id, g.req}] = gi | refGrant
			}
		}
		for i, a := range gs {
			for _, b := range gs[i+1:] {
				if conflict(a.mode, a.start, a.end, b.mode, b.start, b.end) {
					fail("invariant 1: token %q: grants %#x %v and %#x %v overlap and conflict", tok.name, a.fence, a.mode, b.fence, b.mode)
				}
			}
		}
		ws := t.queueOrder(tok)
		if tok.q != 0 {
			nq++
			q := t.qs.at(tok.q)
			if int(q.n) != len(ws) || q.n == 0 {
				fail("token %q: queue n=%d, %d waiters", tok.name, q.n, len(ws))
			}
			for _, pair := range [][2]uint32{{q.conv, q.convTail}, {q.wait, q.waitTail}} {
				prev := uint32(0)
				for wi := pair[0]; wi != 0; wi = t.wts.at(wi).next {
					if t.wts.at(wi).prev != prev {
						fail("token %q: waiter %d prev link", tok.name, wi)
					}
					prev = wi
				}
				if prev != pair[1] {
					fail("token %q: queue tail %d, last %d", tok.name, pair[1], prev)
				}
			}
		}
		convs := map[uint32]bool{}
		for _, wi := range ws {
			nwt++
			w := t.wts.at(wi)
			if w.tok != ti {
				fail("waiter %d: tok %d, queued on %d", wi, w.tok, ti)
			}
			if int(w.heap) >= len(t.heap) || t.heap[w.heap] != wi {
				fail("waiter %d: heap position %d wrong", wi, w.heap)
			}
			sessWaiters[w.sess]++
			if w.grant != 0 {
				g := t.grs.at(w.grant)
				if g.tok != ti || g.flags&grantConverting == 0 || g.sess != w.sess || convs[w.grant] {
					fail("waiter %d: bad conversion of grant %d", wi, w.grant)
				}
				convs[w.grant] = true
				sessConv[w.sess]++
			} else {
				sessN[w.sess]++
			}
			reqs[reqKey{t.sess.at(w.sess).id, w.req}] = wi
		}
		if c := t.convCycleIn(ws); c != "" {
			fail("token %q: conversion deadlock left queued: %s", tok.name, c)
		}
		for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
			if (t.grs.at(gi).flags&grantConverting != 0) != convs[gi] {
				fail("grant %d: converting flag does not match the queue", gi)
			}
		}
		if tok.grants == 0 && tok.q == 0 && tok.flags&tokValueValid == 0 {
			fail("token %q: empty but not freed", tok.name)
		}
		if tok.flags&tokValueValid == 0 && tok.value != "" {
			fail("token %q: stale value", tok.name)
		}
	})
	if ntok != t.toks.live || ngr != t.grs.live || nwt != t.wts.live || nq != t.qs.live || nwt != len(t.heap) {
		fail("counts: tokens %d/%d grants %d/%d waiters %d/%d/%d queues %d/%d", ntok, t.toks.live,
			ngr, t.grs.live, nwt, t.wts.live, len(t.heap), nq, t.qs.live)
	}
	for i := range t.heap {
		if i > 0 && t.heapLess(i, (i-1)/2) {
			fail("heap order at %d", i)
		}
	}
	if len(t.sessions) != t.sess.live {
		fail("sessions: %d indexed, %d live", len(t.sessions), t.sess.live)
	}
	ending := 0
	for id, si := range t.sessions {
		s := t.sess.at(si)
		if s.ending {
			ending++
		}
		if int(s.conv) != sessConv[si] {
			fail("session %d: conv=%d, %d conversions queued", id, s.conv, sessConv[si])
		}
		if s.id != id {
			fail("session %d: record says %d", id, s.id)
		}
		ng, nw := 0, 0
		prev := uint32(0)
		for gi := s.grants; gi != 0; gi = t.grs.at(gi).snext {
			if g := t.grs.at(gi); g.sess != si || g.sprev != prev {
				fail("session %d: grant list broken at %d", id, gi)
			}
			prev = gi
			ng++
		}
		prev = 0
		for wi := s.waiters; wi != 0; wi = t.wts.at(wi).snext {
			if w := t.wts.at(wi); w.sess != si || w.sprev != prev {
				fail("session %d: waiter list broken at %d", id, wi)
			}
			prev = wi
			nw++
		}
		if ng != sessGrants[si] || nw != sessWaiters[si] || int(s.n) != sessN[si] || ng+nw == 0 {
			fail("session %d: %d grants %d waiters n=%d; want %d %d n=%d (and not empty)", id, ng, nw, s.n,
				sessGrants[si], sessWaiters[si], sessN[si])
		}
	}
	if ending != t.ending {
		fail("%d sessions ending, counted %d", ending, t.ending)
	}
	if len(reqs) != len(t.byReq) {
		fail("byReq has %d entries, want %d", len(t.byReq), len(reqs))
	}
	for k, v := range reqs {
		if t.byReq[k] != v {
			fail("byReq[%v] = %#x, want %#x", k, t.byReq[k], v)
		}
	}
	if t.seq > MaxSeq || t.seq > 0 && Fence(t.epoch, t.seq) != t.maxFence {
		fail("seq %d, maxFence %#x", t.seq, t.maxFence)
	}
	if len(errs) > 0 {
		return fmt.Errorf("table check:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// convCycleIn returns a cycle of waits among the conversions in queue ws
// (in queue order), or "": the table answers such cycles StatusDeadlock
// instead of queueing the conversion that would close them.
func (t *Table) convCycleIn(ws []uint32) string {
	var cs []*waiter
	for _, wi := range ws {
		if w := t.wts.at(wi); w.grant != 0 {
			cs = append(cs, w)
		}
	}
	waits := func(i, j int) bool {
		a, b := cs[i], cs[j]
		return i != j && (conflict(t.grs.at(b.grant).mode, b.start, b.end, a.mode, a.start, a.end) ||
			j < i && conflict(b.mode, b.start, b.end, a.mode, a.start, a.end))
	}
	// Depth-first search for a back edge.
	color := make([]int, len(cs))
	var path []int
	var dfs func(i int) bool
	dfs = func(i int) bool {
		color[i] = 1
		path = append(path, i)
		for j := range cs {
			if waits(i, j) && (color[j] == 1 || color[j] == 0 && dfs(j)) {
				return true
			}
		}
		color[i] = 2
		path = path[:len(path)-1]
		return false
	}
	for i := range cs {
		if color[i] == 0 && dfs(i) {
			var reqs []string
			for _, k := range path {
				reqs = append(reqs, fmt.Sprintf("s=%d req=%d", t.sess.at(cs[k].sess).id, cs[k].req))
			}
			return strings.Join(reqs, " -> ")
		}
	}
	return ""
}

// ---- canonical state, comparable between Table and model ----

type gState struct {
	name       string
	sess       uint64
	fence      uint64
	mode       wire.Mode
	start, end uint64
	req        uint64
	async      bool
}

type wState struct {
	name       string
	sess, req  uint64
	mode       wire.Mode
	start, end uint64
	deadline   int64
	conv       uint64 // fence of the converted grant, 0 for an acquire
}

type state struct {
	grants  []gState
	waiters []wState // by token name, then queue order
	values  map[string]string
	seq     uint64
	grace   bool
}

func (t *Table) state() state {
	s := state{values: map[string]string{}, seq: t.seq, grace: t.grace}
	t.forTokens(func(ti uint32, tok *token) {
		for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
			g := t.grs.at(gi)
			s.grants = append(s.grants, gState{tok.name, t.sess.at(g.sess).id, g.fence, g.mode, g.start, g.end, g.req, g.flags&grantAsync != 0})
		}
		for _, wi := range t.queueOrder(tok) {
			w := t.wts.at(wi)
			var conv uint64
			if w.grant != 0 {
				conv = t.grs.at(w.grant).fence
			}
			s.waiters = append(s.waiters, wState{tok.name, t.sess.at(w.sess).id, w.req, w.mode, w.start, w.end, w.deadline, conv})
		}
		if tok.flags&tokValueValid != 0 {
			s.values[tok.name] = tok.value
		}
	})
	s.sort()
	return s
}

func (m *model) state() state {
	s := state{values: map[string]string{}, seq: m.seq, grace: m.grace}
	for _, g := range m.grants {
		s.grants = append(s.grants, gState{g.name, g.sess, g.fence, g.mode, g.start, g.end, g.req, g.async})
	}
	names := map[string]bool{}
	for _, w := range m.waiters {
		names[w.name] = true
	}
	for n := range names {
		for _, w := range m.queue(n) {
			var conv uint64
			if w.conv != nil {
				conv = w.conv.fence
			}
			s.waiters = append(s.waiters, wState{n, w.sess, w.req, w.mode, w.start, w.end, w.deadline, conv})
		}
	}
	for n, v := range m.values {
		s.values[n] = v
	}
	s.sort()
	return s
}

func (s *state) sort() {
	slices.SortFunc(s.grants, func(a, b gState) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		return cmpU64(a.fence, b.fence)
	})
	// Stable: keeps queue order within a token.
	slices.SortStableFunc(s.waiters, func(a, b wState) int { return strings.Compare(a.name, b.name) })
}

func (s state) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seq=%d grace=%v\n", s.seq, s.grace)
	for _, g := range s.grants {
		fmt.Fprintf(&b, "  grant %+v\n", g)
	}
	for _, w := range s.waiters {
		fmt.Fprintf(&b, "  wait %+v\n", w)
	}
	fmt.Fprintf(&b, "  values %v\n", s.values)
	return b.String()
}

func outputsString(outs []Output) []string {
	var ss []string
	for _, o := range outs {
		ss = append(ss, fmt.Sprintf("%+v", o))
	}
	return ss
}

// ---- the side-by-side driver ----

// pair runs a Table and the model on the same inputs and checks, after
// every step: the same outputs (as multisets), the same state, the Table's
// internal consistency and invariant 1, invariant 2 over every grant ever
// issued, and that every queued request ends exactly once.
type pair struct {
	tab      *Table
	mod      *model
	now      int64
	maxFence map[string]uint64 // per token: highest fence granted so far (invariant 2)
	pending  map[reqKey]bool   // queued requests without their final outcome yet
	steps    int
	log      []string // the inputs so far, for failure messages
}

func newPair(tab *Table, mod *model) *pair {
	return &pair{tab: tab, mod: mod, maxFence: map[string]uint64{}, pending: map[reqKey]bool{}}
}

func (p *pair) fail(f string, a ...any) error {
	tail := p.log
	if len(tail) > 40 {
		tail = tail[len(tail)-40:]
	}
	return fmt.Errorf("step %d: %s\nlast inputs:\n  %s", p.steps, fmt.Sprintf(f, a...), strings.Join(tail, "\n  "))
}

func (p *pair) step(in Input, now int64) error {
	p.steps++
	p.now = now
	p.log = append(p.log, fmt.Sprintf("now=%d %v s=%d req=%d target=%d name=%q %v [%d,%d) fence=%#x dl=%d try=%v setv=%v v=%q",
		now, in.Op, in.Session, in.Req, in.Target, in.Name, in.Mode, in.Start, in.End, in.Fence, in.Deadline, in.Try, in.SetValue, in.Value))
	got := p.tab.Step(in, now, nil)
	want := p.mod.step(in, now)
	return p.compare(&in, got, want)
}

func (p *pair) tick(now int64) error {
	p.steps++
	p.now = now
	p.log = append(p.log, fmt.Sprintf("now=%d tick", now))
	got := p.tab.Tick(now, nil)
	want := p.mod.tick(now)
	return p.compare(nil, got, want)
}

// endStep runs one step of ending session sess (Table.EndSession) with at
// most limit dropped, and checks that both sides agree on whether it is
// done.
func (p *pair) endStep(sess uint64, limit int, now int64) error {
	p.steps++
	p.now = now
	p.log = append(p.log, fmt.Sprintf("now=%d end-step s=%d max=%d", now, sess, limit))
	got, gdone := p.tab.EndSession(sess, limit, now, nil)
	want, wdone := p.mod.endStep(sess, limit, now)
	if gdone != wdone {
		return p.fail("end step of s=%d: table done=%v, model done=%v", sess, gdone, wdone)
	}
	if gdone != (p.tab.Footprint(sess) == 0) || gdone == p.tab.Ending(sess) {
		return p.fail("end step of s=%d: done=%v, footprint %d, ending %v", sess, gdone, p.tab.Footprint(sess), p.tab.Ending(sess))
	}
	return p.compare(&Input{Op: OpEndSession, Session: sess}, got, want)
}

func (p *pair) handoff(newEpoch uint32, dropQueued bool) error {
	p.steps++
	p.log = append(p.log, fmt.Sprintf("handoff epoch=%d dropqueued=%v", newEpoch, dropQueued))
	// A shard with a part-ended session cannot be exported; the shell
	// finishes the end first.
	ending := p.mod.endingSessions()
	if len(ending) > 0 {
		if _, err := p.tab.Export(); !errors.Is(err, ErrEnding) {
			return p.fail("export with a part-ended session: %v, want ErrEnding", err)
		}
	}
	for _, id := range ending {
		if err := p.endStep(id, -1, p.now); err != nil {
			return err
		}
	}
	snap, err := p.tab.Export()
	if err != nil {
		return p.fail("export: %v", err)
	}
	if dropQueued { // handoff protocol 1: the old owner does not move queued requests
		snap.Waiters = nil
	}
	tab, err := Import(snap, newEpoch, p.tab.cfg)
	if err != nil {
		return p.fail("import: %v", err)
	}
	p.tab = tab
	p.mod.handoff(newEpoch, dropQueued)
	if dropQueued {
		clear(p.pending)
	}
	return p.compare(nil, nil, nil)
}

func (p *pair) compare(in *Input, got, want []Output) error {
	g, w := outputsString(got), outputsString(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		return p.fail("outputs differ\ntable:\n  %s\nmodel:\n  %s\nmodel state:\n%v", strings.Join(g, "\n  "), strings.Join(w, "\n  "), p.mod.state())
	}
	if err := p.tab.check(); err != nil {
		return p.fail("%v", err)
	}
	ts, ms := p.tab.state(), p.mod.state()
	if ts.String() != ms.String() {
		return p.fail("state differs\ntable:\n%v\nmodel:\n%v", ts, ms)
	}
	// Invariant 2: every newly issued fence is above every fence the token
	// had before (reclaimed ones included).
	for _, o := range got {
		switch {
		case o.Kind == KindReply && o.Status == StatusQueued:
			p.pending[reqKey{o.Session, o.Req}] = true
		case o.Kind == KindAsync:
			k := reqKey{o.Session, o.Req}
			if !p.pending[k] {
				return p.fail("async outcome %+v for a request that is not queued", o)
			}
			delete(p.pending, k)
		}
		if o.Status != StatusOK || o.Kind == KindRevoke || o.Released {
			continue
		}
		grant := o.Kind == KindAsync
		if o.Kind == KindReply && in != nil {
			switch in.Op {
			case OpAcquire:
				grant = true
			case OpConvert:
				grant = o.Fence != in.Fence // an upgrade; a downgrade keeps its fence
			case OpReclaim:
				p.maxFence[o.Name] = max(p.maxFence[o.Name], o.Fence)
				if FenceEpoch(o.Fence) >= p.tab.epoch {
					return p.fail("reclaimed fence %#x from the current epoch", o.Fence)
				}
			}
		}
		if grant {
			if o.Fence <= p.maxFence[o.Name] {
				return p.fail("invariant 2: token %q granted fence %#x after %#x", o.Name, o.Fence, p.maxFence[o.Name])
			}
			p.maxFence[o.Name] = o.Fence
		}
	}
	if in != nil && in.Op == OpEndSession {
		// The session's waiters that went (all, or those of one step)
		// get no outcome.
		still := map[reqKey]bool{}
		for _, w := range ms.waiters {
			still[reqKey{w.sess, w.req}] = true
		}
		for k := range p.pending {
			if k.sess == in.Session && !still[k] {
				delete(p.pending, k)
			}
		}
	}
	// Invariant of a part-ended session: it gains nothing.
	for _, o := range got {
		if o.Status == StatusOK && o.Kind != KindRevoke && !o.Released && p.tab.Ending(o.Session) {
			return p.fail("part-ended session %d was granted %+v", o.Session, o)
		}
	}
	if len(p.pending) != len(ms.waiters) {
		return p.fail("%d requests queued without outcome, %d waiters", len(p.pending), len(ms.waiters))
	}
	return nil
}

// ---- input generation (shared by the randomized test and the fuzzer) ----

// source yields choices: from math/rand in the randomized test, from the
// fuzzer's bytes in FuzzStep.
type source interface {
	intn(n int) int
}

var (
	genNames  = [][]byte{[]byte("a"), []byte("b"), []byte("c")}
	genRanges = [][2]uint64{{WholeStart, WholeEnd}, {0, 10}, {5, 15}, {10, 20}, {100, 200}, {0, 4096}}
)

// gen drives a pair with one random input (or a tick, or a handoff).
type gen struct {
	src  source
	reqs map[uint64]uint64 // per session: last request id
	now  int64
}

func (g *gen) next(p *pair) error {
	src := g.src
	g.now += int64(src.intn(4))
	sess := uint64(1 + src.intn(4))
	name := genNames[src.intn(len(genNames))]
	mode := wire.Mode(src.intn(6))
	if src.intn(50) == 0 {
		mode = wire.Mode(6 + src.intn(250)) // invalid
	}
	r := genRanges[src.intn(len(genRanges))]
	in := Input{Session: sess, Name: name, Mode: mode, Start: r[0], End: r[1],
		Deadline: g.now + 1 + int64(src.intn(30))}
	if src.intn(30) == 0 {
		in.Deadline = g.now // due already
	}
	// pick a grant of the model to act on (or none: a stale or forged fence)
	pick := func() {
		gs := p.mod.grants
		if i := src.intn(len(gs) + 1); i < len(gs) {
			gr := gs[i]
			in.Session, in.Name, in.Fence = gr.sess, []byte(gr.name), gr.fence
			if src.intn(20) == 0 {
				in.Session = sess // someone else's grant
			}
		} else {
			in.Fence = Fence(p.tab.epoch, uint64(src.intn(30)))
		}
	}
	setValue := func() {
		if src.intn(3) == 0 {
			in.SetValue = true
			in.Value = []byte(fmt.Sprintf("v%d", src.intn(100)))
			if src.intn(40) == 0 {
				in.Value = make([]byte, MaxValueLen+1)
			}
		}
	}
	op := src.intn(100)
	if p.tab.grace && src.intn(2) == 0 {
		op = 90 // mostly reclaims while recovering
	}
	switch {
	case op < 32:
		in.Op = OpAcquire
		in.Try = src.intn(4) == 0
		if src.intn(40) == 0 {
			in.Start, in.End = 7, 7 // empty range: bad
		}
		if src.intn(60) == 0 {
			in.Name = nil // bad
		}
	case op < 48:
		in.Op = OpConvert
		in.Try = src.intn(4) == 0
		pick()
		setValue()
	case op < 66:
		in.Op = OpRelease
		pick()
		setValue()
	case op < 74:
		in.Op = OpCancel
		if src.intn(4) == 0 {
			in.Op = OpDeadlock // a detector's victim: mostly one that waits
		}
		in.Target = g.reqs[sess] - uint64(src.intn(4))
		if ws := p.mod.waiters; len(ws) > 0 && src.intn(2) == 0 {
			w := ws[src.intn(len(ws))]
			in.Session, in.Target = w.sess, w.req
		}
	case op < 76:
		in.Op = OpEndSession
	case op < 78:
		// A step of ending a session in steps; mostly one already
		// part-ended, so that ends finish and their sessions come back.
		if ids := p.mod.endingSessions(); len(ids) > 0 && src.intn(3) != 0 {
			sess = ids[src.intn(len(ids))]
		}
		return p.endStep(sess, src.intn(4), g.now) // 0: only marks it
	case op < 90:
		g.now += int64(src.intn(20))
		return p.tick(g.now)
	case op < 99:
		in.Op = OpReclaim
		in.Fence = Fence(uint32(src.intn(int(p.tab.epoch)+1)), uint64(src.intn(12)))
		if gs := p.mod.grants; len(gs) > 0 && src.intn(8) == 0 {
			gr := gs[src.intn(len(gs))] // the same reclaim again, or a clash with one
			in.Session, in.Name, in.Fence, in.Mode, in.Start, in.End = gr.sess, []byte(gr.name), gr.fence, gr.mode, gr.start, gr.end
			if src.intn(2) == 0 {
				in.Session = sess
			}
		}
	case op == 99 && src.intn(4) == 0:
		in.Op = Op(src.intn(2) * 77) // unknown operation
	default:
		if p.tab.grace {
			return p.tick(g.now)
		}
		return p.handoff(p.tab.epoch+1+uint32(src.intn(3)), src.intn(2) == 0)
	}
	if src.intn(50) != 0 {
		g.reqs[in.Session]++ // request ids grow per session (mostly)
	}
	in.Req = g.reqs[in.Session]
	return p.step(in, g.now)
}
