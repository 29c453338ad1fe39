package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
)

// nameIn returns a token name that hashes to a shard in [lo, hi).
func nameIn(t testing.TB, lo, hi uint32) string {
	t.Helper()
	for i := range 10000 {
		n := "tok" + string(rune('a'+i%26)) + time.Duration(i).String()
		if s := wire.Shard([]byte(n), testShards); s >= lo && s < hi {
			return n
		}
	}
	t.Fatal("no name found")
	return ""
}

// TestNotOwner (invariant 5): requests at another epoch get STALE_EPOCH,
// shards delegated elsewhere NOT_OWNER with the owner's address; a lost
// shard's grants are dropped; a lease that is not safe answers UNAVAILABLE.
func TestNotOwner(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.open(0)

	mine, theirs := nameIn(t, 0, 8), nameIn(t, 8, 16)
	gt := c.acquire(theirs, wire.EX, true, 0)
	wantStatus(t, gt, wire.StatusOK)

	// Wrong epoch: STALE_EPOCH with this worker as the hint.
	c.setEpoch(c.shard(mine), 2)
	r := c.acquire(mine, wire.EX, true, 0)
	wantStatus(t, r, wire.StatusStaleEpoch)
	var no wire.NotOwner
	if err := no.Decode(r.h, r.raw); err != nil || string(no.Addr) != w.Addr().String() || no.Epoch != 1 {
		t.Fatalf("STALE_EPOCH hint %+v (%v)", no, err)
	}
	c.setEpoch(c.shard(mine), 1)

	// Shards 8..15 move to another worker at epoch 2.
	fake := cluster.Worker{ID: "fake", Incarnation: "abc", UDP: "127.0.0.9:7777", Version: cluster.Version}
	b, _ := json.Marshal(fake)
	if _, err := cli.Put(context.Background(), cluster.WorkerKey("fake"), string(b)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "registry shows the other worker", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.registry["fake"].UDP != ""
	})
	me := w.testOwner()
	putMap(t, cli, 2, []delegation.Owner{{ID: "fake", Incarnation: 0xabc}, me},
		[]delegation.Run{{First: 0, Count: 8, Owner: 1, Epoch: 1}, {First: 8, Count: 8, Owner: 0, Epoch: 2}})
	waitFor(t, "worker drops shards 8..15", func() bool { return w.stats().shards == 8 })
	if s := w.stats(); s.grants != 0 {
		t.Fatalf("grant of a lost shard still held: %+v", s)
	}
	r = c.acquire(theirs, wire.EX, true, 0)
	wantStatus(t, r, wire.StatusNotOwner)
	if err := no.Decode(r.h, r.raw); err != nil || string(no.Addr) != "127.0.0.9:7777" || no.Epoch != 2 {
		t.Fatalf("NOT_OWNER hint %+v (%v)", no, err)
	}
	if r.h.MapVersion != 2 {
		t.Fatalf("reply map version %d, want 2", r.h.MapVersion)
	}
	gm := c.acquire(mine, wire.EX, true, 0)
	wantStatus(t, gm, wire.StatusOK)
	wantStatus(t, c.release(mine, gm.grant(t).Fence), wire.StatusOK)

	// The MAP reply lists both workers.
	mr := c.do(wire.MapRequest{}, 0)
	var mp wire.MapReply
	if err := mp.Decode(mr.h, mr.raw); err != nil {
		t.Fatal(err)
	}
	if len(mp.Workers) != 2 || len(mp.Runs) != 2 || mp.Runs[1].Epoch != 2 || string(mp.Workers[mp.Runs[1].Worker].Addr) != "127.0.0.9:7777" {
		t.Fatalf("MAP reply %+v", mp)
	}

	// Not safe: UNAVAILABLE, and keepalives vouch for nothing. The
	// keepalive loop makes it safe again within TTL/4.
	w.mu.Lock()
	l := w.lease
	w.mu.Unlock()
	var un msg
	for range 20 { // the keepalive loop may renew in between: try again
		l.pretendExpired()
		un = c.acquire(mine, wire.EX, true, 0)
		if un.h.Status == wire.StatusUnavailable {
			break
		}
	}
	wantStatus(t, un, wire.StatusUnavailable)
	if v := gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", "unavailable"); v < 1 {
		t.Fatalf("unavailable drops %v", v)
	}
	waitFor(t, "lease safe again", w.Ready)
	wantStatus(t, c.acquire(mine, wire.EX, true, 0), wire.StatusOK)
}

// gatherValue returns the value of the series of name whose label has
// value (any series if label is ""), 0 if absent.
func gatherValue(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// TestRecovery (invariants 3 and 6): a shard taken over at epoch 2 starts
// in its grace period: only RECLAIM is served (old fence kept); after the
// grace period new grants have fences above the reclaimed ones.
func TestRecovery(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	me := w.testOwner()
	putMap(t, cli, 1, []delegation.Owner{me}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 2}})
	start := time.Now()
	waitFor(t, "worker serves all shards", func() bool { return w.stats().shards == testShards })
	if s := w.stats(); s.grace != testShards {
		t.Fatalf("stats %+v, want every shard in grace", s)
	}
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	for _, c := range []*tclient{a, b} {
		for s := range uint32(testShards) {
			c.setEpoch(s, 2)
		}
	}

	wantStatus(t, a.acquire("x", wire.EX, false, 1000), wire.StatusGrace)
	old := wire.MakeFence(1, 77)
	rc := a.do(wire.Reclaim{Fence: old, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, a.shard("x"))
	wantStatus(t, rc, wire.StatusOK)
	if g := rc.grant(t); g.Fence != old || g.Mode != wire.EX || g.ValueFlags != wire.ValueLost {
		t.Fatalf("reclaim gave %+v", g)
	}
	// A conflicting reclaim is refused.
	wantStatus(t, b.do(wire.Reclaim{Fence: wire.MakeFence(1, 78), Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, b.shard("x")),
		wire.StatusReclaimRefused)

	waitFor(t, "grace period over", func() bool { return w.stats().grace == 0 })
	if el := time.Since(start); el < testGrace-50*time.Millisecond {
		t.Fatalf("grace ended after %v, want %v", el, testGrace)
	}
	g := b.acquire("y", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	if f := g.grant(t).Fence; f <= old || wire.FenceEpoch(f) != 2 {
		t.Fatalf("new fence %#x not above reclaimed %#x", f, old)
	}
	wantStatus(t, b.acquire("x", wire.EX, true, 0), wire.StatusConflict)
	wantStatus(t, b.do(wire.Reclaim{Fence: wire.MakeFence(1, 79), Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("z")}, b.shard("z")),
		wire.StatusReclaimRefused)
	wantStatus(t, a.release("x", old), wire.StatusOK)
	if v := gatherValue(reg, "tokend_worker_recoveries_total", "", ""); v != testShards {
		t.Fatalf("recoveries_total %v", v)
	}
}

// TestStalledMapWatch: the map watch delivers nothing (its stream is on an
// etcd member that went silent; gRPC reports no error), and a new map moves
// half the shards away. The worker must still drop them within about a
// lease renewal period: every renewal confirms the map is current, and
// SafeUntil is extended only then. Otherwise it would serve the shards
// forever while their new owner, its handoff having failed, serves them
// too once its grace period is over.
func TestStalledMapWatch(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	waitFor(t, "worker serves every shard", func() bool { return w.stats().shards == testShards })
	w.mu.Lock()
	w.muteMapWatch = true
	w.mu.Unlock()
	me := w.testOwner()
	putMap(t, cli, 2, []delegation.Owner{{ID: "fake", Incarnation: 0xabc}, me},
		[]delegation.Run{{First: 0, Count: 8, Owner: 1, Epoch: 1}, {First: 8, Count: 8, Owner: 0, Epoch: 2}})
	waitFor(t, "worker drops shards 8..15 without its watch", func() bool { return w.stats().shards == 8 })
	if v := gatherValue(reg, "tokend_worker_map_resyncs_total", "", ""); v < 1 {
		t.Fatalf("map_resyncs_total = %v, want >= 1", v)
	}
}
