package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
)

// namesIn returns n token names that hash to shards in [lo, hi).
func namesIn(lo, hi uint32, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		name := fmt.Sprintf("h/%d", i)
		if s := wire.Shard([]byte(name), testShards); s >= lo && s < hi {
			out = append(out, name)
		}
	}
	return out
}

// twoWorkers starts w1 and w2 and gives every shard to w1 at epoch 1
// (map version 1).
func twoWorkers(t *testing.T) (*clientv3.Client, *Worker, *Worker) {
	t.Helper()
	cli := testEtcd(t)
	w1, r1 := startWorker(t, cli, "w1", nil)
	w2, r2 := startWorker(t, cli, "w2", nil)
	regs[w1], regs[w2] = r1, r2
	t.Cleanup(func() { delete(regs, w1); delete(regs, w2) })
	putMap(t, cli, 1, []delegation.Owner{w1.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 1}})
	waitFor(t, "w1 serves all shards", func() bool { return w1.stats().shards == testShards })
	return cli, w1, w2
}

// regs are the metrics registries of the workers twoWorkers started.
var regs = map[*Worker]*prometheus.Registry{}

// met2 returns the worker's metrics registry.
func (w *Worker) met2(t *testing.T) *prometheus.Registry {
	t.Helper()
	return regs[w]
}

// moveHalf writes map version 2: shards 0..7 stay with w1 at epoch 1, 8..15
// move to w2 at epoch 2 (what the leader writes when w2 joins).
func moveHalf(t *testing.T, cli *clientv3.Client, w1, w2 *Worker) {
	t.Helper()
	o1, o2 := w1.testOwner(), w2.testOwner()
	ws := []delegation.Owner{o1, o2}
	putMap(t, cli, 2, ws, []delegation.Run{{First: 0, Count: 8, Owner: 0, Epoch: 1}, {First: 8, Count: 8, Owner: 1, Epoch: 2}})
}

func dialTest(t *testing.T, seeds ...string) *clientlib.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// twoWorkers run without Auth; the tests count the workers' grants
	// after releases, so every release must reach them (no token cache).
	c, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: seeds, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestHandoffKeepsTokens (invariants 2, 3, 6): a planned move hands the
// shards' state over: a client keeps every token it held (reclaimed at the
// new owner outside any grace period), nobody else gets a conflicting one,
// operations on the moved shards succeed at once, and new fences are above
// the old ones.
func TestHandoffKeepsTokens(t *testing.T) {
	cli, w1, w2 := twoWorkers(t)
	c := dialTest(t, w1.Addr().String())
	other := dialTest(t, w1.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	moved := namesIn(8, 16, 12)
	var held []*clientlib.Token
	for i, n := range moved[:8] {
		mode := wire.EX
		if i%2 == 1 {
			mode = wire.PR
		}
		tok, err := c.Acquire(ctx, n, mode)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, tok)
	}
	// A value set before the move must come along.
	vt, err := c.Acquire(ctx, moved[8], wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := vt.Release(ctx, clientlib.SetValue([]byte("kept"))); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards with their state", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 0 || s.grants != 8 {
		t.Fatalf("w2 after the handoff: %+v (want no grace, 8 grants)", s)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "imported"); v != 8 {
		t.Fatalf("imported %v shards, want 8", v)
	}

	// Every token is reclaimed at w2 and stays valid, with its fence.
	for _, tok := range held {
		waitFor(t, "token "+tok.Name()+" valid at the new owner", func() bool {
			select {
			case <-tok.Lost():
				t.Fatalf("token %s lost: %v", tok.Name(), tok.Err())
			default:
			}
			return tok.Valid() && wire.FenceEpoch(tok.Fence()) == 1
		})
	}
	// Conflicting requests are refused; compatible ones granted.
	for i, tok := range held {
		_, err := other.Acquire(ctx, tok.Name(), wire.EX, clientlib.Try())
		if !errors.Is(err, clientlib.ErrConflict) {
			t.Fatalf("token %d: conflicting acquire after the move: %v", i, err)
		}
	}
	// Free tokens of the moved shards are granted at once (no grace
	// period), with fences of the new epoch, and the value came along.
	nt, err := other.Acquire(ctx, moved[8], wire.PR, clientlib.Try())
	if err != nil {
		t.Fatalf("acquire on a moved shard: %v", err)
	}
	if v, ok := nt.Value(); !ok || string(v) != "kept" {
		t.Fatalf("value after the move: %q %v", v, ok)
	}
	if el := time.Since(start); el > testGrace {
		t.Logf("note: the move took %v (grace is %v)", el, testGrace)
	}
	if wire.FenceEpoch(nt.Fence()) != 2 {
		t.Fatalf("new fence %#x not of epoch 2", nt.Fence())
	}
	for _, tok := range held {
		if err := tok.Release(ctx); err != nil {
			t.Fatalf("release %s after the move: %v", tok.Name(), err)
		}
	}
	if s := w2.stats(); s.grants != 1 {
		t.Fatalf("w2 holds %d grants after the releases, want 1", s.grants)
	}
	if v := gatherValue(w1.met2(t), "tokend_worker_handoffs_out_total", "", ""); v != 8 {
		t.Fatalf("w1 handed off %v shards, want 8", v)
	}
}

// TestHandoffFallback: if the old owner cannot hand the state over (here:
// it stopped answering and its handoff address is dead), the new owner
// recovers the shards with a grace period long enough for the old owner's
// vouching to end: safety does not depend on the handoff.
func TestHandoffFallback(t *testing.T) {
	cli, w1, w2 := twoWorkers(t)
	// The old owner's handoff listener dies (as when the process is
	// killed between the map change and the pull).
	w1.handoff.Close()
	start := time.Now()
	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 falls back to recovery", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	el := time.Since(start)
	if el < pullTimeout/2 {
		t.Fatalf("fell back after %v: it should have retried", el)
	}
	if s := w2.stats(); s.grace != 8 {
		t.Fatalf("w2 after the failed handoff: %+v (want 8 shards in grace)", s)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "recovered"); v != 8 {
		t.Fatalf("recovered %v shards, want 8", v)
	}
	// The grace period covers the old owner's TTL on top of the grace.
	w2.mu.Lock()
	tab := w2.shards[8].tab
	now := w2.mono(time.Now())
	w2.mu.Unlock()
	d, ok := tab.NextDeadline()
	if !ok || time.Duration(d-now) < 2*time.Second {
		t.Fatalf("grace ends in %v, want at least the old owner's TTL (2s)", time.Duration(d-now))
	}
}

// TestHandoffStaleOwner (invariant 5): an old owner that cannot vouch for
// its lease (it was paused past it) hands nothing off, and one asked under
// another incarnation or for another epoch refuses.
func TestHandoffStaleOwner(t *testing.T) {
	_, w1, w2 := twoWorkers(t)
	// w1 gives up shard 9 to w2 at epoch 2 (as the map would make it).
	now := time.Now()
	w1.mu.Lock()
	ob := newOutbox(now, w1.mono(now))
	ob.safe = w1.safeUntil()
	m := w1.dmap.Clone()
	m.Version++
	m.Workers = append(m.Workers, w2.testOwner())
	m.Owner[9], m.Epoch[9] = 1, 2
	w1.applyMap(ob, m, nil)
	oh := w1.outgoing[9]
	w1.mu.Unlock()
	if oh == nil || oh.epoch != 2 || oh.to != w2.testOwner() {
		t.Fatalf("outgoing handoff %+v", oh)
	}
	o2 := w2.testOwner()
	ask := func(inc uint64, to string, epoch uint32) *pullResponse {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, _, err := pullOnce(ctx, w1.HandoffAddr(), &pullRequest{Proto: handoffProto, From: o2.ID,
			Incarnation: formatInc(inc), To: to, MapVersion: m.Version,
			Shards: []shardEpochJ{{Shard: 9, Epoch: epoch}}}, nil)
		if err != nil && !errors.Is(err, errHandoffRefused) {
			t.Fatal(err)
		}
		if err != nil {
			return &pullResponse{Error: err.Error()}
		}
		return resp
	}
	toW1 := formatInc(w1.testOwner().Incarnation)
	if r := ask(o2.Incarnation+1, toW1, 2); r.Error != "" || len(r.Shards) != 1 || r.Shards[0].OK {
		t.Fatalf("another incarnation of the requester got %+v", r)
	}
	if r := ask(o2.Incarnation, toW1, 3); r.Error != "" || r.Shards[0].OK {
		t.Fatalf("another epoch got %+v", r)
	}
	if r := ask(o2.Incarnation, "123", 2); r.Error == "" {
		t.Fatalf("a pull meant for another incarnation of the old owner got %+v", r)
	}
	// Paused past its lease: no handoff, whatever is asked.
	w1.mu.Lock()
	l := w1.lease
	w1.mu.Unlock()
	var r *pullResponse
	for range 20 { // the keepalive loop may renew in between
		l.pretendExpired()
		if r = ask(o2.Incarnation, toW1, 2); r.Error != "" {
			break
		}
	}
	if r.Error == "" {
		t.Fatalf("an old owner that cannot vouch for its lease handed off: %+v", r)
	}
	waitFor(t, "lease safe again", w1.Ready)
	if r := ask(o2.Incarnation, toW1, 2); r.Error != "" || !r.Shards[0].OK || r.Shards[0].Snap == nil {
		t.Fatalf("the right pull got %+v", r)
	}
	// A lost lease drops what was kept.
	w1.mu.Lock()
	w1.dropAll()
	n := len(w1.outgoing)
	w1.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d handoffs kept after dropping everything", n)
	}
}

// TestReseal: a handed-off cached reply is re-sealed for the new epoch and
// anything that is not a final reply of the named request is refused.
func TestReseal(t *testing.T) {
	h := wire.Header{Type: wire.TypeAcquireReply, Session: 7, Request: 9, Shard: 3, Epoch: 1, MapVersion: 4}
	pkt, err := wire.Grant{Fence: wire.MakeFence(1, 5), Mode: wire.EX, ValidityMs: 4000}.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	r := handoffReply{Session: 7, Req: 9, Type: wire.TypeAcquire, Pkt: pkt}
	out, err := reseal(pkt, r, 3, 2, 5, 1000)
	if err != nil {
		t.Fatal(err)
	}
	oh, err := wire.ParseHeader(out)
	if err != nil || oh.Epoch != 2 || oh.MapVersion != 5 {
		t.Fatalf("resealed header %+v (%v)", oh, err)
	}
	var g wire.Grant
	if err := g.Decode(oh, out); err != nil || g.ValidityMs != 1000 || g.Fence != wire.MakeFence(1, 5) {
		t.Fatalf("resealed grant %+v (%v)", g, err)
	}
	eh := h
	eh.Type, eh.Status = wire.TypeReleaseReply, wire.StatusNotHeld
	epkt, _ := wire.ErrorBody{Message: []byte("x")}.Append(nil, eh)
	if out, err := reseal(epkt, handoffReply{Session: 7, Req: 9, Type: wire.TypeRelease}, 3, 2, 5, 0); err != nil {
		t.Fatal(err)
	} else if oh, err := wire.ParseHeader(out); err != nil || oh.Epoch != 2 || oh.Status != wire.StatusNotHeld {
		t.Fatalf("resealed error %+v (%v)", oh, err)
	}
	for name, bad := range map[string]struct {
		r     handoffReply
		pkt   []byte
		shard uint32
	}{
		"other session": {handoffReply{Session: 8, Req: 9, Type: wire.TypeAcquire}, pkt, 3},
		"other request": {handoffReply{Session: 7, Req: 10, Type: wire.TypeAcquire}, pkt, 3},
		"other type":    {handoffReply{Session: 7, Req: 9, Type: wire.TypeConvert}, pkt, 3},
		"other shard":   {handoffReply{Session: 7, Req: 9, Type: wire.TypeAcquire}, pkt, 4},
		"garbage":       {handoffReply{Session: 7, Req: 9, Type: wire.TypeAcquire}, []byte("nope"), 3},
		"truncated":     {handoffReply{Session: 7, Req: 9, Type: wire.TypeAcquire}, pkt[:70], 3},
	} {
		if _, err := reseal(bad.pkt, bad.r, bad.shard, 2, 5, 0); err == nil {
			t.Errorf("%s: resealed", name)
		}
	}
}

// TestDrain: Drain refuses without another worker to drain to; otherwise it
// marks the registration draining (kept by a re-registration) and returns
// once the map gives the worker nothing and the new owner pulled the state.
func TestDrain(t *testing.T) {
	cli, w1, w2 := twoWorkers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := w1.Drain(ctx); done <- err }()
	waitFor(t, "w1's registration says draining", func() bool {
		r, err := cli.Get(ctx, "/tokend/workers/w1")
		return err == nil && len(r.Kvs) == 1 && strings.Contains(string(r.Kvs[0].Value), `"draining":true`)
	})
	select {
	case err := <-done:
		t.Fatalf("drain returned before the shards moved: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	putMap(t, cli, 2, []delegation.Owner{w2.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 2}})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := w2.stats(); s.shards != testShards || s.grace != 0 {
		t.Fatalf("w2 after the drain: %+v", s)
	}
	// w2 alone: nobody to drain to.
	w1.Close()
	waitFor(t, "w2 alone", func() bool {
		w2.mu.Lock()
		defer w2.mu.Unlock()
		_, ok := w2.registry["w1"]
		return !ok
	})
	if _, err := w2.Drain(ctx); !errors.Is(err, ErrNoPeers) {
		t.Fatalf("drain of the last worker: %v", err)
	}
}

// TestFrames: the pull protocol's frames are bounded and malformed ones
// are errors, never panics (invariant 7).
func TestFrames(t *testing.T) {
	var buf strings.Builder
	if _, err := writeFrame(&buf, pullRequest{Proto: 1, From: "w"}); err != nil {
		t.Fatal(err)
	}
	var req pullRequest
	if err := readFrame(strings.NewReader(buf.String()), maxPullRequest, &req); err != nil || req.From != "w" {
		t.Fatalf("round trip: %+v %v", req, err)
	}
	for name, in := range map[string]string{
		"empty":     "",
		"short len": "\x00\x00",
		"zero":      "\x00\x00\x00\x00",
		"too long":  "\x7f\xff\xff\xff{}",
		"truncated": "\x00\x00\x00\x10{}",
		"not json":  "\x00\x00\x00\x02no",
	} {
		if err := readFrame(strings.NewReader(in), maxPullRequest, &req); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
