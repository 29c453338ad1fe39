package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// The test binary doubles as the tokend binary: with TOKEND_TEST_MAIN=1 it
// runs main instead of the tests, so the process tests need no separate build.
func TestMain(m *testing.M) {
	if os.Getenv("TOKEND_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// testProc is a tokend process started by a test: this test binary,
// running main (see proctest.Start).
type testProc struct {
	*proctest.Proc
	t *testing.T
}

// freePort is a loopback port free for TCP and UDP (see testkit/freeport).
func freePort(t *testing.T) int { return proctest.FreePort(t, "tcp") }

func startProc(t *testing.T, args ...string) *testProc {
	t.Helper()
	return &testProc{t: t, Proc: proctest.Start(t, proc.Spec{Name: "tokend", Path: os.Args[0], Args: args, Env: []string{"TOKEND_TEST_MAIN=1"}})}
}

// stop sends sig and waits for the exit, returning the exit code and how long it took.
func (p *testProc) stop(sig syscall.Signal, within time.Duration) (int, time.Duration) {
	p.t.Helper()
	start := time.Now()
	p.Stop(sig, within)
	return p.State().ExitCode(), time.Since(start)
}

func waitReady(t *testing.T, p *testProc, httpAddr string, within time.Duration) {
	t.Helper()
	p.WaitReady(httpAddr, within)
}

// etcdClient returns a plain client: for a cluster started with --insecure.
func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	return secureClient(t, "", endpoints...)
}

// secureClient returns a client acting as etcd user root with the
// certificates in certsDir, or a plain one if certsDir is "".
func secureClient(t *testing.T, certsDir string, endpoints ...string) *clientv3.Client {
	t.Helper()
	var tc *cluster.ClientTLS
	if certsDir != "" {
		tc = &cluster.ClientTLS{CAFile: filepath.Join(certsDir, pki.CACertFile),
			CertFile: filepath.Join(certsDir, pki.ClientCertFile(pki.UserRoot)), KeyFile: filepath.Join(certsDir, pki.ClientKeyFile(pki.UserRoot))}
	}
	cli, err := cluster.Dial(cluster.DialConfig{Endpoints: endpoints, TLS: tc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

type allInOne struct {
	dir                     string
	client, peer, http, udp int
}

func (a allInOne) args() []string {
	return []string{
		"--data-dir", a.dir,
		"--client-urls", fmt.Sprintf("https://127.0.0.1:%d", a.client),
		"--peer-urls", fmt.Sprintf("https://127.0.0.1:%d", a.peer),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", a.http),
		"--udp-addr", fmt.Sprintf("127.0.0.1:%d", a.udp),
		"--worker-id", "w1",
	}
}

// certs is where the all-in-one default keeps its certificates.
func (a allInOne) certs() string { return filepath.Join(a.dir, "pki") }

func newAllInOne(t *testing.T) allInOne {
	return allInOne{dir: t.TempDir(), client: freePort(t), peer: freePort(t), http: freePort(t), udp: freePort(t)}
}

// TestAllInOne is the README's first command: it starts, turns ready, makes
// its certificates and keys (0600), registers the default client key,
// shows the worker, the leader and the config in etcd, serves a client
// with client.key and refuses one without a key, stops on SIGINT with exit 0
// in under 5 s, and restarts on the same data dir.
func TestAllInOne(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	a := newAllInOne(t)
	p := startProc(t, a.args()...)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", a.http)
	waitReady(t, p, httpAddr, 30*time.Second)
	// The daemon writes its banner before /readyz says ready, but the
	// test reads the process's output from a pipe, on its own goroutine:
	// on a busy CI host the check below once ran before that read.
	p.WaitBanner(10 * time.Second)
	wantHint := fmt.Sprintf("go tool etcdctl --endpoints=127.0.0.1:%d --cacert=%s --cert=%s --key=%s get --prefix /tokend/", a.client,
		filepath.Join(a.certs(), "ca.crt"), filepath.Join(a.certs(), "root.crt"), filepath.Join(a.certs(), "root.key"))
	if out := p.Out.String(); !strings.Contains(out, wantHint) || !strings.Contains(out, "is up") ||
		!strings.Contains(out, fmt.Sprintf("etcd client   https://127.0.0.1:%d", a.client)) {
		t.Errorf("startup banner missing endpoints or first command %q:\n%s", wantHint, out)
	}
	// The secure default made its CA and certificates, keys private.
	for _, f := range []string{"ca.crt", "ca.key", "server-tokend.crt", "server-tokend.key", "tokend.crt", "tokend.key", "root.crt", "root.key", "cluster.key", "client.key"} {
		fi, err := os.Stat(filepath.Join(a.certs(), f))
		if err != nil {
			t.Fatalf("certificates: %v", err)
		}
		if strings.HasSuffix(f, ".key") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	caBefore, _ := os.ReadFile(filepath.Join(a.certs(), "ca.crt"))

	cli := secureClient(t, a.certs(), fmt.Sprintf("127.0.0.1:%d", a.client))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, cluster.Prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, kv := range resp.Kvs {
		seen[string(kv.Key)] = string(kv.Value)
		if !json.Valid(kv.Value) {
			t.Errorf("%s is not JSON: %q", kv.Key, kv.Value)
		}
	}
	var w cluster.Worker
	if err := json.Unmarshal([]byte(seen[cluster.WorkerKey("w1")]), &w); err != nil || w.UDP != fmt.Sprintf("127.0.0.1:%d", a.udp) {
		t.Errorf("worker document %q (%v)", seen[cluster.WorkerKey("w1")], err)
	}
	var c cluster.Config
	if err := json.Unmarshal([]byte(seen[cluster.ConfigKey]), &c); err != nil || c.Shards != 4096 {
		t.Errorf("config document %q (%v)", seen[cluster.ConfigKey], err)
	}
	// The default client key is registered, sealed: the list shows it.
	if list, err := keys.List(ctx, cli); err != nil || len(list) != 1 || list[0].Name != "default" {
		t.Errorf("client keys in etcd: %v, %v; want default", list, err)
	}
	leaders := 0
	for k := range seen {
		if strings.HasPrefix(k, cluster.LeaderPrefix) {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d leader keys, want 1: %v", leaders, seen)
	}
	for _, path := range []string{"/metrics", "/healthz"} {
		r, err := http.Get("http://" + httpAddr + path)
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("GET %s: %v %v", path, r, err)
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if path == "/metrics" {
			for _, want := range []string{"tokend_coordinator_is_leader 1", "etcd_server_has_leader 1"} {
				if !strings.Contains(string(body), want) {
					t.Errorf("/metrics lacks %q", want)
				}
			}
		}
	}
	// Profiles only with --pprof (this start has none).
	if r, err := http.Get("http://" + httpAddr + "/debug/pprof/"); err != nil || r.StatusCode != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ without --pprof: %v %v, want 404", r, err)
	} else {
		r.Body.Close()
	}
	cli.Close()

	// Clients authenticate: with client.key a token is taken and given
	// back; without a key the worker refuses the session.
	seeds := []string{fmt.Sprintf("127.0.0.1:%d", a.udp)}
	tc, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: seeds, KeyFile: filepath.Join(a.certs(), "client.key")})
	if err != nil {
		t.Fatalf("a client with client.key: %v", err)
	}
	tok, err := tc.Acquire(ctx, "all-in-one", wire.EX)
	if err != nil {
		t.Fatalf("acquire with client.key: %v", err)
	}
	if err := tok.Release(ctx); err != nil {
		t.Errorf("release: %v", err)
	}
	tc.Close()
	nctx, ncancel := context.WithTimeout(ctx, 3*time.Second)
	if nc, err := clientlib.DialConfig(nctx, clientlib.Config{Seeds: seeds, Insecure: true}); !errors.Is(err, clientlib.ErrAuth) {
		t.Errorf("a client without a key: %v, want clientlib.ErrAuth", err)
		if nc != nil {
			nc.Close()
		}
	}
	ncancel()

	code, took := p.stop(syscall.SIGINT, 5*time.Second)
	if code != 0 {
		t.Fatalf("exit code %d after SIGINT", code)
	}
	t.Logf("stopped in %v", took)

	// Restart on the same data dir: same CA, nothing made again; with
	// --pprof it serves Go's profiles.
	p2 := startProc(t, append(a.args(), "--pprof")...)
	waitReady(t, p2, httpAddr, 30*time.Second)
	if r, err := http.Get("http://" + httpAddr + "/debug/pprof/cmdline"); err != nil || r.StatusCode != http.StatusOK {
		t.Errorf("GET /debug/pprof/cmdline with --pprof: %v %v, want 200", r, err)
	} else {
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		if !strings.Contains(string(body), "--pprof") {
			t.Errorf("/debug/pprof/cmdline = %q, want the command line", body)
		}
	}
	if caAfter, _ := os.ReadFile(filepath.Join(a.certs(), "ca.crt")); string(caAfter) != string(caBefore) {
		t.Error("the restart made a new CA")
	}
	if strings.Contains(p2.Out.String(), "created the etcd CA") {
		t.Error("the restart created certificates again")
	}
	if code, _ := p2.stop(syscall.SIGTERM, 5*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM on restart", code)
	}
}

// TestWorkerKeyVanishesOnKill: a worker process killed with SIGKILL cannot
// revoke its lease; its key must still vanish within the lease TTL.
func TestWorkerKeyVanishesOnKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	a := newAllInOne(t)
	p := startProc(t, a.args()...)
	waitReady(t, p, fmt.Sprintf("127.0.0.1:%d", a.http), 30*time.Second)

	whttp := freePort(t)
	const ttl = 2 * time.Second
	wp := startProc(t, "worker",
		"--etcd-endpoints", fmt.Sprintf("127.0.0.1:%d", a.client),
		"--udp-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", whttp),
		"--worker-id", "w2", "--worker-ttl", ttl.String(), "--certs-dir", a.certs())
	waitReady(t, wp, fmt.Sprintf("127.0.0.1:%d", whttp), 30*time.Second)

	cli := secureClient(t, a.certs(), fmt.Sprintf("127.0.0.1:%d", a.client))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key := cluster.WorkerKey("w2")
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("worker key missing before the kill: %v %v", resp, err)
	}
	watch := cli.Watch(ctx, key, clientv3.WithRev(resp.Header.Revision+1))
	killed := time.Now()
	wp.Process.Signal(syscall.SIGKILL)
	for ev := range watch {
		for _, e := range ev.Events {
			if e.Type == clientv3.EventTypeDelete {
				gone := time.Since(killed)
				t.Logf("worker key deleted %v after SIGKILL (TTL %v)", gone, ttl)
				// etcd may round the TTL up to whole seconds and checks
				// expiry every 500ms; allow that and scheduling slack.
				if gone > ttl+1500*time.Millisecond {
					t.Errorf("key vanished after %v, want within the TTL %v (+ etcd's expiry granularity)", gone, ttl)
				}
				return
			}
		}
	}
	t.Fatalf("no delete event: %v", ctx.Err())
}

// TestWorkerWrongClusterKey: a worker whose cluster key is not the
// servers' opens none of the client keys in etcd, and refuses to start
// (exit 1) with a message naming the file.
func TestWorkerWrongClusterKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	a := newAllInOne(t)
	p := startProc(t, a.args()...)
	waitReady(t, p, fmt.Sprintf("127.0.0.1:%d", a.http), 30*time.Second)
	wrong := filepath.Join(t.TempDir(), "cluster.key")
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyFile(wrong, pki.ClusterKeyName, k); err != nil {
		t.Fatal(err)
	}
	wp := startProc(t, "worker",
		"--etcd-endpoints", fmt.Sprintf("127.0.0.1:%d", a.client),
		"--udp-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--worker-id", "w2", "--certs-dir", a.certs(), "--cluster-key-file", wrong)
	wp.WaitExit(30 * time.Second)
	if code := wp.State().ExitCode(); code != 1 || !strings.Contains(wp.Out.String(), "none of the 1 client keys in etcd opens under this cluster key") ||
		!strings.Contains(wp.Out.String(), wrong) {
		t.Errorf("worker with another cluster key: exit %d:\n%s", code, wp.Out.String())
	}
}

// TestThreeServers runs the README's three-server recipe: three "tokend
// server" processes form one etcd cluster; the leader moves when the
// leading server stops, and writes succeed with one server down.
func TestThreeServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	type srv struct {
		name               string
		client, peer, http int
		p                  *testProc
	}
	servers := make([]*srv, 3)
	var initial []string
	for i := range servers {
		s := &srv{name: fmt.Sprintf("s%d", i+1), client: freePort(t), peer: freePort(t), http: freePort(t)}
		servers[i] = s
		initial = append(initial, fmt.Sprintf("%s=https://127.0.0.1:%d", s.name, s.peer))
	}
	dir := t.TempDir()
	// What tokend up does before it starts servers on one machine.
	if _, err := writeLocalCerts(filepath.Join(dir, "pki"), []pki.Server{{Name: "s1"}, {Name: "s2"}, {Name: "s3"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteKeys(filepath.Join(dir, "pki")); err != nil {
		t.Fatal(err)
	}
	var endpoints []string
	for i, s := range servers {
		args := []string{"server", "--name", s.name, "--data-dir", dir,
			"--client-urls", fmt.Sprintf("https://127.0.0.1:%d", s.client),
			"--peer-urls", fmt.Sprintf("https://127.0.0.1:%d", s.peer),
			"--http-addr", fmt.Sprintf("127.0.0.1:%d", s.http),
			"--initial-cluster", strings.Join(initial, ","),
		}
		if i == 0 {
			args = append(args, "--worker", "--udp-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--worker-id", "w1")
		}
		s.p = startProc(t, args...)
		endpoints = append(endpoints, fmt.Sprintf("127.0.0.1:%d", s.client))
	}
	for _, s := range servers {
		waitReady(t, s.p, fmt.Sprintf("127.0.0.1:%d", s.http), 60*time.Second)
	}
	cli := secureClient(t, filepath.Join(dir, "pki"), endpoints...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	leader := func() string {
		for ctx.Err() == nil {
			resp, err := cli.Get(ctx, cluster.LeaderPrefix, clientv3.WithFirstCreate()...)
			if err == nil && len(resp.Kvs) > 0 {
				var l cluster.Leader
				if json.Unmarshal(resp.Kvs[0].Value, &l) == nil {
					return l.Name
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatal("no leader")
		return ""
	}
	first := leader()
	var victim *srv
	for _, s := range servers {
		if s.name == first {
			victim = s
		}
	}
	if code, _ := victim.p.stop(syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("leader %s exited %d", first, code)
	}
	var live []string
	for _, s := range servers {
		if s != victim {
			live = append(live, fmt.Sprintf("127.0.0.1:%d", s.client))
		}
	}
	cli.SetEndpoints(live...)
	second := ""
	for second == "" || second == first {
		second = leader()
	}
	if _, err := cli.Put(ctx, "/tokend-test/write-with-one-down", "ok"); err != nil {
		t.Fatalf("write with one of three servers down: %v", err)
	}
	t.Logf("leader moved from %s to %s", first, second)
}
