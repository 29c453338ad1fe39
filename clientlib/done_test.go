package clientlib

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// TestDoneForgetsDepartedWorker: a DONE owed to a worker that does not
// answer it is forgotten once the map no longer names that worker (SPEC
// §13, "Early end of grace"), also when the map came while that DONE was
// in flight: the client does not keep sending DONE there until some later
// map happens to come.
func TestDoneForgetsDepartedWorker(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{workers: 2})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 20*time.Second)
	tok, err := c.Acquire(ctx, "held", wire.EX) // keepalives to worker 0 bring the maps
	if err != nil {
		t.Fatal(err)
	}
	held := wire.Shard([]byte("held"), fc.cfg.shardCount)
	other := (held + 1) % fc.cfg.shardCount
	w1 := netip.MustParseAddrPort(fc.addr(1))
	owed := func() (d doneState, ok bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if p := c.done[w1]; p != nil {
			return *p, true
		}
		return doneState{}, false
	}
	mapIs := func(v uint64) func() bool {
		return func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.dm != nil && c.dm.version == v
		}
	}

	// Worker 1 hangs, and gets a shard at a new epoch: the client owes it a
	// DONE, which goes unanswered.
	fc.setSilent(1, true)
	fc.setOwner(other, 1, 2, false)
	eventually(t, 5*time.Second, "the map giving worker 1 a shard", mapIs(fc.mapVersion))
	eventually(t, 5*time.Second, "a DONE in flight to worker 1", func() bool {
		d, ok := owed()
		return ok && d.inflight
	})
	// The shard leaves worker 1, which the map then no longer names.
	fc.setOwner(other, 0, 3, false)
	eventually(t, 5*time.Second, "the map without worker 1", mapIs(fc.mapVersion))
	eventually(t, 5*time.Second, "no DONE owed to worker 1", func() bool {
		_, ok := owed()
		return !ok
	})
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
