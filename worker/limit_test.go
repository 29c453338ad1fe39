package worker

import (
	"testing"

	"github.com/tokend/tokend/wire"
)

// TestOverLimit: the reply-cache bound answers LIMIT to new work only. When
// a worker dies, a session's oldest request (waiting for the dead worker's
// shard, and redirected here) pins its ack; refusing that request would
// deadlock the session (the cache shrinks only once it is answered), and
// refusing a RECLAIM would lose a held token (invariant 3).
// recovery.TestWorkerKill shows both under load with real processes.
func TestOverLimit(t *testing.T) {
	w := &Worker{}
	s := newSession(1, nil)
	const pinned = 100 // the oldest unfinished request: the session's ack
	s.ack = pinned
	for id := uint64(pinned + 1); len(s.cache) < replyCacheCap; id++ {
		s.cache[id] = &cached{typ: wire.TypeAcquire}
		s.top = id
	}
	for _, tc := range []struct {
		name string
		h    wire.Header
		want bool
	}{
		{"new acquire", wire.Header{Type: wire.TypeAcquire, Request: s.top + 1}, true},
		{"new release", wire.Header{Type: wire.TypeRelease, Request: s.top + 1}, true},
		{"the pinned acquire, redirected from a dead worker", wire.Header{Type: wire.TypeAcquire, Request: pinned, Ack: pinned}, false},
		{"an older unanswered release", wire.Header{Type: wire.TypeRelease, Request: s.top - 1}, false},
		{"new reclaim", wire.Header{Type: wire.TypeReclaim, Request: s.top + 1}, false},
	} {
		if got := w.overLimit(s, tc.h); got != tc.want {
			t.Errorf("%s: overLimit = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Below the bound nothing is refused.
	delete(s.cache, s.top)
	if w.overLimit(s, wire.Header{Type: wire.TypeAcquire, Request: s.top + 1}) {
		t.Error("refused below the bound")
	}
	// Between the bounds, reclaims and old requests still go in; a client
	// that keeps sending them is stopped at the hard bound.
	for id := s.top + 1; len(s.cache) < replyCacheHard-1; id++ {
		s.cache[id] = &cached{typ: wire.TypeReclaim}
	}
	if w.overLimit(s, wire.Header{Type: wire.TypeReclaim, Request: s.top + 1}) ||
		w.overLimit(s, wire.Header{Type: wire.TypeAcquire, Request: pinned}) {
		t.Error("refused below the hard bound")
	}
	s.cache[0] = &cached{}
	if !w.overLimit(s, wire.Header{Type: wire.TypeAcquire, Request: pinned}) ||
		!w.overLimit(s, wire.Header{Type: wire.TypeReclaim, Request: s.top + 1}) {
		t.Error("let in beyond the hard bound")
	}
}
