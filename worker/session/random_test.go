package session

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/tokend/tokend/wire"
)

// TestAtMostOnceRandom drives a Session with random duplicated, reordered
// and late requests, acks, outcomes and GRANT_ACKs, and checks it against
// a naive model of SPEC §11: an id whose outcome stands (final or QUEUED,
// not settled retryable) is never applied again and gets the latest reply;
// an id below the highest ack is stale unless it was answered QUEUED and
// is kept (still waiting; or settled and neither acknowledged nor past its
// Linger); any other id is applied (invariant 4).
func TestAtMostOnceRandom(t *testing.T) {
	statuses := []wire.Status{wire.StatusOK, wire.StatusQueued, wire.StatusConflict, wire.StatusNotOwner,
		wire.StatusGrace, wire.StatusUnavailable, wire.StatusExhausted, wire.StatusTimeout}
	types := []wire.Type{wire.TypeAcquire, wire.TypeRelease, wire.TypeConvert, wire.TypeReclaim}
	type entry struct {
		pkt             []byte
		pending, exempt bool
		expire          int64
	}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		s := New(Config{Cap: 1 << 20, Hard: 1 << 20})
		var ack uint64
		var now int64
		stands := map[uint64]*entry{} // the model: ids whose outcome stands
		typeOf := map[uint64]wire.Type{}
		for step := range 4000 {
			now += int64(rng.IntN(100)) * 1e6 // Linger passes many times over a run
			id := ack + rng.Uint64N(20)       // some below the ack once it moves
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
			switch rng.IntN(4) {
			case 0, 1: // a request (first copy or duplicate)
				h := wire.Header{Type: typ, Request: id, Ack: min(id, ack+rng.Uint64N(3))}
				v, pkt := s.Decide(h)
				e := stands[id]
				want := Apply
				switch {
				case e != nil:
					want = Resend
				case id < ack && (typ == wire.TypeAcquire || typ == wire.TypeConvert):
					want = Unknown
				case id < ack:
					want = Stale
				}
				if v != want {
					t.Fatalf("seed %d step %d: id %d (ack %d): %v, want %v", seed, step, id, ack, v, want)
				}
				if v == Resend && !bytes.Equal(pkt, e.pkt) {
					t.Fatalf("seed %d step %d: id %d resent %q, want %q", seed, step, id, pkt, e.pkt)
				}
				if v != Apply {
					continue
				}
				s.Ack(h.Ack, now)
				if h.Ack > ack {
					ack = h.Ack
					for k, e := range stands {
						switch {
						case k >= ack || e.pending:
						case !e.exempt || (e.expire != 0 && e.expire <= now):
							delete(stands, k)
						case e.expire == 0:
							e.expire = now + Linger
						}
					}
				}
				st := statuses[rng.IntN(len(statuses))]
				r := reply(typ, id, st)
				s.Applied(Outcome{Req: id, Type: typ, Status: st, Pkt: r})
				if !st.Retryable() {
					q := st == wire.StatusQueued
					stands[id] = &entry{pkt: r, pending: q, exempt: q}
				}
			case 2: // a later outcome of a request
				st := statuses[rng.IntN(len(statuses))]
				r := append(reply(typ, id, st), " (async)"...)
				s.Settle(id, st, r, now)
				if e := stands[id]; e != nil {
					if st.Retryable() {
						delete(stands, id)
					} else {
						e.pkt, e.pending = r, false
						if e.exempt && id < ack && e.expire == 0 {
							e.expire = now + Linger
						}
					}
				}
			case 3: // GRANT_ACK: the client has the outcome of id
				s.AckOutcome(id)
				if e := stands[id]; e != nil && e.exempt && !e.pending {
					if id < ack {
						delete(stands, id)
					} else {
						e.exempt, e.expire = false, 0
					}
				}
			}
			if s.Len() != len(stands) {
				t.Fatalf("seed %d step %d: %d cached, model has %d", seed, step, s.Len(), len(stands))
			}
		}
	}
}
