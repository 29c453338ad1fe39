package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/handoffauth"
	"github.com/tokend/tokend/coordinator/deadlock"
)

// DeadlockConfig configures the leader's deadlock detector (wire/SPEC.md
// section 19). Zero values take the defaults noted.
type DeadlockConfig struct {
	Off bool // no detection across tokens (conversion deadlocks are still answered by the workers)
	// Interval is the time between rounds. Default 100ms.
	Interval time.Duration
	// MinAge: only requests queued at least this long take part, so that a
	// revoke handler that gives its grant back breaks a cycle before it is
	// reported. Default 50ms.
	MinAge time.Duration
	// Timeout bounds one exchange with one worker. Default 1s.
	Timeout time.Duration
}

func (d *DeadlockConfig) defaults() {
	if d.Interval <= 0 {
		d.Interval = 100 * time.Millisecond
	}
	if d.MinAge <= 0 {
		d.MinAge = 50 * time.Millisecond
	}
	if d.Timeout <= 0 {
		d.Timeout = time.Second
	}
}

const (
	// registryEvery is how often the detector re-reads the worker registry.
	registryEvery = time.Second
	// maxDeadlockAnswer bounds a worker's answer frame.
	maxDeadlockAnswer = 64 << 20
)

// detectDeadlocks runs for one term: every Interval it gathers the waits of
// every worker, feeds them to the detector, and tells the workers of the
// victims to answer them DEADLOCK. A round starts only after the previous
// one has ended (the detector's consistency argument needs that).
func (c *Coordinator) detectDeadlocks(ctx context.Context) {
	cfg := c.cfg.Deadlock
	var (
		det       deadlock.Detector
		workers   map[string]cluster.Worker // by detector name (id@incarnation)
		refreshed time.Time
	)
	clk := c.cfg.Clock
	t, tick := clk.NewTimer(cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
		if workers == nil || clk.Since(refreshed) >= registryEvery {
			if ws, err := c.readWorkers(ctx); err == nil {
				workers, refreshed = ws, clk.Now()
			} else if ctx.Err() == nil {
				c.log.Debug("deadlock detector: reading the registry", "err", err)
			}
		}
		waits := c.gatherWaits(ctx, workers, cfg)
		c.deadlockRounds.Inc()
		if victims := det.Round(waits); len(victims) > 0 {
			c.endVictims(ctx, workers, victims, waits, cfg)
		}
		t.Reset(cfg.Interval)
	}
}

// readWorkers reads the registry: the workers the detector can ask.
func (c *Coordinator) readWorkers(ctx context.Context) (map[string]cluster.Worker, error) {
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Deadlock.Timeout)
	defer cancel()
	resp, err := c.cfg.Client.Get(rctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]cluster.Worker{}
	for _, kv := range resp.Kvs {
		var w cluster.Worker
		if json.Unmarshal(kv.Value, &w) != nil || w.ID == "" || w.Incarnation == "" || w.Handoff == "" {
			continue
		}
		out[w.ID+"@"+w.Incarnation] = w
	}
	return out, nil
}

// gatherWaits asks every worker, in parallel, for its waits. A worker that
// does not answer contributes nothing this round.
func (c *Coordinator) gatherWaits(ctx context.Context, workers map[string]cluster.Worker, cfg DeadlockConfig) []deadlock.Wait {
	var (
		mu  sync.Mutex
		out []deadlock.Wait
		wg  sync.WaitGroup
	)
	for name, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ans, err := exchangeDeadlock(ctx, w.Handoff, &cluster.DeadlockQuery{
				Incarnation: w.Incarnation, Waits: true, MinAgeMs: cfg.MinAge.Milliseconds()}, cfg.Timeout, c.handoffKey)
			if err != nil {
				if ctx.Err() == nil {
					c.detectorFailed(w, slog.LevelDebug, "deadlock detector: no waits from worker", err)
				}
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, e := range ans.Waits {
				out = append(out, deadlock.Wait{Worker: name, Shard: e.Shard, Epoch: e.Epoch, Session: e.Session,
					Req: e.Req, Age: e.AgeMs, Holder: e.Holder, Fence: e.Fence, HolderReq: e.HolderReq})
			}
		}()
	}
	wg.Wait()
	return out
}

// endVictims tells each victim's worker to answer it DEADLOCK, and logs
// and counts each one that still waited.
func (c *Coordinator) endVictims(ctx context.Context, workers map[string]cluster.Worker, victims []deadlock.Victim,
	waits []deadlock.Wait, cfg DeadlockConfig) {
	byWorker := map[string][]deadlock.Victim{}
	for _, v := range victims {
		byWorker[v.Worker] = append(byWorker[v.Worker], v)
	}
	var wg sync.WaitGroup
	for name, vs := range byWorker {
		w, ok := workers[name]
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := &cluster.DeadlockQuery{Incarnation: w.Incarnation}
			for _, v := range vs {
				q.Victims = append(q.Victims, cluster.DeadlockVictim{Shard: v.Shard, Epoch: v.Epoch, Session: v.Session, Req: v.Req})
			}
			ans, err := exchangeDeadlock(ctx, w.Handoff, q, cfg.Timeout, c.handoffKey)
			if err != nil {
				if ctx.Err() == nil {
					c.detectorFailed(w, slog.LevelWarn, "deadlock detector: victims not delivered", err, "victims", len(vs))
				}
				return
			}
			for _, v := range vs {
				ended := slices.Contains(ans.Ended, cluster.DeadlockVictim{Shard: v.Shard, Epoch: v.Epoch, Session: v.Session, Req: v.Req})
				kind := cycleKind(v, waits)
				if ended {
					c.deadlocks.WithLabelValues(kind).Inc()
				}
				c.log.Info("deadlock: chose a victim", "worker", w.ID, "shard", v.Shard, "epoch", v.Epoch,
					"session", cluster.SessionString(v.Session), "req", v.Req, "waited_ms", v.Age,
					"cycle", sessionsString(v.Cycle), "kind", kind, "ended", ended)
			}
		}()
	}
	wg.Wait()
}

// cycleKind says whether the waits of v's cycle were reported by one worker
// or several.
func cycleKind(v deadlock.Victim, waits []deadlock.Wait) string {
	seen := map[string]bool{}
	for i, s := range v.Cycle {
		h := v.Cycle[(i+1)%len(v.Cycle)]
		for _, w := range waits {
			if w.Session == s && w.Holder == h {
				seen[w.Worker] = true
				break
			}
		}
	}
	if len(seen) > 1 {
		return "across_workers"
	}
	return "one_worker"
}

func sessionsString(ss []uint64) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = cluster.SessionString(s)
	}
	return strings.Join(parts, " -> ")
}

// exchangeDeadlock sends one query to a worker's handoff address and reads
// its answer (one frame each way: a big-endian u32 length, then JSON).
// With key (handoffauth.Key of the cluster key) the exchange is
// authenticated as a handoff pull is: an answer without a challenge or
// whose seal fails is refused (handoffauth.ErrNoChallenge,
// handoffauth.ErrBadSeal).
func exchangeDeadlock(ctx context.Context, addr string, q *cluster.DeadlockQuery, timeout time.Duration, key []byte) (*cluster.DeadlockAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	frame, _, err := handoffauth.Exchange(ctx, addr, key, func(nonce []byte) ([]byte, error) {
		return handoffauth.MarshalFrame(cluster.DeadlockRequest{Proto: cluster.DeadlockProto, Deadlock: q, Nonce: nonce})
	}, maxDeadlockAnswer)
	if err != nil {
		return nil, err
	}
	var ans cluster.DeadlockAnswer
	if err := handoffauth.UnmarshalFrame(frame, &ans); err != nil {
		return nil, fmt.Errorf("%w: %w", errDeadlockFrame, err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("coordinator: worker refused: %s", ans.Error)
	}
	return &ans, nil
}

// detectorFailed counts and logs an exchange with worker w that failed
// with err: an authentication failure at WARN (at most once a minute per
// worker), anything else at level.
func (c *Coordinator) detectorFailed(w cluster.Worker, level slog.Level, msg string, err error, args ...any) {
	args = append(args, "worker", w.ID, "err", err)
	var reason string
	switch {
	case errors.Is(err, handoffauth.ErrNoChallenge):
		reason = "no_challenge"
	case errors.Is(err, handoffauth.ErrBadSeal):
		reason = "bad_seal"
	default:
		c.log.Log(context.Background(), level, msg, args...)
		return
	}
	c.deadlockAuth.WithLabelValues(reason).Inc()
	level = slog.LevelDebug
	if c.warned.due(w.ID, c.cfg.Clock.Now()) {
		level = slog.LevelWarn
	}
	c.log.Log(context.Background(), level, "deadlock detector: worker's answer not authenticated (do the servers and workers share the cluster key, or all run --insecure?)",
		append(args, "reason", reason)...)
}

const (
	// warnEvery is the least time between two WARN logs about one worker.
	warnEvery = time.Minute
	// maxWarned bounds the workers whose last WARN is remembered.
	maxWarned = 4096
)

// warnings remembers when each worker was last warned about.
type warnings struct {
	mu   sync.Mutex // guards last
	last map[string]time.Time
}

// due reports whether a WARN about id is due at now (none in the last
// warnEvery) and, if so, records it.
func (w *warnings) due(id string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.last[id]; ok && now.Sub(t) < warnEvery {
		return false
	}
	if len(w.last) >= maxWarned {
		for k, t := range w.last {
			if now.Sub(t) >= warnEvery {
				delete(w.last, k)
			}
		}
	}
	if len(w.last) < maxWarned {
		w.last[id] = now
	}
	return true
}
