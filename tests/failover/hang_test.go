//go:build linux

package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// lateLog records what a hung worker sends to the test's clients about the
// shard epochs it lost, after it wakes up.
type lateLog struct {
	lost  map[uint32]uint32 // shard -> the epoch the worker lost
	mu    sync.Mutex        // guards the fields below
	on    bool
	kinds map[string]int
}

func (ll *lateLog) tapFrom(victim string) func(b []byte, from net.Addr) {
	return func(b []byte, from net.Addr) {
		if from.String() != victim {
			return
		}
		h, err := wire.ParseHeader(b)
		if err != nil {
			return
		}
		if e, ok := ll.lost[h.Shard]; !ok || h.Epoch == 0 || h.Epoch > e {
			return
		}
		ll.mu.Lock()
		defer ll.mu.Unlock()
		if ll.on {
			ll.kinds[fmt.Sprintf("%v %v", h.Type, h.Status)]++
		}
	}
}

func (ll *lateLog) String() string {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	var out []string
	for k, n := range ll.kinds {
		out = append(out, fmt.Sprintf("%s ×%d", k, n))
	}
	slices.Sort(out)
	return strings.Join(out, ", ")
}

// TestWorkerHang stops one of three workers with SIGSTOP for longer than
// its lease TTL, under the same load as TestWorkerKill, and continues it
// with SIGCONT. Its lease expires while it is stopped and the leader gives
// its shards to the other two; when it wakes up it must not serve them any
// more (invariant 5), and nothing it sends late may be taken by a client as
// a valid grant. Then it registers again as a new incarnation and gets
// shards back by rebalancing.
//
// The hang lasts 3 s: longer than the TTL (2 s), shorter than TTL + grace,
// so that the worker wakes while its shards' new owners are still in their
// grace period, where a late grant from it could do the most harm. A trap
// makes it produce one: in three of its shards a client P holds a token
// and a client Q waits for it in the hung worker's queue; P is cut off from
// the network 2 s before the hang, so that its session expires while the
// worker is stopped, and the worker, waking up, learns that and grants the
// token to Q with its old epoch. Q must get the token from the new owner
// instead.
func TestWorkerHang(t *testing.T) {
	skipShort(t)
	const hang = 3 * time.Second
	start := time.Now()
	c := startOneServer(t, testShards, 3, clusterFlags, workerFlags)
	l := startLoad(t, start, loadConfig{seeds: c.seeds(), keyFile: c.keyFile(), shards: testShards})

	victim := c.workers[0]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	v, err := readView(ctx, c.cli)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	lost := v.ShardsOf(victim.id)
	inc0 := v.Workers[victim.id].Incarnation

	// The trap: P holds EX in three of the victim's shards, Q queues for it.
	dialTap := func(name string) (*clientlib.Client, *tapConn) {
		conn := newTapConn(t)
		t.Cleanup(func() { conn.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.seeds(), KeyFile: c.keyFile(), PacketConn: conn,
			OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
		if err != nil {
			t.Fatalf("client %s: %v", name, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl, conn
	}
	p, pConn := dialTap("P")
	q, qConn := dialTap("Q")
	var trapShards []uint32
	for s := range lost {
		trapShards = append(trapShards, s)
	}
	slices.Sort(trapShards)
	trapShards = trapShards[:min(3, len(trapShards))]
	type qResult struct {
		name  string
		shard uint32
		tok   *clientlib.Token
		err   error
	}
	qres := make(chan qResult, len(trapShards))
	for _, s := range trapShards {
		name := nameIn("trap", s, testShards)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := p.Acquire(ctx, name, wire.EX)
		cancel()
		if err != nil {
			t.Fatalf("P: %v", err)
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tok, err := q.Acquire(ctx, name, wire.EX)
			qres <- qResult{name, s, tok, err}
		}()
	}
	time.Sleep(300 * time.Millisecond) // Q's requests are queued behind P's
	pConn.cut.Store(true)
	logf(t, start, "P cut off; Q queued behind it for %v in the victim's shards %v", "trap/*", trapShards)
	time.Sleep(2 * time.Second)

	late := &lateLog{lost: lost, kinds: map[string]int{}}
	for _, conn := range append(slices.Clone(l.conns), qConn) {
		conn.setTap(late.tapFrom(victim.addr()))
	}
	stopped := time.Now()
	victim.p.Signal(syscall.SIGSTOP)
	logf(t, start, "SIGSTOP %s (pid %d), which serves %d shards", victim.id, victim.p.PID(), len(lost))

	// Its lease expires and the leader re-delegates its shards.
	waitView(t, c.cli, "the hung worker's shards re-delegated", hang, func(v view) bool {
		for s := range lost {
			o, _, ok := v.Map.Lookup(int(s))
			if !ok || o.ID == victim.id {
				return false
			}
		}
		return true
	})
	logf(t, start, "its shards re-delegated after %v", time.Since(stopped).Round(time.Millisecond))
	time.Sleep(time.Until(stopped.Add(hang)))
	late.mu.Lock()
	late.on = true
	late.mu.Unlock()
	woke := time.Now()
	victim.p.Signal(syscall.SIGCONT)
	logf(t, start, "SIGCONT %s after %v", victim.id, woke.Sub(stopped).Round(time.Millisecond))

	// Q gets each token, from the new owner: a fence of a newer epoch.
	for range trapShards {
		r := <-qres
		switch {
		case r.err != nil:
			t.Errorf("Q: acquire %s: %v", r.name, r.err)
		case wire.FenceEpoch(r.tok.Fence()) <= lost[r.shard]:
			t.Errorf("Q accepted a grant of %s from the hung worker: fence %#x has the epoch %d it lost (Valid %v)",
				r.name, r.tok.Fence(), lost[r.shard], r.tok.Valid())
		default:
			logf(t, start, "Q got %s from the new owner (fence %#x)", r.name, r.tok.Fence())
		}
	}
	// No grant of the load came from the hung worker after it stopped.
	for _, g := range l.grantsAfter(stopped.Add(100 * time.Millisecond)) {
		if e, ok := lost[g.shard]; ok && wire.FenceEpoch(g.fence) <= e {
			t.Errorf("a client accepted a grant in shard %d from the hung worker %v after it stopped (fence %#x)",
				g.shard, g.at.Sub(stopped).Round(time.Millisecond), g.fence)
		}
	}

	// It registers again as a new incarnation, and the leader rebalances
	// shards onto it.
	v = waitView(t, c.cli, "the woken worker registered again and given shards", 15*time.Second, func(v view) bool {
		w, ok := v.Workers[victim.id]
		return ok && w.Incarnation != inc0 && v.Balanced(c.ids()...)
	})
	back := time.Now()
	moved := map[uint32]uint32{}
	for s, e := range v.ShardsOf(victim.id) {
		moved[s] = e - 1
	}
	logf(t, start, "%s registered again as incarnation %s (was %s) and owns %d shards, %v after SIGCONT",
		victim.id, v.Workers[victim.id].Incarnation, inc0, len(moved), back.Sub(woke).Round(time.Millisecond))
	deadline := time.Now().Add(grace + 5*time.Second)
	for len(l.grantedIn(back, moved)) < len(moved) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.grantedIn(back, moved); len(got) < len(moved) {
		t.Errorf("only %d of the %d shards rebalanced to the woken worker grant again", len(got), len(moved))
	}
	logf(t, start, "the shards rebalanced onto it serve again after %v", time.Since(back).Round(time.Millisecond))
	slow, slowShard := l.slowest(stopped, woke, lost)
	if slow > othersMax {
		t.Errorf("an acquire in shard %d, served by a live worker, took %v during the hang", slowShard, slow)
	}
	time.Sleep(500 * time.Millisecond)

	l.stop()
	l.report(t)
	t.Logf("datagrams about the shard epochs it lost, from the hung worker to the clients after SIGCONT: %s", late)
	checkErrors(t, start, l, []killRound{{victim: victim.id, kill: stopped, affected: lost}})
	if err := q.Close(); err != nil && !errors.Is(err, clientlib.ErrClosed) {
		t.Log(err)
	}
}
