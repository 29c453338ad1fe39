package clientlib

import (
	"context"
	"sync"
	"time"

	"github.com/tokend/tokend/internal/clock"
)

// userNow is a clock whose Now is Config.Now and whose timers are those of
// the clock under it.
type userNow struct {
	clock.Clock
	now func() time.Time
}

func (u *userNow) Now() time.Time                  { return u.now() }
func (u *userNow) Since(t time.Time) time.Duration { return u.now().Sub(t) }

// newClock returns the clock a Client reads: clk (clock.Real if nil) for
// timers and, unless now is nil, now for the time.
func newClock(clk clock.Clock, now func() time.Time) clock.Clock {
	clk = clock.Or(clk)
	if now == nil {
		return clk
	}
	return &userNow{clk, now} // a pointer: clocks are compared (call.timerClock)
}

// resetTimer rearms t, whose channel is ch, to fire after d, dropping a
// tick it delivered that nobody took (a fake clock's timer keeps one;
// the system's, since Go 1.23, does not).
func resetTimer(t clock.Timer, ch <-chan time.Time, d time.Duration) {
	select {
	case <-ch:
	default:
	}
	t.Reset(d)
}

func (c *Client) now() time.Time { return c.clk.Now() }

// withTimeout is context.WithTimeout with d counted on the client's clock.
func (c *Client) withTimeout(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if c.realTimers {
		return context.WithTimeout(parent, d)
	}
	return newClockCtx(parent, c.clk, d)
}

// clockCtx is a context that ends, with context.DeadlineExceeded, when a
// timer of a clock that is not the system's fires, or when its parent ends.
// Its Deadline is the parent's: it has none in the system's time.
type clockCtx struct {
	context.Context // the parent: values and deadline
	done            chan struct{}
	stopTimer       func() bool
	stopParent      func() bool

	mu  sync.Mutex // guards err
	err error
}

func newClockCtx(parent context.Context, clk clock.Clock, d time.Duration) (context.Context, context.CancelFunc) {
	c := &clockCtx{Context: parent, done: make(chan struct{})}
	c.mu.Lock() // the callbacks below wait until both are set
	c.stopTimer = clk.AfterFunc(d, func() { c.end(context.DeadlineExceeded) }).Stop
	c.stopParent = context.AfterFunc(parent, func() { c.end(parent.Err()) })
	c.mu.Unlock()
	return c, func() { c.end(context.Canceled) }
}

func (c *clockCtx) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.done)
	c.stopTimer()
	c.stopParent()
}

func (c *clockCtx) Done() <-chan struct{} { return c.done }

func (c *clockCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// pause waits d on the client's clock, or until the client closes.
func (c *Client) pause(d time.Duration) {
	t, ch := c.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.ctx.Done():
	case <-ch:
	}
}
