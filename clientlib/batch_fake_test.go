package clientlib

import (
	"errors"
	"testing"
	"time"

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
