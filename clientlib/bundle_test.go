package clientlib

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/testkit/allocs"
	"github.com/tokend/tokend/wire"
)

// Bundles (wire/SPEC.md section 22): the send queue packs what waits for a
// worker that takes them, the receive loop takes BUNDLE_REPLYs datagram by
// datagram, and the session open offers them in a way older workers
// survive.

// testRequest is a sealed (untagged) ACQUIRE of session sess with request
// id req, map version mv and a name of n bytes.
func testRequest(t *testing.T, sess, req, mv uint64, n int) []byte {
	t.Helper()
	name := []byte(fmt.Sprintf("%0*d", n, req))
	h := wire.Header{Type: wire.TypeAcquire, Session: sess, Request: req, Shard: wire.Shard(name, 16), Epoch: 1, MapVersion: mv}
	b, err := wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Name: name}.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSendQueuePacksBundles: the datagrams queued behind a running send go
// in BUNDLEs to a destination that takes them, in their order, at most
// wire.MaxDatagram bytes each, one session per bundle; a lone one, one for
// another destination and one a bundle may not carry go alone; the
// leader's own datagram goes at once, alone.
func TestSendQueuePacksBundles(t *testing.T) {
	rc := &recordConn{max: 100}
	taker := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	takerCopy := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9} // the same address, another value
	other := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10}
	q := &sendQueue{bc: rc, takes: func(to net.Addr) bool { return sameAddr(to, taker) }}

	lead := testRequest(t, 7, 1, 3, 10)
	if q.enqueue(lead, taker, true) != sendNow {
		t.Fatal("an idle queue did not let the first sender write at once")
	}
	mapReq, err := wire.MapRequest{}.Append(nil, wire.Header{Type: wire.TypeMapRequest, Session: 7, Request: 90})
	if err != nil {
		t.Fatal(err)
	}
	type queued struct {
		b  []byte
		to net.Addr
	}
	qs := []queued{
		{testRequest(t, 7, 2, 4, 255), taker},     // bundle A
		{testRequest(t, 7, 3, 5, 255), other},     // alone: another destination
		{testRequest(t, 7, 4, 5, 255), takerCopy}, // bundle A
		{testRequest(t, 7, 5, 5, 255), taker},     // bundle A (3 × 341 bytes)
		{testRequest(t, 7, 6, 6, 255), taker},     // does not fit: bundle B
		{testRequest(t, 7, 7, 6, 10), taker},      // bundle B
		{mapReq, taker},                           // not bundled, and ends bundle B
		{testRequest(t, 7, 8, 6, 10), taker},      // alone: nothing after it for taker but...
		{testRequest(t, 8, 9, 6, 10), taker},      // ... another session: alone too
		{testRequest(t, 7, 10, 6, 10), other},     // alone
		{testRequest(t, 7, 11, 6, 10), other},     // alone: other takes no bundles
	}
	for _, x := range qs {
		if q.enqueue(x.b, x.to, true) != sendQueued {
			t.Fatal("a datagram was not queued behind the running send")
		}
	}
	q.drain(func(err error) { t.Errorf("send failed: %v", err) })
	// portOf says to which destination datagram d was queued.
	portOf := func(d []byte) int {
		t.Helper()
		for _, x := range qs {
			if string(x.b) == string(d) {
				return x.to.(*net.UDPAddr).Port
			}
		}
		t.Fatalf("a datagram that was never queued went out")
		return 0
	}

	// What went out, bundles opened: per destination port, the request
	// ids in order.
	got := map[int][]uint64{}
	var bundles [][]uint64
	for i, s := range rc.got {
		b := []byte(s)
		h, err := wire.ParseHeader(b)
		if err != nil {
			t.Fatalf("datagram %d does not parse: %v", i, err)
		}
		var port int
		if h.Type != wire.TypeBundle {
			port = portOf(b)
			got[port] = append(got[port], h.Request)
			continue
		}
		if len(b) > wire.MaxDatagram {
			t.Fatalf("bundle of %d bytes", len(b))
		}
		if err := wire.CheckBundle(h, b); err != nil {
			t.Fatalf("bundle %d: %v", i, err)
		}
		var ids []uint64
		for e := b[wire.HeaderLen:]; len(e) > 0; {
			var d []byte
			d, e = wire.NextBundled(e)
			dh, err := wire.ParseHeader(d)
			if err != nil {
				t.Fatalf("bundled datagram: %v", err)
			}
			if len(ids) == 0 && (h.Request != dh.Request || h.MapVersion != dh.MapVersion || h.Session != dh.Session) {
				t.Errorf("bundle header request %d map %d session %d, first datagram %d %d %d",
					h.Request, h.MapVersion, h.Session, dh.Request, dh.MapVersion, dh.Session)
			}
			ids = append(ids, dh.Request)
			port = portOf(d)
		}
		if len(ids) < 2 {
			t.Errorf("a bundle of %d datagram", len(ids))
		}
		bundles = append(bundles, ids)
		got[port] = append(got[port], ids...)
	}
	if want := [][]uint64{{2, 4, 5}, {6, 7}}; !slices.EqualFunc(bundles, want, slices.Equal) {
		t.Errorf("bundles %v, want %v", bundles, want)
	}
	if want := []uint64{2, 4, 5, 6, 7, 90, 8, 9}; !slices.Equal(got[9], want) {
		t.Errorf("to the taker, in order: %v, want %v", got[9], want)
	}
	if want := []uint64{3, 10, 11}; !slices.Equal(got[10], want) {
		t.Errorf("to the other: %v, want %v", got[10], want)
	}
	if n, in := q.sentBundle.Load(), q.inBundles.Load(); n != 2 || in != 5 {
		t.Errorf("counted %d bundles of %d datagrams, want 2 of 5", n, in)
	}
}

// hammer runs rounds of acquire+release from many goroutines, each on a
// token of its own, checking each answer against the worker's table,
// until done says enough or rounds run out; it returns the rounds run.
func hammer(t *testing.T, fc *fakeCluster, c *Client, goroutines, rounds int, done func() bool) int {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	for r := range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			name := fmt.Sprintf("b/%d/%d", r, g)
			wg.Go(func() {
				tok, err := c.Acquire(ctx, name, wire.EX)
				if err != nil {
					errs <- fmt.Errorf("acquire %s: %w", name, err)
					return
				}
				if tok.Name() != name || tok.Mode() != wire.EX {
					errs <- fmt.Errorf("acquire %s: got %s in %v", name, tok.Name(), tok.Mode())
				}
				w, _ := fc.fw.Owner(wire.Shard([]byte(name), fc.cfg.shardCount))
				gs := fc.grants(w, name)
				if len(gs) != 1 || gs[0].fence != tok.Fence() || gs[0].sess != c.Session() {
					errs <- fmt.Errorf("acquire %s: fence %d, the worker holds %+v", name, tok.Fence(), gs)
				}
				if err := tok.Release(ctx); err != nil {
					errs <- fmt.Errorf("release %s: %w", name, err)
					return
				}
				if gs := fc.grants(w, name); len(gs) != 0 {
					errs <- fmt.Errorf("release %s: the worker still holds %+v", name, gs)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() || done() {
			return r + 1
		}
	}
	return rounds
}

// TestBundleOldWorker: against workers from before bundles the open gets
// through (its sends alternate with and without the flag, and the ones
// with it are dropped), and no BUNDLE ever goes to them, however many
// requests wait to be sent together.
func TestBundleOldWorker(t *testing.T) {
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			fc := newFakeCluster(t, 2201, fakeConfig{realUDP: true, noBundle: true, insecure: insecure})
			c := fc.dial(t, Config{})
			fc.mu.Lock()
			flagged := fc.flaggedOpens[0]
			fc.mu.Unlock()
			if flagged == 0 {
				t.Fatal("no SESSION_OPEN offered bundles")
			}
			if c.takesBundles(net.UDPAddrFromAddrPort(netip.MustParseAddrPort(fc.addr(0)))) {
				t.Fatal("the client takes an old worker for one that takes bundles")
			}
			hammer(t, fc, c, 32, 5, func() bool { return false })
			fc.mu.Lock()
			got := fc.bundles[0]
			fc.mu.Unlock()
			if got != 0 || c.Stats().BundlesSent != 0 {
				t.Fatalf("%d BUNDLEs reached the old worker (client counts %d)", got, c.Stats().BundlesSent)
			}
			if _, _, _, out, _ := fc.fw.Bundles(); out != 0 {
				t.Fatalf("the old worker sent %d BUNDLE_REPLYs", out)
			}
			t.Logf("%d flagged opens dropped; %d datagrams sent", flagged, c.Stats().Sent)
		})
	}
}

// TestBundleConcurrent: against workers that take bundles, concurrent
// requests from many goroutines go out in BUNDLEs, the answers come back
// in BUNDLE_REPLYs, and every call gets its own answer.
func TestBundleConcurrent(t *testing.T) {
	fc := newFakeCluster(t, 2202, fakeConfig{realUDP: true, workers: 2})
	for s := uint32(0); s < fc.cfg.shardCount; s += 2 {
		fc.setOwner(s, 1, 2, false)
	}
	c := fc.dial(t, Config{})
	if !c.takesBundles(net.UDPAddrFromAddrPort(netip.MustParseAddrPort(fc.addr(0)))) {
		t.Fatal("the worker's OK SESSION_REPLY offered bundles, and the client did not take it")
	}
	rounds := hammer(t, fc, c, 64, 100, func() bool {
		st := c.Stats()
		return st.BundlesSent > 0 && st.BundlesReceived > 0
	})
	st := c.Stats()
	in, bundledIn, bad, out, bundledOut := fc.fw.Bundles()
	t.Logf("%d rounds; client: %d datagrams sent, %d in %d bundles; %d bundles of %d received; workers: %d bundles of %d in, %d bad, %d of %d out",
		rounds, st.Sent, st.BundledSent, st.BundlesSent, st.BundlesReceived, st.BundledReceived, in, bundledIn, bad, out, bundledOut)
	if st.BundlesSent == 0 || in == 0 {
		t.Fatalf("no BUNDLE sent in %d rounds of 64 concurrent pairs", rounds)
	}
	if st.BundlesReceived == 0 || out == 0 {
		t.Fatalf("no BUNDLE_REPLY received in %d rounds", rounds)
	}
	if bad != 0 || st.BundlesDropped != 0 || st.AuthFailures != 0 {
		t.Fatalf("bad bundles: %d at the workers, %d at the client; %d auth failures", bad, st.BundlesDropped, st.AuthFailures)
	}
}

// TestBundleLossy: with bundles on a network that loses and duplicates
// datagrams (whole bundles included), every call completes with its own
// answer: retransmissions, alone or in other bundles, recover the rest.
func TestBundleLossy(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	fc := newFakeCluster(t, 2203, fakeConfig{realUDP: true})
	c := fc.dial(t, Config{})
	fc.fw.SetLoss(0.2, 0.1)
	rounds := 0
	hammer(t, fc, c, 96, 100, func() bool {
		rounds++
		return rounds >= 4 && c.Stats().BundlesSent >= 5
	})
	fc.fw.SetLoss(0, 0)
	st := c.Stats()
	in, _, _, out, _ := fc.fw.Bundles()
	t.Logf("client: %d datagrams sent, %d in %d bundles; %d bundles received; workers: %d bundles in, %d out",
		st.Sent, st.BundledSent, st.BundlesSent, st.BundlesReceived, in, out)
	// A request id the worker got more than once was retransmitted (the
	// fake duplicates only what it sends).
	fc.mu.Lock()
	times := map[fakeReq]int{}
	again := 0
	for _, x := range fc.seen {
		if x.typ == wire.TypeAcquire || x.typ == wire.TypeRelease {
			if times[fakeReq{x.sess, x.req}]++; times[fakeReq{x.sess, x.req}] == 2 {
				again++
			}
		}
	}
	fc.mu.Unlock()
	if again == 0 {
		t.Fatal("no request was retransmitted on a lossy network")
	}
	t.Logf("%d requests reached the worker more than once", again)
	if st.BundlesSent < 5 || out == 0 {
		t.Fatalf("%d BUNDLEs sent, %d BUNDLE_REPLYs received in %d rounds", st.BundlesSent, out, rounds)
	}
}

// TestBundleNoBundle: Config.NoBundle sends every datagram alone, does not
// offer bundles, and so gets none back.
func TestBundleNoBundle(t *testing.T) {
	fc := newFakeCluster(t, 2204, fakeConfig{realUDP: true})
	c := fc.dial(t, Config{NoBundle: true})
	hammer(t, fc, c, 64, 5, func() bool { return false })
	fc.mu.Lock()
	flagged, got := fc.flaggedOpens[0], fc.bundles[0]
	fc.mu.Unlock()
	st := c.Stats()
	if flagged != 0 {
		t.Fatalf("%d SESSION_OPENs offered bundles", flagged)
	}
	if got != 0 || st.BundlesSent != 0 {
		t.Fatalf("%d BUNDLEs reached the worker (client counts %d)", got, st.BundlesSent)
	}
	if _, _, _, out, _ := fc.fw.Bundles(); out != 0 || st.BundlesReceived != 0 {
		t.Fatalf("the worker sent %d BUNDLE_REPLYs to a session that did not offer bundles", out)
	}
}

// bundleReply builds a BUNDLE_REPLY of datagrams ds, its header from the
// first.
func bundleReply(t *testing.T, ds ...[]byte) []byte {
	t.Helper()
	h, err := wire.ParseHeader(ds[0])
	if err != nil {
		t.Fatal(err)
	}
	b := wire.AppendHeader(nil, wire.Header{Type: wire.TypeBundleReply, Session: h.Session, Request: h.Request, MapVersion: h.MapVersion})
	for _, d := range ds {
		b = wire.AppendBundled(b, d)
	}
	if err := wire.Seal(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// grantFor is a GRANT answering cl, tagged as its worker would.
func grantFor(t *testing.T, fc *fakeCluster, c *Client, cl *call, fence uint64) []byte {
	t.Helper()
	h := wire.Header{Type: wire.TypeAcquireReply, Session: c.Session(), Request: cl.id, Shard: 1, Epoch: 1,
		MapVersion: c.mapVer.Load()}
	b, err := wire.Grant{Fence: wire.MakeFence(1, fence), Mode: wire.EX, ValidityMs: 1000}.Append(nil, h)
	if err == nil {
		err = fc.fw.Seal(b)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// registered returns n registered ACQUIRE calls, finished at the test's end.
func registered(t *testing.T, c *Client, n int) []*call {
	var cls []*call
	for range n {
		cl := &call{typ: wire.TypeAcquire, body: wire.Acquire{Mode: wire.EX, Name: []byte("n")}, routed: true}
		if err := c.register(context.Background(), cl, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.finish(cl) })
		cls = append(cls, cl)
	}
	return cls
}

// TestBundleReplyForgedInner: a datagram in a BUNDLE_REPLY whose tag does
// not verify is dropped and counted alone, the others are taken; a bundle
// of a bad layout is dropped whole; only a bundle with a genuine datagram
// makes its sender one the client bundles to.
func TestBundleReplyForgedInner(t *testing.T) {
	fc := newFakeCluster(t, 2205, fakeConfig{})
	c := fc.dial(t, Config{})
	cls := registered(t, c, 3)
	forged := grantFor(t, fc, c, cls[1], 2)
	forged[wire.AuthOffset] ^= 1
	if err := wire.Seal(forged); err != nil { // a good checksum, a bad tag
		t.Fatal(err)
	}
	from := netip.MustParseAddrPort("127.0.0.1:9") // not a worker the client bundles to yet
	to := net.UDPAddrFromAddrPort(from)
	var r reply
	var mr wire.MapReply
	out := make([]byte, 0, wire.MaxDatagram)
	before := c.Stats()

	// Only the forged one: nothing taken, and from does not become a taker.
	out = c.handle(bundleReply(t, forged, forged), from, &r, &mr, out)
	if c.takesBundles(to) {
		t.Fatal("a bundle of forgeries made its source a worker that takes bundles")
	}
	// A bad layout: a datagram of another session inside.
	other := grantFor(t, fc, c, cls[0], 1)
	binary.BigEndian.PutUint64(other[8:], c.Session()^1)
	_ = wire.Seal(other)
	out = c.handle(bundleReply(t, grantFor(t, fc, c, cls[0], 1), other), from, &r, &mr, out)
	for i, cl := range cls {
		if len(cl.ch) != 0 {
			t.Fatalf("call %d got an answer from a bundle that should have been dropped", i)
		}
	}
	// The forged one between two genuine ones.
	out = c.handle(bundleReply(t, grantFor(t, fc, c, cls[0], 1), forged, grantFor(t, fc, c, cls[2], 3)), from, &r, &mr, out)
	_ = out
	for i, want := range []uint64{1, 0, 3} {
		select {
		case got := <-cls[i].ch:
			if want == 0 || got.fence != wire.MakeFence(1, want) {
				t.Fatalf("call %d answered with fence %#x, want %d", i, got.fence, want)
			}
		default:
			if want != 0 {
				t.Fatalf("call %d not answered", i)
			}
		}
	}
	st := c.Stats()
	if d := st.AuthFailures - before.AuthFailures; d != 3 {
		t.Errorf("%d auth failures counted, want 3 (two in the first bundle, one in the last)", d)
	}
	if d := st.BundlesDropped - before.BundlesDropped; d != 1 {
		t.Errorf("%d bundles dropped, want 1", d)
	}
	if d, n := st.BundlesReceived-before.BundlesReceived, st.BundledReceived-before.BundledReceived; d != 2 || n != 5 {
		t.Errorf("%d bundles of %d datagrams taken, want 2 of 5", d, n)
	}
	if !c.takesBundles(to) {
		t.Fatal("a bundle with genuine datagrams did not make its source a worker that takes bundles")
	}
}

// TestReceiveBundleNoAlloc: a BUNDLE_REPLY is taken without allocating,
// as a datagram alone is (TestReceiveNoAlloc).
func TestReceiveBundleNoAlloc(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	fc := newFakeCluster(t, 2206, fakeConfig{})
	c := fc.dial(t, Config{})
	cls := registered(t, c, 2)
	b := bundleReply(t, grantFor(t, fc, c, cls[0], 1), grantFor(t, fc, c, cls[1], 2))
	from := addrPortOf(fc.workers[0].conn.LocalAddr())
	var r reply
	var mr wire.MapReply
	out := make([]byte, 0, wire.MaxDatagram)
	out = c.handle(b, from, &r, &mr, out)
	if len(cls[0].ch) != 1 || len(cls[1].ch) != 1 {
		t.Fatal("the GRANTs were not handed to their requests")
	}
	<-cls[0].ch
	<-cls[1].ch
	n := allocs.PerRun(200, func() {
		out = c.handle(b, from, &r, &mr, out)
		<-cls[0].ch
		<-cls[1].ch
	})
	if n != 0 {
		t.Fatalf("%v allocations per bundle", n)
	}
}

// TestSendQueuePackNoAlloc: packing a round into bundles allocates nothing
// once the queue's buffers have grown.
func TestSendQueuePackNoAlloc(t *testing.T) {
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	q := &sendQueue{takes: func(net.Addr) bool { return true }}
	out := make([]ipv4.Message, 40)
	for i := range out {
		out[i] = ipv4.Message{Buffers: [][]byte{testRequest(t, 7, uint64(i+1), 1, 40)}, Addr: to}
	}
	if ms := q.pack(out); len(ms) >= len(out) {
		t.Fatalf("%d datagrams packed into %d", len(out), len(ms))
	}
	allocs := testing.AllocsPerRun(100, func() { q.pack(out) })
	if allocs != 0 {
		t.Fatalf("%v allocations per round", allocs)
	}
}

// TestBundleWorkerDowngraded: a worker that took bundles is replaced at
// the same address by one from before bundles (which drops every
// BUNDLE). The client still takes the address for one that bundles, so
// its first sends may go in BUNDLEs and be lost; every call still
// completes, because retransmissions always go alone.
func TestBundleWorkerDowngraded(t *testing.T) {
	fc := newFakeCluster(t, 2207, fakeConfig{realUDP: true})
	c := fc.dial(t, Config{})
	hammer(t, fc, c, 64, 100, func() bool { return c.Stats().BundlesSent > 0 })
	if c.Stats().BundlesSent == 0 {
		t.Skip("no BUNDLE sent in 100 rounds: the machine never ran two senders at once")
	}
	fc.fw.SetNoBundle(true)
	before := c.Stats()
	_, in0, _, out0, _ := fc.fw.Bundles()
	hammer(t, fc, c, 64, 20, func() bool { return c.Stats().BundlesSent > before.BundlesSent })
	st := c.Stats()
	_, in1, _, out1, _ := fc.fw.Bundles()
	t.Logf("after the downgrade: %d BUNDLEs sent (and lost), %d datagrams sent", st.BundlesSent-before.BundlesSent, st.Sent-before.Sent)
	if in1 != in0 || out1 != out0 {
		t.Fatalf("the older worker took %d BUNDLEs and sent %d", in1-in0, out1-out0)
	}
	fc.mu.Lock()
	again := fc.bundledAgain
	fc.mu.Unlock()
	if again != 0 {
		t.Fatalf("%d retransmissions went in a BUNDLE", again)
	}
}
