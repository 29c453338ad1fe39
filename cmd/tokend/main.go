// Command tokend is the tokend daemon.
//
//	tokend            the embedded default: one etcd member, the coordinator and a worker on loopback
//	tokend server     one of three servers: an etcd member, the coordinator, optionally a worker
//	tokend worker     a worker joining an existing cluster through etcd client endpoints
//
// SIGTERM first drains the worker (its shards go to the other workers by
// planned handoffs, at most --drain-timeout), then stops; SIGINT stops at
// once (the shards are then recovered with a grace period). A second signal
// forces the exit.
//
//	tokend up         a local cluster: N servers and M workers as separate processes on loopback
//	tokend certs      the CA and certificates for etcd's TLS and authentication
//
// etcd runs over TLS with client certificates and authentication unless
// --insecure: the all-in-one default creates its CA and certificates in
// <data-dir>/pki on first start; servers and workers use those "tokend
// certs" made (see tls.go). Clients are authenticated with keys unless
// --insecure (see keys.go): the cluster key in cluster.key, client keys
// sealed in etcd, the default one registered from client.key.
//
// Every flag can also be given as a TOKEND_* environment variable or a key in
// a YAML file (--config). Run "tokend <mode> -h" for the list.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/worker"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	m := modeAll
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "server":
			m = modeServer
		case "worker":
			m = modeWorker
		case "up":
			return runUp(args[1:], stdout, stderr)
		case "certs":
			return runCerts(args[1:], stdout, stderr)
		case "version":
			fmt.Fprintln(stdout, "tokend", cluster.Version)
			return 0
		case "help":
			fmt.Fprint(stdout, usageText)
			return 0
		default:
			fmt.Fprintf(stderr, "tokend: unknown command %q\n\n%s", args[0], usageText)
			return 2
		}
		args = args[1:]
	}
	cfg, err := loadConfig(m, args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	notes, err := cfg.resolveAdvertise(hostNetwork(), cfg.peerAddrs(lookup))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	log := newLogger(cfg, stderr)
	for _, n := range notes {
		log.Info(n)
	}
	if err := cfg.prepareTLS(log); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if err := cfg.prepareKeys(log); err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	var drain atomic.Bool // SIGTERM: drain the worker before stopping
	go func() {
		s, ok := <-sigs
		if !ok {
			return
		}
		drain.Store(s == syscall.SIGTERM && cfg.drainTimeout > 0)
		log.Info("shutting down (send the signal again to force)", "signal", s.String(), "drain", drain.Load())
		stop()
		if _, ok := <-sigs; ok {
			fmt.Fprintln(stderr, "tokend: forced exit")
			os.Exit(1)
		}
	}()

	d := &daemon{cfg: cfg, log: log, stdout: stdout}
	if err := d.start(ctx); err != nil {
		log.Error("start failed", "err", err)
		d.stop()
		return 1
	}
	d.printEndpoints()
	d.started.Store(true)
	select {
	case <-ctx.Done():
	case err := <-d.fatal:
		log.Error("fatal error; shutting down", "err", err)
		d.stop()
		return 1
	}
	if drain.Load() {
		d.drain()
	}
	done := make(chan struct{})
	go func() { d.stop(); close(done) }()
	select {
	case <-done:
		log.Info("stopped")
		return 0
	case <-time.After(cfg.shutdownTimeout):
		log.Error("shutdown timed out", "after", cfg.shutdownTimeout)
		return 1
	}
}

const usageText = `Usage:
  tokend [flags]          run everything on loopback: etcd, coordinator, worker (the default)
  tokend server [flags]   run one server of a cluster: etcd member, coordinator, optional worker
  tokend worker [flags]   run a worker that joins a cluster through --etcd-endpoints
  tokend up [flags]       run a local cluster: servers and workers as processes on loopback
  tokend certs [flags]    make the CA and certificates etcd's TLS and authentication need
  tokend version          print the version
Run "tokend <command> -h" for the flags of a command.
`

func newLogger(cfg *config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.logLevel)) // validated already
	opts := &slog.HandlerOptions{Level: level}
	if cfg.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon holds the running parts, so they can be stopped in order.
type daemon struct {
	cfg    *config
	log    *slog.Logger
	stdout io.Writer
	fatal  chan error

	reg    *prometheus.Registry
	httpLn net.Listener
	http   *http.Server
	member *embedded.Member
	client *clientv3.Client
	coord  *coordinator.Coordinator
	keys   *keys.Store // the worker's client keys; nil without a worker or with --insecure
	worker *worker.Worker

	// started is set once start has returned and the banner is printed;
	// the fields above are not written after that, so the HTTP handlers
	// may read them once they have seen started.
	started  atomic.Bool
	stopOnce sync.Once
}

func (d *daemon) start(ctx context.Context) error {
	cfg := d.cfg
	d.fatal = make(chan error, 4)
	d.reg = prometheus.NewRegistry()

	// Bind every listener first, so a port in use fails fast and clearly.
	ln, err := net.Listen("tcp", cfg.httpAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	d.httpLn = ln
	if cfg.advHTTP != "" {
		cfg.advHTTP = fillPort(cfg.advHTTP, ln.Addr())
	}
	d.http = &http.Server{Handler: d.mux(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := d.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.fatal <- fmt.Errorf("http: %w", err)
		}
	}()
	// The client does not block on connecting, so it can exist (and the
	// worker can bind its socket) before the member has started.
	endpoints := cfg.etcdEndpoints
	if cfg.mode != modeWorker {
		endpoints = localURLs(cfg.clientURLs)
	}
	d.client, err = cluster.Dial(cluster.DialConfig{Endpoints: endpoints, TLS: cfg.clientTLS()})
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	if cfg.mode == modeWorker {
		if err := d.checkRegistered(ctx); err != nil {
			return err
		}
	}
	if cfg.mode != modeServer || cfg.runWorker {
		if !cfg.insecure {
			// Loaded by Start once etcd answers; the worker's socket is
			// bound now.
			d.keys = keys.NewStore(d.client, cfg.clusterKey, d.log)
		}
		d.worker, err = worker.New(worker.Config{
			Client: d.client, ID: cfg.workerID, UDPAddr: cfg.udpAddr, HandoffAddr: cfg.handoffAddr, HandoffProto: cfg.handoffProto, NoBundle: cfg.noBundle, HTTPAddr: cfg.advHTTP,
			AdvertiseUDPAddr: cfg.advUDP, AdvertiseHandoffAddr: cfg.advHandoff,
			TTL: cfg.workerTTL, Logger: d.log, Registry: d.reg, Announce: announceConfig(cfg, d.log),
			Auth: cfg.workerAuth(d.keys),
		})
		if err != nil {
			return fmt.Errorf("--udp-addr: %w", err)
		}
	}

	if cfg.mode != modeWorker {
		d.log.Info("starting etcd member", "name", cfg.name, "dir", cfg.memberDir(),
			"client", cfg.advClientURLs, "peer", cfg.advPeerURLs, "listen_client", cfg.clientURLs, "listen_peer", cfg.peerURLs)
		clientTLS, peerTLS, allowedCNs := cfg.memberTLS()
		member, err := embedded.Start(ctx, embedded.Config{
			Name:                cfg.name,
			Dir:                 cfg.memberDir(),
			PeerURLs:            cfg.advPeerURLs,
			ClientURLs:          cfg.advClientURLs,
			ListenPeerURLs:      cfg.peerURLs,
			ListenClientURLs:    cfg.clientURLs,
			InitialCluster:      cfg.initialCluster,
			ClusterState:        cfg.clusterState,
			ClusterToken:        cfg.clusterToken,
			QuotaBackendBytes:   cfg.quotaBytes,
			CompactionRetention: cfg.compaction,
			ClientTLS:           clientTLS,
			PeerTLS:             peerTLS,
			PeerAllowedCNs:      allowedCNs,
		})
		if err != nil {
			return err
		}
		d.member = member
		go func() {
			if err, ok := <-member.Err(); ok && err != nil {
				d.fatal <- fmt.Errorf("etcd: %w", err)
			}
		}()
		if err := d.registerClientKey(ctx, d.client); err != nil {
			return err
		}
		if err := d.publishFenceKey(ctx, d.client); err != nil {
			return err
		}
	}

	if cfg.mode != modeWorker {
		d.coord, err = coordinator.New(coordinator.Config{
			Client:   d.client,
			Name:     cfg.name,
			HTTPAddr: cfg.advHTTP,
			Cluster: cluster.Config{
				Shards:       cfg.shards,
				SessionTTLms: cfg.sessionTTL.Milliseconds(),
				GraceMs:      cfg.grace.Milliseconds(),
				Created:      cluster.Now(time.Now()),
				CreatedBy:    cfg.name,
				Version:      cluster.Version,
			},
			ClusterKey: cfg.coordinatorKey(),
			Logger:     d.log,
			Registry:   d.reg,
		})
		if err != nil {
			return err
		}
		if err := d.coord.Start(ctx); err != nil {
			return err
		}
	}
	if d.worker != nil {
		if d.keys != nil {
			if err := d.keys.Start(ctx); err != nil {
				return err
			}
			if err := d.checkClusterKey(); err != nil {
				return err
			}
		}
		if err := d.worker.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// checkRegistered refuses a loopback worker address when workers already
// registered are on other hosts: their clients could not reach this one.
// (The etcd endpoints said nothing: they are on loopback too, a proxy or
// tunnel, say.) If etcd does not answer in time it checks nothing; the
// worker's start waits for etcd anyway.
func (d *daemon) checkRegistered(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := d.client.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		d.log.Debug("cannot read the registered workers to check the advertised address", "err", err)
		return nil
	}
	var peers []peer
	for _, kv := range resp.Kvs {
		var w cluster.Worker
		if json.Unmarshal(kv.Value, &w) != nil || w.ID == d.cfg.workerID {
			continue
		}
		if ap, err := netip.ParseAddrPort(w.UDP); err == nil {
			peers = append(peers, peer{"registered worker " + w.ID + " at " + w.UDP, ap.Addr().Unmap()})
		}
	}
	return checkLoopback(d.cfg.advUDP, d.cfg.udpAddr, peers)
}

// drain hands the worker's shards to the other workers (planned handoffs,
// no grace period for their clients) before the process stops, bounded by
// --drain-timeout. Without another live worker there is nobody to hand
// them to: it stops at once, as on SIGINT.
func (d *daemon) drain() {
	if d.worker == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.drainTimeout)
	defer cancel()
	start := time.Now()
	st, err := d.worker.Drain(ctx)
	switch {
	case errors.Is(err, worker.ErrNoPeers):
		d.log.Info("no other live worker to drain to; stopping at once")
	case err != nil:
		d.log.Warn("drain incomplete; stopping anyway (the rest is recovered with a grace period)", "err", err,
			"shards", st.Shards, "pending", st.Pending, "took", time.Since(start))
	default:
		d.log.Info("drained: every shard handed to other workers", "took", time.Since(start))
	}
}

// stop shuts the parts down in dependency order: the worker first (its lease
// is revoked so the leader re-delegates at once), then the coordinator
// (resigns), then the etcd client (closing its watches), then the member,
// and the HTTP listener last so /healthz answers until the end.
func (d *daemon) stop() {
	d.stopOnce.Do(func() {
		if d.worker != nil {
			if err := d.worker.Close(); err != nil {
				d.log.Warn("closing worker", "err", err)
			}
		}
		if d.keys != nil {
			d.keys.Close()
		}
		if d.coord != nil {
			d.coord.Close()
		}
		if d.client != nil {
			d.client.Close()
		}
		if d.member != nil {
			if err := d.member.Close(); err != nil {
				d.log.Warn("closing etcd member", "err", err)
			}
		}
		if d.http != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			d.http.Shutdown(ctx)
			cancel()
		}
	})
}

func (d *daemon) ready() (bool, string) {
	if !d.started.Load() {
		return false, "starting"
	}
	if d.cfg.mode != modeWorker && (d.coord == nil || !d.coord.Ready()) {
		return false, "coordinator not started"
	}
	if d.worker != nil && !d.worker.Ready() {
		return false, "worker not registered or its lease is not safe"
	}
	if d.cfg.mode != modeServer || d.cfg.runWorker {
		if d.worker == nil {
			return false, "worker not started"
		}
	}
	return true, "ok"
}

func (d *daemon) mux() *http.ServeMux {
	mux := http.NewServeMux()
	gather := prometheus.Gatherers{d.reg, prometheus.DefaultGatherer}
	mux.Handle("/metrics", promhttp.HandlerFor(gather, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := d.ready()
		if !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, why)
	})
	// tokenctl holders: one token's holders and waiters, from the worker
	// that serves it (worker.ServeToken).
	mux.HandleFunc("/v1/token", func(w http.ResponseWriter, r *http.Request) {
		if !d.started.Load() || d.worker == nil {
			http.Error(w, "no worker running here", http.StatusServiceUnavailable)
			return
		}
		d.worker.ServeToken(w, r)
	})
	if d.cfg.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// printEndpoints writes the banner in one write, so that a reader
// watching for its first line, or a log line from another goroutine, never
// sees half of it.
func (d *daemon) printEndpoints() {
	cfg := d.cfg
	w := new(strings.Builder)
	defer func() { io.WriteString(d.stdout, w.String()) }()
	fmt.Fprintf(w, "tokend %s (%s) is up\n", cluster.Version, cfg.mode)
	if d.member != nil {
		fmt.Fprintf(w, "  etcd client   %s   (data in %s)\n", strings.Join(d.member.ClientEndpoints(), ","), cfg.memberDir())
		fmt.Fprintf(w, "  etcd peer     %s\n", strings.Join(cfg.advPeerURLs, ","))
	} else {
		fmt.Fprintf(w, "  etcd          %s\n", strings.Join(cfg.etcdEndpoints, ","))
	}
	if d.worker != nil {
		fmt.Fprintf(w, "  worker        %s udp://%s\n", d.worker.ID(), d.worker.AdvertisedAddr())
	}
	httpAddr := cfg.advHTTP
	if httpAddr == "" {
		httpAddr = d.httpLn.Addr().String()
	}
	fmt.Fprintf(w, "  http          http://%s/metrics  /healthz  /readyz\n", httpAddr)
	ep := strings.TrimPrefix(strings.TrimPrefix(firstOr(cfg.advClientURLs, cfg.etcdEndpoints), "http://"), "https://")
	if cfg.mode == modeWorker {
		ep = strings.TrimPrefix(strings.TrimPrefix(firstOr(cfg.etcdEndpoints, nil), "http://"), "https://")
	}
	fmt.Fprintf(w, "Try, in another terminal:\n  %s\n", cfg.etcdctlHint(ep))
}

func firstOr(a, b []string) string {
	if len(a) > 0 {
		return a[0]
	}
	if len(b) > 0 {
		return b[0]
	}
	return ""
}

// announceConfig is the worker's multicast announcement config: off unless
// --announce, and off (with a warning) where multicast does not work on the
// interface.
func announceConfig(cfg *config, log *slog.Logger) announce.Config {
	if !cfg.announce {
		return announce.Config{}
	}
	if err := announce.Available(cfg.announceInterface); err != nil {
		log.Warn("multicast announcements disabled", "err", err)
		return announce.Config{}
	}
	return announce.Config{Enabled: true, Group: cfg.announceGroup, Interface: cfg.announceInterface,
		Cluster: cfg.announceCluster, Logger: log}
}
