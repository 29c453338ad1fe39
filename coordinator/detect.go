package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
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
				Incarnation: w.Incarnation, Waits: true, MinAgeMs: cfg.MinAge.Milliseconds()}, cfg.Timeout)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Debug("deadlock detector: no waits from worker", "worker", w.ID, "err", err)
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
			ans, err := exchangeDeadlock(ctx, w.Handoff, q, cfg.Timeout)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("deadlock detector: victims not delivered", "worker", w.ID, "victims", len(vs), "err", err)
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
func exchangeDeadlock(ctx context.Context, addr string, q *cluster.DeadlockQuery, timeout time.Duration) (*cluster.DeadlockAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// Socket deadlines are in the system's time, not the coordinator's clock.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	b, err := json.Marshal(cluster.DeadlockRequest{Proto: cluster.DeadlockProto, Deadlock: q})
	if err != nil {
		return nil, err
	}
	frame := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	if _, err := conn.Write(append(frame, b...)); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > maxDeadlockAnswer {
		return nil, fmt.Errorf("%w: length %d", errDeadlockFrame, n)
	}
	body, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err != nil {
		return nil, err
	}
	if len(body) != int(n) {
		return nil, io.ErrUnexpectedEOF
	}
	var ans cluster.DeadlockAnswer
	if err := json.Unmarshal(body, &ans); err != nil {
		return nil, fmt.Errorf("%w: %v", errDeadlockFrame, err)
	}
	if ans.Error != "" {
		return nil, fmt.Errorf("coordinator: worker refused: %s", ans.Error)
	}
	return &ans, nil
}
