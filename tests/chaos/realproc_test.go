//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/testkit/faultnet/proxy"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/tests/chaos/load"
	"github.com/tokend/tokend/wire"
)

// rload is the background load of a real-process scenario: clients doing
// lock-set read-modify-writes in every shard through the proxy, plus, for
// invariant 3, tokens each client holds for the whole run.
type rload struct {
	t       *testing.T
	w       *load.Workload
	clients []*clientlib.Client
	addrs   []string // the clients' socket addresses, as the proxy names them
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu         sync.Mutex // guards the fields below
	held       []heldTok
	violations []string
}

type heldTok struct {
	client int
	tok    *clientlib.Token
	fence  uint64
	lost   bool
}

func startRLoad(t *testing.T, c *rcluster, seed uint64, clients int, hold bool) *rload {
	t.Helper()
	l := &rload{t: t, w: load.New()}
	for i := range clients {
		// Even clients keep released grants in their token cache, through
		// the same kills, hangs and partitions.
		cl, addr := c.dial(clientlib.Config{TokenCache: evenCache(i)})
		l.clients = append(l.clients, cl)
		l.addrs = append(l.addrs, addr)
	}
	if hold {
		for i, cl := range l.clients {
			for s := range uint32(rShards) {
				name := nameIn(fmt.Sprintf("held/%d", i), s)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				tok, err := cl.Acquire(ctx, name, wire.EX)
				cancel()
				if err != nil {
					t.Fatalf("client %d: hold %s: %v", i, name, err)
				}
				l.held = append(l.held, heldTok{client: i, tok: tok, fence: tok.Fence()})
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for i, cl := range l.clients {
		cfg := load.Config{Tokens: namesIn("cyc", 2), Ops: 1 << 30, OpTimeout: 15 * time.Second,
			Modes: []wire.Mode{wire.EX, wire.EX, wire.PR}, Think: 2 * time.Millisecond, Register: true,
			// A quarter of the operations batch 2-3 tokens, which span
			// shards and so the workers being killed, hung and cut off.
			Batch: true,
			// A client whose session expired starts a new one (its
			// held tokens, if any, stay lost: that is reported).
			Redial: func() *clientlib.Client {
				for ctx.Err() == nil {
					if c := c.dialMaybe(); c != nil {
						return c
					}
					load.SleepCtx(ctx, 100*time.Millisecond)
				}
				return nil
			}}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.w.RunClient(ctx, i, cl, rand.New(rand.NewPCG(seed, uint64(i))), cfg)
		}()
	}
	if hold {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tk := time.NewTicker(20 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
					l.scanHeld()
				}
			}
		}()
	}
	t.Cleanup(l.stop)
	return l
}

// scanHeld checks invariant 3: a live client never loses a held token,
// and its fence never changes (a reclaim keeps it).
func (l *rload) scanHeld() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.held {
		h := &l.held[i]
		if h.lost {
			continue
		}
		select {
		case <-h.tok.Lost():
			h.lost = true
			l.violations = append(l.violations, fmt.Sprintf("invariant 3: client %d lost held %s (fence %#x): %v", h.client, h.tok.Name(), h.fence, h.tok.Err()))
		default:
			if f := h.tok.Fence(); f != h.fence {
				l.violations = append(l.violations, fmt.Sprintf("held %s changed fence %#x -> %#x", h.tok.Name(), h.fence, f))
			}
		}
	}
}

func (l *rload) stop() {
	if l.cancel != nil {
		l.cancel()
	}
	l.wg.Wait()
}

// verify stops the load and checks everything it recorded.
func (l *rload) verify(t *testing.T) { l.verifyKnown(t, "") }

// verifyKnown is verify, with losses of held tokens (invariant 3) only
// logged, as the known bug named by known.
func (l *rload) verifyKnown(t *testing.T, known string) {
	t.Helper()
	l.stop()
	l.scanHeld()
	l.w.Verify(t, time.Minute)
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, v := range l.violations {
		switch {
		case known == "":
			t.Error(v)
		case i < 3:
			t.Logf("known bug (%s): %s", known, v)
		case i == 3:
			t.Logf("known bug (%s): ... %d held tokens lost in all", known, len(l.violations))
		}
	}
}

// grantRec is an acquire that returned a grant.
type grantRec struct {
	token     string
	fence     uint64
	call, ret int64 // history times it was called and returned
	batch     bool  // by AcquireBatch: granted anywhere in [call, ret]
}

// acquiresAfter returns the acquires recorded as returning after t0
// (history time) that a worker answered: not those a client's token cache
// served, whose grant is older (granted before t0, perhaps by a worker
// stopped since, and valid by the lease rules as any held grant; the
// model checks that nothing conflicting was granted meanwhile).
func (l *rload) acquiresAfter(t0 int64) []grantRec {
	var out []grantRec
	l.w.Hist.Each(func(in check.Input, o check.Output, call, ret int64) {
		if in.Kind == check.OpAcquire && !in.Cached && ret > t0 {
			out = append(out, grantRec{in.Token, o.Fence, call, ret, in.Batch})
		}
	})
	return out
}

func shardOf(name string) uint32 { return wire.Shard([]byte(name), rShards) }

// TestScenario4WorkerPause: a worker is stopped (SIGSTOP) under load
// through a lossy proxy, then continued: for 2.5-3 s and then 1-1.5 s
// (soak: three times 1-10 s). After a stop past its lease its shards move,
// and when it wakes it must not serve them; after a shorter one it keeps
// them. No client may accept a grant carrying an epoch the stopped worker
// lost (0 late replies accepted), the history stays linearizable (0 double
// grants), no update is lost.
func TestScenario4WorkerPause(t *testing.T) {
	run(t, []uint64{4}, func(t *testing.T, seed uint64, long bool) {
		c := startReal(t, seed, rclusterOpts{servers: 1, workers: 3})
		c.px.SetRule("", "", proxy.Both, proxy.Rule{Drop: 0.05, Duplicate: 0.02, MaxDelay: 5 * time.Millisecond})
		l := startRLoad(t, c, seed, 6, false)
		rng := rand.New(rand.NewPCG(seed, 4))
		rounds, maxPause := 2, 3*time.Second
		if long {
			rounds, maxPause = 3, 10*time.Second
		}
		type stopEv struct {
			at, resumed int64             // history times
			lost        map[uint32]uint32 // the victim's shards and epochs at the stop
			moved       map[uint32]bool   // those at a newer epoch once it was back
		}
		var stops []stopEv
		for r := range rounds {
			time.Sleep(time.Second)
			victim := c.workers[rng.IntN(len(c.workers))]
			ev := stopEv{lost: c.shardsOf(victim.id), moved: map[uint32]bool{}}
			d := time.Second + time.Duration(rng.Int64N(int64(maxPause-time.Second)))
			if !long {
				// Short form: one stop past the lease (its shards move),
				// one within it (they stay): the two cases of the check
				// below; soak seed 1098394148 found the second one.
				d = []time.Duration{2500 * time.Millisecond, time.Second}[r] + time.Duration(rng.Int64N(int64(500*time.Millisecond)))
			}
			ev.at = l.w.Hist.Now()
			victim.p.Signal(syscall.SIGSTOP)
			t.Logf("round %d: SIGSTOP %s (%d shards) for %v", r, victim.id, len(ev.lost), d.Round(time.Millisecond))
			time.Sleep(d)
			victim.p.Signal(syscall.SIGCONT)
			ev.resumed = l.w.Hist.Now()
			c.waitBalanced(30 * time.Second)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v, err := c.readMap(ctx)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			for sh, e := range ev.lost {
				if _, now, ok := v.Map.Lookup(int(sh)); !ok || now > e {
					ev.moved[sh] = true
				}
			}
			t.Logf("round %d: %d of its %d shards moved", r, len(ev.moved), len(ev.lost))
			stops = append(stops, ev)
		}
		time.Sleep(time.Second)
		// Nothing can come from a stopped worker: a grant of one of its
		// shards at its epoch returned while it was stopped (100 ms after
		// the stop: nothing it sent before is still in flight) is a late
		// reply accepted; so is one after it woke, for a shard that had
		// moved meanwhile (a short stop leaves its lease, and its shards,
		// alone: it then rightly serves them on).
		slack := int64(100 * time.Millisecond)
		for _, st := range stops {
			for _, g := range l.acquiresAfter(st.at + slack) {
				sh := shardOf(g.token)
				e, ok := st.lost[sh]
				if !ok || wire.FenceEpoch(g.fence) > e {
					continue
				}
				if g.batch && g.call <= st.at+slack {
					// A batch's grant came somewhere between its call and
					// its return, maybe before the stop while another
					// shard of the batch kept it waiting (soak seed
					// 3886339474): only one called after the stop is
					// surely a reply from after it.
					continue
				}
				if st.moved[sh] || g.ret < st.resumed {
					t.Errorf("late reply accepted: %s granted fence %#x of the paused worker's epoch %d after it stopped", g.token, g.fence, e)
				}
			}
		}
		t.Logf("proxy: %+v", c.px.Stats())
		l.verify(t)
	})
}

// TestScenario5WorkerKill: workers are killed (SIGKILL) under load, and
// restarted, twice (soak: five times). Every client holds an EX token in
// every shard all along: none may be lost (invariant 3: live clients
// reclaim within the grace period) nor change fence; the history of the
// cycling tokens stays linearizable with fences strictly increasing across
// the epoch changes, and no update is lost.
func TestScenario5WorkerKill(t *testing.T) {
	run(t, []uint64{5}, func(t *testing.T, seed uint64, long bool) {
		c := startReal(t, seed, rclusterOpts{servers: 1, workers: 3})
		l := startRLoad(t, c, seed, 4, true)
		rng := rand.New(rand.NewPCG(seed, 5))
		kills := 2
		if long {
			kills = 5
		}
		for k := range kills {
			time.Sleep(500 * time.Millisecond)
			victim := c.workers[rng.IntN(len(c.workers))]
			n := len(c.shardsOf(victim.id))
			victim.p.Kill()
			t.Logf("kill %d: SIGKILL %s (%d shards)", k, victim.id, n)
			c.waitBalanced(30 * time.Second) // its shards moved to the others
			time.Sleep(rGrace + 500*time.Millisecond)
			c.startWorker(victim)
			c.waitBalanced(30 * time.Second)
		}
		time.Sleep(rGrace + time.Second)
		l.verify(t)
	})
}

// mapHistory watches the delegation map from the start of the cluster and
// checks, for every version written: versions strictly increase, and one
// owner per shard per epoch across all versions.
type mapHistory struct {
	mu       sync.Mutex // guards the fields below
	versions int
	last     uint64
	owners   map[[2]uint32]delegation.Owner
	errs     []string
}

func watchMaps(t *testing.T, cli *clientv3.Client) (*mapHistory, func()) {
	mh := &mapHistory{owners: map[[2]uint32]delegation.Owner{}}
	ctx, cancel := context.WithCancel(context.Background())
	wch := cli.Watch(ctx, cluster.DelegationKey, clientv3.WithRev(1))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var m delegation.Map
				if err := json.Unmarshal(ev.Kv.Value, &m); err != nil {
					continue
				}
				mh.add(m, ev.Kv.ModRevision)
			}
		}
	}()
	return mh, func() { cancel(); <-done }
}

func (mh *mapHistory) add(m delegation.Map, rev int64) {
	mh.mu.Lock()
	defer mh.mu.Unlock()
	mh.versions++
	if m.Version <= mh.last {
		mh.errs = append(mh.errs, fmt.Sprintf("map version %d at revision %d not above %d", m.Version, rev, mh.last))
	}
	mh.last = max(mh.last, m.Version)
	for s := range m.Shards() {
		o, e, ok := m.Lookup(s)
		if !ok {
			continue
		}
		k := [2]uint32{uint32(s), e}
		if prev, seen := mh.owners[k]; seen && prev != o {
			mh.errs = append(mh.errs, fmt.Sprintf("shard %d epoch %d owned by %v and by %v (map version %d)", s, e, prev, o, m.Version))
		}
		mh.owners[k] = o
	}
}

// leaderSampler polls every server's tokend_coordinator_is_leader.
func sampleLeaders(ctx context.Context, c *rcluster) (overlaps *int, changes *[]string, wait func()) {
	var n int
	var ch []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		for ctx.Err() == nil {
			var leaders []string
			for _, s := range c.servers { // a dead server just does not answer
				m, err := serverMetrics(loop(s.http))
				if err == nil && m["tokend_coordinator_is_leader"] == 1 {
					leaders = append(leaders, s.name)
				}
			}
			if len(leaders) > 1 {
				n++
			}
			if cur := fmt.Sprint(leaders); cur != last {
				ch = append(ch, cur)
				last = cur
			}
			load.SleepCtx(ctx, 50*time.Millisecond)
		}
	}()
	return &n, &ch, func() { <-done }
}

// TestScenario6EtcdFaults: three servers, two workers (reaching every etcd
// member through TCP relays), load through the proxy. In turn: the server
// of the etcd leader is killed (and restarted), then the etcd leader is
// paused (SIGSTOP 3 s). (Cutting one member off from the workers is
// TestScenario6EtcdMemberCutOff.) Checks: delegation map versions strictly increase
// and no (shard, epoch) ever has two owners; the history is linearizable,
// no update lost, no held token lost; token operations continue (grants
// after every fault). Coordinators that report is_leader at once are
// logged (a paused leader may believe it leads until its session ends;
// its writes are fenced, which the map checks verify).
func TestScenario6EtcdFaults(t *testing.T) {
	run(t, []uint64{6}, func(t *testing.T, seed uint64, long bool) {
		// Sessions of 6 s: an etcd leader election (about 1-2 s with etcd's
		// default 1 s election timeout) must fit in a session TTL less the
		// renewal period, which the 2 s minimum does not leave room for.
		// Workers run the default 5 s TTL for the same reason: with 2 s, a
		// killed leader's member restarting while the new leader is paused
		// left no leader for longer than a worker's lease, which the worker
		// then rightly gave up (and its clients' held tokens with it when
		// the coordinator, on the same disturbed etcd, re-delegated its
		// shards after the clients' grace; seed 6 under load, 2026-12-06).
		c := startReal(t, seed, rclusterOpts{servers: 3, workers: 2, relayEtcd: true, sessionTTL: 6 * time.Second, workerTTL: 5 * time.Second})
		mh, stopWatch := watchMaps(t, c.cli)
		defer stopWatch()
		sctx, scancel := context.WithCancel(context.Background())
		overlaps, changes, waitSampler := sampleLeaders(sctx, c)
		defer func() { scancel(); waitSampler() }()
		l := startRLoad(t, c, seed, 4, true)
		grantsSince := func(t0 int64) int { return len(l.acquiresAfter(t0)) }
		step := func(what string, fault func()) {
			t0 := l.w.Hist.Now()
			fault()
			deadline := time.Now().Add(15 * time.Second)
			for grantsSince(t0) < 20 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if n := grantsSince(t0); n < 20 {
				t.Errorf("%s: only %d grants in the 15 s after it", what, n)
			} else {
				t.Logf("%s: token operations continue", what)
			}
		}
		time.Sleep(time.Second)
		step("kill the etcd leader", func() {
			s := c.etcdLeader()
			s.p.Kill()
			t.Logf("SIGKILL %s (etcd leader)", s.name)
			time.Sleep(3 * time.Second)
			s.p = startProc(t, s.name+"#2", tokendBin(t), nil, s.args...)
			s.p.WaitReady(loop(s.http), 60*time.Second)
		})
		step("pause the etcd leader", func() {
			s := c.etcdLeader()
			s.p.Signal(syscall.SIGSTOP)
			t.Logf("SIGSTOP %s (etcd leader) for 3s", s.name)
			time.Sleep(3 * time.Second)
			s.p.Signal(syscall.SIGCONT)
		})
		time.Sleep(rGrace + time.Second)
		// A paused etcd leader made both workers lose their leases before
		// their keepalives were hedged (TestScenario6EtcdMemberCutOff).
		l.verifyKnown(t, "")
		scancel()
		waitSampler()
		stopWatch()
		mh.mu.Lock()
		defer mh.mu.Unlock()
		t.Logf("%d map versions written; is_leader seen on two servers at once in %d samples; leaders over time: %v", mh.versions, *overlaps, *changes)
		for _, e := range mh.errs {
			t.Error(e)
		}
	})
}

// etcdLeader returns the server whose etcd member leads raft.
func (c *rcluster) etcdLeader() *srvProc {
	c.t.Helper()
	for range 100 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ml, err := c.cli.MemberList(ctx)
		cancel()
		if err == nil {
			for _, s := range c.servers {
				if s.p.Exited() {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				st, err := c.cli.Status(ctx, s.endpoint())
				cancel()
				if err != nil {
					continue
				}
				for _, m := range ml.Members {
					if m.ID == st.Leader {
						for _, s2 := range c.servers {
							if s2.name == m.Name {
								return s2
							}
						}
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatal("no etcd leader")
	return nil
}

func serverMetrics(httpAddr string) (map[string]float64, error) { return workerMetrics(httpAddr) }

// TestScenario7CutsAndFlaps: one-way cuts and flapping links everywhere
// at once for 4 s: some clients cannot send to a worker, others cannot hear
// it, others' links flap; one worker cannot send to etcd, another's etcd
// links flap. Then everything heals. 0 violations (history, lock set, held
// tokens of clients whose links stayed up), and the service comes back
// after healing: a fresh client acquires a token in every shard (typically
// within 2 TTL + grace; the time is logged, and only 20 s without service
// fails, since a worker that lost its lease re-registers with backoff).
func TestScenario7CutsAndFlaps(t *testing.T) {
	run(t, []uint64{7}, func(t *testing.T, seed uint64, long bool) {
		c := startReal(t, seed, rclusterOpts{servers: 1, workers: 3, relayEtcd: true})
		l := startRLoad(t, c, seed, 6, false)
		rng := rand.New(rand.NewPCG(seed, 7))
		rounds := 1
		if long {
			rounds = 5
		}
		for r := range rounds {
			time.Sleep(time.Second)
			for i, a := range l.addrs {
				w := c.seeds[rng.IntN(len(c.seeds))]
				up := c.workers[indexOf(c.seeds, w)].addr()
				switch i % 3 {
				case 0:
					c.px.SetRule(a, up, proxy.Up, proxy.Rule{Cut: true})
				case 1:
					c.px.SetRule(a, up, proxy.Down, proxy.Rule{Cut: true})
				case 2:
					c.px.SetRule(a, "", proxy.Both, proxy.Rule{FlapUp: 300 * time.Millisecond, FlapDown: 700 * time.Millisecond})
				}
			}
			cutW := c.workers[rng.IntN(len(c.workers))]
			for _, rl := range cutW.relays {
				rl.SetCut(proxy.Up)
			}
			flapW := c.workers[(indexOf2(c.workers, cutW)+1)%len(c.workers)]
			fctx, fcancel := context.WithCancel(context.Background())
			var fwg sync.WaitGroup
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				for on := true; load.SleepCtx(fctx, 500*time.Millisecond); on = !on {
					for _, rl := range flapW.relays {
						if on {
							rl.SetCut(proxy.Both)
						} else {
							rl.SetCut(0)
						}
					}
				}
			}()
			t.Logf("round %d: client links cut one way or flapping; %s cannot send to etcd; %s's etcd links flap", r, cutW.id, flapW.id)
			time.Sleep(4 * time.Second)
			fcancel()
			fwg.Wait()
			c.px.Clear()
			for _, w := range c.workers {
				for _, rl := range w.relays {
					rl.SetCut(0)
				}
			}
			// Typically back within 2 TTL + grace (re-registration of a
			// worker whose lease ran out, a new epoch, the grace period);
			// a worker that lost its lease twice can take ~10 s (soak).
			// Only no service at all within 20 s fails: the rest is logged.
			back := c.serviceBack(t, 20*time.Second)
			t.Logf("round %d: service back %v after healing", r, back.Round(time.Millisecond))
			if back > 2*rSessionTTL+rGrace {
				t.Logf("round %d: slow recovery: %v, more than 2 TTL + grace = %v", r, back.Round(time.Millisecond), 2*rSessionTTL+rGrace)
			}
		}
		l.verify(t)
	})
}

func indexOf(ss []string, s string) int {
	for i, x := range ss {
		if x == s {
			return i
		}
	}
	return -1
}

func indexOf2(ws []*wrkProc, w *wrkProc) int {
	for i, x := range ws {
		if x == w {
			return i
		}
	}
	return -1
}

// serviceBack measures how long until a fresh client, dialled now,
// acquires and releases a token in every shard; it gives up after within.
func (c *rcluster) serviceBack(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	var cl *clientlib.Client
	for cl == nil && time.Now().Before(deadline) {
		cl = c.dialMaybe()
	}
	if cl == nil {
		t.Errorf("no session within %v of healing", within)
		return within
	}
	for s := range uint32(rShards) {
		name := nameIn("probe", s)
		for {
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			tok, err := cl.Acquire(ctx, name, wire.EX, clientlib.Wait(time.Second))
			cancel()
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				tok.Release(ctx)
				cancel()
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("shard %d: no grant within %v of healing: %v", s, within, err)
				return within
			}
		}
	}
	return time.Since(start)
}

// dialMaybe is dial without failing the test.
func (c *rcluster) dialMaybe() *clientlib.Client {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.seeds, PacketConn: pc, KeyFile: proctest.KeyFile(c.certs),
		OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	if err != nil {
		pc.Close()
		return nil
	}
	c.t.Cleanup(func() { cl.Close(); pc.Close() })
	return cl
}

// TestScenario6EtcdMemberCutOff is the third fault of scenario 6: the
// workers' TCP connections to one of three etcd members stop carrying data
// (a partition that drops packets: no RST, no FIN) for 9 s. docs/ARCHITECTURE.md says
// users see nothing when 1 of 3 members is down.
//
// Regression: found by the soak (TestScenario6EtcdFaults, seed 836079755,
// where the etcd leader was paused). gRPC still considers a silent
// connection up, and the client balances streams round-robin over the
// members, so a worker's lease keepalive that landed on the silent member
// timed out, and so could the retry; both workers logged "lease keepalive
// failed ... context deadline exceeded", their leases expired, they dropped
// every shard, and live clients lost every held token (invariant 3). Fixed
// in worker/lease.go: each renewal round hedges (another KeepAliveOnce
// every 100 ms without an answer, up to 3), which the balancer sends to
// the other members; client session renewals are hedged the same way.
func TestScenario6EtcdMemberCutOff(t *testing.T) {
	c := startReal(t, 6, rclusterOpts{servers: 3, workers: 2, relayEtcd: true, sessionTTL: 6 * time.Second})
	l := startRLoad(t, c, 6, 4, true)
	time.Sleep(time.Second)
	for _, w := range c.workers {
		w.relays[0].SetCut(proxy.Both)
	}
	t.Logf("workers cut off from %s for 9s (1.5 session TTLs)", c.servers[0].name)
	time.Sleep(9 * time.Second)
	for _, w := range c.workers {
		w.relays[0].SetCut(0)
	}
	time.Sleep(rGrace + time.Second)
	l.verify(t)
}
