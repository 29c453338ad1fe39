package session

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/tokend/tokend/wire"
)

// TestAtMostOnceRandom drives a Session with random duplicated, reordered
// and late requests, acks and outcomes, and checks it against a naive
// model of SPEC §11: an id below the highest ack is stale; an id whose
// outcome stands (final or QUEUED, not settled retryable) is never applied
// again and gets the latest reply; any other id is applied (invariant 4).
func TestAtMostOnceRandom(t *testing.T) {
	statuses := []wire.Status{wire.StatusOK, wire.StatusQueued, wire.StatusConflict, wire.StatusNotOwner,
		wire.StatusGrace, wire.StatusUnavailable, wire.StatusExhausted, wire.StatusTimeout}
	types := []wire.Type{wire.TypeAcquire, wire.TypeRelease, wire.TypeConvert, wire.TypeReclaim}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		s := New(Config{Cap: 1 << 20, Hard: 1 << 20})
		var ack uint64
		stands := map[uint64][]byte{} // the model: ids whose outcome stands -> latest reply
		typeOf := map[uint64]wire.Type{}
		for step := range 2000 {
			id := ack + rng.Uint64N(20) // some below the ack once it moves
			if id > 10 && rng.IntN(4) == 0 {
				id -= 10
			}
			if id == 0 {
				id = 1
			}
			typ, ok := typeOf[id]
			if !ok {
				typ = types[rng.IntN(len(types))]
				typeOf[id] = typ
			}
			switch rng.IntN(3) {
			case 0, 1: // a request (first copy or duplicate)
				h := wire.Header{Type: typ, Request: id, Ack: min(id, ack+rng.Uint64N(3))}
				v, pkt := s.Decide(h)
				want := Apply
				if id < ack {
					want = Stale
				} else if _, ok := stands[id]; ok {
					want = Resend
				}
				if v != want {
					t.Fatalf("seed %d step %d: id %d (ack %d): %v, want %v", seed, step, id, ack, v, want)
				}
				if v == Resend && !bytes.Equal(pkt, stands[id]) {
					t.Fatalf("seed %d step %d: id %d resent %q, want %q", seed, step, id, pkt, stands[id])
				}
				if v != Apply {
					continue
				}
				s.Ack(h.Ack)
				if h.Ack > ack {
					ack = h.Ack
					for k := range stands {
						if k < ack {
							delete(stands, k)
						}
					}
				}
				st := statuses[rng.IntN(len(statuses))]
				r := reply(typ, id, st)
				s.Applied(Outcome{Req: id, Type: typ, Status: st, Pkt: r})
				if !st.Retryable() {
					stands[id] = r
				}
			case 2: // a later outcome of a request
				st := statuses[rng.IntN(len(statuses))]
				r := append(reply(typ, id, st), " (async)"...)
				s.Settle(id, st, r)
				if _, ok := stands[id]; ok {
					if st.Retryable() {
						delete(stands, id)
					} else {
						stands[id] = r
					}
				}
			}
			if s.Len() != len(stands) {
				t.Fatalf("seed %d step %d: %d cached, model has %d", seed, step, s.Len(), len(stands))
			}
		}
	}
}
