//go:build linux

package failover

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/internal/proc"
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

// startProc starts tokend with args as a process of the test (see
// proctest.Start), keeping the last 64 KiB of its output.
func startProc(t *testing.T, name string, args ...string) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, proc.Spec{Name: name, Path: tokendBin(t), Args: args, Keep: 64 << 10})
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
	certs              string // "tokend certs" made it for every server; workers and the test's etcd clients use it too
	client, peer, http int
	args               []string
	p                  *proctest.Proc
}

// newServers describes n servers forming one etcd cluster, with the given
// cluster-wide options (shards, session TTL, grace). They run as users run
// them: etcd over TLS with authentication, with certificates "tokend
// certs" made for all of them.
func newServers(t *testing.T, n int, extra ...string) []*server {
	dir := t.TempDir()
	ss := make([]*server, n)
	var initial, names []string
	for i := range ss {
		s := &server{t: t, name: fmt.Sprintf("s%d", i+1), dir: dir, client: freeTCP(t), peer: freeTCP(t), http: freeTCP(t)}
		ss[i] = s
		initial = append(initial, fmt.Sprintf("%s=https://%s", s.name, loop(s.peer)))
		names = append(names, s.name)
	}
	certs := proctest.Certs(t, names...)
	for _, s := range ss {
		s.certs = certs
		s.args = append([]string{"server", "--name", s.name, "--data-dir", s.dir, "--certs-dir", certs,
			"--client-urls", "https://" + loop(s.client),
			"--peer-urls", "https://" + loop(s.peer),
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
	p         *proctest.Proc
	starts    int
}

// newWorker describes a worker of the servers whose certificates are in
// certs (server.certs).
func newWorker(t *testing.T, id, certs string, endpoints []string, extra ...string) *workerProc {
	w := &workerProc{t: t, id: id, udp: freeUDP(t), http: freeTCP(t)}
	w.args = append([]string{"worker", "--worker-id", id, "--certs-dir", certs,
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
		if w.t.Failed() && !p.Exited() {
			w.t.Logf("--- worker metrics of %s:\n%s", p.Name, workerMetrics(loop(w.http)))
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

// etcdClient dials endpoints as the operator (etcd user root) with the
// certificates in certs.
func etcdClient(t *testing.T, certs string, endpoints ...string) *clientv3.Client {
	t.Helper()
	return proctest.EtcdClient(t, certs, endpoints...)
}

// view is the cluster as etcd shows it: the map and the registered workers.
type view = proc.View

func readView(ctx context.Context, cli *clientv3.Client) (view, error) {
	return proc.ReadView(ctx, cli)
}

// waitView polls etcd until cond holds or within passes.
func waitView(t *testing.T, cli *clientv3.Client, what string, within time.Duration, cond func(view) bool) view {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	v, err := proc.WaitView(ctx, cli, cond)
	if err != nil {
		t.Fatalf("%s: not within %v: %v", what, within, err)
	}
	return v
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
	c.srv.p.WaitReady(loop(c.srv.http), 30*time.Second)
	c.cli = etcdClient(t, c.srv.certs, c.srv.endpoint())
	var ids []string
	for i := range nworkers {
		w := newWorker(t, fmt.Sprintf("w%d", i+1), c.srv.certs, []string{c.srv.endpoint()}, workerFlags...)
		w.start()
		c.workers = append(c.workers, w)
		ids = append(ids, w.id)
	}
	for _, w := range c.workers {
		w.p.WaitReady(loop(w.http), 30*time.Second)
	}
	waitView(t, c.cli, "every worker owns shards", 20*time.Second, func(v view) bool { return v.Balanced(ids...) })
	t.Logf("cluster up in %v (tokend build %v): 1 server, %d workers, %d shards", time.Since(start).Round(time.Millisecond),
		proctest.BuildTime().Round(time.Millisecond), nworkers, shards)
	return c
}

// keyFile is the client key file "tokend certs" made for the cluster.
func (c *oneServer) keyFile() string { return proctest.KeyFile(c.srv.certs) }

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
