package worker

import (
	"bufio"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
)

// deadlockExchange sends q to w's handoff listener as the leader's detector
// does (wire/SPEC.md section 19) and returns the answer.
func deadlockExchange(t *testing.T, w *Worker, q *cluster.DeadlockQuery) *cluster.DeadlockAnswer {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.HandoffAddr(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := writeFrame(c, cluster.DeadlockRequest{Proto: cluster.DeadlockProto, Deadlock: q}); err != nil {
		t.Fatal(err)
	}
	var ans cluster.DeadlockAnswer
	if err := readFrame(bufio.NewReader(c), maxPullResponse, &ans); err != nil {
		t.Fatal(err)
	}
	return &ans
}

func deadlocks(reg *prometheus.Registry, kind string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "tokend_worker_deadlocks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestDeadlockConversionWire: of two PR holders converting to EX, the
// second is answered DEADLOCK at once and counted; the first is granted
// when the victim releases.
func TestDeadlockConversionWire(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	ga := a.acquire("c", wire.PR, false, 1000).grant(t)
	gb := b.acquire("c", wire.PR, false, 1000).grant(t)
	qa := a.do(wire.Convert{Fence: ga.Fence, Mode: wire.EX, WaitMs: 5000, Name: []byte("c")}, a.shard("c"))
	wantStatus(t, qa, wire.StatusQueued)
	vb := b.do(wire.Convert{Fence: gb.Fence, Mode: wire.EX, WaitMs: 5000, Name: []byte("c")}, b.shard("c"))
	wantStatus(t, vb, wire.StatusDeadlock)
	if n := deadlocks(reg, "conversion"); n != 1 {
		t.Fatalf("deadlocks_total{kind=conversion} = %v, want 1", n)
	}
	wantStatus(t, b.release("c", gb.Fence), wire.StatusOK) // the victim still held its PR
	g, ok := a.event(2*time.Second, func(m msg) bool {
		return m.h.Type == wire.TypeGrantAsync && m.h.Request == qa.h.Request
	})
	if !ok || g.grant(t).Mode != wire.EX {
		t.Fatalf("the first conversion was not granted after the victim released (%v)", g)
	}
}

// TestDeadlockExchange: the worker reports the waits of a 2-token cycle
// across two of its shards, ends the victim it is told with DEADLOCK (only
// while it waits), and refuses another incarnation.
func TestDeadlockExchange(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	x, y := "x", "y"
	for a.shard(y) == a.shard(x) {
		y += "'"
	}
	gx := a.acquire(x, wire.EX, false, 1000).grant(t)
	gy := b.acquire(y, wire.EX, false, 1000).grant(t)
	// Waits with DETECT are reported to the detector (SPEC §19); one
	// without is not.
	qa := a.do(wire.Acquire{Detect: true, Mode: wire.EX, WaitMs: 10000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(y)}, a.shard(y))
	wantStatus(t, qa, wire.StatusQueued)
	qb := b.do(wire.Acquire{Detect: true, Mode: wire.PR, WaitMs: 10000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(x)}, b.shard(x))
	wantStatus(t, qb, wire.StatusQueued)
	c := udpClient(t, w)
	c.open(0)
	wantStatus(t, c.acquire(x, wire.PR, false, 10000), wire.StatusQueued)

	inc := formatInc(w.testOwner().Incarnation)
	if ans := deadlockExchange(t, w, &cluster.DeadlockQuery{Incarnation: inc + "0", Waits: true}); ans.Error == "" {
		t.Fatalf("another incarnation was answered: %+v", ans)
	}
	ans := deadlockExchange(t, w, &cluster.DeadlockQuery{Incarnation: inc, Waits: true})
	if ans.Error != "" || ans.Worker != "w1" || ans.Incarnation != inc {
		t.Fatalf("answer %+v", ans)
	}
	got := map[[2]uint64]uint64{} // (waiter session, req) -> fence waited for
	for _, e := range ans.Waits {
		got[[2]uint64{e.Session, e.Req}] = e.Fence
		if e.AgeMs < 0 || e.Conv {
			t.Errorf("wait %+v", e)
		}
	}
	want := map[[2]uint64]uint64{{a.session, qa.h.Request}: gy.Fence, {b.session, qb.h.Request}: gx.Fence}
	if len(got) != 2 || got[[2]uint64{a.session, qa.h.Request}] != want[[2]uint64{a.session, qa.h.Request}] ||
		got[[2]uint64{b.session, qb.h.Request}] != want[[2]uint64{b.session, qb.h.Request}] {
		t.Fatalf("waits %+v, want a waiting for fence %#x and b for %#x", ans.Waits, gy.Fence, gx.Fence)
	}
	// A min age no wait has reached yet leaves them out.
	if ans := deadlockExchange(t, w, &cluster.DeadlockQuery{Incarnation: inc, Waits: true, MinAgeMs: 60000}); len(ans.Waits) != 0 {
		t.Fatalf("waits younger than min_age_ms reported: %+v", ans.Waits)
	}

	victim := cluster.DeadlockVictim{Shard: b.shard(x), Epoch: b.epoch(b.shard(x)), Session: b.session, Req: qb.h.Request}
	ans = deadlockExchange(t, w, &cluster.DeadlockQuery{Incarnation: inc, Victims: []cluster.DeadlockVictim{victim}})
	if !slices.Equal(ans.Ended, []cluster.DeadlockVictim{victim}) {
		t.Fatalf("ended %+v, want %+v", ans.Ended, victim)
	}
	d, ok := b.event(2*time.Second, func(m msg) bool { return m.h.Request == qb.h.Request })
	if !ok {
		t.Fatal("the victim got no answer")
	}
	wantStatus(t, d, wire.StatusDeadlock)
	if n := deadlocks(reg, "cycle"); n != 1 {
		t.Fatalf("deadlocks_total{kind=cycle} = %v, want 1", n)
	}
	// A re-poll of the victim's request gets DEADLOCK from the reply cache.
	rp, err := b.call(wire.Acquire{Detect: true, Mode: wire.PR, WaitMs: 10000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(x)},
		b.header(b.shard(x), qb.h.Request), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, rp, wire.StatusDeadlock)
	b.finish(qb.h.Request)
	// Once ended, the same victim is not ended again.
	ans = deadlockExchange(t, w, &cluster.DeadlockQuery{Incarnation: inc, Victims: []cluster.DeadlockVictim{victim}})
	if len(ans.Ended) != 0 {
		t.Fatalf("a victim that no longer waits was ended again: %+v", ans.Ended)
	}
	// The victim keeps y: a still waits for it, and gets it on release.
	wantStatus(t, b.release(y, gy.Fence), wire.StatusOK)
	if _, ok := a.event(2*time.Second, func(m msg) bool {
		return m.h.Type == wire.TypeGrantAsync && m.h.Request == qa.h.Request
	}); !ok {
		t.Fatal("a was not granted y after the victim released it")
	}
}
