// Package devcluster starts a whole tokend cluster inside one process, on
// loopback: one embedded etcd member, a coordinator, and any number of
// workers. End-to-end tests, examples and benchmarks use it; the daemon
// (cmd/tokend) wires the same parts from its configuration.
//
// Clients are authenticated (wire/SPEC.md section 20) unless
// Options.Insecure: the cluster makes a cluster key and the client key
// "default" in its data dir, registers the client key in etcd as a server
// does, and gives every worker the cluster key and a keys.Store. Clients
// use KeyFile. (etcd itself runs without TLS here.)
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/testkit/freeport"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker"
)

// Options configure a cluster. Zero values take the defaults noted.
type Options struct {
	Dir        string        // data dir; default a new temp dir, removed by Close
	Workers    int           // default 1
	Shards     int           // default 64 (small, so tests see every shard)
	WorkerTTL  time.Duration // default 2s (etcd's minimum)
	SessionTTL time.Duration // default 2s
	Grace      time.Duration // default 2s
	Logger     *slog.Logger  // default discard
	// Conn, if set, gives worker i its socket (e.g. a faultnet.Conn);
	// otherwise workers listen on 127.0.0.1:0.
	Conn func(i int) (worker.PacketConn, error)
	// Insecure runs the workers without client authentication, as tokend
	// --insecure: no keys are made, clients need none.
	Insecure bool
	// Limits are the workers' (worker.Config.Limits); zero: the defaults.
	Limits worker.Limits
}

// Cluster is a running in-process cluster.
type Cluster struct {
	opts    Options
	tempDir bool
	Member  *embedded.Member
	Client  *clientv3.Client
	Coord   *coordinator.Coordinator

	// authentication; zero with Options.Insecure
	keyDir     string      // holds cluster.key and client.key
	clusterKey auth.Key    // read from keyDir/cluster.key
	keys       *keys.Store // the workers' client keys

	mu      sync.Mutex // guards workers and regs
	workers []*worker.Worker
	regs    []*prometheus.Registry // by worker: its metrics
}

// KeyFile returns the path of the client key file ("default", registered
// in etcd) for clients of the cluster: clientlib.Config.KeyFile, tokenctl
// --key-file. It is "" with Options.Insecure.
func (c *Cluster) KeyFile() string {
	if c.keyDir == "" {
		return ""
	}
	return filepath.Join(c.keyDir, pki.DefaultClientKeyFile)
}

// ClusterKeyFile returns the path of the cluster key file (for tokenctl
// keys --cluster-key-file); "" with Options.Insecure.
func (c *Cluster) ClusterKeyFile() string {
	if c.keyDir == "" {
		return ""
	}
	return filepath.Join(c.keyDir, pki.ClusterKeyFile)
}

// coordinatorKey is the key the coordinator's deadlock detector
// authenticates with: nil with Options.Insecure.
func (c *Cluster) coordinatorKey() *auth.Key {
	if c.keys == nil {
		return nil
	}
	k := c.clusterKey
	return &k
}

// Auth returns what a worker of this cluster authenticates with, for a
// test that starts a worker of its own; nil with Options.Insecure.
func (c *Cluster) Auth() *worker.Auth {
	if c.keys == nil {
		return nil
	}
	return &worker.Auth{ClusterKey: c.clusterKey, Keys: c.keys}
}

func freeURL() (string, error) {
	p, err := freeport.Port()
	if err != nil {
		return "", err
	}
	return "http://127.0.0.1:" + strconv.Itoa(p), nil
}

// Start starts the cluster and waits until every worker serves its shards.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.Shards == 0 {
		o.Shards = 64
	}
	if o.WorkerTTL == 0 {
		o.WorkerTTL = 2 * time.Second
	}
	if o.SessionTTL == 0 {
		o.SessionTTL = 2 * time.Second
	}
	if o.Grace == 0 {
		o.Grace = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Cluster{opts: o}
	if c.opts.Dir == "" {
		d, err := os.MkdirTemp("", "tokend-devcluster-")
		if err != nil {
			return nil, err
		}
		c.opts.Dir, c.tempDir = d, true
	}
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var peer, client string
		if peer, err = freeURL(); err != nil {
			break
		}
		if client, err = freeURL(); err != nil {
			break
		}
		c.Member, err = embedded.Start(ctx, embedded.Config{
			Name: "dev", Dir: filepath.Join(c.opts.Dir, fmt.Sprintf("dev%d.etcd", attempt)),
			PeerURLs: []string{peer}, ClientURLs: []string{client},
			Logger: zap.NewNop(),
		})
		if err == nil {
			break
		}
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	c.Client, err = clientv3.New(clientv3.Config{Endpoints: c.Member.ClientEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.Close()
		return nil, err
	}
	if !o.Insecure {
		if err := c.startAuth(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.Coord, err = coordinator.New(coordinator.Config{
		Client: c.Client, Name: "dev",
		Cluster: cluster.Config{
			Shards: o.Shards, SessionTTLms: o.SessionTTL.Milliseconds(), GraceMs: o.Grace.Milliseconds(),
			Created: cluster.Now(time.Now()), CreatedBy: "devcluster", Version: cluster.Version,
		},
		LeaderTTL:  2 * time.Second,
		ClusterKey: c.coordinatorKey(),
		Logger:     o.Logger,
	})
	if err == nil {
		err = c.Coord.Start(ctx)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	for i := 0; i < o.Workers; i++ {
		if _, err := c.AddWorker(ctx); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitServing(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// startAuth makes the cluster key and the client key "default" in
// <Dir>/pki, registers the client key in etcd and opens the workers'
// key store.
func (c *Cluster) startAuth(ctx context.Context) error {
	dir := filepath.Join(c.opts.Dir, "pki")
	if _, err := pki.WriteKeys(dir); err != nil {
		return fmt.Errorf("devcluster: keys: %w", err)
	}
	_, ck, err := pki.ReadKeyFile(filepath.Join(dir, pki.ClusterKeyFile))
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	name, k, err := pki.ReadKeyFile(filepath.Join(dir, pki.DefaultClientKeyFile))
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	if _, err := keys.Ensure(ctx, c.Client, ck, name, k, time.Now()); err != nil {
		return fmt.Errorf("devcluster: registering the client key: %w", err)
	}
	store, err := keys.OpenStore(ctx, c.Client, ck, c.opts.Logger)
	if err != nil {
		return fmt.Errorf("devcluster: %w", err)
	}
	c.keyDir, c.clusterKey, c.keys = dir, ck, store
	return nil
}

// AddWorker starts one more worker and returns it. It does not wait for
// the rebalance; call WaitServing for that.
func (c *Cluster) AddWorker(ctx context.Context) (*worker.Worker, error) {
	c.mu.Lock()
	i := len(c.workers)
	c.mu.Unlock()
	reg := prometheus.NewRegistry()
	cfg := worker.Config{
		Client: c.Client, ID: fmt.Sprintf("w%d", i+1), UDPAddr: "127.0.0.1:0",
		TTL: c.opts.WorkerTTL, Logger: c.opts.Logger, Registry: reg,
		Auth: c.Auth(), Limits: c.opts.Limits,
	}
	if c.opts.Conn != nil {
		conn, err := c.opts.Conn(i)
		if err != nil {
			return nil, err
		}
		cfg.Conn = conn
	}
	w, err := worker.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := w.Start(ctx); err != nil {
		w.Close()
		return nil, err
	}
	c.mu.Lock()
	c.workers = append(c.workers, w)
	c.regs = append(c.regs, reg)
	c.mu.Unlock()
	return w, nil
}

// Metrics returns the metrics of worker i (the i-th started, from 0).
func (c *Cluster) Metrics(i int) prometheus.Gatherer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.regs[i]
}

// Workers returns the workers started so far (including closed ones).
func (c *Cluster) Workers() []*worker.Worker {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*worker.Worker(nil), c.workers...)
}

// Seeds returns the UDP addresses of the live workers.
func (c *Cluster) Seeds() []string {
	var out []string
	for _, w := range c.Workers() {
		out = append(out, w.Addr().String())
	}
	return out
}

// WaitServing waits until the delegation map assigns every shard to a
// registered worker.
func (c *Cluster) WaitServing(ctx context.Context) error {
	for {
		m, _, err := coordinator.ReadMap(ctx, c.Client)
		if err == nil && allOwnedByLive(ctx, c.Client, m) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devcluster: shards not all served: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func allOwnedByLive(ctx context.Context, cli *clientv3.Client, m delegation.Map) bool {
	if m.Shards() == 0 {
		return false
	}
	resp, err := cli.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		return false
	}
	live := map[delegation.Owner]bool{}
	for _, kv := range resp.Kvs {
		var w cluster.Worker
		if json.Unmarshal(kv.Value, &w) != nil {
			continue
		}
		if inc, err := strconv.ParseUint(w.Incarnation, 16, 64); err == nil {
			live[delegation.Owner{ID: w.ID, Incarnation: inc}] = true
		}
	}
	for s := 0; s < m.Shards(); s++ {
		o, _, ok := m.Lookup(s)
		if !ok || !live[o] {
			return false
		}
	}
	return true
}

// Close stops everything in order: workers, coordinator, client, member.
func (c *Cluster) Close() error {
	var errs []error
	for _, w := range c.Workers() {
		if err := w.Close(); err != nil && !errors.Is(err, worker.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if c.Coord != nil {
		c.Coord.Close()
	}
	if c.keys != nil {
		c.keys.Close()
	}
	if c.Client != nil {
		c.Client.Close()
	}
	if c.Member != nil {
		errs = append(errs, c.Member.Close())
	}
	if c.tempDir {
		os.RemoveAll(c.opts.Dir)
	}
	return errors.Join(errs...)
}
