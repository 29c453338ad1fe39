package worker

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/wire"
)

// holdMany makes c hold n tokens in EX ("held/0", ...), in ACQUIRE_BATCHes
// of wire.MaxBatch names of one shard, eight in flight, and returns the
// names.
func holdMany(t *testing.T, c *tclient, n int) []string {
	t.Helper()
	byShard := map[uint32][]string{}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("held/%d", i)
		byShard[c.shard(names[i])] = append(byShard[c.shard(names[i])], names[i])
	}
	type batch struct {
		shard uint32
		names []string
	}
	work := make(chan batch)
	go func() {
		defer close(work)
		for sh, ns := range byShard {
			for len(ns) > 0 {
				k := min(len(ns), wire.MaxBatch)
				work <- batch{sh, ns[:k]}
				ns = ns[k:]
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				var ab wire.AcquireBatch
				for _, name := range b.names {
					ab.Entries = append(ab.Entries, whole(name, wire.EX))
				}
				h := c.header(b.shard, 0)
				r, err := c.call(ab, h, 5*time.Second)
				if err == nil && r.h.Status != wire.StatusOK {
					err = fmt.Errorf("ACQUIRE_BATCH of %v: %v", b.names, r.h.Status)
				}
				c.finish(h.Request)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					for range work { // drain, so that the feeder ends
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	return names
}

// endingTokens reads the ending_tokens gauge.
func endingTokens(reg *prometheus.Registry) int {
	return int(gatherValue(reg, "tokend_worker_ending_tokens", "", ""))
}

// TestEndSessionInSteps: a session holding 20,000 tokens ends (its lease
// is revoked). Its tables are dropped 2048 grants per hold of the
// worker's lock, and between two slices another client is served: a test
// gate lets the end loop run one slice at a time, so the order is
// observed on the ending_tokens gauge, not timed. Then every token is
// free, a waiter on one of them is granted, and the gauge reads 0.
func TestEndSessionInSteps(t *testing.T) {
	const n = 20_000
	cli := testEtcd(t)
	w, reg := startWorkerCfg(t, Config{Client: cli, ID: "w1", Limits: Limits{NamesPerSession: 2 * n}})
	gate := make(chan struct{})
	w.endGate.Store(&gate)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	names := holdMany(t, a, n)
	if g := w.HeldTokens(); g != n {
		t.Fatalf("%d tokens held, want %d", g, n)
	}

	if _, err := cli.Revoke(context.Background(), sessionDoc(t, cli, a.session).lease); err != nil {
		t.Fatal(err)
	}
	// The session is gone from the worker at once, its tables not yet:
	// the end loop waits at the gate.
	waitFor(t, "the end is queued", func() bool { return endingTokens(reg) == n })
	wantStatus(t, a.acquire("other/a", wire.EX, true, 0), wire.StatusSessionExpired)

	// One slice: 2048 go.
	gate <- struct{}{}
	waitFor(t, "one slice ran", func() bool { return endingTokens(reg) == n-endSlice })

	// Between slices the worker serves others: an unrelated token, and a
	// token of the ended session that a later slice frees (it queues).
	wantStatus(t, b.acquire("other/b", wire.EX, true, 0), wire.StatusOK)
	w.mu.Lock()
	last := w.ends[len(w.ends)-1].shard // not reached yet
	w.mu.Unlock()
	var wanted string
	for _, name := range names {
		if b.shard(name) == last {
			wanted = name
			break
		}
	}
	q := b.acquire(wanted, wire.EX, false, wire.WaitForever)
	wantStatus(t, q, wire.StatusQueued)
	if e := endingTokens(reg); e != n-endSlice {
		t.Fatalf("ending_tokens %d while the end loop waits at the gate, want %d", e, n-endSlice)
	}

	// The rest, and the waiter is granted.
	close(gate)
	m, ok := b.event(10*time.Second, isType(wire.TypeGrantAsync))
	if !ok || m.h.Request != q.h.Request {
		t.Fatalf("no GRANT_ASYNC for %s after the end (got %v)", wanted, m)
	}
	waitFor(t, "the end is over", func() bool { return endingTokens(reg) == 0 })
	if g := w.HeldTokens(); g != 2 {
		t.Fatalf("%d tokens held after the end, want 2 (b's)", g)
	}
	for _, name := range []string{names[0], names[n/2], names[n-1]} {
		if name == wanted {
			continue
		}
		wantStatus(t, b.acquire(name, wire.EX, true, 0), wire.StatusOK)
	}
}

// TestEndSessionSmallInline: a session with at most 2048 grants and
// waiters in all is ended at once, under the lock that ends it, with no
// work left for the end loop (whose gate is never opened here).
func TestEndSessionSmallInline(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	gate := make(chan struct{})
	w.endGate.Store(&gate)
	serveAll(t, cli, w)
	a := udpClient(t, w)
	a.open(0)
	holdMany(t, a, endSlice)
	if _, err := cli.Revoke(context.Background(), sessionDoc(t, cli, a.session).lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session's grants dropped", func() bool { return w.HeldTokens() == 0 })
	if e := endingTokens(reg); e != 0 {
		t.Fatalf("ending_tokens %d, want 0", e)
	}
	w.mu.Lock()
	jobs := len(w.ends)
	w.mu.Unlock()
	if jobs != 0 {
		t.Fatalf("%d end jobs queued for a small session", jobs)
	}
}

// TestEndSessionClose: Close while an end is pending stops the end loop
// (no goroutine left of it) with the end unfinished; the package's
// TestMain checks that nothing else leaked either.
func TestEndSessionClose(t *testing.T) {
	const n = 5000
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	gate := make(chan struct{})
	w.endGate.Store(&gate)
	serveAll(t, cli, w)
	a := udpClient(t, w)
	a.open(0)
	holdMany(t, a, n)
	if _, err := cli.Revoke(context.Background(), sessionDoc(t, cli, a.session).lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the end is queued", func() bool { return endingTokens(reg) == n })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if e := endingTokens(reg); e != n {
		t.Fatalf("ending_tokens %d after Close, want %d (nothing ran)", e, n)
	}
	buf := make([]byte, 1<<20)
	if st := buf[:runtime.Stack(buf, true)]; bytes.Contains(st, []byte("(*Worker).endLoop")) {
		t.Fatalf("the end loop is still running after Close:\n%s", st)
	}
}

// TestEndSessionHandoff: shards handed off while a big session's end is
// pending have that end finished first, so the new owner imports them
// (no grace period) without the dead session's grants; the end goes on
// in the shards that stay.
func TestEndSessionHandoff(t *testing.T) {
	const n = 5000
	cli, w1, w2 := twoWorkers(t)
	gate := make(chan struct{})
	w1.endGate.Store(&gate)
	a, b := udpClient(t, w1), udpClient(t, w1)
	a.open(0)
	b.open(0)
	names := holdMany(t, a, n)
	stay := 0
	for _, name := range names {
		if a.shard(name) < 8 {
			stay++
		}
	}
	live := namesIn(8, 16, 1)[0]
	wantStatus(t, b.acquire(live, wire.EX, true, 0), wire.StatusOK)
	if _, err := cli.Revoke(context.Background(), sessionDoc(t, cli, a.session).lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the end is queued", func() bool { return endingTokens(w1.met2(t)) == n })

	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards with their state", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "imported"); v != 8 {
		t.Fatalf("%v shards imported, want 8", v)
	}
	if s := w2.stats(); s.grace != 0 || s.grants != 1 {
		t.Fatalf("w2 after the handoff: %+v (want no grace, only b's grant)", s)
	}
	if e := endingTokens(w1.met2(t)); e != stay {
		t.Fatalf("w1 ending_tokens %d after the handoff, want %d (the shards it kept)", e, stay)
	}
	close(gate)
	waitFor(t, "the end is over", func() bool { return endingTokens(w1.met2(t)) == 0 })
	if g := w1.HeldTokens(); g != 0 {
		t.Fatalf("w1 holds %d tokens after the end", g)
	}
}
