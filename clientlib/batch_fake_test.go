package clientlib

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeclock"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

// TestAcquireBatchFake: against the fake workers, whose tables the test
// reads: a batch over several shards leaves exactly its grants at the
// worker; a batch that fails (Try, one token held elsewhere) leaves none
// of the caller's grants behind, in any shard.
func TestAcquireBatchFake(t *testing.T) {
	fc := newFakeCluster(t, 7, fakeConfig{})
	c := fc.dial(t, Config{})
	d := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	names := []string{"k1", "k2", "k3", "k4", "k5", "k6"}
	var reqs []BatchRequest
	for _, n := range names {
		reqs = append(reqs, BatchRequest{Name: n, Mode: wire.EX})
	}
	toks, err := c.AcquireBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		if gs := fc.grants(0, n); len(gs) != 1 || gs[0].fence != toks[i].Fence() || gs[0].sess != c.Session() {
			t.Fatalf("%s: worker grants %+v, token fence %#x", n, gs, toks[i].Fence())
		}
	}
	if st := c.Stats(); st.BatchGranted != uint64(len(names)) {
		t.Fatalf("stats %+v", st)
	}
	// d holds k4; c's batch with Try fails and gives back all it got.
	for _, tk := range toks {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	held, err := d.Acquire(ctx, "k4", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AcquireBatch(ctx, reqs, Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("batch with k4 held: %v, want ErrConflict", err)
	}
	for _, n := range names {
		for _, g := range fc.grants(0, n) {
			if g.sess == c.Session() {
				t.Fatalf("%s still granted to the failed batch's session: %+v", n, g)
			}
		}
	}
	_ = held.Release(ctx)
}

// TestBatchRevokeBeforeReply: the network reorders a REVOKE of a batch's
// grant ahead of the batch's reply. The client must park it until the
// grant is known (as it does for ACQUIRE), not take the fence for a stray
// and give it back: that would leave the application holding a grant the
// worker had already handed to someone else.
func TestBatchRevokeBeforeReply(t *testing.T) {
	fc := newFakeCluster(t, 8, fakeConfig{})
	revoked := make(chan uint64, 4)
	c := fc.dial(t, Config{OnRevoke: func(_ context.Context, tk *Token, r Revocation) { revoked <- r.Fence }})
	ctx := ctxT(t, 5*time.Second)
	// Two names of one shard: the batch is one ACQUIRE_BATCH.
	other := "rb1"
	for i := 0; wire.Shard([]byte(other), fc.cfg.shardCount) != wire.Shard([]byte("rb2"), fc.cfg.shardCount); i++ {
		other = fmt.Sprintf("rb1-%d", i)
	}
	reqs := []BatchRequest{{Name: other, Mode: wire.EX}, {Name: "rb2", Mode: wire.EX}}
	// Nothing from the worker reaches c until the batch is granted there.
	fc.net.SetLink(fc.workers[0].conn.LocalAddr(), c.conn.LocalAddr(), faultnet.Rule{Cut: true})
	type result struct {
		toks []*Token
		err  error
	}
	got := make(chan result, 1)
	go func() {
		toks, err := c.AcquireBatch(ctx, reqs)
		got <- result{toks, err}
	}()
	var fence uint64
	eventually(t, 2*time.Second, "batch granted at the worker", func() bool {
		gs := fc.grants(0, "rb2")
		if len(gs) == 1 {
			fence = gs[0].fence
		}
		return len(gs) == 1 && len(fc.grants(0, other)) == 1
	})
	// The REVOKE goes out first; the reply follows with the client's next
	// retransmission.
	fc.net.ClearRules()
	fc.sendRevoke(0, c.Session(), "rb2", fence, wire.EX)
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.toks[1].Fence() != fence {
		t.Fatalf("rb2 fence %#x, worker granted %#x", r.toks[1].Fence(), fence)
	}
	select {
	case f := <-revoked:
		if f != fence {
			t.Fatalf("OnRevoke for fence %#x, want %#x", f, fence)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the REVOKE that overtook the batch's reply never reached the application")
	}
	// The grant is still the application's at the worker: nothing gave it
	// back behind its back.
	if gs := fc.grants(0, "rb2"); len(gs) != 1 || gs[0].fence != fence || gs[0].sess != c.Session() {
		t.Fatalf("worker grants of rb2 %+v while the application holds fence %#x", gs, fence)
	}
	for _, tk := range r.toks {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAcquireBatchCached: with the token cache on, a batch whose tokens are
// all cached is served with no datagram and the same fences (it used to
// send an ACQUIRE_BATCH that the session's own cached grants made
// conflict); a shard with one token cached and one not goes token by
// token: the cached one from the cache, the other by ACQUIRE, and the
// grants are still exactly one per token at the worker.
func TestAcquireBatchCached(t *testing.T) {
	fc := newFakeCluster(t, 9, fakeConfig{})
	c := fc.dial(t, Config{TokenCache: DefaultTokenCache})
	ctx := ctxT(t, 5*time.Second)
	// Three names of one shard.
	shard := wire.Shard([]byte("cb0"), fc.cfg.shardCount)
	names := []string{"cb0"}
	for i := 1; len(names) < 3; i++ {
		if n := fmt.Sprintf("cb%d", i); wire.Shard([]byte(n), fc.cfg.shardCount) == shard {
			names = append(names, n)
		}
	}
	reqs := []BatchRequest{{Name: names[0], Mode: wire.EX}, {Name: names[1], Mode: wire.PW}}
	toks, err := c.AcquireBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	fences := []uint64{toks[0].Fence(), toks[1].Fence()}
	for _, tk := range toks {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st := c.Stats()
	if st.Cached != 2 {
		t.Fatalf("after release: %d cached, want 2", st.Cached)
	}
	// EX serves EX and PR; PW serves PW.
	again, err := c.AcquireBatch(ctx, []BatchRequest{{Name: names[0], Mode: wire.PR}, {Name: names[1], Mode: wire.PW}})
	if err != nil {
		t.Fatal(err)
	}
	after := c.Stats()
	if after.Sent != st.Sent || after.CacheHits != st.CacheHits+2 {
		t.Fatalf("cached batch: sent %d -> %d, hits %d -> %d; want no datagram and 2 hits", st.Sent, after.Sent, st.CacheHits, after.CacheHits)
	}
	if again[0].Fence() != fences[0] || again[1].Fence() != fences[1] || again[0].Mode() != wire.EX {
		t.Fatalf("cached batch gave fences %#x %#x (mode %v), cached %#x %#x", again[0].Fence(), again[1].Fence(), again[0].Mode(), fences[0], fences[1])
	}
	for _, tk := range again {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Only one of these is cached.
	mixed, err := c.AcquireBatch(ctx, []BatchRequest{{Name: names[0], Mode: wire.EX}, {Name: names[2], Mode: wire.EX}})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Sent == after.Sent || st.CacheHits != after.CacheHits+1 || st.BatchFallbacks != 0 {
		t.Fatalf("half-cached batch: sent %d -> %d, hits %d -> %d, fallbacks %d; want datagrams, 1 hit, no batch conflict",
			after.Sent, st.Sent, after.CacheHits, st.CacheHits, st.BatchFallbacks)
	}
	if mixed[0].Fence() != fences[0] {
		t.Fatalf("%s: fence %#x, want the cached %#x", names[0], mixed[0].Fence(), fences[0])
	}
	for i, n := range []string{names[0], names[2]} {
		gs := fc.grants(0, n)
		if len(gs) != 1 || gs[0].fence != mixed[i].Fence() || gs[0].sess != c.Session() {
			t.Fatalf("%s: worker grants %+v, token fence %#x", n, gs, mixed[i].Fence())
		}
	}
	// names[1]'s PW grant is still cached, untouched.
	if gs := fc.grants(0, names[1]); len(gs) != 1 || gs[0].fence != fences[1] {
		t.Fatalf("%s: worker grants %+v, want the cached fence %#x", names[1], gs, fences[1])
	}
	for _, tk := range mixed {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAcquireBatchConfirmsEarlierShards: a batch over two shards of two
// workers whose second shard waits in a queue returns its first shard's
// grant valid for at least freshFor, as Acquire would: it waits for that
// worker to vouch anew rather than hand out a grant that aged meanwhile.
func TestAcquireBatchConfirmsEarlierShards(t *testing.T) {
	fc := newFakeCluster(t, 38, fakeConfig{workers: 2, workerTTL: 800 * time.Millisecond, grace: 2 * time.Second})
	// a's shard comes first in the global order, on worker 0; b's on worker 1.
	var a, b string
	for i := 0; a == "" || b == ""; i++ {
		n := fmt.Sprintf("ce%d", i)
		switch s := wire.Shard([]byte(n), fc.cfg.shardCount); {
		case a == "" && s < fc.cfg.shardCount/2:
			a = n
		case b == "" && s >= fc.cfg.shardCount/2:
			b = n
		}
	}
	fc.setOwner(wire.Shard([]byte(a), fc.cfg.shardCount), 0, 2, false)
	fc.setOwner(wire.Shard([]byte(b), fc.cfg.shardCount), 1, 2, false)
	holder := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	clk := fakeclock.New(time.Time{})
	waiter := fc.dial(t, withClock(Config{OnRevoke: func(context.Context, *Token, Revocation) {}}, clk))
	ctx := ctxT(t, 10*time.Second)
	hb, err := holder.Acquire(ctx, b, wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		toks []*Token
		err  error
	}
	got := make(chan result, 1)
	go func() {
		toks, err := waiter.AcquireBatch(ctx, []BatchRequest{{Name: a, Mode: wire.EX}, {Name: b, Mode: wire.EX}})
		got <- result{toks, err}
	}()
	eventually(t, 2*time.Second, "a granted, b queued", func() bool { return len(fc.grants(0, a)) == 1 && fc.waiters(1, b) == 1 })
	// Worker 0 cannot vouch, and the waiter's clock moves past a's
	// freshness: its grant has aged while b waited.
	fc.setNoVouch(0, true)
	clk.Advance(waiter.freshFor())
	if err := hb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "b granted to the waiter", func() bool {
		gs := fc.grants(1, b)
		return len(gs) == 1 && gs[0].sess == waiter.Session()
	})
	select {
	case r := <-got:
		t.Fatalf("AcquireBatch returned (err %v) while a's worker could not vouch for its aged grant", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	fc.setNoVouch(0, false)
	// The client's timers run on its clock: move it in small steps until
	// its next KEEPALIVE to worker 0 is answered with a validity again.
	var r result
	for r.toks == nil && r.err == nil {
		select {
		case r = <-got:
		case <-time.After(20 * time.Millisecond):
			clk.Advance(20 * time.Millisecond)
		}
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	for i, tk := range r.toks {
		if left := tk.ValidUntil().Sub(clk.Now()); left < waiter.freshFor() {
			t.Fatalf("token %d (%s) returned with %v left, want at least %v", i, tk.Name(), left, waiter.freshFor())
		}
	}
	for _, tk := range r.toks {
		if err := tk.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
