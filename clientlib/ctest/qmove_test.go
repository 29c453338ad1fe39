package ctest

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/fakeworker"
	"github.com/tokend/tokend/wire"
)

// TestCQueuedMovesWithHandoff: a C client (tokend-lock) waiting in the
// queue of a token behind a Go holder, a Go client queued behind it, and a
// planned handoff of the shard that moves both queued requests
// (wire/SPEC.md 18). The C client asks the new owner under its request id,
// keeps its place and gets the token first; the Go waiter gets it after;
// no request is answered UNKNOWN_REQUEST and nothing is left held.
func TestCQueuedMovesWithHandoff(t *testing.T) {
	lock := filepath.Join(buildC(t, false, "tokend-lock"), "tokend-lock")
	// The ACQUIREs workers receive, and the UNKNOWN_REQUESTs they send.
	var (
		mu       sync.Mutex
		acquires []seenAcquire
		unknown  int
	)
	f := &fake{counts: map[string]int{}, order: map[int]string{}, dones: map[int]int{}, clientV: map[int]uint64{}}
	c, err := fakeworker.New(fakeworker.Config{Workers: 2, Shards: fakeShards, SessionTTL: fakeSessionTTL,
		WorkerTTL: fakeW, Validity: fakeW - fakeMargin, Grace: fakeGrace, Seed: uint64(time.Now().UnixNano()),
		Trace: func(e fakeworker.Event) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case e.Kind == fakeworker.Received && e.Err == nil && e.Header.Type == wire.TypeAcquire:
				acquires = append(acquires, seenAcquire{e.Worker, e.Header.Session, e.Header.Request})
			case e.Kind == fakeworker.Sent && e.Header.Status == wire.StatusUnknownRequest:
				unknown++
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	f.Cluster = c
	t.Cleanup(c.Close)
	f.keyFile = filepath.Join(t.TempDir(), "client.key")
	if err := c.WriteKeyFile(f.keyFile); err != nil {
		t.Fatal(err)
	}
	c.Reassign(fakeworker.Fresh, func(s uint32, _ int, _ uint32) (int, uint32) { return int(s) * 2 / fakeShards, 1 })
	name := f.NameOn("qmove", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keep := func(context.Context, *clientlib.Token, clientlib.Revocation) {}
	dial := func() *clientlib.Client {
		c, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: []string{f.Addr(0), f.Addr(1)}, KeyFile: f.keyFile, OnRevoke: keep})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	holder, second := dial(), dial()
	held, err := holder.Acquire(ctx, name, wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	type out struct {
		s   string
		err error
	}
	cdone := make(chan out, 1)
	go func() {
		s, err := run(t, 25*time.Second, f.at(0).env(), lock, "-s", f.Addr(0), "-s", f.Addr(1), name,
			"sh", "-c", `echo "fence=$TOKEND_FENCE"; sleep 0.2`)
		cdone <- out{s, err}
	}()
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	waitUntil("the C client queued at worker 0", func() bool { return f.Waiters(0, name) == 1 })
	got := make(chan *clientlib.Token, 1)
	go func() {
		tok, err := second.Acquire(ctx, name, wire.EX)
		if err != nil {
			t.Errorf("Go waiter: %v", err)
		}
		got <- tok
	}()
	waitUntil("the Go client queued at worker 0", func() bool { return f.Waiters(0, name) == 2 })

	// The C client's session is the one whose ACQUIRE is neither the
	// holder's nor the Go waiter's.
	var cSess, cReq uint64
	mu.Lock()
	for _, a := range acquires {
		if a.sess != holder.Session() && a.sess != second.Session() {
			cSess, cReq = a.sess, a.req
		}
	}
	mu.Unlock()
	f.move()
	if n := f.Waiters(1, name); n != 2 {
		t.Fatalf("%d waiters moved to worker 1, want 2", n)
	}
	// The holder releases only once the C client has asked worker 1: the
	// token must then go to the request that moved, under its id.
	waitUntil("the C client's ACQUIRE at worker 1", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, a := range acquires {
			if a.worker == 1 && a.sess == cSess {
				return true
			}
		}
		return false
	})
	waitUntil("the holder's grant at worker 1", func() bool { return held.Valid() && len(f.Grants(1, name)) == 1 })
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-cdone
	if r.err != nil {
		t.Fatalf("tokend-lock: %v\n%s", r.err, r.s)
	}
	i := strings.Index(r.s, "fence=")
	if i < 0 {
		t.Fatalf("tokend-lock printed no fence:\n%s", r.s)
	}
	cFence, err := strconv.ParseUint(strings.Fields(r.s[i+len("fence="):])[0], 0, 64)
	if err != nil {
		t.Fatalf("fence in %q: %v", r.s, err)
	}
	tok := <-got
	if tok == nil {
		t.FailNow()
	}
	if wire.FenceEpoch(cFence) != wire.FenceEpoch(tok.Fence()) || cFence >= tok.Fence() {
		t.Fatalf("C fence %#x, Go fence %#x: the C client, queued first, must be granted first at the new owner", cFence, tok.Fence())
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, a := range acquires {
		if a.sess == cSess && a.req != cReq {
			t.Errorf("the C client sent an ACQUIRE under another id (%d) than its queued one (%d)", a.req, cReq)
		}
	}
	if unknown != 0 {
		t.Errorf("%d requests answered UNKNOWN_REQUEST", unknown)
	}
	mu.Unlock()
	waitUntil("nothing left at worker 1", func() bool { return len(f.Grants(1, name)) == 0 && f.Waiters(1, name) == 0 })
	t.Logf("C fence %#x, Go fence %#x", cFence, tok.Fence())
}

// seenAcquire is an ACQUIRE a fake worker received.
type seenAcquire struct {
	worker    int
	sess, req uint64
}
