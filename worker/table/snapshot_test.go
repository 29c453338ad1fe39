package table

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/tokend/tokend/wire"
)

// queuedTable returns a table at epoch 5 where session 1 holds f PR and
// g EX (fences 5:1, 5:2) and session 2 waits for f EX (request 7).
func queuedTable(t testing.TB) *Table {
	t.Helper()
	tab, err := New(5, Config{})
	if err != nil {
		t.Fatal(err)
	}
	var out []Output
	out = tab.Step(Input{Op: OpAcquire, Session: 1, Req: 1, Name: []byte("f"), Mode: wire.PR, Start: WholeStart, End: WholeEnd, Deadline: 100}, 0, out)
	out = tab.Step(Input{Op: OpAcquire, Session: 1, Req: 2, Name: []byte("g"), Mode: wire.EX, Start: WholeStart, End: WholeEnd, Deadline: 100}, 0, out)
	out = tab.Step(Input{Op: OpAcquire, Session: 2, Req: 7, Name: []byte("f"), Mode: wire.EX, Start: WholeStart, End: WholeEnd, Deadline: 100}, 0, out)
	if len(out) < 3 || out[2].Status != StatusQueued {
		t.Fatalf("setup: %v", outputsString(out))
	}
	return tab
}

// TestImportBadWaiters: a snapshot whose queued requests the exporting
// table cannot have held is refused with ErrBadSnapshot, and a good one
// imports.
func TestImportBadWaiters(t *testing.T) {
	snap, err := queuedTable(t).Export()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Waiters) != 1 {
		t.Fatalf("exported %d waiters, want 1", len(snap.Waiters))
	}
	if _, err := Import(snap, 6, Config{}); err != nil {
		t.Fatalf("good snapshot: %v", err)
	}
	good := snap.Waiters[0]
	for _, tc := range []struct {
		name string
		mod  func(w []WaiterState) []WaiterState
	}{
		{"no session", func(w []WaiterState) []WaiterState { w[0].Session = 0; return w }},
		{"bad name", func(w []WaiterState) []WaiterState { w[0].Name = nil; return w }},
		{"long name", func(w []WaiterState) []WaiterState { w[0].Name = []byte(strings.Repeat("x", MaxNameLen+1)); return w }},
		{"bad mode", func(w []WaiterState) []WaiterState { w[0].Mode = 99; return w }},
		{"empty range", func(w []WaiterState) []WaiterState { w[0].Start = w[0].End; return w }},
		{"request twice", func(w []WaiterState) []WaiterState { return append(w, good) }},
		{"conversion of no grant", func(w []WaiterState) []WaiterState { w[0].Conv = Fence(5, 9); return w }},
		{"conversion of another's grant", func(w []WaiterState) []WaiterState { w[0].Conv = Fence(5, 1); return w }},
		{"conversion to a covered mode", func(w []WaiterState) []WaiterState {
			w[0].Session, w[0].Req, w[0].Conv, w[0].Mode = 1, 3, Fence(5, 1), wire.CR
			return w
		}},
		{"conversion with another range", func(w []WaiterState) []WaiterState {
			w[0].Session, w[0].Req, w[0].Conv, w[0].End = 1, 3, Fence(5, 1), 4096
			return w
		}},
		{"one conversion (good)", nil},
		{"two conversions of one grant", func(w []WaiterState) []WaiterState {
			c := WaiterState{Session: 1, Req: 3, Name: []byte("f"), Mode: wire.EX, Start: WholeStart, End: WholeEnd, Conv: Fence(5, 1)}
			c2 := c
			c2.Req = 4
			return append(w, c, c2)
		}},
	} {
		if tc.mod == nil {
			s := *snap
			s.Waiters = append(append([]WaiterState(nil), snap.Waiters...),
				WaiterState{Session: 1, Req: 3, Name: []byte("f"), Mode: wire.EX, Start: WholeStart, End: WholeEnd, Conv: Fence(5, 1), Deadline: 100})
			if _, err := Import(&s, 6, Config{}); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			s := *snap
			s.Waiters = tc.mod(append([]WaiterState(nil), snap.Waiters...))
			if _, err := Import(&s, 6, Config{}); !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("imported: %v", err)
			}
		})
	}
}

// BenchmarkHandoff10kWaiters: Export and Import of a shard with 10,000
// queued requests (100 tokens held EX, 100 waiters each), per handoff.
func BenchmarkHandoff10kWaiters(b *testing.B) {
	tab, err := New(1, Config{})
	if err != nil {
		b.Fatal(err)
	}
	var out []Output
	for i := range 100 {
		name := []byte(fmt.Sprintf("t/%d", i))
		out = tab.Step(Input{Op: OpAcquire, Session: 1, Req: uint64(i + 1), Name: name, Mode: wire.EX, Start: WholeStart, End: WholeEnd, Deadline: 1 << 40}, 0, out[:0])
		for j := range 100 {
			out = tab.Step(Input{Op: OpAcquire, Session: uint64(2 + j), Req: uint64(i + 1), Name: name, Mode: wire.EX, Start: WholeStart, End: WholeEnd, Deadline: 1 << 40}, 0, out[:0])
		}
	}
	if n := tab.Stats().Waiters; n != 10000 {
		b.Fatalf("%d waiters", n)
	}
	b.ResetTimer()
	epoch := uint32(1)
	for range b.N {
		snap, err := tab.Export()
		if err != nil {
			b.Fatal(err)
		}
		epoch++
		if tab, err = Import(snap, epoch, Config{}); err != nil {
			b.Fatal(err)
		}
	}
	if n := tab.Stats().Waiters; n != 10000 {
		b.Fatalf("%d waiters after the handoffs", n)
	}
}

// TestHandoffThreeWaitersRebased: three requests queued on a token behind
// a holder move with the shard in order, under their request ids, with
// their deadlines moved to the new owner's clock (Rebase): Queued reports
// their places, the first is granted when the holder releases (an async
// outcome under its old id), and the others time out when they would have
// at the old owner.
func TestHandoffThreeWaitersRebased(t *testing.T) {
	old, err := New(5, Config{})
	if err != nil {
		t.Fatal(err)
	}
	name := []byte("f")
	var out []Output
	out = old.Step(Input{Op: OpAcquire, Session: 1, Req: 1, Name: name, Mode: wire.EX, Start: WholeStart, End: WholeEnd, Try: true}, 1000, out[:0])
	holder := out[0].Fence
	for i, s := range []uint64{2, 3, 4} {
		out = old.Step(Input{Op: OpAcquire, Session: s, Req: 10 + s, Name: name, Mode: wire.EX, Start: WholeStart, End: WholeEnd,
			Deadline: 5000 + int64(i)*1000}, 1000+int64(i), out[:0])
		if out[0].Status != StatusQueued || out[0].Position != uint32(i+1) {
			t.Fatalf("session %d: %s", s, outputsString(out))
		}
	}
	snap, err := old.Export()
	if err != nil {
		t.Fatal(err)
	}
	// The new owner's clock reads 1,000,000 more than the old owner's.
	const delta = 1_000_000
	snap.Rebase(delta)
	tab, err := Import(snap, 6, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range []uint64{2, 3, 4} {
		if pos, ok := tab.Queued(s, 10+s); !ok || pos != uint32(i+1) {
			t.Fatalf("session %d request %d after the move: queued %v at %d, want %d", s, 10+s, ok, pos, i+1)
		}
	}
	if _, ok := tab.Queued(2, 99); ok {
		t.Fatal("an unknown request reported queued")
	}
	if d, ok := tab.NextDeadline(); !ok || d != 5000+delta {
		t.Fatalf("next deadline %d %v, want %d", d, ok, 5000+delta)
	}
	// The holder blocks the three: one REVOKE (to NL) per waiter, as when
	// they queued; a table without waiters calls for none.
	out = tab.Revokes(out[:0])
	if len(out) != 3 {
		t.Fatalf("revokes after the move: %s", outputsString(out))
	}
	for _, o := range out {
		if o.Kind != KindRevoke || o.Session != 1 || o.Fence != holder || o.Mode != wire.NL {
			t.Fatalf("revokes after the move: %s", outputsString(out))
		}
	}
	if empty, _ := New(6, Config{}); len(empty.Revokes(nil)) != 0 {
		t.Fatal("revokes from an empty table")
	}
	out = tab.Step(Input{Op: OpRelease, Session: 1, Req: 2, Name: name, Fence: holder}, delta+2000, out[:0])
	var granted []Output
	for _, o := range out {
		if o.Kind == KindAsync {
			granted = append(granted, o)
		}
	}
	if len(granted) != 1 || granted[0].Session != 2 || granted[0].Req != 12 || granted[0].Status != StatusOK ||
		FenceEpoch(granted[0].Fence) != 6 {
		t.Fatalf("after the holder's release: %s", outputsString(out))
	}
	if _, ok := tab.Queued(2, 12); ok {
		t.Fatal("the granted request is still reported queued")
	}
	// Session 3 waits until 6000 on the old clock: not before.
	if out = tab.Tick(delta+5999, out[:0]); len(out) != 0 {
		t.Fatalf("tick before the deadline: %s", outputsString(out))
	}
	out = tab.Tick(delta+6000, out[:0])
	if len(out) != 1 || out[0].Session != 3 || out[0].Req != 13 || out[0].Status != StatusTimeout {
		t.Fatalf("tick at session 3's deadline: %s", outputsString(out))
	}
}

// TestRebase: no deadline stays none; sums are clamped.
func TestRebase(t *testing.T) {
	s := &Snapshot{Waiters: []WaiterState{
		{Deadline: math.MaxInt64, Since: 10},
		{Deadline: 100, Since: 50},
		{Deadline: math.MaxInt64 - 5, Since: 0},
	}}
	s.Rebase(10)
	want := []WaiterState{{Deadline: math.MaxInt64, Since: 20}, {Deadline: 110, Since: 60}, {Deadline: math.MaxInt64 - 1, Since: 10}}
	for i, w := range s.Waiters {
		if w.Deadline != want[i].Deadline || w.Since != want[i].Since {
			t.Errorf("waiter %d: %d/%d, want %d/%d", i, w.Deadline, w.Since, want[i].Deadline, want[i].Since)
		}
	}
	s.Rebase(math.MinInt64)
	s.Rebase(math.MinInt64)
	if s.Waiters[1].Deadline != math.MinInt64 {
		t.Errorf("clamped below: %d", s.Waiters[1].Deadline)
	}
}
