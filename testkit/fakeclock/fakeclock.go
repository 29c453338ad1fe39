// Package fakeclock is a clock.Clock whose time moves only when a test says
// so. Advance fires, in deadline order, every timer, ticker and AfterFunc
// that falls due, with Now reading each one's deadline as it fires; an
// AfterFunc runs in its own goroutine and Advance waits for it to return, so
// that after Advance the test sees everything the passage of time caused
// directly. What goroutines do on receiving from a timer channel still
// happens concurrently: wait for its effect (an event, a channel, Eventually),
// not for a sleep.
package fakeclock

import (
	"sort"
	"sync"
	"time"

	"github.com/tokend/tokend/internal/clock"
)

// Epoch is where a clock made by New(time.Time{}) starts.
var Epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Clock is a manual clock. The zero value is not usable; call New.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	seq     uint64
	pending map[*entry]struct{}
	armed   chan struct{} // closed and replaced whenever a timer is armed
}

var _ clock.Clock = (*Clock)(nil)

// New returns a clock reading start (Epoch if start is zero).
func New(start time.Time) *Clock {
	if start.IsZero() {
		start = Epoch
	}
	return &Clock{now: start, pending: map[*entry]struct{}{}, armed: make(chan struct{})}
}

type entry struct {
	c      *Clock
	when   time.Time
	seq    uint64 // ties at one deadline fire in the order they were armed
	period time.Duration
	ch     chan time.Time // nil for AfterFunc
	f      func()
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Since returns Now() - t.
func (c *Clock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

// NewTimer arms a one-shot timer.
func (c *Clock) NewTimer(d time.Duration) (clock.Timer, <-chan time.Time) {
	e := &entry{c: c, ch: make(chan time.Time, 1)}
	c.arm(e, d)
	return (*timer)(e), e.ch
}

// NewTicker arms a ticker; like time.Ticker it drops ticks a slow receiver
// has not taken.
func (c *Clock) NewTicker(d time.Duration) (clock.Ticker, <-chan time.Time) {
	if d <= 0 {
		panic("fakeclock: non-positive ticker period")
	}
	e := &entry{c: c, ch: make(chan time.Time, 1), period: d}
	c.arm(e, d)
	return (*ticker)(e), e.ch
}

// AfterFunc arms f to run after d.
func (c *Clock) AfterFunc(d time.Duration, f func()) clock.Timer {
	e := &entry{c: c, f: f}
	c.arm(e, d)
	return (*timer)(e)
}

func (c *Clock) arm(e *entry, d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, was := c.pending[e]
	c.seq++
	e.when, e.seq = c.now.Add(max(d, 0)), c.seq
	c.pending[e] = struct{}{}
	close(c.armed)
	c.armed = make(chan struct{})
	return was
}

func (c *Clock) disarm(e *entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, was := c.pending[e]
	delete(c.pending, e)
	return was
}

type timer entry

func (t *timer) Stop() bool                 { return t.c.disarm((*entry)(t)) }
func (t *timer) Reset(d time.Duration) bool { return t.c.arm((*entry)(t), d) }

type ticker entry

func (t *ticker) Stop() { t.c.disarm((*entry)(t)) }
func (t *ticker) Reset(d time.Duration) {
	if d <= 0 {
		panic("fakeclock: non-positive ticker period")
	}
	t.period = d
	t.c.arm((*entry)(t), d)
}

// Advance moves the clock forward by d, firing what falls due on the way.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	c.mu.Unlock()
	for c.fireNext(target) {
	}
	c.mu.Lock()
	if target.After(c.now) {
		c.now = target
	}
	c.mu.Unlock()
}

// AdvanceToNext moves the clock to the earliest pending deadline and fires
// what is due there. It returns how far it moved, or false if nothing is
// pending.
func (c *Clock) AdvanceToNext() (time.Duration, bool) {
	d, ok := c.Next()
	if ok {
		c.Advance(d)
	}
	return d, ok
}

// Next returns the time until the earliest pending deadline.
func (c *Clock) Next() (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.earliest(); e != nil {
		return max(e.when.Sub(c.now), 0), true
	}
	return 0, false
}

// Pending returns how many timers, tickers and AfterFuncs are armed.
func (c *Clock) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}

// WaitPending blocks until at least n timers are armed, or for at most
// within of real time; it reports whether they were. Tests use it to wait
// until the code under test has armed the timer they are about to fire.
func (c *Clock) WaitPending(n int, within time.Duration) bool {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		if len(c.pending) >= n {
			c.mu.Unlock()
			return true
		}
		armed := c.armed
		c.mu.Unlock()
		select {
		case <-armed:
		case <-deadline.C:
			return false
		}
	}
}

func (c *Clock) earliest() *entry {
	var best *entry
	for e := range c.pending {
		if best == nil || e.when.Before(best.when) || (e.when.Equal(best.when) && e.seq < best.seq) {
			best = e
		}
	}
	return best
}

// fireNext fires the earliest entry due at or before target, if any.
func (c *Clock) fireNext(target time.Time) bool {
	c.mu.Lock()
	e := c.earliest()
	if e == nil || e.when.After(target) {
		c.mu.Unlock()
		return false
	}
	if e.when.After(c.now) {
		c.now = e.when
	}
	now := c.now
	if e.period > 0 {
		c.seq++
		e.when, e.seq = e.when.Add(e.period), c.seq
	} else {
		delete(c.pending, e)
	}
	c.mu.Unlock()
	if e.f != nil {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.f()
		}()
		wg.Wait()
		return true
	}
	select {
	case e.ch <- now:
	default:
	}
	return true
}

// sortedDeadlines is for debugging output: the pending deadlines, earliest
// first, relative to now.
func (c *Clock) sortedDeadlines() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ds []time.Duration
	for e := range c.pending {
		ds = append(ds, e.when.Sub(c.now))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds
}

// String describes the clock's time and pending deadlines.
func (c *Clock) String() string {
	ds := c.sortedDeadlines()
	s := "fakeclock at " + c.Now().Format(time.RFC3339Nano) + ", pending:"
	for _, d := range ds {
		s += " +" + d.String()
	}
	return s
}
