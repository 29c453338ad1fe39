package main

// "tokend up" runs a whole cluster on loopback as separate processes (N
// servers forming one etcd cluster, M workers) so that a person can kill any
// of them and watch the rest recover. It is a supervisor and nothing more:
// planUp decides names, ports and arguments (pure); the supervisor starts
// the children by re-executing this binary, merges their output, reports
// exits, and stops them in order. It never restarts a child.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/internal/proc"
)

const (
	upHost = "127.0.0.1"
	// upReadyTimeout bounds the wait for every child's /readyz at start.
	upReadyTimeout = 60 * time.Second
	// upStopMargin is what up allows beyond the children's own
	// --shutdown-timeout before it kills one that has not exited.
	upStopMargin = 2 * time.Second
	// upLayoutFile records what a data dir was created with.
	upLayoutFile = "up.json"
)

// upConfig is the configuration of "tokend up". It comes from flags only;
// the children inherit the environment, so TOKEND_* variables for options
// up does not set (TOKEND_SHARDS, say) reach them, while what up sets is
// passed as flags and wins: every address, listened on and advertised, and
// whether and with which certificates etcd runs TLS.
type upConfig struct {
	servers         int
	workers         int
	dataDir         string
	basePort        int
	workerTTL       time.Duration
	sessionTTL      time.Duration
	grace           time.Duration
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	insecure        bool // etcd without TLS and authentication, as tokend --insecure
}

// certsDir is where up keeps the cluster's CA and certificates, which
// every child uses: <data-dir>/pki.
func (c *upConfig) certsDir() string { return filepath.Join(c.dataDir, "pki") }

// scheme is the etcd URLs' scheme.
func (c *upConfig) scheme() string {
	if c.insecure {
		return "http"
	}
	return "https"
}

// parseUp parses and validates the flags of "tokend up". Every error names
// its flag and wraps errConfig; -h returns flag.ErrHelp.
func parseUp(args []string, usage io.Writer) (*upConfig, error) {
	c := &upConfig{
		servers:         3,
		workers:         3,
		dataDir:         "./tokend-up-data",
		basePort:        12379,
		workerTTL:       5 * time.Second,
		sessionTTL:      10 * time.Second,
		grace:           5 * time.Second,
		shutdownTimeout: 10 * time.Second,
		logFormat:       "text",
		logLevel:        "info",
	}
	fs := flag.NewFlagSet("tokend up", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.Var(intVal(&c.servers), "servers", "number of servers (etcd member + coordinator each), 1-7; odd is recommended")
	fs.Var(intVal(&c.workers), "workers", "number of worker processes, 0-64")
	fs.Var(stringVal(&c.dataDir), "data-dir", "directory for every server's etcd data (<data-dir>/sN.etcd), the certificates (<data-dir>/pki) and the logs (<data-dir>/logs)")
	fs.Var(intVal(&c.basePort), "base-port", "first of the consecutive loopback ports used: 3 per server (etcd client, etcd peer, HTTP), then 2 per worker (UDP, HTTP)")
	fs.Var(durationVal(&c.workerTTL), "worker-ttl", "worker lease TTL: how fast a killed worker is noticed")
	fs.Var(durationVal(&c.sessionTTL), "session-ttl", "client session TTL (fixed when the cluster is first created)")
	fs.Var(durationVal(&c.grace), "grace", "recovery grace period for a crashed worker's shards (fixed when the cluster is first created)")
	fs.Var(durationVal(&c.shutdownTimeout), "shutdown-timeout", "each child's orderly shutdown limit; up kills a child that takes longer")
	fs.Var(stringVal(&c.logFormat), "log-format", "the children's log format: text or json")
	fs.Var(stringVal(&c.logLevel), "log-level", "the children's log level: debug, info, warn or error")
	fs.Var(boolVal(&c.insecure), "insecure", "run etcd without TLS and without authentication (http:// URLs, no certificates), as tokend --insecure; "+
		"without it up makes a CA and certificates in <data-dir>/pki and every child uses them")
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage of tokend up:\n")
		fs.PrintDefaults()
		fmt.Fprintf(usage, "\nup starts the servers and workers as separate processes of this binary on %s,\n"+
			"merges their output (also in <data-dir>/logs/<name>.log) and stops them in order on Ctrl-C.\n"+
			"It takes flags only; the children inherit the environment.\n", upHost)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errConfig, fs.Arg(0))
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// portCount is how many consecutive ports from basePort the cluster uses.
func (c *upConfig) portCount() int { return 3*c.servers + 2*c.workers }

// validate checks every value; it creates the data dir last, once the rest
// is known to be good.
func (c *upConfig) validate() error {
	if c.servers < 1 || c.servers > 7 {
		return bad("servers", "%d is outside [1, 7]", c.servers)
	}
	if c.workers < 0 || c.workers > 64 {
		return bad("workers", "%d is outside [0, 64]", c.workers)
	}
	if last := c.basePort + c.portCount() - 1; c.basePort < 1 || last > 65535 {
		return bad("base-port", "%d: the %d ports needed (%d to %d) must lie within 1-65535", c.basePort, c.portCount(), c.basePort, last)
	}
	if c.workerTTL < 2*time.Second {
		return bad("worker-ttl", "must be at least 2s (etcd's minimum lease TTL), got %v", c.workerTTL)
	}
	if c.sessionTTL < 2*time.Second {
		return bad("session-ttl", "must be at least 2s (etcd's minimum lease TTL), got %v", c.sessionTTL)
	}
	if c.grace < 0 {
		return bad("grace", "must not be negative, got %v", c.grace)
	}
	if c.shutdownTimeout <= 0 {
		return bad("shutdown-timeout", "must be positive, got %v", c.shutdownTimeout)
	}
	switch c.logFormat {
	case "text", "json":
	default:
		return bad("log-format", "%q is not text or json", c.logFormat)
	}
	switch c.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log-level", "%q is not debug, info, warn or error", c.logLevel)
	}
	if c.dataDir == "" {
		return bad("data-dir", "must not be empty")
	}
	if err := checkWritableDir(c.dataDir); err != nil {
		return bad("data-dir", "%v", err)
	}
	return nil
}

// upLayout is what a data dir was created with. A restart must match it:
// the etcd members keep their peer URLs (derived from --base-port) and the
// member list (from --servers) in their data.
type upLayout struct {
	Servers  int `json:"servers"`
	BasePort int `json:"base_port"`
}

// prepareDataDir reports whether the data dir already holds a cluster (a
// member dir of any server), checks that it was created with the same
// --servers, --base-port and --insecure, and records the first two for next
// time. With a cluster there, every server starts with --cluster-state
// existing, also one whose member dir is missing: it has been in the member
// list since the bootstrap, so it must join, not bootstrap anew.
func prepareDataDir(c *upConfig) (existing bool, err error) {
	for i := 1; i <= 7; i++ {
		if _, err := os.Stat(filepath.Join(c.dataDir, serverName(i)+".etcd")); err == nil {
			existing = true
		}
	}
	if existing {
		if err := checkDataDirTLS(c); err != nil {
			return false, err
		}
	}
	want := upLayout{Servers: c.servers, BasePort: c.basePort}
	path := filepath.Join(c.dataDir, upLayoutFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil && existing:
		var got upLayout
		if err := json.Unmarshal(b, &got); err != nil {
			return false, bad("data-dir", "%s: %v (remove the data dir to start afresh)", path, err)
		}
		if got.Servers != want.Servers {
			return false, bad("servers", "%d, but %s holds a cluster of %d servers: use --servers %d, or another --data-dir", want.Servers, c.dataDir, got.Servers, got.Servers)
		}
		if got.BasePort != want.BasePort {
			return false, bad("base-port", "%d, but the servers in %s were created with --base-port %d: use that, or another --data-dir", want.BasePort, c.dataDir, got.BasePort)
		}
		return true, nil
	case err == nil, errors.Is(err, os.ErrNotExist):
		b, _ := json.Marshal(want)
		if err := os.WriteFile(path, append(b, '\n'), 0o600); err != nil {
			return false, bad("data-dir", "%v", err)
		}
		return existing, nil
	default:
		return false, bad("data-dir", "%v", err)
	}
}

// checkDataDirTLS checks that the cluster in the data dir was made as c
// would make it: with TLS (its CA is in <data-dir>/pki) unless --insecure.
// The members keep the peer URLs they registered, http:// or https://, so
// a cluster cannot change sides by a restart.
func checkDataDirTLS(c *upConfig) error {
	ca := filepath.Join(c.certsDir(), pki.CACertFile)
	hasCA := fileExists(ca)
	switch {
	case !c.insecure && !hasCA:
		return bad("data-dir", "%s holds a cluster made without TLS (with --insecure, or by an older tokend up): its members registered http:// peer URLs, and %s is missing. "+
			"Run tokend up --insecure to keep it that way, or remove %s (or choose another --data-dir) for a new cluster with TLS and authentication",
			c.dataDir, ca, c.dataDir)
	case c.insecure && hasCA:
		return bad("insecure", "%s holds a cluster made with TLS (%s exists) and its etcd requires authentication: drop --insecure, or choose another --data-dir",
			c.dataDir, ca)
	}
	return nil
}

func serverName(i int) string { return "s" + strconv.Itoa(i) }
func workerName(i int) string { return "w" + strconv.Itoa(i) }

// upChild is one planned process of the cluster.
type upChild struct {
	name   string   // s1.. or w1..
	server bool     // a server (etcd member + coordinator), else a worker
	addr   string   // a server's etcd client URL, a worker's udp://host:port
	http   string   // host:port of /healthz, /readyz, /metrics
	tcp    []int    // TCP ports it listens on, checked before anything starts
	udp    []int    // UDP ports, likewise
	args   []string // its command line after the binary
}

// planUp lays out the cluster: server i (from 1) uses basePort+3(i-1) for
// its etcd client URL, the next port for its peer URL and the next for
// HTTP; worker j then uses two ports, UDP and HTTP. Unless --insecure,
// every child uses the certificates and keys in <data-dir>/pki, which must
// exist before they start (see writeLocalCerts, pki.WriteKeys). It is pure.
func planUp(c *upConfig, existing bool) []upChild {
	port := c.basePort
	next := func() int { port++; return port - 1 }
	hostPort := func(p int) string { return net.JoinHostPort(upHost, strconv.Itoa(p)) }
	url := func(p int) string { return c.scheme() + "://" + hostPort(p) }
	state := "new"
	if existing {
		state = "existing"
	}

	type srv struct{ client, peer, http int }
	srvs := make([]srv, c.servers)
	var initial, endpoints []string
	for i := range srvs {
		srvs[i] = srv{next(), next(), next()}
		initial = append(initial, serverName(i+1)+"="+url(srvs[i].peer))
		endpoints = append(endpoints, hostPort(srvs[i].client))
	}
	common := []string{
		"--log-format", c.logFormat,
		"--log-level", c.logLevel,
		"--shutdown-timeout", c.shutdownTimeout.String(),
	}
	// Given as flags, so that they win over TOKEND_INSECURE or
	// TOKEND_CERTS_DIR in up's environment. (The servers would find
	// <data-dir>/pki by default, the workers would not.)
	if c.insecure {
		common = append(common, "--insecure")
	} else {
		common = append(common, "--insecure=false", "--certs-dir", c.certsDir())
	}
	var out []upChild
	for i, s := range srvs {
		name := serverName(i + 1)
		out = append(out, upChild{
			name:   name,
			server: true,
			addr:   url(s.client),
			http:   hostPort(s.http),
			tcp:    []int{s.client, s.peer, s.http},
			args: append([]string{"server",
				"--name", name,
				"--data-dir", c.dataDir,
				"--client-urls", url(s.client),
				"--peer-urls", url(s.peer),
				"--http-addr", hostPort(s.http),
				// Advertised as listened on, also when a TOKEND_ADVERTISE_*
				// variable in up's environment would say otherwise.
				"--advertise-client-urls", url(s.client),
				"--advertise-peer-urls", url(s.peer),
				"--advertise-http-addr", hostPort(s.http),
				"--initial-cluster", strings.Join(initial, ","),
				"--cluster-state", state,
				"--worker=false",
				"--session-ttl", c.sessionTTL.String(),
				"--grace", c.grace.String(),
			}, common...),
		})
	}
	for j := range c.workers {
		name := workerName(j + 1)
		udp, web := next(), next()
		out = append(out, upChild{
			name: name,
			addr: "udp://" + hostPort(udp),
			http: hostPort(web),
			tcp:  []int{web},
			udp:  []int{udp},
			args: append([]string{"worker",
				"--worker-id", name,
				"--etcd-endpoints", strings.Join(endpoints, ","),
				"--udp-addr", hostPort(udp),
				"--http-addr", hostPort(web),
				"--advertise-udp-addr", hostPort(udp),
				"--advertise-http-addr", hostPort(web),
				"--advertise-handoff-addr", net.JoinHostPort(upHost, "0"),
				"--worker-ttl", c.workerTTL.String(),
			}, common...),
		})
	}
	return out
}

// checkPorts fails fast, naming --base-port, if a planned port is taken.
func checkPorts(kids []upChild, basePort int) error {
	for _, k := range kids {
		for _, p := range k.tcp {
			l, err := net.Listen("tcp", net.JoinHostPort(upHost, strconv.Itoa(p)))
			if err != nil {
				return fmt.Errorf("--base-port %d: TCP port %d (for %s) is not free: %v; choose another --base-port", basePort, p, k.name, err)
			}
			l.Close()
		}
		for _, p := range k.udp {
			l, err := net.ListenPacket("udp", net.JoinHostPort(upHost, strconv.Itoa(p)))
			if err != nil {
				return fmt.Errorf("--base-port %d: UDP port %d (for %s) is not free: %v; choose another --base-port", basePort, p, k.name, err)
			}
			l.Close()
		}
	}
	return nil
}

// runUp is "tokend up": it returns the exit code (0 after an orderly stop on
// a signal, 1 on a failed start, a forced stop or when every child has
// exited, 2 on bad flags).
func runUp(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseUp(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if cfg.servers%2 == 0 {
		fmt.Fprintf(stderr, "tokend up: warning: --servers %d is even: it tolerates no more failures than %s would; an odd number is recommended\n", cfg.servers, count(cfg.servers-1, "server"))
	}
	existing, err := prepareDataDir(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	plan := planUp(cfg, existing)
	if err := checkPorts(plan, cfg.basePort); err != nil {
		fmt.Fprintln(stderr, "tokend up:", err)
		return 1
	}
	if !cfg.insecure {
		// The servers' names are their only hosts: every address is loopback.
		var servers []pki.Server
		for i := 1; i <= cfg.servers; i++ {
			servers = append(servers, pki.Server{Name: serverName(i)})
		}
		if _, err := writeLocalCerts(cfg.certsDir(), servers); err != nil {
			fmt.Fprintln(stderr, "tokend up: certificates:", err)
			return 1
		}
		// The cluster key every child reads, and the client key the
		// servers register.
		if _, err := pki.WriteKeys(cfg.certsDir()); err != nil {
			fmt.Fprintln(stderr, "tokend up: keys:", err)
			return 1
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "tokend up: cannot find its own binary to start the children:", err)
		return 1
	}
	if err := os.MkdirAll(filepath.Join(cfg.dataDir, "logs"), 0o700); err != nil {
		fmt.Fprintln(stderr, "tokend up: --data-dir:", err)
		return 1
	}

	s := &supervisor{
		cfg:   cfg,
		exe:   exe,
		con:   &console{w: stdout},
		exits: make(chan *upProc, len(plan)),
		// Two: the first signal starts the orderly stop, the second forces
		// it; neither may be dropped while up is busy.
		sigs: make(chan os.Signal, 2),
	}
	width := 0
	for _, k := range plan {
		width = max(width, len(k.name))
		s.procs = append(s.procs, &upProc{upChild: k})
	}
	for _, p := range s.procs {
		p.prefix = fmt.Sprintf("%-*s | ", width, p.name)
	}
	signal.Notify(s.sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(s.sigs)
	s.spawn = proc.NewSpawner()
	// Closed last: its thread is the children's parent (see proc.Spawner),
	// and every path through run has reaped every child by then.
	defer s.spawn.Close()

	what := "starting a new cluster"
	if existing {
		what = "restarting the cluster"
	}
	s.con.printf("tokend up: %s in %s (logs in %s): %s, %s, ports %d-%d\n",
		what, cfg.dataDir, filepath.Join(cfg.dataDir, "logs"), count(cfg.servers, "server"), count(cfg.workers, "worker"), cfg.basePort, cfg.basePort+cfg.portCount()-1)
	return s.run()
}

// upProc is a planned child and, once started, its process.
type upProc struct {
	upChild
	prefix string // "s1  | ", the same width for all

	proc *proc.Process
	err  error // how it exited: written by its waiter before it sends on exits

	alive bool // owned by the supervisor's goroutine
}

// supervisor owns the children. Its methods run on one goroutine (run's);
// the per-child goroutines only copy output and report the exit on exits.
type supervisor struct {
	cfg   *upConfig
	exe   string
	con   *console
	spawn *proc.Spawner
	procs []*upProc
	live  int // children started and not yet reaped

	// exits gets each started child once, after it has exited and its
	// output is drained; it has room for all, so a waiter never blocks.
	exits chan *upProc
	sigs  chan os.Signal
}

func (s *supervisor) group(servers bool) []*upProc {
	var g []*upProc
	for _, p := range s.procs {
		if p.server == servers {
			g = append(g, p)
		}
	}
	return g
}

// run starts the servers, then the workers, waits for each group to be
// ready, prints where everything runs, and then reports exits until a
// signal. Every path out has reaped every child.
func (s *supervisor) run() int {
	for _, servers := range []bool{true, false} {
		g := s.group(servers)
		for _, p := range g {
			if err := s.start(p); err != nil {
				s.con.printf("tokend up: starting %s: %v\n", p.name, err)
				return s.shutdown(1)
			}
		}
		if code, ok := s.waitReady(g); !ok {
			return code
		}
	}
	s.printTable()
	for {
		select {
		case p := <-s.exits:
			s.reaped(p)
			s.con.printf("%s exited: %s (not restarted: tokend up never restarts a child)\n", p.name, exitText(p.err))
			if s.live == 0 {
				s.con.printf("tokend up: every child has exited; nothing left to watch\n")
				return 1
			}
		case sig := <-s.sigs:
			s.con.printf("tokend up: %v: stopping the workers, then the servers (send it again to kill everything at once)\n", sig)
			return s.shutdown(0)
		}
	}
}

// start starts p, with its output going line by line to the console (with
// p's prefix) and to <data-dir>/logs/<name>.log. The child is in a process
// group of its own, so a terminal's Ctrl-C reaches only up, which stops the
// children in order; on Linux it gets SIGTERM should up die, even by
// SIGKILL, so no child outlives it (elsewhere children outlive an up that
// is killed with SIGKILL).
func (s *supervisor) start(p *upProc) error {
	logf, err := os.OpenFile(filepath.Join(s.cfg.dataDir, "logs", p.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- %s tokend up started %s: %s\n", time.Now().Format(time.RFC3339), p.name, strings.Join(p.args, " "))
	// One writer for stdout and stderr: one pipe keeps them in order. A
	// last line without a newline gets one.
	lines := proc.NewLineWriter(func(line []byte) {
		line = append(line, '\n')
		logf.Write(line) // a full disk must not stop the console
		s.con.write(append([]byte(p.prefix), line...))
	})
	child, err := proc.Start(proc.Spec{
		Name: p.name, Path: s.exe, Args: p.args,
		Stdout: lines, Stderr: lines, Keep: -1,
		Setpgid: true, Pdeathsig: syscall.SIGTERM, Spawner: s.spawn,
	})
	if err != nil {
		logf.Close()
		return err
	}
	p.proc, p.alive = child, true
	s.live++
	go func() {
		<-child.Done() // after its output has been copied
		lines.Flush()  // its last lines come before the news of its exit
		logf.Close()
		p.err = child.Err()
		s.exits <- p
	}()
	return nil
}

// reaped records that p has exited.
func (s *supervisor) reaped(p *upProc) {
	p.alive = false
	s.live--
}

// waitReady waits until every child of g answers /readyz with 200. On a
// child's exit, a signal or the timeout it stops everything and returns
// ok=false with the exit code.
func (s *supervisor) waitReady(g []*upProc) (code int, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), upReadyTimeout)
	defer cancel()
	readyc := make(chan *upProc, len(g)) // each poller sends at most once
	pending := map[*upProc]bool{}
	for _, p := range g {
		pending[p] = true
		go func() {
			if p.proc.WaitReady(ctx, p.http) == nil {
				readyc <- p
			}
		}()
	}
	for len(pending) > 0 {
		select {
		case p := <-readyc:
			delete(pending, p)
		case p := <-s.exits:
			s.reaped(p)
			s.con.printf("tokend up: %s exited while starting: %s (its log: %s); stopping\n",
				p.name, exitText(p.err), filepath.Join(s.cfg.dataDir, "logs", p.name+".log"))
			return s.shutdown(1), false
		case sig := <-s.sigs:
			s.con.printf("tokend up: %v while starting: stopping (send it again to kill everything at once)\n", sig)
			return s.shutdown(0), false
		case <-ctx.Done():
			var names []string
			for _, p := range g {
				if pending[p] {
					names = append(names, p.name)
				}
			}
			s.con.printf("tokend up: not ready within %v: %s (see their output above); stopping\n", upReadyTimeout, strings.Join(names, ", "))
			return s.shutdown(1), false
		}
	}
	return 0, true
}

// shutdown stops every live child and returns code; a second signal kills
// everything at once and makes it 1. The workers stop first, together (they
// revoke their leases while etcd is still there). The servers stop one at a
// time, last first: an etcd leader that stops hands its leadership to a
// live member, which is quick only if that member is not stopping too (else
// etcd waits about 7 s for the transfer to time out). Only the last server
// stops without a quorum, which costs it up to 2 s in resigning.
func (s *supervisor) shutdown(code int) int {
	steps := [][]*upProc{s.group(false)}
	servers := s.group(true)
	for i := len(servers) - 1; i >= 0; i-- {
		steps = append(steps, servers[i:i+1])
	}
	for _, g := range steps {
		if !s.stop(g) {
			return 1
		}
	}
	s.con.printf("tokend up: all stopped\n")
	return code
}

// stop sends SIGINT to the live children of g and waits for them, killing
// any that outlives its own shutdown timeout. It returns false if a second
// signal made it kill every child instead. (SIGINT, not SIGTERM: the whole
// cluster is going away, so a worker should not first drain its shards to
// workers that are stopping too.)
func (s *supervisor) stop(g []*upProc) bool {
	inG := map[*upProc]bool{}
	for _, p := range g {
		if p.alive {
			p.proc.Signal(syscall.SIGINT)
			inG[p] = true
		}
	}
	wait := s.cfg.shutdownTimeout + upStopMargin
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for left := len(inG); left > 0; {
		select {
		case p := <-s.exits:
			s.reaped(p)
			if inG[p] {
				left--
				s.con.printf("%s stopped: %s\n", p.name, exitText(p.err))
			} else {
				s.con.printf("%s exited: %s\n", p.name, exitText(p.err))
			}
		case <-timer.C:
			for p := range inG {
				if p.alive {
					s.con.printf("tokend up: %s did not stop within %v; killing it\n", p.name, wait)
					p.proc.Signal(syscall.SIGKILL)
				}
			}
		case sig := <-s.sigs:
			s.con.printf("tokend up: %v again: killing every child\n", sig)
			s.killAll()
			return false
		}
	}
	return true
}

// killAll sends SIGKILL to every live child and reaps them all.
func (s *supervisor) killAll() {
	for _, p := range s.procs {
		if p.alive {
			p.proc.Signal(syscall.SIGKILL)
		}
	}
	for s.live > 0 {
		p := <-s.exits
		s.reaped(p)
		s.con.printf("%s killed: %s\n", p.name, exitText(p.err))
	}
}

// count is "1 server", "3 servers".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// printTable shows what runs where and what to try.
func (s *supervisor) printTable() {
	var b strings.Builder
	fmt.Fprintf(&b, "tokend up: %s and %s are ready (data and logs in %s)\n", count(s.cfg.servers, "server"), count(s.cfg.workers, "worker"), s.cfg.dataDir)
	tw := tabwriter.NewWriter(&b, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tPID\tETCD CLIENT / UDP\tHTTP")
	var endpoints, seeds []string
	for _, p := range s.procs {
		fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", p.name, p.proc.PID(), p.addr, p.http)
		_, hostPort, _ := strings.Cut(p.addr, "://")
		if p.server {
			endpoints = append(endpoints, hostPort)
		} else {
			seeds = append(seeds, hostPort)
		}
	}
	tw.Flush()
	eps := strings.Join(endpoints, ",")
	victim := s.procs[len(s.procs)-1] // the last worker, or the last server without workers
	fmt.Fprintf(&b, "Try, in another terminal:\n")
	fmt.Fprintf(&b, "  kill -9 %d    crash %s (any pid above will do) and watch the others recover\n", victim.proc.PID(), victim.name)
	if s.cfg.insecure {
		fmt.Fprintf(&b, "  go run ./cmd/tokenctl status --etcd %s --insecure\n", eps)
		fmt.Fprintf(&b, "  go tool etcdctl --endpoints=%s member list\n", eps)
	} else {
		fmt.Fprintf(&b, "  go run ./cmd/tokenctl status --etcd %s --certs-dir %s\n", eps, s.cfg.certsDir())
		fmt.Fprintf(&b, "  go tool etcdctl --endpoints=%s %s member list\n", eps, etcdctlFlags(s.cfg.certsDir()))
	}
	if len(seeds) > 0 {
		keyFlag := " --key-file " + filepath.Join(s.cfg.certsDir(), pki.DefaultClientKeyFile)
		if s.cfg.insecure {
			keyFlag = " --insecure"
		}
		fmt.Fprintf(&b, "  go run ./cmd/tokenctl acquire --seeds %s%s foo\n", strings.Join(seeds, ","), keyFlag)
	}
	fmt.Fprintf(&b, "Nothing is restarted automatically. Ctrl-C stops the workers, then the servers; a second Ctrl-C kills them all.\n")
	s.con.printf("%s", b.String())
}

// console writes whole lines from the children and from up itself to one
// writer, so they never interleave mid-line.
type console struct {
	mu sync.Mutex // guards w
	w  io.Writer
}

func (c *console) write(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.w.Write(b) // nowhere to report a broken terminal
}

func (c *console) printf(format string, args ...any) {
	c.write(fmt.Appendf(nil, format, args...))
}
