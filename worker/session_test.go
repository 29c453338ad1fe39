package worker

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
)

// TestSessions: open (a retransmitted open gives one session), keepalive
// with renew, close, and requests from unknown and closed sessions.
func TestSessions(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)

	// A SESSION_OPEN sent three times (same nonce) opens one session.
	h := wire.Header{Request: rand.Uint64() | 1}
	var ids []uint64
	for range 3 {
		r, err := c.call(wire.SessionOpen{TTLMs: 3000, Lib: []byte("test/0")}, h, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, r, wire.StatusOK)
		var sr wire.SessionReply
		if err := sr.Decode(r.h, r.raw); err != nil {
			t.Fatal(err)
		}
		if sr.TTLMs < 3000 || sr.ShardCount != testShards || sr.GraceMs != uint32(testGrace.Milliseconds()) || sr.WorkerTTLMs != 2000 {
			t.Fatalf("session reply %+v", sr)
		}
		ids = append(ids, r.h.Session)
	}
	if ids[0] == 0 || ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("duplicate opens gave sessions %x", ids)
	}
	resp, err := cli.Get(context.Background(), cluster.ClientsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != cluster.ClientKey(ids[0]) {
		t.Fatalf("client keys after duplicate opens: %v", resp.Kvs)
	}
	c.session = ids[0]
	// Without Auth too, the session id is random, not the lease's id.
	if d := sessionDoc(t, cli, ids[0]); uint64(d.lease) == ids[0] || d.SealedKey != "" || d.KeyName != "" {
		t.Fatalf("insecure session %x: document %+v", ids[0], d.Client)
	}

	// Known at once: the first token request is served.
	g := c.acquire("a", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)

	// KEEPALIVE with RENEW: the session TTL, and per entry whether the
	// worker serves that shard at that epoch.
	sh := c.shard("a")
	ka := wire.Keepalive{Renew: true, Entries: []wire.ShardEpoch{{Shard: sh, Epoch: 1}, {Shard: sh, Epoch: 2}}}
	r := c.do(ka, 0)
	wantStatus(t, r, wire.StatusOK)
	var kr wire.KeepaliveReply
	if err := kr.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	if kr.SessionTTLMs < 3000 || kr.ValidityMs == 0 || kr.ValidityMs > 2000 ||
		kr.Statuses[0] != wire.StatusOK || kr.Statuses[1] != wire.StatusStaleEpoch {
		t.Fatalf("keepalive reply %+v", kr)
	}
	r = c.do(wire.Keepalive{}, 0)
	if err := kr.Decode(r.h, r.raw); err != nil || kr.SessionTTLMs != 0 {
		t.Fatalf("keepalive without renew: %+v %v", kr, err)
	}

	// Close: OK, the grant goes, the key goes; a retransmitted close and
	// later requests get SESSION_EXPIRED. (The first answer may be
	// SESSION_EXPIRED too, if a retransmission overtakes the OK after the
	// watch has seen the key go: SPEC §11 makes both mean success.)
	closeH := c.header(0, 0)
	r, err = c.call(wire.Empty{}, wire.Header{Type: wire.TypeSessionClose, Session: closeH.Session, Request: closeH.Request, Ack: closeH.Ack}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.h.Status != wire.StatusSessionExpired {
		wantStatus(t, r, wire.StatusOK)
	}
	waitFor(t, "grant dropped after close", func() bool { return w.stats().grants == 0 })
	if resp, err := cli.Get(context.Background(), cluster.ClientKey(ids[0])); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("session key after close: %v %v", resp, err)
	}
	r, _ = c.call(wire.Empty{}, wire.Header{Type: wire.TypeSessionClose, Session: closeH.Session, Request: closeH.Request, Ack: closeH.Ack}, 5*time.Second)
	wantStatus(t, r, wire.StatusSessionExpired)
	wantStatus(t, c.acquire("a", wire.EX, true, 0), wire.StatusSessionExpired)

	// An unknown session (never opened) is looked up, then told so.
	c.session = 0x1234567
	wantStatus(t, c.acquire("a", wire.EX, true, 0), wire.StatusUnknownSession)
}

// TestSessionExpiry: when a session's lease ends in etcd, every grant it
// holds goes and the waiters behind it are granted (GRANT_ASYNC).
func TestSessionExpiry(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)

	ga := a.acquire("x", wire.EX, false, wire.WaitForever)
	wantStatus(t, ga, wire.StatusOK)
	fa := ga.grant(t).Fence
	q := b.acquire("x", wire.EX, false, wire.WaitForever)
	wantStatus(t, q, wire.StatusQueued)

	if _, err := cli.Revoke(context.Background(), sessionDoc(t, cli, a.session).lease); err != nil {
		t.Fatal(err)
	}
	m, ok := b.event(5*time.Second, isType(wire.TypeGrantAsync))
	if !ok {
		t.Fatal("no GRANT_ASYNC after the holder's session expired")
	}
	g := m.grant(t)
	if m.h.Request != q.h.Request || g.Fence <= fa || g.Mode != wire.EX {
		t.Fatalf("GRANT_ASYNC req %d fence %#x mode %v; want req %d, fence above %#x", m.h.Request, g.Fence, g.Mode, q.h.Request, fa)
	}
	// The re-poll of the queued request now gets the grant from the cache.
	r, err := b.call(wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, b.header(q.h.Shard, q.h.Request), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r, wire.StatusOK)
	if r.grant(t).Fence != g.Fence {
		t.Fatalf("re-poll fence %#x, GRANT_ASYNC fence %#x", r.grant(t).Fence, g.Fence)
	}
	// The expired session's requests are refused.
	wantStatus(t, a.acquire("y", wire.EX, true, 0), wire.StatusSessionExpired)
	if s := w.stats(); s.grants != 1 || s.sessions != 1 {
		t.Fatalf("stats %+v, want 1 grant, 1 session", s)
	}
}
