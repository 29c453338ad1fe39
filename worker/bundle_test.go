package worker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/testkit/allocs"
	"github.com/tokend/tokend/wire"
)

// bundleRTO is the retransmission timeout of the clients of these tests:
// they count bundles and duplicates, which a retransmission would add to,
// and loopback loses nothing.
const bundleRTO = 3 * time.Second

// bundleOf encodes a BUNDLE of the session's datagrams pkts (whole, as
// they would be sent alone), with the first one's request id.
func (c *tclient) bundleOf(pkts ...[]byte) []byte {
	c.t.Helper()
	h := wire.Header{Type: wire.TypeBundle, Session: c.session, Request: binary.BigEndian.Uint64(pkts[0][16:])}
	b, err := wire.Bundle{Datagrams: pkts}.Append(nil, h)
	if err != nil {
		c.t.Fatalf("encode BUNDLE: %v", err)
	}
	return b
}

// callAll sends pkt, retransmitting it every rto, until a reply to each of
// ids has arrived, and returns the first reply to each, in ids' order.
func (c *tclient) callAll(pkt []byte, ids ...uint64) []msg {
	c.t.Helper()
	ch := make(chan msg, 16*len(ids))
	c.mu.Lock()
	for _, id := range ids {
		c.waiting[id] = ch
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		for _, id := range ids {
			delete(c.waiting, id)
		}
		c.mu.Unlock()
	}()
	got := make([]msg, len(ids))
	have := 0
	deadline := time.After(10 * time.Second)
	c.sendRaw(pkt)
	for have < len(ids) {
		select {
		case m := <-ch:
			i := slices.Index(ids, m.h.Request)
			if got[i].raw == nil {
				got[i] = m
				have++
			}
		case <-time.After(c.rto):
			c.sendRaw(pkt)
		case <-deadline:
			c.t.Fatalf("replies to %d of requests %v within 10 s", have, ids)
		}
	}
	return got
}

// sync sends a KEEPALIVE alone and waits for its reply: the worker has
// then handled every datagram the client sent before, and the client has
// received every reply to them (one socket each way, in order, on
// loopback).
func (c *tclient) sync() msg {
	c.t.Helper()
	h := c.header(0, 0)
	r := c.callAll(c.encode(wire.Keepalive{}, h), h.Request)[0]
	c.finish(h.Request)
	return r
}

// received reports the BUNDLE_REPLYs the client has received.
func (c *tclient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundles
}

// duplicates is the sum of tokend_worker_ops_total{result="duplicate"}
// over request types: requests answered from the reply cache.
func duplicates(reg *prometheus.Registry) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "tokend_worker_ops_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "result" && lp.GetValue() == "duplicate" {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// bundleCounts are the worker's bundle counters.
type bundleCounts struct{ in, inDatagrams, out, outDatagrams float64 }

func bundleMetrics(reg *prometheus.Registry) bundleCounts {
	return bundleCounts{
		in:           gatherValue(reg, "tokend_worker_bundles_received_total", "", ""),
		inDatagrams:  gatherValue(reg, "tokend_worker_bundled_datagrams_received_total", "", ""),
		out:          gatherValue(reg, "tokend_worker_bundles_sent_total", "", ""),
		outDatagrams: gatherValue(reg, "tokend_worker_bundled_datagrams_sent_total", "", ""),
	}
}

// threeOps is a bundle's worth of requests: an ACQUIRE of acq, a RELEASE
// of rel (held with fence), and a KEEPALIVE for acq's shard.
type threeOps struct {
	pkts [][]byte
	ids  []uint64
}

func (c *tclient) threeOps(acq, rel string, fence uint64) threeOps {
	c.t.Helper()
	var o threeOps
	add := func(m appender, h wire.Header) {
		o.pkts = append(o.pkts, c.encode(m, h))
		o.ids = append(o.ids, h.Request)
	}
	add(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(acq)}, c.header(c.shard(acq), 0))
	add(wire.Release{Fence: fence, Name: []byte(rel)}, c.header(c.shard(rel), 0))
	add(wire.Keepalive{Entries: []wire.ShardEpoch{{Shard: c.shard(acq), Epoch: 1}}}, c.header(0, 0))
	return o
}

// checkThree checks the replies to threeOps: GRANT, RELEASE OK, KEEPALIVE
// saying the shard is served; it returns the grant.
func checkThree(t *testing.T, rs []msg) wire.Grant {
	t.Helper()
	wantStatus(t, rs[0], wire.StatusOK)
	wantStatus(t, rs[1], wire.StatusOK)
	wantStatus(t, rs[2], wire.StatusOK)
	if rs[0].h.Type != wire.TypeAcquireReply || rs[1].h.Type != wire.TypeReleaseReply || rs[2].h.Type != wire.TypeKeepaliveReply {
		t.Fatalf("reply types %v %v %v", rs[0].h.Type, rs[1].h.Type, rs[2].h.Type)
	}
	var kr wire.KeepaliveReply
	if err := kr.Decode(rs[2].h, rs[2].raw); err != nil || len(kr.Statuses) != 1 || kr.Statuses[0] != wire.StatusOK {
		t.Fatalf("KEEPALIVE reply %+v %v", kr, err)
	}
	return rs[0].grant(t)
}

// TestBundle (wire/SPEC.md section 22): a session that asks for bundles at
// its open gets the flag back and its document says so; a BUNDLE of an
// ACQUIRE, a RELEASE and a KEEPALIVE is answered as the three would be
// alone, in one BUNDLE_REPLY whose datagrams are byte for byte the
// replies: sent again alone, each request gets the same bytes back, alone,
// from the reply cache. A session that did not ask gets the same answers
// to a BUNDLE, each alone.
func TestBundle(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)

	c := udpClient(t, w)
	c.rto = bundleRTO
	c.offerBundle = true
	if r := c.open(0); r.h.Flags&wire.FlagBundle == 0 {
		t.Fatal("OK SESSION_REPLY to an open with BUNDLE does not carry the flag")
	}
	if !sessionDoc(t, cli, c.session).Bundle {
		t.Fatal("the session document does not say the session takes bundles")
	}
	held := c.acquire("r", wire.EX, true, 0)
	wantStatus(t, held, wire.StatusOK)

	ops := c.threeOps("a", "r", held.grant(t).Fence)
	rs := c.callAll(c.bundleOf(ops.pkts...), ops.ids...)
	checkThree(t, rs)
	for _, r := range rs {
		if !r.bundled {
			t.Errorf("%v came alone to a session that takes bundles", r)
		}
	}
	if n := c.received(); n != 1 {
		t.Errorf("%d BUNDLE_REPLYs for one batch of three replies, want 1", n)
	}
	m := bundleMetrics(reg)
	if m.in != 1 || m.inDatagrams != 3 || m.out != 1 || m.outDatagrams != 3 {
		t.Errorf("bundle metrics %+v, want 1 bundle of 3 each way", m)
	}

	// The ACQUIRE and the RELEASE were applied once: sent again alone,
	// their cached replies come back, the same bytes, alone.
	dup := func() float64 { return duplicates(reg) }
	before := dup()
	for i := range 2 {
		again := c.callAll(ops.pkts[i], ops.ids[i])[0]
		if again.bundled || !bytes.Equal(again.raw, rs[i].raw) {
			t.Errorf("request %d sent again alone: bundled=%v, %x, want %x", ops.ids[i], again.bundled, again.raw, rs[i].raw)
		}
	}
	// A copy of a KEEPALIVE is answered afresh (its validity counts
	// from now): the same but for the validity.
	again := c.callAll(ops.pkts[2], ops.ids[2])[0]
	var k1, k2 wire.KeepaliveReply
	if k1.Decode(rs[2].h, rs[2].raw) != nil || k2.Decode(again.h, again.raw) != nil || again.bundled ||
		!slices.Equal(k1.Statuses, k2.Statuses) || k1.SessionTTLMs != k2.SessionTTLMs || again.h != rs[2].h {
		t.Errorf("KEEPALIVE sent again alone: %+v %+v, first %+v %+v", again.h, k2, rs[2].h, k1)
	}
	if d := dup() - before; d != 3 {
		t.Errorf("%v duplicates counted for three copies", d)
	}
	for i := range 3 {
		c.finish(ops.ids[i])
	}

	// The token released inside the bundle is free, the one acquired
	// inside it is held.
	o := udpClient(t, w)
	o.rto = bundleRTO
	o.open(0)
	wantStatus(t, o.acquire("r", wire.EX, true, 0), wire.StatusOK)
	wantStatus(t, o.acquire("a", wire.EX, true, 0), wire.StatusConflict)

	// A session that did not ask for bundles: the worker takes its BUNDLE
	// and answers the same, each datagram alone.
	if sessionDoc(t, cli, o.session).Bundle {
		t.Fatal("the document of a session that did not ask says it takes bundles")
	}
	held = o.acquire("r2", wire.EX, true, 0)
	wantStatus(t, held, wire.StatusOK)
	ops = o.threeOps("b", "r2", held.grant(t).Fence)
	rs = o.callAll(o.bundleOf(ops.pkts...), ops.ids...)
	checkThree(t, rs)
	o.sync()
	for _, r := range rs {
		if r.bundled {
			t.Errorf("%v came bundled to a session that did not ask for bundles", r)
		}
	}
	if n := o.received(); n != 0 {
		t.Errorf("%d BUNDLE_REPLYs to a session that did not ask for bundles", n)
	}
	if m := bundleMetrics(reg); m.in < 2 || m.out != 1 {
		t.Errorf("bundle metrics %+v, want a second bundle taken and none sent", m)
	}
}

// TestBundleOff: a worker with Config.NoBundle answers an open that asks
// for bundles without the flag, records nothing, and never bundles; it
// still takes a BUNDLE.
func TestBundleOff(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", NoBundle: true})
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.rto = bundleRTO
	c.offerBundle = true
	if r := c.open(0); r.h.Flags != 0 {
		t.Fatalf("SESSION_REPLY flags %#x from a worker with bundles off", r.h.Flags)
	}
	if sessionDoc(t, cli, c.session).Bundle {
		t.Fatal("a worker with bundles off recorded that the session takes them")
	}
	held := c.acquire("r", wire.EX, true, 0)
	wantStatus(t, held, wire.StatusOK)
	ops := c.threeOps("a", "r", held.grant(t).Fence)
	rs := c.callAll(c.bundleOf(ops.pkts...), ops.ids...)
	checkThree(t, rs)
	c.sync()
	if n := c.received(); n != 0 {
		t.Errorf("%d BUNDLE_REPLYs from a worker with bundles off", n)
	}
	if m := bundleMetrics(reg); m.in != 1 || m.inDatagrams != 3 || m.out != 0 {
		t.Errorf("bundle metrics %+v", m)
	}
}

// TestBundleForged: with authentication, a BUNDLE with a forged datagram
// inside (bad tag) gets the others answered, bundled and sealed, and the
// forged one dropped and counted, unapplied.
func TestBundleForged(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	c.rto = bundleRTO
	c.offerBundle = true
	if r := c.openAuth("alice", f.alice, 0); r.h.Flags&wire.FlagBundle == 0 {
		t.Fatal("OK SESSION_REPLY to an authenticated open with BUNDLE does not carry the flag")
	}
	if !sessionDoc(t, f.cli, c.session).Bundle {
		t.Fatal("the session document does not say the session takes bundles")
	}
	held := c.acquire("r", wire.EX, true, 0)
	wantStatus(t, held, wire.StatusOK)
	ops := c.threeOps("a", "r", held.grant(t).Fence)
	hf := c.header(c.shard("forged"), 0)
	forged := c.encode(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("forged")}, hf)
	forged[wire.AuthOffset] ^= 1
	wire.Seal(forged)
	badTags := f.failures("bad_tag")

	pkts := [][]byte{ops.pkts[0], forged, ops.pkts[1], ops.pkts[2]}
	rs := c.callAll(c.bundleOf(pkts...), ops.ids...)
	checkThree(t, rs)
	c.sync()
	for _, r := range rs {
		if !r.bundled || !c.verified(r) {
			t.Errorf("%v: bundled=%v verified=%v", r, r.bundled, c.verified(r))
		}
	}
	if n := c.countEvents(func(m msg) bool { return m.h.Request == hf.Request }); n != 0 {
		t.Errorf("%d answers to the forged datagram", n)
	}
	if d := f.failures("bad_tag") - badTags; d != 1 {
		t.Errorf("%v bad tags counted, want the forged datagram's", d)
	}
	o := udpClient(t, f.w)
	o.openAuth("alice", f.alice, 0)
	wantStatus(t, o.acquire("forged", wire.EX, true, 0), wire.StatusOK)
}

// TestBadBundle: a malformed BUNDLE (every bad-bundle-* shape of
// wire/testdata/vectors.txt, on a live session, around a valid ACQUIRE) is
// dropped whole and counted: nothing inside is applied or answered.
func TestBadBundle(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.rto = bundleRTO
	c.offerBundle = true
	c.open(0)

	type shape struct {
		name   string
		reason string // dropped_datagrams_total reason
		pkt    []byte
		acq    []byte // the valid ACQUIRE inside, if any
		id     uint64
	}
	var shapes []shape
	acquire := func(name string) ([]byte, uint64) {
		h := c.header(c.shard(name), 0)
		return c.encode(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}, h), h.Request
	}
	// raw builds a BUNDLE (or BUNDLE_REPLY) of header h with body, sealed.
	raw := func(h wire.Header, body ...[]byte) []byte {
		b := wire.AppendHeader(nil, h)
		for _, p := range body {
			b = append(b, p...)
		}
		if err := wire.Seal(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	entry := func(d []byte) []byte { return wire.AppendBundled(nil, d) }
	be16 := func(n int) []byte { return binary.BigEndian.AppendUint16(nil, uint16(n)) }
	add := func(name, reason string, build func(bh wire.Header, acq []byte) []byte) {
		acq, id := acquire("bad/" + name)
		bh := wire.Header{Type: wire.TypeBundle, Session: c.session, Request: id}
		shapes = append(shapes, shape{name: name, reason: reason, pkt: build(bh, acq), acq: acq, id: id})
	}
	bad := "bad_bundle"
	add("empty", bad, func(bh wire.Header, _ []byte) []byte { return raw(bh) })
	add("entry-shorter-than-header", bad, func(bh wire.Header, acq []byte) []byte {
		return raw(bh, entry(acq), be16(63), acq[:63])
	})
	add("entry-past-end", bad, func(bh wire.Header, acq []byte) []byte { return raw(bh, be16(len(acq)+1), acq) })
	add("length-cut", bad, func(bh wire.Header, acq []byte) []byte { return raw(bh, entry(acq), []byte{0}) })
	add("session-open-inside", bad, func(bh wire.Header, acq []byte) []byte {
		so, err := wire.SessionOpen{Lib: []byte("test/0")}.Append(nil, wire.Header{Request: 7})
		if err != nil {
			t.Fatal(err)
		}
		binary.BigEndian.PutUint64(so[8:], c.session) // of the bundle's session, as the rule is about the type
		wire.Seal(so)
		return raw(bh, entry(acq), entry(so))
	})
	add("reply-inside-request", bad, func(bh wire.Header, acq []byte) []byte {
		rh := wire.Header{Type: wire.TypeReleaseReply, Session: c.session, Request: 9, Epoch: 1}
		rr, err := wire.Empty{}.Append(nil, rh)
		if err != nil {
			t.Fatal(err)
		}
		return raw(bh, entry(acq), entry(rr))
	})
	add("nested", bad, func(bh wire.Header, acq []byte) []byte { return raw(bh, entry(raw(bh, entry(acq)))) })
	add("other-session", bad, func(bh wire.Header, acq []byte) []byte {
		other := append([]byte(nil), acq...)
		other[15] ^= 1
		wire.Seal(other)
		return raw(bh, entry(acq), entry(other))
	})
	add("request-inside-reply", "not_request", func(bh wire.Header, acq []byte) []byte {
		bh.Type = wire.TypeBundleReply
		return raw(bh, entry(acq))
	})
	add("ack", wire.Reason(wire.ErrBadHeader), func(bh wire.Header, acq []byte) []byte {
		bh.Ack = 1
		return raw(bh, entry(acq))
	})
	add("reply-status", wire.Reason(wire.ErrBadStatus), func(bh wire.Header, acq []byte) []byte {
		bh.Type, bh.Status = wire.TypeBundleReply, wire.StatusBadRequest
		return raw(bh, entry(acq))
	})
	add("flags", wire.Reason(wire.ErrBadFlags), func(bh wire.Header, acq []byte) []byte {
		bh.Flags = 1
		return raw(bh, entry(acq))
	})

	// Each shape is what package wire rejects.
	for _, s := range shapes {
		h, err := wire.ParseHeader(s.pkt)
		if err == nil {
			err = wire.CheckBundle(h, s.pkt)
		}
		if err == nil {
			t.Fatalf("%s: package wire accepts it", s.name)
		}
	}
	want := map[string]float64{}
	for _, s := range shapes {
		want[s.reason]++
	}
	before := map[string]float64{}
	for r := range want {
		before[r] = gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", r)
	}
	for _, s := range shapes {
		c.sendRaw(s.pkt)
	}
	c.sync()
	for r, n := range want {
		if d := gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", r) - before[r]; d != n {
			t.Errorf("dropped_datagrams_total{reason=%q} grew by %v, want %v", r, d, n)
		}
	}
	if n := c.countEvents(func(msg) bool { return true }); n != 0 {
		t.Errorf("%d answers to malformed bundles", n)
	}
	if m := bundleMetrics(reg); m.in != 0 || m.inDatagrams != 0 {
		t.Errorf("bundle metrics %+v after malformed bundles only", m)
	}
	// Nothing inside was applied: each ACQUIRE, sent alone now, is
	// applied for the first time (a duplicate would be its cached reply).
	dup := duplicates(reg)
	for _, s := range shapes {
		r := c.callAll(s.acq, s.id)[0]
		wantStatus(t, r, wire.StatusOK)
		c.finish(s.id)
	}
	if d := duplicates(reg) - dup; d != 0 {
		t.Errorf("%v ACQUIREs from malformed bundles had been applied", d)
	}
}

// TestBundleCopy: a request first sent in a BUNDLE and sent again alone
// (its reply was lost) is answered from the reply cache, with the reply
// the bundle carried; sent again in another bundle, the same.
func TestBundleCopy(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.rto = bundleRTO
	c.offerBundle = true
	c.open(0)
	pa, ida := func() ([]byte, uint64) {
		h := c.header(c.shard("x"), 0)
		return c.encode(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, h), h.Request
	}()
	hk := c.header(0, 0)
	pk := c.encode(wire.Keepalive{}, hk)
	first := c.callAll(c.bundleOf(pa, pk), ida, hk.Request)
	wantStatus(t, first[0], wire.StatusOK)
	if !first[0].bundled {
		t.Fatal("reply to a bundled ACQUIRE came alone")
	}
	dup := duplicates(reg)
	alone := c.callAll(pa, ida)[0]
	if alone.bundled || !bytes.Equal(alone.raw, first[0].raw) {
		t.Fatalf("ACQUIRE sent again alone: bundled=%v %x, want %x", alone.bundled, alone.raw, first[0].raw)
	}
	// In another bundle, with a new request.
	hk2 := c.header(0, 0)
	again := c.callAll(c.bundleOf(pa, c.encode(wire.Keepalive{}, hk2)), ida, hk2.Request)
	if !again[0].bundled || !bytes.Equal(again[0].raw, first[0].raw) {
		t.Fatalf("ACQUIRE sent again bundled: bundled=%v %x, want %x", again[0].bundled, again[0].raw, first[0].raw)
	}
	if d := duplicates(reg) - dup; d != 2 {
		t.Errorf("%v duplicates counted for two copies", d)
	}
	if g := w.stats().grants; g != 1 {
		t.Errorf("%d grants after one ACQUIRE sent three times", g)
	}
}

// TestBundleOtherWorker: a session opened with bundles at one worker is
// known to take them at another (its document says so): there a BUNDLE is
// answered with a BUNDLE_REPLY too. A session that did not ask gets no
// BUNDLE_REPLY there.
func TestBundleOtherWorker(t *testing.T) {
	cli := testEtcd(t)
	w1, _ := startWorker(t, cli, "w1", nil)
	w2, reg2 := startWorker(t, cli, "w2", nil)
	half := uint32(testShards / 2)
	putMap(t, cli, 1, []delegation.Owner{w1.testOwner(), w2.testOwner()}, []delegation.Run{
		{First: 0, Count: half, Owner: 0, Epoch: 1}, {First: half, Count: half, Owner: 1, Epoch: 1}})
	waitFor(t, "both workers serve their shards", func() bool {
		return w1.stats().shards == int(half) && w2.stats().shards == int(half)
	})
	// nameAt returns a token name in w2's half.
	nameAt := func(prefix string) string {
		for i := 0; ; i++ {
			n := fmt.Sprintf("%s%d", prefix, i)
			if wire.Shard([]byte(n), testShards) >= half {
				return n
			}
		}
	}
	for _, offer := range []bool{true, false} {
		t.Run(fmt.Sprintf("offer=%v", offer), func(t *testing.T) {
			c1 := udpClient(t, w1)
			c1.offerBundle = offer
			c1.open(0)
			// The same session, talking to w2 from another socket.
			c2 := udpClient(t, w2)
			c2.rto = bundleRTO
			c2.session = c1.session
			waitFor(t, "w2 knows the session", func() bool {
				w2.mu.Lock()
				defer w2.mu.Unlock()
				return w2.sessions[c1.session] != nil
			})
			r, a := nameAt(fmt.Sprintf("r%v/", offer)), nameAt(fmt.Sprintf("a%v/", offer))
			held := c2.acquire(r, wire.EX, true, 0)
			wantStatus(t, held, wire.StatusOK)
			before := bundleMetrics(reg2)
			ops := c2.threeOps(a, r, held.grant(t).Fence)
			rs := c2.callAll(c2.bundleOf(ops.pkts...), ops.ids...)
			checkThree(t, rs)
			c2.sync()
			for _, m := range rs {
				if m.bundled != offer {
					t.Errorf("%v: bundled=%v", m, m.bundled)
				}
			}
			after := bundleMetrics(reg2)
			if got, want := after.out-before.out, map[bool]float64{true: 1, false: 0}[offer]; got != want {
				t.Errorf("w2 sent %v BUNDLE_REPLYs, want %v", got, want)
			}
		})
	}
}

// TestPack checks outbox.pack on random batches against what SPEC §22
// asks: every datagram is sent once, alone or in a BUNDLE_REPLY of at
// most MaxDatagram bytes to its own address carrying only datagrams of
// one session that takes bundles and of types a BUNDLE_REPLY may carry;
// and each address receives its datagrams in the order they were added.
func TestPack(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 22))
	addrs := []*net.UDPAddr{
		{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		{IP: net.IPv4(127, 0, 0, 1), Port: 2},
		{IP: net.IPv4(127, 0, 0, 2), Port: 1},
		{IP: net.ParseIP("::1"), Port: 1},
	}
	types := []wire.Type{wire.TypeAcquireReply, wire.TypeReleaseReply, wire.TypeKeepaliveReply, wire.TypeRevoke,
		wire.TypeGrantAsync, wire.TypeMapReply, wire.TypeSessionOpenReply}
	sessions := map[uint64]*session{1: {id: 1, bundle: true}, 2: {id: 2, bundle: true}, 3: {id: 3}}
	ob := &outbox{sessions: sessions}
	for round := range 500 {
		ob.reset(time.Time{}, 0, time.Time{})
		n := 1 + rng.IntN(80)
		var sent []sentDatagram
		req := uint64(1)
		for range n {
			typ := types[rng.IntN(len(types))]
			sess := uint64(1 + rng.IntN(3))
			h := wire.Header{Type: typ, Session: sess, Request: req, Epoch: 1, MapVersion: uint64(rng.IntN(5))}
			req++
			size := wire.HeaderLen + rng.IntN(300)
			if rng.IntN(20) == 0 {
				size = wire.MaxDatagram - rng.IntN(10) // too large to bundle
			}
			p := wire.AppendHeader(make([]byte, 0, size), h)
			p = p[:size]
			if err := wire.Seal(p); err != nil {
				t.Fatal(err)
			}
			to := addrs[rng.IntN(len(addrs))]
			ob.add(p, to, 0, nil)
			sent = append(sent, sentDatagram{to: destination(to), pkt: p})
		}
		ms, bundles, bundled := ob.pack()
		var got []sentDatagram
		nb, nd := 0, 0
		for _, m := range ms {
			b := m.Buffers[0]
			to := destination(m.Addr)
			if wire.Type(b[3]) != wire.TypeBundleReply {
				got = append(got, sentDatagram{to: to, pkt: b})
				continue
			}
			nb++
			h, err := wire.ParseHeader(b)
			if err != nil {
				t.Fatalf("round %d: malformed BUNDLE_REPLY: %v", round, err)
			}
			if err := wire.CheckBundle(h, b); err != nil {
				t.Fatalf("round %d: bad BUNDLE_REPLY: %v", round, err)
			}
			s := sessions[h.Session]
			if s == nil || !s.bundle {
				t.Fatalf("round %d: BUNDLE_REPLY to session %d, which does not take bundles", round, h.Session)
			}
			k := 0
			for e := b[wire.HeaderLen:]; len(e) > 0; k++ {
				var d []byte
				d, e = wire.NextBundled(e)
				if k == 0 && binary.BigEndian.Uint64(d[16:]) != h.Request {
					t.Fatalf("round %d: BUNDLE_REPLY request id %d, first datagram's %d", round, h.Request, binary.BigEndian.Uint64(d[16:]))
				}
				got = append(got, sentDatagram{to: to, pkt: d})
				nd++
			}
			if k < 2 {
				t.Fatalf("round %d: a BUNDLE_REPLY of %d datagram", round, k)
			}
		}
		if nb != bundles || nd != bundled {
			t.Fatalf("round %d: pack reported %d bundles of %d datagrams, sent %d of %d", round, bundles, bundled, nb, nd)
		}
		if len(got) != len(sent) {
			t.Fatalf("round %d: %d datagrams added, %d sent", round, len(sent), len(got))
		}
		for _, a := range addrs {
			want, have := perDestination(sent, destination(a)), perDestination(got, destination(a))
			if !slices.EqualFunc(want, have, bytes.Equal) {
				t.Fatalf("round %d: %v received %d datagrams, not in the order added (%d)", round, a, len(have), len(want))
			}
		}
		ob.release()
	}
}

type sentDatagram struct {
	to  netip.AddrPort
	pkt []byte
}

func perDestination(ds []sentDatagram, to netip.AddrPort) [][]byte {
	var out [][]byte
	for _, d := range ds {
		if d.to == to {
			out = append(out, d.pkt)
		}
	}
	return out
}

// TestPackAllocs: once its buffers have grown, packing and sending a
// batch allocates nothing.
func TestPackAllocs(t *testing.T) {
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	ob := &outbox{msgs: make([]ipv4.Message, 0, batchSize), sessions: map[uint64]*session{5: {id: 5, bundle: true}}}
	var pkts [][]byte
	for i := range 40 {
		p, err := wire.Empty{}.Append(nil, wire.Header{Type: wire.TypeReleaseReply, Session: 5, Request: uint64(i + 1), Epoch: 1})
		if err != nil {
			t.Fatal(err)
		}
		pkts = append(pkts, p)
	}
	run := func() {
		ob.reset(time.Time{}, 0, time.Time{})
		for _, p := range pkts {
			ob.add(p, to, 0, nil)
		}
		if _, n, _ := ob.pack(); n == 0 {
			t.Fatal("nothing bundled")
		}
		ob.release()
	}
	run()
	if n := testing.AllocsPerRun(100, run); n != 0 {
		t.Errorf("%v allocations per batch", n)
	}
}

// TestBundleAllocs: taking a BUNDLE allocates nothing beyond what its
// datagrams would cost alone: copies of requests answered from the reply
// cache and a forged or corrupt datagram, in one bundle, cost no
// allocation, with and without authentication.
func TestBundleAllocs(t *testing.T) {
	for _, withAuth := range []bool{false, true} {
		t.Run(fmt.Sprintf("auth=%v", withAuth), func(t *testing.T) {
			f := newRecvFixture(t, withAuth)
			var pkts [][]byte
			ack := f.next + 1
			for _, name := range []string{"x", "y"} {
				f.next++
				p, err := wire.Acquire{Try: true, Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}.Append(nil,
					wire.Header{Session: f.c.session, Request: f.next, Ack: ack, Shard: wire.Shard([]byte(name), testShards), Epoch: 1})
				if err != nil {
					t.Fatal(err)
				}
				if f.c.out != nil {
					f.c.out.Seal(p)
				}
				f.handle(p)
				pkts = append(pkts, p)
			}
			// Forged: a bad tag with Auth, a bad checksum without.
			forged := append([]byte(nil), pkts[0]...)
			forged[wire.AuthOffset] ^= 1
			if withAuth {
				wire.Seal(forged)
			}
			b := f.c.bundleOf(pkts[0], forged, pkts[1])
			f.handle(b) // the metric children exist
			if n := allocs.PerRun(200, func() { f.handle(b) }); n != 0 {
				t.Errorf("%v allocations per bundle", n)
			}
		})
	}
}

// BenchmarkBundle measures rounds of 8 ACQUIREs (EX, TRY, 8 tokens) then
// their 8 RELEASEs, from one session over real loopback UDP: each
// request and reply alone (a session that did not ask for bundles), or
// each round's 8 requests in one BUNDLE and their replies in BUNDLE_REPLYs.
// It reports pairs/s.
func BenchmarkBundle(b *testing.B) {
	cli := testEtcd(b)
	w, _ := startWorker(b, cli, "bench", nil)
	serveAll(b, cli, w)
	for _, bundled := range []bool{false, true} {
		b.Run(fmt.Sprintf("bundled=%v", bundled), func(b *testing.B) {
			tc := udpClient(b, w)
			tc.offerBundle = bundled
			tc.open(120000)
			conn, err := net.DialUDP("udp4", nil, w.Addr())
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			const k = 8
			var (
				names  [k][]byte
				fences [k]uint64
				pkts   [k][]byte
				id     = uint64(1 << 20)
				rbuf   = make([]byte, 2048)
			)
			for i := range names {
				names[i] = fmt.Appendf(nil, "bundle/%d", i)
			}
			// round sends the k requests made by mk and waits for their
			// replies, handing each to got with its index.
			round := func(mk func(i int) appender, got func(i int, h wire.Header, d []byte)) {
				first := id + 1
				for i := range k {
					id++
					h := wire.Header{Session: tc.session, Request: id, Ack: first, Shard: wire.Shard(names[i], testShards), Epoch: 1}
					p, err := mk(i).Append(pkts[i][:0], h)
					if err != nil {
						b.Fatal(err)
					}
					pkts[i] = p
				}
				if bundled {
					bp, err := wire.Bundle{Datagrams: pkts[:]}.Append(nil, wire.Header{Type: wire.TypeBundle, Session: tc.session, Request: first})
					if err != nil {
						b.Fatal(err)
					}
					conn.Write(bp)
				} else {
					for _, p := range pkts {
						conn.Write(p)
					}
				}
				take := func(d []byte, n *int) {
					h, err := wire.ParseHeader(d)
					if err != nil || !h.Type.IsReply() || h.Request < first || h.Request >= first+k {
						return
					}
					got(int(h.Request-first), h, d)
					*n++
				}
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				for n := 0; n < k; {
					m, err := conn.Read(rbuf)
					if err != nil {
						b.Fatalf("round from request %d: %d replies: %v", first, n, err)
					}
					d := rbuf[:m]
					if wire.Type(d[3]) != wire.TypeBundleReply {
						take(d, &n)
						continue
					}
					for e := d[wire.HeaderLen:]; len(e) > 0; {
						var in []byte
						in, e = wire.NextBundled(e)
						take(in, &n)
					}
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for r := 0; r < b.N; r += k {
				round(func(i int) appender {
					return wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: names[i]}
				}, func(i int, h wire.Header, d []byte) {
					var g wire.Grant
					if h.Status != wire.StatusOK || g.Decode(h, d) != nil {
						b.Fatalf("ACQUIRE %d: %v", i, h.Status)
					}
					fences[i] = g.Fence
				})
				round(func(i int) appender { return wire.Release{Fence: fences[i], Name: names[i]} },
					func(i int, h wire.Header, _ []byte) {
						if h.Status != wire.StatusOK {
							b.Fatalf("RELEASE %d: %v", i, h.Status)
						}
					})
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
		})
	}
}
