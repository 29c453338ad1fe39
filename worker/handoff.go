package worker

// Planned handoff (wire/SPEC.md section 18): when the map moves a shard from
// a live worker A to a worker B, A stops serving it at once and keeps the
// table's final state (table.Export, plus the reply-cache entries of the
// shard) for a while; B, instead of a grace period, pulls that state from A
// over TCP and continues the table under the new epoch (table.Import). If
// the pull fails for any reason, B recovers the shard with a grace period
// long enough to cover everything A may have vouched for: safety never
// depends on the handoff.
//
// Protocol 2 also moves the queued requests: A sends the table's waiters,
// in arrival order, and the outcomes of requests answered QUEUED that the
// client has not acknowledged yet; B queues the waiters again under the
// same (session, request id) and caches them as requests answered QUEUED,
// so that the client's re-poll under the same id at B finds its place.
// Protocol 1 (a peer of an earlier version) leaves them behind.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/cluster/handoffauth"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/worker/ownership"
	core "github.com/tokend/tokend/worker/session" // named core: the shell's own per-session type is session
	"github.com/tokend/tokend/worker/table"
)

const (
	// handoffProto is the newest version of the pull protocol this worker
	// speaks, and the one its pulls ask first; handoffProtoMin the oldest
	// it still answers and falls back to (wire/SPEC.md section 18).
	handoffProto    = 2
	handoffProtoMin = 1
	// challengeProto is the proto of the authentication challenge, the
	// same whatever the pull's version (the detector's queries share it).
	challengeProto = 1
	// pullTimeout bounds a new owner's wait for the old owner's state,
	// retries included; then it recovers the shards with a grace period.
	pullTimeout = 2 * time.Second
	// pullRetry is the pause between attempts of a pull.
	pullRetry = 100 * time.Millisecond
	// mapWait is how long the old owner waits for its own map to catch up
	// with the requester's before answering.
	mapWait = time.Second
	// connTimeout bounds one connection of the handoff server, from
	// accept to the answer's last byte; handshakeTimeout and idleTimeout
	// (handoff_auth.go) bound its parts.
	connTimeout = 5 * time.Second
	// maxPullRequest and maxPullResponse bound the frames of the protocol.
	maxPullRequest  = 1 << 20
	maxPullResponse = handoffauth.MaxFrame
	// maxHandoffConns bounds the connections served at once.
	maxHandoffConns = 16
	// outstandingFor is how long after giving a shard up Drain waits for
	// the new owner to pull it: the new owner gives up after pullTimeout.
	outstandingFor = pullTimeout + time.Second
)

// outHandoff is the final state of a shard this worker gave up, kept for
// its new owner to pull.
type outHandoff struct {
	epoch   uint32           // the new owner's epoch
	to      delegation.Owner // the new owner
	snap    *table.Snapshot
	replies []handoffReply
	created int64 // tables' clock
	expires int64
	pulled  bool
}

// handoffReply is one final reply-cache entry of a shard handed off, so
// that a retransmitted request gets the answer it had at the old owner
// (invariant 4) instead of being applied again at the new one.
type handoffReply struct {
	Session uint64    `json:"session"`
	Req     uint64    `json:"req"`
	Type    wire.Type `json:"type"`
	Fence   uint64    `json:"fence,omitempty"`
	Pkt     []byte    `json:"pkt"`
	// Exempt (protocol 2): the outcome of a request answered QUEUED that
	// the client has not acknowledged (GRANT_ACK): the new owner keeps it
	// whatever the session's ack, as the old owner did.
	Exempt bool `json:"exempt,omitempty"`
}

// pullRequest is what a new owner sends.
type pullRequest struct {
	Proto       int           `json:"proto"`
	From        string        `json:"from"`        // requester's id
	Incarnation string        `json:"incarnation"` // requester's incarnation (hex)
	ToID        string        `json:"to_id"`       // the old owner's id
	To          string        `json:"to"`          // the old owner's incarnation the requester means (hex)
	MapVersion  uint64        `json:"map_version"` // the map that moved the shards
	Shards      []shardEpochJ `json:"shards"`
	// Deadlock, if set, makes this the leader's deadlock detector asking
	// (wire/SPEC.md section 19), not a pull; see deadlock.go.
	Deadlock *cluster.DeadlockQuery `json:"deadlock,omitempty"`
	// Nonce is the requester's nonce: the request is authenticated
	// (handoff_auth.go). Required, of a pull and of a deadlock query,
	// when the worker asked runs with Auth.
	Nonce []byte `json:"nonce,omitempty"`
}

type shardEpochJ struct {
	Shard uint32 `json:"shard"`
	Epoch uint32 `json:"epoch"` // the new epoch
}

// pullResponse is what the old owner answers.
type pullResponse struct {
	Proto int `json:"proto"` // the request's, or (with Error) the newest the old owner speaks
	// Clock (protocol 2) is the old owner's table clock (ns) when it
	// answered: the waiters' deadlines are on it (table.Snapshot.Rebase).
	Clock      int64           `json:"clock,omitempty"`
	Error      string          `json:"error,omitempty"` // the whole request is refused
	Retry      bool            `json:"retry,omitempty"` // ... for now: ask again (the old owner's map is behind)
	MapVersion uint64          `json:"map_version"`
	Shards     []shardHandoffJ `json:"shards"`
}

type shardHandoffJ struct {
	Shard   uint32          `json:"shard"`
	Epoch   uint32          `json:"epoch"`
	OK      bool            `json:"ok"` // false: nothing to hand over for that shard and epoch
	Snap    *table.Snapshot `json:"snap,omitempty"`
	Replies []handoffReply  `json:"replies,omitempty"`
}

// pullBatch is one pull: every shard a map change moved from one old owner
// to this worker.
type pullBatch struct {
	from       delegation.Owner
	addr       string // its handoff address
	ttl        time.Duration
	mapVersion uint64
	shards     []shardEpochJ
	started    time.Time
}

// ---- old owner ----

// keepForHandoff keeps the final state of shard st, which ownership.Apply
// decided to hand off to the owner to at the next epoch, for that owner to
// pull. Caller holds mu.
func (w *Worker) keepForHandoff(ob *outbox, shard uint32, st *shardState, to delegation.Owner) *outHandoff {
	snap, err := st.tab.Export()
	if err != nil {
		// In grace: the new owner recovers it. (ErrEnding cannot happen:
		// applyMap finished the shard's pending ends first.)
		return nil
	}
	// The waiters stay in the snapshot: a pull of protocol 2 takes them
	// (their deadlines are in this worker's clock: answerPull says when it
	// answers), one of protocol 1 leaves them behind.
	keep := max(2*w.cluster.SessionTTL(), outstandingFor)
	oh := &outHandoff{epoch: st.epoch + 1, to: to, snap: snap, created: ob.now, expires: ob.now + int64(keep)}
	w.outgoing[shard] = oh
	return oh
}

// handoffTop is the newest pull protocol this worker speaks: handoffProto,
// unless Config.HandoffProto (or a test) caps it.
func (w *Worker) handoffTop() int {
	if m := int(w.handoffMax.Load()); m != 0 {
		return m
	}
	if w.cfg.HandoffProto != 0 {
		return w.cfg.HandoffProto
	}
	return handoffProto
}

// expireHandoffs forgets kept states past their time. Caller holds mu.
func (w *Worker) expireHandoffs(now int64) {
	for s, oh := range w.outgoing {
		if oh.expires <= now {
			delete(w.outgoing, s)
		}
	}
}

// outstandingHandoffs counts the kept states a new owner may still pull:
// not pulled yet and younger than outstandingFor. Caller holds mu.
func (w *Worker) outstandingHandoffs(now int64) int {
	n := 0
	for _, oh := range w.outgoing {
		if !oh.pulled && now-oh.created < int64(outstandingFor) {
			n++
		}
	}
	return n
}

// handoffServer accepts pulls until ctx ends. It returns once every
// goroutine it started has.
func (w *Worker) handoffServer(ctx context.Context, ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, maxHandoffConns) // bounds the connections served at once
	done := make(chan struct{})
	defer close(done) // before wg.Wait: ends the closer below
	wg.Go(func() {
		select {
		case <-ctx.Done():
			ln.Close() // wakes Accept
		case <-done:
		}
	})
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			w.log.Warn("handoff accept failed", "err", err)
			if !wait(ctx, w.clk, 50*time.Millisecond) {
				return
			}
			continue
		}
		// Refused connections are closed at once: a new owner retries.
		g, ip := w.met.ho, remoteIP(c)
		if !g.admit(ip) {
			c.Close()
			g.refused.WithLabelValues(refusedPeer).Inc()
			g.warn(w.log, w.clk.Now(), ip.String(), "handoff connection refused: too many from one address", "limit", maxPeerConns)
			continue
		}
		leave := sync.OnceFunc(func() { g.leave(ip) })
		select {
		case sem <- struct{}{}:
		default:
			// Full: the connection longest in its handshake makes room
			// (its goroutine ends at once); if every connection is past
			// its handshake, this one is refused.
			if !g.evictOldest() {
				leave()
				c.Close()
				g.refused.WithLabelValues(refusedGlobal).Inc()
				g.warn(w.log, w.clk.Now(), "*", "handoff connection refused: too many at once", "limit", maxHandoffConns, "from", ip)
				continue
			}
			g.warn(w.log, w.clk.Now(), "*", "handoff connection in its handshake closed for a new one: too many at once",
				"limit", maxHandoffConns, "from", ip)
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				leave()
				c.Close()
				return
			}
		}
		hs := g.begin(c)
		passed := func() {
			g.end(hs)
			if w.cfg.Auth != nil {
				leave()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer leave()
			defer g.end(hs)
			w.serveHandoff(ctx, c, passed)
		}()
	}
}

// serveHandoff answers one pull or deadlock-detector query on c. With
// Auth it first authenticates the asker, whichever it is, and seals its
// answer. It calls passed once the handshake
// is over: the request read and, with Auth, the requester authenticated.
func (w *Worker) serveHandoff(ctx context.Context, c net.Conn, passed func()) {
	defer c.Close()
	// Socket deadlines are the kernel's: real time.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	start := time.Now()
	tc := &timeoutConn{Conn: c, done: func() bool { return ctx.Err() != nil }, idle: idleTimeout, end: start.Add(handshakeTimeout)}
	br := bufio.NewReader(tc)
	g, src := w.met.ho, remoteIP(c).String()
	var req pullRequest
	reqFrame, err := handoffauth.ReadRawFrame(br, maxPullRequest)
	if err == nil {
		err = handoffauth.UnmarshalFrame(reqFrame, &req)
	}
	if err != nil {
		switch {
		case isTimeout(err):
			g.refused.WithLabelValues(refusedTimeout).Inc()
		case errors.Is(err, handoffauth.ErrFrame):
			g.refused.WithLabelValues(refusedBad).Inc()
		}
		w.log.Debug("no handoff request", "from", c.RemoteAddr(), "err", err)
		return
	}
	if w.cfg.Auth == nil && req.Deadlock != nil && len(req.Nonce) == 0 {
		// The leader's detector of an --insecure cluster (section 19).
		tc.end = start.Add(connTimeout)
		w.serveDeadlock(tc, &req)
		return
	}
	var key, giverNonce []byte
	if w.cfg.Auth != nil {
		var ok bool
		if key, giverNonce, ok = w.authAsker(tc, br, reqFrame, &req, src); !ok {
			return
		}
	}
	passed()
	tc.end = start.Add(connTimeout)
	var (
		resp *pullResponse
		ans  any
	)
	if req.Deadlock != nil {
		ans = w.answerDeadlock(req.Proto, req.Deadlock, w.clk.Now())
	} else {
		resp = w.answerPull(ctx, &req)
		ans = resp
	}
	frame, err := handoffauth.MarshalFrame(ans)
	if err == nil && key != nil {
		var seal []byte
		seal, err = handoffauth.MarshalFrame(handoffauth.Seal{MAC: handoffauth.MAC(key, handoffauth.DirAnswerer, req.Nonce, giverNonce, reqFrame, frame)})
		frame = append(frame, seal...)
	}
	n := 0
	if err == nil {
		n, err = tc.Write(frame)
	}
	if err != nil {
		w.log.Warn("handoff answer not sent", "to", req.From, "err", err)
		return
	}
	if resp == nil {
		return
	}
	sent := 0
	for _, s := range resp.Shards {
		if s.OK {
			sent++
		}
	}
	w.met.handoffBytes.WithLabelValues("out").Add(float64(n))
	w.met.handoffsOut.Add(float64(sent))
	w.log.Info("handed shards off", "to", req.From, "shards", sent, "asked", len(req.Shards), "bytes", n)
}

// answerPull builds the answer to req: the kept state of each shard asked
// for, if this incarnation gave it to the requester at that epoch. It first
// waits (up to mapWait) for this worker's map to reach the requester's.
func (w *Worker) answerPull(ctx context.Context, req *pullRequest) *pullResponse {
	resp := &pullResponse{Proto: req.Proto}
	if top := w.handoffTop(); req.Proto < handoffProtoMin || req.Proto > top {
		// As a worker of protocol 1 only answered: naming the newest it
		// speaks, so that a newer requester asks again in that one.
		resp.Proto, resp.Error = top, protoRefusal(req.Proto)
		return resp
	}
	if len(req.Shards) > delegation.MaxShards {
		resp.Error = "too many shards"
		return resp
	}
	deadline := w.clk.Now().Add(mapWait)
	w.mu.Lock()
	for w.dmap.Version < req.MapVersion && w.clk.Now().Before(deadline) {
		ch := w.mapCh
		w.mu.Unlock()
		t, tc := w.clk.NewTimer(deadline.Sub(w.clk.Now()))
		select {
		case <-ch:
		case <-tc:
		case <-ctx.Done():
		}
		t.Stop()
		w.mu.Lock()
		if ctx.Err() != nil {
			break
		}
	}
	defer w.mu.Unlock()
	resp.MapVersion = w.dmap.Version
	switch {
	case w.me == (delegation.Owner{}) || req.To != formatInc(w.me.Incarnation) || (req.ToID != "" && req.ToID != w.me.ID):
		resp.Error = "not that incarnation"
		return resp
	case !w.clk.Now().Before(w.safeUntil()):
		// Invariant 5: a worker that cannot vouch for its lease may have
		// lost it; the leader may have treated the move as a recovery.
		resp.Error = "lease not safe"
		return resp
	case w.dmap.Version < req.MapVersion:
		resp.Error, resp.Retry = "map not caught up", true
		return resp
	}
	inc, err := parseInc(req.Incarnation)
	if err != nil {
		resp.Error = "bad incarnation"
		return resp
	}
	to := delegation.Owner{ID: req.From, Incarnation: inc}
	if req.Proto >= 2 {
		resp.Clock = w.mono(w.clk.Now())
	}
	for _, se := range req.Shards {
		sh := shardHandoffJ{Shard: se.Shard, Epoch: se.Epoch}
		if oh := w.outgoing[se.Shard]; oh != nil && oh.epoch == se.Epoch && oh.to == to {
			sh.OK, sh.Snap, sh.Replies = true, oh.snap, oh.replies
			if req.Proto < 2 && len(oh.snap.Waiters) > 0 {
				// Protocol 1 leaves the queued requests behind (their
				// clients send them again under fresh ids).
				snap := *oh.snap
				snap.Waiters = nil
				sh.Snap = &snap
			}
			oh.pulled = true
		}
		resp.Shards = append(resp.Shards, sh)
	}
	return resp
}

// ---- new owner ----

// pullable returns the registration of owner o if it is registered under
// that incarnation with a handoff address. Caller holds mu.
func (w *Worker) pullable(o delegation.Owner) (cluster.Worker, bool) {
	r, ok := w.registry[o.ID]
	if !ok || r.Incarnation != formatInc(o.Incarnation) || r.Handoff == "" {
		return cluster.Worker{}, false
	}
	return r, true
}

// pullLoop starts the pulls that map changes queue, one goroutine per
// batch, until ctx ends.
func (w *Worker) pullLoop(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.pullKick:
		}
		w.mu.Lock()
		batches := w.pulls
		w.pulls = nil
		w.mu.Unlock()
		for _, b := range batches {
			wg.Add(1)
			go func() { defer wg.Done(); w.pull(ctx, b) }()
		}
	}
}

// pull asks b's old owner for the shards' state, retrying until
// pullTimeout, and then imports it or recovers the shards.
func (w *Worker) pull(ctx context.Context, b *pullBatch) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t := w.clk.AfterFunc(pullTimeout-w.clk.Since(b.started), func() { cancel(context.DeadlineExceeded) })
	defer t.Stop()
	w.mu.Lock()
	req := &pullRequest{Proto: w.handoffTop(), From: w.me.ID, Incarnation: formatInc(w.me.Incarnation),
		ToID: b.from.ID, To: formatInc(b.from.Incarnation), MapVersion: b.mapVersion, Shards: b.shards}
	w.mu.Unlock()
	var key []byte
	if w.cfg.Auth != nil {
		key = handoffauth.Key(w.cfg.Auth.ClusterKey)
	}
	var (
		resp  *pullResponse
		n, nn int
		err   error
		gone  bool
	)
	for {
		resp, nn, err = pullOnce(ctx, b.addr, req, key)
		n += nn
		if pd := (*protoDowngrade)(nil); errors.As(err, &pd) && ctx.Err() == nil {
			// A mixed pair: the old owner is of an earlier version.
			w.log.Info("handoff: the old owner speaks an older protocol; asking in it", "from", b.from.String(),
				"proto", pd.proto, "asked", req.Proto)
			req.Proto = pd.proto
			continue
		}
		if err == nil || errors.Is(err, errHandoffRefused) || ctx.Err() != nil {
			break
		}
		// An old owner whose registration is gone has stopped vouching
		// for anything (its lease expired, or it stopped serving before
		// revoking it): recover at once, as after a crash.
		if gone = !w.registered(b.from); gone {
			break
		}
		if !wait(ctx, w.clk, pullRetry) {
			break
		}
	}
	if err == nil && ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	var af *authFailure
	if errors.As(err, &af) {
		g := w.met.ho
		g.authFailures.WithLabelValues(af.reason).Inc()
		g.warn(w.log, w.clk.Now(), b.addr, "handoff answer refused: not authenticated", "reason", af.reason, "from", b.from.String())
	}
	w.met.handoffBytes.WithLabelValues("in").Add(float64(n))
	w.finishPull(b, resp, err, gone)
}

// registered reports whether incarnation o is registered now.
func (w *Worker) registered(o delegation.Owner) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.registry[o.ID]
	return ok && r.Incarnation == formatInc(o.Incarnation)
}

// finishPull ends the wait of b's shards that still await it: each is
// imported from the answer, or, failing that, recovered with a grace period
// that covers what the old owner may still have vouched for. Shards the map
// has moved on meanwhile are left alone.
func (w *Worker) finishPull(b *pullBatch, resp *pullResponse, perr error, gone bool) {
	got := map[uint32]*shardHandoffJ{}
	if resp != nil {
		for i := range resp.Shards {
			got[resp.Shards[i].Shard] = &resp.Shards[i]
		}
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	var imported, recovered, tokens int
	for _, se := range b.shards {
		st := w.shardAt(se.Shard)
		if st == nil || st.tab != nil || st.epoch != se.Epoch || st.from != b.from {
			continue // no longer waiting for this
		}
		var why error
		if sh := got[se.Shard]; sh == nil || !sh.OK || sh.Epoch != se.Epoch || sh.Snap == nil {
			why = perr
			if why == nil {
				why = errHandoffNothing
			}
		} else if sh.Snap.Epoch != se.Epoch-1 {
			why = fmt.Errorf("snapshot of epoch %d, want %d", sh.Snap.Epoch, se.Epoch-1)
		} else if tab, err := table.Import(movedWaiters(resp.Proto, resp.Clock, ob.now, sh.Snap), se.Epoch, w.cfg.Table); err != nil {
			why = err
		} else {
			st.tab, st.from = tab, delegation.Owner{}
			w.adoptSessions(ob, se.Shard, st, sh)
			if len(sh.Snap.Waiters) > 0 {
				// The holders that block moved requests are revoked
				// again: the old owner's REVOKEs stopped with the move.
				w.out = tab.Revokes(w.out[:0])
				w.apply(ob, se.Shard, st, w.out, nil)
			}
			w.timeShard(se.Shard, tab)
			imported++
			tokens += tab.Stats().Grants
			continue
		}
		// Fallback: recover, with a grace period that outlasts what the old
		// owner may still vouch for (ownership.FallbackGraceEnd).
		end := ownership.FallbackGraceEnd(ob.now, int64(b.ttl), int64(w.cluster.Grace()), gone)
		grace := time.Duration(end - ob.now)
		tab, err := table.NewRecovering(se.Epoch, end, w.cfg.Table)
		if err != nil {
			w.log.Error("cannot start shard", "shard", se.Shard, "epoch", se.Epoch, "err", err)
			w.shards[se.Shard] = nil
			continue
		}
		st.tab, st.from = tab, delegation.Owner{}
		w.timeShard(se.Shard, tab)
		w.met.recoveries.Inc()
		recovered++
		if recovered == 1 {
			w.log.Warn("handoff failed; recovering with a grace period", "from", b.from.String(), "shard", se.Shard,
				"epoch", se.Epoch, "grace", grace, "err", why)
		}
	}
	w.mu.Unlock()
	w.flush(ob)
	el := w.clk.Since(b.started)
	if imported > 0 {
		w.met.handoffsIn.WithLabelValues("imported").Add(float64(imported))
		w.met.handoffDur.Observe(el.Seconds())
		w.log.Info("shards handed over", "from", b.from.String(), "shards", imported, "grants", tokens, "took", el)
	}
	if recovered > 0 {
		w.met.handoffsIn.WithLabelValues("recovered").Add(float64(recovered))
		w.log.Warn("shards recovered after a failed handoff", "from", b.from.String(), "shards", recovered, "took", el)
	}
}

func (w *Worker) shardAt(shard uint32) *shardState {
	if int(shard) >= len(w.shards) {
		return nil
	}
	return w.shards[shard]
}

// adoptSessions ties the sessions of an imported shard to this worker: a
// session already ended here ends in the table too; one not known yet is
// created and checked in etcd (it may have ended before this worker
// started watching). Then the reply-cache entries come over, re-sealed for
// the new epoch, with a validity no longer than this worker can vouch for,
// and each queued request moved with the shard (protocol 2) is cached as
// a request answered QUEUED, whatever the session's ack: a re-poll under
// its id is answered QUEUED (with its place), and its outcome settles it
// as if it had queued here (wire/SPEC.md section 18). Caller holds mu.
func (w *Worker) adoptSessions(ob *outbox, shard uint32, st *shardState, sh *shardHandoffJ) {
	ids := map[uint64]bool{}
	for _, tok := range sh.Snap.Tokens {
		for _, g := range tok.Grants {
			ids[g.Session] = true
		}
	}
	for _, ws := range sh.Snap.Waiters {
		ids[ws.Session] = true
	}
	for id := range ids {
		if _, gone := w.gone[id]; gone {
			w.endTables(ob, id, map[uint32]struct{}{shard: {}})
			continue
		}
		s := w.sessions[id]
		if s == nil {
			s = w.newSession(id, nil)
			w.sessions[id] = s
			w.enqueue(func(ctx context.Context) { w.checkSession(ctx, id) })
		}
		s.shards[shard] = struct{}{}
	}
	v := validity(ob.safe, ob.stamp)
	for _, r := range sh.Replies {
		s := w.sessions[r.Session]
		if s == nil {
			continue
		}
		if _, cached := s.core.Entry(r.Req); cached {
			continue
		}
		below := s.core.Known(r.Req) // not cached: below the ack
		if below && !r.Exempt {
			continue // finished at the client
		}
		pkt, err := reseal(r.Pkt, r, shard, st.epoch, w.dmap.Version, v)
		if err != nil {
			w.met.drop("handoff_reply")
			continue
		}
		e := core.Entry{Type: r.Type, Shard: shard, Fence: r.Fence, Pkt: pkt, Exempt: r.Exempt}
		if below {
			e.Expire = ob.now + core.Linger
		}
		s.core.Adopt(r.Req, e)
	}
	for _, ws := range sh.Snap.Waiters {
		s := w.sessions[ws.Session]
		if s == nil {
			continue // ended: its waiters are gone from the table
		}
		pos, ok := st.tab.Queued(ws.Session, ws.Req)
		if !ok {
			continue
		}
		if _, cached := s.core.Entry(ws.Req); cached {
			continue
		}
		typ := wire.TypeAcquire
		if ws.Conv != 0 {
			typ = wire.TypeConvert
		}
		h := wire.Header{Type: typ.Reply(), Status: wire.StatusQueued, Session: ws.Session, Request: ws.Req,
			Shard: shard, Epoch: st.epoch, MapVersion: w.dmap.Version}
		pkt, err := wire.Queued{Position: pos - 1}.Append(make([]byte, 0, wire.HeaderLen+4), h)
		if err != nil {
			w.met.drop("handoff_waiter")
			continue
		}
		s.core.Adopt(ws.Req, core.Entry{Type: typ, Shard: shard, Fence: ws.Conv, Pending: true, Exempt: true, Pkt: pkt})
	}
}

// checkSession ends a session adopted with a handed-off shard if its key
// is gone from etcd.
func (w *Worker) checkSession(ctx context.Context, id uint64) {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	resp, err := w.cfg.Client.Get(ctx, cluster.ClientKey(id))
	cancel()
	if err != nil || len(resp.Kvs) > 0 {
		return
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	w.endSession(ob, id)
	w.mu.Unlock()
	w.flush(ob)
}

// movedWaiters readies the queued requests of a snapshot pulled in
// protocol proto for this worker's table: under protocol 1 they stay
// behind, whatever a peer sent; under 2 their deadlines move from the old
// owner's clock (its reading clock when it answered) to this worker's
// (now, when the answer is imported: the time on the way only lengthens
// their waits, by as much).
func movedWaiters(proto int, clock, now int64, s *table.Snapshot) *table.Snapshot {
	if proto < 2 {
		s.Waiters = nil
		return s
	}
	s.Rebase(now - clock)
	return s
}

// reseal turns a cached reply of the old owner into this worker's: the
// same answer to the same request, under the shard's new epoch and this
// worker's map version, a GRANT's validity capped at what this worker
// vouches for now. It checks that pkt is what r says it is (the input
// comes from the network: invariant 7).
func reseal(pkt []byte, r handoffReply, shard, epoch uint32, mapVersion uint64, validityMs uint32) ([]byte, error) {
	h, err := wire.ParseHeader(pkt)
	if err != nil {
		return nil, err
	}
	if !r.Type.IsRequest() || h.Type != r.Type.Reply() || h.Session != r.Session || h.Request != r.Req ||
		h.Shard != shard || h.Status.Retryable() || h.Status == wire.StatusQueued {
		return nil, errHandoffFrame
	}
	h.Epoch, h.MapVersion = epoch, mapVersion
	if h.Kind() == wire.KindGrant {
		var g wire.Grant
		if err := g.Decode(h, pkt); err != nil {
			return nil, err
		}
		g.ValidityMs = min(g.ValidityMs, validityMs)
		return g.Append(make([]byte, 0, len(pkt)), h)
	}
	out := append(wire.AppendHeader(make([]byte, 0, len(pkt)), h), pkt[wire.HeaderLen:]...)
	if err := wire.Seal(out); err != nil {
		return nil, err
	}
	if _, err := wire.ParseHeader(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ---- frames ----

// writeFrame writes v as one frame (handoffauth.WriteFrame).
func writeFrame(c io.Writer, v any) (int, error) { return handoffauth.WriteFrame(c, v) }

// readFrame reads one frame of at most limit bytes into v
// (handoffauth.ReadFrame).
func readFrame(r io.Reader, limit int, v any) error { return handoffauth.ReadFrame(r, limit, v) }

// listenHandoff binds the handoff listener: addr, or, if empty, the UDP
// socket's IP with any port. "off" disables handoffs (nil listener).
func listenHandoff(addr string, udp *net.UDPAddr) (net.Listener, error) {
	if addr == "off" {
		return nil, nil
	}
	if addr == "" {
		addr = net.JoinHostPort(udp.IP.String(), "0")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("worker: handoff listener: %w", err)
	}
	return ln, nil
}

func parseInc(s string) (uint64, error) { return strconv.ParseUint(s, 16, 64) }
