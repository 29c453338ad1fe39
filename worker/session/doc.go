// Package session is what a worker remembers of one client session to
// answer each request at most once (invariant 4, docs/ARCHITECTURE.md §7)
// and to revoke and grant reliably: the highest ack seen, the reply cache
// and its bounds, and the REVOKEs and GRANT_ASYNCs being retransmitted. It is a
// pure core inside the worker's UDP shell, like worker/table
// (docs/ARCHITECTURE.md, sections 2 and 10): no sockets, goroutines, clock,
// randomness, logging or metrics. It imports only the standard library and
// wire.
//
// The shell keeps one Session per live session and calls it on the receive
// loop:
//
//	v, pkt := s.Decide(h)  // Stale, Replay: drop; Resend: send pkt; Reused: BAD_REQUEST; Unknown: UNKNOWN_REQUEST; Apply: go on
//	s.Ack(h.Ack, now)      // once the body decodes
//	s.OverLimit(h)         // true: answer LIMIT (after the ownership checks)
//	s.Applied(outcome)     // the table's reply, cached if final or QUEUED
//
// Settle records the later outcome of a QUEUED request, GrantAsync starts
// retransmitting its GRANT_ASYNC, AckOutcome handles GRANT_ACK and
// Repolled a re-poll answered from the cache. Revoke starts a REVOKE;
// Tick(now, out) appends the retransmissions due at now, and
// NextDeadline says when the next one is. now is the shell's monotonic
// clock in nanoseconds, the only notion of time in here; the jitter of the
// retransmission schedule is a function of Config.Seed, so a run is
// reproducible.
//
// # Rules (wire/SPEC.md §11, §12)
//
// A request whose id is below the highest ack seen is stale and dropped,
// except an ACQUIRE or CONVERT, which is Unknown: the shell answers
// UNKNOWN_REQUEST, so that a client asking a new owner for a queued
// request under its old id (SPEC §18) learns that it was not applied
// there. Ack forgets the cached replies below the new ack. Requests answered
// QUEUED are exempt (the client's ack skips them, SPEC §11): each is kept
// whatever the ack while it waits and, settled, until the client
// acknowledges its outcome (GRANT_ACK), or for Linger once it is below the
// ack; below the ack it is answered like any cached request. A request id in the
// cache gets the cached reply again (the current state of a QUEUED
// request: QUEUED, or its GRANT or final error once settled), or
// BAD_REQUEST if the cached request had another type. Otherwise the
// request is applied once and its reply cached if its status is final or
// QUEUED; a retryable status was not applied and is not cached, so the
// client's retry with the same id is applied afresh. KEEPALIVE,
// SESSION_CLOSE, REVOKE_ACK, GRANT_ACK, MAP_REQUEST and SESSION_OPEN are
// not cached. Of KEEPALIVE, SESSION_CLOSE, REVOKE_ACK and GRANT_ACK the
// shell Marks the ids it
// applies: a copy of one, or one whose id is Window or more below the
// newest id seen, is a Replay (wire/SPEC.md section 20): the shell drops
// it, or answers a KEEPALIVE without RENEW again, so that a captured
// renewal cannot keep a dead client's session alive.
//
// The cache holds up to Config.Cap replies; beyond that a new request is
// refused (LIMIT). A RECLAIM, and a request whose id is below the newest id
// cached (the client sent it before and still waits for it), are let
// through up to Config.Hard: a failover pins the session's ack on requests
// waiting for a dead worker's shards, and refusing those would lose held
// tokens (invariant 3) or wedge the session.
//
// A REVOKE is retransmitted 20 ms after it is sent, then at doubling
// intervals up to 1 s, each interval scaled by a factor in [0.75, 1.25]. A
// session has at most one outstanding REVOKE per (shard, grant, wanted mode,
// range). Retransmission stops on a REVOKE_ACK for its request id, on a
// RELEASE or CONVERT of that grant (or a CANCEL that released it), when the
// grant's shard is lost, and when the session ends.
//
// A GRANT_ASYNC is retransmitted on the same schedule, at most GrantTries
// times in all, until GRANT_ACK or a re-poll of its request, a RELEASE or
// CONVERT of its grant (or a CANCEL that released it), the loss of its
// shard or the end of the session.
package session
