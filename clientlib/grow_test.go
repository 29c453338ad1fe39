package clientlib

import (
	"errors"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// TestReleaseRange: a grant grown to the whole token gives back a suffix
// with ReleaseRange and keeps the prefix under the same fence; another
// session then gets the suffix but conflicts on the prefix. A hole in the
// middle is refused locally and changes nothing.
func TestReleaseRange(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{})
	a := fc.dial(t, Config{})
	b := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)

	tk, err := a.Acquire(ctx, "file", wire.PW, Range(0, 4096), Grow())
	if err != nil {
		t.Fatal(err)
	}
	if s, e := tk.Range(); s != 0 || e != wire.WholeEnd {
		t.Fatalf("grown range [%d, %d), want the whole token", s, e)
	}
	f := tk.Fence()
	if err := tk.ReleaseRange(ctx, 100, 200); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("hole in the middle: %v, want ErrBadRequest", err)
	}
	if err := tk.ReleaseRange(ctx, 8192, wire.WholeEnd); err != nil {
		t.Fatal(err)
	}
	if s, e := tk.Range(); s != 0 || e != 8192 || tk.Fence() != f || !tk.Valid() {
		t.Fatalf("after giving back the suffix: [%d, %d) fence %#x (was %#x) valid %v", s, e, tk.Fence(), f, tk.Valid())
	}
	var gs []fakeGrant
	for w := range fc.workers {
		gs = append(gs, fc.grants(w, "file")...)
	}
	if len(gs) != 1 || gs[0].fence != f || gs[0].start != 0 || gs[0].end != 8192 {
		t.Fatalf("worker grants: %+v", gs)
	}
	tb, err := b.Acquire(ctx, "file", wire.PW, Range(8192, 12288), Try())
	if err != nil {
		t.Fatalf("the suffix given back: %v", err)
	}
	if _, err := b.Acquire(ctx, "file", wire.PW, Range(0, 4096), Try()); !errors.Is(err, ErrConflict) {
		t.Fatalf("the prefix kept: %v, want ErrConflict", err)
	}
	if err := tk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tb.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCacheSplitOnRevoke: a cached grant grown to the whole token is
// revoked for a suffix only. The cache gives that suffix back with a RANGE
// release (the other client is granted it) and keeps the prefix under the
// same fence, which then serves a re-acquire with no datagram and a value
// it can no longer vouch for.
func TestCacheSplitOnRevoke(t *testing.T) {
	fc := newFakeCluster(t, 31, fakeConfig{})
	a := fc.dial(t, Config{TokenCache: DefaultTokenCache})
	b := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)

	tk, err := a.Acquire(ctx, "file", wire.PW, Range(0, 4096), Grow())
	if err != nil {
		t.Fatal(err)
	}
	f := tk.Fence()
	if err := tk.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st := a.Stats(); st.Cached != 1 {
		t.Fatalf("grown grant not cached: %+v", st)
	}
	tb, err := b.Acquire(ctx, "file", wire.PW, Range(1<<20, wire.WholeEnd))
	if err != nil {
		t.Fatalf("the suffix: %v", err)
	}
	// b was granted after the RANGE release was answered, but a's
	// bookkeeping of that answer may trail: look until the worker's two
	// grants and a's counters agree, at most 2 s.
	var gs []fakeGrant
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		gs = gs[:0]
		for w := range fc.workers {
			gs = append(gs, fc.grants(w, "file")...)
		}
		if len(gs) == 2 || time.Now().After(end) {
			break
		}
	}
	if len(gs) != 2 {
		t.Fatalf("worker grants: %+v, want the prefix and the suffix apart", gs)
	}
	for _, g := range gs {
		if g.fence == f && (g.start != 0 || g.end != 1<<20) {
			t.Fatalf("the cached grant at the worker: %+v, want [0, %d) under fence %#x", g, 1<<20, f)
		}
	}
	if st := a.Stats(); st.CacheSplits != 1 || st.CacheRevoked != 0 || st.Cached != 1 {
		t.Fatalf("after the split: %+v", st)
	}
	sent := a.Stats().Sent
	tk2, err := a.Acquire(ctx, "file", wire.PW, Range(4096, 8192))
	if err != nil {
		t.Fatal(err)
	}
	if tk2.Fence() != f || a.Stats().Sent != sent || a.Stats().CacheHits != 1 {
		t.Fatalf("re-acquire of the prefix: fence %#x (want %#x), %d datagrams, stats %+v", tk2.Fence(), f, a.Stats().Sent-sent, a.Stats())
	}
	if s, e := tk2.Range(); s != 0 || e != 1<<20 {
		t.Fatalf("re-acquired range [%d, %d), want [0, %d)", s, e, 1<<20)
	}
	if vs := tk2.ValueState(); vs != ValueUnknown {
		t.Fatalf("value state %v, want unknown", vs)
	}
	if err := tk2.Release(ctx); err != nil { // partial: given back, not cached
		t.Fatal(err)
	}
	if err := tb.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
