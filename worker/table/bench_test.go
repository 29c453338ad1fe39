package table

import (
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

func benchNames(n int) [][]byte {
	names := make([][]byte, n)
	for i := range names {
		names[i] = strconv.AppendInt([]byte("file/"), int64(i), 10)
	}
	return names
}

// BenchmarkAcquireRelease measures an uncontended acquire + release pair
// (one op = both steps), as the shell drives it: one reused output slice.
//
//   - new-token: the token is created by the acquire and freed by the release
//     (the name is copied once per creation: 1 allocation).
//   - kept-token: the token stays in memory (it keeps a value block).
//   - lone-session: the session has nothing else here, so its record is
//     created and freed on every pair too.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, c := range []struct {
		name          string
		value, shared bool
	}{{"new-token", false, true}, {"kept-token", true, true}, {"lone-session", false, false}} {
		b.Run(c.name, func(b *testing.B) {
			tab, _ := New(1, DefaultConfig())
			names := benchNames(1024)
			out := make([]Output, 0, 16)
			var now int64
			if c.shared { // the session holds something else all along
				out = tab.Step(Input{Op: OpAcquire, Session: 1, Req: 1, Name: []byte("other"), Mode: wire.EX,
					Start: WholeStart, End: WholeEnd}, now, out[:0])
			}
			if c.value {
				for i, n := range names {
					out = tab.Step(Input{Op: OpAcquire, Session: 2, Req: uint64(i + 1), Name: n, Mode: wire.EX,
						Start: WholeStart, End: WholeEnd}, now, out[:0])
					out = tab.Step(Input{Op: OpRelease, Session: 2, Req: uint64(i + 1), Name: n, Fence: out[0].Fence,
						SetValue: true, Value: []byte("v")}, now, out[:0])
				}
			}
			req := uint64(10)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				name := names[i&1023]
				now++
				req++
				out = tab.Step(Input{Op: OpAcquire, Session: 1, Req: req, Name: name, Mode: wire.EX,
					Start: WholeStart, End: WholeEnd, Deadline: now + 1e9}, now, out[:0])
				if len(out) != 1 || out[0].Status != StatusOK {
					b.Fatalf("acquire: %+v", out)
				}
				req++
				out = tab.Step(Input{Op: OpRelease, Session: 1, Req: req, Name: name, Fence: out[0].Fence}, now, out[:0])
				if len(out) != 1 || out[0].Status != StatusOK {
					b.Fatalf("release: %+v", out)
				}
			}
		})
	}
}

// BenchmarkContended measures a handoff between two sessions on one token:
// s1 holds EX, s2 queues, s1 releases (s2 granted, async), s2 releases.
func BenchmarkContended(b *testing.B) {
	tab, _ := New(1, DefaultConfig())
	name := []byte("hot")
	out := make([]Output, 0, 16)
	var now int64
	var req uint64
	step := func(in Input) {
		req++
		in.Req, in.Name, in.Start, in.End, in.Deadline = req, name, WholeStart, WholeEnd, now+1e9
		out = tab.Step(in, now, out[:0])
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		now++
		step(Input{Op: OpAcquire, Session: 1, Mode: wire.EX})
		f1 := out[0].Fence
		step(Input{Op: OpAcquire, Session: 2, Mode: wire.EX})
		step(Input{Op: OpRelease, Session: 1, Fence: f1})
		f2 := out[1].Fence
		step(Input{Op: OpRelease, Session: 2, Fence: f2})
		if out[0].Status != StatusOK {
			b.Fatalf("%+v", out)
		}
	}
}

// heldTokens fills a table with n tokens, each held by one EX grant, spread
// over 1000 sessions, and returns the heap bytes per held token.
func heldTokens(tb testing.TB, n int) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tab, _ := New(1, DefaultConfig())
	out := make([]Output, 0, 4)
	name := make([]byte, 0, 32)
	for i := 0; i < n; i++ {
		name = strconv.AppendInt(append(name[:0], "file/"...), int64(i), 10)
		out = tab.Step(Input{Op: OpAcquire, Session: uint64(1 + i%1000), Req: uint64(i + 1), Name: name, Mode: wire.EX,
			Start: WholeStart, End: WholeEnd}, 0, out[:0])
		if out[0].Status != StatusOK {
			tb.Fatalf("%+v", out[0])
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if st := tab.Stats(); st.Grants != n || st.Tokens != n {
		tb.Fatalf("stats %+v", st)
	}
	runtime.KeepAlive(tab)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
}

// TestMemoryPerHeldToken checks that a held, uncontended token (names of
// 6-12 bytes) costs less than 200 bytes of heap.
func TestMemoryPerHeldToken(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	per := heldTokens(t, n)
	t.Logf("%d held tokens: %.1f bytes/token", n, per)
	if per >= 200 {
		t.Errorf("%.1f bytes per held token, want < 200", per)
	}
}

// BenchmarkHeldTokens1M reports the memory per held token at 1M tokens.
func BenchmarkHeldTokens1M(b *testing.B) {
	var per float64
	for i := 0; i < b.N; i++ {
		per = heldTokens(b, 1_000_000)
	}
	b.ReportMetric(per, "bytes/token")
}

// BenchmarkEndSession ends a session holding 1M grants (one per token)
// either at once (OpEndSession) or in steps of 2048 (EndSession, as the
// worker does between releases of its lock). ns/grant is the whole end's
// cost per grant dropped; max-step-us the longest the table, and so the
// worker's lock, is held in one call.
func BenchmarkEndSession(b *testing.B) {
	const n = 1_000_000
	for _, c := range []struct {
		name  string
		limit int
	}{{"whole", 0}, {"steps-2048", 2048}} {
		b.Run(c.name, func(b *testing.B) {
			var total, worst time.Duration
			out := make([]Output, 0, 16)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				tab := heldBy(b, 1, n)
				b.StartTimer()
				for done := false; !done; {
					t0 := time.Now()
					if c.limit == 0 {
						out = tab.Step(Input{Op: OpEndSession, Session: 1}, 1, out[:0])
						done = true
					} else {
						out, done = tab.EndSession(1, c.limit, 1, out[:0])
					}
					d := time.Since(t0)
					total += d
					worst = max(worst, d)
				}
				if st := tab.Stats(); st.Grants != 0 || st.Sessions != 0 {
					b.Fatalf("after the end: %+v", st)
				}
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N*n), "ns/grant")
			b.ReportMetric(float64(worst.Microseconds()), "max-step-us")
		})
	}
}

// heldBy returns a table where session holds n tokens in EX.
func heldBy(tb testing.TB, session uint64, n int) *Table {
	tab, _ := New(1, Config{})
	out := make([]Output, 0, 4)
	name := make([]byte, 0, 32)
	for i := 0; i < n; i++ {
		name = strconv.AppendInt(append(name[:0], "file/"...), int64(i), 10)
		out = tab.Step(Input{Op: OpAcquire, Session: session, Req: uint64(i + 1), Name: name, Mode: wire.EX,
			Start: WholeStart, End: WholeEnd}, 0, out[:0])
		if out[0].Status != StatusOK {
			tb.Fatalf("%+v", out[0])
		}
	}
	return tab
}
