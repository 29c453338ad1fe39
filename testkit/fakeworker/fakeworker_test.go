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
)

// rawClient speaks the wire protocol by hand over faultnet: one request at
// a time; whatever else arrives (REVOKE, GRANT_ASYNC) is kept in extra.
type rawClient struct {
	t     *testing.T
	conn  *faultnet.Conn
	sess  uint64
	req   uint64
	extra []wire.Header
	pkts  [][]byte
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
	h, _ := cl.call(c.Addr(0), wire.TypeSessionOpen, 0, 0, wire.SessionOpen{})
	if h.Status != wire.StatusOK || h.Session == 0 {
		t.Fatalf("SESSION_OPEN: %v", h.Status)
	}
	cl.sess = h.Session
	return cl
}

// send sends a request with the next id (or id, if not 0) and returns the id.
func (cl *rawClient) send(to string, id uint64, typ wire.Type, shard, epoch uint32, body appender) uint64 {
	cl.t.Helper()
	if id == 0 {
		cl.req++
		id = cl.req
	}
	b, err := body.Append(nil, wire.Header{Type: typ, Session: cl.sess, Request: id, Shard: shard, Epoch: epoch})
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
