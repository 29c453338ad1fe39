package fakeworker

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// rawClient speaks the wire protocol by hand over faultnet: one request at
// a time; whatever else arrives (REVOKE, GRANT_ASYNC) is kept in extra.
// With the cluster's key it authenticates (c2w, w2c; nil: insecure) and
// fails the test on a datagram whose tag does not verify.
type rawClient struct {
	t        *testing.T
	conn     *faultnet.Conn
	sess     uint64
	req      uint64
	extra    []wire.Header
	pkts     [][]byte
	c2w, w2c *auth.MAC
}

func newCluster(t *testing.T, cfg Config) (*Cluster, *faultnet.Network) {
	t.Helper()
	n := faultnet.New(1)
	cfg.Listen = func(i int) (net.PacketConn, error) { return n.Listen(fmt.Sprintf("127.0.0.1:%d", 7701+i)) }
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, n
}

func dialRaw(t *testing.T, c *Cluster, n *faultnet.Network) *rawClient {
	t.Helper()
	conn, err := n.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cl := &rawClient{t: t, conn: conn}
	name, k, keyed := c.ClientKey()
	if !keyed {
		h, _ := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, wire.SessionOpen{})
		if h.Status != wire.StatusOK || h.Session == 0 {
			t.Fatalf("SESSION_OPEN: %v", h.Status)
		}
		cl.sess = h.Session
		return cl
	}
	nonce, _ := auth.NewNonce()
	open := wire.SessionOpen{Nonce: nonce, KeyName: []byte(name)}
	h, b := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, open)
	var ck wire.Cookie
	if h.Status != wire.StatusCookie || ck.Decode(h, b) != nil || !zeroTag(b) {
		t.Fatalf("SESSION_OPEN without cookie: %v, want an untagged COOKIE", h.Status)
	}
	open.Cookie = ck.Cookie[:]
	cl.c2w = auth.NewMAC(auth.OpenKey(k), auth.ClientToWorker)
	h, b = cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, open)
	var r wire.SessionReply
	if h.Status != wire.StatusOK || r.Decode(h, b) != nil {
		t.Fatalf("SESSION_OPEN with cookie: %v", h.Status)
	}
	sk := auth.SessionKey(k, nonce, auth.Nonce(r.WorkerNonce), h.Session)
	cl.c2w, cl.w2c = auth.NewMAC(sk, auth.ClientToWorker), auth.NewMAC(sk, auth.WorkerToClient)
	if !cl.w2c.Verify(b) {
		t.Fatal("the OK answer to SESSION_OPEN does not verify under the session key")
	}
	cl.sess = h.Session
	return cl
}

func zeroTag(b []byte) bool {
	for _, x := range b[wire.AuthOffset : wire.AuthOffset+wire.AuthLen] {
		if x != 0 {
			return false
		}
	}
	return true
}

// send sends a request with the next id (or id, if not 0) and returns the id.
func (cl *rawClient) send(to string, id uint64, typ wire.Type, shard, epoch uint32, body appender) uint64 {
	cl.t.Helper()
	if id == 0 {
		cl.req++
		id = cl.req
	}
	b, err := body.Append(nil, wire.Header{Type: typ, Session: cl.sess, Request: id, Shard: shard, Epoch: epoch})
	if err == nil && cl.c2w != nil {
		err = cl.c2w.Seal(b)
	}
	if err != nil {
		cl.t.Fatal(err)
	}
	ap, err := netip.ParseAddrPort(to)
	if err != nil {
		cl.t.Fatal(err)
	}
	if _, err := cl.conn.WriteTo(b, net.UDPAddrFromAddrPort(ap)); err != nil {
		cl.t.Fatal(err)
	}
	return id
}

// wait returns the next datagram that satisfies ok; others go to extra.
func (cl *rawClient) wait(ok func(wire.Header) bool) (wire.Header, []byte) {
	cl.t.Helper()
	for i, h := range cl.extra {
		if ok(h) {
			p := cl.pkts[i]
			cl.extra, cl.pkts = append(cl.extra[:i], cl.extra[i+1:]...), append(cl.pkts[:i], cl.pkts[i+1:]...)
			return h, p
		}
	}
	buf := make([]byte, wire.MaxDatagram)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_ = cl.conn.SetReadDeadline(deadline)
		n, _, err := cl.conn.ReadFrom(buf)
		if err != nil {
			cl.t.Fatalf("no datagram: %v", err)
		}
		b := append([]byte(nil), buf[:n]...)
		h, err := wire.ParseHeader(b)
		if err != nil {
			cl.t.Fatal(err)
		}
		if cl.w2c != nil && h.Session != 0 && !cl.w2c.Verify(b) {
			cl.t.Fatalf("%v %v of session %#x: the tag does not verify", h.Type, h.Status, h.Session)
		}
		if ok(h) {
			return h, b
		}
		cl.extra, cl.pkts = append(cl.extra, h), append(cl.pkts, b)
	}
}

func (cl *rawClient) call(to string, typ wire.Type, shard, epoch uint32, body appender) (wire.Header, []byte) {
	cl.t.Helper()
	id := cl.send(to, 0, typ, shard, epoch, body)
	return cl.wait(func(h wire.Header) bool { return h.Type == typ.Reply() && h.Request == id })
}

func (cl *rawClient) grant(h wire.Header, b []byte) wire.Grant {
	cl.t.Helper()
	if h.Status != wire.StatusOK {
		cl.t.Fatalf("%v: %v, want a grant", h.Type, h.Status)
	}
	var g wire.Grant
	if err := g.Decode(h, b); err != nil {
		cl.t.Fatal(err)
	}
	return g
}

func whole(name string, mode wire.Mode) wire.Acquire {
	return wire.Acquire{Mode: mode, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}
}

// TestQueueRevokeRelease: a conflicting ACQUIRE queues, the holder gets a
// REVOKE (retransmitted until acknowledged), and its RELEASE grants the
// waiter with the next fence; a duplicate is answered from the reply cache.
func TestQueueRevokeRelease(t *testing.T) {
	var mu sync.Mutex
	kinds := map[EventKind]int{}
	c, n := newCluster(t, Config{Trace: func(e Event) {
		mu.Lock()
		kinds[e.Kind]++
		mu.Unlock()
	}})
	a, b := dialRaw(t, c, n), dialRaw(t, c, n)
	shard := wire.Shard([]byte("t"), c.Shards())
	g1 := a.grant(a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("t", wire.EX)))
	if g1.Fence != wire.MakeFence(1, 1) {
		t.Fatalf("fence %#x", g1.Fence)
	}
	id := b.send(c.Addr(0), 0, wire.TypeAcquire, shard, 1, whole("t", wire.PR))
	if h, _ := b.wait(func(h wire.Header) bool { return h.Request == id }); h.Status != wire.StatusQueued {
		t.Fatalf("second ACQUIRE: %v", h.Status)
	}
	if w := c.Waiters(0, "t"); w != 1 {
		t.Fatalf("%d waiters", w)
	}
	rh, rb := a.wait(func(h wire.Header) bool { return h.Type == wire.TypeRevoke })
	var rv wire.Revoke
	if err := rv.Decode(rh, rb); err != nil || rv.Fence != g1.Fence || rv.Mode != wire.PR {
		t.Fatalf("REVOKE %+v: %v", rv, err)
	}
	again, _ := a.wait(func(h wire.Header) bool { return h.Type == wire.TypeRevoke })
	if again.Request != rh.Request {
		t.Fatalf("retransmitted REVOKE has id %d, want %d", again.Request, rh.Request)
	}
	a.send(c.Addr(0), 0, wire.TypeRevokeAck, shard, 1, wire.RevokeAck{Target: rh.Request})
	a.call(c.Addr(0), wire.TypeRelease, shard, 1, wire.Release{Fence: g1.Fence, Name: []byte("t")})
	g2 := b.grant(b.wait(func(h wire.Header) bool { return h.Type == wire.TypeGrantAsync }))
	if g2.Fence != wire.MakeFence(1, 2) || g2.Mode != wire.PR {
		t.Fatalf("async grant %+v", g2)
	}
	if gs := c.Grants(0, "t"); len(gs) != 1 || gs[0].Session != b.sess || gs[0].Fence != g2.Fence {
		t.Fatalf("grants %+v", gs)
	}
	// The waiter asks again with the same id: the grant, from the cache.
	b.send(c.Addr(0), id, wire.TypeAcquire, shard, 1, whole("t", wire.PR))
	if g := b.grant(b.wait(func(h wire.Header) bool { return h.Request == id })); g.Fence != g2.Fence {
		t.Fatalf("duplicate answered %+v", g)
	}
	eventually(t, "the REVOKE acknowledged", func() bool { return c.Revoking(0) == 0 })
	mu.Lock()
	defer mu.Unlock()
	if kinds[Resent] == 0 || kinds[Applied] < 3 || kinds[Received] == 0 || kinds[Sent] == 0 || kinds[Handled] == 0 {
		t.Fatalf("traced %v", kinds)
	}
}

// TestRedirect: a worker that does not serve a shard answers NOT_OWNER with
// the owner's address and epoch, or without an address when hintless.
func TestRedirect(t *testing.T) {
	c, n := newCluster(t, Config{Workers: 2})
	a := dialRaw(t, c, n)
	shard := wire.Shard([]byte("r"), c.Shards())
	c.SetOwner(shard, 1, 2, Fresh)
	if c.MapVersion() != 2 {
		t.Fatalf("map version %d", c.MapVersion())
	}
	h, b := a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("r", wire.EX))
	var no wire.NotOwner
	if err := no.Decode(h, b); err != nil || h.Status != wire.StatusNotOwner || string(no.Addr) != c.Addr(1) || no.Epoch != 2 {
		t.Fatalf("%v %+v %v", h.Status, no, err)
	}
	if g := a.grant(a.call(c.Addr(1), wire.TypeAcquire, shard, 2, whole("r", wire.EX))); wire.FenceEpoch(g.Fence) != 2 {
		t.Fatalf("fence %#x", g.Fence)
	}
	c.SetHintless(true)
	h, b = a.call(c.Addr(0), wire.TypeAcquire, shard, 2, whole("r", wire.EX))
	if err := no.Decode(h, b); err != nil || h.Status != wire.StatusNotOwner || len(no.Addr) != 0 {
		t.Fatalf("hintless: %v %+v %v", h.Status, no, err)
	}
}

// TestRestartAndHandoff: after a restart the shard is in grace at epoch+1
// and the holder reclaims its grant with the old fence; a handoff carries
// the grant to the new owner.
func TestRestartAndHandoff(t *testing.T) {
	c, n := newCluster(t, Config{Workers: 2, Grace: time.Minute})
	a := dialRaw(t, c, n)
	shard := wire.Shard([]byte("h"), c.Shards())
	g := a.grant(a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("h", wire.EX)))
	c.Restart(0)
	if o, e := c.Owner(shard); o != 0 || e != 2 || len(c.Grants(0, "h")) != 0 {
		t.Fatalf("after restart: owner %d epoch %d grants %v", o, e, c.Grants(0, "h"))
	}
	if h, _ := a.call(c.Addr(0), wire.TypeAcquire, shard, 2, whole("h", wire.EX)); h.Status != wire.StatusGrace {
		t.Fatalf("ACQUIRE in grace: %v", h.Status)
	}
	rc := wire.Reclaim{Fence: g.Fence, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("h")}
	if r := a.grant(a.call(c.Addr(0), wire.TypeReclaim, shard, 2, rc)); r.Fence != g.Fence || r.ValueFlags != wire.ValueLost {
		t.Fatalf("reclaimed %+v", r)
	}
	c.Answer(wire.TypeReclaim, wire.StatusReclaimRefused)
	if h, _ := a.call(c.Addr(0), wire.TypeReclaim, shard, 2, rc); h.Status != wire.StatusReclaimRefused {
		t.Fatalf("forced answer: %v", h.Status)
	}
	c.Answer(wire.TypeReclaim, wire.StatusOK)
	// A handoff needs a table out of its grace period: a fresh one.
	c.SetOwner(shard, 1, 3, Fresh)
	g3 := a.grant(a.call(c.Addr(1), wire.TypeAcquire, shard, 3, whole("h", wire.EX)))
	c.SetOwner(shard, 0, 4, Handoff)
	if gs := c.Grants(0, "h"); len(gs) != 1 || gs[0].Fence != g3.Fence {
		t.Fatalf("handed off %+v", gs)
	}
	rc.Fence = g3.Fence
	if r := a.grant(a.call(c.Addr(0), wire.TypeReclaim, shard, 4, rc)); r.Fence != g3.Fence {
		t.Fatalf("confirmed %+v", r)
	}
}

// TestSessionExpiry: a session that is not renewed ends: its grants go,
// and its requests are answered SESSION_EXPIRED.
func TestSessionExpiry(t *testing.T) {
	expired := make(chan uint64, 1)
	c, n := newCluster(t, Config{SessionTTL: 100 * time.Millisecond, Trace: func(e Event) {
		if e.Kind == Expired {
			expired <- e.Header.Session
		}
	}})
	a := dialRaw(t, c, n)
	shard := wire.Shard([]byte("e"), c.Shards())
	a.grant(a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("e", wire.EX)))
	select {
	case id := <-expired:
		if id != a.sess {
			t.Fatalf("session %#x expired, want %#x", id, a.sess)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no expiry")
	}
	if gs := c.Grants(0, "e"); len(gs) != 0 {
		t.Fatalf("grants %+v", gs)
	}
	if h, _ := a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("e", wire.EX)); h.Status != wire.StatusSessionExpired {
		t.Fatalf("after expiry: %v", h.Status)
	}
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !f(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestAuthentication: the COOKIE round trip; datagrams whose tag does not
// verify (a wrong key, a flipped byte, an unknown session) are dropped and
// counted, unanswered; the fake's Seal makes a forgery a worker's.
func TestAuthentication(t *testing.T) {
	c, n := newCluster(t, Config{})
	a := dialRaw(t, c, n)
	shard := wire.Shard([]byte("k"), c.Shards())
	a.grant(a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("k", wire.EX)))
	if got := c.AuthFailures(); got != 0 {
		t.Fatalf("%d auth failures after an authenticated exchange", got)
	}

	// A RELEASE tagged with another key, and one with a flipped byte.
	other, _ := auth.NewKey()
	good := a.c2w
	a.c2w = auth.NewMAC(other, auth.ClientToWorker)
	a.send(c.Addr(0), 0, wire.TypeRelease, shard, 1, wire.Release{Fence: wire.MakeFence(1, 1), Name: []byte("k")})
	eventually(t, "a wrongly tagged RELEASE counted", func() bool { return c.AuthFailures() == 1 })
	a.c2w = nil
	a.send(c.Addr(0), 0, wire.TypeRelease, shard, 1, wire.Release{Fence: wire.MakeFence(1, 1), Name: []byte("k")})
	eventually(t, "an untagged RELEASE counted", func() bool { return c.AuthFailures() == 2 })
	if gs := c.Grants(0, "k"); len(gs) != 1 {
		t.Fatalf("a forged RELEASE released the grant: %+v", gs)
	}
	// A guessed session id.
	a.c2w, a.sess = good, a.sess^1
	a.send(c.Addr(0), 0, wire.TypeKeepalive, 0, 0, wire.Keepalive{Renew: true})
	eventually(t, "a guessed session counted", func() bool { return c.AuthFailures() == 3 })
	// One ended by EndSession without ever being opened: no key either.
	a.sess ^= 3
	c.EndSession(a.sess)
	a.send(c.Addr(0), 0, wire.TypeKeepalive, 0, 0, wire.Keepalive{Renew: true})
	eventually(t, "a session ended unopened counted", func() bool { return c.AuthFailures() == 4 })
	a.sess ^= 2
	// Nothing of the three was answered: the next datagram is the answer
	// to the next request.
	h, _ := a.call(c.Addr(0), wire.TypeKeepalive, 0, 0, wire.Keepalive{Renew: true})
	if h.Status != wire.StatusOK || len(a.extra) != 0 {
		t.Fatalf("KEEPALIVE: %v; %d other datagrams arrived", h.Status, len(a.extra))
	}

	// Seal signs as the session's worker.
	b, err := wire.Empty{}.Append(nil, wire.Header{Type: wire.TypeReleaseReply, Session: a.sess, Request: 99, Shard: shard, Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Seal(b); err != nil || !a.w2c.Verify(b) {
		t.Fatalf("Seal: %v, verifies %v", err, a.w2c.Verify(b))
	}
}

// TestOpenRefused: an open with an unknown key name or with a wrong key
// gets a COOKIE and then nothing; one without a key name BAD_REQUEST; a
// cookie for another nonce a fresh COOKIE.
func TestOpenRefused(t *testing.T) {
	c, n := newCluster(t, Config{Keys: map[string]auth.Key{"alice": {1}}})
	if name, k, ok := c.ClientKey(); !ok || name != "alice" || k != (auth.Key{1}) {
		t.Fatalf("ClientKey: %q %v", name, ok)
	}
	conn, err := n.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cl := &rawClient{t: t, conn: conn}
	if h, _ := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, wire.SessionOpen{}); h.Status != wire.StatusBadRequest {
		t.Fatalf("open without a key name: %v", h.Status)
	}
	for i, tc := range []struct {
		name string
		key  auth.Key
	}{{"bob", auth.Key{1}}, {"alice", auth.Key{2}}} {
		open := wire.SessionOpen{Nonce: auth.Nonce{byte(i)}, KeyName: []byte(tc.name)}
		h, b := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, open)
		var ck wire.Cookie
		if h.Status != wire.StatusCookie || ck.Decode(h, b) != nil {
			t.Fatalf("%s: %v, want COOKIE", tc.name, h.Status)
		}
		open.Cookie = ck.Cookie[:]
		cl.c2w = auth.NewMAC(auth.OpenKey(tc.key), auth.ClientToWorker)
		before := c.AuthFailures()
		cl.send(c.Addr(0), 0, wire.TypeSessionOpen, 0, 0, open)
		eventually(t, tc.name+": the open dropped and counted", func() bool { return c.AuthFailures() == before+1 })
		cl.c2w = nil
	}
	// The right key with a cookie minted for another nonce.
	open := wire.SessionOpen{Nonce: auth.Nonce{7}, KeyName: []byte("alice")}
	h, b := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, open)
	var ck wire.Cookie
	if h.Status != wire.StatusCookie || ck.Decode(h, b) != nil {
		t.Fatalf("%v, want COOKIE", h.Status)
	}
	open.Nonce, open.Cookie = auth.Nonce{8}, ck.Cookie[:]
	cl.c2w = auth.NewMAC(auth.OpenKey(auth.Key{1}), auth.ClientToWorker)
	if h, _ := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, open); h.Status != wire.StatusCookie {
		t.Fatalf("a cookie for another nonce: %v, want a fresh COOKIE", h.Status)
	}
	if len(cl.extra) != 0 {
		t.Fatalf("%d unexpected answers to refused opens", len(cl.extra))
	}
}

// TestInsecure: without authentication the open is answered at once, tags
// are zero, and unknown sessions get UNKNOWN_SESSION.
func TestInsecure(t *testing.T) {
	c, n := newCluster(t, Config{Insecure: true})
	if _, _, ok := c.ClientKey(); ok {
		t.Fatal("an insecure cluster has a client key")
	}
	a := dialRaw(t, c, n)
	shard := wire.Shard([]byte("i"), c.Shards())
	h, b := a.call(c.Addr(0), wire.TypeAcquire, shard, 1, whole("i", wire.EX))
	a.grant(h, b)
	if !zeroTag(b) {
		t.Fatal("an insecure worker tagged its answer")
	}
	a.sess ^= 1
	if h, _ := a.call(c.Addr(0), wire.TypeKeepalive, 0, 0, wire.Keepalive{}); h.Status != wire.StatusUnknownSession {
		t.Fatalf("unknown session: %v", h.Status)
	}
}

// TestBundles: a session that offered bundles in its SESSION_OPEN gets the
// flag back, and the requests of a BUNDLE are each served and answered in
// one BUNDLE_REPLY (that a session that did not offer them gets none is
// clientlib's TestBundleNoBundle). With NoBundle the worker plays an older one: the open with the flag and the
// BUNDLE are dropped, the open without it is answered without it.
func TestBundles(t *testing.T) {
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("old=%v", old), func(t *testing.T) {
			c, n := newCluster(t, Config{Insecure: true, NoBundle: old})
			cl := &rawClient{t: t}
			conn, err := n.Listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })
			cl.conn = conn
			to := net.UDPAddrFromAddrPort(netip.MustParseAddrPort(c.Addr(0)))
			// silent reports whether nothing comes back for a while.
			silent := func() bool {
				buf := make([]byte, wire.MaxDatagram)
				_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				_, _, err := conn.ReadFrom(buf)
				return err != nil
			}
			open := func(bundle bool) (wire.Header, wire.SessionReply, bool) {
				cl.req++
				b, err := wire.SessionOpen{Bundle: bundle}.Append(nil, wire.Header{Type: wire.TypeSessionOpen, Request: cl.req})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := conn.WriteTo(b, to); err != nil {
					t.Fatal(err)
				}
				if old && bundle {
					return wire.Header{}, wire.SessionReply{}, silent()
				}
				id := cl.req
				h, rb := cl.wait(func(h wire.Header) bool { return h.Type == wire.TypeSessionOpenReply && h.Request == id })
				var r wire.SessionReply
				if h.Status != wire.StatusOK || r.Decode(h, rb) != nil {
					t.Fatalf("SESSION_OPEN: %v", h.Status)
				}
				return h, r, true
			}
			h, r, ok := open(true)
			if old {
				if !ok {
					t.Fatal("an old worker answered a SESSION_OPEN with flag BUNDLE")
				}
				h, r, _ = open(false)
			}
			if r.Bundle == old {
				t.Fatalf("SESSION_OPEN reply flag BUNDLE %v, want %v", r.Bundle, !old)
			}
			cl.sess = h.Session
			// A BUNDLE of two ACQUIREs.
			var ds [][]byte
			for _, name := range []string{"x", "y"} {
				cl.req++
				b, err := whole(name, wire.EX).Append(nil, wire.Header{Type: wire.TypeAcquire, Session: cl.sess, Request: cl.req,
					Shard: wire.Shard([]byte(name), c.Shards()), Epoch: 1})
				if err != nil {
					t.Fatal(err)
				}
				ds = append(ds, b)
			}
			bundle, err := wire.Bundle{Datagrams: ds}.Append(nil, wire.Header{Type: wire.TypeBundle, Session: cl.sess, Request: cl.req - 1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.WriteTo(bundle, to); err != nil {
				t.Fatal(err)
			}
			if old {
				if !silent() {
					t.Fatal("an old worker answered a BUNDLE")
				}
				if in, _, _, out, _ := c.Bundles(); in != 0 || out != 0 {
					t.Fatalf("an old worker took %d BUNDLEs and sent %d", in, out)
				}
				return
			}
			bh, bb := cl.wait(func(h wire.Header) bool { return h.Type == wire.TypeBundleReply })
			var got wire.Bundle
			if err := got.Decode(bh, bb); err != nil {
				t.Fatal(err)
			}
			if len(got.Datagrams) != 2 {
				t.Fatalf("BUNDLE_REPLY of %d datagrams, want 2", len(got.Datagrams))
			}
			for i, d := range got.Datagrams {
				dh, err := wire.ParseHeader(d)
				if err != nil {
					t.Fatal(err)
				}
				if dh.Type != wire.TypeAcquireReply || dh.Request != cl.req-1+uint64(i) {
					t.Fatalf("datagram %d in the BUNDLE_REPLY: %v to %d", i, dh.Type, dh.Request)
				}
				cl.grant(dh, d)
			}
			if in, bin, bad, out, bout := c.Bundles(); in != 1 || bin != 2 || bad != 0 || out != 1 || bout != 2 {
				t.Fatalf("Bundles() = %d, %d, %d, %d, %d; want 1, 2, 0, 1, 2", in, bin, bad, out, bout)
			}
		})
	}
}
