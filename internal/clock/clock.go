// Package clock is the time the shells of the worker, the coordinator and
// the Go client read: now, timers, tickers. Production code uses Real; unit
// tests inject testkit/fakeclock and move time by hand, so that a test waits
// for an event or advances the clock instead of sleeping.
//
// The pure cores (worker/table, worker/session, ...) take no Clock: they are
// given the time as an argument.
package clock

import "time"

// Clock is what a shell needs of time. Times it returns carry a monotonic
// reading (Real) or are monotonic by construction (the fake), so durations
// between them never go backwards.
type Clock interface {
	Now() time.Time
	Since(t time.Time) time.Duration
	// NewTimer returns a timer and the channel it fires on, once, after d.
	NewTimer(d time.Duration) (Timer, <-chan time.Time)
	// NewTicker returns a ticker and the channel it ticks on every d.
	NewTicker(d time.Duration) (Ticker, <-chan time.Time)
	// AfterFunc calls f in its own goroutine after d.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a stoppable, resettable one-shot timer.
type Timer interface {
	// Stop reports whether it stopped the timer before it fired.
	Stop() bool
	// Reset rearms the timer to fire after d; it reports whether the timer
	// was still pending.
	Reset(d time.Duration) bool
}

// Ticker is a stoppable, resettable ticker.
type Ticker interface {
	Stop()
	Reset(d time.Duration)
}

// Real is the system's clock.
type Real struct{}

var _ Clock = Real{}

func (Real) Now() time.Time                  { return time.Now() }
func (Real) Since(t time.Time) time.Duration { return time.Since(t) }

func (Real) NewTimer(d time.Duration) (Timer, <-chan time.Time) {
	t := time.NewTimer(d)
	return t, t.C
}

func (Real) NewTicker(d time.Duration) (Ticker, <-chan time.Time) {
	t := time.NewTicker(d)
	return t, t.C
}

func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Or returns c, or Real if c is nil: the default of a config field.
func Or(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}
