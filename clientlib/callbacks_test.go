package clientlib

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeclock"
	"github.com/tokend/tokend/wire"
)

// TestRevocationNamesTheGrant: OnRevoke learns which grant (fence and mode
// held) the REVOKE is about and what it wants, and gets a context bounded
// by HandlerTimeout.
func TestRevocationNamesTheGrant(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{})
	type got struct {
		r        Revocation
		deadline time.Duration
		fence    uint64
	}
	calls := make(chan got, 4)
	c := fc.dial(t, Config{HandlerTimeout: 700 * time.Millisecond,
		OnRevoke: func(ctx context.Context, tok *Token, r Revocation) {
			dl, ok := ctx.Deadline()
			if !ok {
				t.Error("handler context has no deadline")
			}
			calls <- got{r, time.Until(dl), tok.Fence()}
		}})
	tok, err := c.Acquire(ctxT(t, 5*time.Second), "r", wire.EX, Range(10, 20))
	if err != nil {
		t.Fatal(err)
	}
	fc.sendRevoke(0, c.Session(), "r", tok.Fence(), wire.PR)
	select {
	case g := <-calls:
		want := Revocation{Fence: tok.Fence(), Mode: wire.EX, Wanted: wire.PR}
		if g.r.Fence != want.Fence || g.r.Mode != want.Mode || g.r.Wanted != want.Wanted {
			t.Fatalf("revocation %+v, want fence %d mode EX wanted PR", g.r, want.Fence)
		}
		if g.deadline <= 0 || g.deadline > 700*time.Millisecond {
			t.Fatalf("handler context ends in %v, want within HandlerTimeout 700ms", g.deadline)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("OnRevoke not called")
	}
}

// TestDoneAndState: Done closes on the application's own Release (Lost
// does not), and State says what the token is in one call.
func TestDoneAndState(t *testing.T) {
	fc := newFakeCluster(t, 32, fakeConfig{})
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	tok, err := c.Acquire(ctx, "d", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if s := tok.State(); s != TokenValid {
		t.Fatalf("state %v after Acquire, want valid", s)
	}
	if s := tok.ValueState(); s != ValueNone {
		t.Fatalf("value state %v, want none", s)
	}
	done := tok.Done()
	if isClosed(done) {
		t.Fatal("Done closed while held")
	}
	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, done, time.Second, "Done after Release")
	if isClosed(tok.Lost()) {
		t.Fatal("Lost closed by the application's own Release")
	}
	if s := tok.State(); s != TokenReleased {
		t.Fatalf("state %v after Release", s)
	}
	if !isClosed(tok.Done()) {
		t.Fatal("Done asked for after Release is not closed")
	}
}

// TestJeopardyThenLost: when the worker goes silent, OnJeopardy comes
// before the validity runs out, and OnLost (with Lost and Done) once the
// grace period is over without a reclaim; State follows.
func TestJeopardyThenLost(t *testing.T) {
	fc := newFakeCluster(t, 33, fakeConfig{workerTTL: 600 * time.Millisecond, grace: 400 * time.Millisecond,
		sessionTTL: 10 * time.Second})
	var mu sync.Mutex
	var jeopardyAt, lostAt time.Time
	var validUntil time.Time
	var lostErr error
	c := fc.dial(t, Config{RTOMax: 100 * time.Millisecond,
		OnJeopardy: func(tok *Token, until time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if jeopardyAt.IsZero() {
				jeopardyAt, validUntil = time.Now(), until
			}
		},
		OnLost: func(tok *Token, err error) {
			mu.Lock()
			defer mu.Unlock()
			lostAt, lostErr = time.Now(), err
		}})
	tok, err := c.Acquire(ctxT(t, 5*time.Second), "j", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	fc.setSilent(0, true)
	waitClosed(t, tok.Lost(), 5*time.Second, "Lost after the worker went silent")
	waitClosed(t, tok.Done(), time.Second, "Done with Lost")
	eventually(t, 2*time.Second, "OnLost", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !lostAt.IsZero()
	})
	mu.Lock()
	defer mu.Unlock()
	switch {
	case jeopardyAt.IsZero():
		t.Fatal("OnJeopardy was not called before the loss")
	case !jeopardyAt.Before(lostAt):
		t.Fatalf("OnJeopardy at %v, not before OnLost at %v", jeopardyAt, lostAt)
	case !jeopardyAt.Before(validUntil):
		t.Fatalf("OnJeopardy at %v, after the validity it warns of ended (%v)", jeopardyAt, validUntil)
	case !errors.Is(lostErr, ErrLost):
		t.Fatalf("OnLost err %v, want ErrLost", lostErr)
	}
	if s := tok.State(); s != TokenLost {
		t.Fatalf("state %v, want lost", s)
	}
}

// TestReleaseDoesNotWaitBehindUpgrade: a revoke handler's Release (and a
// downgrade) must not wait for an upgrading Convert of the same token that
// waits in the queue: the upgrade is withdrawn and returns ErrCanceled.
func TestReleaseDoesNotWaitBehindUpgrade(t *testing.T) {
	for _, downgrade := range []bool{false, true} {
		name := map[bool]string{false: "release", true: "downgrade"}[downgrade]
		t.Run(name, func(t *testing.T) {
			fc := newFakeCluster(t, 34, fakeConfig{})
			a := fc.dial(t, Config{})
			b := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
			ctx := ctxT(t, 10*time.Second)
			ta, err := a.Acquire(ctx, "u", wire.PR)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.Acquire(ctx, "u", wire.PR); err != nil {
				t.Fatal(err)
			}
			upgraded := make(chan error, 1)
			go func() { upgraded <- ta.Convert(ctx, wire.EX) }()
			eventually(t, 3*time.Second, "the upgrade queued", func() bool { return fc.waiters(0, "u") == 1 })
			start := time.Now()
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			if downgrade {
				err = ta.Convert(rctx, wire.NL)
			} else {
				err = ta.Release(rctx)
			}
			if err != nil {
				t.Fatalf("%s behind a queued upgrade: %v", name, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("%s took %v: it waited behind the upgrade", name, d)
			}
			select {
			case err := <-upgraded:
				if !errors.Is(err, ErrCanceled) {
					t.Fatalf("withdrawn upgrade returned %v, want ErrCanceled", err)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the upgrade did not return")
			}
			if downgrade {
				if m := ta.Mode(); m != wire.NL || !ta.Valid() {
					t.Fatalf("after the downgrade: mode %v valid %v", m, ta.Valid())
				}
			}
		})
	}
}

// TestAcquireGivesUpUnconfirmed: a grant that waited long in the queue is
// confirmed by a fresh KEEPALIVE before Acquire returns it; when the worker
// cannot vouch (validity 0) until ctx ends, Acquire fails and gives the
// grant back rather than return a token in jeopardy.
func TestAcquireGivesUpUnconfirmed(t *testing.T) {
	fc := newFakeCluster(t, 35, fakeConfig{workerTTL: 800 * time.Millisecond, grace: 400 * time.Millisecond})
	holder := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	clk := fakeclock.New(time.Time{})
	waiter := fc.dial(t, withClock(Config{}, clk))
	ctx := ctxT(t, 10*time.Second)
	th, err := holder.Acquire(ctx, "c", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		_, err := waiter.Acquire(wctx, "c", wire.EX)
		got <- err
	}()
	eventually(t, 2*time.Second, "the waiter queued", func() bool { return fc.waiters(0, "c") == 1 })
	clk.Advance(time.Second) // longer than W: the grant's own validity will have run out
	fc.setNoVouch(0, true)
	if err := th.Release(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "the grant made", func() bool { return len(fc.grants(0, "c")) == 1 })
	select {
	case err := <-got:
		t.Fatalf("Acquire returned (%v) before the worker vouched for the grant", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-got:
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v, want ErrUnavailable and context.Canceled", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Acquire did not return when its context ended")
	}
	eventually(t, 3*time.Second, "the unconfirmed grant given back", func() bool { return len(fc.grants(0, "c")) == 0 })
}

// TestLongWaitConfirmedByKeepalive: the same wait with a worker that can
// vouch: Acquire returns a token valid for at least freshFor.
func TestLongWaitConfirmedByKeepalive(t *testing.T) {
	fc := newFakeCluster(t, 36, fakeConfig{workerTTL: 800 * time.Millisecond, grace: 400 * time.Millisecond})
	holder := fc.dial(t, Config{OnRevoke: func(context.Context, *Token, Revocation) {}})
	clk := fakeclock.New(time.Time{})
	waiter := fc.dial(t, withClock(Config{}, clk))
	ctx := ctxT(t, 10*time.Second)
	th, err := holder.Acquire(ctx, "k", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *Token, 1)
	go func() {
		tok, err := waiter.Acquire(ctx, "k", wire.EX)
		if err != nil {
			t.Error(err)
		}
		got <- tok
	}()
	eventually(t, 2*time.Second, "the waiter queued", func() bool { return fc.waiters(0, "k") == 1 })
	clk.Advance(1500 * time.Millisecond) // W + G and more
	if err := th.Release(ctx); err != nil {
		t.Fatal(err)
	}
	tok := <-got
	if tok == nil {
		t.FailNow()
	}
	if left := tok.ValidUntil().Sub(clk.Now()); left < waiter.freshFor() || isClosed(tok.Lost()) {
		t.Fatalf("granted with %v left (want %v), lost %v: %v", left, waiter.freshFor(), isClosed(tok.Lost()), tok.Err())
	}
}

// TestUnreachableNamesWhatWasTried: seeds that never answer end
// Dial within its context, with an error naming them; a token request to
// a worker that stopped answering names that worker.
func TestUnreachableNamesWhatWasTried(t *testing.T) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = DialConfig(ctx, Config{Seeds: []string{silent.LocalAddr().String()}, Insecure: true})
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial took %v with a 400ms context", d)
	}
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), silent.LocalAddr().String()) {
		t.Fatalf("Dial error %v: want ErrUnavailable, the deadline, and the seed's address", err)
	}

	fc := newFakeCluster(t, 37, fakeConfig{})
	c := fc.dial(t, Config{})
	fc.setSilent(0, true)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	_, err = c.Acquire(ctx2, "z", wire.EX)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), fc.addr(0)) {
		t.Fatalf("Acquire error %v: want ErrUnavailable naming %s", err, fc.addr(0))
	}
}

// TestSessionEndDuringCloseIsQuiet: a renewal or keepalive in flight when
// Close's SESSION_CLOSE lands is answered UNKNOWN_SESSION; that end is the
// one Close asked for and must not be logged as a warning (it was, about
// every other Close of a client with renewals in flight).
func TestSessionEndDuringCloseIsQuiet(t *testing.T) {
	fc := newFakeCluster(t, 38, fakeConfig{})
	var mu sync.Mutex
	var warns []string
	c := fc.dial(t, Config{Logger: slog.New(funcHandler(func(r slog.Record) {
		if r.Level >= slog.LevelWarn {
			mu.Lock()
			warns = append(warns, r.Message)
			mu.Unlock()
		}
	}))})
	if _, err := c.Acquire(ctxT(t, 5*time.Second), "q", wire.PR); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	c.state = stateClosing // as Close does before its SESSION_CLOSE
	c.mu.Unlock()
	c.sessionGone(fmt.Errorf("%w (worker: UNKNOWN_SESSION)", ErrSessionExpired))
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(warns) > 0 {
		t.Fatalf("warnings while closing: %q", warns)
	}
}

// funcHandler is a slog.Handler calling a function for every record.
type funcHandler func(slog.Record)

func (f funcHandler) Enabled(context.Context, slog.Level) bool      { return true }
func (f funcHandler) Handle(_ context.Context, r slog.Record) error { f(r); return nil }
func (f funcHandler) WithAttrs([]slog.Attr) slog.Handler            { return f }
func (f funcHandler) WithGroup(string) slog.Handler                 { return f }
