package worker

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker/grace"
	"github.com/tokend/tokend/worker/ownership"
	core "github.com/tokend/tokend/worker/session" // named core: the shell's own per-session type is session
	"github.com/tokend/tokend/worker/table"
	"github.com/tokend/tokend/worker/vouch"
)

// Bounds of the per-session and per-worker state.
const (
	// replyCacheCap bounds the cached replies per session (SPEC: at least
	// 1024); a new request beyond it is answered LIMIT. A worker crash pins
	// the ack of every session waiting for the dead worker's shards for the
	// lease TTL plus the grace period (see session.OverLimit), and the session's
	// traffic to the live workers must fit meanwhile, or it stalls on LIMIT
	// where docs/ARCHITECTURE.md promises the other shards are untouched.
	// 16384 covers about 1500 requests/s of one session to one worker over a failover
	// with the default 5 s TTL and grace. An entry is about 200 bytes, so a
	// session's cache stays under ~3 MB (~6 MB at replyCacheHard), and the
	// sum over all sessions is bounded by what the worker can answer while
	// acks are pinned.
	// It is the default of Limits.ReplyCache.
	replyCacheCap  = 16384
	replyCacheHard = 2 * replyCacheCap // ... and a RECLAIM or an older request still unanswered, beyond this (see session.OverLimit)
	maxGone        = 1 << 16           // remembered ended sessions
	maxLookups     = 1024              // sessions being looked up in etcd at once
	// goneFor is how long an ended session is remembered (with its key,
	// to answer its datagrams SESSION_EXPIRED): at least the longest
	// session TTL (Limits.MaxSessionTTL), and at least this.
	goneFor = time.Minute
)

// serving is the state guarded by Worker.mu, embedded in Worker.
type serving struct {
	lease   *ownLease      // the current incarnation's lease (nil before Start)
	doc     cluster.Worker // its registration
	cluster cluster.Config
	ready   bool
	me      delegation.Owner // this incarnation, as the map names owners; zero while unregistered

	dmap   delegation.Map // current delegation map (zero before the first)
	mapRev int64          // etcd mod revision of the newest map key seen (0: none)
	// muteMapWatch (tests) makes the map watch deliver nothing, as a
	// watch stream on an etcd member that went silent does.
	muteMapWatch bool
	runs         []delegation.Run          // delegation.Runs(dmap), for MAP replies
	registry     map[string]cluster.Worker // live workers by id, for owner hints
	shards       []*shardState             // by shard; nil = not served here
	timed        map[uint32]struct{}       // served shards whose table may have a deadline (for the timer loop)

	sessions   map[uint64]*session // live sessions (from the watch, or opened here)
	clientsRev int64               // revision of the last client-session event applied
	gone       map[uint64]*tomb    // ended sessions
	ends       []endJob            // ended sessions' table state still to drop, oldest end first (ending.go)
	lookups    map[uint64]struct{} // unknown sessions being looked up in etcd
	revoking   map[uint64]*session // sessions with REVOKEs or GRANT_ASYNCs being retransmitted
	guard      guardState          // cookies, open rate limits, recent opens, negative lookups (authn.go)

	outgoing map[uint32]*outHandoff // shards given up: final state kept for the new owner to pull (handoff.go)
	pulls    []*pullBatch           // handoffs to pull, for the pull loop
	mapCh    chan struct{}          // closed and replaced whenever a map is applied
	draining bool                   // Drain was called: every registration says so

	wakeAt      int64          // when the timer loop wakes next (tables' clock)
	housekeepAt int64          // when it next forgets expired opens and ended sessions
	out         []table.Output // scratch for Step and Tick

	// Early end of grace (earlygrace.go): the tracker of this
	// incarnation's recoveries, the shards in grace by recovery, whether a
	// read of the live sessions is under way, and scratch.
	gt          *grace.Tracker
	recov       map[uint32]recovery
	liveReading bool
	ended       []grace.Ended
}

func (s *serving) init() {
	s.registry = map[string]cluster.Worker{}
	s.sessions = map[uint64]*session{}
	s.gone = map[uint64]*tomb{}
	s.lookups = map[uint64]struct{}{}
	s.revoking = map[uint64]*session{}
	s.timed = map[uint32]struct{}{}
	s.outgoing = map[uint32]*outHandoff{}
	s.mapCh = make(chan struct{})
	s.gt = grace.New()
	s.recov = map[uint32]recovery{}
}

// shardState is a shard this worker serves: its table at the map's epoch.
// While the shard's state is being pulled from its previous owner (a
// planned handoff) tab is nil and from names that owner: token requests are
// answered UNAVAILABLE until the pull ends.
type shardState struct {
	tab   *table.Table
	epoch uint32
	from  delegation.Owner
}

// session is a live client session as this worker knows it.
type session struct {
	id     uint64
	addr   *net.UDPAddr        // where it last sent from (REVOKE and GRANT_ASYNC go there)
	core   *core.Session       // ack, reply cache (invariant 4), REVOKEs in flight
	shards map[uint32]struct{} // shards whose tables it has stepped (to end it there)
	lease  clientv3.LeaseID    // the etcd lease it lives on (0: not known yet)
	// nameBound is at least the names it holds or waits for here
	// (Worker.names), for Limits.NamesPerSession.
	nameBound int
	keys      sessKeys // its key, with Auth
	// bundle: the session takes BUNDLE_REPLYs (its document says so,
	// wire/SPEC.md section 22); the outbox packs its datagrams.
	bundle bool

	renewing uint64 // request id of the KEEPALIVE whose renewal etcd works on (0: none)
	// renewedID and renewedTTL are the last KEEPALIVE with RENEW that etcd
	// renewed and the TTL it granted (ms): a copy of it, whose answer was
	// lost, is answered again with that TTL and renews nothing.
	renewedID  uint64
	renewedTTL uint32
	closing    bool // a SESSION_CLOSE is with etcd
}

func (w *Worker) newSession(id uint64, addr *net.UDPAddr) *session {
	n := w.cfg.Limits.ReplyCache
	c := core.New(core.Config{Cap: n, Hard: 2 * n, Seed: rand.Uint64()})
	return &session{id: id, addr: addr, core: c, shards: map[uint32]struct{}{}}
}

// trackRevokes keeps s in w.revoking, for the timer loop, while it has
// REVOKEs or GRANT_ASYNCs in flight. Caller holds mu.
func (w *Worker) trackRevokes(s *session) {
	if s.core.Revoking() {
		w.revoking[s.id] = s
	} else {
		delete(w.revoking, s.id)
	}
}

// openKey identifies a SESSION_OPEN and its retransmissions: with Auth
// by key name and client nonce, without by source and request id.
type openKey struct {
	from  netip.AddrPort
	req   uint64
	name  string
	nonce auth.Nonce
}

// openState remembers a SESSION_OPEN so that retransmissions do not open a
// second session.
type openState struct {
	pkt []byte // the reply, sealed; nil while etcd works on it
}

// tomb is an ended session, remembered for goneFor with its key.
type tomb struct {
	until int64 // tables' clock
	keys  sessKeys
}

// knownSession returns the session, or nil.
func (w *Worker) knownSession(id uint64) *session { return w.sessions[id] }

// addSession records a live session learned at etcd revision rev (its key's
// mod revision) and returns it. It is not re-added if it ended already, or
// if the watch is past rev (it was deleted after): then it returns nil. A
// session known already (handed over with a shard before its document was
// read) gets what the document says.
func (w *Worker) addSession(id uint64, in sessInfo, rev int64) *session {
	if s, ok := w.sessions[id]; ok {
		s.learn(in)
		return s
	}
	if _, ok := w.gone[id]; ok || rev <= w.clientsRev {
		return nil
	}
	s := w.newSession(id, in.addr)
	s.learn(in)
	w.sessions[id] = s
	return s
}

// learn takes what s's document says that s does not know yet.
func (s *session) learn(in sessInfo) {
	if s.lease == 0 {
		s.lease = in.lease
	}
	if s.addr == nil {
		s.addr = in.addr
	}
	if s.keys.in == nil && len(s.keys.sealed) == 0 {
		s.keys.keyName, s.keys.sealed, s.keys.bad = in.keyName, in.sealed, false
	}
	if in.bundle {
		s.bundle = true // a document never takes it back
	}
}

// endSession drops everything of a session whose lease is gone: its grants
// and waiters in every table it touched (waking the waiters behind them;
// a big session's in slices, by the end loop: ending.go), its reply cache
// and its revokes.
func (w *Worker) endSession(ob *outbox, id uint64) {
	s := w.sessions[id]
	if t := w.gone[id]; t == nil && len(w.gone) < maxGone {
		t = &tomb{until: ob.now + int64(max(goneFor, w.cfg.Limits.MaxSessionTTL))}
		if s != nil {
			t.keys = s.keys
		}
		w.gone[id] = t
	}
	w.endEarly(ob, w.gt.End(id, w.ended[:0]))
	if s == nil {
		return
	}
	delete(w.sessions, id)
	delete(w.revoking, id)
	s.core.Drop()
	w.endTables(ob, id, s.shards)
}

// dropAll forgets every table and every session's state: the lease is
// gone, so nothing served under it may be answered any more.
func (w *Worker) dropAll() {
	for i := range w.shards {
		w.shards[i] = nil
	}
	for _, s := range w.sessions {
		s.core.Drop()
		clear(s.shards)
	}
	clear(w.revoking)
	clear(w.timed)
	w.ends = nil      // their tables are gone
	clear(w.outgoing) // stale: the lease is gone, the leader recovers those shards
	w.pulls = nil
	w.gt = grace.New() // a read under way answers the old tracker and is dropped
	w.liveReading = false
	clear(w.recov)
}

// applyMap makes m the current map and brings the served shards in line,
// as ownership.Apply decides: a shard is served iff m says its owner is
// this incarnation, at m's epoch. older, if not nil, is a map older than m
// read from etcd's history, to find the previous owners when the current
// map is not m's predecessor. Caller holds mu.
func (w *Worker) applyMap(ob *outbox, m delegation.Map, older *delegation.Map) {
	prev := w.dmap
	w.dmap = m
	w.runs = delegation.Runs(m)
	close(w.mapCh)
	w.mapCh = make(chan struct{})
	if w.shards == nil {
		return
	}
	held := make([]ownership.Held, len(w.shards))
	for s, st := range w.shards {
		if st != nil {
			held[s] = ownership.Held{Epoch: st.epoch, Table: st.tab != nil, Grace: st.tab != nil && st.tab.InGrace()}
		}
	}
	res := ownership.Apply(ownership.Input{
		Me: w.me, Held: held, Prev: prev, Older: older, Next: m,
		Safe:    ob.stamp.Before(ob.safe),
		CanPull: func(o delegation.Owner) bool { _, ok := w.pullable(o); return ok },
	}, nil)
	if res.BadMap {
		w.log.Error("delegation map has another shard count than the cluster; serving nothing from it",
			"map_shards", m.Shards(), "cluster_shards", len(w.shards))
	}
	var (
		lost                   map[uint32]bool
		handed                 map[uint32]*outHandoff
		gained, recovs, awaits int
		batches                map[delegation.Owner]*pullBatch
	)
	for _, a := range res.Actions {
		s := a.Shard
		switch a.Kind {
		case ownership.Drop, ownership.HandOff:
			if lost == nil {
				lost = map[uint32]bool{}
			}
			lost[s] = true
			w.forgetRecovery(s)
			cur := w.shards[s]
			if a.Kind == ownership.HandOff {
				w.finishEnds(ob, s, cur) // before the export, while the shard is served
			}
			w.shards[s] = nil
			delete(w.outgoing, s)
			if a.Kind == ownership.HandOff {
				if oh := w.keepForHandoff(ob, s, cur, a.To); oh != nil {
					if handed == nil {
						handed = map[uint32]*outHandoff{}
					}
					handed[s] = oh
				}
			}
			w.log.Debug("shard lost", "shard", s, "epoch", a.Epoch, "handoff", handed[s] != nil)
		case ownership.Pull:
			gained++
			awaits++
			doc, _ := w.pullable(a.From)
			w.forgetRecovery(s)
			w.shards[s] = &shardState{epoch: a.Epoch, from: a.From}
			if batches == nil {
				batches = map[delegation.Owner]*pullBatch{}
			}
			b := batches[a.From]
			if b == nil {
				b = &pullBatch{from: a.From, addr: doc.Handoff, ttl: time.Duration(doc.TTLms) * time.Millisecond,
					mapVersion: m.Version, started: ob.stamp}
				batches[a.From] = b
			}
			b.shards = append(b.shards, shardEpochJ{Shard: s, Epoch: a.Epoch})
		case ownership.Recover, ownership.Fresh:
			gained++
			w.forgetRecovery(s)
			w.shards[s] = w.adopt(ob, s, a.Epoch)
			if a.Kind == ownership.Recover {
				recovs++
				if w.shards[s] != nil {
					w.startRecovery(ob, s, a.Epoch, a.From, m.Version)
				}
			}
		}
	}
	w.endEarly(ob, w.gt.Map(m.Version, w.ended[:0]))
	w.readLiveSoon()
	if gained > 0 || lost != nil {
		w.log.Info("delegation changed", "map_version", m.Version, "gained", gained, "handoffs_in", awaits,
			"recovering", recovs, "lost", len(lost), "handoffs_out", len(handed))
	}
	for _, b := range batches {
		w.pulls = append(w.pulls, b)
	}
	if len(batches) > 0 {
		select {
		case w.pullKick <- struct{}{}:
		default:
		}
	}
	if lost == nil {
		return
	}
	// Queued requests and revokes of lost tables are gone with them. Final
	// cached replies stay: a duplicate still gets the answer it had. Those
	// of shards handed off also go with the handoff, so that the new owner
	// answers a retransmission the same way (invariant 4).
	isLost := func(shard uint32) bool { return lost[shard] }
	var finals []core.Reply
	for _, sess := range w.sessions {
		finals = sess.core.DropShards(isLost, finals[:0])
		for _, r := range finals {
			if oh := handed[r.Shard]; oh != nil {
				oh.replies = append(oh.replies, handoffReply{Session: sess.id, Req: r.Req, Type: r.Type, Fence: r.Fence, Pkt: r.Pkt,
					Exempt: r.Exempt})
			}
		}
		w.trackRevokes(sess)
	}
}

// adopt starts serving shard at epoch without a handoff. Epoch 1 is a fresh
// shard. A higher epoch follows another owner, whose grants may still be
// valid at its clients: the table starts in its grace period and accepts
// only reclaims until then (invariant 6).
func (w *Worker) adopt(ob *outbox, shard, epoch uint32) *shardState {
	var (
		tab *table.Table
		err error
	)
	if epoch == 1 {
		tab, err = table.New(epoch, w.cfg.Table)
	} else {
		tab, err = table.NewRecovering(epoch, ownership.GraceEnd(ob.now, int64(w.cluster.Grace())), w.cfg.Table)
		w.met.recoveries.Inc()
	}
	if err != nil {
		// Unreachable: the map's epochs are 1..MaxEpoch.
		w.log.Error("cannot start shard", "shard", shard, "epoch", epoch, "err", err)
		return nil
	}
	w.log.Debug("shard gained", "shard", shard, "epoch", epoch, "recovering", epoch > 1)
	w.timeShard(shard, tab)
	return &shardState{tab: tab, epoch: epoch}
}

// timeShard tells the timer loop about tab's next deadline, if any.
// Only a new table or a request that queues can add one. Caller holds mu.
func (w *Worker) timeShard(shard uint32, tab *table.Table) {
	if d, ok := tab.NextDeadline(); ok {
		w.timed[shard] = struct{}{}
		w.wantWake(d)
	}
}

// wantWake makes the timer loop wake by t. Caller holds mu.
func (w *Worker) wantWake(t int64) {
	if w.wakeAt != 0 && t >= w.wakeAt {
		return
	}
	w.wakeAt = t
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// owner answers "does this worker serve shard at epoch?": the shard's
// state if so, else the status (NOT_OWNER, STALE_EPOCH) and hint to send.
func (w *Worker) owner(shard, epoch uint32) (*shardState, wire.Status, wire.NotOwner) {
	if int(shard) < len(w.shards) {
		if st := w.shards[shard]; st != nil {
			if st.epoch == epoch {
				return st, wire.StatusOK, wire.NotOwner{}
			}
			return nil, wire.StatusStaleEpoch, wire.NotOwner{Message: msgStaleEpoch, Addr: []byte(w.doc.UDP), Epoch: st.epoch}
		}
	}
	hint := wire.NotOwner{Message: msgNotOwner}
	if o, e, ok := w.dmap.Lookup(int(shard)); ok {
		hint.Addr, hint.Epoch = []byte(w.addrOf(o)), e
	}
	return nil, wire.StatusNotOwner, hint
}

var (
	msgStaleEpoch = []byte("stale shard epoch")
	msgNotOwner   = []byte("shard not served here")
)

// addrOf returns the UDP address of an owner as the registry shows it, or
// "" if that incarnation is not registered.
func (w *Worker) addrOf(o delegation.Owner) string {
	if o == w.me {
		return w.doc.UDP
	}
	r, ok := w.registry[o.ID]
	if !ok || r.Incarnation != formatInc(o.Incarnation) {
		return ""
	}
	return r.UDP
}

// validity is how long, in ms from now, the worker vouches for its lease:
// SafeUntil - now, floored, 0 if it cannot vouch (invariant 5).
func validity(safeUntil, now time.Time) uint32 {
	return vouch.ValidityMs(int64(safeUntil.Sub(now)))
}

// reqCtx is the request a Step answers.
type reqCtx struct {
	s     *session
	h     wire.Header // the request's header
	fence uint64      // CONVERT: the grant's fence before
	tgt   uint64      // CANCEL: the target request id
}

// apply turns the outputs of a Step or Tick of shard into datagrams:
// the reply to rq (if any), asynchronous outcomes of queued requests, and
// revokes. It updates the reply caches and the pending revokes. Caller
// holds mu.
func (w *Worker) apply(ob *outbox, shard uint32, st *shardState, outs []table.Output, rq *reqCtx) {
	for i := range outs {
		o := &outs[i]
		switch o.Kind {
		case table.KindReply:
			if rq != nil {
				w.replyOut(ob, shard, st, o, rq)
			}
		case table.KindAsync:
			w.asyncOut(ob, shard, st, o)
		case table.KindRevoke:
			w.revokeOut(ob, shard, st, o)
		}
	}
}

func (w *Worker) replyOut(ob *outbox, shard uint32, st *shardState, o *table.Output, rq *reqCtx) {
	s, status := rq.s, o.Status
	rh := rq.h.Reply()
	rh.Status, rh.MapVersion = status, w.dmap.Version
	pkt := w.encodeOutcome(rh, o, validity(ob.safe, ob.stamp))
	if pkt == nil {
		return
	}
	oc := core.Outcome{Req: rq.h.Request, Type: rq.h.Type, Shard: shard, Fence: rq.fence, Status: status, Pkt: pkt}
	if o.Released {
		oc.Released = o.Fence
	}
	s.core.Applied(oc)
	if status == wire.StatusOK && rq.h.Type == wire.TypeCancel {
		if typ, ok := s.core.CancelTarget(rq.tgt); ok {
			th := wire.Header{Type: typ.Reply(), Status: wire.StatusCanceled, Session: s.id, Request: rq.tgt,
				Shard: shard, Epoch: st.epoch, MapVersion: w.dmap.Version}
			s.core.Settle(rq.tgt, wire.StatusCanceled, errorReply(th, wire.StatusCanceled), ob.now)
		}
	}
	w.trackRevokes(s)
	if status == wire.StatusDeadlock {
		w.met.deadlocks.WithLabelValues("conversion").Inc()
		w.log.Info("deadlock: conversion answered DEADLOCK", "session", cluster.SessionString(s.id), "req", rq.h.Request,
			"shard", shard, "epoch", st.epoch, "fence", rq.fence)
	}
	w.met.op(rq.h.Type, status)
	ob.add(pkt, s.addr, rq.h.Type, s.keys.out)
}

// asyncOut handles the outcome of a request answered QUEUED earlier.
func (w *Worker) asyncOut(ob *outbox, shard uint32, st *shardState, o *table.Output) {
	s := w.sessions[o.Session]
	if s == nil {
		return
	}
	c, isCached := s.core.Entry(o.Req)
	status := o.Status
	typ := wire.TypeAcquire
	if isCached {
		typ = c.Type
	}
	rh := wire.Header{Type: typ.Reply(), Status: status, Session: s.id, Request: o.Req, Shard: shard,
		Epoch: st.epoch, MapVersion: w.dmap.Version}
	v := validity(ob.safe, ob.stamp)
	reply := w.encodeOutcome(rh, o, v)
	w.met.op(typ, status)
	if status == wire.StatusOK {
		s.core.Settle(o.Req, status, reply, ob.now)
		w.trackRevokes(s)
		if v == 0 {
			// Invariant 5: a worker that cannot vouch for its lease sends
			// no grant. Tables are also stepped off the receive loop (a
			// session ends, a waiter times out), which does not check the
			// lease: a worker waking up from a hang longer than its lease
			// learns from its watch that a holder's session expired
			// meanwhile and grants the token to the next waiter, in a shard
			// the leader has already given to a new owner (failover.
			// TestWorkerHang). The grant stays in the reply cache: a re-poll
			// gets it once the lease is safe again (it is answered
			// UNAVAILABLE until then), and a lost lease drops it with the
			// rest of the tables.
			return
		}
		ah := rh
		ah.Type, ah.Status = wire.TypeGrantAsync, wire.StatusOK
		if p := w.encodeOutcome(ah, o, v); p != nil {
			// Retransmitted until the client acknowledges it (wire/SPEC.md
			// section 12): its validity counts from the client's first send
			// of the request, so a late copy only understates it.
			next := s.core.GrantAsync(o.Req, shard, o.Fence, p, ob.now)
			w.revoking[s.id] = s
			w.wantWake(next)
			w.toSession(ob, s, p)
		}
		return
	}
	// A final status (TIMEOUT, CANCELED) replaces the cached QUEUED; a
	// retryable one (EXHAUSTED) means not applied: the id is forgotten so
	// that the client's retry is applied afresh.
	if !isCached || reply == nil {
		return
	}
	s.core.Settle(o.Req, status, reply, ob.now)
	w.toSession(ob, s, reply)
}

// revokeOut sends a REVOKE to a holder and schedules its retransmission
// (one outstanding per grant, wanted mode and range: session.Revoke).
func (w *Worker) revokeOut(ob *outbox, shard uint32, st *shardState, o *table.Output) {
	s := w.sessions[o.Session]
	if s == nil {
		return
	}
	k := core.RevokeKey{Shard: shard, Fence: o.Fence, Mode: o.Mode, Start: o.Start, End: o.End}
	pkt, next, err := s.core.Revoke(k, ob.now, func(seq uint64) ([]byte, error) {
		h := wire.Header{Type: wire.TypeRevoke, Session: s.id, Request: seq, Shard: shard, Epoch: st.epoch,
			MapVersion: w.dmap.Version}
		return wire.Revoke{Fence: o.Fence, Mode: o.Mode, Start: o.Start, End: o.End, Name: []byte(o.Name)}.Append(nil, h)
	})
	if err != nil {
		w.log.Error("cannot encode REVOKE", "err", err, "shard", shard, "fence", o.Fence)
		return
	}
	if pkt == nil {
		return
	}
	w.revoking[s.id] = s
	w.wantWake(next)
	w.met.revokesSent.Inc()
	w.toSession(ob, s, pkt)
}

// toSession queues a datagram the worker sends unasked (GRANT_ASYNC, a
// late final reply, REVOKE) for session s, sealed with its key. With Auth,
// a session whose key this worker has not unsealed yet (one handed over
// with a shard, not heard from here) has it unsealed now; if that fails
// nothing is sent (a REVOKE is retransmitted later). Caller holds mu.
func (w *Worker) toSession(ob *outbox, s *session, pkt []byte) {
	if a := w.cfg.Auth; a != nil && !s.keys.macs(a, s.id) {
		w.met.drop("no_session_key")
		return
	}
	ob.add(pkt, s.addr, 0, s.keys.out)
}

// encodeOutcome encodes a table outcome as a datagram with header h (type
// and status set): a GRANT body for OK grants, empty for OK releases and
// cancels, QUEUED, or an ERROR body.
func (w *Worker) encodeOutcome(h wire.Header, o *table.Output, validityMs uint32) []byte {
	var (
		pkt []byte
		err error
	)
	switch {
	case h.Status == wire.StatusOK && (h.Type == wire.TypeReleaseReply || h.Type == wire.TypeCancelReply):
		pkt, err = wire.Empty{}.Append(make([]byte, 0, wire.HeaderLen), h)
	case h.Status == wire.StatusOK:
		g := wire.Grant{Fence: o.Fence, Mode: o.Mode, ValidityMs: validityMs, Start: o.Start, End: o.End,
			ValueFlags: uint8(o.VFlags)}
		if o.VFlags&table.ValueValid != 0 {
			g.Value = []byte(o.Value)
		}
		pkt, err = g.Append(make([]byte, 0, wire.HeaderLen+31+len(o.Value)), h)
	case h.Status == wire.StatusQueued:
		pkt, err = wire.Queued{Position: max(o.Position, 1) - 1}.Append(make([]byte, 0, wire.HeaderLen+4), h)
	default:
		return errorReply(h, h.Status)
	}
	if err != nil {
		w.log.Error("cannot encode reply", "err", err, "type", h.Type, "status", h.Status)
		return nil
	}
	return pkt
}

var msgHandoff = []byte("shard handoff in progress")

// awaitingReply encodes the UNAVAILABLE answer to a token request for a
// shard whose state is still coming from its previous owner.
func awaitingReply(h wire.Header) []byte {
	h.Status = wire.StatusUnavailable
	pkt, err := wire.ErrorBody{Message: msgHandoff}.Append(make([]byte, 0, wire.HeaderLen+1+len(msgHandoff)), h)
	if err != nil {
		return nil
	}
	return pkt
}

// errorReply encodes a reply with status st and an ERROR body.
func errorReply(h wire.Header, st wire.Status) []byte {
	h.Status = st
	msg := st.Text()
	pkt, err := wire.ErrorBody{Message: []byte(msg)}.Append(make([]byte, 0, wire.HeaderLen+1+len(msg)), h)
	if err != nil {
		return nil
	}
	return pkt
}

// notOwnerReply encodes a NOT_OWNER or STALE_EPOCH reply.
func notOwnerReply(h wire.Header, st wire.Status, hint wire.NotOwner) []byte {
	h.Status = st
	pkt, err := hint.Append(nil, h)
	if err != nil {
		return nil
	}
	return pkt
}

// shardCount is the cluster's shard count (0 before Start).
func (w *Worker) shardCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.shards)
}
