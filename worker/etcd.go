package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// errNoLease: a session whose document named no readable lease.
var errNoLease = errors.New("worker: session document names no lease")

// errKeyRevoked: the client key of an open was revoked while it was being
// opened (tokenctl keys revoke).
var errKeyRevoked = errors.New("worker: the client key was revoked during the open")

const (
	// The etcd work of sessions runs in two pools of goroutines, so that
	// the receive loop never waits for etcd and a burst of opens (a mass
	// reconnect) cannot starve the renewals that keep live sessions alive.
	// Each pool has many goroutines because etcd batches concurrent
	// proposals into one raft round and one fsync: a few sequential callers
	// would cap opens at a few per fsync.
	renewPoolSize = 16 // renewals, closes, session lookups
	openPoolSize  = 32 // opens: a lease grant and a put each
	// jobQueue bounds the work waiting for each pool. It is a buffer (not
	// unbuffered) on purpose: a burst queues up to this many and anything
	// beyond is dropped ("busy"): the client retransmits, and etcd is
	// protected from an unbounded backlog.
	jobQueue = 1024
	// etcdTimeout bounds one etcd call of the pools.
	etcdTimeout = 3 * time.Second
)

// enqueue hands a renewal, close or lookup to its pool; false if the queue
// is full. It never blocks.
func (w *Worker) enqueue(job func(context.Context)) bool { return offer(w.jobs, job) }

// enqueueOpen hands a session open to its pool; false if the queue is full.
func (w *Worker) enqueueOpen(job func(context.Context)) bool { return offer(w.openJobs, job) }

func offer(q chan func(context.Context), job func(context.Context)) bool {
	select {
	case q <- job:
		return true
	default:
		return false
	}
}

// poolLoop runs jobs from q until ctx ends.
func (w *Worker) poolLoop(ctx context.Context, q chan func(context.Context)) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-q:
			job(ctx)
		}
	}
}

// openJob is a SESSION_OPEN that passed the receive loop's checks.
type openJob struct {
	key   openKey
	from  *net.UDPAddr
	h     wire.Header
	ttlMs uint32
	lib   string
	stamp time.Time
	// bundle: the open asked for bundles and this worker takes them
	// (wire/SPEC.md section 22).
	bundle bool
	// With Auth: the client's key, nonce and key name.
	auth      bool
	clientKey auth.Key
	nonce     auth.Nonce
	keyName   string
}

// openSession draws the session id (and, with Auth, the worker nonce and
// the session key), creates the session's lease and document, then
// answers the SESSION_OPEN and remembers the answer for retransmissions.
func (w *Worker) openSession(ctx context.Context, j openJob) {
	w.mu.Lock()
	cc := w.cluster
	w.mu.Unlock()
	ttl := time.Duration(j.ttlMs) * time.Millisecond
	if ttl == 0 {
		ttl = cc.SessionTTL()
	}
	ttl = min(ttl, w.cfg.Limits.MaxSessionTTL)
	secs := max(int64((ttl+time.Second-1)/time.Second), 1)
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	id, err := auth.NewSessionID()
	var (
		doc     cluster.Client
		in      sessInfo
		key     auth.Key
		wnonce  auth.Nonce
		openOut *auth.MAC // seals error replies (open key, worker to client)
	)
	if err == nil && j.auth {
		openOut = auth.NewMAC(auth.OpenKey(j.clientKey), auth.WorkerToClient)
		if wnonce, err = auth.NewNonce(); err == nil {
			key = auth.SessionKey(j.clientKey, j.nonce, wnonce, id)
			in.sealed, err = auth.SealKey(w.cfg.Auth.ClusterKey, cluster.SessionKeyLabel(id), key)
			in.keyName = j.keyName
			doc.KeyName, doc.SealedKey = j.keyName, base64.StdEncoding.EncodeToString(in.sealed)
		}
	}
	var (
		rev     int64
		granted time.Duration
	)
	if err == nil {
		doc.Session, doc.Addr, doc.Since, doc.Library, doc.Worker =
			cluster.SessionString(id), j.from.String(), cluster.Now(w.clk.Now()), j.lib, w.cfg.ID
		doc.Bundle, in.bundle = j.bundle, j.bundle
		in.lease, rev, granted, err = w.createSession(ctx, id, secs, doc)
	}
	closing := ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded)
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(j.stamp, w.mono(now))
	rh := j.h.Reply()
	rh.MapVersion = w.dmap.Version
	if err != nil {
		w.guard.recent.Delete(j.key)
		w.met.op(j.h.Type, wire.StatusUnavailable)
		ob.add(errorReply(rh, wire.StatusUnavailable), j.from, j.h.Type, openOut)
		w.mu.Unlock()
		if !closing {
			w.log.Warn("cannot open session", "err", err, "client", j.from)
		}
		w.flush(ob)
		return
	}
	rh.Session = id
	pkt, err := wire.SessionReply{
		TTLMs:       uint32(min(granted.Milliseconds(), 1<<32-1)),
		ShardCount:  uint32(cc.Shards),
		GraceMs:     uint32(cc.GraceMs),
		WorkerTTLMs: uint32(w.cfg.TTL.Milliseconds()),
		WorkerNonce: wnonce,
		Bundle:      j.bundle,
	}.Append(make([]byte, 0, wire.HeaderLen+32), rh)
	if err != nil {
		w.log.Error("cannot encode SESSION_OPEN reply", "err", err)
	}
	in.addr = j.from
	s := w.addSession(id, in, rev)
	var out *auth.MAC
	if j.auth {
		out = auth.NewMAC(key, auth.WorkerToClient)
		if s != nil && s.keys.in == nil {
			s.keys.set(key)
		}
		if pkt != nil && out.Seal(pkt) != nil {
			pkt = nil
		}
	}
	w.guard.recent.Put(j.key, &openState{pkt: pkt}, ob.now, ob.now+int64(openRemember))
	w.met.op(j.h.Type, wire.StatusOK)
	ob.add(pkt, j.from, j.h.Type, nil)
	w.mu.Unlock()
	w.flush(ob)
	w.log.Debug("session opened", "session", cluster.SessionString(id), "client", j.from, "ttl", granted, "key", j.keyName)
}

// createSession grants the session lease and puts the session document
// doc on it. It returns the lease, the key's revision and the granted TTL.
func (w *Worker) createSession(ctx context.Context, id uint64, secs int64, doc cluster.Client) (clientv3.LeaseID, int64, time.Duration, error) {
	g, err := w.cfg.Client.Grant(ctx, secs)
	if err != nil {
		return 0, 0, 0, err
	}
	doc.Lease = cluster.SessionString(uint64(g.ID))
	b, err := json.Marshal(doc)
	if err == nil {
		// With authentication the put holds only while the client key is
		// in etcd: a revocation (which then ends the key's sessions) cannot
		// miss a session whose open was under way.
		var cmps []clientv3.Cmp
		if g, ok := w.keyGuard(); ok && doc.KeyName != "" {
			cmps = append(cmps, g.StillValid(doc.KeyName))
		}
		var t *clientv3.TxnResponse
		t, err = w.cfg.Client.Txn(ctx).If(cmps...).Then(clientv3.OpPut(cluster.ClientKey(id), string(b), clientv3.WithLease(g.ID))).Commit()
		switch {
		case err == nil && t.Succeeded:
			return g.ID, t.Header.Revision, time.Duration(g.TTL) * time.Second, nil
		case err == nil:
			err = errKeyRevoked
		}
	}
	rctx, cancel := context.WithTimeout(context.Background(), etcdTimeout)
	w.cfg.Client.Revoke(rctx, g.ID)
	cancel()
	return 0, 0, 0, err
}

// renewSession renews the session's lease (KEEPALIVE with RENEW) and then
// answers the KEEPALIVE. The TTL etcd restarts on receipt is counted by
// the client from its send, which is earlier: safe.
func (w *Worker) renewSession(ctx context.Context, id uint64, lease clientv3.LeaseID, h wire.Header, entries []wire.ShardEpoch, stamp time.Time) {
	var (
		resp *clientv3.LeaseKeepAliveResponse
		err  error
	)
	if lease == 0 {
		err = errNoLease
	} else {
		resp, err = w.renewClientLease(ctx, lease)
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(stamp, w.mono(now))
	ob.safe = w.safeUntil()
	s := w.sessions[id]
	var (
		to  *net.UDPAddr
		out *auth.MAC
	)
	if s != nil {
		to, out = s.addr, s.keys.out
		if s.renewing == h.Request {
			s.renewing = 0
		}
	}
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && resp.TTL <= 0):
		rh := h.Reply()
		rh.MapVersion = w.dmap.Version
		w.met.op(h.Type, wire.StatusSessionExpired)
		if to != nil {
			ob.add(errorReply(rh, wire.StatusSessionExpired), to, h.Type, out)
		}
		w.endSession(ob, id)
	default:
		var ttl uint32
		if err == nil {
			ttl = uint32(min(resp.TTL*1000, 1<<32-1))
		} else if ctx.Err() == nil {
			w.log.Warn("cannot renew session", "session", cluster.SessionString(id), "err", err)
		}
		if s != nil && ttl > 0 {
			s.renewedID, s.renewedTTL = h.Request, ttl
		}
		// Validity is read now, after etcd answered: later than the
		// client's send, so only shorter from the client's view.
		ob.add(w.keepaliveReply(h, entries, ttl, ob.safe, now), to, h.Type, out)
	}
	w.mu.Unlock()
	w.flush(ob)
}

// renewClientLease renews a client session's lease once: over the
// worker's renewal stream, hedged after 100 ms (and at once on an error)
// by KeepAliveOnce calls, which the etcd client balances over the members.
// If the stream did not win, it may be stuck on a silent member: it is
// reset, and the next renewal opens a new one.
func (w *Worker) renewClientLease(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseKeepAliveResponse, error) {
	var calls atomic.Int32
	var streamWon atomic.Bool
	resp, _, err := hedged(ctx, w.clk, etcdTimeout, 100*time.Millisecond, func(ctx context.Context) (*clientv3.LeaseKeepAliveResponse, error) {
		if calls.Add(1) == 1 {
			ttl, err := w.renew.renew(ctx, id)
			if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
				streamWon.Store(true) // the stream answered
			}
			if err != nil {
				return nil, err
			}
			return &clientv3.LeaseKeepAliveResponse{ID: id, TTL: ttl}, nil
		}
		return w.cfg.Client.KeepAliveOnce(ctx, id)
	}, func(err error) bool { return errors.Is(err, rpctypes.ErrLeaseNotFound) })
	if !streamWon.Load() && ctx.Err() == nil {
		w.renew.reset()
	}
	return resp, err
}

// closeSession revokes the session's lease and answers SESSION_CLOSE. The
// session ends here at once; the watch ends it on every other worker.
func (w *Worker) closeSession(ctx context.Context, s *session, lease clientv3.LeaseID, h wire.Header, stamp time.Time) {
	id := s.id
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	var err error
	if lease == 0 {
		// The document was not readable: delete it (the lease then
		// expires with nothing on it).
		_, err = w.cfg.Client.Delete(ctx, cluster.ClientKey(id))
	} else {
		_, err = w.cfg.Client.Revoke(ctx, lease)
	}
	cancel()
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		w.mu.Lock()
		s.closing = false
		s.core.Unmark(h.Request)
		w.mu.Unlock()
		w.log.Warn("cannot close session", "session", cluster.SessionString(id), "err", err)
		return // no answer: the client retransmits
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := newOutbox(stamp, w.mono(now))
	ob.safe = w.safeUntil()
	// s answers even if the watch ended it meanwhile (the revoke deleted
	// its key).
	to, out := s.addr, s.keys.out
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	if err == nil {
		pkt, _ := wire.Empty{}.Append(make([]byte, 0, wire.HeaderLen), rh)
		w.met.op(h.Type, wire.StatusOK)
		ob.add(pkt, to, h.Type, out)
	} else {
		w.met.op(h.Type, wire.StatusSessionExpired)
		ob.add(errorReply(rh, wire.StatusSessionExpired), to, h.Type, out)
	}
	w.endSession(ob, id)
	w.mu.Unlock()
	w.flush(ob)
}

// lookupSession asks etcd about a session the watch has not shown (yet).
// If it exists it becomes known (the client's retransmission is then
// served); if not, the request is answered UNKNOWN_SESSION.
func (w *Worker) lookupSession(ctx context.Context, h wire.Header, from *net.UDPAddr, stamp time.Time) {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	resp, err := w.cfg.Client.Get(ctx, cluster.ClientKey(h.Session))
	cancel()
	now := w.clk.Now()
	w.mu.Lock()
	delete(w.lookups, h.Session)
	ob := w.outbox(stamp, w.mono(now))
	switch {
	case err != nil:
		// Say nothing; the client retransmits.
	case len(resp.Kvs) > 0:
		if _, in, ok := parseClient(resp.Kvs[0]); ok {
			w.addSession(h.Session, in, resp.Kvs[0].ModRevision)
		}
	default:
		if len(w.guard.negative) < maxNegative {
			w.guard.negative[h.Session] = w.mono(now) + int64(negativeFor)
		}
		if w.cfg.Auth != nil {
			break // silence: as for a bad tag (section 20)
		}
		rh := h.Reply()
		rh.MapVersion = w.dmap.Version
		w.met.op(h.Type, wire.StatusUnknownSession)
		ob.add(errorReply(rh, wire.StatusUnknownSession), from, h.Type, nil)
	}
	w.mu.Unlock()
	w.flush(ob)
}
