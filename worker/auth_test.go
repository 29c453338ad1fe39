package worker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// testKeys is a KeyLookup over a fixed map.
type testKeys map[string]auth.Key

func (k testKeys) ClientKey(name string) (auth.Key, bool) { v, ok := k[name]; return v, ok }

// authFixture is a worker that authenticates, serving every shard, and the
// client key "alice" it knows.
type authFixture struct {
	cli     *clientv3.Client
	w       *Worker
	reg     *prometheus.Registry
	cluster auth.Key
	alice   auth.Key
}

func newAuthFixture(t testing.TB, lim Limits) *authFixture {
	t.Helper()
	f := &authFixture{cli: testEtcd(t)}
	var err error
	if f.cluster, err = auth.NewKey(); err != nil {
		t.Fatal(err)
	}
	if f.alice, err = auth.NewKey(); err != nil {
		t.Fatal(err)
	}
	f.w, f.reg = startWorkerCfg(t, Config{Client: f.cli, ID: "w1", Limits: lim,
		Auth: &Auth{ClusterKey: f.cluster, Keys: testKeys{"alice": f.alice}}})
	serveAll(t, f.cli, f.w)
	return f
}

// failures is tokend_worker_auth_failures_total{reason}.
func (f *authFixture) failures(reason string) float64 {
	return gatherValue(f.reg, "tokend_worker_auth_failures_total", "reason", reason)
}

// limitedCount is tokend_worker_limited_total{limit}.
func (f *authFixture) limitedCount(lim string) float64 {
	return gatherValue(f.reg, "tokend_worker_limited_total", "limit", lim)
}

// openMsg is a SESSION_OPEN with a fresh nonce and request id.
func openMsg(name string, ttlMs uint32) (wire.SessionOpen, wire.Header) {
	var m wire.SessionOpen
	n, _ := auth.NewNonce()
	m.Nonce, m.KeyName, m.TTLMs, m.Lib = n, []byte(name), ttlMs, []byte("test/0")
	return m, wire.Header{Request: rand.Uint64() | 1}
}

// sealOpen encodes m, sealed with the open key of k.
func sealOpen(t testing.TB, m wire.SessionOpen, h wire.Header, k auth.Key) []byte {
	t.Helper()
	pkt, err := m.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.NewMAC(auth.OpenKey(k), auth.ClientToWorker).Seal(pkt); err != nil {
		t.Fatal(err)
	}
	return pkt
}

// cookie asks for a cookie and returns it.
func (c *tclient) cookie(m wire.SessionOpen, h wire.Header) []byte {
	c.t.Helper()
	m.Cookie = nil
	r, err := c.call(m, h, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	wantStatus(c.t, r, wire.StatusCookie)
	if len(r.raw) > wire.HeaderLen+1+wire.CookieLen || r.raw[wire.AuthOffset] != 0 {
		c.t.Fatalf("COOKIE reply of %d bytes or tagged", len(r.raw))
	}
	var ck wire.Cookie
	if err := ck.Decode(r.h, r.raw); err != nil {
		c.t.Fatal(err)
	}
	return ck.Cookie[:]
}

// callRaw sends pkt (retransmitting) until a reply to request id arrives.
func (c *tclient) callRaw(pkt []byte, id uint64, timeout time.Duration) (msg, bool) {
	c.t.Helper()
	ch := make(chan msg, 4)
	c.mu.Lock()
	c.waiting[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}()
	deadline := time.After(timeout)
	for {
		c.sendRaw(pkt)
		select {
		case r := <-ch:
			return r, true
		case <-time.After(c.rto):
		case <-deadline:
			return msg{}, false
		}
	}
}

// openAuth opens an authenticated session with key k named name, as
// section 20 says, and installs the session's MACs.
func (c *tclient) openAuth(name string, k auth.Key, ttlMs uint32) msg {
	c.t.Helper()
	m, h := openMsg(name, ttlMs)
	m.Bundle = c.offerBundle
	m.Cookie = c.cookie(m, h)
	r, ok := c.callRaw(sealOpen(c.t, m, h, k), h.Request, 5*time.Second)
	if !ok {
		c.t.Fatal("no reply to SESSION_OPEN with cookie")
	}
	wantStatus(c.t, r, wire.StatusOK)
	var sr wire.SessionReply
	if err := sr.Decode(r.h, r.raw); err != nil {
		c.t.Fatal(err)
	}
	sk := auth.SessionKey(k, m.Nonce, sr.WorkerNonce, r.h.Session)
	if !auth.NewMAC(sk, auth.WorkerToClient).Verify(r.raw) {
		c.t.Fatal("SESSION_OPEN OK reply not tagged with the session key")
	}
	c.macMu.Lock()
	c.in, c.out = auth.NewMAC(sk, auth.WorkerToClient), auth.NewMAC(sk, auth.ClientToWorker)
	c.skey = sk
	c.macMu.Unlock()
	c.mu.Lock()
	c.session, c.opened = r.h.Session, h.Request
	c.mu.Unlock()
	return r
}

// docOf is a session document as a test reads it.
type docOf struct {
	cluster.Client
	lease clientv3.LeaseID
}

// sessionDoc reads the session document of id.
func sessionDoc(t testing.TB, cli *clientv3.Client, id uint64) docOf {
	t.Helper()
	resp, err := cli.Get(context.Background(), cluster.ClientKey(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("no session document for %x", id)
	}
	var d docOf
	if err := json.Unmarshal(resp.Kvs[0].Value, &d.Client); err != nil {
		t.Fatal(err)
	}
	l, err := cluster.ParseSession(d.Lease)
	if err != nil {
		t.Fatalf("session document lease %q: %v", d.Lease, err)
	}
	if resp.Kvs[0].Lease != int64(l) {
		t.Fatalf("session key on lease %x, document names %x", resp.Kvs[0].Lease, l)
	}
	d.lease = clientv3.LeaseID(l)
	return d
}

// etcdWrites counts the leases and session keys in etcd.
func etcdWrites(t testing.TB, cli *clientv3.Client) (leases, sessions int) {
	t.Helper()
	ls, err := cli.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ks, err := cli.Get(context.Background(), cluster.ClientsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return len(ls.Leases), int(ks.Count)
}

// quiet asserts that c receives nothing more within d (beyond what it has
// queued already): each case below has sent what it sends, and a reply
// would come within a round trip; d bounds the wait for a reply that
// would make the test fail, not for a condition to pass.
//
// A late copy of the OK reply to the client's own SESSION_OPEN (its
// retransmission, answered again from the worker's recent opens on a
// loaded machine) does not count: it answers nothing the test sent since.
func (c *tclient) quiet(d time.Duration, what string) {
	c.t.Helper()
	c.mu.Lock()
	opened := c.opened
	c.mu.Unlock()
	if m, ok := c.event(d, func(m msg) bool {
		return !(m.h.Type == wire.TypeSessionOpenReply && m.h.Status == wire.StatusOK && opened != 0 && m.h.Request == opened)
	}); ok {
		c.t.Fatalf("%s: got %v, want no reply", what, m)
	}
}

// TestAuthOpen: the open of section 20. Without a cookie: a COOKIE reply,
// nothing kept, nothing in etcd. With it: a session with a random id whose
// document names its lease, key and sealed key; the OK reply is tagged
// with the session key; a retransmission gets the same reply.
func TestAuthOpen(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	leases0, _ := etcdWrites(t, f.cli)

	m, h := openMsg("alice", 3000)
	m.Cookie = c.cookie(m, h)
	if l, s := etcdWrites(t, f.cli); l != leases0 || s != 0 {
		t.Fatalf("a cookie cost %d leases, %d sessions", l-leases0, s)
	}
	pkt := sealOpen(t, m, h, f.alice)
	r1, ok := c.callRaw(pkt, h.Request, 5*time.Second)
	if !ok {
		t.Fatal("no reply")
	}
	wantStatus(t, r1, wire.StatusOK)
	r2, ok := c.callRaw(pkt, h.Request, 5*time.Second)
	if !ok || r2.h.Session != r1.h.Session {
		t.Fatalf("retransmitted open: session %x, first %x", r2.h.Session, r1.h.Session)
	}
	id := r1.h.Session
	d := sessionDoc(t, f.cli, id)
	if uint64(d.lease) == id || d.KeyName != "alice" || d.Session != cluster.SessionString(id) {
		t.Fatalf("session %x document %+v", id, d.Client)
	}
	sealedKey, err := base64.StdEncoding.DecodeString(d.SealedKey)
	if err != nil {
		t.Fatal(err)
	}
	var sr wire.SessionReply
	if err := sr.Decode(r1.h, r1.raw); err != nil {
		t.Fatal(err)
	}
	sk, err := auth.UnsealKey(f.cluster, cluster.SessionKeyLabel(id), sealedKey)
	if err != nil || sk != auth.SessionKey(f.alice, m.Nonce, sr.WorkerNonce, id) {
		t.Fatalf("sealed key does not open to the session key: %v", err)
	}
	if l, s := etcdWrites(t, f.cli); l != leases0+1 || s != 1 {
		t.Fatalf("one open made %d leases, %d sessions", l-leases0, s)
	}

	// A session works with tags both ways, and a closed one answers
	// SESSION_EXPIRED, authenticated, for at least its TTL.
	c.openAuth("alice", f.alice, 3000)
	wantStatus(t, c.acquire("a", wire.EX, true, 0), wire.StatusOK)
	h2 := c.header(0, 0)
	wantStatus(t, mustCall(t, c, wire.Empty{}, wire.Header{Type: wire.TypeSessionClose, Session: h2.Session, Request: h2.Request, Ack: h2.Ack}), wire.StatusOK)
	r := c.acquire("b", wire.EX, true, 0)
	wantStatus(t, r, wire.StatusSessionExpired)
	if !c.verified(r) {
		t.Fatal("SESSION_EXPIRED not authenticated")
	}
}

func mustCall(t testing.TB, c *tclient, m appender, h wire.Header) msg {
	t.Helper()
	r, err := c.call(m, h, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestAuthOpenRefused: an open without a key name is answered BAD_REQUEST
// with a text saying what to do; unknown keys, bad tags and bad cookies
// are dropped unanswered and counted, and none costs etcd anything.
func TestAuthOpenRefused(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	leases0, _ := etcdWrites(t, f.cli)

	m, h := openMsg("", 0)
	r := mustCall(t, c, m, h)
	wantStatus(t, r, wire.StatusBadRequest)
	var e wire.ErrorBody
	if err := e.Decode(r.h, r.raw); err != nil || string(e.Message) != msgNeedKey {
		t.Fatalf("BAD_REQUEST text %q (%v)", e.Message, err)
	}

	other, _ := auth.NewKey()
	cases := []struct {
		reason string
		pkt    func() []byte
	}{
		{"unknown_key", func() []byte {
			m, h := openMsg("mallory", 0)
			m.Cookie = c.cookie(m, h)
			return sealOpen(t, m, h, f.alice)
		}},
		{"bad_tag", func() []byte { // the key of another client
			m, h := openMsg("alice", 0)
			m.Cookie = c.cookie(m, h)
			return sealOpen(t, m, h, other)
		}},
		{"bad_cookie", func() []byte { // a cookie for another nonce
			m, h := openMsg("alice", 0)
			m.Cookie = c.cookie(m, h)
			m.Nonce[0] ^= 1
			return sealOpen(t, m, h, f.alice)
		}},
	}
	for _, tc := range cases {
		pkt := tc.pkt()
		before := f.failures(tc.reason)
		c.sendRaw(pkt)
		waitFor(t, tc.reason+" counted", func() bool { return f.failures(tc.reason) == before+1 })
		c.quiet(100*time.Millisecond, tc.reason)
	}
	if l, s := etcdWrites(t, f.cli); l != leases0 || s != 0 {
		t.Fatalf("refused opens made %d leases, %d sessions", l-leases0, s)
	}
}

// TestAuthTTLClamped: a session TTL of 49.7 days is granted as the
// worker's maximum.
func TestAuthTTLClamped(t *testing.T) {
	f := newAuthFixture(t, Limits{MaxSessionTTL: 7 * time.Second})
	c := udpClient(t, f.w)
	r := c.openAuth("alice", f.alice, 1<<32-1)
	var sr wire.SessionReply
	if err := sr.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	ttl, err := f.cli.TimeToLive(context.Background(), sessionDoc(t, f.cli, c.session).lease)
	if err != nil {
		t.Fatal(err)
	}
	if sr.TTLMs != 7000 || ttl.GrantedTTL != 7 {
		t.Fatalf("granted %d ms, lease TTL %d s; want 7 s", sr.TTLMs, ttl.GrantedTTL)
	}
}

// forge returns a token request of session on shard, tagged with zeros
// (or with the tag of another key): what an attacker without the session
// key can send.
func forge(t testing.TB, m appender, h wire.Header) []byte {
	t.Helper()
	pkt, err := m.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// TestAttackGuessedSessions: datagrams for guessed session ids get no
// reply and are counted, exactly as a live session's datagram with a bad
// tag is; and random ids do not turn into a stream of etcd reads.
func TestAttackGuessedSessions(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	victim := udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 0)
	wantStatus(t, victim.acquire("x", wire.EX, true, 0), wire.StatusOK)
	attacker := udpClient(t, f.w)
	sh := victim.shard("x")
	acq := wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}

	const guesses = 2000
	unknown0, bad0 := f.failures("unknown_session"), f.failures("bad_tag")
	for i := range guesses {
		id, _ := auth.NewSessionID()
		attacker.sendRaw(forge(t, acq, wire.Header{Session: id, Request: uint64(i + 1), Ack: 1, Shard: sh, Epoch: 1}))
	}
	waitFor(t, "guesses counted", func() bool { return f.failures("unknown_session") == unknown0+guesses })
	// The live id with a bad tag: the same silence.
	for i := range 10 {
		attacker.sendRaw(forge(t, acq, wire.Header{Session: victim.session, Request: uint64(1000 + i), Ack: 1, Shard: sh, Epoch: 1}))
	}
	waitFor(t, "bad tags counted", func() bool { return f.failures("bad_tag") == bad0+10 })
	attacker.quiet(100*time.Millisecond, "guessed and forged datagrams")
	f.w.mu.Lock()
	negative := len(f.w.guard.negative)
	f.w.mu.Unlock()
	if negative > guesses/4 {
		t.Fatalf("%d of %d random ids looked up in etcd; the lookup rate allows about %d", negative, guesses, lookupBurst)
	}
	wantStatus(t, victim.acquire("y", wire.EX, true, 0), wire.StatusOK)
}

// TestAttackForgedRelease: RELEASE and CONVERT forged for the victim's
// session from another port are dropped and counted; the victim's grant
// stays.
func TestAttackForgedRelease(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	victim, other := udpClient(t, f.w), udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 0)
	other.openAuth("alice", f.alice, 0)
	g := victim.acquire("x", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	fence := g.grant(t).Fence
	attacker := udpClient(t, f.w)
	sh := victim.shard("x")
	bad0 := f.failures("bad_tag")
	attacker.sendRaw(forge(t, wire.Release{Fence: fence, Name: []byte("x")},
		wire.Header{Session: victim.session, Request: 1 << 30, Ack: 1, Shard: sh, Epoch: 1}))
	attacker.sendRaw(forge(t, wire.Convert{Fence: fence, Mode: wire.NL, Name: []byte("x")},
		wire.Header{Session: victim.session, Request: 1<<30 + 1, Ack: 1, Shard: sh, Epoch: 1}))
	// Tagged with another session's key (an insider's): still refused.
	p := forge(t, wire.Release{Fence: fence, Name: []byte("x")},
		wire.Header{Session: victim.session, Request: 1<<30 + 2, Ack: 1, Shard: sh, Epoch: 1})
	other.macMu.Lock()
	other.out.Seal(p)
	other.macMu.Unlock()
	attacker.sendRaw(p)
	waitFor(t, "forgeries counted", func() bool { return f.failures("bad_tag") == bad0+3 })
	attacker.quiet(100*time.Millisecond, "forged RELEASE and CONVERT")
	if r := other.acquire("x", wire.EX, true, 0); r.h.Status == wire.StatusOK {
		t.Fatal("the victim's grant was released by a forgery")
	}
	wantStatus(t, victim.release("x", fence), wire.StatusOK)
}

// TestAttackHijack: a forged KEEPALIVE from the attacker's port does not
// move the session's address, nor does a replay of the victim's own
// KEEPALIVEs: the victim's REVOKEs still go to the victim. A replayed
// KEEPALIVE with RENEW is dropped and counted; one without RENEW changes
// nothing and is answered again (its reply may have been lost), to its
// sender.
func TestAttackHijack(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	victim, other := udpClient(t, f.w), udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 0)
	other.openAuth("alice", f.alice, 0)
	wantStatus(t, victim.acquire("x", wire.EX, false, wire.WaitForever), wire.StatusOK)
	attacker := udpClient(t, f.w)

	// Captured KEEPALIVEs of the victim, replayed from the attacker's port.
	capture := func(m wire.Keepalive) []byte {
		h := victim.header(0, 0)
		h.Type = wire.TypeKeepalive
		p := victim.send(m, h)
		if _, ok := victim.event(5*time.Second, func(m msg) bool { return m.h.Request == h.Request }); !ok {
			t.Fatal("no KEEPALIVE reply")
		}
		victim.finish(h.Request)
		return p
	}
	attacker.sendRaw(capture(wire.Keepalive{}))
	if _, ok := attacker.event(5*time.Second, isType(wire.TypeKeepaliveReply)); !ok {
		t.Fatal("a copy of a KEEPALIVE without RENEW not answered")
	}
	// A copy of a renewal is answered too (its answer may have been
	// lost), with the TTL of that renewal, and renews and moves nothing.
	attacker.sendRaw(capture(wire.Keepalive{Renew: true}))
	if _, ok := attacker.event(5*time.Second, isType(wire.TypeKeepaliveReply)); !ok {
		t.Fatal("a copy of a KEEPALIVE with RENEW not answered")
	}
	bad0 := f.failures("bad_tag")
	attacker.sendRaw(forge(t, wire.Keepalive{}, wire.Header{Session: victim.session, Request: 1 << 40, Ack: 1}))
	waitFor(t, "forgery counted", func() bool { return f.failures("bad_tag") == bad0+1 })
	wantStatus(t, other.acquire("x", wire.EX, false, wire.WaitForever), wire.StatusQueued)
	if _, ok := victim.event(5*time.Second, isType(wire.TypeRevoke)); !ok {
		t.Fatal("the victim got no REVOKE")
	}
	if n := attacker.countEvents(func(msg) bool { return true }); n != 0 {
		t.Fatalf("the attacker received %d more datagrams", n)
	}
}

// TestAttackAckPoisoning: a forged request with request = ack = 2^62
// is dropped; the victim's next requests (small ids) are still served.
func TestAttackAckPoisoning(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	victim := udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 0)
	attacker := udpClient(t, f.w)
	bad0 := f.failures("bad_tag")
	attacker.sendRaw(forge(t, wire.Keepalive{}, wire.Header{Session: victim.session, Request: 1 << 62, Ack: 1 << 62}))
	waitFor(t, "forgery counted", func() bool { return f.failures("bad_tag") == bad0+1 })
	wantStatus(t, victim.acquire("x", wire.EX, true, 0), wire.StatusOK)
}

// TestAttackKeepaliveReplay: after the client dies, its captured
// KEEPALIVE with RENEW, replayed, renews nothing: the session expires on
// time. The copies are answered (a lost answer is the honest reason for
// one) from the renewal already made, and counted as duplicates.
func TestAttackKeepaliveReplay(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	victim := udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 2000)
	h := victim.header(0, 0)
	h.Type = wire.TypeKeepalive
	r := mustCall(t, victim, wire.Keepalive{Renew: true}, h)
	wantStatus(t, r, wire.StatusOK)
	captured := victim.send(wire.Keepalive{Renew: true}, h) // the same bytes: what an observer kept
	lease := sessionDoc(t, f.cli, victim.session).lease
	victim.close() // the client dies

	attacker := udpClient(t, f.w)
	dup0 := gatherValue(f.reg, "tokend_worker_ops_total", "result", "duplicate")
	start := time.Now()
	for {
		attacker.sendRaw(captured)
		ttl, err := f.cli.TimeToLive(context.Background(), lease)
		if err != nil {
			t.Fatal(err)
		}
		if ttl.TTL <= 0 {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("replayed KEEPALIVEs kept the dead client's session alive")
		}
		time.Sleep(100 * time.Millisecond) // the replay rate, not a synchronisation
	}
	if gatherValue(f.reg, "tokend_worker_ops_total", "result", "duplicate") <= dup0 {
		t.Fatal("the copies were not answered as duplicates")
	}
}

// TestAttackOpenFlood: a flood of opens without cookies, and with forged
// cookies, makes no etcd write at all.
func TestAttackOpenFlood(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	attacker := udpClient(t, f.w)
	leases0, _ := etcdWrites(t, f.cli)
	m, h := openMsg("alice", 0)
	forged := attacker.cookie(m, h) // a real timestamp, then a tag of its own
	forged[len(forged)-1] ^= 1
	const flood = 2000
	for range flood {
		m, h := openMsg("alice", 0)
		attacker.send(m, h)
		m.Cookie = forged
		attacker.sendRaw(sealOpen(t, m, h, f.alice))
	}
	waitFor(t, "forged cookies counted", func() bool { return f.failures("bad_cookie") >= flood })
	if l, s := etcdWrites(t, f.cli); l != leases0 || s != 0 {
		t.Fatalf("the flood made %d leases and %d sessions", l-leases0, s)
	}
}

// TestAttackOpensTable: an insider holding a valid key who floods opens
// from one address is answered LIMIT past its source's rate and cannot
// fill the table of recent opens; a new legitimate client from another
// address still opens.
func TestAttackOpensTable(t *testing.T) {
	f := newAuthFixture(t, Limits{RecentOpens: 64, OpenRatePerSource: 1, OpenBurstPerSource: 8})
	insider := udpClient(t, f.w)
	// Every LIMIT sent is counted, a retransmission's too: no
	// retransmission here (loopback loses nothing), so that the count
	// matches the answers even on a loaded machine.
	insider.rto = 3 * time.Second
	var limited int
	for range 40 {
		m, h := openMsg("alice", 0)
		m.Cookie = insider.cookie(m, h)
		r, ok := insider.callRaw(sealOpen(t, m, h, f.alice), h.Request, 5*time.Second)
		if !ok {
			t.Fatal("no reply to an open")
		}
		if r.h.Status == wire.StatusLimit {
			limited++
			var e wire.ErrorBody
			if err := e.Decode(r.h, r.raw); err != nil || string(e.Message) != limitText[limOpenSrc] {
				t.Fatalf("LIMIT text %q", e.Message)
			}
			if !auth.NewMAC(auth.OpenKey(f.alice), auth.WorkerToClient).Verify(r.raw) {
				t.Fatal("LIMIT after a verified tag not tagged with the open key")
			}
		}
	}
	if limited < 40-10 || f.limitedCount(limOpenSrc) != float64(limited) {
		t.Fatalf("%d of 40 opens limited, %v counted", limited, f.limitedCount(limOpenSrc))
	}
	// A legitimate client from another address (127.0.0.2).
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Skipf("no 127.0.0.2: %v", err)
	}
	legit := newTClient(t, conn, f.w.Addr(), testShards)
	legit.openAuth("alice", f.alice, 0)
	wantStatus(t, legit.acquire("x", wire.EX, true, 0), wire.StatusOK)
}

// TestAttackNamesPerSession: one session asking for more names than the
// limit is answered LIMIT, with a text naming the limit, and counted.
func TestAttackNamesPerSession(t *testing.T) {
	const cap = 20
	f := newAuthFixture(t, Limits{NamesPerSession: cap})
	c := udpClient(t, f.w)
	c.openAuth("alice", f.alice, 0)
	var limited int
	for i := range 3 * cap {
		r := c.acquire("n"+string(rune('a'+i%26))+string(rune('a'+i/26)), wire.EX, true, 0)
		if r.h.Status == wire.StatusLimit {
			limited++
			continue
		}
		wantStatus(t, r, wire.StatusOK)
	}
	if limited != 2*cap || f.limitedCount(limNames) != 2*cap {
		t.Fatalf("%d LIMIT answers, %v counted; want %d", limited, f.limitedCount(limNames), 2*cap)
	}
}

// TestAuthLimits: the number of sessions and the table of recent opens
// are bounded; an open beyond either is answered LIMIT (tagged with the
// open key) and counted.
func TestAuthLimits(t *testing.T) {
	for _, tc := range []struct {
		lim  string
		conf Limits
	}{
		{limSessions, Limits{Sessions: 2}},
		{limRecent, Limits{RecentOpens: 2, OpenRatePerSource: -1, OpenRate: -1}},
	} {
		t.Run(tc.lim, func(t *testing.T) {
			f := newAuthFixture(t, tc.conf)
			c := udpClient(t, f.w)
			udpClient(t, f.w).openAuth("alice", f.alice, 0)
			udpClient(t, f.w).openAuth("alice", f.alice, 0)
			m, h := openMsg("alice", 0)
			m.Cookie = c.cookie(m, h)
			r, ok := c.callRaw(sealOpen(t, m, h, f.alice), h.Request, 5*time.Second)
			if !ok {
				t.Fatal("no reply")
			}
			wantStatus(t, r, wire.StatusLimit)
			if !auth.NewMAC(auth.OpenKey(f.alice), auth.WorkerToClient).Verify(r.raw) {
				t.Fatal("LIMIT not tagged with the open key")
			}
			if f.limitedCount(tc.lim) != 1 {
				t.Fatalf("limited_total{limit=%q} = %v", tc.lim, f.limitedCount(tc.lim))
			}
		})
	}
}

// TestAuthMapRequest: a MAP_REQUEST of session 0 is answered untagged; one
// of a session is checked and answered with the session's key.
func TestAuthMapRequest(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	r := mustCall(t, c, wire.MapRequest{}, wire.Header{Request: 1})
	wantStatus(t, r, wire.StatusOK)
	if sealed(r.raw) {
		t.Fatal("MAP reply to session 0 tagged")
	}
	c.openAuth("alice", f.alice, 0)
	h := c.header(0, 0)
	h.Shard, h.Epoch = 0, 0
	r = mustCall(t, c, wire.MapRequest{}, h) // call checks the tag
	wantStatus(t, r, wire.StatusOK)
	if !sealed(r.raw) {
		t.Fatal("MAP reply to a session untagged")
	}
	bad0 := f.failures("bad_tag")
	c.sendRaw(forge(t, wire.MapRequest{}, wire.Header{Session: c.session, Request: 1 << 40, Ack: 1}))
	waitFor(t, "forged MAP_REQUEST counted", func() bool { return f.failures("bad_tag") == bad0+1 })
}

// warnCounter counts WARN records.
type warnCounter struct {
	slog.Handler
	mu sync.Mutex
	n  int
}

func (h *warnCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && strings.Contains(r.Message, "authentication") {
		h.mu.Lock()
		h.n++
		h.mu.Unlock()
	}
	return nil
}
func (h *warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *warnCounter) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *warnCounter) WithGroup(string) slog.Handler            { return h }

func (h *warnCounter) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// TestAuthFailuresLogged: authentication failures are counted each, and
// logged at WARN once per source address per minute.
func TestAuthFailuresLogged(t *testing.T) {
	cli := testEtcd(t)
	wc := &warnCounter{}
	alice, _ := auth.NewKey()
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", Logger: slog.New(wc),
		Auth: &Auth{ClusterKey: alice, Keys: testKeys{"alice": alice}}})
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	for _, c := range []*tclient{a, b} {
		for i := range 50 {
			c.sendRaw(forge(t, wire.Keepalive{}, wire.Header{Session: 12345, Request: uint64(i + 1), Ack: 1}))
		}
	}
	waitFor(t, "failures counted", func() bool {
		return gatherValue(reg, "tokend_worker_auth_failures_total", "reason", "unknown_session") == 100
	})
	if n := wc.count(); n != 1 {
		t.Fatalf("%d WARN records for 100 failures from one address (127.0.0.1), want 1", n)
	}
}

// TestAuthSessionAtOtherWorker: a session opened at one worker is served,
// authenticated, by another, which learns it from etcd and unseals its
// key on first use; that worker's replies and REVOKEs are sealed too.
func TestAuthSessionAtOtherWorker(t *testing.T) {
	cli := testEtcd(t)
	ck, _ := auth.NewKey()
	alice, _ := auth.NewKey()
	a := &Auth{ClusterKey: ck, Keys: testKeys{"alice": alice}}
	w1, _ := startWorkerCfg(t, Config{Client: cli, ID: "w1", Auth: a})
	w2, _ := startWorkerCfg(t, Config{Client: cli, ID: "w2", Auth: a})
	putMap(t, cli, 1, []delegation.Owner{w1.testOwner(), w2.testOwner()},
		[]delegation.Run{{First: 0, Count: testShards / 2, Owner: 0, Epoch: 1}, {First: testShards / 2, Count: testShards / 2, Owner: 1, Epoch: 1}})
	waitFor(t, "both serve", func() bool { return w1.stats().shards == testShards/2 && w2.stats().shards == testShards/2 })

	c1, other := udpClient(t, w1), udpClient(t, w1)
	c1.openAuth("alice", alice, 0)
	other.openAuth("alice", alice, 0)
	c2 := newTClient(t, mustListen(t), w2.Addr(), testShards)
	c2.session, c2.next = c1.session, 1000
	c2.in, c2.out = auth.NewMAC(c1.skey, auth.WorkerToClient), auth.NewMAC(c1.skey, auth.ClientToWorker)
	o2 := newTClient(t, mustListen(t), w2.Addr(), testShards)
	o2.session, o2.next = other.session, 1000
	o2.in, o2.out = auth.NewMAC(other.skey, auth.WorkerToClient), auth.NewMAC(other.skey, auth.ClientToWorker)

	name := ""
	for i := 0; name == ""; i++ {
		if n := fmt.Sprintf("t%d", i); c2.shard(n) >= testShards/2 {
			name = n
		}
	}
	g := c2.acquire(name, wire.EX, false, wire.WaitForever) // call checks the reply's tag
	wantStatus(t, g, wire.StatusOK)
	wantStatus(t, o2.acquire(name, wire.EX, false, wire.WaitForever), wire.StatusQueued)
	r, ok := c2.event(5*time.Second, isType(wire.TypeRevoke))
	if !ok || !c2.verified(r) {
		t.Fatalf("REVOKE from the other worker: %v (received %v)", r, ok)
	}
	wantStatus(t, c2.release(name, g.grant(t).Fence), wire.StatusOK)
	m, ok := o2.event(5*time.Second, isType(wire.TypeGrantAsync))
	if !ok || !o2.verified(m) {
		t.Fatalf("GRANT_ASYNC from the other worker: %v (received %v)", m, ok)
	}
}

func mustListen(t testing.TB) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// guardedKeys is testKeys whose keys are valid in etcd while the key
// /test/keys/<name> exists, as cluster/keys.Store's are while
// /tokend/keys/<name> does.
type guardedKeys struct{ testKeys }

func (guardedKeys) StillValid(name string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision("/test/keys/"+name), ">", 0)
}

// TestAuthOpenKeyRevoked: a worker whose keys live in etcd creates a
// session only while its key is still there, so an open under way when
// the key is revoked leaves no session behind (tokenctl keys revoke ends
// the sessions it finds; this one it could not have found).
func TestAuthOpenKeyRevoked(t *testing.T) {
	cli := testEtcd(t)
	cluster, _ := auth.NewKey()
	alice, _ := auth.NewKey()
	w, _ := startWorkerCfg(t, Config{Client: cli, ID: "w1",
		Auth: &Auth{ClusterKey: cluster, Keys: guardedKeys{testKeys{"alice": alice}}}})
	serveAll(t, cli, w)
	c := udpClient(t, w)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/test/keys/alice", "x"); err != nil {
		t.Fatal(err)
	}
	r := c.openAuth("alice", alice, 0)
	wantStatus(t, r, wire.StatusOK)

	if _, err := cli.Delete(ctx, "/test/keys/alice"); err != nil {
		t.Fatal(err)
	}
	_, before := etcdWrites(t, cli)
	m, h := openMsg("alice", 0)
	m.Cookie = c.cookie(m, h)
	r2, ok := c.callRaw(sealOpen(t, m, h, alice), h.Request, 5*time.Second)
	if !ok {
		t.Fatal("no reply")
	}
	wantStatus(t, r2, wire.StatusUnavailable)
	if _, after := etcdWrites(t, cli); after != before {
		t.Fatalf("an open after the revocation made %d session documents", after-before)
	}
}

// TestRenewalAnswerLost: the answer to a KEEPALIVE with RENEW is lost and
// the client sends the same datagram again: it gets the answer again, with
// the TTL the renewal granted, and the lease is not renewed a second time.
func TestRenewalAnswerLost(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	c.openAuth("alice", f.alice, 3000)
	h := c.header(0, 0)
	h.Type = wire.TypeKeepalive
	first := mustCall(t, c, wire.Keepalive{Renew: true}, h)
	wantStatus(t, first, wire.StatusOK)
	var r1 wire.KeepaliveReply
	if err := r1.Decode(first.h, first.raw); err != nil || r1.SessionTTLMs == 0 {
		t.Fatalf("renewal: %+v, %v", r1, err)
	}
	dup0 := gatherValue(f.reg, "tokend_worker_ops_total", "result", "duplicate")
	again := mustCall(t, c, wire.Keepalive{Renew: true}, h) // the same request id: a copy
	var r2 wire.KeepaliveReply
	if err := r2.Decode(again.h, again.raw); err != nil || r2.SessionTTLMs != r1.SessionTTLMs {
		t.Fatalf("the copy was answered %+v (%v); want the first renewal's TTL %d", r2, err, r1.SessionTTLMs)
	}
	if gatherValue(f.reg, "tokend_worker_ops_total", "result", "duplicate") != dup0+1 {
		t.Fatal("the copy was not answered as a duplicate")
	}
}
