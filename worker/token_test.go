package worker

import (
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeclock"
	"github.com/tokend/tokend/wire"
)

// TestTokens drives acquire, release, convert, cancel and TRY through the
// wire: an EX conflict queues and is granted with a higher fence after the
// release, shared holders coexist, disjoint ranges do not conflict.
func TestTokens(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)

	// Shared holders coexist; EX with TRY conflicts.
	pa := a.acquire("f", wire.PR, false, 1000)
	wantStatus(t, pa, wire.StatusOK)
	pb := b.acquire("f", wire.PR, false, 1000)
	wantStatus(t, pb, wire.StatusOK)
	if pb.grant(t).Fence <= pa.grant(t).Fence {
		t.Fatalf("fences %#x then %#x", pa.grant(t).Fence, pb.grant(t).Fence)
	}
	wantStatus(t, b.acquire("f", wire.EX, true, 0), wire.StatusConflict)
	wantStatus(t, b.release("f", pb.grant(t).Fence), wire.StatusOK)

	// Upgrade a's PR to EX (nobody else holds it): a new, higher fence.
	cv := a.do(wire.Convert{Fence: pa.grant(t).Fence, Mode: wire.EX, WaitMs: 1000, Name: []byte("f")}, a.shard("f"))
	wantStatus(t, cv, wire.StatusOK)
	fEX := cv.grant(t).Fence
	if fEX <= pb.grant(t).Fence || cv.grant(t).Mode != wire.EX {
		t.Fatalf("upgrade gave %+v", cv.grant(t))
	}

	// EX conflict: b queues, a gets a REVOKE, a releases, b gets
	// GRANT_ASYNC with a higher fence.
	q := b.acquire("f", wire.EX, false, wire.WaitForever)
	wantStatus(t, q, wire.StatusQueued)
	rv, ok := a.event(2*time.Second, isType(wire.TypeRevoke))
	if !ok {
		t.Fatal("holder got no REVOKE")
	}
	var rm wire.Revoke
	if err := rm.Decode(rv.h, rv.raw); err != nil {
		t.Fatal(err)
	}
	if rm.Fence != fEX || rm.Mode != wire.NL || string(rm.Name) != "f" {
		t.Fatalf("REVOKE %+v", rm)
	}
	// Downgrade EX -> PR with a value: keeps the fence; still conflicts
	// with the queued EX, so a new REVOKE (wanted NL) follows.
	dn := a.do(wire.Convert{Fence: fEX, Mode: wire.PR, Name: []byte("f")}, a.shard("f"))
	wantStatus(t, dn, wire.StatusOK)
	if dn.grant(t).Fence != fEX {
		t.Fatalf("downgrade changed the fence: %#x -> %#x", fEX, dn.grant(t).Fence)
	}
	wantStatus(t, a.release("f", fEX), wire.StatusOK)
	ga, ok := b.event(2*time.Second, isType(wire.TypeGrantAsync))
	if !ok {
		t.Fatal("no GRANT_ASYNC after release")
	}
	if ga.h.Request != q.h.Request || ga.grant(t).Fence <= fEX {
		t.Fatalf("GRANT_ASYNC %v fence %#x after fence %#x", ga, ga.grant(t).Fence, fEX)
	}
	b.finish(q.h.Request)

	// Cancel a queued acquire: CANCEL OK, and the queued request's cached
	// reply is CANCELED.
	q2 := a.acquire("f", wire.PR, false, wire.WaitForever)
	wantStatus(t, q2, wire.StatusQueued)
	cn := a.do(wire.Cancel{Target: q2.h.Request}, a.shard("f"))
	wantStatus(t, cn, wire.StatusOK)
	r, err := a.call(wire.Acquire{Mode: wire.PR, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("f")},
		a.header(a.shard("f"), q2.h.Request), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r, wire.StatusCanceled)
	a.finish(q2.h.Request)

	// A queued acquire with a wait limit times out.
	q3 := a.acquire("f", wire.PR, false, 50)
	wantStatus(t, q3, wire.StatusQueued)
	to, ok := a.event(2*time.Second, func(m msg) bool { return m.h.Request == q3.h.Request && m.h.Status == wire.StatusTimeout })
	if !ok {
		t.Fatal("no TIMEOUT for a queued acquire")
	}
	_ = to
	a.finish(q3.h.Request)

	// Ranges: [0,4096) and [4096,8192) do not conflict; overlapping ones do.
	r1 := a.acquireRange("r", wire.EX, 0, 4096)
	wantStatus(t, r1, wire.StatusOK)
	wantStatus(t, b.acquireRange("r", wire.EX, 4096, 8192), wire.StatusOK)
	wantStatus(t, b.acquireRange("r", wire.EX, 4000, 4100), wire.StatusConflict)

	// Release of a fence not held: NOT_HELD; a wrong shard: BAD_REQUEST.
	wantStatus(t, a.release("f", fEX), wire.StatusNotHeld)
	wrong := a.do(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("f")}, (a.shard("f")+1)%testShards)
	wantStatus(t, wrong, wire.StatusBadRequest)

	// MAP_REQUEST: one worker, every shard, epoch 1.
	mr := a.do(wire.MapRequest{}, 0)
	wantStatus(t, mr, wire.StatusOK)
	var mp wire.MapReply
	if err := mp.Decode(mr.h, mr.raw); err != nil {
		t.Fatal(err)
	}
	if mp.ShardCount != testShards || len(mp.Workers) != 1 || string(mp.Workers[0].Addr) != w.Addr().String() ||
		len(mp.Runs) != 1 || mp.Runs[0].Count != testShards || mp.Runs[0].Epoch != 1 {
		t.Fatalf("MAP reply %+v", mp)
	}
}

// TestRevokeRetransmit: a REVOKE is retransmitted until the holder
// acknowledges it, and not after. The worker runs on a fake clock, moved
// from one wake-up of its timer loop to the next.
func TestRevokeRetransmit(t *testing.T) {
	cli := testEtcd(t)
	clk := fakeclock.New(time.Time{})
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", Clock: clk})
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	wantStatus(t, a.acquire("t", wire.EX, false, 1000), wire.StatusOK)
	wantStatus(t, b.acquire("t", wire.EX, false, wire.WaitForever), wire.StatusQueued)
	sent := func() int { return int(gatherValue(reg, "tokend_worker_revokes_sent_total", "", "")) }
	// received waits until a has received every REVOKE the worker sent.
	received := func() int {
		t.Helper()
		waitFor(t, "the REVOKEs sent arrived", func() bool { return a.countEvents(isType(wire.TypeRevoke)) >= sent() })
		return a.countEvents(isType(wire.TypeRevoke))
	}

	// Unacknowledged: the same REVOKE (same worker sequence) comes again.
	for el := time.Duration(0); ; {
		w.mu.Lock()
		d := time.Duration(w.wakeAt - w.mono(clk.Now()))
		w.mu.Unlock()
		if el+d > 300*time.Millisecond {
			break
		}
		el += runTimers(t, w, clk)
	}
	revokes := received()
	if revokes < 3 {
		t.Fatalf("%d REVOKEs in 300 ms, want retransmissions", revokes)
	}
	rv, _ := a.event(0, isType(wire.TypeRevoke))
	a.send(wire.RevokeAck{Target: rv.h.Request}, a.header(rv.h.Shard, 0))
	waitFor(t, "the REVOKE_ACK handled", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.revoking) == 0
	})
	before := sent()
	a.mu.Lock()
	a.events = nil
	a.mu.Unlock()
	for el := time.Duration(0); el < 500*time.Millisecond; {
		el += runTimers(t, w, clk)
	}
	if n := sent() - before; n != 0 {
		t.Fatalf("%d REVOKEs sent after REVOKE_ACK", n)
	}
	if n := a.countEvents(isType(wire.TypeRevoke)); n != 0 {
		t.Fatalf("%d REVOKEs after REVOKE_ACK", n)
	}
	w.mu.Lock()
	pending := len(w.revoking)
	w.mu.Unlock()
	if pending != 0 {
		t.Fatalf("%d sessions with pending revokes after the ack", pending)
	}
}
