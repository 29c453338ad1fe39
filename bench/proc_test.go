package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
)

// TestRESP checks the RESP reader on every reply kind the lock recipe
// meets.
func TestRESP(t *testing.T) {
	in := "+OK\r\n$-1\r\n:1\r\n*2\r\n$1\r\na\r\n:2\r\n-ERR no\r\n$3\r\nabc\r\n"
	c := &redisConn{r: bufio.NewReader(strings.NewReader(in))}
	want := []any{"OK", nil, int64(1), []any{"a", int64(2)}, redisError("ERR no"), "abc"}
	for i, w := range want {
		v, err := c.read()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if vs, ok := v.([]any); ok {
			ws := w.([]any)
			if len(vs) != len(ws) || vs[0] != ws[0] || vs[1] != ws[1] {
				t.Errorf("reply %d = %#v, want %#v", i, v, w)
			}
			continue
		}
		if v != w {
			t.Errorf("reply %d = %#v, want %#v", i, v, w)
		}
	}
}

// TestRedisLock runs the lock recipe against a redis-server the test
// starts (skipped without one): a second client cannot take a held key,
// and only the holder's token releases it.
func TestRedisLock(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed")
	}
	ctx := context.Background()
	srv, err := startRedis(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Kill()
	ls, err := dialRedisLocks(ctx, srv.addr, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeRedisLocks(ls)
	tok, ok, err := ls[0].tryLock("k")
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, ok, err := ls[1].tryLock("k"); err != nil || ok {
		t.Fatalf("second lock of a held key: %v %v, want refused", ok, err)
	}
	if err := ls[1].unlock("k", "not-the-token"); err == nil {
		t.Fatal("release with another token succeeded")
	}
	if err := ls[0].unlock("k", tok); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := ls[1].tryLock("k"); err != nil || !ok {
		t.Fatalf("lock after release: %v %v", ok, err)
	}
}

// TestEchoProcesses starts both echo server processes and measures a
// short window against each.
func TestEchoProcesses(t *testing.T) {
	cfg := Config{Quick: true, Clients: 2, Duration: 100 * time.Millisecond, Warmup: 10 * time.Millisecond}.Defaults()
	rs, err := runEcho(context.Background(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("got %d rows, want 4 (2 kinds x 1 and 2 in flight)", len(rs))
	}
	for _, r := range rs {
		if r.Count == 0 || r.Errors != 0 {
			t.Errorf("%s C=%d: %d round trips, %d errors", r.System, r.Clients, r.Count, r.Errors)
		}
	}
}

// TestProcessWorkloads starts the real tokend binary (built from this
// module) in its own process, as users run it (clients authenticate with
// the client key file its first start wrote) and with --insecure, runs
// tiny windows of the uncontended and contended workloads with the Go
// client (and the cached one: every pair a cache hit) and with the C client (cload; skipped without a C compiler), and
// checks that every row counted operations without errors and that
// nothing is left running.
func TestProcessWorkloads(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts tokend")
	}
	defer cleanupBuilds()
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) { testProcessWorkloads(t, insecure) })
	}
}

func testProcessWorkloads(t *testing.T, insecure bool) {
	ctx := context.Background()
	cfg := Config{Quick: true, Clients: 2, Shards: 16, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond}.Defaults()
	pc, err := startProcCluster(ctx, &cfg, 1, insecure)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	tgt := pc.target()
	if tgt.insecure() != insecure {
		t.Fatalf("target %+v of a cluster started with insecure=%v", tgt, insecure)
	}
	if !insecure {
		// The cluster authenticates: a client without its key is refused.
		if _, err := dialClients(ctx, target{seeds: tgt.seeds}, 1, revokeNotify); !errors.Is(err, clientlib.ErrAuth) {
			t.Fatalf("a client without a key: %v, want %v", err, clientlib.ErrAuth)
		}
	}
	cfg.serverCPU = pc.cpu
	var rs []Result
	for _, run := range []func(context.Context, *Config, target, string) ([]Result, error){runUncontended, runContended, runCached} {
		r, err := run(ctx, &cfg, tgt, sysTokend)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r...)
	}
	for _, wl := range []string{"uncontended", "contended"} {
		r, err := runC(ctx, &cfg, tgt, wl)
		if errors.Is(err, ErrNoCC) {
			t.Log(err)
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r...)
	}
	for _, r := range rs {
		if r.Count == 0 || r.Errors != 0 {
			t.Errorf("%s %s %s C=%d: %d ops, %d errors (%s)", r.Workload, r.Variant, r.System, r.Clients, r.Count, r.Errors, r.LastError)
		}
	}
	p := pc.procs[0]
	if err := pc.close(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Errorf("tokend (pid %d) still running after close", p.PID())
	}
	if c, err := net.DialTimeout("tcp", pc.etcd, 200*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("etcd of the stopped tokend still answers on %s", pc.etcd)
	}
}

// TestSessionsWorkload runs one small level of the sessions workload: every
// session opens, renews and closes, and the mass reconnect brings them all
// back.
func TestSessionsWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts tokend")
	}
	defer cleanupBuilds()
	cfg := Config{Quick: true, Shards: 16, SessionTTL: 3 * time.Second, SessionLevels: []int{200}, SessionHold: 2500 * time.Millisecond}.Defaults()
	rs, err := runSessions(context.Background(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d result rows, want 2 (hold, opens)", len(rs))
	}
	hold, opens := rs[0], rs[1]
	// 200 sessions renewing every second for 2.5 s: at least 2 renewals each.
	if bad, ok := hold.extra("bad_auth_tags"); ok {
		t.Errorf("hold: %v replies whose auth tag did not verify", bad)
	}
	if hold.Count < 400 || hold.Errors != 0 || hold.Note != "" {
		t.Errorf("hold: %d renewals, %d errors, note %q; want >= 400 and none: %+v", hold.Count, hold.Errors, hold.Note, hold.Extra)
	}
	if opens.Count != 200 || opens.Rate <= 0 || opens.Note != "" {
		t.Errorf("opens: %d at %.0f/s, note %q; want all 200 (and all back after the mass reconnect)", opens.Count, opens.Rate, opens.Note)
	}
}

// TestSequentialWriterGrow runs the sequential-writer rows of the ranges
// workload against a tokend process: with Grow and the token cache a file
// costs one ACQUIRE at the worker, without it one per page.
func TestSequentialWriterGrow(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts tokend")
	}
	defer cleanupBuilds()
	ctx := context.Background()
	cfg := Config{Quick: true, Clients: 1, Shards: 16, Duration: 500 * time.Millisecond, Warmup: 50 * time.Millisecond}.Defaults()
	pc, err := startProcCluster(ctx, &cfg, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.close()
	cfg.serverCPU = pc.cpu
	rs, err := runSequential(ctx, &cfg, pc.target(), sysTokend)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("%d rows, want 2", len(rs))
	}
	for _, r := range rs {
		if r.Count == 0 || r.Errors != 0 {
			t.Fatalf("%s: %d files, %d errors (%s)", r.Variant, r.Count, r.Errors, r.LastError)
		}
		per := -1.0
		for _, m := range r.Extra {
			if m.Name == "acquires_per_file" {
				per = m.Value
			}
		}
		t.Logf("%s: %.1f files/s, %.2f ACQUIREs per file (%d pages)", r.Variant, r.Rate, per, seqPages)
		if r.Variant == "sequential-grow" && per != 1 {
			t.Errorf("with Grow: %.2f ACQUIREs per file, want 1", per)
		}
	}
}
