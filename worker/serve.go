package worker

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	core "github.com/tokend/tokend/worker/session" // named core: the shell's own per-session type is session
	"github.com/tokend/tokend/worker/table"
)

const (
	batchSize = 64   // datagrams per ReadBatch / WriteBatch
	recvBuf   = 1536 // > MaxDatagram, so an oversized datagram is seen as such
)

// outbox collects the datagrams one batch (or one timer or etcd event)
// sends, to be written with one WriteBatch after the lock is released.
// Datagrams for a session that takes bundles are packed into BUNDLE_REPLYs
// at flush (pack, bundle.go).
type outbox struct {
	stamp time.Time // arrival of the batch (or the event's time)
	now   int64     // stamp on the tables' clock
	safe  time.Time // the lease's SafeUntil, read once for the batch
	msgs  []ipv4.Message
	typ   []wire.Type // per message: the request type it answers (for latency), 0 if none
	// sessions, if not nil, are the live sessions (Worker.sessions), read
	// by add under Worker.mu to learn which take bundles; nil sends every
	// datagram alone.
	sessions map[uint64]*session
	take     []bool // per message: it may go in a BUNDLE_REPLY (see add)
	takes    int    // how many may
	pk       packer // flush's scratch for packing bundles, reused
}

func newOutbox(stamp time.Time, now int64) *outbox { return &outbox{stamp: stamp, now: now} }

// outbox is newOutbox that bundles, unless Config.NoBundle, the datagrams
// of sessions that take bundles. Caller holds mu.
func (w *Worker) outbox(stamp time.Time, now int64) *outbox {
	o := newOutbox(stamp, now)
	o.sessions = w.bundling()
	return o
}

// bundling is the sessions map an outbox reads to bundle, or nil with
// Config.NoBundle.
func (w *Worker) bundling() map[uint64]*session {
	if w.cfg.NoBundle {
		return nil
	}
	return w.sessions
}

func (o *outbox) reset(stamp time.Time, now int64, safe time.Time) {
	o.stamp, o.now, o.safe = stamp, now, safe
	o.msgs, o.typ, o.take, o.takes = o.msgs[:0], o.typ[:0], o.take[:0], 0
}

// add queues pkt for to; typ is the request type it answers (0 for REVOKE
// and GRANT_ASYNC), for the latency histogram. With mac (the session's
// worker-to-client MAC, nil without Auth) it seals pkt first, unless pkt
// carries a tag already (a cached reply sent before: sealing it again
// would write the same bytes into a buffer a flush may be sending).
// Caller holds Worker.mu if mac belongs to a session.
func (o *outbox) add(pkt []byte, to *net.UDPAddr, typ wire.Type, mac *auth.MAC) {
	if len(pkt) < wire.HeaderLen || to == nil {
		return
	}
	if mac != nil && !sealed(pkt) {
		if err := mac.Seal(pkt); err != nil {
			return
		}
	}
	// The session's flag is read now, under Worker.mu: flush runs
	// without it.
	take := false
	if o.sessions != nil && wire.Bundles(wire.TypeBundleReply, wire.Type(pkt[3])) {
		s := o.sessions[binary.BigEndian.Uint64(pkt[8:])]
		take = s != nil && s.bundle
	}
	o.take = append(o.take, take)
	if take {
		o.takes++
	}
	n := len(o.msgs)
	if n < cap(o.msgs) {
		o.msgs = o.msgs[:n+1]
		m := &o.msgs[n]
		m.Buffers = append(m.Buffers[:0], pkt)
		m.Addr, m.N = to, 0
	} else {
		o.msgs = append(o.msgs, ipv4.Message{Buffers: [][]byte{pkt}, Addr: to})
	}
	o.typ = append(o.typ, typ)
}

// flush sends what ob holds, bundled where it may be (outbox.pack), and
// records reply latencies.
func (w *Worker) flush(ob *outbox) {
	if ob == nil || len(ob.msgs) == 0 {
		return
	}
	ms, bundles, bundled := ob.pack()
	if bundles > 0 {
		w.met.bundlesOut.Add(float64(bundles))
		w.met.bundledOut.Add(float64(bundled))
	}
	defer ob.release()
	for len(ms) > 0 {
		n, err := w.conn.WriteBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			w.log.Debug("send failed", "err", err, "to", ms[n].Addr)
			n++ // skip the datagram that failed
		}
		ms = ms[min(n, len(ms)):]
	}
	el := w.clk.Since(ob.stamp).Seconds()
	for _, t := range ob.typ {
		if t != 0 {
			w.met.observe(t, el)
		}
	}
}

// recvLoop is the receive loop: one ReadBatch, one time stamp, one lock,
// one WriteBatch per batch. It ends when ctx is done (Close also sets a
// read deadline to wake it).
func (w *Worker) recvLoop(ctx context.Context) {
	msgs := make([]ipv4.Message, batchSize)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, recvBuf)}
	}
	ob := &outbox{msgs: make([]ipv4.Message, 0, batchSize)}
	w.mu.Lock()
	ob.sessions = w.bundling()
	w.mu.Unlock()
	for {
		n, err := w.conn.ReadBatch(msgs, 0)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				w.log.Warn("receive failed", "err", err)
				// Do not spin on a persistent error. Real time: this paces
				// the CPU, not the protocol, and a fake clock must not stall
				// the receive loop on a transient error (ECONNREFUSED).
				time.Sleep(time.Millisecond)
			}
			continue
		}
		stamp := w.clk.Now()
		w.mu.Lock()
		ob.reset(stamp, w.mono(stamp), w.safeUntil())
		for i := range msgs[:n] {
			m := &msgs[i]
			from, _ := m.Addr.(*net.UDPAddr)
			w.handle(ob, m.Buffers[0][:m.N], from)
		}
		w.mu.Unlock()
		w.flush(ob)
	}
}

// safeUntil is the lease's SafeUntil, or the zero time (never) without a
// lease. Caller holds mu.
func (w *Worker) safeUntil() time.Time {
	if w.lease == nil {
		return time.Time{}
	}
	return w.lease.SafeUntil()
}

// handle processes one datagram. Nothing in it may block. Caller holds mu.
func (w *Worker) handle(ob *outbox, pkt []byte, from *net.UDPAddr) {
	if from == nil {
		w.met.drop("no_address")
		return
	}
	h, err := wire.ParseHeader(pkt)
	if err != nil {
		w.met.drop(wire.Reason(err))
		return
	}
	if h.Type == wire.TypeBundle {
		w.handleBundle(ob, h, pkt, from)
		return
	}
	w.handleParsed(ob, h, pkt, from)
}

// handleParsed processes one datagram, alone or from a bundle, whose
// header h ParseHeader accepted. Caller holds mu.
func (w *Worker) handleParsed(ob *outbox, h wire.Header, pkt []byte, from *net.UDPAddr) {
	if !h.Type.IsRequest() || h.Type == wire.TypeBundle {
		w.met.drop("not_request")
		return
	}
	switch h.Type {
	case wire.TypeMapRequest:
		if h.Session == 0 || w.cfg.Auth == nil {
			// Not authenticated (section 20); without Auth the session,
			// if any, does not matter.
			w.handleMap(ob, h, pkt, from, nil)
			return
		}
	case wire.TypeSessionOpen:
		w.handleOpen(ob, h, pkt, from)
		return
	}
	s := w.knownSession(h.Session)
	if s == nil {
		w.unknownSession(ob, h, pkt, from)
		return
	}
	// Section 20: the tag is checked before the body is decoded; a bad
	// tag is dropped as an unknown session is (no reply).
	if a := w.cfg.Auth; a != nil {
		if !s.keys.macs(a, s.id) {
			w.authFail("bad_session_key", from.AddrPort(), ob.now)
			return
		}
		if !s.keys.in.Verify(pkt) {
			w.authFail("bad_tag", from.AddrPort(), ob.now)
			return
		}
	}
	switch h.Type {
	case wire.TypeMapRequest:
		w.handleMap(ob, h, pkt, from, s.keys.out) // read-only: no at-most-once state
		return
	case wire.TypeFenceProof:
		w.handleFenceProof(ob, s, h, pkt, from) // read-only, like MAP_REQUEST
		return
	}
	// At most once (invariant 4): a request below the ack is dropped (an
	// ACQUIRE or CONVERT answered UNKNOWN_REQUEST, handleToken); one
	// answered before gets the reply it had (handleToken); a replayed
	// KEEPALIVE, SESSION_CLOSE, REVOKE_ACK or GRANT_ACK is dropped.
	v, cachedPkt := s.core.Decide(h)
	switch v {
	case core.Stale:
		w.met.drop("stale")
		return
	case core.Replay:
		if h.Type == wire.TypeKeepalive {
			// A copy of a KEEPALIVE (its reply was lost) is answered
			// again, to its sender, and moves nothing: without RENEW as
			// afresh; with RENEW, once etcd renewed the lease for it, with
			// the TTL granted then (counted by the client from its first
			// send of that id, which came before the renewal: safe), and
			// renews nothing.
			var m wire.Keepalive
			renewed := h.Flags&wire.FlagRenew == 0 || s.renewedID == h.Request
			if renewed && m.Decode(h, pkt) == nil {
				var ttl uint32
				if m.Renew {
					ttl = s.renewedTTL
				}
				w.met.op(h.Type, statusDuplicate)
				ob.add(w.keepaliveReply(h, m.Entries, ttl, ob.safe, ob.stamp), from, h.Type, s.keys.out)
				return
			}
		}
		w.amet.fail("replay")
		w.met.drop("replay")
		return
	}
	// Replies go to from, the sender of this datagram. Only a request
	// applied for the first time moves s.addr, where REVOKE and
	// GRANT_ASYNC go (section 20): a replayed one, or one refused with a
	// retryable status, cannot point them elsewhere.
	switch h.Type {
	case wire.TypeKeepalive:
		w.handleKeepalive(ob, s, h, pkt, from)
	case wire.TypeSessionClose:
		w.handleClose(ob, s, h, pkt, from)
	case wire.TypeRevokeAck, wire.TypeGrantAck:
		// One-way and not cached. REVOKE_ACK stops the REVOKE with id
		// target; GRANT_ACK says the client has the outcome of queued
		// request target: its GRANT_ASYNC is not sent again, and its
		// cached outcome may go (wire/SPEC.md sections 11, 12).
		target, err := ackTarget(h, pkt)
		if err != nil {
			w.met.drop(wire.Reason(err))
			return
		}
		s.core.Ack(h.Ack, ob.now)
		s.core.Mark(h.Request)
		s.addr = from
		if h.Type == wire.TypeRevokeAck {
			s.core.AckRevoke(target)
		} else {
			s.core.AckOutcome(target)
		}
		w.trackRevokes(s)
		w.met.op(h.Type, wire.StatusOK)
	default:
		w.handleToken(ob, s, h, pkt, from, v, cachedPkt)
	}
}

// badRequest answers a request from a known session whose body does not
// decode, or that is not acceptable: BAD_REQUEST, not cached (nothing was
// applied; invariant 7), counted as a drop by reason.
func (w *Worker) badRequest(ob *outbox, s *session, h wire.Header, to *net.UDPAddr, reason string) {
	w.met.drop(reason)
	w.met.op(h.Type, wire.StatusBadRequest)
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	ob.add(errorReply(rh, wire.StatusBadRequest), to, h.Type, s.keys.out)
}

// handleToken serves ACQUIRE, RELEASE, CONVERT, CANCEL and RECLAIM; v is
// the session's verdict on h, cachedPkt the reply to resend for core.Resend
// (to from, the sender of this copy).
func (w *Worker) handleToken(ob *outbox, s *session, h wire.Header, pkt []byte, from *net.UDPAddr, v core.Verdict, cachedPkt []byte) {
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	// Invariant 5: answer nothing about tokens unless the lease is safe.
	if !ob.stamp.Before(ob.safe) {
		w.met.drop("unavailable")
		w.met.op(h.Type, wire.StatusUnavailable)
		ob.add(errorReply(rh, wire.StatusUnavailable), from, h.Type, s.keys.out)
		return
	}
	// At most once (invariant 4): a request id seen before gets the reply
	// it had (or, if still queued, its current state).
	switch v {
	case core.Reused:
		w.badRequest(ob, s, h, from, "id_reused")
		return
	case core.Resend:
		// A re-poll of a granted request gets the GRANT: its GRANT_ASYNC
		// need not be retransmitted any more.
		s.core.Repolled(h.Request)
		w.trackRevokes(s)
		w.met.op(h.Type, statusDuplicate)
		ob.add(cachedPkt, from, h.Type, s.keys.out)
		return
	case core.Unknown:
		// An ACQUIRE or CONVERT below the ack that is not cached: not
		// applied, and never to be applied under this id here. Once the
		// shard is known to be served here at that epoch (its state
		// imported if it came by a handoff, so that a waiter moved with
		// it is cached and answered above), say so: a client asking again
		// under its id a request queued at the shard's previous owner
		// sends it again under a fresh id (wire/SPEC.md section 18).
		if w.servable(ob, s, h, rh, from) == nil {
			return
		}
		w.met.drop("unknown_request")
		w.met.op(h.Type, wire.StatusUnknownRequest)
		ob.add(errorReply(rh, wire.StatusUnknownRequest), from, h.Type, s.keys.out)
		return
	}
	if h.Type == wire.TypeAcquireBatch {
		w.handleBatch(ob, s, h, rh, pkt, from)
		return
	}
	in, name, err := table.Decode(h, pkt, ob.now)
	if err != nil {
		w.badRequest(ob, s, h, from, wire.Reason(err))
		return
	}
	s.core.Ack(h.Ack, ob.now)
	if name != nil && wire.Shard(name, uint32(len(w.shards))) != h.Shard {
		w.badRequest(ob, s, h, from, "wrong_shard")
		return
	}
	st := w.servable(ob, s, h, rh, from)
	if st == nil {
		return
	}
	switch in.Op {
	case table.OpAcquire:
		// names is a sum over the session's shards: it is computed only
		// when the bound (names counted so far, releases not subtracted)
		// reaches the limit.
		if s.nameBound >= w.cfg.Limits.NamesPerSession {
			s.nameBound = w.names(s)
		}
		if s.nameBound >= w.cfg.Limits.NamesPerSession {
			w.limited(ob, h, from, limNames, s.keys.out)
			return
		}
		s.nameBound++
	case table.OpReclaim:
		s.nameBound++ // never refused: a reclaim keeps a held token (invariant 3)
	}
	in.Session, in.Req = s.id, h.Request
	s.addr = from
	rq := &reqCtx{s: s, h: h, fence: in.Fence, tgt: in.Target}
	s.shards[h.Shard] = struct{}{}
	w.out = st.tab.Step(in, ob.now, w.out[:0])
	w.apply(ob, h.Shard, st, w.out, rq)
	w.timeShard(h.Shard, st.tab)
}

// servable returns the state of the request's shard if this worker may
// apply the request to it now; otherwise it answers the retryable status
// (NOT_OWNER, STALE_EPOCH, UNAVAILABLE during a handoff, LIMIT) and
// returns nil.
func (w *Worker) servable(ob *outbox, s *session, h, rh wire.Header, from *net.UDPAddr) *shardState {
	st, status, hint := w.owner(h.Shard, h.Epoch)
	if st == nil {
		w.met.drop(label(status.String()))
		w.met.op(h.Type, status)
		ob.add(notOwnerReply(rh, status, hint), from, h.Type, s.keys.out)
		return nil
	}
	if st.tab == nil {
		// Planned handoff under way: the state comes from the previous
		// owner within pullTimeout (or the shard is recovered). Retryable.
		w.met.drop("handoff")
		w.met.op(h.Type, wire.StatusUnavailable)
		ob.add(awaitingReply(rh), from, h.Type, s.keys.out)
		return nil
	}
	if s.core.OverLimit(h) {
		w.limited(ob, h, from, limQueued, s.keys.out)
		return nil
	}
	return st
}

// statusDuplicate labels replies resent from the reply cache.
const statusDuplicate = wire.Status(254)

// handleKeepalive answers a KEEPALIVE: per entry whether this worker serves
// that shard at that epoch, and for how long it vouches. With RENEW the
// session's etcd lease is renewed first, off the receive loop.
func (w *Worker) handleKeepalive(ob *outbox, s *session, h wire.Header, pkt []byte, from *net.UDPAddr) {
	var m wire.Keepalive
	if err := m.Decode(h, pkt); err != nil {
		w.badRequest(ob, s, h, from, wire.Reason(err))
		return
	}
	s.core.Ack(h.Ack, ob.now)
	if m.Done != 0 {
		// The session finished its reclaims here as of map m.Done
		// (SPEC §13): it may end recoveries' grace periods early.
		w.endEarly(ob, w.gt.Done(s.id, m.Done, w.ended[:0]))
	}
	if !m.Renew {
		s.core.Mark(h.Request)
		s.addr = from
		ob.add(w.keepaliveReply(h, m.Entries, 0, ob.safe, ob.stamp), from, h.Type, s.keys.out)
		return
	}
	if s.renewing == h.Request {
		return // a retransmission: answered when etcd answers
	}
	entries := append([]wire.ShardEpoch(nil), m.Entries...)
	stamp, lease := ob.stamp, s.lease
	if !w.enqueue(func(ctx context.Context) { w.renewSession(ctx, s.id, lease, h, entries, stamp) }) {
		w.met.drop("busy")
		return
	}
	s.core.Mark(h.Request) // applied: a copy of it renews nothing (section 20)
	s.addr = from
	s.renewing = h.Request
}

// keepaliveReply encodes a KEEPALIVE reply. Caller holds mu.
func (w *Worker) keepaliveReply(h wire.Header, entries []wire.ShardEpoch, ttlMs uint32, safe, now time.Time) []byte {
	r := wire.KeepaliveReply{SessionTTLMs: ttlMs, ValidityMs: validity(safe, now),
		Statuses: make([]wire.Status, len(entries))}
	for i, e := range entries {
		_, r.Statuses[i], _ = w.owner(e.Shard, e.Epoch)
	}
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	pkt, err := r.Append(make([]byte, 0, wire.HeaderLen+10+len(entries)), rh)
	if err != nil {
		w.log.Error("cannot encode KEEPALIVE reply", "err", err)
		return nil
	}
	w.met.op(h.Type, wire.StatusOK)
	return pkt
}

// handleClose revokes the session's lease (off the receive loop); every
// worker then drops its grants.
func (w *Worker) handleClose(ob *outbox, s *session, h wire.Header, pkt []byte, from *net.UDPAddr) {
	var m wire.Empty
	if err := m.Decode(h, pkt); err != nil {
		w.badRequest(ob, s, h, from, wire.Reason(err))
		return
	}
	s.core.Ack(h.Ack, ob.now)
	if s.closing {
		return // answered when etcd answers
	}
	stamp, lease := ob.stamp, s.lease
	if !w.enqueue(func(ctx context.Context) { w.closeSession(ctx, s, lease, h, stamp) }) {
		w.met.drop("busy")
		return
	}
	s.core.Mark(h.Request)
	s.addr = from
	s.closing = true
}

// msgNeedKey answers an open without a key name at a worker that
// authenticates.
const msgNeedKey = "this cluster requires a client key; see docs/SECURITY.md"

// handleOpen opens a session (wire/SPEC.md section 20): with Auth, a
// cookie first, then the checks of the open with cookie; retransmissions
// answered from the table of recent opens; the rate and size limits; then
// the etcd work, done off the receive loop.
func (w *Worker) handleOpen(ob *outbox, h wire.Header, pkt []byte, from *net.UDPAddr) {
	var m wire.SessionOpen
	if err := m.Decode(h, pkt); err != nil {
		w.met.drop(wire.Reason(err))
		return
	}
	ap := from.AddrPort()
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	job := openJob{from: from, h: h, ttlMs: m.TTLMs, lib: string(m.Lib), stamp: ob.stamp,
		key: openKey{from: ap, req: h.Request}, bundle: m.Bundle && !w.cfg.NoBundle}
	var errMAC *auth.MAC // seals error replies: the open key's, worker to client
	if a := w.cfg.Auth; a != nil {
		name := string(m.KeyName)
		if name == "" {
			// Unauthenticated, like a COOKIE reply: no state, no etcd.
			w.met.drop("no_key")
			if !w.guard.noKeyRate.Allow(ob.now) {
				return
			}
			w.met.op(h.Type, wire.StatusBadRequest)
			ob.add(textReply(rh, wire.StatusBadRequest, msgNeedKey), from, h.Type, nil)
			return
		}
		now := w.cookieNow(ob.now)
		if len(m.Cookie) == 0 {
			w.sendCookie(ob, rh, from, now, m.Nonce, name)
			return
		}
		ck, ok := a.Keys.ClientKey(name)
		if !ok {
			w.authFail("unknown_key", ap, ob.now)
			return
		}
		openK := auth.OpenKey(ck)
		if !auth.NewMAC(openK, auth.ClientToWorker).Verify(pkt) {
			w.authFail("bad_tag", ap, ob.now)
			return
		}
		switch err := w.guard.cookies.Check(now, ap, m.Nonce, name, m.Cookie); {
		case errors.Is(err, auth.ErrCookieExpired):
			w.sendCookie(ob, rh, from, now, m.Nonce, name)
			return
		case err != nil:
			w.authFail("bad_cookie", ap, ob.now)
			return
		}
		errMAC = auth.NewMAC(openK, auth.WorkerToClient)
		job.key = openKey{name: name, nonce: m.Nonce}
		job.auth, job.clientKey, job.nonce, job.keyName = true, ck, m.Nonce, name
	}
	if o, ok := w.guard.recent.Get(job.key, ob.now); ok {
		if o.pkt != nil {
			w.met.op(h.Type, statusDuplicate)
			ob.add(o.pkt, from, h.Type, nil) // sealed when made
		}
		return // still in the works: the reply comes when etcd answers
	}
	if lim := w.openLimit(ap.Addr(), ob.now); lim != "" {
		w.limited(ob, h, from, lim, errMAC)
		return
	}
	if len(w.sessions) >= w.cfg.Limits.Sessions {
		w.limited(ob, h, from, limSessions, errMAC)
		return
	}
	if !w.guard.recent.Put(job.key, &openState{}, ob.now, ob.now+int64(openRemember)) {
		w.limited(ob, h, from, limRecent, errMAC)
		return
	}
	if !w.enqueueOpen(func(ctx context.Context) { w.openSession(ctx, job) }) {
		w.guard.recent.Delete(job.key)
		w.met.drop("busy")
		return
	}
}

// sendCookie answers a SESSION_OPEN with a fresh cookie (unauthenticated;
// nothing kept). Caller holds mu.
func (w *Worker) sendCookie(ob *outbox, rh wire.Header, from *net.UDPAddr, now uint32, nonce auth.Nonce, name string) {
	c := wire.Cookie{Cookie: w.guard.cookies.Mint(now, from.AddrPort(), nonce, name)}
	pkt, err := c.Append(make([]byte, 0, wire.HeaderLen+1+wire.CookieLen), rh)
	if err != nil {
		return
	}
	w.met.op(wire.TypeSessionOpen, wire.StatusCookie)
	ob.add(pkt, from, wire.TypeSessionOpen, nil)
}

// unknownSession handles a request from a session this worker does not
// know. An ended one (remembered with its key) is answered
// SESSION_EXPIRED, authenticated. Otherwise the datagram is dropped, and
// the session looked up in etcd (a new session may not have reached the
// watch yet), within the lookup rate and unless it was just looked up in
// vain: the client's retransmission finds the session. Without Auth a
// lookup that finds nothing answers UNKNOWN_SESSION; with Auth an unknown
// session is silence, as a bad tag is (section 20).
func (w *Worker) unknownSession(ob *outbox, h wire.Header, pkt []byte, from *net.UDPAddr) {
	ap := from.AddrPort()
	if t := w.gone[h.Session]; t != nil {
		var out *auth.MAC
		if a := w.cfg.Auth; a != nil {
			if !t.keys.macs(a, h.Session) {
				w.authFail("unknown_session", ap, ob.now)
				return
			}
			if !t.keys.in.Verify(pkt) {
				w.authFail("bad_tag", ap, ob.now)
				return
			}
			out = t.keys.out
		}
		if h.Type == wire.TypeRevokeAck || h.Type == wire.TypeGrantAck {
			w.met.drop("session_expired")
			return
		}
		rh := h.Reply()
		rh.MapVersion = w.dmap.Version
		w.met.drop("session_expired")
		w.met.op(h.Type, wire.StatusSessionExpired)
		ob.add(errorReply(rh, wire.StatusSessionExpired), from, h.Type, out)
		return
	}
	if w.cfg.Auth != nil {
		w.authFail("unknown_session", ap, ob.now)
	} else {
		w.met.drop("unknown_session")
	}
	if h.Type == wire.TypeRevokeAck || h.Type == wire.TypeGrantAck {
		return
	}
	if _, ok := w.lookups[h.Session]; ok || len(w.lookups) >= maxLookups {
		return
	}
	if until, ok := w.guard.negative[h.Session]; ok && until > ob.now {
		return
	}
	if !w.guard.lookupRate.Allow(ob.now) {
		return
	}
	stamp := ob.stamp
	if w.enqueue(func(ctx context.Context) { w.lookupSession(ctx, h, from, stamp) }) {
		w.lookups[h.Session] = struct{}{}
	}
}

// names is the number of names s holds or waits for in this worker's
// shards. Caller holds mu.
func (w *Worker) names(s *session) int {
	n := 0
	for shard := range s.shards {
		if st := w.shards[shard]; st != nil && st.tab != nil {
			n += st.tab.SessionLoad(s.id)
		}
	}
	return n
}

// handleMap answers MAP_REQUEST from the current map (never cached),
// sealed with mac for a request of a session (nil for session 0).
func (w *Worker) handleMap(ob *outbox, h wire.Header, pkt []byte, from *net.UDPAddr, mac *auth.MAC) {
	var m wire.MapRequest
	if err := m.Decode(h, pkt); err != nil {
		w.met.drop(wire.Reason(err))
		return
	}
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	pkt, err := w.mapReply(m.FirstShard).Append(make([]byte, 0, wire.MaxDatagram), rh)
	if err != nil {
		w.log.Error("cannot encode MAP reply", "err", err)
		return
	}
	w.met.op(h.Type, wire.StatusOK)
	ob.add(pkt, from, h.Type, mac)
}

// mapReply describes the map from shard first on, as many runs as fit in
// one datagram. A run whose owner's address is unknown (not registered
// now) is sent as "no owner" (SPEC §15): the client waits and asks again.
func (w *Worker) mapReply(first uint32) wire.MapReply {
	return delegation.Page(w.dmap, w.runs, uint32(len(w.shards)), first, uint32(w.cluster.GraceMs), w.addrOf)
}

// ackTarget decodes a REVOKE_ACK or GRANT_ACK body: the request id it
// acknowledges.
func ackTarget(h wire.Header, pkt []byte) (uint64, error) {
	if h.Type == wire.TypeGrantAck {
		var m wire.GrantAck
		err := m.Decode(h, pkt)
		return m.Target, err
	}
	var m wire.RevokeAck
	err := m.Decode(h, pkt)
	return m.Target, err
}
