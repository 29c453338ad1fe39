package bench

import (
	"context"
	"time"

	"github.com/tokend/tokend/wire"
)

// Histogram slots of the shared-heavy workload.
const (
	latRead  = 0
	latWrite = 1
)

// runShared measures a read-mostly token: cfg.Readers clients loop on
// acquire PR, read for cfg.ReadHold (cut short when revoked), release;
// cfg.Writers clients pause cfg.WriteEvery, then acquire EX, which queues
// behind the readers' grants and makes the worker revoke them, and release
// at once. Readers that arrive while a writer waits queue behind it (FIFO:
// the writer does not starve).
func runShared(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	cfg.progress("tokend shared-heavy: %d readers, %d writers", cfg.Readers, cfg.Writers)
	n := cfg.Readers + cfg.Writers
	cs, err := dialClients(ctx, tgt, n, revokeNotify)
	if err != nil {
		return nil, err
	}
	defer closeClients(cs)
	const name = "bench/shared"
	timers := make([]*time.Timer, n)
	for i := range timers {
		timers[i] = time.NewTimer(time.Hour)
		timers[i].Stop()
	}
	l, err := measure(ctx, cfg, n, func(ctx context.Context, i int, r *rec) error {
		c := cs[i]
		if i >= cfg.Readers { // a writer
			timers[i].Reset(cfg.WriteEvery)
			select {
			case <-timers[i].C:
			case <-r.stop:
				timers[i].Stop()
				return nil
			}
			t0 := time.Now()
			tok, err := c.Acquire(ctx, name, wire.EX)
			if err != nil {
				return err
			}
			r.record(latWrite, time.Since(t0))
			r.tallyAux()
			return release(ctx, tok)
		}
		t0 := time.Now()
		tok, err := c.Acquire(ctx, name, wire.PR)
		if err != nil {
			return err
		}
		r.record(latRead, time.Since(t0))
		if c.waitRevoked(ctx, tok, r, timers[i], cfg.ReadHold) {
			r.event()
		}
		return release(ctx, tok)
	})
	if err != nil {
		return nil, err
	}
	reads := l.ops - l.aux
	res := Result{Workload: "shared-heavy", System: system, Clients: n, Unit: "grant",
		Note: "PR readers hold " + cfg.ReadHold.String() + "; EX writer every " + cfg.WriteEvery.String()}.with(&l, "read acquire", "write acquire")
	res.metric("reads", float64(reads)/l.window.Seconds(), "/s")
	res.metric("writes", float64(l.aux)/l.window.Seconds(), "/s")
	res.metric("revokes", float64(l.events)/l.window.Seconds(), "/s")
	return []Result{res}, nil
}
