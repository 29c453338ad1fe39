package table

import (
	"errors"
	"fmt"
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
