package worker

import (
	"net"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/worker/table"
)

// maxWaitEdges bounds the waits one answer to the deadlock detector
// carries; the rest are left out (Truncated) and may be seen next round.
const maxWaitEdges = 1 << 16

// serveDeadlock answers the leader's deadlock detector on a connection of
// the handoff listener (wire/SPEC.md section 19): it ends the victims that
// still wait with DEADLOCK, then lists the waits asked for.
func (w *Worker) serveDeadlock(c net.Conn, req *pullRequest) {
	ans := w.answerDeadlock(req.Proto, req.Deadlock, w.clk.Now())
	if _, err := writeFrame(c, ans); err != nil {
		w.log.Debug("deadlock answer not sent", "to", c.RemoteAddr(), "err", err)
	}
}

// answerDeadlock applies query q at now and builds the answer. The tables
// are stepped under mu like any batch; what the victims' ends produce
// (their DEADLOCK replies, grants to waiters behind them) is sent after.
func (w *Worker) answerDeadlock(proto int, q *cluster.DeadlockQuery, now time.Time) *cluster.DeadlockAnswer {
	w.mu.Lock()
	ans := &cluster.DeadlockAnswer{Proto: cluster.DeadlockProto, Worker: w.me.ID, Incarnation: formatInc(w.me.Incarnation)}
	switch {
	case proto != cluster.DeadlockProto:
		ans.Error = "protocol not supported"
	case w.me == (delegation.Owner{}) || q.Incarnation != ans.Incarnation:
		ans.Error = "not that incarnation"
	}
	if ans.Error != "" {
		w.mu.Unlock()
		return ans
	}
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	for _, v := range q.Victims {
		if w.endVictim(ob, v) {
			ans.Ended = append(ans.Ended, v)
		}
	}
	if q.Waits {
		ans.Waits, ans.Truncated = w.waitEdges(ob.now, time.Duration(q.MinAgeMs)*time.Millisecond)
	}
	w.mu.Unlock()
	w.flush(ob)
	return ans
}

// endVictim ends the queued request v with DEADLOCK if it still waits in
// the shard's table at v's epoch, and reports whether it did. Caller holds
// mu.
func (w *Worker) endVictim(ob *outbox, v cluster.DeadlockVictim) bool {
	if int(v.Shard) >= len(w.shards) {
		return false
	}
	st := w.shards[v.Shard]
	if st == nil || st.tab == nil || st.epoch != v.Epoch {
		return false
	}
	w.out = st.tab.Step(table.Input{Op: table.OpDeadlock, Session: v.Session, Target: v.Req}, ob.now, w.out[:0])
	ended := false
	var name string
	for _, o := range w.out {
		if o.Kind == table.KindAsync && o.Status == table.StatusDeadlock && o.Session == v.Session && o.Req == v.Req {
			ended, name = true, o.Name
		}
	}
	w.apply(ob, v.Shard, st, w.out, nil)
	if ended {
		w.met.deadlocks.WithLabelValues("cycle").Inc()
		w.log.Info("deadlock: request chosen as victim answered DEADLOCK", "session", cluster.SessionString(v.Session),
			"req", v.Req, "shard", v.Shard, "epoch", v.Epoch, "token", name)
	}
	return ended
}

// waitEdges lists the waits of the requests queued at least minAge before
// now in every table served. Caller holds mu.
func (w *Worker) waitEdges(now int64, minAge time.Duration) (out []cluster.WaitEdge, truncated bool) {
	var buf []table.Edge
	for shard, st := range w.shards {
		if st == nil || st.tab == nil || st.tab.Stats().Waiters == 0 {
			continue
		}
		buf = st.tab.WaitEdges(now-int64(minAge), buf[:0])
		for _, e := range buf {
			if len(out) == maxWaitEdges {
				return out, true
			}
			out = append(out, cluster.WaitEdge{Shard: uint32(shard), Epoch: st.epoch, Session: e.Session, Req: e.Req,
				AgeMs: (now - e.Since) / int64(time.Millisecond), Conv: e.Conv, Token: []byte(e.Name),
				Holder: e.Holder, Fence: e.Fence, HolderReq: e.HolderReq})
		}
	}
	return out, false
}
