package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
)

// DrainStatus is how far a drain has come.
type DrainStatus struct {
	Shards  int // shards the map still gives this worker, or that it serves
	Pending int // shards given up whose state the new owner has not pulled yet
}

// Drain marks this worker draining in its registration, so that the leader
// moves all its shards to other workers by planned handoffs, and waits until
// the map gives it no shard and the new owners have pulled their state (or
// given up on it), or ctx ends (ErrDrainIncomplete). The mark stays on
// every later registration of this process. The worker keeps serving
// whatever it still owns meanwhile; call Close afterwards.
func (w *Worker) Drain(ctx context.Context) (DrainStatus, error) {
	w.mu.Lock()
	lease, doc := w.lease, w.doc
	peers := 0
	for id, r := range w.registry {
		if id != w.cfg.ID && !r.Draining {
			peers++
		}
	}
	if peers > 0 {
		w.draining = true
	}
	w.mu.Unlock()
	if lease == nil {
		return DrainStatus{}, ErrClosed
	}
	if peers == 0 {
		return w.drainStatus(), ErrNoPeers
	}
	if !doc.Draining {
		doc.Draining = true
		if err := markDraining(ctx, w.cfg.Client, lease, doc); err != nil {
			return w.drainStatus(), err
		}
		w.mu.Lock()
		if w.lease == lease {
			w.doc.Draining = true
		}
		w.mu.Unlock()
		w.log.Info("draining: registration marked; waiting for the leader to move the shards away")
	}
	t, tc := w.clk.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		st := w.drainStatus()
		if st.Shards == 0 && st.Pending == 0 {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("%w: %d shards still delegated here, %d handoffs not pulled: %w",
				ErrDrainIncomplete, st.Shards, st.Pending, ctx.Err())
		case <-tc:
		}
	}
}

// drainStatus counts what keeps a drain from being done.
func (w *Worker) drainStatus() DrainStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	var st DrainStatus
	for s, sh := range w.shards {
		if sh != nil {
			st.Shards++
		} else if o, _, ok := w.dmap.Lookup(s); ok && o == w.me {
			st.Shards++
		}
	}
	st.Pending = w.outstandingHandoffs(w.mono(w.clk.Now()))
	return st
}

// markDraining rewrites the worker's registration with draining set, only
// while the key is still on this incarnation's lease.
func markDraining(ctx context.Context, cli *clientv3.Client, l *ownLease, doc cluster.Worker) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	key := cluster.WorkerKey(doc.ID)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.LeaseValue(key), "=", l.id)).
		Then(clientv3.OpPut(key, string(b), clientv3.WithLease(l.id))).
		Commit()
	if err != nil {
		return fmt.Errorf("worker: marking %s draining: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("worker: marking %s draining: %w", key, ErrLeaseLost)
	}
	return nil
}
