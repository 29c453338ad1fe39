package clientlib_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// TestGrantAfterLongWaitIsValid: a waiter queued for 3× the session TTL
// behind a holder is granted a token that is valid on return (for at least
// half the worker TTL, less the margin), stays valid while renewed, and is
// never reported lost, although its validity is counted from the first
// send of a request that waited longer than W + G.
func TestGrantAfterLongWaitIsValid(t *testing.T) {
	c := startCluster(t, nil, 1) // W = S = G = 2 s
	holder := dial(t, c, nil, 0, clientlib.Config{OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	var lost, jeopardy atomic.Int32
	waiter := dial(t, c, nil, 0, clientlib.Config{
		OnLost:     func(*clientlib.Token, error) { lost.Add(1) },
		OnJeopardy: func(*clientlib.Token, time.Time) { jeopardy.Add(1) },
	})
	ctx := ctxFor(t, 30*time.Second)
	th, err := holder.Acquire(ctx, "long", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	const sessionTTL, workerTTL = 2 * time.Second, 2 * time.Second
	type result struct {
		tok *clientlib.Token
		err error
		at  time.Time
	}
	got := make(chan result, 1)
	go func() {
		tok, err := waiter.Acquire(ctx, "long", wire.EX)
		got <- result{tok, err, time.Now()}
	}()
	hold := time.NewTimer(3 * sessionTTL)
	select {
	case r := <-got:
		t.Fatalf("granted while held: %v %v", r.tok, r.err)
	case <-hold.C:
	}
	if err := th.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("acquire after a long wait: %v", r.err)
	}
	left := time.Until(r.tok.ValidUntil())
	t.Logf("validity left on the grant after a %v wait: %v (ValidUntil - now, measured %v after Acquire returned)",
		3*sessionTTL, left.Round(time.Millisecond), time.Since(r.at).Round(time.Microsecond))
	// The promise is (W − margin)/2 = 985 ms at return; a little of it
	// passes before this line runs.
	if min := (workerTTL - workerTTL/100 - 10*time.Millisecond) / 2; !r.tok.Valid() || left < min-100*time.Millisecond {
		t.Fatalf("granted token valid %v with %v left, want at least about %v", r.tok.Valid(), left, min)
	}
	// It stays valid while its worker renews it: 2 session TTLs.
	clientlib.Always(t, 2*sessionTTL, "the token valid after the long wait", func() bool {
		return r.tok.State() == clientlib.TokenValid
	})
	if n := lost.Load(); n != 0 || isClosedCh(r.tok.Lost()) {
		t.Fatalf("OnLost called %d times, Lost closed %v", n, isClosedCh(r.tok.Lost()))
	}
	if n := jeopardy.Load(); n != 0 {
		t.Logf("note: OnJeopardy called %d times on a healthy worker (a loaded machine delays keepalives)", n)
	}
	if err := r.tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func isClosedCh(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// warnCounter is a slog handler that keeps the records at WARN or above.
type warnCounter struct {
	mu   *sync.Mutex
	recs *[]string
}

func (w warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w warnCounter) Handle(_ context.Context, r slog.Record) error {
	var b bytes.Buffer
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	w.mu.Lock()
	*w.recs = append(*w.recs, b.String())
	w.mu.Unlock()
	return nil
}
func (w warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w warnCounter) WithGroup(string) slog.Handler      { return w }

// TestCloseIsQuiet: closing a client that holds tokens, while keepalives
// and renewals may be in flight, logs nothing at WARN: nothing went wrong
// (a renewal in flight answered after the SESSION_CLOSE included).
func TestCloseIsQuiet(t *testing.T) {
	c := startCluster(t, nil, 1)
	var mu sync.Mutex
	var recs []string
	log := slog.New(warnCounter{&mu, &recs})
	for i := range 8 {
		cl := dial(t, c, nil, 0, clientlib.Config{Logger: log})
		ctx := ctxFor(t, 10*time.Second)
		for j := range 4 {
			if _, err := cl.Acquire(ctx, strings.Repeat("q", j+1), wire.PR); err != nil {
				t.Fatal(err)
			}
		}
		// Close at a different point of the keepalive (500 ms) and renewal
		// (667 ms) periods each time, so that one is in flight at some
		// Close. Real time is the point: no event says that one is in
		// flight, and a client on a fake clock that stands still would not
		// retransmit its SESSION_CLOSE, which the worker answers late.
		time.Sleep(time.Duration(i) * 120 * time.Millisecond)
		if err := cl.Close(); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(recs) > 0 {
		t.Fatalf("Close logged %d warnings, e.g. %q", len(recs), recs[0])
	}
}

// TestValueSurvivesWorkerCrash: a token's value block survives the crash
// of its worker while a PR holder has it (the DLM's rule): the holder's
// RECLAIM carries its copy and the new owner takes it, so the next holder
// sees the value, not "lost".
func TestValueSurvivesWorkerCrash(t *testing.T) {
	c := startCluster(t, nil, 2)
	writer := dial(t, c, nil, 0, clientlib.Config{})
	holder := dial(t, c, nil, 0, clientlib.Config{})
	reader := dial(t, c, nil, 0, clientlib.Config{})
	ctx := ctxFor(t, 30*time.Second)
	tw, err := writer.Acquire(ctx, "lvb", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Release(ctx, clientlib.SetValue([]byte("v42"))); err != nil {
		t.Fatal(err)
	}
	th, err := holder.Acquire(ctx, "lvb", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := th.Value(); !ok || string(v) != "v42" {
		t.Fatalf("holder's value %q %v", v, ok)
	}
	var owner int = -1
	for i, w := range c.Workers() {
		if w.HeldTokens() == 1 {
			owner = i
		}
	}
	if owner < 0 {
		t.Fatal("no worker holds the grant")
	}
	fence := th.Fence()
	c.Workers()[owner].Close() // stops at once: its shards are recovered with a grace period
	// The holder reclaims its grant at the new owner with the same fence.
	clientlib.Eventually(t, 20*time.Second, "the holder's grant reclaimed", func() bool {
		if th.State() == clientlib.TokenLost {
			t.Fatalf("holder's token lost (err %v)", th.Err())
		}
		return th.State() == clientlib.TokenValid && th.Fence() == fence && time.Until(th.ValidUntil()) >= 500*time.Millisecond
	})
	tr, err := reader.Acquire(ctx, "lvb", wire.PR) // waits out the grace period
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := tr.Value(); !ok || string(v) != "v42" || tr.ValueState() != clientlib.ValueValid {
		t.Fatalf("value after the crash %q (%v), want \"v42\"", v, tr.ValueState())
	}
	if v, ok := th.Value(); !ok || string(v) != "v42" {
		t.Fatalf("holder's value after its reclaim %q %v", v, ok)
	}
}
