package clientlib

import (
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// dialHome0 dials a client whose session's home is worker 0.
func dialHome0(t *testing.T, fc *fakeCluster) *Client {
	t.Helper()
	c := fc.dial(t, Config{Seeds: []string{fc.addr(0), fc.addr(1)}})
	c.mu.Lock()
	home := c.home.String()
	c.mu.Unlock()
	if home != fc.addr(0) {
		t.Fatalf("home %s, want worker 0 (%s)", home, fc.addr(0))
	}
	return c
}

// moveAll makes worker 0 drop everything (as if killed) and moves every
// shard to worker to at epoch 2, in a grace period.
func moveAll(fc *fakeCluster, to int) {
	fc.setSilent(0, true)
	for s := range fc.cfg.shardCount {
		fc.setOwner(s, to, 2, true)
	}
}

// mapRequestsAt counts the MAP_REQUESTs worker w has handled.
func mapRequestsAt(fc *fakeCluster, w int) int {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	n := 0
	for _, s := range fc.seen {
		if s.typ == wire.TypeMapRequest && s.worker == w {
			n++
		}
	}
	return n
}

// TestMapFetchHedgesDeadHome: the session's home, which the client asks
// for the map first, is dead. The client must also ask another worker
// after a short hedge delay instead of giving the dead one perTarget
// (most of the grace period in which moved grants must be reclaimed), and
// take the new map from it. The losing request is cancelled: no MAP
// request is left pending once the fetch is over.
func TestMapFetchHedgesDeadHome(t *testing.T) {
	fc := newFakeCluster(t, 41, fakeConfig{workers: 2})
	c := dialHome0(t, fc)
	before := mapRequestsAt(fc, 1)
	moveAll(fc, 1)

	bound := c.perTarget() / 2
	newMap := c.newMap()
	start := time.Now()
	done := c.requestMap()
	select {
	case <-done:
	case <-time.After(bound):
		t.Fatalf("map fetch not done %v after it started (perTarget %v, hedge %v); MAP_REQUESTs at the live worker: %d",
			bound, c.perTarget(), c.mapHedge(), mapRequestsAt(fc, 1)-before)
	}
	took := time.Since(start)
	select {
	case <-newMap:
	default:
		t.Fatalf("fetch done after %v without a new map", took)
	}
	if n := mapRequestsAt(fc, 1) - before; n == 0 {
		t.Fatalf("no MAP_REQUEST reached the live worker")
	}
	fc.mu.Lock()
	want := fc.mapVersion
	fc.mu.Unlock()
	c.mu.Lock()
	got := c.dm.version
	rt, _ := c.dm.lookup(0)
	var left int
	for _, cl := range c.pending {
		if cl.typ == wire.TypeMapRequest {
			left++
		}
	}
	c.mu.Unlock()
	if got != want || rt.addr.String() != fc.addr(1) || rt.epoch != 2 {
		t.Errorf("map version %d (want %d), shard 0 at %s epoch %d (want %s epoch 2)", got, want, rt.addr, rt.epoch, fc.addr(1))
	}
	if left != 0 {
		t.Errorf("%d MAP requests still pending after the fetch", left)
	}
	t.Logf("new map after %v (hedge %v, perTarget %v)", took, c.mapHedge(), c.perTarget())
}

// TestReclaimWithDeadHome: a token held at worker 0, the session's home,
// which dies; its shard moves to worker 1 in a grace period. Once the
// client looks at the map, it must reclaim the token at worker 1 quickly,
// not after perTarget spent waiting for the dead home's map answer.
func TestReclaimWithDeadHome(t *testing.T) {
	fc := newFakeCluster(t, 42, fakeConfig{workers: 2, grace: 2 * time.Second})
	c := dialHome0(t, fc)
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "m", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	moveAll(fc, 1)
	bound := c.perTarget() / 2
	start := time.Now()
	c.requestMap()
	eventually(t, bound, "the token reclaimed at worker 1", func() bool { return len(fc.grants(1, "m")) == 1 })
	t.Logf("reclaimed after %v", time.Since(start))
	eventually(t, time.Second, "the token valid again", func() bool { return tok.Valid() })
	if err := tok.Err(); err != nil {
		t.Fatal(err)
	}
}
