// Package table is the token state of one shard: who holds which token in
// which mode, who waits, what to revoke, and which fence each grant carries.
// It is the pure core inside the worker's UDP shell (docs/ARCHITECTURE.md,
// sections 2 and 10): no sockets, goroutines, clock, logging or metrics. The shell
// decodes a datagram into an Input, calls
//
//	out = t.Step(in, now, out[:0])
//
// and sends what comes back: replies, asynchronous grants and revokes.
// An ACQUIRE_BATCH goes to AcquireAll instead, which grants up to MaxBatch
// tokens at once or none, never queueing (testdata/batch.txt). It
// calls Tick(now, out) when NextDeadline says so. now is the shell's
// monotonic clock in nanoseconds, stamped when the datagram arrived; it is
// the only notion of time in here. The table imports only the standard
// library and wire, for its modes and status codes (Status is wire.Status).
//
// # Rules
//
// Modes are the DLM lattice NL < CR < {CW, PR} < PW < EX (wire.Compatible).
// A request names a token (1..255 bytes) and a byte range [Start, End); the
// whole token is [0, 2^64-1). Two locks conflict only if their ranges overlap
// and their modes are incompatible.
//
// Each token has a queue: conversions first, then acquires, each in arrival
// order (as in the DLM). A new request is granted at once only if it is
// compatible with every overlapping grant and every overlapping request
// queued ahead of it, so a compatible newcomer never overtakes a queued
// conflicting one and nobody starves. A TRY request that cannot be granted
// fails with StatusConflict; any other waits until it is granted (KindAsync,
// StatusOK), its Deadline passes (StatusTimeout), it is canceled
// (StatusCanceled) or its session ends. Whenever a grant or a waiter goes
// away or a grant is downgraded, the token's queue is scanned in order and
// everything that has become grantable is granted.
//
// A conversion to a mode the grant covers (wire.Covers) is a downgrade: it
// is immediate, keeps the fence, and from PW or EX may set the value block.
// Any other conversion is an upgrade: it is granted at once if the grant's
// new mode is compatible with the other grants and queued conversions, else
// it waits in the conversion queue, ahead of all acquires; an upgrade gets a
// new fence. A grant has at most one conversion in flight.
//
// Conversion deadlocks are answered at once. A queued conversion waits for
// every overlapping grant that conflicts with its new mode and for every
// conflicting conversion queued ahead of it; a converting holder keeps its
// grant until its conversion is granted. A conversion that would close a
// cycle of such waits is answered StatusDeadlock instead of being queued
// (the victim is the youngest request of the cycle: the one closing it) and
// its grant stays as it was. Waits that run through other tokens, shards or
// workers are for a detector outside the table: WaitEdges lists the waits
// of queued requests, and OpDeadlock ends a chosen victim with
// StatusDeadlock if it still waits.
//
// While a request waits, each holder whose grant blocks it gets one
// KindRevoke: its fence, the token, the strongest mode it may keep
// (Wanted; NL means release) and the wanted range. A revoke is emitted once
// per (grant, waiter) pair, when the later of the two appears, and again
// only after the holder converts (the shell retransmits until then).
//
// An acquire with Grow (wire flag GROW) that is granted at once, on a token
// where no other session holds a grant and nothing waits, gets the largest
// range around what it asked that overlaps none of the session's own grants
// there (the whole token if it has none); otherwise exactly what it asked.
// A partial release (Partial, wire flag RANGE) gives back a prefix or a
// suffix of a grant and keeps the rest under the same fence; the token's
// queue is then scanned as after a release, and the holder is revoked again
// for waiters the rest still blocks. Any other partial range, or one of a
// grant that is converting, is StatusBadRequest.
//
// Fences are epoch<<40 | seq, with seq counting from 1 in each epoch of the
// shard; epochs grow with every change of owner, so fences strictly increase
// per token across all time (invariant 2). When seq would wrap the table
// answers StatusExhausted.
//
// A token keeps a value block of up to 64 bytes, set by a PW or EX holder on
// release or downgrade and returned with every grant. A token lives while it
// has grants, waiters or a valid value; names are copied once, when the
// token is created.
//
// A table made by NewRecovering is in its grace period until its deadline:
// it accepts only OpReclaim (and OpEndSession), which re-creates a grant with
// its old fence if that fence is from an earlier epoch and the grant is
// compatible with what has been reclaimed; everything else gets StatusGrace
// (invariant 6). Values are then reported ValueLost until a writer sets them.
// Export and Import move a shard to another owner under a higher epoch with
// no grace period. At any time, in or out of grace, OpReclaim of a grant of
// an earlier epoch that the table holds exactly so (session, fence, mode,
// range) is answered with that grant and changes nothing: after an Import,
// that is how clients, which reclaim whenever the epoch changes, confirm
// what came over.
// The snapshot also lists the queued requests in arrival order
// (Snapshot.Waiters); Import queues them again in that order, under the same
// session and request id and with the same deadline (testdata/
// handoff-queue.txt). The shell drops them while the handoff protocol does
// not move queued requests (worker/handoff.go).
//
// Sessions are uint64 ids (the etcd lease of the client); OpEndSession drops
// all their grants and waiters. EndSession does it in bounded steps
// (testdata/endslice.txt), so that a session holding millions of grants
// does not stop the shard: waiters first, then grants, each step waking
// what it frees; meanwhile the session is part-ended and gains nothing (its
// requests get StatusSessionExpired, its waiters are passed over) and the
// table cannot be exported. A session's requests are (session, request
// id); OpCancel names the request to cancel: a waiter leaves its queue, or,
// if it was granted from the queue meanwhile, that grant is released (a
// canceled conversion that was granted releases the whole grant).
package table
