package fakeclock

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestTimersFireInOrderWithTheirDeadlineAsNow(t *testing.T) {
	c := New(time.Time{})
	var order []time.Duration
	for _, d := range []time.Duration{3 * time.Second, time.Second, 2 * time.Second} {
		c.AfterFunc(d, func() { order = append(order, c.Since(Epoch)) })
	}
	_, ch := c.NewTimer(1500 * time.Millisecond)
	c.Advance(2 * time.Second)
	if len(order) != 2 || order[0] != time.Second || order[1] != 2*time.Second {
		t.Fatalf("fired %v, want [1s 2s]", order)
	}
	select {
	case at := <-ch:
		if at.Sub(Epoch) != 1500*time.Millisecond {
			t.Fatalf("timer fired at %v, want 1.5s", at.Sub(Epoch))
		}
	default:
		t.Fatal("timer due at 1.5s did not fire")
	}
	if got := c.Since(Epoch); got != 2*time.Second {
		t.Fatalf("now %v, want 2s", got)
	}
	if c.Pending() != 1 {
		t.Fatalf("%d pending, want 1: %v", c.Pending(), c)
	}
}

func TestStopResetAndTicker(t *testing.T) {
	c := New(time.Time{})
	var n atomic.Int32
	tm := c.AfterFunc(time.Second, func() { n.Add(1) })
	if !tm.Stop() || tm.Stop() {
		t.Fatal("Stop must report true once, then false")
	}
	c.Advance(2 * time.Second)
	if n.Load() != 0 {
		t.Fatal("a stopped timer fired")
	}
	if tm.Reset(time.Second) {
		t.Fatal("Reset of a stopped timer must report false")
	}
	c.Advance(time.Second)
	if n.Load() != 1 {
		t.Fatal("a reset timer did not fire")
	}

	tk, ch := c.NewTicker(100 * time.Millisecond)
	c.Advance(250 * time.Millisecond)
	if len(ch) != 1 {
		t.Fatalf("%d ticks buffered, want 1 (dropped like time.Ticker)", len(ch))
	}
	<-ch
	c.Advance(100 * time.Millisecond)
	if len(ch) != 1 {
		t.Fatal("ticker stopped ticking")
	}
	tk.Stop()
	<-ch
	c.Advance(time.Second)
	if len(ch) != 0 || c.Pending() != 0 {
		t.Fatal("a stopped ticker ticked")
	}
}

func TestWaitPending(t *testing.T) {
	c := New(time.Time{})
	if c.WaitPending(1, 10*time.Millisecond) {
		t.Fatal("nothing armed yet")
	}
	go c.NewTimer(time.Second)
	if !c.WaitPending(1, 10*time.Second) {
		t.Fatal("the armed timer was not seen")
	}
	if d, ok := c.AdvanceToNext(); !ok || d != time.Second || c.Pending() != 0 {
		t.Fatalf("AdvanceToNext = %v, %v; pending %d", d, ok, c.Pending())
	}
}
