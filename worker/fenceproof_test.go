package worker

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// proofOf sends FENCE_PROOF for (name, fence, range) and returns the reply.
func (c *tclient) proofOf(name string, fence, start, end uint64) msg {
	c.t.Helper()
	return c.do(wire.FenceProof{Fence: fence, Start: start, End: end, Name: []byte(name)}, c.shard(name))
}

// TestFenceProof: a held grant gets a proof that verifies with the public
// key derived from the cluster key and states the grant; a fence not held,
// another session's fence, a wrong range and an inflated fence get
// NOT_HELD; a released grant has no proof any more.
func TestFenceProof(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	a, b := udpClient(t, f.w), udpClient(t, f.w)
	a.openAuth("alice", f.alice, 0)
	b.openAuth("alice", f.alice, 0)
	g := a.acquire("ledger", wire.PW, true, 0)
	wantStatus(t, g, wire.StatusOK)
	fence := g.grant(t).Fence
	gr := a.acquireRange("pages", wire.EX, 4096, 8192)
	wantStatus(t, gr, wire.StatusOK)

	r := a.proofOf("ledger", fence, wire.WholeStart, wire.WholeEnd)
	wantStatus(t, r, wire.StatusOK)
	if !sealed(r.raw) {
		t.Fatal("PROOF reply not tagged")
	}
	var p wire.Proof
	if err := p.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	claims, err := fenceproof.Verify(fenceproof.PublicKey(f.cluster[:]), p.Proof)
	if err != nil {
		t.Fatal(err)
	}
	sh := a.shard("ledger")
	if !bytes.Equal(claims.Name, []byte("ledger")) || claims.Fence != fence || claims.Mode != wire.PW ||
		!wire.IsWhole(claims.Start, claims.End) || claims.Shard != sh || claims.Epoch != a.epoch(sh) ||
		string(claims.WorkerID) != "w1" || claims.IssuedAtMs == 0 {
		t.Errorf("claims %+v, want ledger fence %d PW whole shard %d epoch %d worker w1", claims, fence, sh, a.epoch(sh))
	}
	other := f.cluster
	other[0] ^= 1
	if _, err := fenceproof.Verify(fenceproof.PublicKey(other[:]), p.Proof); !errors.Is(err, fenceproof.ErrSignature) {
		t.Errorf("verified under another cluster's key: %v", err)
	}

	rf := gr.grant(t).Fence
	r = a.proofOf("pages", rf, 4096, 8192)
	wantStatus(t, r, wire.StatusOK)
	if err := p.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	if c, err := fenceproof.Verify(fenceproof.PublicKey(f.cluster[:]), p.Proof); err != nil || c.Start != 4096 || c.End != 8192 || c.Mode != wire.EX {
		t.Errorf("range proof: %+v, %v", c, err)
	}

	for _, tc := range []struct {
		name       string
		c          *tclient
		token      string
		fence      uint64
		start, end uint64
	}{
		{"fence not held", a, "ledger", fence + 1, wire.WholeStart, wire.WholeEnd},
		{"inflated fence", a, "ledger", 1<<63 | 1, wire.WholeStart, wire.WholeEnd},
		{"another session's fence", b, "ledger", fence, wire.WholeStart, wire.WholeEnd},
		{"other range", a, "pages", rf, 4096, 8191},
		{"whole instead of range", a, "pages", rf, wire.WholeStart, wire.WholeEnd},
		{"token not held", a, "nobody", fence, wire.WholeStart, wire.WholeEnd},
	} {
		if r := tc.c.proofOf(tc.token, tc.fence, tc.start, tc.end); r.h.Status != wire.StatusNotHeld {
			t.Errorf("%s: %v, want NOT_HELD", tc.name, r.h.Status)
		}
	}

	// Stale epoch, as for other token requests.
	h := a.header(sh, 0)
	h.Epoch = a.epoch(sh) + 1
	if r := mustCall(t, a, wire.FenceProof{Fence: fence, Name: []byte("ledger"), End: wire.WholeEnd}, h); r.h.Status != wire.StatusStaleEpoch {
		t.Errorf("wrong epoch: %v, want STALE_EPOCH", r.h.Status)
	}
	a.finish(h.Request)

	// Nothing is cached: once the grant is released it has no proof.
	wantStatus(t, a.release("ledger", fence), wire.StatusOK)
	if r := a.proofOf("ledger", fence, wire.WholeStart, wire.WholeEnd); r.h.Status != wire.StatusNotHeld {
		t.Errorf("released grant: %v, want NOT_HELD", r.h.Status)
	}
}

// TestFenceProofInsecure: a worker without authentication has no key to
// sign with and says so.
func TestFenceProofInsecure(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	c := udpClient(t, w)
	c.open(0)
	g := c.acquire("ledger", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	r := c.proofOf("ledger", g.grant(t).Fence, wire.WholeStart, wire.WholeEnd)
	wantStatus(t, r, wire.StatusBadRequest)
	var e wire.ErrorBody
	if err := e.Decode(r.h, r.raw); err != nil || !bytes.Equal(e.Message, msgProofNeedsAuth) {
		t.Errorf("message %q, %v", e.Message, err)
	}
}

// TestFenceProofGrace: while a recovered shard is in its grace period, a
// grant not reclaimed yet gets GRACE (retryable), not NOT_HELD; once
// reclaimed it gets a proof of its old fence at the shard's new epoch.
func TestFenceProofGrace(t *testing.T) {
	// A grace period long enough that the test never sees it end.
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := cluster.Bootstrap(ctx, cli, cluster.Config{Shards: testShards, SessionTTLms: 2000, GraceMs: 60000,
		Created: cluster.Now(time.Now()), CreatedBy: "test", Version: cluster.Version}); err != nil {
		t.Fatal(err)
	}
	ck, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	alice, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	w, _ := startWorkerCfg(t, Config{Client: cli, ID: "w1", Auth: &Auth{ClusterKey: ck, Keys: testKeys{"alice": alice}}})
	putMap(t, cli, 1, []delegation.Owner{w.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 2}})
	waitFor(t, "worker serves all shards", func() bool { return w.stats().shards == testShards })
	if s := w.stats(); s.grace != testShards {
		t.Fatalf("stats %+v, want every shard in grace", s)
	}
	a := udpClient(t, w)
	a.openAuth("alice", alice, 0)
	for s := range uint32(testShards) {
		a.setEpoch(s, 2)
	}
	old := wire.MakeFence(1, 77)
	if r := a.proofOf("x", old, wire.WholeStart, wire.WholeEnd); r.h.Status != wire.StatusGrace {
		t.Fatalf("before the reclaim: %v, want GRACE", r.h.Status)
	}
	rc := a.do(wire.Reclaim{Fence: old, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("x")}, a.shard("x"))
	wantStatus(t, rc, wire.StatusOK)
	r := a.proofOf("x", old, wire.WholeStart, wire.WholeEnd)
	wantStatus(t, r, wire.StatusOK)
	var p wire.Proof
	if err := p.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	c, err := fenceproof.Verify(fenceproof.PublicKey(ck[:]), p.Proof)
	if err != nil || c.Fence != old || c.Epoch != 2 || c.Mode != wire.EX {
		t.Fatalf("claims %+v, %v; want fence %#x at epoch 2", c, err, old)
	}
}
