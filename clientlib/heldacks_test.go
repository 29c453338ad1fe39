package clientlib

import (
	"net"
	"slices"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/wire"
)

// Held acknowledgements (batchio.go, SPEC §22): a REVOKE_ACK or GRANT_ACK
// for a worker that takes bundles waits for the next datagram to that
// worker and goes ahead of it in one BUNDLE, or alone once the hold ends.

// testAck is a sealed GRANT_ACK (or REVOKE_ACK) of session sess, request
// id req, acknowledging target.
func testAck(t *testing.T, typ wire.Type, sess, req, target uint64) []byte {
	t.Helper()
	h := wire.Header{Type: typ, Session: sess, Request: req, Ack: req, Shard: 3, Epoch: 1, MapVersion: 2}
	var b []byte
	var err error
	if typ == wire.TypeGrantAck {
		b, err = wire.GrantAck{Target: target}.Append(nil, h)
	} else {
		b, err = wire.RevokeAck{Target: target}.Append(nil, h)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sent opens what rc recorded: per UDP datagram, the datagrams it carried
// (one for a datagram alone, the entries of a BUNDLE), as strings.
func sent(t *testing.T, rc *recordConn) [][]string {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out [][]string
	for i, s := range rc.got {
		b := []byte(s)
		h, err := wire.ParseHeader(b)
		if err != nil {
			t.Fatalf("datagram %d does not parse: %v", i, err)
		}
		if h.Type != wire.TypeBundle {
			out = append(out, []string{s})
			continue
		}
		if err := wire.CheckBundle(h, b); err != nil {
			t.Fatalf("bundle %d: %v", i, err)
		}
		var in []string
		for e := b[wire.HeaderLen:]; len(e) > 0; {
			var d []byte
			d, e = wire.NextBundled(e)
			in = append(in, string(d))
		}
		out = append(out, in)
	}
	return out
}

func newHoldQueue(t *testing.T, rc *recordConn, takes func(net.Addr) bool, hold time.Duration) *sendQueue {
	q := newSendQueue(rc, nil, takes, func(err error) { t.Errorf("send failed: %v", err) }, hold)
	t.Cleanup(q.close)
	return q
}

var (
	workerA = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	workerB = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 10}
)

func takesAll(net.Addr) bool { return true }

// TestHeldAckRidesAhead: acknowledgements held for a worker go out ahead
// of the next request to it, in one BUNDLE, in their order, whether the
// request's sender leads or queues behind a running send; those held for
// another worker stay held; the caller's buffer is copied.
func TestHeldAckRidesAhead(t *testing.T) {
	for _, busy := range []bool{false, true} {
		rc := &recordConn{max: 100}
		q := newHoldQueue(t, rc, takesAll, time.Hour)
		ga := testAck(t, wire.TypeGrantAck, 7, 5, 3)
		ra := testAck(t, wire.TypeRevokeAck, 7, 6, 1)
		other := testAck(t, wire.TypeRevokeAck, 7, 7, 2)
		want := []string{string(ga), string(ra)}
		buf := append([]byte(nil), ga...)
		if !q.hold(buf, workerA) {
			t.Fatal("an acknowledgement for a worker that takes bundles was not held")
		}
		clear(buf) // the receive loop reuses its buffer at once
		if !q.hold(ra, workerA) || !q.hold(other, workerB) {
			t.Fatal("not held")
		}
		if len(rc.got) != 0 {
			t.Fatal("a held acknowledgement went out at once")
		}
		if busy {
			if q.enqueue(testRequest(t, 7, 1, 2, 10), workerB, true) != sendDrain {
				t.Fatal("a request for a worker with a held acknowledgement did not take it")
			}
		}
		req := testRequest(t, 7, 8, 2, 10)
		how := q.enqueue(req, workerA, true)
		switch {
		case busy && how != sendQueued:
			t.Fatalf("behind a running send: outcome %d, want queued", how)
		case !busy && how != sendDrain:
			t.Fatalf("idle queue: outcome %d, want drain", how)
		}
		q.drain(func(err error) { t.Errorf("send failed: %v", err) })
		if n := q.acksAlone.Load(); n != 0 {
			t.Fatalf("%d acknowledgements counted late", n)
		}
		got := sent(t, rc)
		var toA []string
		if busy {
			// The lead round: B's acknowledgement and request; then A's.
			if len(got) != 2 || len(got[0]) != 2 || got[0][0] != string(other) {
				t.Fatalf("busy: sent %d datagrams %v", len(got), got)
			}
			toA = got[1]
		} else {
			if len(got) != 1 {
				t.Fatalf("sent %d UDP datagrams, want 1 bundle", len(got))
			}
			toA = got[0]
			if !slices.Equal(q.takeHeld(workerB)[0].Buffers[0], other) {
				t.Fatal("the acknowledgement for another worker was not kept")
			}
		}
		if !slices.Equal(toA, append(want, string(req))) {
			t.Fatalf("busy=%v: the bundle to A carries %d datagrams, not the two acknowledgements and then the request", busy, len(toA))
		}
	}
}

// TestHeldAckTimer: with no request to ride with, a held acknowledgement
// goes out alone once the hold ends, and is counted late.
func TestHeldAckTimer(t *testing.T) {
	rc := &recordConn{max: 100}
	q := newHoldQueue(t, rc, takesAll, time.Millisecond)
	ga := testAck(t, wire.TypeGrantAck, 7, 5, 3)
	if !q.hold(ga, workerA) {
		t.Fatal("not held")
	}
	eventually(t, 5*time.Second, "the acknowledgement sent", func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		return len(rc.got) == 1
	})
	if got := sent(t, rc); len(got[0]) != 1 || got[0][0] != string(ga) {
		t.Fatalf("sent %v, want the acknowledgement alone", got)
	}
	if q.acksAlone.Load() != 1 || q.acksHeld.Load() != 1 {
		t.Fatalf("held %d, late %d; want 1 and 1", q.acksHeld.Load(), q.acksAlone.Load())
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.busy || len(q.q) != 0 || len(q.held) != 0 {
		t.Fatalf("queue left busy=%v, %d queued, %d held", q.busy, len(q.q), len(q.held))
	}
}

// TestHeldAckNotHeld: nothing is held for a worker that does not take
// bundles, with NoBundle (no takes), nor once the queue is closed; close
// sends what was held.
func TestHeldAckNotHeld(t *testing.T) {
	rc := &recordConn{max: 100}
	ga := testAck(t, wire.TypeGrantAck, 7, 5, 3)
	q := newHoldQueue(t, rc, func(to net.Addr) bool { return sameAddr(to, workerA) }, time.Hour)
	if q.hold(ga, workerB) {
		t.Fatal("held for a worker that does not take bundles")
	}
	if newHoldQueue(t, rc, nil, time.Hour).hold(ga, workerA) {
		t.Fatal("held with NoBundle")
	}
	if !q.hold(ga, workerA) {
		t.Fatal("not held")
	}
	q.close()
	if got := sent(t, rc); len(got) != 1 || got[0][0] != string(ga) {
		t.Fatalf("close sent %v, want the held acknowledgement", got)
	}
	if q.hold(ga, workerA) {
		t.Fatal("held after close")
	}
}

// TestHeldAckQueueFull: at most sendQueueMax acknowledgements are held; the
// next is sent by the caller, and a request then takes every held one
// ahead of it (in bundles of at most MaxDatagram bytes).
func TestHeldAckQueueFull(t *testing.T) {
	rc := &recordConn{max: 1000}
	q := newHoldQueue(t, rc, takesAll, time.Hour)
	for i := range sendQueueMax {
		if !q.hold(testAck(t, wire.TypeGrantAck, 7, uint64(10+i), 3), workerA) {
			t.Fatalf("acknowledgement %d not held", i)
		}
	}
	if q.hold(testAck(t, wire.TypeGrantAck, 7, 100, 3), workerA) {
		t.Fatal("held beyond sendQueueMax")
	}
	if q.enqueue(testRequest(t, 7, 200, 2, 10), workerA, true) != sendDrain {
		t.Fatal("the request did not take the held acknowledgements")
	}
	q.drain(func(err error) { t.Errorf("send failed: %v", err) })
	n := 0
	for _, d := range sent(t, rc) {
		n += len(d)
	}
	if n != sendQueueMax+1 {
		t.Fatalf("%d datagrams sent, want %d", n, sendQueueMax+1)
	}
}

// TestHeldAckTakenForRetransmission: a datagram sent outside the queue
// (a retransmission, Client.writeAlone) takes the acknowledgements held
// for its worker, as copies, to send ahead of it; those for another
// worker stay held.
func TestHeldAckTakenForRetransmission(t *testing.T) {
	q := newHoldQueue(t, &recordConn{max: 100}, takesAll, time.Hour)
	ga, ra := testAck(t, wire.TypeGrantAck, 7, 5, 3), testAck(t, wire.TypeRevokeAck, 7, 6, 1)
	if !q.hold(ga, workerA) || !q.hold(ra, workerB) {
		t.Fatal("not held")
	}
	if q.takeHeld(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 11}) != nil {
		t.Fatal("took acknowledgements held for another worker")
	}
	got := q.takeHeld(workerA)
	if len(got) != 1 || !slices.Equal(got[0].Buffers[0], ga) || !sameAddr(got[0].Addr, workerA) {
		t.Fatalf("took %d acknowledgements, want the one for A", len(got))
	}
	if q.hold(testAck(t, wire.TypeGrantAck, 7, 9, 3), workerA); !slices.Equal(got[0].Buffers[0], ga) {
		t.Fatal("what was taken shares a buffer still in use")
	}
	if q.takeHeld(workerA) == nil || q.takeHeld(workerB) == nil || q.takeHeld(workerB) != nil {
		t.Fatal("acknowledgements not taken exactly once")
	}
}

// nullConn is a batchConn that takes every datagram and keeps nothing.
type nullConn struct{}

func (nullConn) ReadBatch([]ipv4.Message, int) (int, error)       { select {} }
func (nullConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) { return len(ms), nil }

// TestHeldAckNoAlloc: holding an acknowledgement and sending it ahead of a
// request, in one bundle, allocates nothing once the buffers have grown.
func TestHeldAckNoAlloc(t *testing.T) {
	q := newHoldQueue(t, nil, takesAll, time.Hour)
	q.bc = nullConn{}
	ga, req := testAck(t, wire.TypeGrantAck, 7, 5, 3), testRequest(t, 7, 6, 2, 10)
	fail := func(err error) { t.Errorf("send failed: %v", err) }
	round := func() {
		q.hold(ga, workerA)
		if q.enqueue(req, workerA, true) != sendDrain {
			t.Fatal("the request did not take the held acknowledgement")
		}
		q.drain(fail)
	}
	round()
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Fatalf("%v allocations per round", allocs)
	}
	if n := q.sentBundle.Load(); n != 102 {
		t.Fatalf("%d bundles sent, want 102", n)
	}
}
