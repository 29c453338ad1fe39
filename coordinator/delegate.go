package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/coordinator/plan"
	"github.com/tokend/tokend/internal/clock"
)

// settle is how long the leader waits after a registry change for more
// changes before planning, so that a burst of workers starting together gives
// one map version rather than many.
const settle = 20 * time.Millisecond

// delegate runs for one term: it follows the worker registry and writes a new
// delegation map whenever the planner says the current one is out of date.
// Every write is fenced by the election key and by the map's mod revision,
// so neither a deposed leader nor a lost race can overwrite a newer map.
func (c *Coordinator) delegate(ctx context.Context, l *Leadership) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := c.followRegistry(ctx, l)
		if ctx.Err() != nil || errors.Is(err, ErrDeposed) {
			return
		}
		c.log.Warn("delegation loop failed; restarting", "err", err, "in", backoff)
		if !c.pause(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (c *Coordinator) followRegistry(ctx context.Context, l *Leadership) error {
	// The registry and the operators' drain markers, read at one revision.
	resp, err := c.cfg.Client.Txn(ctx).Then(
		clientv3.OpGet(cluster.WorkersPrefix, clientv3.WithPrefix()),
		clientv3.OpGet(cluster.DrainPrefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return err
	}
	workers := map[string]cluster.Worker{}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		c.putWorker(workers, kv.Key, kv.Value)
	}
	drains := map[string]bool{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		drains[strings.TrimPrefix(string(kv.Key), cluster.DrainPrefix)] = true
	}
	if err := c.replan(ctx, l, workers, drains); err != nil {
		return err
	}
	rev := resp.Header.Revision + 1
	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends both watches when this returns
	watch := c.cfg.Client.Watch(wctx, cluster.WorkersPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	dwatch := c.cfg.Client.Watch(wctx, cluster.DrainPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev))
	// settled fires settle after the first change since the last plan;
	// nil while nothing waits to be planned.
	var settled <-chan time.Time
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	changed := func() {
		if settled == nil {
			timer, settled = c.cfg.Clock.NewTimer(settle)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-watch:
			if !ok {
				return errors.New("registry watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("registry watch: %w", err)
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					id := strings.TrimPrefix(string(ev.Kv.Key), cluster.WorkersPrefix)
					delete(workers, id)
					c.log.Info("worker gone", "worker", id)
				} else {
					c.putWorker(workers, ev.Kv.Key, ev.Kv.Value)
				}
			}
			changed()
		case wr, ok := <-dwatch:
			if !ok {
				return errors.New("drain watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("drain watch: %w", err)
			}
			for _, ev := range wr.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), cluster.DrainPrefix)
				if ev.Type == clientv3.EventTypeDelete {
					delete(drains, id)
					c.log.Info("drain of worker withdrawn", "worker", id)
				} else {
					drains[id] = true
					c.log.Info("worker to be drained", "worker", id)
				}
			}
			changed()
		case <-settled:
			settled = nil
			if err := c.replan(ctx, l, workers, drains); err != nil {
				return err
			}
		}
	}
}

func (c *Coordinator) putWorker(workers map[string]cluster.Worker, key, value []byte) {
	var w cluster.Worker
	if err := json.Unmarshal(value, &w); err != nil || w.ID == "" || w.Incarnation == "" {
		c.log.Warn("ignoring malformed worker registration", "key", string(key), "err", err)
		return
	}
	if _, err := strconv.ParseUint(w.Incarnation, 16, 64); err != nil {
		c.log.Warn("ignoring worker registration with a bad incarnation", "key", string(key), "incarnation", w.Incarnation)
		return
	}
	if old, ok := workers[w.ID]; !ok || old.Incarnation != w.Incarnation || old.Draining != w.Draining {
		c.log.Info("worker registered", "worker", w.ID, "udp", w.UDP, "incarnation", w.Incarnation, "draining", w.Draining)
	}
	workers[w.ID] = w
}

// replan reads the current map, plans, and writes the new map if it differs.
// A worker is draining if its registration says so (it is shutting down) or
// an operator's drain marker names it.
func (c *Coordinator) replan(ctx context.Context, l *Leadership, workers map[string]cluster.Worker, drains map[string]bool) error {
	cur, modRev, err := ReadMap(ctx, c.cfg.Client)
	if err != nil {
		return err
	}
	shards := c.ClusterConfig().Shards
	if cur.Shards() == 0 {
		cur = delegation.Map{Owner: make([]int32, shards), Epoch: make([]uint32, shards)}
		for i := range cur.Owner {
			cur.Owner[i] = delegation.NoOwner
		}
	}
	live := make([]plan.Worker, 0, len(workers))
	for _, w := range workers {
		inc, _ := strconv.ParseUint(w.Incarnation, 16, 64)
		live = append(live, plan.Worker{ID: w.ID, Incarnation: inc, Draining: w.Draining || drains[w.ID]})
	}
	next, moves, err := plan.Plan(live, shards, cur)
	if err != nil {
		return fmt.Errorf("planning: %w", err)
	}
	if len(moves) == 0 {
		return nil
	}
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	resp, err := l.Txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(cluster.DelegationKey), "=", modRev)},
		clientv3.OpPut(cluster.DelegationKey, string(b)))
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		// The map changed between our read and our write (another leader's
		// last write landing late): plan again from the map as it is.
		return errMapMoved
	}
	kinds := map[plan.MoveKind]int{}
	for _, m := range moves {
		kinds[m.Kind]++
	}
	c.log.Info("delegation map written", "version", next.Version, "workers", len(next.Workers),
		"assigned", kinds[plan.Assign], "handoffs", kinds[plan.Handoff], "recoveries", kinds[plan.Recovery])
	c.mapVersion.Set(float64(next.Version))
	for k, n := range kinds {
		c.moves.WithLabelValues(k.String()).Add(float64(n))
	}
	return nil
}

// ReadMap reads the delegation map and its mod revision (0 if there is no
// map yet, in which case the map is empty).
func ReadMap(ctx context.Context, cli *clientv3.Client) (delegation.Map, int64, error) {
	resp, err := cli.Get(ctx, cluster.DelegationKey)
	if err != nil {
		return delegation.Map{}, 0, err
	}
	if len(resp.Kvs) == 0 {
		return delegation.Map{}, 0, nil
	}
	var m delegation.Map
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return delegation.Map{}, 0, fmt.Errorf("coordinator: %s: %w", cluster.DelegationKey, err)
	}
	return m, resp.Kvs[0].ModRevision, nil
}
