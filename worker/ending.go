package worker

import (
	"context"
	"runtime"

	"github.com/tokend/tokend/worker/table"
)

// Ending a session whose lease is gone drops its grants and waiters in
// every table it touched. A session holding millions of grants would hold
// Worker.mu, and so stop every request on every shard, for seconds; so
// one whose tables hold more than endSlice grants and waiters in all is
// ended in slices of endSlice per hold of mu by the end loop, and requests
// are served in between. Meanwhile its tables know it as part-ended
// (table.EndSession): it gains nothing there, and it is already gone from
// the worker's sessions and remembered as ended, as any ended session.
// Smaller sessions are ended at once, as before.

// endSlice is the most grants and waiters of ended sessions dropped under
// one hold of Worker.mu (about a millisecond: table.BenchmarkEndSession).
const endSlice = 2048

// endJob is an ended session's state in one table, still to be dropped.
// tab is the table it was queued for: if the shard has another table since
// (or none: dropped, handed off, the lease lost), the session's state went
// with the old one, and the job is forgotten.
type endJob struct {
	id    uint64
	shard uint32
	tab   *table.Table
}

// endTables ends session id in the tables of shards: at once if those hold
// at most endSlice of its grants and waiters in all; else each table marks
// it part-ended (it gains nothing from now on) and the end loop drops the
// rest. Caller holds mu.
func (w *Worker) endTables(ob *outbox, id uint64, shards map[uint32]struct{}) {
	total := 0
	for shard := range shards {
		if st := w.shardAt(shard); st != nil && st.tab != nil {
			total += st.tab.Footprint(id)
		}
	}
	queued := false
	for shard := range shards {
		st := w.shardAt(shard)
		if st == nil || st.tab == nil {
			continue
		}
		if total <= endSlice {
			w.out = st.tab.Step(table.Input{Op: table.OpEndSession, Session: id}, ob.now, w.out[:0])
			w.apply(ob, shard, st, w.out, nil)
			continue
		}
		var done bool
		w.out, done = st.tab.EndSession(id, 0, ob.now, w.out[:0])
		w.apply(ob, shard, st, w.out, nil)
		if !done {
			w.ends = append(w.ends, endJob{id: id, shard: shard, tab: st.tab})
			queued = true
		}
	}
	if queued {
		select {
		case w.endKick <- struct{}{}:
		default:
		}
	}
}

// endLoop drops what ended sessions still hold, endSlice per hold of mu,
// whenever endTables queues some, until nothing is left or ctx ends.
func (w *Worker) endLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.endKick:
		}
		for more := true; more && ctx.Err() == nil; {
			if g := w.endGate.Load(); g != nil {
				select {
				case <-*g:
				case <-ctx.Done():
					return
				}
			}
			more = w.endSome(endSlice)
			// Let the goroutines that waited for mu meanwhile (the receive
			// loop) run before the next slice.
			runtime.Gosched()
		}
	}
}

// endSome drops up to budget grants and waiters of ended sessions under one
// hold of mu, oldest end first, sends what follows (grants to the waiters
// behind them), and reports whether any are left.
func (w *Worker) endSome(budget int) bool {
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	for budget > 0 && len(w.ends) > 0 {
		j := w.ends[0]
		st := w.shardAt(j.shard)
		if st == nil || st.tab != j.tab {
			w.ends = w.ends[1:] // the shard's table went, and the session's state with it
			continue
		}
		before := j.tab.Footprint(j.id)
		var done bool
		w.out, done = j.tab.EndSession(j.id, budget, ob.now, w.out[:0])
		w.apply(ob, j.shard, st, w.out, nil)
		budget -= max(before-j.tab.Footprint(j.id), 1)
		if done {
			w.ends = w.ends[1:]
		}
	}
	if len(w.ends) == 0 {
		w.ends = nil // let the array go
	}
	more := len(w.ends) > 0
	w.mu.Unlock()
	w.flush(ob)
	return more
}

// finishEnds drops at once what ended sessions still hold in shard's table
// st, which is about to be exported to its new owner: a snapshot must not
// carry a dead session's grants (table.Export refuses while one is
// part-ended). Caller holds mu, and shard is still served (st is
// w.shards[shard]), so that what the end grants is sent as from a served
// shard.
func (w *Worker) finishEnds(ob *outbox, shard uint32, st *shardState) {
	if st == nil || st.tab == nil {
		return
	}
	keep := w.ends[:0]
	for _, j := range w.ends {
		if j.shard != shard || j.tab != st.tab {
			keep = append(keep, j)
			continue
		}
		w.out = st.tab.Step(table.Input{Op: table.OpEndSession, Session: j.id}, ob.now, w.out[:0])
		w.apply(ob, shard, st, w.out, nil)
	}
	clear(w.ends[len(keep):])
	w.ends = keep
}

// endingTokens is the number of grants and waiters of ended sessions still
// to be dropped (the ending_tokens gauge). Caller holds mu.
func (w *Worker) endingTokens() int {
	n := 0
	for _, j := range w.ends {
		if st := w.shardAt(j.shard); st != nil && st.tab == j.tab {
			n += j.tab.Footprint(j.id)
		}
	}
	return n
}
