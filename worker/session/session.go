package session

import (
	"cmp"
	"slices"

	"github.com/tokend/tokend/wire"
)

// Config bounds a session's state and seeds its jitter.
type Config struct {
	Cap  int    // cached replies beyond which new work is refused (SPEC §11: at least 1024)
	Hard int    // ... and beyond which RECLAIMs and older requests are too (≥ Cap)
	Seed uint64 // the REVOKE jitter is a function of it (see Jitter)
}

// Session is a worker's at-most-once state of one client session: the ack,
// the reply cache and the REVOKEs in flight. Its zero value is not usable;
// call New.
type Session struct {
	cfg   Config
	ack   uint64            // highest ack seen: request ids below are finished
	top   uint64            // highest request id ever given a cache entry
	cache map[uint64]*Entry // request id -> reply
	win   window            // KEEPALIVE, SESSION_CLOSE, REVOKE_ACK, GRANT_ACK ids applied (replays)
	rev   revokes
}

// New returns an empty session.
func New(cfg Config) *Session {
	cfg.Hard = max(cfg.Hard, cfg.Cap)
	return &Session{cfg: cfg, cache: map[uint64]*Entry{}}
}

// Entry is the reply-cache entry of one request id: the reply as last
// sent, resent for duplicates. While the request waits in a table it is
// QUEUED (Pending); its final outcome replaces it.
type Entry struct {
	Type    wire.Type // the request's type
	Shard   uint32
	Fence   uint64 // the request's fence (CONVERT: of the grant being converted)
	Pending bool   // QUEUED in the shard's table
	// Exempt: answered QUEUED, so the client's ack does not wait for it
	// (SPEC §11). It is kept whatever the ack while it waits, and once
	// settled until the client acknowledges its outcome (GRANT_ACK) or,
	// below the ack, until Expire.
	Exempt bool
	Expire int64 // below the ack and settled: forgotten at this time (0: not yet set)
	Pkt    []byte
}

// Linger is how long the settled outcome of a request answered QUEUED is
// kept below the ack without the client acknowledging it (GRANT_ACK): long
// enough for its re-polls (every 500 ms) to fetch it through a burst of
// loss, bounded for clients that never send GRANT_ACK. In nanoseconds.
const Linger int64 = 30e9

// Verdict is what to do with an incoming request (SPEC §11).
type Verdict uint8

const (
	Apply  Verdict = iota // new: apply it once
	Stale                 // its id is below the ack: drop it
	Resend                // answered before: send the cached reply again
	Reused                // its id is cached for a request of another type: BAD_REQUEST
	Replay                // applied before and no longer cached: drop it (a replay)
	// Unknown: an ACQUIRE or CONVERT below the ack that is not cached as
	// a request answered QUEUED: answer UNKNOWN_REQUEST (not applied,
	// not cached) once the shard is known to be served here. Typically
	// a request answered QUEUED by a shard's previous owner, asked again
	// under its id at the new owner, which did not get it with the shard
	// (wire/SPEC.md section 18, "Queued requests"); the client sends it
	// again under a fresh id. A late copy of a finished request gets the
	// same answer, which its client ignores.
	Unknown
)

var verdictNames = [...]string{Apply: "apply", Stale: "stale", Resend: "resend", Reused: "reused", Replay: "replay", Unknown: "unknown"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "Verdict(?)"
}

// cached reports whether replies to requests of type t are cached: all but
// the SPEC §11 exceptions (and SESSION_OPEN, deduplicated by its nonce).
func cached(t wire.Type) bool {
	switch t {
	case wire.TypeKeepalive, wire.TypeSessionClose, wire.TypeRevokeAck, wire.TypeGrantAck, wire.TypeMapRequest, wire.TypeSessionOpen:
		return false
	}
	return true
}

// Decide says what to do with request h, and for Resend the reply to send.
// It changes nothing.
//
// A request below the ack is Stale unless it was answered QUEUED and is
// still cached (SPEC §11: those do not hold the ack back): then it is a
// Resend of its state, as above the ack. An ACQUIRE or CONVERT below the
// ack that is not so cached is Unknown rather than Stale: the client may
// be asking again, under its id, a request that was answered QUEUED by
// another worker (SPEC §18), and must learn that it was not applied here
// instead of waiting for an answer that never comes.
//
// Replays (wire/SPEC.md section 20): a KEEPALIVE, SESSION_CLOSE,
// REVOKE_ACK or GRANT_ACK whose id was applied (Mark) or is below the window is a
// Replay. The other types need no window: an applied one stays cached
// until the ack passes it, and one not cached was not applied (a retryable
// status, or its shard or the worker's lease was lost meanwhile) and may
// be applied, so that a request redirected from a dead worker after a long
// failover is still served.
func (s *Session) Decide(h wire.Header) (Verdict, []byte) {
	if h.Request < s.ack {
		// Only requests answered QUEUED are cached below the ack: a
		// re-poll of one gets its state; anything else is stale.
		if e := s.cache[h.Request]; e != nil && e.Type == h.Type {
			return Resend, e.Pkt
		}
		if h.Type == wire.TypeAcquire || h.Type == wire.TypeConvert {
			return Unknown, nil
		}
		return Stale, nil
	}
	if !cached(h.Type) {
		if s.win.below(h.Request) || s.win.marked(h.Request) {
			return Replay, nil
		}
		return Apply, nil
	}
	if e := s.cache[h.Request]; e != nil {
		if e.Type != h.Type {
			return Reused, nil
		}
		return Resend, e.Pkt
	}
	return Apply, nil
}

// Mark records that request id, of a type whose reply is not cached
// (KEEPALIVE, SESSION_CLOSE, REVOKE_ACK, GRANT_ACK), was applied: a copy of it is a
// Replay from now on.
func (s *Session) Mark(id uint64) { s.win.mark(id) }

// Unmark undoes Mark(id): the request failed without effect (its etcd work
// failed) and the client's retransmission is to be applied.
func (s *Session) Unmark(id uint64) { s.win.unmark(id) }

// Ack records the client's ack, at now, and forgets the cached replies
// below it, except those of requests answered QUEUED (Entry.Exempt): one
// still waiting stays; a settled one whose outcome the client has not
// acknowledged stays for Linger from when the ack first passed it (or it
// settled below the ack), and is forgotten by a later Ack after that.
func (s *Session) Ack(ack uint64, now int64) {
	if ack <= s.ack {
		return
	}
	s.ack = ack
	for id, e := range s.cache {
		switch {
		case id >= ack || e.Pending:
		case !e.Exempt || (e.Expire != 0 && e.Expire <= now):
			delete(s.cache, id)
		case e.Expire == 0:
			e.Expire = now + Linger
		}
	}
}

// AckOutcome handles GRANT_ACK for request id: the client has its outcome.
// The GRANT_ASYNC retransmission of id stops, and the cached outcome is
// forgotten (below the ack), or treated from now on as any final reply
// (forgotten when the ack passes it). A request still waiting is not
// affected: nothing was sent for it that could be acknowledged.
func (s *Session) AckOutcome(id uint64) {
	s.rev.ackGrant(id)
	e := s.cache[id]
	if e == nil || !e.Exempt || e.Pending {
		return
	}
	if id < s.ack {
		delete(s.cache, id)
		return
	}
	e.Exempt, e.Expire = false, 0
}

// Repolled records that request id was answered from the cache (a
// re-poll): if it was granted, the reply carries the GRANT, so its
// GRANT_ASYNC need not be retransmitted any more. The cached reply stays:
// that reply may be lost too.
func (s *Session) Repolled(id uint64) { s.rev.ackGrant(id) }

// OverLimit reports whether the cache is too full to take request h,
// which is then answered LIMIT ("a new request beyond the bound").
//
// The bound holds back new work only. When a worker dies, the client's
// requests that wait for its shards pin the session's ack for the lease TTL
// plus the grace period, so every reply the session gets meanwhile from the
// live workers stays cached. Two kinds of request are therefore let through
// up to the hard bound, which bounds the memory of a client that
// misbehaves:
//
//   - a request older than the newest one cached: the client sent it before
//     and still waits for it (typically one redirected here from the dead
//     worker). Refusing it would deadlock the session: it pins the ack, so
//     the cache can only shrink once it is answered. The client keeps at
//     most 256 unfinished requests (SPEC §11), so these add few entries.
//   - a RECLAIM: it is how a held token survives the crash (invariant 3),
//     and a reclaim answered LIMIT until its deadline loses the token.
func (s *Session) OverLimit(h wire.Header) bool {
	n := len(s.cache)
	switch {
	case n < s.cfg.Cap:
		return false
	case h.Type == wire.TypeReclaim || h.Request < s.top:
		return n >= s.cfg.Hard
	}
	return true
}

// Outcome is the reply to a request applied now.
type Outcome struct {
	Req      uint64
	Type     wire.Type // the request's type
	Shard    uint32
	Fence    uint64 // the request's fence: RELEASE, CONVERT the grant; RECLAIM the old one
	Released uint64 // CANCEL: the fence of the grant it released (the target had been granted), 0 if none
	Status   wire.Status
	Pkt      []byte
}

// Applied records the reply to a request applied now: cached if its status
// is final or QUEUED (a retryable one means not applied). A RELEASE or
// CONVERT that succeeded ends the retransmission of the REVOKEs of its
// grant, and so does a CANCEL that released one.
func (s *Session) Applied(o Outcome) {
	if !o.Status.Retryable() {
		q := o.Status == wire.StatusQueued
		s.cache[o.Req] = &Entry{Type: o.Type, Shard: o.Shard, Fence: o.Fence, Pending: q, Exempt: q, Pkt: o.Pkt}
		s.top = max(s.top, o.Req)
		s.win.advance(o.Req)
	}
	if o.Status != wire.StatusOK {
		return
	}
	switch o.Type {
	case wire.TypeRelease, wire.TypeConvert:
		s.rev.stop(o.Shard, o.Fence)
	case wire.TypeCancel:
		if o.Released != 0 {
			s.rev.stop(o.Shard, o.Released)
		}
	}
}

// CancelTarget returns the type of request target if it is a cached
// ACQUIRE or CONVERT: a CANCEL of it that succeeded ends it, and the shell
// records that with Settle(target, StatusCanceled, reply).
func (s *Session) CancelTarget(target uint64) (wire.Type, bool) {
	if e := s.cache[target]; e != nil && (e.Type == wire.TypeAcquire || e.Type == wire.TypeConvert) {
		return e.Type, true
	}
	return 0, false
}

// Settle records the later outcome of request id (answered QUEUED before),
// at now: pkt replaces the cached reply, or, for a retryable status (the
// request was not applied), the id is forgotten so that the client's retry
// is applied afresh. A nil pkt (nothing to answer with) keeps what is
// cached. An outcome settled below the ack lingers (see Ack). A CONVERT
// granted ends the retransmission of the REVOKEs of the grant it
// converted. An id not cached is ignored.
func (s *Session) Settle(id uint64, status wire.Status, pkt []byte, now int64) {
	e := s.cache[id]
	if e == nil {
		return
	}
	if status == wire.StatusOK && e.Type == wire.TypeConvert {
		s.rev.stop(e.Shard, e.Fence)
	}
	if pkt == nil {
		return
	}
	if status != wire.StatusOK && status.Retryable() {
		delete(s.cache, id)
		return
	}
	e.Pkt, e.Pending = pkt, false
	if e.Exempt && id < s.ack && e.Expire == 0 {
		e.Expire = now + Linger
	}
}

// Entry returns the cache entry of request id.
func (s *Session) Entry(id uint64) (Entry, bool) {
	if e := s.cache[id]; e != nil {
		return *e, true
	}
	return Entry{}, false
}

// Known reports whether request id is finished (below the ack) or cached.
func (s *Session) Known(id uint64) bool { return id < s.ack || s.cache[id] != nil }

// Adopt caches a reply this worker did not make: one handed over with a
// shard from its previous owner (SPEC §18), so that a retransmission is
// answered as the old owner answered it. A final reply is adopted if the
// id is not Known; a request answered QUEUED (e.Exempt) whatever the ack,
// if it is not cached: one still waiting (e.Pending, its waiter imported
// into the shard's table) is settled later like one queued here, a
// settled one lingers below the ack as one settled here does (e.Expire,
// set by the caller, or by the next Ack).
func (s *Session) Adopt(id uint64, e Entry) {
	s.cache[id] = &e
	s.top = max(s.top, id)
	s.win.advance(id)
}

// Reply is a cached reply and its request id.
type Reply struct {
	Req uint64
	Entry
}

// DropShards forgets what the session has in the shards lost reports (their
// tables are gone): requests still QUEUED there and the REVOKEs of their
// grants. Final replies stay cached, a duplicate still gets the answer it
// had; they are also appended to finals, in request id order, for the
// shell to hand over with the shards.
func (s *Session) DropShards(lost func(shard uint32) bool, finals []Reply) []Reply {
	n := len(finals)
	for id, e := range s.cache {
		if !lost(e.Shard) {
			continue
		}
		if e.Pending {
			delete(s.cache, id)
		} else {
			finals = append(finals, Reply{Req: id, Entry: *e})
		}
	}
	slices.SortFunc(finals[n:], func(a, b Reply) int { return cmp.Compare(a.Req, b.Req) })
	s.rev.dropShards(lost)
	return finals
}

// Drop forgets every cached reply and every REVOKE: the session ended, or
// the lease under which they were given is gone. The ack, the newest id,
// the window of applied ids and the REVOKE sequence stay.
func (s *Session) Drop() {
	clear(s.cache)
	s.rev.drop()
}

// Len returns the number of cached replies.
func (s *Session) Len() int { return len(s.cache) }
