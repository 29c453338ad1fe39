package session

import (
	"slices"

	"github.com/tokend/tokend/wire"
)

// The retransmission schedule of REVOKE and GRANT_ASYNC (SPEC §12), in
// nanoseconds.
const (
	RevokeRTO    int64 = 20e6 // first retransmission 20 ms after the send, doubling ...
	RevokeRTOMax int64 = 1e9  // ... up to 1 s
)

// GrantTries bounds the transmissions of one GRANT_ASYNC, the first
// included: on the schedule above the last goes about 2.3 s after the
// first. A client that never acknowledges one (GRANT_ACK) re-polls every
// 500 ms, which ends them sooner; the bound only keeps a silent client
// from being sent grants for ever.
const GrantTries = 8

// grantSalt separates the jitter of GRANT_ASYNCs, numbered by the
// client's request ids, from that of REVOKEs, numbered by the worker.
const grantSalt = 0x6772616e74 // "grant"

// RevokeKey names what a REVOKE asks of the session: give up grant Fence of
// Shard down to Mode over [Start, End). One REVOKE per key is outstanding.
// A GRANT_ASYNC is keyed by its grant's Shard and Fence only.
type RevokeKey struct {
	Shard      uint32
	Fence      uint64
	Mode       wire.Mode // the mode the holder may keep
	Start, End uint64
}

// revoke is a datagram the worker sent unasked, a REVOKE or a GRANT_ASYNC,
// being retransmitted until it is acknowledged, or its grant is released
// or converted, or the session ends (a GRANT_ASYNC also after GrantTries).
type revoke struct {
	key   RevokeKey
	pkt   []byte
	next  int64  // next retransmission
	rto   int64  // current interval, before jitter
	tries uint64 // transmissions so far
}

// revokes is a session's REVOKEs in flight, by their request ids, and its
// GRANT_ASYNCs in flight, by the request ids of the queued requests they
// grant.
type revokes struct {
	seq uint64 // the worker's own request ids for REVOKEs to this session
	m   map[uint64]*revoke
	g   map[uint64]*revoke
}

// Revoke starts revoking k at now, unless a REVOKE for k is outstanding
// already: it takes the session's next REVOKE request id, has encode make
// the datagram, and returns it to send at once with the time of its first
// retransmission. It returns nil if k is outstanding (a grant made ahead of
// N identical waiters is revoked once, not N times) or encode fails.
func (s *Session) Revoke(k RevokeKey, now int64, encode func(seq uint64) ([]byte, error)) (pkt []byte, next int64, err error) {
	for _, r := range s.rev.m {
		if r.key == k {
			return nil, 0, nil
		}
	}
	s.rev.seq++
	seq := s.rev.seq
	pkt, err = encode(seq)
	if err != nil || pkt == nil {
		return nil, 0, err
	}
	r := &revoke{key: k, pkt: pkt, rto: RevokeRTO, tries: 1}
	r.next = now + Jitter(s.cfg.Seed, seq, r.tries, r.rto)
	if s.rev.m == nil {
		s.rev.m = map[uint64]*revoke{}
	}
	s.rev.m[seq] = r
	return pkt, r.next, nil
}

// GrantAsync records that pkt, the GRANT_ASYNC of queued request id (grant
// fence in shard), is sent at now, and returns when to retransmit it. It
// is retransmitted on the REVOKE schedule until GRANT_ACK (AckOutcome), a
// re-poll of id (Repolled), a RELEASE or CONVERT of that grant (or a
// CANCEL of id that released it), the loss of the shard, the end of the
// session, or GrantTries transmissions.
func (s *Session) GrantAsync(id uint64, shard uint32, fence uint64, pkt []byte, now int64) (next int64) {
	r := &revoke{key: RevokeKey{Shard: shard, Fence: fence}, pkt: pkt, rto: RevokeRTO, tries: 1}
	r.next = now + Jitter(s.cfg.Seed^grantSalt, id, r.tries, r.rto)
	if s.rev.g == nil {
		s.rev.g = map[uint64]*revoke{}
	}
	s.rev.g[id] = r
	return r.next
}

// AckRevoke ends the retransmission of the REVOKE with request id seq
// (REVOKE_ACK).
func (s *Session) AckRevoke(seq uint64) { delete(s.rev.m, seq) }

// Revoking reports whether any REVOKE or GRANT_ASYNC is in flight.
func (s *Session) Revoking() bool { return len(s.rev.m)+len(s.rev.g) > 0 }

// Due is a retransmission due: a REVOKE, or a GRANT_ASYNC if Grant.
type Due struct {
	Pkt   []byte
	Grant bool
}

// Tick appends to out the REVOKEs and then the GRANT_ASYNCs whose
// retransmission is due at now (each in request id order), and schedules
// their next one; a GRANT_ASYNC sent for the GrantTries-th time is
// forgotten.
func (s *Session) Tick(now int64, out []Due) []Due {
	var due []uint64
	for seq, r := range s.rev.m {
		if r.next <= now {
			due = append(due, seq)
		}
	}
	slices.Sort(due)
	for _, seq := range due {
		r := s.rev.m[seq]
		out = append(out, Due{Pkt: r.pkt})
		r.tries++
		r.rto = min(2*r.rto, RevokeRTOMax)
		r.next = now + Jitter(s.cfg.Seed, seq, r.tries, r.rto)
	}
	due = due[:0]
	for id, r := range s.rev.g {
		if r.next <= now {
			due = append(due, id)
		}
	}
	slices.Sort(due)
	for _, id := range due {
		r := s.rev.g[id]
		out = append(out, Due{Pkt: r.pkt, Grant: true})
		r.tries++
		if r.tries >= GrantTries {
			delete(s.rev.g, id)
			continue
		}
		r.rto = min(2*r.rto, RevokeRTOMax)
		r.next = now + Jitter(s.cfg.Seed^grantSalt, id, r.tries, r.rto)
	}
	return out
}

// NextDeadline returns when the next retransmission is due, if any.
func (s *Session) NextDeadline() (int64, bool) {
	var (
		next int64
		ok   bool
	)
	for _, m := range [2]map[uint64]*revoke{s.rev.m, s.rev.g} {
		for _, r := range m {
			if !ok || r.next < next {
				next, ok = r.next, true
			}
		}
	}
	return next, ok
}

// stop ends the retransmission of every REVOKE and GRANT_ASYNC of grant
// fence in shard.
func (rv *revokes) stop(shard uint32, fence uint64) {
	for _, m := range [2]map[uint64]*revoke{rv.m, rv.g} {
		for id, r := range m {
			if r.key.Fence == fence && r.key.Shard == shard {
				delete(m, id)
			}
		}
	}
}

// ackGrant ends the retransmission of the GRANT_ASYNC of request id.
func (rv *revokes) ackGrant(id uint64) { delete(rv.g, id) }

func (rv *revokes) dropShards(lost func(uint32) bool) {
	for _, m := range [2]map[uint64]*revoke{rv.m, rv.g} {
		for id, r := range m {
			if lost(r.key.Shard) {
				delete(m, id)
			}
		}
	}
}

func (rv *revokes) drop() { rv.m, rv.g = nil, nil }

// Jitter returns interval d scaled by a factor in [0.75, 1.25] (SPEC §12)
// that is a function of seed, the datagram's request id and its
// transmission count: uniform over seeds, and the same for the same
// inputs, so that a schedule is reproducible from its seed.
func Jitter(seed, seq, try uint64, d int64) int64 {
	u := float64(mix(seed^mix(seq^mix(try)))>>11) / (1 << 53) // in [0, 1)
	return int64(float64(d) * (0.75 + u/2))
}

// mix is SplitMix64's finalizer: a bijection whose output bits each depend
// on every input bit.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
