package clientlib

// A scripted fake of tokend workers, for testing the client without the real
// worker: just enough server behaviour (sessions, the paginated map,
// acquire/queue/conflict, release, convert, cancel, reclaim, keepalive,
// revokes with retransmission, NOT_OWNER redirects) over faultnet. It is
// deliberately simple (no etcd, no leases of its own, whole-token FIFO) and
// records what it sees so that tests can assert on the client's datagrams.
// TEST ONLY: it is no reference for the worker.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

type fakeConfig struct {
	workers     int
	shardCount  uint32
	sessionTTL  time.Duration
	workerTTL   time.Duration
	validity    time.Duration // validity_ms the workers report
	grace       time.Duration
	runsPerPage int
	realUDP     bool // real loopback sockets instead of faultnet (clients open their own)
	noRevokeRTX bool // send each REVOKE once, never retransmit it
}

type fakeCluster struct {
	t    testing.TB
	net  *faultnet.Network
	cfg  fakeConfig
	wg   sync.WaitGroup
	done chan struct{}

	mu            sync.Mutex // guards everything below and the state of every fakeWorker
	mapVersion    uint64
	owner         []int // shard -> worker index, -1 = none
	epoch         []uint32
	workers       []*fakeWorker
	sessions      map[uint64]*fakeSession
	opens         map[string]uint64 // "addr/nonce" -> session
	nextSession   uint64
	applied       map[fakeReq]int // how often each (session, request id) was applied
	bodies        map[fakeReq]string
	seen          []fakeSeen
	cancels       []uint64
	releases      []uint64 // fences named in RELEASE requests that were applied
	notOwner      int      // NOT_OWNER/STALE_EPOCH answers sent
	mapRequests   int
	refuseReclaim bool
	hintless      bool     // NOT_OWNER without an owner hint
	problems      []string // protocol violations by the client
}

type fakeReq struct{ sess, req uint64 }

type fakeSeen struct {
	typ            wire.Type
	sess, req, ack uint64
	worker         int
}

type fakeSession struct {
	id   uint64
	addr net.Addr
	rev  uint64 // REVOKE sequence
}

type fakeWorker struct {
	fc      *fakeCluster
	idx     int
	conn    net.PacketConn
	addr    string
	silent  bool
	noVouch bool                 // KEEPALIVE answered with validity 0 (its lease is unsure)
	grace   map[uint32]time.Time // shard -> end of its grace period
	seq     map[uint32]uint64
	tokens  map[string]*fakeToken
	cache   map[fakeReq]*fakeCached
	acks    map[uint64]uint64 // session -> highest ack
	revs    map[fakeReq]*fakeRevoke
	vouch   map[uint64]time.Time // session -> last reply that vouched for grants
	out     []byte
}

type fakeToken struct {
	grants []*fakeGrant
	queue  []*fakeWaiter
	value  []byte
	valid  bool
}

type fakeGrant struct {
	sess, fence uint64
	mode        wire.Mode
	start, end  uint64
	req         uint64
	async       bool
	revoked     bool
}

type fakeWaiter struct {
	h          wire.Header
	from       net.Addr
	mode       wire.Mode
	start, end uint64
	name       string
	convert    *fakeGrant // a queued upgrade of this grant
}

type fakeCached struct {
	reply  []byte
	waiter *fakeWaiter
}

type fakeRevoke struct {
	to    net.Addr
	dgram []byte
	fence uint64
	name  string
}

func newFakeCluster(t testing.TB, seed uint64, cfg fakeConfig) *fakeCluster {
	t.Helper()
	if cfg.workers == 0 {
		cfg.workers = 1
	}
	if cfg.shardCount == 0 {
		cfg.shardCount = 16
	}
	if cfg.sessionTTL == 0 {
		cfg.sessionTTL = 3 * time.Second
	}
	if cfg.workerTTL == 0 {
		cfg.workerTTL = 2 * time.Second
	}
	if cfg.validity == 0 {
		cfg.validity = cfg.workerTTL - 50*time.Millisecond
	}
	if cfg.grace == 0 {
		cfg.grace = time.Second
	}
	if cfg.runsPerPage == 0 {
		cfg.runsPerPage = 50
	}
	fc := &fakeCluster{t: t, net: faultnet.New(seed), cfg: cfg, mapVersion: 1, done: make(chan struct{}),
		owner: make([]int, cfg.shardCount), epoch: make([]uint32, cfg.shardCount),
		sessions: map[uint64]*fakeSession{}, opens: map[string]uint64{}, nextSession: 0x1000,
		applied: map[fakeReq]int{}, bodies: map[fakeReq]string{}}
	for s := range fc.epoch {
		fc.epoch[s] = 1
	}
	for i := range cfg.workers {
		var conn net.PacketConn
		var err error
		if cfg.realUDP {
			conn, err = net.ListenPacket("udp", "127.0.0.1:0")
		} else {
			conn, err = fc.net.Listen(fmt.Sprintf("127.0.0.1:%d", 7701+i))
		}
		if err != nil {
			t.Fatal(err)
		}
		addr := conn.LocalAddr().String()
		w := &fakeWorker{fc: fc, idx: i, conn: conn, addr: addr, grace: map[uint32]time.Time{},
			seq: map[uint32]uint64{}, tokens: map[string]*fakeToken{}, cache: map[fakeReq]*fakeCached{},
			acks: map[uint64]uint64{}, revs: map[fakeReq]*fakeRevoke{}, vouch: map[uint64]time.Time{}}
		fc.workers = append(fc.workers, w)
		fc.wg.Add(2)
		go w.serve()
		go w.retransmitRevokes()
	}
	t.Cleanup(fc.close)
	return fc
}

func (fc *fakeCluster) close() {
	close(fc.done)
	for _, w := range fc.workers {
		_ = w.conn.Close()
	}
	fc.wg.Wait()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, p := range fc.problems {
		fc.t.Errorf("client protocol violation: %s", p)
	}
}

// dial opens a client on a fresh faultnet address with the first worker as seed.
func (fc *fakeCluster) dial(t testing.TB, cfg Config) *Client {
	t.Helper()
	if !fc.cfg.realUDP {
		conn, err := fc.net.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		cfg.PacketConn = conn
	}
	if cfg.Seeds == nil {
		cfg.Seeds = []string{fc.workers[0].addr}
	}
	if cfg.RTOMax == 0 {
		cfg.RTOMax = 200 * time.Millisecond
	}
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = testLogger(t) // go test -v shows the client's debug log
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// setOwner delegates shard to worker w at epoch (bumping the map version);
// with grace, the new owner starts it in a grace period with no grants.
func (fc *fakeCluster) setOwner(shard uint32, w int, epoch uint32, grace bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.owner[shard], fc.epoch[shard] = w, epoch
	fc.mapVersion++
	if w >= 0 && grace {
		fc.workers[w].grace[shard] = time.Now().Add(fc.cfg.grace)
	}
}

func (fc *fakeCluster) noHints(on bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.hintless = on
}

func (fc *fakeCluster) setNoVouch(w int, on bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.workers[w].noVouch = on
}

func (fc *fakeCluster) setSilent(w int, silent bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.workers[w].silent = silent
}

// expireSession drops a session everywhere, as etcd expiry would.
func (fc *fakeCluster) expireSession(id uint64) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.dropSessionLocked(id)
}

func (fc *fakeCluster) dropSessionLocked(id uint64) {
	delete(fc.sessions, id)
	for _, w := range fc.workers {
		for name, tok := range w.tokens {
			tok.grants = slices.DeleteFunc(tok.grants, func(g *fakeGrant) bool { return g.sess == id })
			tok.queue = slices.DeleteFunc(tok.queue, func(q *fakeWaiter) bool { return q.h.Session == id })
			w.wakeLocked(name)
		}
		for k := range w.revs {
			if k.sess == id {
				delete(w.revs, k)
			}
		}
	}
}

func (fc *fakeCluster) grants(w int, name string) []fakeGrant {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	var gs []fakeGrant
	if tok := fc.workers[w].tokens[name]; tok != nil {
		for _, g := range tok.grants {
			gs = append(gs, *g)
		}
	}
	return gs
}

func (fc *fakeCluster) waiters(w int, name string) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if tok := fc.workers[w].tokens[name]; tok != nil {
		return len(tok.queue)
	}
	return 0
}

func (fc *fakeCluster) addr(w int) string { return fc.workers[w].addr }

func (w *fakeWorker) serve() {
	defer w.fc.wg.Done()
	buf := make([]byte, wire.MaxDatagram+1)
	for {
		n, from, err := w.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		w.fc.mu.Lock()
		if !w.silent {
			w.handle(buf[:n], from)
		}
		w.fc.mu.Unlock()
	}
}

func (w *fakeWorker) retransmitRevokes() {
	defer w.fc.wg.Done()
	for {
		select {
		case <-w.fc.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
		w.fc.mu.Lock()
		if !w.silent && !w.fc.cfg.noRevokeRTX {
			for _, r := range w.revs {
				w.sendLocked(r.dgram, r.to)
			}
		}
		w.fc.mu.Unlock()
	}
}

func (w *fakeWorker) sendLocked(b []byte, to net.Addr) { _, _ = w.conn.WriteTo(b, to) }

func (w *fakeWorker) problem(format string, args ...any) {
	w.fc.problems = append(w.fc.problems, fmt.Sprintf(format, args...))
}

// reply encodes and sends body as the answer to h.
func (w *fakeWorker) reply(h wire.Header, st wire.Status, body encoder, to net.Addr) []byte {
	rh := h.Reply()
	rh.Status = st
	rh.MapVersion = w.fc.mapVersion
	b, err := body.Append(nil, rh)
	if err != nil {
		w.problem("fake cannot encode %v %v: %v", rh.Type, st, err)
		return nil
	}
	w.sendLocked(b, to)
	return b
}

func (w *fakeWorker) errReply(h wire.Header, st wire.Status, to net.Addr) []byte {
	return w.reply(h, st, wire.ErrorBody{Message: []byte(st.Text())}, to)
}

func (w *fakeWorker) handle(b []byte, from net.Addr) {
	fc := w.fc
	h, err := wire.ParseHeader(b)
	if err != nil {
		w.problem("undecodable datagram: %v", err)
		return
	}
	if !h.Type.IsRequest() {
		w.problem("non-request %v sent to a worker", h.Type)
		return
	}
	fc.seen = append(fc.seen, fakeSeen{h.Type, h.Session, h.Request, h.Ack, w.idx})
	switch h.Type {
	case wire.TypeSessionOpen:
		var m wire.SessionOpen
		if err := m.Decode(h, b); err != nil {
			w.problem("SESSION_OPEN: %v", err)
			return
		}
		key := fmt.Sprintf("%v/%d", from, h.Request)
		id, ok := fc.opens[key]
		if !ok {
			fc.nextSession++
			id = fc.nextSession
			fc.opens[key] = id
			fc.sessions[id] = &fakeSession{id: id, addr: from}
		}
		rh := h
		rh.Session = id
		w.reply(rh, wire.StatusOK, wire.SessionReply{TTLMs: ms(fc.cfg.sessionTTL), ShardCount: fc.cfg.shardCount,
			GraceMs: ms(fc.cfg.grace), WorkerTTLMs: ms(fc.cfg.workerTTL)}, from)
		return
	case wire.TypeMapRequest:
		var m wire.MapRequest
		if err := m.Decode(h, b); err != nil {
			w.problem("MAP_REQUEST: %v", err)
			return
		}
		fc.mapRequests++
		w.reply(h, wire.StatusOK, fc.mapPageLocked(m.FirstShard), from)
		return
	}
	s := fc.sessions[h.Session]
	if s == nil {
		w.errReply(h, wire.StatusUnknownSession, from)
		return
	}
	s.addr = from
	if h.Type == wire.TypeRevokeAck {
		var m wire.RevokeAck
		if err := m.Decode(h, b); err != nil {
			w.problem("REVOKE_ACK: %v", err)
			return
		}
		delete(w.revs, fakeReq{h.Session, m.Target})
		return
	}
	// At most once: stale ids are dropped, known ones answered from the cache.
	if h.Request < w.acks[h.Session] {
		return
	}
	if h.Ack > w.acks[h.Session] {
		w.acks[h.Session] = h.Ack
		for k := range w.cache {
			if k.sess == h.Session && k.req < h.Ack {
				delete(w.cache, k)
			}
		}
	}
	key := fakeReq{h.Session, h.Request}
	body := fmt.Sprintf("%v %x", h.Type, b[wire.HeaderLen:])
	if prev, ok := fc.bodies[key]; ok && prev != body && h.Type != wire.TypeKeepalive {
		w.problem("request id %d reused: %s then %s", h.Request, prev, body)
	}
	fc.bodies[key] = body
	if c := w.cache[key]; c != nil {
		if c.waiter != nil {
			w.reply(h, wire.StatusQueued, wire.Queued{}, from)
		} else {
			w.sendLocked(c.reply, from)
		}
		return
	}
	switch h.Type {
	case wire.TypeKeepalive:
		w.keepalive(h, b, from)
		return
	case wire.TypeSessionClose:
		fc.dropSessionLocked(h.Session)
		w.reply(h, wire.StatusOK, wire.Empty{}, from)
		return
	}
	// Token requests: ownership, epoch, grace.
	if o := fc.owner[h.Shard]; o != w.idx || fc.epoch[h.Shard] != h.Epoch {
		fc.notOwner++
		st, hint := wire.StatusNotOwner, ""
		if o == w.idx {
			st = wire.StatusStaleEpoch
		}
		if o >= 0 && !fc.hintless {
			hint = fc.workers[o].addr
		}
		w.reply(h, st, wire.NotOwner{Addr: []byte(hint), Epoch: fc.epoch[h.Shard]}, from)
		return
	}
	if time.Now().Before(w.grace[h.Shard]) && h.Type != wire.TypeReclaim {
		w.errReply(h, wire.StatusGrace, from)
		return
	}
	fc.applied[key]++
	var out []byte
	var waiter *fakeWaiter
	switch h.Type {
	case wire.TypeAcquire:
		out, waiter = w.acquire(h, b, from)
	case wire.TypeRelease:
		out = w.release(h, b, from)
	case wire.TypeConvert:
		out, waiter = w.convert(h, b, from)
	case wire.TypeCancel:
		out = w.cancel(h, b, from)
	case wire.TypeReclaim:
		out = w.reclaim(h, b, from)
	}
	w.cache[key] = &fakeCached{reply: out, waiter: waiter}
}

func ms(d time.Duration) uint32 { return uint32(d / time.Millisecond) }

func (fc *fakeCluster) mapPageLocked(first uint32) wire.MapReply {
	m := wire.MapReply{MapVersion: fc.mapVersion, ShardCount: fc.cfg.shardCount, GraceMs: ms(fc.cfg.grace)}
	listed := map[int]bool{}
	for s := first; s < fc.cfg.shardCount && len(m.Runs) < fc.cfg.runsPerPage; {
		e := s + 1
		for e < fc.cfg.shardCount && fc.owner[e] == fc.owner[s] && fc.epoch[e] == fc.epoch[s] {
			e++
		}
		run := wire.MapRun{First: s, Count: e - s, Worker: wire.NoWorker, Epoch: fc.epoch[s]}
		if o := fc.owner[s]; o >= 0 {
			run.Worker = uint16(o)
			listed[o] = true
		}
		m.Runs = append(m.Runs, run)
		s = e
	}
	for i, w := range fc.workers {
		if listed[i] {
			m.Workers = append(m.Workers, wire.MapWorker{Index: uint16(i), Addr: []byte(w.addr), ID: []byte(fmt.Sprintf("w%d", i))})
		}
	}
	return m
}

func (w *fakeWorker) keepalive(h wire.Header, b []byte, from net.Addr) {
	fc := w.fc
	var m wire.Keepalive
	if err := m.Decode(h, b); err != nil {
		w.problem("KEEPALIVE: %v", err)
		return
	}
	r := wire.KeepaliveReply{ValidityMs: ms(fc.cfg.validity)}
	if w.noVouch {
		r.ValidityMs = 0
	}
	if m.Renew {
		r.SessionTTLMs = ms(fc.cfg.sessionTTL)
	}
	for _, e := range m.Entries {
		st := wire.StatusOK
		switch {
		case fc.owner[e.Shard] != w.idx:
			st = wire.StatusNotOwner
		case fc.epoch[e.Shard] != e.Epoch:
			st = wire.StatusStaleEpoch
		}
		r.Statuses = append(r.Statuses, st)
	}
	if !w.noVouch {
		w.vouch[h.Session] = time.Now()
	}
	w.reply(h, wire.StatusOK, r, from)
}

func (w *fakeWorker) tok(name string) *fakeToken {
	t := w.tokens[name]
	if t == nil {
		t = &fakeToken{}
		w.tokens[name] = t
	}
	return t
}

func (w *fakeWorker) grantBody(shard uint32, g *fakeGrant, tok *fakeToken) wire.Grant {
	gb := wire.Grant{Fence: g.fence, Mode: g.mode, ValidityMs: ms(w.fc.cfg.validity), Start: g.start, End: g.end}
	if tok.valid {
		gb.ValueFlags, gb.Value = wire.ValueValid, tok.value
	}
	return gb
}

func (w *fakeWorker) newFence(shard uint32) uint64 {
	w.seq[shard]++
	return wire.MakeFence(w.fc.epoch[shard], w.seq[shard])
}

// conflicts lists the grants (other than except) that mode conflicts with.
func conflicts(tok *fakeToken, mode wire.Mode, except *fakeGrant) []*fakeGrant {
	var cs []*fakeGrant
	for _, g := range tok.grants {
		if g != except && !wire.Compatible(g.mode, mode) {
			cs = append(cs, g)
		}
	}
	return cs
}

func (w *fakeWorker) acquire(h wire.Header, b []byte, from net.Addr) ([]byte, *fakeWaiter) {
	var m wire.Acquire
	if err := m.Decode(h, b); err != nil {
		w.problem("ACQUIRE: %v", err)
		return nil, nil
	}
	if wire.Shard(m.Name, w.fc.cfg.shardCount) != h.Shard {
		w.problem("ACQUIRE %q in shard %d", m.Name, h.Shard)
	}
	name := string(m.Name)
	tok := w.tok(name)
	cs := conflicts(tok, m.Mode, nil)
	if len(cs) == 0 && len(tok.queue) == 0 {
		g := &fakeGrant{sess: h.Session, fence: w.newFence(h.Shard), mode: m.Mode, req: h.Request, start: m.Start, end: m.End}
		tok.grants = append(tok.grants, g)
		w.vouch[h.Session] = time.Now()
		return w.reply(h, wire.StatusOK, w.grantBody(h.Shard, g, tok), from), nil
	}
	if m.Try || m.WaitMs == 0 {
		return w.errReply(h, wire.StatusConflict, from), nil
	}
	q := &fakeWaiter{h: h, from: from, mode: m.Mode, name: name, start: m.Start, end: m.End}
	tok.queue = append(tok.queue, q)
	w.revokeLocked(h.Shard, name, cs)
	w.reply(h, wire.StatusQueued, wire.Queued{Position: uint32(len(tok.queue) - 1)}, from)
	return nil, q
}

// revokeLocked asks the holders of gs to release (once per grant).
func (w *fakeWorker) revokeLocked(shard uint32, name string, gs []*fakeGrant) {
	fc := w.fc
	for _, g := range gs {
		s := fc.sessions[g.sess]
		if g.revoked || s == nil {
			continue
		}
		g.revoked = true
		s.rev++
		h := wire.Header{Type: wire.TypeRevoke, Session: g.sess, Request: s.rev, Shard: shard,
			Epoch: fc.epoch[shard], MapVersion: fc.mapVersion}
		d, err := wire.Revoke{Fence: g.fence, Mode: wire.NL, Name: []byte(name)}.Append(nil, h)
		if err != nil {
			w.problem("fake REVOKE: %v", err)
			continue
		}
		w.revs[fakeReq{g.sess, s.rev}] = &fakeRevoke{to: s.addr, dgram: d, fence: g.fence, name: name}
		w.sendLocked(d, s.addr)
	}
}

// sendRevoke makes worker wi revoke fence on name from session sess (wanted
// mode wanted), as a test script step.
func (fc *fakeCluster) sendRevoke(wi int, sess uint64, name string, fence uint64, wanted wire.Mode) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	w := fc.workers[wi]
	s := fc.sessions[sess]
	s.rev++
	shard := wire.Shard([]byte(name), fc.cfg.shardCount)
	h := wire.Header{Type: wire.TypeRevoke, Session: sess, Request: s.rev, Shard: shard,
		Epoch: fc.epoch[shard], MapVersion: fc.mapVersion}
	d, err := wire.Revoke{Fence: fence, Mode: wanted, Name: []byte(name)}.Append(nil, h)
	if err != nil {
		fc.t.Fatal(err)
	}
	w.revs[fakeReq{sess, s.rev}] = &fakeRevoke{to: s.addr, dgram: d, fence: fence, name: name}
	w.sendLocked(d, s.addr)
}

func (w *fakeWorker) dropRevokes(sess, fence uint64) {
	for k, r := range w.revs {
		if k.sess == sess && r.fence == fence {
			delete(w.revs, k)
		}
	}
}

// wakeLocked grants what has become grantable at the head of name's queue.
func (w *fakeWorker) wakeLocked(name string) {
	tok := w.tokens[name]
	if tok == nil {
		return
	}
	for len(tok.queue) > 0 {
		q := tok.queue[0]
		cs := conflicts(tok, q.mode, q.convert)
		if len(cs) > 0 {
			w.revokeLocked(q.h.Shard, name, cs)
			return
		}
		tok.queue = tok.queue[1:]
		var g *fakeGrant
		if q.convert != nil {
			if !slices.Contains(tok.grants, q.convert) {
				continue // released meanwhile
			}
			g = q.convert
			w.dropRevokes(g.sess, g.fence)
			g.mode, g.fence, g.req, g.async, g.revoked = q.mode, w.newFence(q.h.Shard), q.h.Request, true, false
		} else {
			g = &fakeGrant{sess: q.h.Session, fence: w.newFence(q.h.Shard), mode: q.mode, req: q.h.Request, async: true,
				start: q.start, end: q.end}
			tok.grants = append(tok.grants, g)
		}
		ah := q.h.Reply()
		ah.MapVersion = w.fc.mapVersion
		cached, err := w.grantBody(q.h.Shard, g, tok).Append(nil, ah)
		if err != nil {
			w.problem("fake GRANT: %v", err)
			return
		}
		if c := w.cache[fakeReq{q.h.Session, q.h.Request}]; c != nil {
			c.reply, c.waiter = cached, nil
		}
		gh := ah
		gh.Type = wire.TypeGrantAsync
		if d, err := w.grantBody(q.h.Shard, g, tok).Append(nil, gh); err == nil {
			w.sendLocked(d, q.from)
		}
	}
}

func (w *fakeWorker) findGrant(sess uint64, name string, fence uint64) (*fakeToken, *fakeGrant) {
	tok := w.tokens[name]
	if tok == nil {
		return nil, nil
	}
	for _, g := range tok.grants {
		if g.sess == sess && g.fence == fence {
			return tok, g
		}
	}
	return tok, nil
}

func (w *fakeWorker) release(h wire.Header, b []byte, from net.Addr) []byte {
	var m wire.Release
	if err := m.Decode(h, b); err != nil {
		w.problem("RELEASE: %v", err)
		return nil
	}
	w.fc.releases = append(w.fc.releases, m.Fence)
	tok, g := w.findGrant(h.Session, string(m.Name), m.Fence)
	if g == nil {
		return w.errReply(h, wire.StatusNotHeld, from)
	}
	if m.HasValue {
		if !g.mode.Writes() {
			return w.errReply(h, wire.StatusBadRequest, from)
		}
		tok.value, tok.valid = slices.Clone(m.Value), true
	}
	tok.grants = slices.DeleteFunc(tok.grants, func(x *fakeGrant) bool { return x == g })
	w.dropRevokes(h.Session, m.Fence)
	w.wakeLocked(string(m.Name))
	return w.reply(h, wire.StatusOK, wire.Empty{}, from)
}

func (w *fakeWorker) convert(h wire.Header, b []byte, from net.Addr) ([]byte, *fakeWaiter) {
	var m wire.Convert
	if err := m.Decode(h, b); err != nil {
		w.problem("CONVERT: %v", err)
		return nil, nil
	}
	tok, g := w.findGrant(h.Session, string(m.Name), m.Fence)
	if g == nil {
		return w.errReply(h, wire.StatusNotHeld, from), nil
	}
	if wire.Covers(g.mode, m.Mode) {
		if m.HasValue {
			tok.value, tok.valid = slices.Clone(m.Value), true
		}
		g.mode, g.revoked = m.Mode, false
		w.dropRevokes(h.Session, g.fence)
		w.wakeLocked(string(m.Name))
	} else {
		if cs := conflicts(tok, m.Mode, g); len(cs) > 0 {
			if m.Try || m.WaitMs == 0 {
				return w.errReply(h, wire.StatusConflict, from), nil
			}
			q := &fakeWaiter{h: h, from: from, mode: m.Mode, name: string(m.Name), convert: g}
			tok.queue = append([]*fakeWaiter{q}, tok.queue...) // conversions first
			w.revokeLocked(h.Shard, string(m.Name), cs)
			w.reply(h, wire.StatusQueued, wire.Queued{}, from)
			return nil, q
		}
		w.dropRevokes(h.Session, g.fence)
		g.mode, g.fence, g.req = m.Mode, w.newFence(h.Shard), h.Request
	}
	w.vouch[h.Session] = time.Now()
	return w.reply(h, wire.StatusOK, w.grantBody(h.Shard, g, tok), from), nil
}

func (w *fakeWorker) cancel(h wire.Header, b []byte, from net.Addr) []byte {
	var m wire.Cancel
	if err := m.Decode(h, b); err != nil {
		w.problem("CANCEL: %v", err)
		return nil
	}
	w.fc.cancels = append(w.fc.cancels, m.Target)
	for name, tok := range w.tokens {
		for i, q := range tok.queue {
			if q.h.Session == h.Session && q.h.Request == m.Target {
				tok.queue = slices.Delete(tok.queue, i, i+1)
				tk := fakeReq{h.Session, m.Target}
				if c := w.cache[tk]; c != nil {
					rh := q.h.Reply()
					rh.Status, rh.MapVersion = wire.StatusCanceled, w.fc.mapVersion
					c.reply, _ = wire.ErrorBody{}.Append(nil, rh)
					c.waiter = nil
				}
				w.wakeLocked(name)
				return w.reply(h, wire.StatusOK, wire.Empty{}, from)
			}
		}
		for _, g := range tok.grants {
			if g.sess == h.Session && g.req == m.Target && g.async {
				tok.grants = slices.DeleteFunc(tok.grants, func(x *fakeGrant) bool { return x == g })
				w.dropRevokes(g.sess, g.fence)
				// Like the worker: the target's cached answer becomes CANCELED.
				if c := w.cache[fakeReq{h.Session, m.Target}]; c != nil {
					rh := wire.Header{Type: wire.TypeAcquireReply, Status: wire.StatusCanceled, Session: h.Session,
						Request: m.Target, Shard: h.Shard, Epoch: h.Epoch, MapVersion: w.fc.mapVersion}
					if ch, err := wire.ParseHeader(c.reply); err == nil {
						rh.Type = ch.Type
					}
					c.reply, _ = wire.ErrorBody{}.Append(nil, rh)
				}
				w.wakeLocked(name)
				return w.reply(h, wire.StatusOK, wire.Empty{}, from)
			}
		}
	}
	return w.errReply(h, wire.StatusNotHeld, from)
}

func (w *fakeWorker) reclaim(h wire.Header, b []byte, from net.Addr) []byte {
	var m wire.Reclaim
	if err := m.Decode(h, b); err != nil {
		w.problem("RECLAIM: %v", err)
		return nil
	}
	tok, g := w.findGrant(h.Session, string(m.Name), m.Fence)
	if g == nil {
		if !time.Now().Before(w.grace[h.Shard]) || w.fc.refuseReclaim || wire.FenceEpoch(m.Fence) >= h.Epoch {
			return w.errReply(h, wire.StatusReclaimRefused, from)
		}
		g = &fakeGrant{sess: h.Session, fence: m.Fence, mode: m.Mode, req: h.Request, start: m.Start, end: m.End}
		tok = w.tok(string(m.Name))
		tok.grants = append(tok.grants, g)
	}
	w.vouch[h.Session] = time.Now()
	gb := w.grantBody(h.Shard, g, tok)
	gb.ValueFlags, gb.Value = wire.ValueLost, nil
	return w.reply(h, wire.StatusOK, gb, from)
}
