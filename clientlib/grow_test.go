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
