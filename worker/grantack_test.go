package worker

import (
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeclock"
	"github.com/tokend/tokend/wire"
	core "github.com/tokend/tokend/worker/session"
)

// grantFixture is a worker on a fake clock and two clients: a holds "t",
// b waits for it and is granted it (GRANT_ASYNC) once a releases.
type grantFixture struct {
	t     *testing.T
	w     *Worker
	clk   *fakeclock.Clock
	a, b  *tclient
	q     msg // b's QUEUED ACQUIRE
	first msg // the GRANT_ASYNC b received first (taken from its events)
	sent  func() int
}

func newGrantFixture(t *testing.T) *grantFixture {
	cli := testEtcd(t)
	clk := fakeclock.New(time.Time{})
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", Clock: clk})
	serveAll(t, cli, w)
	f := &grantFixture{t: t, w: w, clk: clk, a: udpClient(t, w), b: udpClient(t, w)}
	f.a.open(0)
	f.b.open(0)
	f.sent = func() int { return int(gatherValue(reg, "tokend_worker_grant_async_retransmissions_total", "", "")) }
	ga := f.a.acquire("t", wire.EX, false, 1000)
	wantStatus(t, ga, wire.StatusOK)
	f.q = f.b.acquire("t", wire.EX, false, wire.WaitForever)
	wantStatus(t, f.q, wire.StatusQueued)
	wantStatus(t, f.a.release("t", ga.grant(t).Fence), wire.StatusOK)
	var ok bool
	if f.first, ok = f.b.event(2*time.Second, isType(wire.TypeGrantAsync)); !ok {
		t.Fatal("no GRANT_ASYNC after the release")
	}
	return f
}

// grants waits until b has received the first GRANT_ASYNC and every
// retransmission the worker counted, and returns how many it received.
func (f *grantFixture) grants() int {
	f.t.Helper()
	waitFor(f.t, "the GRANT_ASYNCs sent arrived", func() bool { return 1+f.b.countEvents(isType(wire.TypeGrantAsync)) >= 1+f.sent() })
	return 1 + f.b.countEvents(isType(wire.TypeGrantAsync))
}

// run moves the fake clock through the worker's timer wake-ups for d.
func (f *grantFixture) run(d time.Duration) {
	for el := time.Duration(0); el < d; {
		el += runTimers(f.t, f.w, f.clk)
	}
}

func (f *grantFixture) retransmitting() bool {
	f.w.mu.Lock()
	defer f.w.mu.Unlock()
	return len(f.w.revoking) != 0
}

// TestGrantAsyncRetransmit: a GRANT_ASYNC is retransmitted (the same
// datagram: the queued request's id, its grant) until the client
// acknowledges it with GRANT_ACK, and not after (wire/SPEC.md §12).
func TestGrantAsyncRetransmit(t *testing.T) {
	f := newGrantFixture(t)
	f.run(300 * time.Millisecond)
	n := f.grants()
	if n < 3 {
		t.Fatalf("%d GRANT_ASYNCs in 300 ms, want retransmissions", n)
	}
	for {
		m, ok := f.b.event(0, isType(wire.TypeGrantAsync))
		if !ok {
			break
		}
		if m.h.Request != f.q.h.Request || m.grant(t).Fence != f.first.grant(t).Fence {
			t.Fatalf("retransmission %v fence %#x, first %v fence %#x", m, m.grant(t).Fence, f.first, f.first.grant(t).Fence)
		}
	}
	f.b.finish(f.q.h.Request)
	f.b.send(wire.GrantAck{Target: f.q.h.Request}, f.b.header(f.q.h.Shard, 0))
	waitFor(t, "the GRANT_ACK handled", func() bool { return !f.retransmitting() })
	before := f.sent()
	f.run(2 * time.Second)
	if d := f.sent() - before; d != 0 {
		t.Fatalf("%d GRANT_ASYNCs sent after GRANT_ACK", d)
	}
}

// TestGrantAsyncBounded: a client that never acknowledges a GRANT_ASYNC
// (nor re-polls) is sent it GrantTries times in all, then no more.
func TestGrantAsyncBounded(t *testing.T) {
	f := newGrantFixture(t)
	for f.retransmitting() {
		f.run(100 * time.Millisecond)
	}
	if n := f.grants(); n != core.GrantTries || f.sent() != core.GrantTries-1 {
		t.Fatalf("%d GRANT_ASYNCs received, %d retransmissions counted; want %d and %d", n, f.sent(), core.GrantTries, core.GrantTries-1)
	}
	f.run(3 * time.Second)
	if f.sent() != core.GrantTries-1 {
		t.Fatalf("%d retransmissions after the bound", f.sent())
	}
}

// TestGrantAsyncRepoll: a re-poll of the granted request (a client without
// GRANT_ACK) is answered with the GRANT and ends the retransmission.
func TestGrantAsyncRepoll(t *testing.T) {
	f := newGrantFixture(t)
	r, err := f.b.call(wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("t")},
		f.b.header(f.q.h.Shard, f.q.h.Request), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r, wire.StatusOK)
	waitFor(t, "the re-poll handled", func() bool { return !f.retransmitting() })
	before := f.sent()
	f.run(2 * time.Second)
	if d := f.sent() - before; d != 0 {
		t.Fatalf("%d GRANT_ASYNCs sent after the re-poll", d)
	}
}

// TestAttackForgedGrantAck: a GRANT_ACK without the session's tag
// (unauthenticated, or tagged with another session's key) is dropped and
// counted, and the GRANT_ASYNC it names is still retransmitted to the
// victim; the victim's own GRANT_ACK stops it.
func TestAttackForgedGrantAck(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	holder, victim, other := udpClient(t, f.w), udpClient(t, f.w), udpClient(t, f.w)
	holder.openAuth("alice", f.alice, 0)
	victim.openAuth("alice", f.alice, 0)
	other.openAuth("alice", f.alice, 0)
	g := holder.acquire("x", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	q := victim.acquire("x", wire.EX, false, wire.WaitForever)
	wantStatus(t, q, wire.StatusQueued)
	wantStatus(t, holder.release("x", g.grant(t).Fence), wire.StatusOK)
	if _, ok := victim.event(5*time.Second, isType(wire.TypeGrantAsync)); !ok {
		t.Fatal("no GRANT_ASYNC")
	}
	attacker := udpClient(t, f.w)
	bad0 := f.failures("bad_tag")
	h := wire.Header{Session: victim.session, Request: 1 << 30, Ack: 1, Shard: q.h.Shard, Epoch: q.h.Epoch}
	attacker.sendRaw(forge(t, wire.GrantAck{Target: q.h.Request}, h))
	h.Request++
	p := forge(t, wire.GrantAck{Target: q.h.Request}, h)
	other.macMu.Lock()
	other.out.Seal(p)
	other.macMu.Unlock()
	attacker.sendRaw(p)
	waitFor(t, "forged GRANT_ACKs counted", func() bool { return f.failures("bad_tag") == bad0+2 })
	victim.mu.Lock()
	victim.events = nil
	victim.mu.Unlock()
	if _, ok := victim.event(5*time.Second, isType(wire.TypeGrantAsync)); !ok {
		t.Fatal("the GRANT_ASYNC was not retransmitted after the forged GRANT_ACKs")
	}
	victim.finish(q.h.Request)
	victim.send(wire.GrantAck{Target: q.h.Request}, victim.header(q.h.Shard, 0))
	waitFor(t, "the victim's GRANT_ACK handled", func() bool {
		f.w.mu.Lock()
		defer f.w.mu.Unlock()
		return len(f.w.revoking) == 0
	})
	if n := attacker.countEvents(func(msg) bool { return true }); n != 0 {
		t.Fatalf("the attacker received %d datagrams", n)
	}
}

// TestQueuedDoesNotPinAck: a client whose ack skips its request answered
// QUEUED (wire/SPEC.md §11) does 2,200 operations while it waits, more
// than twice the reply cache's bound, without a LIMIT; the queued request, below the
// ack all along, is still answered from its state (QUEUED, then the
// GRANT), can be granted and acknowledged, and then a late copy of it is
// not applied again (invariant 4), nor is a late copy of an operation
// below the ack: both ACQUIREs are answered UNKNOWN_REQUEST.
func TestQueuedDoesNotPinAck(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", Limits: Limits{ReplyCache: 1024}})
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(60000) // no KEEPALIVEs here: sessions that outlive the test
	b.open(60000)
	g := a.acquire("pin", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	q := b.acquire("pin", wire.EX, false, wire.WaitForever)
	wantStatus(t, q, wire.StatusQueued)
	b.finish(q.h.Request) // exempt: the ack passes it from now on
	var firstOp []byte
	for i := range 1100 {
		r := b.acquire("op", wire.EX, true, 0)
		wantStatus(t, r, wire.StatusOK)
		if i == 0 {
			firstOp = r.raw
		}
		wantStatus(t, b.release("op", r.grant(t).Fence), wire.StatusOK)
	}
	if n := gatherValue(reg, "tokend_worker_limited_total", "limit", limQueued); n > 0 {
		t.Fatalf("%v requests answered LIMIT", n)
	}
	w.mu.Lock()
	cached := w.sessions[b.session].core.Len()
	w.mu.Unlock()
	if cached > 10 {
		t.Fatalf("%d replies cached for the session: the ack is pinned", cached)
	}
	repoll := func() msg {
		t.Helper()
		r, err := b.call(wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("pin")},
			b.header(q.h.Shard, q.h.Request), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		b.finish(q.h.Request)
		return r
	}
	wantStatus(t, repoll(), wire.StatusQueued)
	wantStatus(t, a.release("pin", g.grant(t).Fence), wire.StatusOK)
	ga, ok := b.event(5*time.Second, isType(wire.TypeGrantAsync))
	if !ok || ga.h.Request != q.h.Request {
		t.Fatalf("no GRANT_ASYNC for the queued request: %v", ga)
	}
	re := repoll()
	wantStatus(t, re, wire.StatusOK)
	if re.grant(t).Fence != ga.grant(t).Fence {
		t.Fatalf("re-poll granted fence %#x, GRANT_ASYNC %#x", re.grant(t).Fence, ga.grant(t).Fence)
	}
	b.send(wire.GrantAck{Target: q.h.Request}, b.header(q.h.Shard, 0))
	waitFor(t, "the outcome forgotten after GRANT_ACK", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		_, ok := w.sessions[b.session].core.Entry(q.h.Request)
		return !ok
	})
	// Late copies below the ack: the acknowledged request and the first
	// operation are not applied again: answered UNKNOWN_REQUEST (ACQUIREs,
	// wire/SPEC.md 18), and nothing else.
	unknown0 := gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", "unknown_request")
	grants := w.stats().grants
	b.send(wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("pin")},
		b.header(q.h.Shard, q.h.Request))
	b.finish(q.h.Request)
	firstH, _ := wire.ParseHeader(firstOp)
	b.send(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("op")},
		b.header(firstH.Shard, firstH.Request))
	b.finish(firstH.Request)
	waitFor(t, "late copies answered UNKNOWN_REQUEST", func() bool {
		return gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", "unknown_request") == unknown0+2
	})
	for _, id := range []uint64{q.h.Request, firstH.Request} {
		m, ok := b.event(time.Second, func(m msg) bool { return m.h.Request == id && m.h.Type == wire.TypeAcquireReply })
		if !ok || m.h.Status != wire.StatusUnknownRequest {
			t.Fatalf("late copy of request %d: %v %v, want UNKNOWN_REQUEST", id, m, ok)
		}
	}
	if n := w.stats().grants; n != grants {
		t.Fatalf("%d grants after the late copies, %d before", n, grants)
	}
	b.quiet(100*time.Millisecond, "late copies below the ack")
}
