package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/worker/grace"
)

// Early end of grace (wire/SPEC.md section 13; the decisions are
// worker/grace's). A shard recovered after a previous owner that a map
// names is tracked; the worker then reads, in one etcd transaction after
// it applied that map, the live sessions and the registrations. If the
// previous owner's incarnation is still registered it may still vouch for
// its grants: the shard keeps its full grace period. Otherwise every live
// session is awaited until it says DONE (KEEPALIVE flag) or ends.

// recovery is a shard in its grace period, for the grace duration metric
// and the early end: when it started and after whom.
type recovery struct {
	start int64            // tables' clock
	from  delegation.Owner // the previous owner a map names (zero: unknown; not tracked)
}

// startRecovery notes that shard was recovered at epoch by map version v
// after from. Caller holds mu.
func (w *Worker) startRecovery(ob *outbox, shard, epoch uint32, from delegation.Owner, v uint64) {
	w.recov[shard] = recovery{start: ob.now, from: from}
	if from == (delegation.Owner{}) || from == w.me {
		w.gt.Drop(shard)
		return
	}
	w.gt.Start(shard, epoch, v)
}

// forgetRecovery drops shard's recovery: the shard left, or was pulled.
// Caller holds mu.
func (w *Worker) forgetRecovery(shard uint32) {
	if _, ok := w.recov[shard]; ok {
		delete(w.recov, shard)
		w.gt.Drop(shard)
	}
}

// graceOver is called for a shard whose table left its grace period at
// its deadline. Caller holds mu.
func (w *Worker) graceOver(ob *outbox, shard uint32) {
	r, ok := w.recov[shard]
	if !ok {
		return
	}
	w.met.graceDur.WithLabelValues("deadline").Observe(time.Duration(ob.now - r.start).Seconds())
	w.forgetRecovery(shard)
}

// endEarly ends the grace period of the shards the tracker released, if
// they are still served at that epoch and in grace. Caller holds mu.
func (w *Worker) endEarly(ob *outbox, ended []grace.Ended) {
	n, longest := 0, int64(0)
	var reason grace.Reason
	for _, e := range ended {
		st := w.shards[e.Shard]
		if st == nil || st.tab == nil || st.epoch != e.Epoch || !st.tab.EndGrace() {
			continue
		}
		r := w.recov[e.Shard]
		d := ob.now - r.start
		w.met.graceEarly.WithLabelValues(e.Reason.String()).Inc()
		w.met.graceDur.WithLabelValues("early").Observe(time.Duration(d).Seconds())
		delete(w.recov, e.Shard)
		n, longest, reason = n+1, max(longest, d), e.Reason
	}
	if n > 0 {
		w.log.Info("grace period ended early: every live session reclaimed or said it was done",
			"shards", n, "reason", reason.String(), "after", time.Duration(longest).Round(time.Millisecond))
	}
}

// readLiveSoon starts a read of the live sessions if a recovery waits for
// one and none is under way. Caller holds mu.
func (w *Worker) readLiveSoon() {
	if w.liveReading {
		return
	}
	gen, ok := w.gt.NeedLive()
	if !ok {
		return
	}
	gt := w.gt
	if w.enqueue(func(ctx context.Context) { w.readLive(ctx, gt, gen) }) {
		w.liveReading = true
	}
	// else: the pool is full; the timer loop's housekeeping tries again.
}

// readLive reads the live sessions and the registrations at one revision
// (after the map that started the recoveries tagged gen, which this
// worker applied before asking) and hands them to gt, if it is still the
// incarnation's tracker.
func (w *Worker) readLive(ctx context.Context, gt *grace.Tracker, gen uint64) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := w.cfg.Client.Txn(ctx).Then(
		clientv3.OpGet(cluster.ClientsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(cluster.WorkersPrefix, clientv3.WithPrefix()),
	).Commit()
	var sessions []uint64
	registered := map[string]bool{} // id/incarnation (hex), as formatInc writes it
	if err == nil && len(resp.Responses) != 2 {
		err = fmt.Errorf("etcd answered %d ranges, want 2", len(resp.Responses))
	}
	// Anything this read cannot make sense of keeps the full grace period
	// (an error here ends nothing early): a session key that does not
	// parse may still be a live session, and a registration that does not
	// parse may still be the previous owner's.
	if err == nil {
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			id, perr := cluster.ParseSession(strings.TrimPrefix(string(kv.Key), cluster.ClientsPrefix))
			if perr != nil || id == 0 {
				err = fmt.Errorf("session key %q: not a session id", kv.Key)
				break
			}
			sessions = append(sessions, id)
		}
	}
	if err == nil {
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			var doc cluster.Worker
			if jerr := json.Unmarshal(kv.Value, &doc); jerr != nil {
				err = fmt.Errorf("registration %q: %w", kv.Key, jerr)
				break
			}
			registered[doc.ID+"/"+doc.Incarnation] = true
		}
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	if w.gt != gt {
		// A new incarnation: its recoveries wait for a read of their own.
		w.mu.Unlock()
		return
	}
	w.liveReading = false
	if err != nil {
		w.log.Warn("cannot read the live sessions; recovering shards keep their grace period for now", "err", err)
	} else {
		// A previous owner still registered may still vouch for its
		// grants: those shards wait for their deadline.
		for shard, r := range w.recov {
			if registered[r.from.ID+"/"+formatInc(r.from.Incarnation)] {
				w.gt.Drop(shard)
			}
		}
		live := sessions[:0]
		for _, id := range sessions {
			if _, gone := w.gone[id]; !gone {
				live = append(live, id)
			}
		}
		w.endEarly(ob, w.gt.Live(gen, live, w.ended[:0]))
		w.readLiveSoon()
	}
	w.mu.Unlock()
	w.flush(ob)
}
