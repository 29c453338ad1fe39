package worker

import (
	"context"
	"encoding/json"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
)

// TestLeaseLost (invariant 5): when etcd reports the worker's own lease
// gone, the worker drops every table and registers again as a new
// incarnation; the shards delegated to the old one are not served, and the
// new incarnation's shards start in grace, where the holder reclaims.
func TestLeaseLost(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.open(10000)
	g := c.acquire("k", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	old := w.testOwner()

	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(old.Incarnation)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new incarnation registered", func() bool {
		o := w.testOwner()
		return o.Incarnation != 0 && o.Incarnation != old.Incarnation
	})
	if s := w.stats(); s.shards != 0 || s.grants != 0 {
		t.Fatalf("after the lease was lost: %+v, want nothing served", s)
	}
	me := w.testOwner()
	resp, err := cli.Get(context.Background(), cluster.WorkerKey("w1"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("registration: %v %v", resp, err)
	}
	var doc cluster.Worker
	json.Unmarshal(resp.Kvs[0].Value, &doc)
	if doc.Incarnation != formatInc(me.Incarnation) {
		t.Fatalf("registered incarnation %s, want %x", doc.Incarnation, me.Incarnation)
	}
	// The map still names the old incarnation: not served.
	wantStatus(t, c.acquire("k2", wire.EX, true, 0), wire.StatusNotOwner)

	// The leader re-delegates to the new incarnation at epoch 2: grace,
	// and the holder reclaims its grant with its old fence.
	putMap(t, cli, 2, []delegation.Owner{me}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 2}})
	waitFor(t, "worker serves again", func() bool { return w.stats().shards == testShards })
	for s := range uint32(testShards) {
		c.setEpoch(s, 2)
	}
	rc := c.do(wire.Reclaim{Fence: g.grant(t).Fence, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("k")}, c.shard("k"))
	wantStatus(t, rc, wire.StatusOK)
	wantStatus(t, c.acquire("k2", wire.EX, true, 0), wire.StatusGrace)
}
