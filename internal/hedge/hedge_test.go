package hedge

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokend/tokend/testkit/fakeclock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// attempts records the attempts of one Run: which started, which are
// still running. An attempt i answers with whatever is sent on answer[i],
// or returns ctx.Err() when its ctx ends.
type attempts struct {
	started chan int
	answer  []chan error
	running atomic.Int32
	mu      sync.Mutex
	ended   []int // indexes, in the order the attempts returned
}

func newAttempts(n int) *attempts {
	a := &attempts{started: make(chan int, n)}
	for range n {
		a.answer = append(a.answer, make(chan error, 1))
	}
	return a
}

func (a *attempts) run(ctx context.Context, i int) (int, error) {
	a.running.Add(1)
	defer func() {
		a.mu.Lock()
		a.ended = append(a.ended, i)
		a.mu.Unlock()
		a.running.Add(-1)
	}()
	a.started <- i
	select {
	case err := <-a.answer[i]:
		return i * 10, err
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// waitStarted waits for attempt want to start.
func (a *attempts) waitStarted(t *testing.T, want int) {
	t.Helper()
	select {
	case i := <-a.started:
		if i != want {
			t.Fatalf("attempt %d started, want %d", i, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("attempt %d did not start", want)
	}
}

// noneStarted asserts that no further attempt has started.
func (a *attempts) noneStarted(t *testing.T) {
	t.Helper()
	select {
	case i := <-a.started:
		t.Fatalf("attempt %d started", i)
	default:
	}
}

type outcome struct {
	v, i int
	err  error
}

func goRun(ctx context.Context, p Policy, a *attempts) <-chan outcome {
	out := make(chan outcome, 1)
	go func() {
		v, i, err := Run(ctx, p, a.run)
		out <- outcome{v, i, err}
	}()
	return out
}

func wait(t *testing.T, out <-chan outcome) outcome {
	t.Helper()
	select {
	case o := <-out:
		return o
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	return outcome{}
}

// checkNoneRunning is the rule: when Run returns, every attempt has.
func (a *attempts) checkNoneRunning(t *testing.T) {
	t.Helper()
	if n := a.running.Load(); n != 0 {
		t.Fatalf("%d attempts still running after Run returned", n)
	}
}

// TestHedgeAfterDelayAndLosersWaitedFor: an attempt that hangs is hedged
// after Delay; the hedge's success wins, and the hung attempt is canceled
// and has returned before Run does.
func TestHedgeAfterDelayAndLosersWaitedFor(t *testing.T) {
	clk := fakeclock.New(time.Time{})
	a := newAttempts(3)
	out := goRun(context.Background(), Policy{Delay: time.Second, Attempts: 3, Clock: clk}, a)
	a.waitStarted(t, 0)
	if !clk.WaitPending(1, 5*time.Second) {
		t.Fatal("no hedge timer armed")
	}
	clk.Advance(999 * time.Millisecond)
	a.noneStarted(t)
	clk.Advance(time.Millisecond)
	a.waitStarted(t, 1)
	a.answer[1] <- nil
	o := wait(t, out)
	if o.err != nil || o.i != 1 || o.v != 10 {
		t.Fatalf("Run = %d, %d, %v; want attempt 1's 10", o.v, o.i, o.err)
	}
	a.checkNoneRunning(t)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.ended) != 2 {
		t.Fatalf("attempts ended: %v, want both", a.ended)
	}
	a.noneStarted(t)
}

// TestFailureStartsTheNextAtOnce: a failed attempt is followed at once by
// the next; when all fail, Run returns the last failure.
func TestFailureStartsTheNextAtOnce(t *testing.T) {
	a := newAttempts(3)
	errs := []error{errors.New("e0"), errors.New("e1"), errors.New("e2")}
	for i, e := range errs {
		a.answer[i] <- e
	}
	v, i, err := Run(context.Background(), Policy{Delay: time.Hour, Attempts: 3}, a.run)
	if !errors.Is(err, errs[2]) || i != 2 || v != 20 {
		t.Fatalf("Run = %d, %d, %v; want attempt 2's failure", v, i, err)
	}
	a.checkNoneRunning(t)
}

// TestFinalErrorEndsTheCall: an error Final accepts wins like a success,
// and the attempts still running are canceled and waited for.
func TestFinalErrorEndsTheCall(t *testing.T) {
	clk := fakeclock.New(time.Time{})
	final := errors.New("final")
	a := newAttempts(3)
	out := goRun(context.Background(), Policy{Delay: time.Second, Attempts: 3, Clock: clk,
		Final: func(err error) bool { return errors.Is(err, final) }}, a)
	a.waitStarted(t, 0)
	clk.WaitPending(1, 5*time.Second)
	clk.Advance(time.Second)
	a.waitStarted(t, 1)
	a.answer[1] <- final
	o := wait(t, out)
	if !errors.Is(o.err, final) || o.i != 1 {
		t.Fatalf("Run = %d, %d, %v; want attempt 1's final error", o.v, o.i, o.err)
	}
	a.checkNoneRunning(t)
}

// TestParallelBound: with Parallel 2, a third attempt starts only when one
// of the two running fails, however long they hang.
func TestParallelBound(t *testing.T) {
	clk := fakeclock.New(time.Time{})
	a := newAttempts(4)
	out := goRun(context.Background(), Policy{Delay: time.Second, Attempts: 4, Parallel: 2, Clock: clk}, a)
	a.waitStarted(t, 0)
	clk.WaitPending(1, 5*time.Second)
	clk.Advance(time.Second)
	a.waitStarted(t, 1)
	for range 5 {
		clk.WaitPending(1, 5*time.Second)
		clk.Advance(time.Second)
	}
	a.noneStarted(t)
	a.answer[0] <- errors.New("e0")
	a.waitStarted(t, 2)
	a.answer[2] <- nil
	if o := wait(t, out); o.err != nil || o.i != 2 {
		t.Fatalf("Run = %d, %d, %v; want attempt 2's success", o.v, o.i, o.err)
	}
	a.checkNoneRunning(t)
}

// TestContextEnds: Run returns ctx.Err() when ctx ends, after its
// attempts have returned.
func TestContextEnds(t *testing.T) {
	clk := fakeclock.New(time.Time{})
	ctx, cancel := context.WithCancel(context.Background())
	a := newAttempts(2)
	out := goRun(ctx, Policy{Delay: time.Second, Attempts: 2, Clock: clk}, a)
	a.waitStarted(t, 0)
	clk.WaitPending(1, 5*time.Second)
	clk.Advance(time.Second)
	a.waitStarted(t, 1)
	cancel()
	o := wait(t, out)
	if !errors.Is(o.err, context.Canceled) || o.i != -1 {
		t.Fatalf("Run = %d, %d, %v; want context.Canceled", o.v, o.i, o.err)
	}
	a.checkNoneRunning(t)
}

func TestNoAttempts(t *testing.T) {
	if _, _, err := Run(context.Background(), Policy{}, func(context.Context, int) (int, error) {
		t.Fatal("attempt called")
		return 0, nil
	}); !errors.Is(err, ErrNoAttempts) {
		t.Fatalf("err %v, want ErrNoAttempts", err)
	}
}

// TestNoGoroutineOutlivesRun: many runs whose losers hang until canceled
// leave no goroutine behind, as goleak sees it.
func TestNoGoroutineOutlivesRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	for range 50 {
		var n atomic.Int32
		v, _, err := Run(context.Background(), Policy{Delay: time.Microsecond, Attempts: 3},
			func(ctx context.Context, i int) (int, error) {
				if n.Add(1) == 3 {
					return i, nil
				}
				<-ctx.Done()
				return 0, ctx.Err()
			})
		if err != nil || v < 0 {
			t.Fatalf("Run = %d, %v", v, err)
		}
	}
}
