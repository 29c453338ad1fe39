package worker

import (
	"testing"

	"github.com/tokend/tokend/wire"
	core "github.com/tokend/tokend/worker/session"
)

// TestOverLimit: the reply-cache bound answers LIMIT to new work only. When
// a worker dies, a session's oldest request (waiting for the dead worker's
// shard, and redirected here) pins its ack; refusing that request would
// deadlock the session (the cache shrinks only once it is answered), and
// refusing a RECLAIM would lose a held token (invariant 3).
// failover.TestWorkerKill shows both under load with real processes.
func TestOverLimit(t *testing.T) {
	s := core.New(core.Config{Cap: replyCacheCap, Hard: replyCacheHard})
	const pinned = 100 // the oldest unfinished request: the session's ack
	s.Ack(pinned, 0)
	var top uint64 // the newest request id cached
	for id := uint64(pinned + 1); s.Len() < replyCacheCap; id++ {
		s.Applied(core.Outcome{Req: id, Type: wire.TypeAcquire, Status: wire.StatusOK})
		top = id
	}
	for _, tc := range []struct {
		name string
		h    wire.Header
		want bool
	}{
		{"new acquire", wire.Header{Type: wire.TypeAcquire, Request: top + 1}, true},
		{"new release", wire.Header{Type: wire.TypeRelease, Request: top + 1}, true},
		{"the pinned acquire, redirected from a dead worker", wire.Header{Type: wire.TypeAcquire, Request: pinned, Ack: pinned}, false},
		{"an older unanswered release", wire.Header{Type: wire.TypeRelease, Request: top - 1}, false},
		{"new reclaim", wire.Header{Type: wire.TypeReclaim, Request: top + 1}, false},
	} {
		if got := s.OverLimit(tc.h); got != tc.want {
			t.Errorf("%s: overLimit = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Below the bound nothing is refused. (A queued request that ends
	// EXHAUSTED was not applied: its id leaves the cache.)
	s.Settle(top, wire.StatusExhausted, []byte{}, 0)
	if s.OverLimit(wire.Header{Type: wire.TypeAcquire, Request: top + 1}) {
		t.Error("refused below the bound")
	}
	// Between the bounds, reclaims and old requests still go in; a client
	// that keeps sending them is stopped at the hard bound.
	for id := top + 1; s.Len() < replyCacheHard-1; id++ {
		s.Applied(core.Outcome{Req: id, Type: wire.TypeReclaim, Status: wire.StatusOK})
	}
	if s.OverLimit(wire.Header{Type: wire.TypeReclaim, Request: top + 1}) ||
		s.OverLimit(wire.Header{Type: wire.TypeAcquire, Request: pinned}) {
		t.Error("refused below the hard bound")
	}
	s.Applied(core.Outcome{Req: 0, Type: wire.TypeAcquire, Status: wire.StatusOK})
	if !s.OverLimit(wire.Header{Type: wire.TypeAcquire, Request: pinned}) ||
		!s.OverLimit(wire.Header{Type: wire.TypeReclaim, Request: top + 1}) {
		t.Error("let in beyond the hard bound")
	}
}
