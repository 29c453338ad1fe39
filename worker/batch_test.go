package worker

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// sameShard returns n token names of one shard (that of "batch/0").
func sameShard(c *tclient, n int) []string {
	names := []string{"batch/0"}
	for i := 1; len(names) < n; i++ {
		if name := fmt.Sprintf("batch/%d", i); c.shard(name) == c.shard("batch/0") {
			names = append(names, name)
		}
	}
	return names
}

func whole(name string, mode wire.Mode) wire.BatchEntry {
	return wire.BatchEntry{Mode: mode, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}
}

// TestAcquireBatch: over real sockets, an ACQUIRE_BATCH is granted all at
// once (one fence per entry), or not at all with BATCH_CONFLICT naming the
// entry that conflicted; entries of another shard are a bad request.
func TestAcquireBatch(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	n := sameShard(a, 5)
	sh := a.shard(n[0])

	r := a.do(wire.AcquireBatch{Entries: []wire.BatchEntry{whole(n[0], wire.EX), whole(n[1], wire.PR), whole(n[2], wire.EX)}}, sh)
	wantStatus(t, r, wire.StatusOK)
	var gb wire.GrantBatch
	if err := gb.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	if len(gb.Grants) != 3 || gb.ValidityMs == 0 {
		t.Fatalf("GRANT_BATCH %+v", gb)
	}
	for i, g := range gb.Grants {
		if i > 0 && g.Fence <= gb.Grants[i-1].Fence {
			t.Fatalf("fences not increasing: %+v", gb.Grants)
		}
	}
	if gb.Grants[1].Mode != wire.PR {
		t.Fatalf("entry 1 granted %v", gb.Grants[1].Mode)
	}

	// b: n[3] is free, n[1] is shared, n[2] conflicts: nothing granted,
	// and the reply names entry 2.
	r = b.do(wire.AcquireBatch{Entries: []wire.BatchEntry{whole(n[3], wire.EX), whole(n[1], wire.PR), whole(n[2], wire.PR)}}, sh)
	wantStatus(t, r, wire.StatusConflict)
	var bc wire.BatchConflict
	if err := bc.Decode(r.h, r.raw); err != nil {
		t.Fatal(err)
	}
	if bc.Entry != 2 {
		t.Fatalf("conflict names entry %d, want 2", bc.Entry)
	}
	// None of b's batch was granted: a can take n[3] in EX.
	wantStatus(t, a.acquire(n[3], wire.EX, true, 0), wire.StatusOK)

	// Released grants from a batch free their tokens one by one.
	wantStatus(t, a.release(n[2], gb.Grants[2].Fence), wire.StatusOK)
	wantStatus(t, b.acquire(n[2], wire.EX, true, 0), wire.StatusOK)

	// A copy of the batch (same request id, its reply lost) gets the
	// same reply from the cache, not a second set of grants.
	h := b.header(sh, 0)
	bb := wire.AcquireBatch{Entries: []wire.BatchEntry{whole(n[4], wire.EX)}}
	r1, err := b.call(bb, h, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := b.call(bb, h, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, r1, wire.StatusOK)
	if string(r1.raw[wire.HeaderLen:]) != string(r2.raw[wire.HeaderLen:]) {
		t.Fatalf("a copy of the batch got another reply: %v then %v", r1, r2)
	}
	b.finish(h.Request)

	// An entry of another shard: BAD_REQUEST, nothing granted.
	other := "batch/x"
	for i := 0; a.shard(other) == sh; i++ {
		other = fmt.Sprintf("batch/x%d", i)
	}
	r = b.do(wire.AcquireBatch{Entries: []wire.BatchEntry{whole("batch/fresh", wire.EX), whole(other, wire.EX)}}, a.shard("batch/fresh"))
	wantStatus(t, r, wire.StatusBadRequest)
	wantStatus(t, a.acquire(other, wire.EX, true, 0), wire.StatusOK)
}
