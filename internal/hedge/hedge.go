// Package hedge runs a call that may hang (a request to one of several
// servers, an RPC balanced over etcd members) as hedged attempts: another
// attempt starts when the running ones have not answered within a delay, or
// at once when one fails, and the first success wins. Its one rule for the
// losers: Run cancels the attempts still running and waits for them before
// it returns, so no attempt's goroutine outlives the call.
package hedge

import (
	"context"
	"errors"
	"time"

	"github.com/tokend/tokend/internal/clock"
)

// Policy says when attempts start and which errors end the call.
type Policy struct {
	// Delay is how long the attempts running may go unanswered before the
	// next one starts.
	Delay time.Duration
	// Attempts bounds the attempts in all; at least 1.
	Attempts int
	// Parallel bounds the attempts running at once; 0 = Attempts.
	Parallel int
	// Final, if set, says that an error ends the call at once, like a
	// success, instead of starting the next attempt.
	Final func(error) bool
	// Clock runs the Delay timer; nil = clock.Real.
	Clock clock.Clock
}

// ErrNoAttempts is returned by Run for a Policy with no attempts.
var ErrNoAttempts = errors.New("hedge: no attempts allowed")

// Run calls attempt(ctx, i) for i = 0, 1, ...: the first at once, the next
// after p.Delay without an answer or at once after a failure, within
// p.Attempts and p.Parallel. It returns the value, index and error of the
// first attempt that succeeds or fails with a final error; else, once every
// attempt has failed, those of the last to fail; or, when ctx ends first,
// ctx.Err() with index -1. Each attempt's ctx ends when Run returns, and
// Run returns only after every attempt it started has returned.
func Run[T any](ctx context.Context, p Policy, attempt func(ctx context.Context, i int) (T, error)) (T, int, error) {
	var zero T
	if p.Attempts < 1 {
		return zero, -1, ErrNoAttempts
	}
	parallel := p.Parallel
	if parallel <= 0 || parallel > p.Attempts {
		parallel = p.Attempts
	}
	type result struct {
		v   T
		i   int
		err error
	}
	actx, cancel := context.WithCancel(ctx)
	results := make(chan result, p.Attempts) // a loser never blocks on it
	launched, running := 0, 0
	defer func() {
		cancel()
		for ; running > 0; running-- {
			<-results
		}
	}()
	launch := func() {
		i := launched
		launched++
		running++
		go func() {
			v, err := attempt(actx, i)
			results <- result{v, i, err}
		}()
	}
	clk := clock.Or(p.Clock)
	timer, fire := clk.NewTimer(p.Delay)
	defer timer.Stop()
	rearm := func() {
		select {
		case <-fire: // a tick that has not been acted on is stale now
		default:
		}
		timer.Reset(p.Delay)
	}
	launch()
	var last result
	for {
		select {
		case r := <-results:
			running--
			if r.err == nil || (p.Final != nil && p.Final(r.err)) {
				return r.v, r.i, r.err
			}
			last = r
			if ctx.Err() != nil {
				return zero, -1, ctx.Err()
			}
			if launched < p.Attempts {
				launch()
				rearm()
			} else if running == 0 {
				return last.v, last.i, last.err
			}
		case <-fire:
			if launched < p.Attempts {
				if running < parallel {
					launch()
				}
				rearm()
			}
		case <-ctx.Done():
			return zero, -1, ctx.Err()
		}
	}
}
