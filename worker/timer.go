package worker

import (
	"context"
	"time"

	"github.com/tokend/tokend/internal/clock"
	core "github.com/tokend/tokend/worker/session"
)

// housekeeping is the longest the timer loop sleeps: it also forgets
// expired SESSION_OPEN answers and ended sessions.
const housekeeping = time.Second

// timerLoop runs what is due by time: table deadlines (queued requests
// timing out, grace periods ending) and REVOKE and GRANT_ASYNC
// retransmissions. It sleeps
// until the earliest of them; whoever adds an earlier one kicks it.
func (w *Worker) timerLoop(ctx context.Context) {
	t, tc := w.clk.NewTimer(housekeeping)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tc:
		case <-w.kick:
		}
		now := w.clk.Now()
		w.mu.Lock()
		ob := w.outbox(now, w.mono(now))
		ob.safe = w.safeUntil()
		next := w.runDue(ob)
		// wakeAt and the timer change together under mu: whoever reads
		// wakeAt knows the loop wakes by then (wantWake relies on it). A
		// kick that arrives from here on is kept in the channel and wakes
		// the next select at once.
		w.wakeAt = next
		t.Stop()
		t.Reset(time.Duration(max(next-w.mono(w.clk.Now()), int64(time.Millisecond/4))))
		w.mu.Unlock()
		w.flush(ob)
	}
}

// runDue does what is due at ob.now and returns when to run next. Caller
// holds mu.
func (w *Worker) runDue(ob *outbox) int64 {
	n := ob.now
	next := n + int64(housekeeping)
	for shard := range w.timed {
		st := w.shards[shard]
		if st == nil || st.tab == nil {
			delete(w.timed, shard)
			continue
		}
		d, ok := st.tab.NextDeadline()
		if ok && d <= n {
			w.out = st.tab.Tick(n, w.out[:0])
			w.apply(ob, shard, st, w.out, nil)
			if !st.tab.InGrace() {
				w.graceOver(ob, shard)
			}
			d, ok = st.tab.NextDeadline()
		}
		if !ok {
			delete(w.timed, shard)
		} else if d < next {
			next = d
		}
	}
	var resend []core.Due
	for _, s := range w.revoking {
		resend = s.core.Tick(n, resend[:0])
		for _, d := range resend {
			w.toSession(ob, s, d.Pkt)
			if d.Grant {
				w.met.grantsResent.Inc()
			} else {
				w.met.revokesSent.Inc()
			}
		}
		w.trackRevokes(s) // a GRANT_ASYNC sent for the last time is over
		if d, ok := s.core.NextDeadline(); ok {
			next = min(next, d)
		}
	}
	if n >= w.housekeepAt {
		w.housekeepAt = n + int64(housekeeping)
		w.housekeepGuard(n)
		for id, t := range w.gone {
			if t.until <= n {
				delete(w.gone, id)
			}
		}
		w.expireHandoffs(n)
		w.readLiveSoon() // after a failed read, or a full pool
	}
	return next
}

// wait blocks for d on clk, or until ctx ends; it reports whether d passed.
func wait(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	t, c := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-c:
		return true
	}
}
