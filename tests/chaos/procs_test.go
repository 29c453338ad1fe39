//go:build linux

package chaos

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/faultnet/proxy"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/wire"
)

// The real-process scenarios start "tokend server" and "tokend worker"
// processes (the pattern of package recovery, kept small here), put the
// UDP fault proxy between the test's clients and the workers, and, where a
// scenario cuts workers off from etcd, a TCP relay between each worker and
// each etcd member.

const (
	rWorkerTTL  = 2 * time.Second
	rSessionTTL = 2 * time.Second
	rGrace      = 2 * time.Second
	rShards     = 16
)

func tokendBin(t *testing.T) string { return proctest.Tokend(t) }

// startProc starts bin as a process of the test (see proctest.Start),
// keeping the last 32 KiB of its output; env is added to the environment.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, proc.Spec{Name: name, Path: bin, Args: args, Env: env, Keep: 32 << 10})
}

func freePort(t *testing.T, network string) int { return proctest.FreePort(t, network) }

func loop(port int) string { return proctest.Loop(port) }

// srvProc is one "tokend server" (etcd member and coordinator).
type srvProc struct {
	name               string
	client, peer, http int
	args               []string
	p                  *proctest.Proc
}

func (s *srvProc) endpoint() string { return loop(s.client) }

// wrkProc is one "tokend worker".
type wrkProc struct {
	id        string
	udp, http int
	args      []string
	relays    []*proxy.TCP // its etcd connections, if relayed
	p         *proctest.Proc
	starts    int
}

func (w *wrkProc) addr() string { return loop(w.udp) }

// rcluster is a real-process cluster behind a UDP fault proxy.
type rcluster struct {
	t       *testing.T
	servers []*srvProc
	workers []*wrkProc
	certs   string // made by "tokend certs" for every server, the workers and the test
	cli     *clientv3.Client
	px      *proxy.Proxy
	seeds   []string // the proxy's frontends of the workers
}

type rclusterOpts struct {
	servers, workers int
	relayEtcd        bool          // workers reach etcd through TCP relays
	sessionTTL       time.Duration // default rSessionTTL
	workerTTL        time.Duration // default rWorkerTTL
}

func startReal(t *testing.T, seed uint64, o rclusterOpts) *rcluster {
	t.Helper()
	skipShort(t)
	if o.sessionTTL == 0 {
		o.sessionTTL = rSessionTTL
	}
	if o.workerTTL == 0 {
		o.workerTTL = rWorkerTTL
	}
	bin := tokendBin(t)
	start := time.Now()
	c := &rcluster{t: t}
	dir := t.TempDir()
	var initial, endpoints, names []string
	for i := range o.servers {
		s := &srvProc{name: fmt.Sprintf("s%d", i+1), client: freePort(t, "tcp"), peer: freePort(t, "tcp"), http: freePort(t, "tcp")}
		c.servers = append(c.servers, s)
		initial = append(initial, fmt.Sprintf("%s=https://%s", s.name, loop(s.peer)))
		endpoints = append(endpoints, s.endpoint())
		names = append(names, s.name)
	}
	// etcd over TLS with authentication, as users run tokend: "tokend
	// certs" makes every server's certificate and the workers' and the
	// test's client certificates (valid on loopback, so also through the
	// TCP relays).
	c.certs = proctest.Certs(t, names...)
	for _, s := range c.servers {
		s.args = []string{"server", "--name", s.name, "--data-dir", dir, "--certs-dir", c.certs,
			"--client-urls", "https://" + loop(s.client), "--peer-urls", "https://" + loop(s.peer),
			"--http-addr", loop(s.http), "--initial-cluster", strings.Join(initial, ","),
			"--shards", strconv.Itoa(rShards), "--session-ttl", o.sessionTTL.String(), "--grace", rGrace.String()}
		s.p = startProc(t, s.name, bin, nil, s.args...)
	}
	for _, s := range c.servers {
		s.p.WaitReady(loop(s.http), 60*time.Second)
	}
	c.cli = proctest.EtcdClient(t, c.certs, endpoints...)
	// The proxy comes first: each worker advertises its frontend, so the
	// authenticated maps and hints that reach clients name frontends
	// without the proxy rewriting (and so breaking the tags of) anything.
	px, err := proxy.New(proxy.Config{Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	c.px = px
	t.Cleanup(func() { c.px.Close() })
	for i := range o.workers {
		w := &wrkProc{id: fmt.Sprintf("w%d", i+1), udp: freePort(t, "udp"), http: freePort(t, "tcp")}
		front, err := c.px.Frontend(w.addr())
		if err != nil {
			t.Fatal(err)
		}
		eps := endpoints
		if o.relayEtcd {
			eps = nil
			for _, ep := range endpoints {
				r, err := proxy.NewTCP("127.0.0.1:0", ep)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { r.Close() })
				w.relays = append(w.relays, r)
				eps = append(eps, r.Addr())
			}
		}
		w.args = []string{"worker", "--worker-id", w.id, "--certs-dir", c.certs, "--etcd-endpoints", strings.Join(eps, ","),
			"--udp-addr", w.addr(), "--advertise-udp-addr", front, "--http-addr", loop(w.http), "--worker-ttl", o.workerTTL.String()}
		c.workers = append(c.workers, w)
		c.startWorker(w)
		c.seeds = append(c.seeds, front)
	}
	for _, w := range c.workers {
		w.p.WaitReady(loop(w.http), 30*time.Second)
	}
	c.waitBalanced(20 * time.Second)
	t.Logf("cluster up in %v: %d servers, %d workers behind the fault proxy", time.Since(start).Round(time.Millisecond), o.servers, o.workers)
	return c
}

func (c *rcluster) startWorker(w *wrkProc) {
	w.starts++
	w.p = startProc(c.t, fmt.Sprintf("%s#%d", w.id, w.starts), tokendBin(c.t), nil, w.args...)
}

// readMap reads the delegation map and the registered workers.
func (c *rcluster) readMap(ctx context.Context) (proc.View, error) { return proc.ReadView(ctx, c.cli) }

// waitBalanced waits until every shard is owned by a live incarnation and
// every live worker process owns one.
func (c *rcluster) waitBalanced(within time.Duration) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	_, err := proc.WaitView(ctx, c.cli, func(v proc.View) bool {
		var live []string
		for _, w := range c.workers {
			if !w.p.Exited() {
				live = append(live, w.id)
			}
		}
		return v.Balanced(live...)
	})
	if err != nil {
		c.t.Fatalf("shards not balanced over the live workers within %v: %v", within, err)
	}
}

// shardsOf returns the shards worker id owns now, with their epochs.
func (c *rcluster) shardsOf(id string) map[uint32]uint32 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := c.readMap(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return v.ShardsOf(id)
}

// dial opens a Go client on a real UDP socket whose seeds are the proxy's
// frontends; it returns the client and its socket's address (the proxy's
// name for its links).
func (c *rcluster) dial(cfg clientlib.Config) (*clientlib.Client, string) {
	c.t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { pc.Close() })
	cfg.Seeds, cfg.PacketConn, cfg.KeyFile = c.seeds, pc, proctest.KeyFile(c.certs)
	if cfg.OnRevoke == nil {
		cfg.OnRevoke = func(context.Context, *clientlib.Token, clientlib.Revocation) {}
	}
	var cl *clientlib.Client
	for attempt := 0; attempt < 3; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cl, err = clientlib.DialConfig(ctx, cfg)
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		c.t.Fatalf("dial: %v", err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl, pc.LocalAddr().String()
}

// nameIn returns a token name with prefix that hashes to shard.
func nameIn(prefix string, shard uint32) string {
	for i := 0; ; i++ {
		n := fmt.Sprintf("%s/%d", prefix, i)
		if wire.Shard([]byte(n), rShards) == shard {
			return n
		}
	}
}

// namesIn returns n token names per shard, every shard.
func namesIn(prefix string, n int) []string {
	var out []string
	for s := range uint32(rShards) {
		for i := range n {
			out = append(out, nameIn(fmt.Sprintf("%s/%d", prefix, i), s))
		}
	}
	return out
}

// workerMetric returns the value of one sample of a worker's /metrics
// (name with its labels, as exposed), or -1.
func workerMetrics(httpAddr string) (map[string]float64, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "tokend_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}
