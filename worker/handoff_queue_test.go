package worker

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// queuedAt opens a raw test client on w and queues an EX ACQUIRE of name
// behind a holder; it returns the client and the request id.
func queuedAt(t *testing.T, w *Worker, name string, wantPos uint32) (*tclient, uint64) {
	t.Helper()
	c := udpClient(t, w)
	c.open(10000)
	r := c.acquire(name, wire.EX, false, 30000)
	wantStatus(t, r, wire.StatusQueued)
	var q wire.Queued
	if err := q.Decode(r.h, r.raw); err != nil || q.Position != wantPos {
		t.Fatalf("queued at %d (%v), want %d", q.Position, err, wantPos)
	}
	return c, r.h.Request
}

// toNewOwner points c at w2, for shard at epoch 2 (moveHalf).
func toNewOwner(c *tclient, w2 *Worker, shard uint32) {
	c.mu.Lock()
	c.srv = w2.Addr()
	c.mu.Unlock()
	c.setEpoch(shard, 2)
}

// TestHandoffMovesQueue (handoff protocol 2, wire/SPEC.md 18): three
// requests queued on a token behind a holder move with the shard in order
// and under their request ids. At the new owner a re-poll under the old id
// is answered QUEUED with its place, also when the id is below the
// session's ack there; when the holder releases, the first waiter is
// granted (GRANT_ASYNC under its old id, a fence of the new epoch), then
// the next, and nothing is left over. A request id below the ack that the
// new owner does not know gets UNKNOWN_REQUEST and changes nothing.
func TestHandoffMovesQueue(t *testing.T) {
	cli, w1, w2 := twoWorkers(t)
	name := namesIn(8, 16, 1)[0]
	other := namesIn(8, 16, 2)[1] // another token of a moved shard
	shard := wire.Shard([]byte(name), testShards)

	holder := udpClient(t, w1)
	holder.open(10000)
	hr := holder.acquire(name, wire.EX, true, 0)
	wantStatus(t, hr, wire.StatusOK)
	hfence := hr.grant(t).Fence
	var (
		ws  [3]*tclient
		ids [3]uint64
	)
	for i := range ws {
		ws[i], ids[i] = queuedAt(t, w1, name, uint32(i))
	}
	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards with their state", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 0 || s.grants != 1 || s.waiters != 3 {
		t.Fatalf("w2 after the handoff: %+v (want no grace, 1 grant, 3 waiters)", s)
	}
	// w2 revokes the holder again (w1's REVOKEs stopped with the move).
	if rv, ok := holder.event(3*time.Second, func(m msg) bool { return m.h.Type == wire.TypeRevoke && m.h.Epoch == 2 }); !ok {
		t.Fatal("no REVOKE from w2 for the holder blocking the moved requests")
	} else if m := (wire.Revoke{}); m.Decode(rv.h, rv.raw) != nil || m.Fence != hfence {
		t.Fatalf("REVOKE from w2: %v", rv)
	}

	// What w1 kept answers a pull of either protocol: protocol 2 with the
	// waiters and w1's clock, protocol 1 without them; another protocol is
	// refused naming the newest w1 speaks, and a w1 capped at 1 refuses 2
	// naming 1 (what makes a newer w2 ask again in 1).
	pr := &pullRequest{From: w2.me.ID, Incarnation: formatInc(w2.me.Incarnation), ToID: w1.me.ID,
		To: formatInc(w1.me.Incarnation), MapVersion: 2, Shards: []shardEpochJ{{Shard: shard, Epoch: 2}}}
	for _, tc := range []struct {
		max, proto, waiters int
		err                 bool
		answer              int
	}{{0, 2, 3, false, 2}, {0, 1, 0, false, 1}, {0, 3, 0, true, 2}, {1, 2, 0, true, 1}, {1, 1, 0, false, 1}} {
		w1.handoffMax.Store(int32(tc.max))
		pr.Proto = tc.proto
		resp := w1.answerPull(context.Background(), pr)
		if (resp.Error != "") != tc.err || resp.Proto != tc.answer {
			t.Fatalf("%+v: answer proto %d error %q", tc, resp.Proto, resp.Error)
		}
		if tc.err {
			continue
		}
		if len(resp.Shards) != 1 || !resp.Shards[0].OK || len(resp.Shards[0].Snap.Waiters) != tc.waiters ||
			(tc.proto == 2) != (resp.Clock != 0) {
			t.Fatalf("%+v: %+v", tc, resp)
		}
	}
	w1.handoffMax.Store(0)

	// Waiter 1 moves its ack at w2 past its queued request (as the
	// clients do: a request answered QUEUED does not hold the ack back)
	// before it re-polls: an ACQUIRE and its RELEASE of another token.
	toNewOwner(ws[1], w2, shard)
	ws[1].setEpoch(wire.Shard([]byte(other), testShards), 2)
	ws[1].finish(ids[1])
	or := ws[1].acquire(other, wire.PR, true, 0)
	wantStatus(t, or, wire.StatusOK)
	wantStatus(t, ws[1].release(other, or.grant(t).Fence), wire.StatusOK) // its ack is its own id, past both
	for i, c := range ws {
		toNewOwner(c, w2, shard)
		r, err := c.call(wire.Acquire{Mode: wire.EX, WaitMs: 30000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)},
			c.header(shard, ids[i]), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		wantStatus(t, r, wire.StatusQueued)
		var q wire.Queued
		if err := q.Decode(r.h, r.raw); err != nil || q.Position != uint32(i) || r.h.Epoch != 2 {
			t.Fatalf("waiter %d re-polled at w2: position %d epoch %d (%v), want %d at 2", i, q.Position, r.h.Epoch, err, i)
		}
	}

	// An ACQUIRE under an id below waiter 1's ack at w2 that w2 does not
	// hold (its finished acquire of the other token, forgotten when the
	// ack passed it; or a forged id): not applied, nothing changes.
	before := w2.stats()
	forged := wire.Header{Type: wire.TypeAcquire, Session: ws[1].session, Request: or.h.Request, Ack: or.h.Request,
		Shard: shard, Epoch: 2}
	r, err := ws[1].call(wire.Acquire{Mode: wire.EX, WaitMs: 30000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)},
		forged, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r, wire.StatusUnknownRequest)
	if after := w2.stats(); after.grants != before.grants || after.waiters != before.waiters {
		t.Fatalf("UNKNOWN_REQUEST changed w2: %+v -> %+v", before, after)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_dropped_datagrams_total", "reason", "unknown_request"); v != 1 {
		t.Fatalf("unknown_request drops %v, want 1", v)
	}

	// The holder releases at w2: waiter 0, and only it, is granted.
	toNewOwner(holder, w2, shard)
	wantStatus(t, holder.release(name, hfence), wire.StatusOK)
	for i, c := range ws {
		g, ok := c.event(3*time.Second, isType(wire.TypeGrantAsync))
		if !ok {
			t.Fatalf("waiter %d: no GRANT_ASYNC", i)
		}
		if g.h.Request != ids[i] || g.h.Epoch != 2 || wire.FenceEpoch(g.grant(t).Fence) != 2 {
			t.Fatalf("waiter %d: GRANT_ASYNC %v epoch %d fence %#x, want request %d at epoch 2", i, g, g.h.Epoch, g.grant(t).Fence, ids[i])
		}
		for j := i + 1; j < len(ws); j++ {
			if n := ws[j].countEvents(isType(wire.TypeGrantAsync)); n != 0 {
				t.Fatalf("waiter %d granted while waiter %d holds the token", j, i)
			}
		}
		c.send(wire.GrantAck{Target: ids[i]}, c.header(shard, 0))
		// Its re-poll gets the GRANT (the cached outcome).
		r, err := c.call(wire.Acquire{Mode: wire.EX, WaitMs: 30000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)},
			c.header(shard, ids[i]), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.h.Status != wire.StatusOK && r.h.Status != wire.StatusUnknownRequest {
			t.Fatalf("waiter %d's re-poll after GRANT_ACK: %v", i, r)
		}
		wantStatus(t, c.release(name, g.grant(t).Fence), wire.StatusOK)
	}
	waitFor(t, "nothing left at w2", func() bool { s := w2.stats(); return s.grants == 0 && s.waiters == 0 })
}

// handoffWaitingClient is the scenario of Go clients blocked in Acquire
// behind a holder when their shard is handed off: a first client queues,
// then a second behind it; the first sends other requests meanwhile (its
// acks pass its queued request, which does not hold them back); the shard
// moves from w1 to w2, whose handoff protocols are capped at oldMax and
// newMax (0: the current one), and the holder releases at w2. With ordered
// the first waiter, not the second, must get the token; in any case each
// gets it in turn, never both at once, and once both have released nothing
// is left at w2. It returns w2's count of UNKNOWN_REQUEST answers.
func handoffWaitingClient(t *testing.T, oldMax, newMax int32, ordered bool) float64 {
	cli, w1, w2 := twoWorkers(t)
	w1.handoffMax.Store(oldMax)
	w2.handoffMax.Store(newMax)
	// The holder keeps its token when revoked: the requests must queue.
	holder := dialKeeping(t, w1.Addr().String())
	// The waiters keep the token too when the other one's request
	// revokes it: what each gets is its own.
	first := dialKeeping(t, w1.Addr().String())
	second := dialKeeping(t, w1.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	name := namesIn(8, 16, 1)[0]
	held, err := holder.Acquire(ctx, name, wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		who int
		tok *clientlib.Token
		err error
	}
	got := make(chan result, 2)
	wait := func(c *clientlib.Client, who int) {
		go func() {
			tok, err := c.Acquire(ctx, name, wire.EX)
			got <- result{who, tok, err}
		}()
		waitFor(t, "the request queued at w1", func() bool {
			if len(got) > 0 {
				t.Fatal("an acquire ended before the move")
			}
			return w1.stats().waiters == who
		})
	}
	wait(first, 1)
	wait(second, 2)
	if tok, err := first.Acquire(ctx, namesIn(8, 16, 2)[1], wire.PR); err != nil {
		t.Fatal(err)
	} else if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}

	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	// Handed over, not recovered, whatever the protocol. (Under protocol
	// 1 the waiters' clients may already have queued again at w2.)
	if s := w2.stats(); s.grace != 0 || (ordered && s.waiters != 2) {
		t.Fatalf("w2 after the handoff: %+v, want no grace (and with protocol 2, 2 waiters)", s)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "imported"); v != 8 {
		t.Fatalf("w2 imported %v shards, want 8", v)
	}
	waitFor(t, "holder valid at w2", func() bool { return held.Valid() && w2.stats().grants == 1 })
	// Both waiters have found the new owner (their requests moved, or
	// queued there again) before the holder releases.
	waitFor(t, "both waiters queued at w2", func() bool { return w2.stats().waiters == 2 })
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		r := <-got
		if r.err != nil {
			t.Fatalf("waiter %d across the handoff: %v", r.who, r.err)
		}
		if ordered && r.who != i+1 {
			t.Fatalf("waiter %d got the token first", r.who)
		}
		if wire.FenceEpoch(r.tok.Fence()) != 2 {
			t.Fatalf("fence %#x not of w2's epoch 2", r.tok.Fence())
		}
		if len(got) > 0 {
			t.Fatal("both waiters hold the token")
		}
		if s := w2.stats(); s.grants != 1 || s.waiters != 1-i {
			t.Fatalf("w2 with waiter %d holding: %+v, want 1 grant and %d waiters", r.who, s, 1-i)
		}
		if err := r.tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "nothing left at w2", func() bool { s := w2.stats(); return s.grants == 0 && s.waiters == 0 })
	return gatherValue(w2.met2(t), "tokend_worker_dropped_datagrams_total", "reason", "unknown_request")
}

// dialKeeping dials a client that keeps its tokens when they are revoked.
func dialKeeping(t *testing.T, seeds ...string) *clientlib.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: seeds, Insecure: true,
		OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestHandoffWaitingClientKeepsPlace: with handoff protocol 2 both
// queued requests move, and the clients find them at w2 under their ids:
// no UNKNOWN_REQUEST.
func TestHandoffWaitingClientKeepsPlace(t *testing.T) {
	if n := handoffWaitingClient(t, 0, 0, true); n > 0 {
		t.Fatalf("w2 answered UNKNOWN_REQUEST %v times", n)
	}
}

// TestHandoffMixedProtocols: a pair where one worker speaks only handoff
// protocol 1 still hands the shard over (grants, no grace period), the
// queued requests staying behind as before: their clients ask again at
// the new owner, which queues them there, and they get the token.
func TestHandoffMixedProtocols(t *testing.T) {
	t.Run("old owner", func(t *testing.T) { handoffWaitingClient(t, 1, 0, false) })
	t.Run("new owner", func(t *testing.T) { handoffWaitingClient(t, 0, 1, false) })
}
