//go:build linux

package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/testkit/proctest"
)

func TestMain(m *testing.M) { os.Exit(proctest.Main(m, "tokend-recovery-", 5*time.Second)) }

func tokendBin(t *testing.T) string { return proctest.Tokend(t) }

// skipShort skips tests that start processes under -short.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts tokend processes and injects faults")
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex // guards b
	b   []byte
	max int
}

func (tb *tailBuffer) Write(p []byte) (int, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.b = append(tb.b, p...)
	if over := len(tb.b) - tb.max; over > 0 {
		tb.b = append(tb.b[:0], tb.b[over:]...)
	}
	return len(p), nil
}

func (tb *tailBuffer) String() string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return string(tb.b)
}

// proc is one tokend process. Its t.Cleanup kills it by PID (SIGKILL works
// on a stopped process too) and waits for it.
type proc struct {
	t    *testing.T
	name string
	args []string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{} // closed when the process has been reaped
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(tokendBin(t), args...)
	// The process dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{t: t, name: name, args: args, cmd: cmd, out: &tailBuffer{max: 64 << 10}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- last output of %s (pid %d, tokend %s):\n%s", name, cmd.Process.Pid, strings.Join(args, " "), p.out)
		}
	})
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the process by PID and waits until it is reaped.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	syscall.Kill(p.pid(), syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("%s (pid %d) not reaped 10s after SIGKILL", p.name, p.pid())
	}
}

// signal sends sig to the process by PID.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := syscall.Kill(p.pid(), sig); err != nil {
		p.t.Fatalf("%v to %s (pid %d): %v", sig, p.name, p.pid(), err)
	}
}

// stop sends sig and waits for the exit.
func (p *proc) stop(sig syscall.Signal, within time.Duration) {
	p.t.Helper()
	p.signal(sig)
	select {
	case <-p.done:
	case <-time.After(within):
		p.t.Fatalf("%s did not exit within %v of %v", p.name, within, sig)
	}
}

// waitReady polls the process's /readyz until it answers 200.
func (p *proc) waitReady(httpAddr string, within time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if p.exited() {
			p.t.Fatalf("%s exited early: %v\n%s", p.name, p.cmd.ProcessState, p.out)
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("%s: /readyz not ready within %v", p.name, within)
}

// ports remembers every port handed out in this run: the kernel may give a
// port that was just closed to the next bind(0), which then hands the same
// port to two processes.
func freePort(t *testing.T, network string) int { return proctest.FreePort(t, network) }

func freeTCP(t *testing.T) int { return freePort(t, "tcp") }
func freeUDP(t *testing.T) int { return freePort(t, "udp") }

func loop(port int) string { return proctest.Loop(port) }

// server is one "tokend server" process (etcd member and coordinator, no
// worker), restartable on its data dir.
type server struct {
	t                  *testing.T
	name               string
	dir                string
	client, peer, http int
	args               []string
	p                  *proc
}

// newServers describes n servers forming one etcd cluster, with the given
// cluster-wide options (shards, session TTL, grace).
func newServers(t *testing.T, n int, extra ...string) []*server {
	dir := t.TempDir()
	ss := make([]*server, n)
	var initial []string
	for i := range ss {
		s := &server{t: t, name: fmt.Sprintf("s%d", i+1), dir: dir, client: freeTCP(t), peer: freeTCP(t), http: freeTCP(t)}
		ss[i] = s
		initial = append(initial, fmt.Sprintf("%s=http://%s", s.name, loop(s.peer)))
	}
	for _, s := range ss {
		s.args = append([]string{"server", "--name", s.name, "--data-dir", s.dir,
			"--client-urls", "http://" + loop(s.client),
			"--peer-urls", "http://" + loop(s.peer),
			"--http-addr", loop(s.http),
			"--initial-cluster", strings.Join(initial, ","),
		}, extra...)
	}
	return ss
}

func (s *server) start() { s.p = startProc(s.t, s.name, s.args...) }

func (s *server) endpoint() string { return loop(s.client) }

// workerProc is one "tokend worker" process; start runs a new process with
// the same id and UDP port (a restart is a new incarnation).
type workerProc struct {
	t         *testing.T
	id        string
	udp, http int
	args      []string
	p         *proc
	starts    int
}

func newWorker(t *testing.T, id string, endpoints []string, extra ...string) *workerProc {
	w := &workerProc{t: t, id: id, udp: freeUDP(t), http: freeTCP(t)}
	w.args = append([]string{"worker", "--worker-id", id,
		"--etcd-endpoints", strings.Join(endpoints, ","),
		"--udp-addr", loop(w.udp), "--http-addr", loop(w.http),
	}, extra...)
	return w
}

func (w *workerProc) start() {
	w.starts++
	w.p = startProc(w.t, fmt.Sprintf("%s#%d", w.id, w.starts), w.args...)
	p := w.p
	w.t.Cleanup(func() {
		if w.t.Failed() && !p.exited() {
			w.t.Logf("--- worker metrics of %s:\n%s", p.name, workerMetrics(loop(w.http)))
		}
	})
}

// workerMetrics returns the worker's own counters and gauges from /metrics.
func workerMetrics(httpAddr string) string {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "tokend_worker_") && !strings.Contains(line, "_bucket") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func (w *workerProc) addr() string { return loop(w.udp) }

func etcdClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// view is the cluster as etcd shows it: the map and the registered workers.
type view struct {
	m       delegation.Map
	workers map[string]cluster.Worker // by id
}

func readView(ctx context.Context, cli *clientv3.Client) (view, error) {
	m, _, err := coordinator.ReadMap(ctx, cli)
	if err != nil {
		return view{}, err
	}
	resp, err := cli.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		return view{}, err
	}
	v := view{m: m, workers: map[string]cluster.Worker{}}
	for _, kv := range resp.Kvs {
		var w cluster.Worker
		if json.Unmarshal(kv.Value, &w) == nil {
			v.workers[w.ID] = w
		}
	}
	return v, nil
}

// live reports whether o is a registered incarnation.
func (v view) live(o delegation.Owner) bool {
	w, ok := v.workers[o.ID]
	return ok && w.Incarnation == strconv.FormatUint(o.Incarnation, 16)
}

// shardsOf returns the shards the map gives to worker id, with their epochs.
func (v view) shardsOf(id string) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for s := range v.m.Shards() {
		if o, e, ok := v.m.Lookup(s); ok && o.ID == id {
			out[uint32(s)] = e
		}
	}
	return out
}

// balanced reports whether every shard is owned by a live incarnation and
// every worker in ids owns at least one.
func (v view) balanced(ids ...string) bool {
	if v.m.Shards() == 0 {
		return false
	}
	owns := map[string]int{}
	for s := range v.m.Shards() {
		o, _, ok := v.m.Lookup(s)
		if !ok || !v.live(o) {
			return false
		}
		owns[o.ID]++
	}
	for _, id := range ids {
		if owns[id] == 0 {
			return false
		}
	}
	return true
}

// waitView polls etcd until cond holds or within passes.
func waitView(t *testing.T, cli *clientv3.Client, what string, within time.Duration, cond func(view) bool) view {
	t.Helper()
	deadline := time.Now().Add(within)
	var last view
	var lastErr error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := readView(ctx, cli)
		cancel()
		if err == nil {
			last = v
			if cond(v) {
				return v
			}
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v (map version %d, workers %v, last error %v)", what, within, last.m.Version, keys(last.workers), lastErr)
	return view{}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// oneServerCluster starts one "tokend server" (etcd, coordinator) and n
// "tokend worker" processes with the given worker flags, and waits until
// every worker owns shards.
type oneServer struct {
	srv     *server
	cli     *clientv3.Client
	workers []*workerProc
}

func startOneServer(t *testing.T, shards, nworkers int, clusterFlags, workerFlags []string) *oneServer {
	t.Helper()
	start := time.Now()
	ss := newServers(t, 1, append([]string{"--shards", strconv.Itoa(shards)}, clusterFlags...)...)
	c := &oneServer{srv: ss[0]}
	c.srv.start()
	c.srv.p.waitReady(loop(c.srv.http), 30*time.Second)
	c.cli = etcdClient(t, c.srv.endpoint())
	var ids []string
	for i := range nworkers {
		w := newWorker(t, fmt.Sprintf("w%d", i+1), []string{c.srv.endpoint()}, workerFlags...)
		w.start()
		c.workers = append(c.workers, w)
		ids = append(ids, w.id)
	}
	for _, w := range c.workers {
		w.p.waitReady(loop(w.http), 30*time.Second)
	}
	waitView(t, c.cli, "every worker owns shards", 20*time.Second, func(v view) bool { return v.balanced(ids...) })
	t.Logf("cluster up in %v (tokend build %v): 1 server, %d workers, %d shards", time.Since(start).Round(time.Millisecond),
		proctest.BuildTime().Round(time.Millisecond), nworkers, shards)
	return c
}

func (c *oneServer) seeds() []string {
	var out []string
	for _, w := range c.workers {
		out = append(out, w.addr())
	}
	return out
}

func (c *oneServer) ids() []string {
	var out []string
	for _, w := range c.workers {
		out = append(out, w.id)
	}
	return out
}

// logf is a cheap timestamped log line for the test's own narrative.
func logf(t *testing.T, start time.Time, format string, args ...any) {
	t.Helper()
	t.Logf("[%6.2fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}
