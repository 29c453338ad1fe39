package worker

import (
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// TestGrowShrink drives a grown range through the wire: an ACQUIRE with
// GROW alone on its token gets the whole token; a conflicting request for
// a page further on queues and its REVOKE names that page; the holder
// gives back the suffix from there with a RANGE release, keeps the prefix
// under the same fence, and the waiter is granted.
func TestGrowShrink(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	name := []byte("file")

	g := a.do(wire.Acquire{Grow: true, Mode: wire.PW, WaitMs: 1000, Start: 0, End: 4096, Name: name}, a.shard("file"))
	wantStatus(t, g, wire.StatusOK)
	gr := g.grant(t)
	if gr.Start != wire.WholeStart || gr.End != wire.WholeEnd {
		t.Fatalf("grown grant [%d,%d), want the whole token", gr.Start, gr.End)
	}

	q := b.do(wire.Acquire{Mode: wire.PW, WaitMs: wire.WaitForever, Start: 8192, End: 12288, Name: name}, b.shard("file"))
	wantStatus(t, q, wire.StatusQueued)
	rv, ok := a.event(2*time.Second, isType(wire.TypeRevoke))
	if !ok {
		t.Fatal("holder got no REVOKE")
	}
	var rm wire.Revoke
	if err := rm.Decode(rv.h, rv.raw); err != nil {
		t.Fatal(err)
	}
	if rm.Fence != gr.Fence || rm.Start != 8192 || rm.End != 12288 {
		t.Fatalf("REVOKE %+v, want fence %#x range [8192,12288)", rm, gr.Fence)
	}

	// A hole in the middle is refused and changes nothing.
	bad := a.do(wire.Release{Fence: gr.Fence, Name: name, HasRange: true, Start: 100, End: 200}, a.shard("file"))
	wantStatus(t, bad, wire.StatusBadRequest)

	rel := a.do(wire.Release{Fence: gr.Fence, Name: name, HasRange: true, Start: 8192, End: wire.WholeEnd}, a.shard("file"))
	wantStatus(t, rel, wire.StatusOK)
	ga, ok := b.event(2*time.Second, isType(wire.TypeGrantAsync))
	if !ok {
		t.Fatal("no GRANT_ASYNC after the partial release")
	}
	if ga.h.Request != q.h.Request || ga.grant(t).Fence <= gr.Fence {
		t.Fatalf("GRANT_ASYNC %v fence %#x after fence %#x", ga, ga.grant(t).Fence, gr.Fence)
	}
	b.finish(q.h.Request)

	// The prefix is still held under the old fence: a TRY on it conflicts,
	// and a full release of it succeeds.
	wantStatus(t, b.do(wire.Acquire{Try: true, Mode: wire.PW, Start: 0, End: 4096, Name: name}, b.shard("file")), wire.StatusConflict)
	wantStatus(t, a.release("file", gr.Fence), wire.StatusOK)
	wantStatus(t, b.do(wire.Acquire{Try: true, Mode: wire.PW, Start: 0, End: 4096, Name: name}, b.shard("file")), wire.StatusOK)
}
