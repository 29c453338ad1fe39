package worker

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/testkit/fakeclock"
	"github.com/tokend/tokend/worker/vouch"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

const (
	testShards = 16
	testGrace  = 800 * time.Millisecond
)

// testEtcd starts one etcd member and bootstraps the cluster config:
// 16 shards, 2 s sessions, 800 ms grace.
func testEtcd(t testing.TB) *clientv3.Client {
	t.Helper()
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err := cluster.Bootstrap(ctx, cli, cluster.Config{
		Shards: testShards, SessionTTLms: 2000, GraceMs: testGrace.Milliseconds(),
		Created: cluster.Now(time.Now()), CreatedBy: "test", Version: cluster.Version,
	})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("WORKER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startWorker starts a worker on loopback UDP (or on conn) and closes it
// at cleanup. It does not write a map.
func startWorker(t testing.TB, cli *clientv3.Client, id string, conn PacketConn) (*Worker, *prometheus.Registry) {
	t.Helper()
	return startWorkerCfg(t, Config{Client: cli, ID: id, Conn: conn})
}

// startWorkerCfg is startWorker with cfg: its zero fields get startWorker's
// values (loopback UDP, a 2 s TTL, the test logger, a fresh registry).
func startWorkerCfg(t testing.TB, cfg Config) (*Worker, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.UDPAddr == "" {
		cfg.UDPAddr = "127.0.0.1:0"
	}
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	cfg.Registry = reg
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return w, reg
}

// testOwner returns the worker's identity in maps.
func (w *Worker) testOwner() delegation.Owner {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.me
}

// putMap writes a map giving shards [0, testShards) to owners by runs.
func putMap(t testing.TB, cli *clientv3.Client, version uint64, workers []delegation.Owner, runs []delegation.Run) delegation.Map {
	t.Helper()
	m, err := delegation.FromRuns(version, testShards, workers, runs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(context.Background(), cluster.DelegationKey, string(b)); err != nil {
		t.Fatal(err)
	}
	return m
}

// serveAll gives every shard to w at epoch 1, version 1 (what the
// coordinator's planner writes for one worker and no map) and waits until w
// serves them.
func serveAll(t testing.TB, cli *clientv3.Client, w *Worker) delegation.Map {
	t.Helper()
	m := putMap(t, cli, 1, []delegation.Owner{w.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 1}})
	waitFor(t, "worker serves all shards", func() bool { return w.stats().shards == testShards })
	return m
}

// waitFor polls cond until it holds, failing the test after 10 s. Real
// time is the point: what it waits for is brought about by other goroutines,
// etcd and the network, not by the worker's clock.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runTimers moves clk, the worker's fake clock, to the timer loop's next
// wake-up and waits until the loop has run there. It returns how far the
// clock moved.
func runTimers(t testing.TB, w *Worker, clk *fakeclock.Clock) time.Duration {
	t.Helper()
	w.mu.Lock()
	d := time.Duration(w.wakeAt - w.mono(clk.Now()))
	w.mu.Unlock()
	d = max(d, time.Millisecond/4) // the loop never sleeps less
	clk.Advance(d)
	waitFor(t, "the timer loop ran", func() bool {
		clk.Advance(0) // a timer armed for now while Advance ran
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.wakeAt > w.mono(clk.Now())
	})
	return d
}

// pretendExpired makes l's proof of life end a second ago, as if the
// worker had hung past its lease: until the next renewal it cannot vouch.
func (l *ownLease) pretendExpired() {
	l.mu.Lock()
	defer l.mu.Unlock()
	ttl := 4 * l.v.Interval()
	l.v = vouch.Grant(int64(l.clk.Since(l.base)-time.Second)-ttl, ttl, ttl, 0)
}
