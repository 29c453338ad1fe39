// Package coordinator runs on every tokend server. One coordinator at a time
// is the leader, chosen with etcd's concurrency.Election under
// /tokend/leader/; the leader alone writes the delegation map, and every write
// it makes is a transaction fenced by its election key
// (CreateRevision(key) == rev), so a deposed leader can change nothing. The
// coordinator is not on the data path: token operations never wait for it.
//
// Every leader also runs the deadlock detector (detect.go, wire/SPEC.md
// section 19): it gathers the wait-for edges of every worker each round,
// finds cycles with package deadlock, and tells the worker of each victim to
// answer that request DEADLOCK. With Config.ClusterKey its exchanges are
// authenticated both ways (package cluster/handoffauth). Metrics:
// deadlock_rounds_total, deadlocks_total{kind} and
// deadlock_auth_failures_total{reason}.
package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/handoffauth"
	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/wire/auth"
)

// Config configures a Coordinator.
type Config struct {
	Client   *clientv3.Client // required; the caller owns and closes it after Close
	Name     string           // this server's name (required)
	HTTPAddr string           // advertised in the leader value, for people; a specific host:port or ""
	// Cluster is the config to bootstrap with if the cluster has none yet.
	Cluster cluster.Config
	// LeaderTTL is the TTL of the election session's lease: how long a dead
	// leader keeps its title. Default 5s, minimum 2s.
	LeaderTTL time.Duration
	// OnLeader, if set, runs while this coordinator is the leader, beside
	// the delegation loop every leader runs. Its
	// context ends when leadership is lost or the coordinator closes. Writes
	// must go through Leadership.Txn to be fenced.
	OnLeader func(ctx context.Context, l *Leadership)
	// Deadlock configures the deadlock detector every leader runs.
	Deadlock DeadlockConfig
	// ClusterKey authenticates the deadlock detector's queries to the
	// workers and their answers (wire/SPEC.md section 18, as a pull);
	// nil = unauthenticated, for a cluster run with --insecure, whose
	// workers answer without a key.
	ClusterKey *auth.Key
	Logger     *slog.Logger
	Registry   prometheus.Registerer // metrics are registered here if set
	// Clock runs the coordinator's timers (retry backoffs, the settle
	// delay, the detector's rounds); nil = clock.Real. The deadlines of
	// its etcd calls and sockets are in the system's time.
	Clock clock.Clock
}

// Coordinator campaigns for leadership and runs OnLeader while it leads.
type Coordinator struct {
	cfg Config
	log *slog.Logger

	isLeader   prometheus.Gauge
	elections  prometheus.Counter
	mapVersion prometheus.Gauge
	moves      *prometheus.CounterVec

	deadlockRounds prometheus.Counter
	deadlocks      *prometheus.CounterVec // kind: one_worker, across_workers
	deadlockAuth   *prometheus.CounterVec // reason: no_challenge, bad_seal
	handoffKey     []byte                 // handoffauth.Key of Config.ClusterKey, or nil
	warned         warnings               // the detector's WARN logs about each worker

	mu      sync.Mutex // guards the fields below
	leading *Leadership
	cluster cluster.Config
	ready   bool

	cancel context.CancelFunc
	done   chan struct{}
}

// Leadership is one term as leader.
type Leadership struct {
	cli  *clientv3.Client
	key  string
	rev  int64
	Term int64 // the election key's create revision: strictly increases across terms
}

// Txn runs ops in a transaction that succeeds only while this term's
// election key still exists with its creation revision, i.e. while this
// coordinator is still the leader. It returns ErrDeposed if the fence failed.
func (l *Leadership) Txn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (*clientv3.TxnResponse, error) {
	all := append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)}, cmps...)
	resp, err := l.cli.Txn(ctx).If(all...).Then(ops...).Commit()
	if err != nil {
		return nil, err
	}
	if !resp.Succeeded {
		// Tell a lost fence from a failed caller comparison.
		g, err := l.cli.Get(ctx, l.key)
		if err == nil && (len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != l.rev) {
			return resp, ErrDeposed
		}
	}
	return resp, nil
}

// New returns a Coordinator; Start begins campaigning.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Client == nil {
		return nil, errors.New("coordinator: Config.Client is required")
	}
	if cfg.Name == "" {
		return nil, errors.New("coordinator: Config.Name is required")
	}
	if host, _, err := net.SplitHostPort(cfg.HTTPAddr); cfg.HTTPAddr != "" && (err != nil || host == "" || net.ParseIP(host).IsUnspecified()) {
		return nil, fmt.Errorf("coordinator: Config.HTTPAddr %q: want a specific host:port to advertise (not 0.0.0.0 or ::)", cfg.HTTPAddr)
	}
	if cfg.LeaderTTL == 0 {
		cfg.LeaderTTL = 5 * time.Second
	}
	if cfg.LeaderTTL < 2*time.Second {
		return nil, fmt.Errorf("coordinator: LeaderTTL %v below etcd's 2s minimum", cfg.LeaderTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Clock = clock.Or(cfg.Clock)
	cfg.Deadlock.defaults()
	c := &Coordinator{
		cfg: cfg,
		log: cfg.Logger.With("component", "coordinator", "server", cfg.Name),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "is_leader",
			Help: "1 while this server's coordinator is the leader.",
		}),
		elections: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "elections_won_total",
			Help: "Terms this coordinator has won.",
		}),
		mapVersion: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "map_version",
			Help: "Version of the last delegation map this coordinator wrote as leader.",
		}),
		moves: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "shard_moves_total",
			Help: "Shard moves written by this coordinator, by kind (assign, handoff, recovery).",
		}, []string{"kind"}),
		deadlockRounds: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "deadlock_rounds_total",
			Help: "Rounds of the leader's deadlock detector (waits gathered from every worker).",
		}),
		deadlocks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "deadlocks_total",
			Help: "Wait-for cycles broken by the leader's detector (a victim answered DEADLOCK), by kind (one_worker, across_workers).",
		}, []string{"kind"}),
		deadlockAuth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tokend", Subsystem: "coordinator", Name: "deadlock_auth_failures_total",
			Help: "Workers' answers to the deadlock detector refused because they were not authenticated, by reason (no_challenge: the worker holds no key; bad_seal: the answer's MAC is missing or wrong).",
		}, []string{"reason"}),
		warned: warnings{last: map[string]time.Time{}},
	}
	if cfg.ClusterKey != nil {
		c.handoffKey = handoffauth.Key(*cfg.ClusterKey)
	}
	if cfg.Registry != nil {
		for _, m := range []prometheus.Collector{c.isLeader, c.elections, c.mapVersion, c.moves, c.deadlockRounds, c.deadlocks, c.deadlockAuth} {
			if err := cfg.Registry.Register(m); err != nil {
				return nil, fmt.Errorf("coordinator: registering metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Start bootstraps the cluster config (if none exists) and starts
// campaigning in the background. It returns once the config is in force.
func (c *Coordinator) Start(ctx context.Context) error {
	got, created, err := cluster.Bootstrap(ctx, c.cfg.Client, c.cfg.Cluster)
	if err != nil {
		return err
	}
	if created {
		c.log.Info("bootstrapped cluster config", "shards", got.Shards, "session_ttl", got.SessionTTL(), "grace", got.Grace())
	} else if got.Shards != c.cfg.Cluster.Shards {
		c.log.Warn("cluster config already exists; its shard count wins", "shards", got.Shards, "ignored", c.cfg.Cluster.Shards)
	}
	c.mu.Lock()
	c.cluster = got
	c.ready = true
	c.mu.Unlock()

	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.done = make(chan struct{})
	go c.run(runCtx)
	return nil
}

// ClusterConfig returns the cluster config in force.
func (c *Coordinator) ClusterConfig() cluster.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cluster
}

// IsLeader reports whether this coordinator currently believes it leads.
// Only fenced writes (Leadership.Txn) make that belief safe to act on.
func (c *Coordinator) IsLeader() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading != nil
}

// Ready reports whether Start has completed.
func (c *Coordinator) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// Close resigns leadership (so another server takes over at once instead of
// after LeaderTTL) and stops campaigning. It does not close the client.
func (c *Coordinator) Close() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	<-c.done
}

func (c *Coordinator) run(ctx context.Context) {
	defer close(c.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.term(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.log.Warn("election round failed; retrying", "err", err, "in", backoff)
		}
		if !c.pause(ctx, backoff) {
			return
		}
		if err != nil {
			backoff = min(2*backoff, 2*time.Second)
		} else {
			backoff = 100 * time.Millisecond
		}
	}
}

// term runs one session: campaign, lead until the session or ctx ends.
func (c *Coordinator) term(ctx context.Context) error {
	ttl := int(c.cfg.LeaderTTL.Round(time.Second) / time.Second)
	sess, err := concurrency.NewSession(c.cfg.Client, concurrency.WithTTL(ttl), concurrency.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	defer func() {
		// Revoke the lease so a successor need not wait for the TTL.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := c.cfg.Client.Revoke(rctx, sess.Lease()); err != nil && ctx.Err() == nil {
			c.log.Debug("revoking election lease", "err", err)
		}
		sess.Orphan()
	}()
	el := concurrency.NewElection(sess, cluster.ElectionPrefix)
	val, _ := json.Marshal(cluster.Leader{Name: c.cfg.Name, HTTP: c.cfg.HTTPAddr, Since: cluster.Now(c.cfg.Clock.Now())})

	campaignCtx, stopCampaign := context.WithCancel(ctx)
	defer stopCampaign()
	go func() {
		// A campaign blocks until we win; give it up if the session dies.
		select {
		case <-sess.Done():
			stopCampaign()
		case <-campaignCtx.Done():
		}
	}()
	if err := el.Campaign(campaignCtx, string(val)); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	l := &Leadership{cli: c.cfg.Client, key: el.Key(), rev: el.Rev(), Term: el.Rev()}
	c.log.Info("became leader", "key", l.key, "term", l.Term)
	c.mu.Lock()
	c.leading = l
	c.mu.Unlock()
	c.isLeader.Set(1)
	c.elections.Inc()
	defer func() {
		c.mu.Lock()
		c.leading = nil
		c.mu.Unlock()
		c.isLeader.Set(0)
	}()

	leadCtx, stopLeading := context.WithCancel(ctx)
	defer stopLeading()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.delegate(leadCtx, l)
	}()
	if !c.cfg.Deadlock.Off {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.detectDeadlocks(leadCtx)
		}()
	}
	if c.cfg.OnLeader != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.cfg.OnLeader(leadCtx, l)
		}()
	}
	// Leadership ends when the session's lease is gone, when our election
	// key is deleted (an operator, or expiry seen before sess.Done), or when
	// we close.
	watch := c.cfg.Client.Watch(leadCtx, l.key, clientv3.WithRev(l.rev))
	end := func(why string) error {
		stopLeading()
		wg.Wait()
		if why != "" {
			c.log.Warn("lost leadership: " + why)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			c.log.Info("resigning leadership")
			return end("")
		case <-sess.Done():
			return end("election session expired")
		case resp, ok := <-watch:
			if !ok || resp.Canceled {
				return end("watch on the election key ended")
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					return end("election key deleted")
				}
			}
		}
	}
}

// LeaderInfo reads who leads now (any server may ask).
func LeaderInfo(ctx context.Context, cli *clientv3.Client) (cluster.Leader, string, error) {
	resp, err := cli.Get(ctx, cluster.LeaderPrefix, clientv3.WithFirstCreate()...)
	if err != nil {
		return cluster.Leader{}, "", err
	}
	if len(resp.Kvs) == 0 {
		return cluster.Leader{}, "", ErrNotLeader
	}
	var l cluster.Leader
	if err := json.Unmarshal(resp.Kvs[0].Value, &l); err != nil {
		return cluster.Leader{}, "", fmt.Errorf("coordinator: malformed leader value: %w", err)
	}
	return l, string(resp.Kvs[0].Key), nil
}

// pause waits d on the coordinator's clock; it reports false if ctx ended
// first.
func (c *Coordinator) pause(ctx context.Context, d time.Duration) bool {
	t, ch := c.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-ch:
		return true
	}
}
