package chaos

import (
	"context"
	"github.com/tokend/tokend/tests/chaos/load"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

// TestScenario1UDPChaos: every client-worker link drops 20 %, duplicates
// 5 % and delays 0-50 ms (reordering); 16 clients share 32 tokens, EX and
// PR, with read-modify-writes of the lock set under EX, a quarter of the
// operations batches of 2-3 tokens (AcquireBatch). The history of
// grants must be linearizable per token (invariants 1 and 2), no update
// lost, at least 95 % of operations complete, and no grant is left behind
// once everyone released (invariant 4: nothing applied twice).
// Short: 2 workers, 640 operations; soak: 20,000 per seed (TOKEND_CHAOS_OPS).
func TestScenario1UDPChaos(t *testing.T) {
	run(t, []uint64{1}, func(t *testing.T, seed uint64, long bool) {
		// Sessions of 6 s: with 2 s (etcd's minimum) and 20 % loss each
		// way, a client starved of CPU (CI runs two race-enabled packages
		// at once) sometimes missed every renewal of a TTL and its
		// session rightly expired, failing the 95 % completion bound.
		e := startInproc(t, seed, 2, devcluster.Options{Shards: 64, SessionTTL: 6 * time.Second})
		e.fn.SetDefault(faultnet.Rule{Drop: 0.20, Duplicate: 0.05, MaxDelay: 50 * time.Millisecond})
		const clients = 16
		opsEach := 40
		if long {
			// ~2 ops/s per client under this loss (a lost GRANT_ASYNC
			// waits for the 500 ms re-poll): 20,000 ops take ~10 min;
			// -seed N -soak 1s with TOKEND_CHAOS_OPS=100000 runs the
			// issue's 100,000.
			opsEach = envInt("TOKEND_CHAOS_OPS", 20_000) / clients
		}
		w := load.New()
		cfg := load.Config{Tokens: load.TokenNames("s1", 32), Ops: opsEach, OpTimeout: 10 * time.Second,
			Modes: []wire.Mode{wire.EX, wire.EX, wire.PR}, Think: 2 * time.Millisecond, Register: true, Batch: true}
		cls := make([]*clientlib.Client, clients)
		for i := range cls {
			// Even clients keep released grants in their token cache, so
			// that the model checks cached re-acquires under loss too.
			cls[i], _ = e.dial(i, clientlib.Config{TokenCache: evenCache(i)})
		}
		start := time.Now()
		load.RunClients(clients, func(i int) {
			w.RunClient(context.Background(), i, cls[i], rand.New(rand.NewPCG(seed, uint64(i))), cfg)
		})
		st := e.fn.Stats()
		t.Logf("seed %d: %v; network sent %d, dropped %d, duplicated %d", seed, time.Since(start).Round(time.Millisecond),
			st.Sent, st.Dropped, st.Duplicated)
		w.Verify(t, 30*time.Second)
		if w.N.Batched.Load() == 0 {
			t.Error("no grants by AcquireBatch: the scenario did not test batches")
		}
		if done, all := w.N.Completed.Load(), w.N.Attempted.Load(); done*100 < all*95 {
			t.Errorf("only %d of %d operations completed (want >= 95%%)", done, all)
		}
		e.fn.ClearRules()
		for _, cl := range cls {
			cl.Close() // gives back the cached grants with the session
		}
		e.waitNoGrants(10 * time.Second)
	})
}

// TestScenario2ClientPauses: clients do lock-set read-modify-writes under
// EX tokens; now and then one "pauses" between its read and its write for
// 0-2 session TTLs: its links are blackholed (it sends and hears nothing,
// so its session lapses and its token goes to a waiter) and it then writes
// on the strength of its old Valid check, as a process that stopped and
// resumed would. The fenced register must refuse those late writes that
// would lose an update: 0 lost updates, 0 stale-fence accesses accepted,
// and the grant history stays linearizable when each holder's reliance is
// taken to end at its last successful Valid check.
// Short: 8 clients x 30 sections; soak: 10,000 sections per seed.
func TestScenario2ClientPauses(t *testing.T) {
	run(t, []uint64{2}, func(t *testing.T, seed uint64, long bool) {
		const ttl = 2 * time.Second
		e := startInproc(t, seed, 2, devcluster.Options{Shards: 16, SessionTTL: ttl})
		const clients = 8
		sections := 30
		if long {
			sections = 10_000 / clients
		}
		w := load.New()
		var longPauses atomic.Int64
		load.RunClients(clients, func(i int) {
			cl, _ := e.dial(i, clientlib.Config{TokenCache: evenCache(i)})
			cfg := load.Config{Tokens: load.TokenNames("s2", 4), Ops: sections, OpTimeout: 10 * time.Second,
				Think: 3 * time.Millisecond, Register: true,
				Pause: func(rng *rand.Rand) bool {
					if rng.IntN(12) != 0 {
						return false
					}
					d := time.Duration(rng.Int64N(int64(2 * ttl)))
					if d > ttl*3/2 {
						longPauses.Add(1)
					}
					e.cutClient(i, true)
					time.Sleep(d)
					e.cutClient(i, false)
					return true
				},
				Redial: func() *clientlib.Client { c, _ := e.dial(i, clientlib.Config{TokenCache: evenCache(i)}); return c },
			}
			w.RunClient(context.Background(), i, cl, rand.New(rand.NewPCG(seed, uint64(i))), cfg)
		})
		w.Verify(t, 30*time.Second)
		if w.N.Pauses.Load() == 0 {
			t.Error("no pauses happened: the scenario tested nothing")
		}
		if longPauses.Load() >= 3 && w.N.LateRefused.Load() == 0 {
			t.Errorf("%d pauses longer than 1.5 TTL under contention, and no late write refused", longPauses.Load())
		}
	})
}

// TestScenario10ReadersWriterRanges: the model check of the full mode
// lattice (CR, CW, PR, PW, EX) on byte ranges, with upgrades and
// downgrades: 20,000 operations (soak: 100,000 per seed, over a network
// that duplicates and reorders) whose history must be linearizable against
// check.TokenModel (holders always compatible on overlapping ranges, fences
// strictly increasing per token), and writers' lock-set updates never lost.
// (Loss is left to scenario 1: with 2 % loss this workload runs ~50x
// slower, since a lost GRANT_ASYNC waits for the 500 ms re-poll.)
func TestScenario10ReadersWriterRanges(t *testing.T) {
	run(t, []uint64{10}, func(t *testing.T, seed uint64, long bool) {
		e := startInproc(t, seed, 2, devcluster.Options{Shards: 64})
		const clients = 12
		opsEach := 20_000 / clients
		if long {
			opsEach = 100_000 / clients
			e.fn.SetDefault(faultnet.Rule{Duplicate: 0.02, MaxDelay: time.Millisecond})
		}
		w := load.New()
		cfg := load.Config{Tokens: load.TokenNames("s10", 16), Ops: opsEach, OpTimeout: 10 * time.Second,
			Modes:  []wire.Mode{wire.CR, wire.CW, wire.PR, wire.PR, wire.PW, wire.EX, wire.EX},
			Ranges: true, Grow: true, Converts: true, Register: true}
		start := time.Now()
		cls := make([]*clientlib.Client, clients)
		load.RunClients(clients, func(i int) {
			// Even clients keep released PR, PW and EX grants of whole
			// tokens in their token cache: the model checks the cached
			// re-acquires (check.Input.Cached) among the rest.
			cls[i], _ = e.dial(i, clientlib.Config{TokenCache: evenCache(i)})
			w.RunClient(context.Background(), i, cls[i], rand.New(rand.NewPCG(seed, uint64(i))), cfg)
		})
		t.Logf("seed %d: %d ops in %v", seed, w.N.Attempted.Load(), time.Since(start).Round(time.Millisecond))
		w.Verify(t, time.Minute)
		if w.N.Converted.Load() == 0 {
			t.Error("no converts: the scenario did not test them")
		}
		if w.N.Cached.Load() == 0 {
			t.Error("no cached re-acquires: the scenario did not test the token cache")
		}
		if w.N.Grown.Load() == 0 {
			t.Error("no grown grants: the scenario did not test Grow")
		}
		var splits uint64
		for _, cl := range cls {
			splits += cl.Stats().CacheSplits
		}
		t.Logf("cached grown grants split by a REVOKE of a part of them: %d", splits)
		e.fn.ClearRules()
		for _, cl := range cls {
			cl.Close() // gives back the cached grants with the session
		}
		e.waitNoGrants(10 * time.Second)
	})
}

// evenCache is the Config.TokenCache of client i in the scenarios that
// run half their clients with the token cache: on for even clients.
func evenCache(i int) int {
	if i%2 == 0 {
		return clientlib.DefaultTokenCache
	}
	return 0
}
