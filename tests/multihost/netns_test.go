//go:build linux

package multihost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/proctest"
)

// nsPrefix starts the name of every namespace this test makes:
// tkmh<pid>-<host>. A run deletes the namespaces of runs whose process is
// gone.
const nsPrefix = "tkmh"

type host struct{ name, ip string }

var (
	servers = []host{{"s1", "10.77.0.1"}, {"s2", "10.77.0.2"}, {"s3", "10.77.0.3"}}
	workers = []host{{"w1", "10.77.0.11"}, {"w2", "10.77.0.12"}}
	client  = host{"c", "10.77.0.21"}
)

// TestThreeServersTwoWorkers runs the README's "Three servers" commands on
// five hosts (network namespaces) and a client on a sixth, as they stand:
// etcd over TLS with authentication, the certificates made once by
// "tokend certs" in the operator's directory and copied where each command
// looks for them by default (a server's <data-dir>/pki, a worker's
// ./tokend-data/pki; the hosts share one filesystem, so each gets a
// directory of its own). The servers listen on 0.0.0.0 and the workers on
// 0.0.0.0:7700, and nobody is told an address to advertise: each must
// derive its own, and the client must be able to acquire and release
// through them.
func TestThreeServersTwoWorkers(t *testing.T) {
	requireNetns(t)
	began := time.Now()
	tokend, tokenctl := proctest.Tokend(t), proctest.Tokenctl(t)
	l := newLab(t, append(append(append([]host{}, servers...), workers...), client)...)
	t.Logf("network ready after %v", time.Since(began).Round(time.Millisecond))

	// The operator makes the certificates, in ./certs of their directory.
	op := t.TempDir()
	certArgs := []string{"certs", "--dir", "certs"}
	for _, s := range servers {
		certArgs = append(certArgs, "--server", s.name+"="+s.ip)
	}
	if out, err := l.runIn(client, op, 15*time.Second, tokend, certArgs...); err != nil {
		t.Fatalf("tokend certs: %v\n%s", err, out)
	}
	certs := filepath.Join(op, "certs")

	var initial, endpoints []string
	for _, s := range servers {
		initial = append(initial, s.name+"=https://"+s.ip+":2380")
		endpoints = append(endpoints, s.ip+":2379")
	}
	eps := strings.Join(endpoints, ",")
	var srv []*proctest.Proc
	for _, s := range servers {
		dataDir := t.TempDir()
		copyCerts(t, certs, filepath.Join(dataDir, "pki"), "ca.crt", "server-"+s.name+".crt", "server-"+s.name+".key", "tokend.crt", "tokend.key",
			"cluster.key", "client.key")
		srv = append(srv, l.start(s, tokend, "server", "--name", s.name, "--data-dir", dataDir,
			"--peer-urls", "https://0.0.0.0:2380", "--client-urls", "https://0.0.0.0:2379", "--http-addr", "0.0.0.0:7780",
			"--initial-cluster", strings.Join(initial, ",")))
	}
	for _, p := range srv {
		p.WaitBanner(40 * time.Second)
	}
	for i, p := range srv {
		for _, want := range []string{"etcd client   https://" + servers[i].ip + ":2379", "etcd peer     https://" + servers[i].ip + ":2380",
			"http          http://" + servers[i].ip + ":7780/metrics"} {
			if !strings.Contains(p.Out.String(), want) {
				t.Errorf("%s's banner lacks %q:\n%s", p.Name, want, p.Out)
			}
		}
	}
	t.Logf("servers up after %v", time.Since(began).Round(time.Millisecond))

	// Each worker runs in a directory of its own, with the worker's part
	// of the certificates in ./tokend-data/pki.
	wdirs := map[string]string{}
	for _, w := range workers {
		wdirs[w.name] = t.TempDir()
		copyCerts(t, certs, filepath.Join(wdirs[w.name], "tokend-data", "pki"), "ca.crt", "tokend.crt", "tokend.key", "cluster.key")
	}

	// A worker left on the loopback default in a cluster on other hosts
	// is refused, naming the flag, instead of registering 127.0.0.1.
	out, err := l.runIn(workers[0], wdirs[workers[0].name], 15*time.Second, tokend, "worker", "--etcd-endpoints", eps)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "--udp-addr") {
		t.Errorf("a loopback worker in a cluster on other hosts: %v, want exit status 2 naming --udp-addr:\n%s", err, out)
	}

	var wrk []*proctest.Proc
	for _, w := range workers {
		wrk = append(wrk, l.startIn(w, wdirs[w.name], tokend, "worker", "--worker-id", w.name, "--etcd-endpoints", eps,
			"--udp-addr", "0.0.0.0:7700", "--http-addr", "0.0.0.0:7780"))
	}
	for i, p := range wrk {
		p.WaitBanner(30 * time.Second)
		want := "worker udp advertised as " + workers[i].ip + ":7700: the address of e0, the interface with the IPv4 default route"
		if !strings.Contains(p.Out.String(), want) {
			t.Errorf("%s did not log why it chose its address (%q):\n%s", p.Name, want, p.Out)
		}
	}
	t.Logf("workers up after %v", time.Since(began).Round(time.Millisecond))

	// tokenctl status, from the client's host in the operator's directory,
	// until the map gives every shard to the two workers.
	var st status
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := l.runIn(client, op, 15*time.Second, tokenctl, "status", "-o", "json", "--etcd", eps, "--certs-dir", "certs")
		st = status{}
		if err == nil {
			err = json.Unmarshal([]byte(out), &st)
		}
		if err == nil && st.Leader != nil && len(st.Workers) == 2 && st.Unowned == 0 && st.Workers[0].Delegated && st.Workers[1].Delegated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the map did not give every shard to the two workers within 30s: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	text, err := l.runIn(client, op, 15*time.Second, tokenctl, "status", "--etcd", eps, "--certs-dir", "certs")
	if err != nil {
		t.Fatalf("tokenctl status: %v\n%s", err, text)
	}
	t.Logf("tokenctl status --etcd %s --certs-dir certs (from %s):\n%s", eps, client.ip, text)
	for _, bad := range []string{"0.0.0.0", "127.0.0.1", "[::]", "warning"} {
		if strings.Contains(text, bad) {
			t.Errorf("tokenctl status shows %q", bad)
		}
	}

	// Every registered address is the host's own, reachable one.
	for i, w := range st.Workers {
		if w.ID != workers[i].name {
			t.Fatalf("worker %d is %q, want %q", i, w.ID, workers[i].name)
		}
		ip := workers[i].ip
		if w.UDP != ip+":7700" || w.HTTP != ip+":7780" {
			t.Errorf("%s registered udp %q http %q, want %s:7700 and %s:7780", w.ID, w.UDP, w.HTTP, ip, ip)
		}
		if h, port, err := net.SplitHostPort(w.Handoff); err != nil || h != ip || port == "0" {
			t.Errorf("%s registered handoff %q, want %s:<port>", w.ID, w.Handoff, ip)
		}
	}
	if h, port, err := net.SplitHostPort(st.Leader.HTTP); err != nil || port != "7780" || !isServer(h) {
		t.Errorf("the leader key says http %q, want a server's address:7780", st.Leader.HTTP)
	}
	for _, u := range []string{"http://" + st.Leader.HTTP + "/readyz", "http://" + st.Workers[0].HTTP + "/readyz", "http://" + st.Workers[1].HTTP + "/readyz"} {
		if out, err := l.runEnv(client, "", 15*time.Second, []string{httpGetEnv + "=" + u}, os.Args[0]); err != nil {
			t.Errorf("GET %s from %s: %v: %s", u, client.ip, err, out)
		}
	}

	// Acquire and release from the client's host, through either worker as
	// the seed; the map sends the client on to the owner of each name's
	// shard, at the address it registered.
	for i := range 6 {
		seed := workers[i%2].ip + ":7700"
		name := "multihost-" + strconv.Itoa(i)
		out, err := l.run(client, 30*time.Second, tokenctl, "acquire", "--seeds", seed, "--wait", "10s", "--for", "10ms",
			"--key-file", filepath.Join(certs, "client.key"), name)
		if err != nil || !strings.Contains(out, "acquired "+name) || !strings.Contains(out, "released "+name) {
			t.Fatalf("tokenctl acquire --seeds %s %s: %v\n%s", seed, name, err, out)
		}
	}
	t.Logf("6 acquire/release pairs done after %v", time.Since(began).Round(time.Millisecond))

	// An orderly stop: workers first, then the servers one at a time.
	for _, p := range wrk {
		p.Process.Signal(syscall.SIGINT)
	}
	for _, p := range wrk {
		waitExit(t, p, 15*time.Second)
	}
	for i := len(srv) - 1; i >= 0; i-- {
		srv[i].Process.Signal(syscall.SIGINT)
		waitExit(t, srv[i], 15*time.Second)
	}
	t.Logf("all stopped after %v", time.Since(began).Round(time.Millisecond))
}

func isServer(h string) bool {
	for _, s := range servers {
		if s.ip == h {
			return true
		}
	}
	return false
}

// status is the part of "tokenctl status -o json" the test reads.
type status struct {
	Leader *struct {
		Name string `json:"name"`
		HTTP string `json:"http"`
	} `json:"leader"`
	Unowned int `json:"unowned_shards"`
	Workers []struct {
		ID        string `json:"id"`
		UDP       string `json:"udp"`
		HTTP      string `json:"http"`
		Handoff   string `json:"handoff"`
		Delegated bool   `json:"delegated"`
	} `json:"workers"`
}

// lab is the test's network: one namespace per host, each with a veth
// pair to a bridge in a namespace of its own ("sw"), on 10.77.0.0/24.
type lab struct {
	t      *testing.T
	prefix string
}

func (l *lab) ns(name string) string { return l.prefix + name }

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// requireNetns skips the test where it cannot make network namespaces,
// before anything is built.
func requireNetns(t *testing.T) {
	if testing.Short() {
		t.Skip("short: starts eight processes in network namespaces")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command (iproute2)")
	}
}

// newLab makes a namespace for each of hosts, or skips the test where it
// cannot. Every namespace is deleted by t.Cleanup, after the processes in
// it are gone; deleting one removes its end of the veth pair and the
// bridge with it. Nothing is added to the host's own namespace.
func newLab(t *testing.T, hosts ...host) *lab {
	requireNetns(t)
	removeLeftovers(t)
	l := &lab{t: t, prefix: nsPrefix + strconv.Itoa(os.Getpid()) + "-"}
	add := func(name string) {
		ns := l.ns(name)
		if err := ip("netns", "add", ns); err != nil {
			t.Skipf("cannot create a network namespace here: %v", err)
		}
		t.Cleanup(func() {
			if err := ip("netns", "del", ns); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	must := func(args ...string) {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	sw := l.ns("sw")
	add("sw")
	must("-n", sw, "link", "add", "br0", "type", "bridge")
	must("-n", sw, "link", "set", "br0", "up")
	for _, h := range hosts {
		ns := l.ns(h.name)
		add(h.name)
		must("link", "add", "e0", "netns", ns, "type", "veth", "peer", "name", h.name, "netns", sw)
		must("-n", sw, "link", "set", h.name, "master", "br0", "up")
		must("-n", ns, "addr", "add", h.ip+"/24", "dev", "e0")
		must("-n", ns, "link", "set", "e0", "up")
		must("-n", ns, "link", "set", "lo", "up")
		// A default route, as a real host has, so that tokend derives
		// its address from it. It leads only to the bridge's namespace,
		// which has no way out.
		must("-n", ns, "route", "add", "default", "dev", "e0")
	}
	return l
}

// removeLeftovers deletes the namespaces of earlier runs of this test
// whose process has gone (a run killed before its cleanup).
func removeLeftovers(t *testing.T) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidS, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if !ok || err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			t.Logf("deleting namespace %s left by an earlier run", name)
			if err := ip("netns", "del", name); err != nil {
				t.Log(err)
			}
		}
	}
}

// start runs bin in h's namespace as a process of the test (see
// proctest.Start). ip netns exec executes bin in its own process, so the
// PID is bin's.
func (l *lab) start(h host, bin string, args ...string) *proctest.Proc {
	l.t.Helper()
	return l.startIn(h, "", bin, args...)
}

// startIn is start with dir as the working directory ("": the test's).
func (l *lab) startIn(h host, dir, bin string, args ...string) *proctest.Proc {
	t := l.t
	t.Helper()
	t.Logf("%s (%s): %s %s", h.name, h.ip, bin, strings.Join(args, " "))
	return proctest.Start(t, proc.Spec{Name: h.name, Path: bin, Args: args, Dir: dir, Wrap: l.wrap(h)})
}

// copyCerts copies the named files of the directory "tokend certs" made
// into dir (created 0700), as an operator copies them to a host; keys stay
// 0600.
func copyCerts(t *testing.T, from, dir string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(from, n))
		if err != nil {
			t.Fatal(err)
		}
		perm := os.FileMode(0o644)
		if strings.HasSuffix(n, ".key") {
			perm = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, perm); err != nil {
			t.Fatal(err)
		}
	}
}

// wrap is the command that runs a program in h's namespace.
func (l *lab) wrap(h host) []string { return []string{"ip", "netns", "exec", l.ns(h.name)} }

// waitExit waits for p's exit and checks that it was clean.
func waitExit(t *testing.T, p *proctest.Proc, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		t.Errorf("%s did not stop within %v of SIGINT", p.Name, within)
	} else if st := p.State(); !st.Success() {
		t.Errorf("%s: %v", p.Name, st)
	}
}

// run runs bin in h's namespace and returns its output, killing it after
// timeout.
func (l *lab) run(h host, timeout time.Duration, bin string, args ...string) (string, error) {
	return l.runEnv(h, "", timeout, nil, bin, args...)
}

// runIn is run with dir as the working directory.
func (l *lab) runIn(h host, dir string, timeout time.Duration, bin string, args ...string) (string, error) {
	return l.runEnv(h, dir, timeout, nil, bin, args...)
}

func (l *lab) runEnv(h host, dir string, timeout time.Duration, env []string, bin string, args ...string) (string, error) {
	p, err := proc.Start(proc.Spec{Name: h.name, Path: bin, Args: args, Env: env, Dir: dir, Wrap: l.wrap(h), Pdeathsig: syscall.SIGKILL})
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if p.Wait(ctx) != nil {
		p.Kill()
		return p.Out.String(), fmt.Errorf("killed after %v: %w", timeout, p.Err())
	}
	return p.Out.String(), p.Err()
}
