package table

import (
	"maps"
	"math"
	"slices"

	"github.com/tokend/tokend/wire"
)

// model is a deliberately naive implementation of the table's rules: flat
// lists and quadratic scans, no indexes. The randomized test and the fuzz
// target drive it and the Table with the same inputs and require the same
// outputs and the same state after every step. Where the rules leave an
// order open (which token a session end wakes first, which of two waiters
// with the same deadline times out first) the model follows the order the
// Table documents, because that order decides which fences go where.
type model struct {
	cfg        Config
	epoch      uint32
	seq        uint64
	now        int64
	grace      bool
	graceEnd   int64
	valuesLost bool

	grants  []*mGrant  // in creation order
	waiters []*mWaiter // in arrival order
	values  map[string]string
	sent    map[pairKey]bool // revokes emitted
	ending  map[uint64]bool  // sessions part-ended by endSession with a limit
	serial  int
	ids     int
	arrival int
}

type mGrant struct {
	id, serial, version int
	sess                uint64
	name                string
	mode                wire.Mode
	start, end          uint64
	fence, req          uint64
	async, converting   bool
}

type mWaiter struct {
	arrival    int
	sess, req  uint64
	name       string
	mode       wire.Mode
	start, end uint64
	deadline   int64
	conv       *mGrant
}

type pairKey struct{ grant, version, waiter int }

func newModel(epoch uint32, cfg Config) *model {
	return &model{cfg: cfg, epoch: epoch, now: math.MinInt64, values: map[string]string{}, sent: map[pairKey]bool{},
		ending: map[uint64]bool{}}
}

func newRecoveringModel(epoch uint32, graceEnd int64, cfg Config) *model {
	m := newModel(epoch, cfg)
	m.grace, m.graceEnd, m.valuesLost = true, graceEnd, true
	return m
}

func (m *model) step(in Input, now int64) []Output {
	if in.Op == OpEndSession && m.has(in.Session) {
		m.ending[in.Session] = true // before the clock moves
	}
	out := m.advance(now, nil)
	out = m.revokes(out)
	switch in.Op {
	case OpAcquire, OpConvert, OpRelease, OpCancel, OpReclaim:
		if m.isEnding(in.Session) {
			return m.revokes(reply(out, &in, StatusSessionExpired))
		}
	}
	switch in.Op {
	case OpAcquire:
		out = m.acquire(in, out)
	case OpConvert:
		out = m.convert(in, out)
	case OpRelease:
		out = m.release(in, out)
	case OpCancel:
		out = m.cancel(in, out)
	case OpReclaim:
		out = m.reclaim(in, out)
	case OpEndSession:
		out, _ = m.endSession(in.Session, -1, out)
	case OpDeadlock:
		out = m.deadlock(in.Session, in.Target, out)
	default:
		out = reply(out, &in, StatusBadRequest)
	}
	return m.revokes(out)
}

func (m *model) tick(now int64) []Output {
	return m.revokes(m.advance(now, nil))
}

// endStep mirrors Table.EndSession.
func (m *model) endStep(sess uint64, limit int, now int64) ([]Output, bool) {
	if m.has(sess) {
		m.ending[sess] = true // before the clock moves
	}
	out := m.advance(now, nil)
	out = m.revokes(out)
	out, done := m.endSession(sess, limit, out)
	return m.revokes(out), done
}

// has reports whether the session holds or waits for anything.
func (m *model) has(sess uint64) bool {
	for _, g := range m.grants {
		if g.sess == sess {
			return true
		}
	}
	for _, w := range m.waiters {
		if w.sess == sess {
			return true
		}
	}
	return false
}

// endingSessions returns the part-ended sessions, sorted.
func (m *model) endingSessions() []uint64 {
	var ids []uint64
	for _, id := range slices.Sorted(maps.Keys(m.ending)) {
		if m.isEnding(id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// isEnding: a session is part-ended from its first limited end step until
// it has nothing left (however it lost the rest: more steps, or its last
// waiters timing out); then it is forgotten, like any session with nothing
// here.
func (m *model) isEnding(sess uint64) bool {
	if m.ending[sess] && !m.has(sess) {
		delete(m.ending, sess)
	}
	return m.ending[sess]
}

func (m *model) advance(now int64, out []Output) []Output {
	if now > m.now {
		m.now = now
	}
	if m.grace && m.now >= m.graceEnd {
		m.grace = false
	}
	var exp []*mWaiter
	for _, w := range m.waiters {
		if w.deadline <= m.now {
			exp = append(exp, w)
		}
	}
	slices.SortFunc(exp, func(a, b *mWaiter) int {
		if a.deadline != b.deadline {
			return cmpI64(a.deadline, b.deadline)
		}
		return a.arrival - b.arrival
	})
	var touched []string
	for _, w := range exp {
		out = append(out, Output{Kind: KindAsync, Status: StatusTimeout, Session: w.sess, Req: w.req, Name: w.name})
		m.removeWaiter(w)
		if !slices.Contains(touched, w.name) {
			touched = append(touched, w.name)
		}
	}
	for _, n := range touched {
		out = m.wake(n, out)
	}
	return out
}

func cmpI64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// queue returns the waiters of a token in queue order: conversions, then
// acquires, each by arrival.
func (m *model) queue(name string) []*mWaiter {
	var q []*mWaiter
	for _, conv := range []bool{true, false} {
		for _, w := range m.waiters {
			if w.name == name && (w.conv != nil) == conv {
				q = append(q, w)
			}
		}
	}
	return q
}

func (m *model) tokenGrants(name string) []*mGrant {
	var gs []*mGrant
	for _, g := range m.grants {
		if g.name == name {
			gs = append(gs, g)
		}
	}
	return gs
}

func conflict(m1 wire.Mode, s1, e1 uint64, m2 wire.Mode, s2, e2 uint64) bool {
	return s1 < e2 && s2 < e1 && !wire.Compatible(m1, m2)
}

// blocked: w conflicts with a grant (other than the one it converts) or with
// a waiter ahead of it that counts (conversions for a conversion, everyone
// for an acquire).
func (m *model) blocked(name string, self *mGrant, mode wire.Mode, start, end uint64, ahead []*mWaiter, conv bool) bool {
	for _, g := range m.tokenGrants(name) {
		if g != self && conflict(g.mode, g.start, g.end, mode, start, end) {
			return true
		}
	}
	for _, e := range ahead {
		if (!conv || e.conv != nil) && conflict(e.mode, e.start, e.end, mode, start, end) {
			return true
		}
	}
	return false
}

func (m *model) nextFence() (uint64, bool) {
	if m.seq >= MaxSeq {
		return 0, false
	}
	m.seq++
	return Fence(m.epoch, m.seq), true
}

func (m *model) wake(name string, out []Output) []Output {
	var still []*mWaiter // waiters passed over, in order
	for _, w := range m.queue(name) {
		if m.isEnding(w.sess) || m.blocked(name, w.conv, w.mode, w.start, w.end, still, w.conv != nil) {
			still = append(still, w)
			continue
		}
		fence, ok := m.nextFence()
		m.removeWaiter(w)
		if !ok {
			out = append(out, Output{Kind: KindAsync, Status: StatusExhausted, Session: w.sess, Req: w.req, Name: name})
			continue
		}
		g := w.conv
		if g != nil {
			g.mode, g.fence, g.req, g.async = w.mode, fence, w.req, true
			g.version++
		} else {
			g = m.newGrant(w.sess, name, w.mode, w.start, w.end, fence, w.req)
			g.async = true
		}
		out = append(out, m.grantOut(KindAsync, g))
	}
	return out
}

// revokes emits a revoke for every (grant state, waiter) conflict not
// revoked before.
func (m *model) revokes(out []Output) []Output {
	for _, w := range m.waiters {
		for _, g := range m.tokenGrants(w.name) {
			if g == w.conv || !conflict(g.mode, g.start, g.end, w.mode, w.start, w.end) {
				continue
			}
			k := pairKey{g.id, g.version, w.arrival}
			if !m.sent[k] {
				m.sent[k] = true
				out = append(out, Output{Kind: KindRevoke, Session: g.sess, Fence: g.fence,
					Mode: naiveWanted(g.mode, w.mode), Start: w.start, End: w.end, Name: w.name})
			}
		}
	}
	return out
}

// naiveWanted: the modes covered by held and compatible with want, the one
// that covers all the others.
func naiveWanted(held, want wire.Mode) wire.Mode {
	var cands []wire.Mode
	for c := wire.NL; c <= wire.EX; c++ {
		if wire.Covers(held, c) && wire.Compatible(c, want) {
			cands = append(cands, c)
		}
	}
	for _, c := range cands {
		top := true
		for _, d := range cands {
			if !wire.Covers(c, d) {
				top = false
			}
		}
		if top {
			return c
		}
	}
	panic("no strongest mode")
}

func (m *model) newGrant(sess uint64, name string, mode wire.Mode, start, end, fence, req uint64) *mGrant {
	m.ids++
	m.serial++
	g := &mGrant{id: m.ids, serial: m.serial, sess: sess, name: name, mode: mode, start: start, end: end, fence: fence, req: req}
	m.grants = append(m.grants, g)
	return g
}

func (m *model) grantOut(kind Kind, g *mGrant) Output {
	o := Output{Kind: kind, Status: StatusOK, Session: g.sess, Req: g.req, Fence: g.fence, Mode: g.mode,
		Start: g.start, End: g.end, Name: g.name}
	if v, ok := m.values[g.name]; ok {
		o.Value, o.VFlags = v, ValueValid
	} else if m.valuesLost {
		o.VFlags = ValueLost
	}
	return o
}

func (m *model) removeWaiter(w *mWaiter) {
	m.waiters = slices.DeleteFunc(m.waiters, func(x *mWaiter) bool { return x == w })
	if w.conv != nil {
		w.conv.converting = false
	}
}

func (m *model) dropGrant(g *mGrant, out []Output) []Output {
	for _, w := range m.waiters {
		if w.conv == g {
			out = append(out, Output{Kind: KindAsync, Status: StatusCanceled, Session: w.sess, Req: w.req, Name: w.name})
			m.removeWaiter(w)
			break
		}
	}
	m.grants = slices.DeleteFunc(m.grants, func(x *mGrant) bool { return x == g })
	return out
}

func (m *model) sessCount(sess uint64) int {
	n := 0
	for _, g := range m.grants {
		if g.sess == sess {
			n++
		}
	}
	for _, w := range m.waiters {
		if w.sess == sess && w.conv == nil {
			n++
		}
	}
	return n
}

func (m *model) findGrant(name string, sess, fence uint64) *mGrant {
	for _, g := range m.grants {
		if g.name == name && g.fence == fence && g.sess == sess {
			return g
		}
	}
	return nil
}

// canQueue mirrors the checks before a request may wait.
func (m *model) canQueue(in Input) Status {
	if in.Deadline <= m.now {
		return StatusTimeout
	}
	if lim := m.cfg.MaxWaitersPerToken; lim > 0 && len(m.queue(string(in.Name))) >= lim {
		return StatusLimit
	}
	for _, w := range m.waiters {
		if w.sess == in.Session && w.req == in.Req {
			return StatusBadRequest
		}
	}
	for _, g := range m.grants {
		if g.async && g.sess == in.Session && g.req == in.Req {
			return StatusBadRequest
		}
	}
	return StatusOK
}

func (m *model) enqueue(in Input, mode wire.Mode, start, end uint64, conv *mGrant, out []Output) []Output {
	m.arrival++
	w := &mWaiter{arrival: m.arrival, sess: in.Session, req: in.Req, name: string(in.Name), mode: mode,
		start: start, end: end, deadline: in.Deadline, conv: conv}
	if conv != nil {
		conv.converting = true
	}
	m.waiters = append(m.waiters, w)
	pos := uint32(slices.Index(m.queue(w.name), w) + 1)
	return append(out, Output{Kind: KindReply, Status: StatusQueued, Session: in.Session, Req: in.Req,
		Position: pos, Mode: mode, Start: start, End: end, Name: w.name})
}

func (m *model) acquire(in Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || in.Start >= in.End || in.SetValue {
		return reply(out, &in, StatusBadRequest)
	}
	if m.grace {
		return reply(out, &in, StatusGrace)
	}
	if lim := m.cfg.MaxGrantsPerSession; lim > 0 && m.sessCount(in.Session) >= lim {
		return reply(out, &in, StatusLimit)
	}
	name := string(in.Name)
	if !m.blocked(name, nil, in.Mode, in.Start, in.End, m.queue(name), false) {
		fence, ok := m.nextFence()
		if !ok {
			return reply(out, &in, StatusExhausted)
		}
		g := m.newGrant(in.Session, name, in.Mode, in.Start, in.End, fence, in.Req)
		return append(out, m.grantOut(KindReply, g))
	}
	if in.Try {
		return reply(out, &in, StatusConflict)
	}
	if st := m.canQueue(in); st != StatusOK {
		return reply(out, &in, st)
	}
	return m.enqueue(in, in.Mode, in.Start, in.End, nil, out)
}

func (m *model) convert(in Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || len(in.Value) > MaxValueLen {
		return reply(out, &in, StatusBadRequest)
	}
	if m.grace {
		return reply(out, &in, StatusGrace)
	}
	name := string(in.Name)
	g := m.findGrant(name, in.Session, in.Fence)
	if g == nil {
		return reply(out, &in, StatusNotHeld)
	}
	down := wire.Covers(g.mode, in.Mode)
	if g.converting || in.SetValue && !(down && g.mode.Writes()) {
		return reply(out, &in, StatusBadRequest)
	}
	if down {
		if in.SetValue {
			m.values[name] = string(in.Value)
		}
		g.mode, g.req, g.async = in.Mode, in.Req, false
		g.version++
		out = append(out, m.grantOut(KindReply, g))
		return m.wake(name, out)
	}
	if !m.blocked(name, g, in.Mode, g.start, g.end, m.queue(name), true) {
		fence, ok := m.nextFence()
		if !ok {
			return reply(out, &in, StatusExhausted)
		}
		g.mode, g.fence, g.req, g.async = in.Mode, fence, in.Req, false
		g.version++
		return append(out, m.grantOut(KindReply, g))
	}
	if in.Try {
		return reply(out, &in, StatusConflict)
	}
	if st := m.canQueue(in); st != StatusOK {
		return reply(out, &in, st)
	}
	if m.convDeadlock(name, g, in.Mode) {
		return reply(out, &in, StatusDeadlock)
	}
	return m.enqueue(in, in.Mode, g.start, g.end, g, out)
}

func (m *model) release(in Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || len(in.Value) > MaxValueLen {
		return reply(out, &in, StatusBadRequest)
	}
	if m.grace {
		return reply(out, &in, StatusGrace)
	}
	name := string(in.Name)
	g := m.findGrant(name, in.Session, in.Fence)
	if g == nil {
		return reply(out, &in, StatusNotHeld)
	}
	if in.SetValue {
		if !g.mode.Writes() {
			return reply(out, &in, StatusBadRequest)
		}
		m.values[name] = string(in.Value)
	}
	out = append(out, Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req, Fence: g.fence, Name: name})
	out = m.dropGrant(g, out)
	return m.wake(name, out)
}

func (m *model) cancel(in Input, out []Output) []Output {
	if in.Session == 0 {
		return reply(out, &in, StatusBadRequest)
	}
	if m.grace {
		return reply(out, &in, StatusGrace)
	}
	for _, w := range m.waiters {
		if w.sess == in.Session && w.req == in.Target {
			out = append(out,
				Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req, Name: w.name},
				Output{Kind: KindAsync, Status: StatusCanceled, Session: in.Session, Req: w.req, Name: w.name})
			m.removeWaiter(w)
			return m.wake(w.name, out)
		}
	}
	for _, g := range m.grants {
		if g.async && g.sess == in.Session && g.req == in.Target {
			out = append(out, Output{Kind: KindReply, Status: StatusOK, Session: in.Session, Req: in.Req,
				Released: true, Fence: g.fence, Name: g.name})
			out = m.dropGrant(g, out)
			return m.wake(g.name, out)
		}
	}
	return reply(out, &in, StatusNotHeld)
}

func (m *model) reclaim(in Input, out []Output) []Output {
	if in.Session == 0 || !validName(in.Name) || !in.Mode.Valid() || in.Start >= in.End || in.SetValue {
		return reply(out, &in, StatusBadRequest)
	}
	name := string(in.Name)
	// The same grant, exactly: confirmed in or out of grace (planned handoff).
	for _, g := range m.tokenGrants(name) {
		if g.fence == in.Fence && FenceEpoch(in.Fence) < m.epoch && g.sess == in.Session && g.mode == in.Mode && g.start == in.Start && g.end == in.End {
			o := m.grantOut(KindReply, g)
			o.Req = in.Req
			return append(out, o)
		}
	}
	if !m.grace || FenceSeq(in.Fence) == 0 || FenceEpoch(in.Fence) == 0 || FenceEpoch(in.Fence) >= m.epoch {
		return reply(out, &in, StatusReclaimRefused)
	}
	for _, g := range m.tokenGrants(name) {
		if g.fence == in.Fence {
			if g.sess == in.Session && g.mode == in.Mode && g.start == in.Start && g.end == in.End {
				o := m.grantOut(KindReply, g)
				o.Req = in.Req
				return append(out, o)
			}
			return reply(out, &in, StatusReclaimRefused)
		}
	}
	for _, g := range m.tokenGrants(name) {
		if conflict(g.mode, g.start, g.end, in.Mode, in.Start, in.End) {
			return reply(out, &in, StatusReclaimRefused)
		}
	}
	if lim := m.cfg.MaxGrantsPerSession; lim > 0 && m.sessCount(in.Session) >= lim {
		return reply(out, &in, StatusLimit)
	}
	g := m.newGrant(in.Session, name, in.Mode, in.Start, in.End, in.Fence, in.Req)
	return append(out, m.grantOut(KindReply, g))
}

// endSession: the session's waiters (newest first), then its grants (newest
// first) go, at most limit of them (< 0: all); the tokens they were on
// are woken in that order. Until nothing is left the session is ending.
func (m *model) endSession(sess uint64, limit int, out []Output) ([]Output, bool) {
	var touched []string
	touch := func(n string) {
		if !slices.Contains(touched, n) {
			touched = append(touched, n)
		}
	}
	dropped := 0
	room := func() bool { return limit < 0 || dropped < limit }
	for i := len(m.waiters) - 1; i >= 0 && room(); i-- {
		if w := m.waiters[i]; w.sess == sess {
			touch(w.name)
			m.removeWaiter(w)
			dropped++
		}
	}
	gs := slices.Clone(m.grants)
	slices.SortFunc(gs, func(a, b *mGrant) int { return b.serial - a.serial })
	for _, g := range gs {
		if g.sess == sess && room() {
			touch(g.name)
			out = m.dropGrant(g, out)
			dropped++
		}
	}
	done := !m.has(sess)
	if !done {
		m.ending[sess] = true
	} else {
		delete(m.ending, sess)
	}
	for _, n := range touched {
		out = m.wake(n, out)
	}
	return out, done
}

// handoff mirrors Export + Import: waiters stay queued in arrival order
// (dropQueued: an old owner that does not move them, and they are dropped
// silently), the epoch moves on, and grants are re-created token by token
// (names sorted), by fence, which is the order a session's grant list then
// has.
func (m *model) handoff(newEpoch uint32, dropQueued bool) {
	if dropQueued {
		m.waiters = nil
		for _, g := range m.grants {
			g.converting = false
		}
	}
	slices.SortFunc(m.grants, func(a, b *mGrant) int {
		if a.name != b.name {
			if a.name < b.name {
				return -1
			}
			return 1
		}
		return cmpU64(a.fence, b.fence)
	})
	for _, g := range m.grants {
		m.serial++
		g.serial = m.serial
	}
	m.epoch, m.seq = newEpoch, 0
}

// convWaits reports whether conversion a waits for conversion b (b ahead of
// a when bAhead): b's grant conflicts with a's new mode, or b is ahead of a
// with a conflicting mode.
func convWaits(a, b *mWaiter, bAhead bool) bool {
	return conflict(b.conv.mode, b.start, b.end, a.mode, a.start, a.end) ||
		bAhead && conflict(b.mode, b.start, b.end, a.mode, a.start, a.end)
}

// convDeadlock: would a conversion of g to mode, queued last, close a cycle
// of waits among the token's conversions? Naively: the transitive closure
// of the wait relation over all of them, then look at the diagonal.
func (m *model) convDeadlock(name string, g *mGrant, mode wire.Mode) bool {
	var cs []*mWaiter
	for _, w := range m.queue(name) {
		if w.conv != nil {
			cs = append(cs, w)
		}
	}
	cs = append(cs, &mWaiter{name: name, mode: mode, start: g.start, end: g.end, conv: g})
	n := len(cs)
	reach := make([][]bool, n)
	for i := range reach {
		reach[i] = make([]bool, n)
		for j := range reach[i] {
			reach[i][j] = i != j && convWaits(cs[i], cs[j], j < i)
		}
	}
	for k := range n {
		for i := range n {
			for j := range n {
				reach[i][j] = reach[i][j] || reach[i][k] && reach[k][j]
			}
		}
	}
	return reach[n-1][n-1]
}

// deadlock ends the queued request (sess, req) with StatusDeadlock, if it
// still waits.
func (m *model) deadlock(sess, req uint64, out []Output) []Output {
	for _, w := range m.waiters {
		if w.sess == sess && w.req == req {
			out = append(out, Output{Kind: KindAsync, Status: StatusDeadlock, Session: sess, Req: req, Name: w.name})
			m.removeWaiter(w)
			return m.wake(w.name, out)
		}
	}
	return out
}
