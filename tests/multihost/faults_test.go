//go:build linux

package multihost

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/netns"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/tests/chaos/load"
	"github.com/tokend/tokend/wire"
)

// The fault suite across a real network: three servers, three workers and
// two client hosts, each in its own network namespace with its own address
// on one bridge (no loopback, no proxy), and the chaos suite's workload
// (tests/chaos/load: a fenced lock set and a porcupine-checked history)
// running on both client hosts while one fault at a time is injected with
// kill, SIGSTOP, iptables in a host's namespace, scaling and member
// replacement. Every scenario must end with a legal history, an intact
// lock set and no held token lost; a planned change (scaling, rolling
// restart) must also fail no operation. TOKEND_FAULTS_SOAK=D repeats the
// whole suite for D.

var (
	fServers = []host{{"s1", "10.77.0.1"}, {"s2", "10.77.0.2"}, {"s3", "10.77.0.3"}, {"s4", "10.77.0.4"}}
	fWorkers = []host{{"w1", "10.77.0.11"}, {"w2", "10.77.0.12"}, {"w3", "10.77.0.13"},
		{"w4", "10.77.0.14"}, {"w5", "10.77.0.15"}, {"w6", "10.77.0.16"}}
	fClients = []host{{"c1", "10.77.0.21"}, {"c2", "10.77.0.22"}}
)

// Short leases, so that a failover takes seconds: etcd's minimum lease is 2 s.
const (
	fWorkerTTL  = 2 * time.Second
	fSessionTTL = 4 * time.Second
	fGrace      = 2 * time.Second
	fShards     = 64
)

type faultScenario struct {
	name    string
	planned bool // a planned change: no operation may fail
	run     func(t *testing.T, c *fcluster)
}

var faultScenarios = []faultScenario{
	{"1-kill-worker", false, func(t *testing.T, c *fcluster) {
		c.wrk["w1"].Kill()
		c.waitHealthy("w1 killed", []string{"w2", "w3"}, 30*time.Second)
	}},
	{"2-pause-worker-past-ttl", false, func(t *testing.T, c *fcluster) {
		c.wrk["w1"].Signal(syscall.SIGSTOP)
		c.waitHealthy("w1 paused", []string{"w2", "w3"}, 30*time.Second)
		time.Sleep(fWorkerTTL) // paused well past its TTL: real time is the fault
		c.wrk["w1"].Signal(syscall.SIGCONT)
		// w1 resumes on a lease that has expired: it must notice before it
		// serves a request. Whether it comes back or exits, the shards must
		// stay with a live owner.
		c.waitHealthy("w1 resumed", nil, 30*time.Second)
	}},
	{"3-etcd-peer-partition", false, func(t *testing.T, c *fcluster) {
		s3 := c.host("s3")
		for _, peer := range []string{"10.77.0.1", "10.77.0.2"} {
			c.iptables(s3, "-A", "INPUT", "-p", "tcp", "-s", peer, "--dport", "2380", "-j", "DROP")
			c.iptables(s3, "-A", "OUTPUT", "-p", "tcp", "-d", peer, "--dport", "2380", "-j", "DROP")
		}
		time.Sleep(6 * time.Second) // the partition lasts: real time is the fault
		c.heal(s3)
		c.waitHealthy("s3 rejoined", []string{"w1", "w2", "w3"}, 30*time.Second)
	}},
	{"4-isolate-etcd-leader", false, func(t *testing.T, c *fcluster) {
		leader := c.etcdLeader()
		h := c.host(leader)
		t.Logf("isolating the etcd leader %s (%s)", leader, h.ip)
		c.iptables(h, "-A", "INPUT", "-i", "e0", "-j", "DROP")
		c.iptables(h, "-A", "OUTPUT", "-o", "e0", "-j", "DROP")
		c.waitHealthy("leader isolated", []string{"w1", "w2", "w3"}, 30*time.Second)
		time.Sleep(4 * time.Second)
		c.heal(h)
		c.waitHealthy("leader back", []string{"w1", "w2", "w3"}, 30*time.Second)
	}},
	{"5-cut-worker-from-etcd", false, func(t *testing.T, c *fcluster) {
		w1 := c.host("w1")
		c.iptables(w1, "-A", "OUTPUT", "-p", "tcp", "--dport", "2379", "-j", "DROP")
		c.waitHealthy("w1 cut from etcd", []string{"w2", "w3"}, 30*time.Second)
		c.heal(w1)
		c.waitHealthy("w1 reconnected", nil, 30*time.Second)
	}},
	{"6-cut-clients-from-worker", false, func(t *testing.T, c *fcluster) {
		for _, ch := range fClients {
			c.iptables(ch, "-A", "OUTPUT", "-d", "10.77.0.11", "-j", "DROP")
			c.iptables(ch, "-A", "INPUT", "-s", "10.77.0.11", "-j", "DROP")
		}
		time.Sleep(3 * time.Second) // the cut lasts: real time is the fault
		for _, ch := range fClients {
			c.heal(ch)
		}
	}},
	{"7-loss-one-way-and-reorder", false, func(t *testing.T, c *fcluster) {
		for _, ch := range fClients {
			c.iptables(ch, "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")
			c.iptables(ch, "-A", "OUTPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.2", "-j", "DROP")
			if err := c.nsRun(ch, "tc", "qdisc", "add", "dev", "e0", "root", "netem", "delay", "5ms", "5ms", "reorder", "25%"); err != nil {
				t.Logf("no reordering on %s (tc netem is not available here): %v", ch.name, err)
			}
		}
		// One way: c1's datagrams to w2 are lost, w2's to c1 are not.
		c.iptables(c.host("c1"), "-A", "OUTPUT", "-p", "udp", "-d", "10.77.0.12", "-j", "DROP")
		time.Sleep(8 * time.Second) // the loss lasts: real time is the fault
		for _, ch := range fClients {
			c.heal(ch)
			_ = c.nsRun(ch, "tc", "qdisc", "del", "dev", "e0", "root")
		}
	}},
	{"8-scale-3-6-2", true, func(t *testing.T, c *fcluster) {
		for _, w := range fWorkers[3:] {
			c.startWorker(w)
		}
		c.waitHealthy("scaled to 6", []string{"w1", "w2", "w3", "w4", "w5", "w6"}, 60*time.Second)
		for _, id := range []string{"w6", "w5", "w4", "w3"} {
			// SIGTERM drains: the worker hands its shards over first.
			c.wrk[id].Stop(syscall.SIGTERM, 30*time.Second)
			delete(c.wrk, id)
			c.waitHealthy(id+" drained", c.workerIDs(), 60*time.Second)
		}
	}},
	{"9-replace-dead-server", false, func(t *testing.T, c *fcluster) {
		c.srv["s3"].Kill()
		delete(c.srv, "s3")
		out, err := c.l.run(fClients[0], 60*time.Second, c.tokenctl, "member", "replace", "--etcd", "10.77.0.1:2379,10.77.0.2:2379",
			"--peer-urls", "https://10.77.0.4:2380", "--name", "s4", "--certs-dir", c.certs, "-o", "json", "s3")
		if err != nil {
			t.Fatalf("tokenctl member replace: %v\n%s", err, out)
		}
		var r struct {
			InitialCluster string `json:"initial_cluster"`
			ClusterState   string `json:"cluster_state"`
		}
		// The output mixes the progress line (stderr) and the JSON (stdout).
		js := out[max(strings.Index(out, "{"), 0):]
		if err := json.Unmarshal([]byte(js), &r); err != nil || r.ClusterState != "existing" {
			t.Fatalf("tokenctl member replace said %q (%v), want JSON with cluster_state existing", out, err)
		}
		c.eps = "10.77.0.1:2379,10.77.0.2:2379,10.77.0.4:2379"
		c.startServer(c.host("s4"), r.InitialCluster, "existing")
		c.srv["s4"].WaitBanner(60 * time.Second)
		c.waitHealthy("s4 joined", []string{"w1", "w2", "w3"}, 60*time.Second)
		if members := c.members(); !slices.Equal(members, []string{"s1", "s2", "s4"}) {
			t.Errorf("members after the replacement: %v, want s1 s2 s4", members)
		}
	}},
	{"10-rolling-restart", true, func(t *testing.T, c *fcluster) {
		for _, s := range fServers[:3] {
			c.srv[s.name].Stop(syscall.SIGTERM, 30*time.Second)
			c.startServer(s, c.initial, "new") // etcd ignores both: the data directory has the cluster
			c.srv[s.name].WaitBanner(60 * time.Second)
			c.waitHealthy(s.name+" restarted", []string{"w1", "w2", "w3"}, 60*time.Second)
		}
	}},
}

// TestFaultsAcrossHosts runs every scenario on a fresh cluster in fresh
// namespaces.
func TestFaultsAcrossHosts(t *testing.T) {
	requireNetns(t)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Skip("no iptables")
	}
	tokend, tokenctl := proctest.Tokend(t), proctest.Tokenctl(t)
	var soak time.Duration
	if s := os.Getenv("TOKEND_FAULTS_SOAK"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TOKEND_FAULTS_SOAK=%q: %v", s, err)
		}
		soak = d
	}
	hosts := append(append(append([]host{}, fServers...), fWorkers...), fClients...)
	began := time.Now()
	for round := 0; round == 0 || time.Since(began) < soak; round++ {
		for i, sc := range faultScenarios {
			seed := uint64(round*100 + i + 1)
			t.Run(fmt.Sprintf("%s/round=%d", sc.name, round), func(t *testing.T) {
				l := newLab(t, hosts...)
				c := startFCluster(t, l, tokend, tokenctl)
				f := c.startLoad(3, seed)
				time.Sleep(3 * time.Second) // the load runs before the fault
				faultAt := time.Now()
				sc.run(t, c)
				healed := time.Since(faultAt)
				time.Sleep(3 * time.Second) // and after it
				f.stop(t, sc.planned, f.w.Hist.Now()-int64(time.Since(faultAt)), healed)
			})
			if t.Failed() {
				return
			}
		}
	}
}

// fcluster is the cluster of one scenario.
type fcluster struct {
	t                *testing.T
	l                *lab
	tokend, tokenctl string
	eps              string // etcd client endpoints for workers and tokenctl
	initial          string // the servers' initial cluster
	certs            string // tokend certs' directory, shared by every host (one filesystem)
	srv, wrk         map[string]*proctest.Proc
	dirs             map[string]string
}

func startFCluster(t *testing.T, l *lab, tokend, tokenctl string) *fcluster {
	c := &fcluster{t: t, l: l, tokend: tokend, tokenctl: tokenctl,
		srv: map[string]*proctest.Proc{}, wrk: map[string]*proctest.Proc{}, dirs: map[string]string{}}
	// TLS and etcd authentication, as tokend runs by default: one CA and
	// a certificate for each server, the spare s4 included.
	c.certs = t.TempDir()
	certArgs := []string{"certs", "--dir", c.certs}
	for _, s := range fServers {
		certArgs = append(certArgs, "--server", s.name+"="+s.ip)
	}
	if out, err := exec.Command(tokend, certArgs...).CombinedOutput(); err != nil {
		t.Fatalf("tokend certs: %v\n%s", err, out)
	}
	var initial, eps []string
	for _, s := range fServers[:3] {
		initial = append(initial, s.name+"=https://"+s.ip+":2380")
		eps = append(eps, s.ip+":2379")
	}
	c.initial, c.eps = strings.Join(initial, ","), strings.Join(eps, ",")
	for _, s := range fServers[:3] {
		c.startServer(s, c.initial, "new")
	}
	for _, s := range fServers[:3] {
		c.srv[s.name].WaitBanner(60 * time.Second) // each waits for a quorum
	}
	for _, w := range fWorkers[:3] {
		c.startWorker(w)
	}
	c.waitHealthy("start", []string{"w1", "w2", "w3"}, 60*time.Second)
	return c
}

func (c *fcluster) host(name string) host {
	for _, h := range append(append(append([]host{}, fServers...), fWorkers...), fClients...) {
		if h.name == name {
			return h
		}
	}
	c.t.Fatalf("no host %s", name)
	return host{}
}

// startServer starts (or restarts, with its data directory) server s;
// wait for its banner, which it prints once it has a quorum.
func (c *fcluster) startServer(s host, initial, state string) {
	dir, ok := c.dirs[s.name]
	if !ok {
		dir = c.t.TempDir()
		c.dirs[s.name] = dir
	}
	args := []string{"server", "--name", s.name, "--data-dir", dir,
		"--peer-urls", "https://0.0.0.0:2380", "--client-urls", "https://0.0.0.0:2379", "--http-addr", "0.0.0.0:7780",
		"--certs-dir", c.certs, "--shards", fmt.Sprint(fShards), "--session-ttl", fSessionTTL.String(), "--grace", fGrace.String(),
		"--worker-ttl", fWorkerTTL.String(), "--log-level", "warn"}
	args = append(args, "--initial-cluster", initial, "--cluster-state", state)
	c.srv[s.name] = c.l.start(s, c.tokend, args...)
}

func (c *fcluster) startWorker(w host) {
	p := c.l.start(w, c.tokend, "worker", "--worker-id", w.name, "--etcd-endpoints", c.eps, "--certs-dir", c.certs,
		"--udp-addr", "0.0.0.0:7700", "--http-addr", "0.0.0.0:7780", "--worker-ttl", fWorkerTTL.String(),
		"--drain-timeout", "20s", "--log-level", "warn")
	p.WaitBanner(60 * time.Second)
	c.wrk[w.name] = p
}

// workerIDs are the workers the test runs now, sorted.
func (c *fcluster) workerIDs() []string {
	var ids []string
	for id := range c.wrk {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// waitHealthy waits until tokenctl status, run from a client host, shows a
// coordinator leader, every shard with a live owner, and (if want is not
// nil) exactly the workers want, each delegated shards. It logs how long
// that took.
func (c *fcluster) waitHealthy(what string, want []string, within time.Duration) {
	c.t.Helper()
	began := time.Now()
	var last string
	var lastIDs []string
	for time.Since(began) < within {
		out, err := c.l.run(fClients[0], 15*time.Second, c.tokenctl, "status", "-o", "json", "--etcd", c.eps, "--certs-dir", c.certs)
		var st status
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && st.Leader != nil && st.Unowned == 0 {
			var ids []string
			delegated := true
			for _, w := range st.Workers {
				ids = append(ids, w.ID)
				delegated = delegated && w.Delegated
			}
			sort.Strings(ids)
			if want == nil || (slices.Equal(ids, want) && delegated) {
				c.t.Logf("%s: healthy after %v (workers %v)", what, time.Since(began).Round(10*time.Millisecond), ids)
				return
			}
		}
		last, lastIDs = out, nil
		for _, w := range st.Workers {
			lastIDs = append(lastIDs, w.ID)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A worker that should be registered, runs, but etcd no longer lists
	// is hung or lost: its goroutines (SIGQUIT makes the Go runtime print
	// them) say which. One that has exited says so in its output.
	for _, id := range want {
		if p := c.wrk[id]; p != nil && !slices.Contains(lastIDs, id) && !p.Exited() {
			c.t.Logf("%s runs but is not registered: SIGQUIT for its goroutines", id)
			_ = p.Process.Signal(syscall.SIGQUIT)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = p.Wait(ctx)
			cancel()
		}
	}
	c.t.Fatalf("%s: not healthy within %v (want workers %v); last status:\n%s", what, within, want, last)
}

// etcdLeader returns the name of the etcd member that leads.
func (c *fcluster) etcdLeader() string {
	c.t.Helper()
	for range 50 {
		out, err := c.l.run(fClients[0], 15*time.Second, c.tokenctl, "member", "list", "-o", "json", "--etcd", c.eps, "--certs-dir", c.certs)
		var ms []struct{ Name, Status string }
		if err == nil && json.Unmarshal([]byte(out), &ms) == nil {
			for _, m := range ms {
				if m.Status == "leader" {
					return m.Name
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatal("no etcd leader found")
	return ""
}

// members returns the etcd members' names, sorted.
func (c *fcluster) members() []string {
	out, err := c.l.run(fClients[0], 15*time.Second, c.tokenctl, "member", "list", "-o", "json", "--etcd", c.eps, "--certs-dir", c.certs)
	var ms []struct{ Name string }
	if err != nil || json.Unmarshal([]byte(out), &ms) != nil {
		c.t.Errorf("tokenctl member list: %v\n%s", err, out)
		return nil
	}
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	sort.Strings(names)
	return names
}

// nsRun runs a command in h's namespace.
func (c *fcluster) nsRun(h host, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", c.l.ns(h.name)}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// iptables adds a rule in h's namespace (gone with the namespace).
func (c *fcluster) iptables(h host, rule ...string) {
	c.t.Helper()
	if err := c.nsRun(h, append([]string{"iptables"}, rule...)...); err != nil {
		c.t.Fatal(err)
	}
}

// heal removes every iptables rule in h's namespace.
func (c *fcluster) heal(h host) {
	c.t.Helper()
	if err := c.nsRun(h, "iptables", "-F"); err != nil {
		c.t.Fatal(err)
	}
}

// fload is the workload on the client hosts.
type fload struct {
	t      *testing.T
	w      *load.Workload
	cancel context.CancelFunc
	halt   chan struct{} // closed: clients start no new operation
	wg     sync.WaitGroup

	mu      sync.Mutex
	clients []*clientlib.Client
	conns   []interface{ Close() error }
}

// startLoad starts perHost clients on each client host, with sockets in
// that host's namespace and the first three workers as seeds.
func (c *fcluster) startLoad(perHost int, seed uint64) *fload {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fload{t: c.t, w: load.New(), cancel: cancel, halt: make(chan struct{})}
	var seeds []string
	for _, w := range fWorkers[:3] {
		seeds = append(seeds, w.ip+":7700")
	}
	dial := func(ch host) *clientlib.Client {
		pc, err := netns.ListenPacket(c.l.ns(ch.name), "udp4", "0.0.0.0:0")
		if err != nil {
			c.t.Error(err)
			return nil
		}
		dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
		defer dcancel()
		cl, err := clientlib.DialConfig(dctx, clientlib.Config{Seeds: seeds, PacketConn: pc, KeyFile: proctest.KeyFile(c.certs)})
		if err != nil {
			pc.Close()
			return nil
		}
		f.mu.Lock()
		f.clients, f.conns = append(f.clients, cl), append(f.conns, pc)
		f.mu.Unlock()
		return cl
	}
	id := 0
	for _, ch := range fClients {
		for range perHost {
			cl := dial(ch)
			if cl == nil {
				c.t.Fatalf("cannot open a session from %s", ch.name)
			}
			cfg := load.Config{Tokens: load.TokenNames("mh", 12), Ops: 1 << 30, OpTimeout: 15 * time.Second,
				Modes: []wire.Mode{wire.EX, wire.EX, wire.PR}, Think: 2 * time.Millisecond, Register: true,
				Stop: f.halt,
				// A client whose session ended starts a new one; what it held
				// stays lost, and that is reported.
				Redial: func() *clientlib.Client {
					for ctx.Err() == nil {
						if cl := dial(ch); cl != nil {
							return cl
						}
						load.SleepCtx(ctx, 200*time.Millisecond)
					}
					return nil
				}}
			cid, rng := id, rand.New(rand.NewPCG(seed, uint64(id)))
			f.wg.Go(func() { f.w.RunClient(ctx, cid, cl, rng, cfg) })
			id++
		}
	}
	return f
}

// stop ends the load and judges it: the history must be legal, the lock
// set intact, no held token lost, and (planned) no operation failed. It
// logs the longest time without a completed acquire after the fault.
func (f *fload) stop(t *testing.T, planned bool, faultAt int64, healed time.Duration) {
	close(f.halt) // the operations in progress finish (each within OpTimeout)
	f.wg.Wait()
	f.cancel()
	f.mu.Lock()
	for _, cl := range f.clients {
		cl.Close()
	}
	for _, pc := range f.conns {
		pc.Close()
	}
	f.mu.Unlock()
	f.w.Verify(t, time.Minute)
	var rets []int64
	f.w.Hist.Each(func(in check.Input, out check.Output, call, ret int64) {
		if in.Kind == check.OpAcquire && ret != check.Forever && ret >= faultAt {
			rets = append(rets, ret)
		}
	})
	slices.Sort(rets)
	var gap int64
	prev := faultAt
	for _, r := range rets {
		gap = max(gap, r-prev)
		prev = r
	}
	done, failed, lost := f.w.N.Completed.Load(), f.w.N.Failed.Load(), f.w.N.Lost.Load()
	t.Logf("figures: %d operations checked, %d failed, %d held tokens lost, %d acquires after the fault; fault to healthy %v; longest time without a completed acquire %v",
		done, failed, lost, len(rets), healed.Round(10*time.Millisecond), time.Duration(gap).Round(time.Millisecond))
	if done == 0 || len(rets) == 0 {
		t.Errorf("the load did nothing (%d operations, %d after the fault): the scenario tested nothing", done, len(rets))
	}
	if lost != 0 {
		t.Errorf("%d held tokens were lost", lost)
	}
	if planned && failed != 0 {
		t.Errorf("%d operations failed during a planned change", failed)
	}
}
