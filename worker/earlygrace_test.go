package worker

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/wire"
)

// testEtcdGrace is testEtcd with another grace period.
func testEtcdGrace(t testing.TB, grace time.Duration) *clientv3.Client {
	t.Helper()
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := cluster.Bootstrap(ctx, cli, cluster.Config{
		Shards: testShards, SessionTTLms: 2000, GraceMs: grace.Milliseconds(),
		Created: cluster.Now(time.Now()), CreatedBy: "test", Version: cluster.Version,
	}); err != nil {
		t.Fatal(err)
	}
	return cli
}

// recoverAfter gives every shard to a dead owner at epoch 1 (map 1), then
// to w at epoch 2 (map 2): w recovers them all after dead.
func recoverAfter(t *testing.T, cli *clientv3.Client, w *Worker, dead delegation.Owner) {
	t.Helper()
	putMap(t, cli, 1, []delegation.Owner{dead}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 1}})
	waitFor(t, "map 1 applied", func() bool { w.mu.Lock(); defer w.mu.Unlock(); return w.dmap.Version == 1 })
	putMap(t, cli, 2, []delegation.Owner{w.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 2}})
	waitFor(t, "worker recovers every shard", func() bool { return w.stats().grace == testShards })
}

// awaited reports how many sessions the recovery of shard waits for, once
// the live sessions are read.
func (w *Worker) awaited(shard uint32) (int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gt.Awaited(shard)
}

// liveRead reports whether no read of the live sessions is pending.
func (w *Worker) liveRead() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, need := w.gt.NeedLive()
	return !need && !w.liveReading
}

// TestEarlyGraceEnd: the previous owner is gone; every live session
// reclaims what it held and says DONE for the map that moved the shards:
// the grace period (30 s here) ends at once, the reclaimed grant stands
// and new grants are made (SPEC §13, "Early end of grace").
func TestEarlyGraceEnd(t *testing.T) {
	cli := testEtcdGrace(t, 30*time.Second)
	w, reg := startWorker(t, cli, "w1", nil)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	for _, c := range []*tclient{a, b} {
		for s := range uint32(testShards) {
			c.setEpoch(s, 2)
		}
	}
	recoverAfter(t, cli, w, delegation.Owner{ID: "dead", Incarnation: 0xdead})
	waitFor(t, "live sessions read", w.liveRead)
	if n, ok := w.awaited(0); !ok || n != 2 {
		t.Fatalf("awaited %d (known %v), want both sessions", n, ok)
	}
	old := wire.MakeFence(1, 77)
	wantStatus(t, a.do(wire.Reclaim{Fence: old, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, a.shard("x")), wire.StatusOK)
	// A DONE for the map before the recovery says nothing about it.
	wantStatus(t, a.do(wire.Keepalive{Done: 1}, 0), wire.StatusOK)
	if n, _ := w.awaited(0); n != 2 {
		t.Fatalf("awaited %d after a DONE for map 1, want 2", n)
	}
	wantStatus(t, a.do(wire.Keepalive{Done: 2}, 0), wire.StatusOK)
	if n, _ := w.awaited(0); n != 1 {
		t.Fatalf("awaited %d after a's DONE, want 1", n)
	}
	if g := w.stats().grace; g != testShards {
		t.Fatalf("%d shards in grace with one session still awaited, want %d", g, testShards)
	}
	wantStatus(t, b.acquire("y", wire.EX, true, 0), wire.StatusGrace)
	wantStatus(t, b.do(wire.Keepalive{Done: 2}, 0), wire.StatusOK)
	if g := w.stats().grace; g != 0 {
		t.Fatalf("%d shards still in grace after every session's DONE", g)
	}
	if v := gatherValue(reg, "tokend_worker_grace_ended_early_total", "reason", "all_done"); v != testShards {
		t.Fatalf("grace_ended_early_total{all_done} = %v, want %d", v, testShards)
	}
	wantStatus(t, b.acquire("x", wire.EX, true, 0), wire.StatusConflict) // the reclaimed grant stands
	g := b.acquire("y", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	if f := g.grant(t).Fence; wire.FenceEpoch(f) != 2 {
		t.Fatalf("new fence %#x, want epoch 2", f)
	}
	// Grace is over: a reclaim of a grant not held is refused.
	wantStatus(t, b.do(wire.Reclaim{Fence: wire.MakeFence(1, 80), Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("z")}, b.shard("z")),
		wire.StatusReclaimRefused)
}

// TestEarlyGraceSessionEnds: a session that stays silent is awaited until
// it ends; then it holds nothing and grace ends.
func TestEarlyGraceSessionEnds(t *testing.T) {
	cli := testEtcdGrace(t, 30*time.Second)
	w, reg := startWorker(t, cli, "w1", nil)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	recoverAfter(t, cli, w, delegation.Owner{ID: "dead", Incarnation: 0xdead})
	waitFor(t, "live sessions read", w.liveRead)
	wantStatus(t, a.do(wire.Keepalive{Done: 2}, 0), wire.StatusOK)
	if n, _ := w.awaited(3); n != 1 {
		t.Fatalf("awaited %d, want the silent session", n)
	}
	ch := b.header(0, 0)
	r, err := b.call(wire.Empty{}, wire.Header{Type: wire.TypeSessionClose, Session: ch.Session, Request: ch.Request, Ack: ch.Ack}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r, wire.StatusOK)
	waitFor(t, "grace ends when the silent session ends", func() bool { return w.stats().grace == 0 })
	if v := gatherValue(reg, "tokend_worker_grace_ended_early_total", "reason", "all_done"); v != testShards {
		t.Fatalf("grace_ended_early_total{all_done} = %v, want %d", v, testShards)
	}
}

// TestEarlyGraceOwnerRegistered: the previous owner's incarnation is still
// registered (it may still vouch for its grants): DONE from every session
// does not end the grace period early.
func TestEarlyGraceOwnerRegistered(t *testing.T) {
	cli := testEtcdGrace(t, 30*time.Second)
	w, _ := startWorker(t, cli, "w1", nil)
	a := udpClient(t, w)
	a.open(0)
	alive := delegation.Owner{ID: "alive", Incarnation: 0xa11e}
	doc, _ := json.Marshal(cluster.Worker{ID: alive.ID, Incarnation: formatInc(alive.Incarnation), UDP: "127.0.0.1:1"})
	if _, err := cli.Put(context.Background(), cluster.WorkerKey(alive.ID), string(doc)); err != nil {
		t.Fatal(err)
	}
	recoverAfter(t, cli, w, alive)
	waitFor(t, "live sessions read", w.liveRead)
	if _, known := w.awaited(0); known {
		t.Fatal("a recovery after a registered owner is tracked for an early end")
	}
	wantStatus(t, a.do(wire.Keepalive{Done: 2}, 0), wire.StatusOK)
	if g := w.stats().grace; g != testShards {
		t.Fatalf("%d shards in grace, want all %d: the previous owner may still vouch", g, testShards)
	}
}

// TestGraceSilentSessionFull: with a session that never says DONE the
// grace period runs its full length (800 ms here) and ends at its
// deadline, not early.
func TestGraceSilentSessionFull(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	recoverAfter(t, cli, w, delegation.Owner{ID: "dead", Incarnation: 0xdead})
	wantStatus(t, a.do(wire.Keepalive{Done: 2}, 0), wire.StatusOK)
	waitFor(t, "grace period over", func() bool { return w.stats().grace == 0 })
	if v := gatherValue(reg, "tokend_worker_grace_ended_early_total", "reason", "all_done"); v != 0 {
		t.Fatalf("grace_ended_early_total = %v with a silent session", v)
	}
	if v := gatherHistCount(reg, "tokend_worker_grace_duration_seconds", "end", "deadline"); v != testShards {
		t.Fatalf("grace_duration_seconds{deadline} count = %v, want %d", v, testShards)
	}
}

// gatherHistCount returns the sample count of histogram name{label=value}.
func gatherHistCount(reg *prometheus.Registry, name, label, value string) uint64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value && m.Histogram != nil {
					return m.Histogram.GetSampleCount()
				}
			}
		}
	}
	return 0
}
