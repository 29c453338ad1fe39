package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/embedded/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

func testCluster(shards int) cluster.Config {
	return cluster.Config{Shards: shards, SessionTTLms: 10000, GraceMs: 5000, Version: cluster.Version}
}

// started is a coordinator with a record of its terms.
type started struct {
	*Coordinator
	mu    sync.Mutex
	terms []*Leadership
}

func start(t *testing.T, cli *clientv3.Client, name string, shards int) *started {
	t.Helper()
	s := &started{}
	c, err := New(Config{
		Client: cli, Name: name, Cluster: testCluster(shards), LeaderTTL: 2 * time.Second,
		OnLeader: func(ctx context.Context, l *Leadership) {
			s.mu.Lock()
			s.terms = append(s.terms, l)
			s.mu.Unlock()
			<-ctx.Done()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Coordinator = c
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return s
}

func (s *started) lastTerm() *Leadership {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.terms) == 0 {
		return nil
	}
	return s.terms[len(s.terms)-1]
}

// waitFor polls cond until it holds or within passes: etcd and the
// coordinator's goroutines expose no event for what the tests wait for.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond) // the poll interval: real time is the point
	}
}

func leaders(cs ...*started) (n int, who *started) {
	for _, c := range cs {
		if c.IsLeader() {
			n++
			who = c
		}
	}
	return n, who
}

func TestLeaderMovesWhenLeaderStops(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	cs := []*started{start(t, cli, "s1", 64), start(t, cli, "s2", 64), start(t, cli, "s3", 64)}
	var first *started
	waitFor(t, "a leader", 10*time.Second, func() bool {
		n, who := leaders(cs...)
		first = who
		// OnLeader records the term just after IsLeader turns true.
		return n == 1 && who.lastTerm() != nil
	})
	firstTerm := first.lastTerm()
	stopped := time.Now()
	first.Close()
	var second *started
	waitFor(t, "a new leader", 5*time.Second, func() bool {
		n, who := leaders(cs...)
		second = who
		return n == 1 && who != first && who.lastTerm() != nil
	})
	t.Logf("leadership moved from %s to %s in %v", first.cfg.Name, second.cfg.Name, time.Since(stopped))
	if got := second.lastTerm().Term; got <= firstTerm.Term {
		t.Errorf("new term %d not above old term %d", got, firstTerm.Term)
	}
	l, _, err := LeaderInfo(context.Background(), cli)
	if err != nil || l.Name != second.cfg.Name {
		t.Errorf("LeaderInfo = %+v, %v; want %s", l, err, second.cfg.Name)
	}
}

// TestDeposedLeaderCannotWrite: a leader whose election lease is gone (as
// after a pause longer than its TTL) cannot write, even before it notices.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	a := start(t, cli, "a", 64)
	waitFor(t, "a leads", 10*time.Second, func() bool { return a.IsLeader() && a.lastTerm() != nil })
	term := a.lastTerm()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := term.Txn(ctx, nil, clientv3.OpPut("/tokend-test/x", "1")); err != nil {
		t.Fatalf("leader's fenced write: %v", err)
	}
	// Depose a behind its back: delete its election key, as expiry would.
	if _, err := cli.Delete(ctx, term.key); err != nil {
		t.Fatal(err)
	}
	_, err := term.Txn(ctx, nil, clientv3.OpPut("/tokend-test/x", "2"))
	if !errors.Is(err, ErrDeposed) {
		t.Fatalf("deposed leader's write: err = %v, want ErrDeposed", err)
	}
	resp, err := cli.Get(ctx, "/tokend-test/x")
	if err != nil || string(resp.Kvs[0].Value) != "1" {
		t.Fatalf("value after deposed write = %v, %v; want 1", resp, err)
	}
	// It notices, and wins a new term with a higher fence.
	waitFor(t, "a new term", 10*time.Second, func() bool {
		l := a.lastTerm()
		return l != term && l.Term > term.Term && a.IsLeader()
	})
}

func TestBootstrapKeepsFirstConfig(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	a := start(t, cli, "a", 128)
	b := start(t, cli, "b", 4096)
	if got := b.ClusterConfig().Shards; got != 128 {
		t.Errorf("second server's shard count = %d, want the bootstrapped 128", got)
	}
	if got := a.ClusterConfig().Shards; got != 128 {
		t.Errorf("first server's shard count = %d", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cluster.ReadConfig(ctx, cli)
	if err != nil || c.Shards != 128 {
		t.Errorf("ReadConfig = %+v, %v", c, err)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Name: "x"},
		{Client: &clientv3.Client{}},
		{Client: &clientv3.Client{}, Name: "x", LeaderTTL: time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// registerFake puts a worker registration on a fresh lease, as a worker
// would, and returns the lease.
func registerFake(t *testing.T, cli *clientv3.Client, id string) clientv3.LeaseID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`{"id":%q,"incarnation":"%x","udp":"127.0.0.1:1","version":"test","started":"now","ttl_ms":10000}`, id, int64(g.ID))
	if _, err := cli.Put(ctx, cluster.WorkerKey(id), doc, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	return g.ID
}

func waitMap(t *testing.T, cli *clientv3.Client, what string, cond func(delegation.Map) bool) delegation.Map {
	t.Helper()
	var m delegation.Map
	waitFor(t, what, 10*time.Second, func() bool {
		var err error
		m, _, err = ReadMap(context.Background(), cli)
		return err == nil && m.Shards() > 0 && cond(m)
	})
	return m
}

func owned(m delegation.Map) map[string]int {
	n := map[string]int{}
	for s := range m.Owner {
		if o, _, ok := m.Lookup(s); ok {
			n[o.ID]++
		}
	}
	return n
}

func TestDelegation(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	start(t, cli, "s1", 64)
	ctx := context.Background()

	l1 := registerFake(t, cli, "w1")
	m := waitMap(t, cli, "all shards on w1", func(m delegation.Map) bool { return owned(m)["w1"] == 64 })
	for s := range m.Epoch {
		if m.Epoch[s] != 1 {
			t.Fatalf("shard %d epoch %d after the first assignment, want 1", s, m.Epoch[s])
		}
	}
	v1 := m.Version

	// w1 restarts: its old lease is revoked, a new incarnation registers.
	// Every shard moves (recovery) and its epoch goes up.
	if _, err := cli.Revoke(ctx, l1); err != nil {
		t.Fatal(err)
	}
	l1b := registerFake(t, cli, "w1")
	m = waitMap(t, cli, "shards on the new incarnation", func(m delegation.Map) bool {
		return len(m.Workers) == 1 && m.Workers[0].Incarnation == uint64(l1b) && owned(m)["w1"] == 64
	})
	for s := range m.Epoch {
		if m.Epoch[s] != 2 {
			t.Fatalf("shard %d epoch %d after the restart, want 2", s, m.Epoch[s])
		}
	}
	if m.Version <= v1 {
		t.Errorf("map version %d did not grow from %d", m.Version, v1)
	}

	// A second worker: balanced, half the shards move.
	registerFake(t, cli, "w2")
	m = waitMap(t, cli, "balanced over two workers", func(m delegation.Map) bool {
		n := owned(m)
		return n["w1"] == 32 && n["w2"] == 32
	})
	moved := 0
	for s := range m.Epoch {
		if m.Epoch[s] == 3 {
			moved++
		}
	}
	if moved != 32 {
		t.Errorf("%d shards moved to w2, want 32", moved)
	}
}

// TestDrainMark: an operator's drain mark (/tokend/drain/<id>) moves every
// shard off the worker, also across a new incarnation of it, until the mark
// is deleted.
func TestDrainMark(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	start(t, cli, "s1", 16)
	ctx := context.Background()
	registerFake(t, cli, "w1")
	l2 := registerFake(t, cli, "w2")
	waitMap(t, cli, "balanced", func(m delegation.Map) bool { n := owned(m); return n["w1"] == 8 && n["w2"] == 8 })

	if _, err := cli.Put(ctx, cluster.DrainKey("w2"), `{"id":"w2"}`); err != nil {
		t.Fatal(err)
	}
	waitMap(t, cli, "w2 drained", func(m delegation.Map) bool { return owned(m)["w1"] == 16 })

	// w2 restarts as a new incarnation: still drained.
	if _, err := cli.Revoke(ctx, l2); err != nil {
		t.Fatal(err)
	}
	registerFake(t, cli, "w2")
	// A third worker registers after it: the first map that gives w3
	// shards was planned with w2's new incarnation in the registry.
	l3 := registerFake(t, cli, "w3")
	m := waitMap(t, cli, "w3 given shards", func(m delegation.Map) bool { return owned(m)["w3"] > 0 })
	if n := owned(m); n["w2"] != 0 {
		t.Fatalf("a re-registered drained worker got %d shards (w1 %d, w3 %d)", n["w2"], n["w1"], n["w3"])
	}
	if _, err := cli.Revoke(ctx, l3); err != nil {
		t.Fatal(err)
	}
	waitMap(t, cli, "w3 gone, w2 still drained", func(m delegation.Map) bool { return owned(m)["w1"] == 16 })

	if _, err := cli.Delete(ctx, cluster.DrainKey("w2")); err != nil {
		t.Fatal(err)
	}
	waitMap(t, cli, "w2 undrained", func(m delegation.Map) bool { n := owned(m); return n["w1"] == 8 && n["w2"] == 8 })
}
