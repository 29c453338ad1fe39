package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/testkit/proctest"
)

func TestUpFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		flag string // the flag the error must name
	}{
		{[]string{"--servers", "0"}, "--servers"},
		{[]string{"--servers", "8"}, "--servers"},
		{[]string{"--workers", "-1"}, "--workers"},
		{[]string{"--workers", "65"}, "--workers"},
		{[]string{"--base-port", "0"}, "--base-port"},
		{[]string{"--base-port", "65530"}, "--base-port"}, // 15 ports needed
		{[]string{"--worker-ttl", "1s"}, "--worker-ttl"},
		{[]string{"--session-ttl", "1s"}, "--session-ttl"},
		{[]string{"--grace", "-1s"}, "--grace"},
		{[]string{"--shutdown-timeout", "0s"}, "--shutdown-timeout"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--data-dir", ""}, "--data-dir"},
		{[]string{"--servers", "three"}, "-servers"}, // the flag package's own message
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseUp(append([]string{"--data-dir", dir}, tt.args...), io.Discard)
			if !errors.Is(err, errConfig) || !strings.Contains(err.Error(), tt.flag) {
				t.Fatalf("error %v: want errConfig naming %s", err, tt.flag)
			}
		})
	}
	if _, err := parseUp([]string{"--data-dir", dir, "--base-port", "65521", "--servers", "1", "--workers", "6"}, io.Discard); err != nil {
		t.Errorf("15 ports ending at 65535: %v", err)
	}
	if _, err := parseUp([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

// TestUpPlan: the planned command lines are ones tokend server and tokend
// worker accept, every port is distinct and in the range, and the servers
// name each other; every child uses TLS with <data-dir>/pki, or none with
// --insecure, whatever up's environment says.
func TestUpPlan(t *testing.T) {
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) { testUpPlan(t, insecure) })
	}
}

func testUpPlan(t *testing.T, insecure bool) {
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--servers", "3", "--workers", "2", "--base-port", "20000"}
	scheme, env := "https", map[string]string{"TOKEND_INSECURE": "true", "TOKEND_CERTS_DIR": "/elsewhere"}
	if insecure {
		args = append(args, "--insecure")
		scheme, env = "http", map[string]string{"TOKEND_INSECURE": "false"}
	}
	cfg, err := parseUp(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, existing := range []bool{false, true} {
		kids := planUp(cfg, existing)
		if len(kids) != 5 {
			t.Fatalf("%d children, want 5", len(kids))
		}
		var ports []int
		for _, k := range kids {
			ports = append(ports, k.tcp...)
			ports = append(ports, k.udp...)
			m := modeWorker
			if k.server {
				m = modeServer
			}
			c, err := loadConfig(m, k.args[1:], func(k string) string { return env[k] }, io.Discard)
			if err != nil {
				t.Fatalf("%s: tokend %s rejects %q: %v", k.name, k.args[0], k.args[1:], err)
			}
			if c.insecure != insecure || (!insecure && c.certsDir != filepath.Join(dir, "pki")) {
				t.Errorf("%s: insecure %v, certs dir %q; want insecure %v, certs in %s/pki", k.name, c.insecure, c.certsDir, insecure, dir)
			}
			if k.server {
				if c.name != k.name || c.runWorker || !strings.Contains(c.initialCluster, "s3="+scheme+"://127.0.0.1:20007") {
					t.Errorf("%s: name %q, worker %v, initial cluster %q", k.name, c.name, c.runWorker, c.initialCluster)
				}
				if c.clientURLs[0] != k.addr || c.advClientURLs[0] != k.addr || !strings.HasPrefix(c.peerURLs[0], scheme+"://") || !strings.HasPrefix(c.advPeerURLs[0], scheme+"://") {
					t.Errorf("%s: client URLs %v %v, peer URLs %v %v; want %s://", k.name, c.clientURLs, c.advClientURLs, c.peerURLs, c.advPeerURLs, scheme)
				}
				if want := map[bool]string{false: "new", true: "existing"}[existing]; c.clusterState != want {
					t.Errorf("%s: cluster state %q, want %q", k.name, c.clusterState, want)
				}
			} else {
				if c.workerID != k.name || len(c.etcdEndpoints) != 3 || c.workerTTL != 5*time.Second {
					t.Errorf("%s: id %q, endpoints %v, ttl %v", k.name, c.workerID, c.etcdEndpoints, c.workerTTL)
				}
			}
		}
		slices.Sort(ports)
		if len(slices.Compact(slices.Clone(ports))) != len(ports) || ports[0] != 20000 || ports[len(ports)-1] != 20000+cfg.portCount()-1 {
			t.Errorf("ports %v: want %d distinct ports from 20000", ports, cfg.portCount())
		}
	}
}

// TestUpDataDir: a data dir that holds a cluster remembers its layout; a
// restart with another --servers or --base-port is refused, naming the flag,
// and so is one that would change the cluster's TLS: a secure restart of a
// cluster without certificates, an insecure one of a cluster with them.
func TestUpDataDir(t *testing.T) {
	dir := t.TempDir()
	parse := func(args ...string) *upConfig {
		t.Helper()
		cfg, err := parseUp(append([]string{"--data-dir", dir}, args...), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if existing, err := prepareDataDir(parse()); err != nil || existing {
		t.Fatalf("fresh dir: existing %v, %v", existing, err)
	}
	// No cluster yet (a start that failed early): another layout is fine.
	if existing, err := prepareDataDir(parse("--base-port", "13000")); err != nil || existing {
		t.Fatalf("fresh dir, another --base-port: existing %v, %v", existing, err)
	}
	if _, err := prepareDataDir(parse()); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "s2.etcd"), 0o700); err != nil {
		t.Fatal(err)
	}
	// An insecure cluster (made by --insecure, or by up before TLS).
	if existing, err := prepareDataDir(parse("--insecure")); err != nil || !existing {
		t.Fatalf("dir with s2.etcd, --insecure: existing %v, %v", existing, err)
	}
	if _, err := prepareDataDir(parse()); !errors.Is(err, errConfig) || !strings.Contains(err.Error(), "--data-dir") || !strings.Contains(err.Error(), "--insecure") {
		t.Errorf("secure restart of an insecure cluster: %v, want errConfig naming --data-dir and suggesting --insecure", err)
	}
	if _, err := writeLocalCerts(filepath.Join(dir, "pki"), []pki.Server{{Name: "s1"}}); err != nil {
		t.Fatal(err)
	}
	if existing, err := prepareDataDir(parse()); err != nil || !existing {
		t.Fatalf("dir with s2.etcd and pki: existing %v, %v", existing, err)
	}
	if _, err := prepareDataDir(parse("--insecure")); !errors.Is(err, errConfig) || !strings.Contains(err.Error(), "--insecure") {
		t.Errorf("insecure restart of a secure cluster: %v, want errConfig naming --insecure", err)
	}
	for _, tt := range []struct{ args []string }{{[]string{"--servers", "5"}}, {[]string{"--base-port", "13000"}}} {
		_, err := prepareDataDir(parse(tt.args...))
		if !errors.Is(err, errConfig) || !strings.Contains(err.Error(), tt.args[0]) {
			t.Errorf("%v: %v, want errConfig naming %s", tt.args, err, tt.args[0])
		}
	}
}

func waitOutput(t *testing.T, p *testProc, want string, within time.Duration) {
	t.Helper()
	p.WaitOutput(want, within)
}

// upTable returns the pid of each child in the "ready" table.
func upTable(t *testing.T, out string) map[string]int {
	t.Helper()
	_, table, _ := strings.Cut(out, "are ready")
	pids := map[string]int{}
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) != 4 || !strings.HasPrefix(line, "  ") || (f[0][0] != 's' && f[0][0] != 'w') {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		pids[f[0]] = pid
	}
	return pids
}

// gone reports whether pid has exited (a zombie counts: up is gone too, so
// nobody is left to reap it but init).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return runtime.GOOS == "linux" // no /proc entry on Linux: gone
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

func waitGone(t *testing.T, pids map[string]int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for name, pid := range pids {
		for !gone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (pid %d) still runs %v after tokend up ended", name, pid, within)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// TestUp runs the README's "local cluster in one command": three servers
// and two workers come up as processes, a worker killed with SIGKILL is
// reported and its key vanishes within its TTL, SIGINT stops everything
// with exit 0 and leaves no child behind; a restart on the same data dir
// finds the cluster again, and killing up itself with SIGKILL takes its
// children with it.
func TestUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	// A race-enabled binary sleeps 1 s on exit by default; up stops its
	// six processes partly one after another, so the sleeps would add up.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	const servers, workers = 3, 2
	const ttl = 2 * time.Second
	base := proctest.FreeRange(t, 3*servers+2*workers)
	dir := t.TempDir()
	args := []string{"up", "--servers", strconv.Itoa(servers), "--workers", strconv.Itoa(workers),
		"--data-dir", dir, "--base-port", strconv.Itoa(base), "--worker-ttl", ttl.String()}
	start := time.Now()
	p := startProc(t, args...)
	waitOutput(t, p, "are ready", 45*time.Second)
	t.Logf("ready in %v", time.Since(start))
	pids := upTable(t, p.Out.String())
	if len(pids) != servers+workers {
		t.Fatalf("table has %v, want %d children", pids, servers+workers)
	}

	var endpoints []string
	for i := range servers {
		endpoints = append(endpoints, fmt.Sprintf("127.0.0.1:%d", base+3*i))
	}
	certs := filepath.Join(dir, "pki")
	eps := strings.Join(endpoints, ",")
	for _, want := range []string{
		fmt.Sprintf(" https://127.0.0.1:%d ", base),
		"go run ./cmd/tokenctl status --etcd " + eps + " --certs-dir " + certs + "\n",
		"go tool etcdctl --endpoints=" + eps + " " + etcdctlFlags(certs) + " member list\n",
		fmt.Sprintf("go run ./cmd/tokenctl acquire --seeds 127.0.0.1:%d,127.0.0.1:%d --key-file %s foo\n",
			base+3*servers, base+3*servers+2, filepath.Join(certs, "client.key")),
	} {
		if !strings.Contains(p.Out.String(), want) {
			t.Errorf("the ready table lacks %q:\n%s", want, p.Out.String())
		}
	}
	// Secure by default: a client without TLS gets nothing.
	plainCtx, plainCancel := context.WithTimeout(context.Background(), 2*time.Second)
	if _, err := etcdClient(t, endpoints...).Get(plainCtx, cluster.WorkersPrefix); err == nil {
		t.Errorf("a client without TLS read etcd")
	}
	plainCancel()
	cli := secureClient(t, certs, endpoints...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	members, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range members.Members {
		names = append(names, m.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"s1", "s2", "s3"}) {
		t.Errorf("etcd members %v, want s1 s2 s3", names)
	}
	resp, err := cli.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	if !slices.Equal(keys, []string{cluster.WorkerKey("w1"), cluster.WorkerKey("w2")}) {
		t.Errorf("worker keys %v, want w1 and w2", keys)
	}
	// The servers registered the default client key (once, though three tried).
	if resp, err := cli.Get(ctx, cluster.Prefix+"keys/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); err != nil ||
		len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != cluster.Prefix+"keys/default" {
		t.Errorf("client keys in etcd: %v, %v; want /tokend/keys/default", resp, err)
	}

	// Crash w2: up reports it and keeps the rest; its key goes within the TTL.
	watch := cli.Watch(ctx, cluster.WorkerKey("w2"), clientv3.WithRev(resp.Header.Revision+1))
	killed := time.Now()
	if err := syscall.Kill(pids["w2"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deleted := false
	for ev := range watch {
		for _, e := range ev.Events {
			deleted = deleted || e.Type == clientv3.EventTypeDelete
		}
		if deleted {
			break
		}
	}
	if !deleted {
		t.Fatalf("no delete of w2's key: %v", ctx.Err())
	}
	took := time.Since(killed)
	t.Logf("w2's key deleted %v after SIGKILL (TTL %v)", took, ttl)
	if took > ttl+1500*time.Millisecond { // etcd checks expiry every 500 ms
		t.Errorf("w2's key vanished after %v, want within the TTL %v", took, ttl)
	}
	waitOutput(t, p, "w2 exited: signal: killed", 5*time.Second)
	cli.Close()

	code, took := p.stop(syscall.SIGINT, 10*time.Second)
	t.Logf("stopped in %v", took)
	if code != 0 {
		t.Fatalf("exit code %d after SIGINT, want 0", code)
	}
	waitGone(t, pids, time.Second)
	out := p.Out.String()
	for _, want := range []string{"w1 stopped", "s1 stopped", "all stopped"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "logs", "s1.log")); err != nil || !strings.Contains(string(b), "starting etcd member") {
		t.Errorf("logs/s1.log: %v, %.200q", err, b)
	}

	// Restart on the same data dir, then kill up itself.
	p2 := startProc(t, append(args, "--shutdown-timeout", "3s")...)
	waitOutput(t, p2, "are ready", 45*time.Second)
	if !strings.Contains(p2.Out.String(), "restarting the cluster") {
		t.Errorf("a restart on %s did not find the cluster", dir)
	}
	pids = upTable(t, p2.Out.String())
	if len(pids) != servers+workers {
		t.Fatalf("table has %v, want %d children", pids, servers+workers)
	}
	if runtime.GOOS != "linux" {
		return // only Linux has the parent-death signal
	}
	p2.Kill()
	// Each child gets SIGTERM and stops within its 3 s shutdown timeout.
	waitGone(t, pids, 10*time.Second)
}
