// Package clientlib is tokend's Go client: it opens a session with a tokend
// cluster over UDP and acquires, converts and releases tokens, speaking the
// protocol of wire/SPEC.md. The C client in clientlib/c speaks the same
// protocol; the worker is its counterpart.
//
//	c, err := clientlib.DialConfig(ctx, clientlib.Config{
//		Seeds:   []string{"10.0.0.5:7700", "10.0.0.6:7700"},
//		KeyFile: "/etc/tokend/client.key", // tokenctl keys add NAME --out FILE
//	})
//	tok, err := c.Acquire(ctx, "file/7/page/3", wire.EX)
//	... write, passing tok.Fence() to storage ...
//	err = tok.Release(ctx)
//
// # Authentication
//
// Every datagram of a session is authenticated (wire/SPEC.md section 20)
// with a client key: a file "tokend-key v1 NAME BASE64URL" named by
// Config.KeyFile, else by $TOKEND_KEY_FILE (KeyFileEnv), else
// tokend-data/pki/client.key (DefaultKeyFile) if it exists in the working
// directory, which is where `go run ./cmd/tokend` writes the cluster's
// default key. `tokenctl keys add NAME` makes a key of its own for each
// application; `tokenctl keys revoke NAME` shuts it out and ends its
// sessions. Config.Insecure is for clusters started with --insecure: no
// key, zero tags, nothing checked.
//
// With a key, the client refuses a session whose OK answer is not
// authenticated (a worker started with --insecure: ErrAuth), and it drops
// every datagram whose tag does not verify under the session's key before
// reading anything in it: a forged REVOKE, GRANT_ASYNC, reply or map
// changes nothing. Stats().AuthFailures counts them. Only an authenticated
// UNKNOWN_SESSION or SESSION_EXPIRED ends the session early; without
// authenticated answers it ends when its own deadline passes. A key the
// cluster does not know gets no answer but the COOKIE: Dial then fails
// when its context ends, with ErrAuth naming the key.
//
// # Fence proofs
//
// A fence is a number storage compares; a client could send storage any
// number. Token.Proof asks the worker for a proof of the grant: token name,
// fence, mode and range, signed with the cluster's fence key (an Ed25519
// key derived from the cluster key; docs/SECURITY.md §4). Storage verifies
// it with fenceproof.Verify and the public key that `tokenctl fence-key`
// prints (servers also publish it in etcd at /tokend/fence-key), without
// calling tokend, and then compares the fence as before:
//
//	proof, err := tok.Proof(ctx) // one round trip; once per grant
//	... write, passing tok.Fence() and proof to storage ...
//
// A cluster started with --insecure has no cluster key and no proofs:
// Proof fails with ErrBadRequest. A token released, lost or converted to a
// new fence has none either (ErrNotHeld).
//
// # How it works
//
// A Client owns one UDP socket and one goroutine reading it. Dial sends
// SESSION_OPEN to the seeds in turn (with a random request id and nonce,
// and, once the worker answered COOKIE, again with the cookie), learns the shard count, the session TTL S, the workers' lease TTL W and the
// grace period G, and fetches the delegation map page by page (MAP_REQUEST).
// Every token request goes to the owner of wire.Shard(name, shardCount) at
// that shard's epoch; NOT_OWNER and STALE_EPOCH are followed (the hint at
// once if it names a newer epoch, and the map is refetched), and a reply whose
// header carries a newer map version makes the client refetch the map.
//
// Request ids strictly increase per session; every datagram carries ack =
// the oldest unfinished id not answered QUEUED (the worker keeps those
// whatever the ack, so a long wait does not hold back the rest of the
// session). A request is retransmitted with the same id, the
// timeout starting at Config.RTOMin (20 ms), doubling to RTOMax (1 s), ±25 %
// jitter, until a final answer or the caller's context ends. Retryable
// answers (NOT_OWNER, STALE_EPOCH, GRACE, UNAVAILABLE, LIMIT, EXHAUSTED) are
// retried with the same id after a backoff on the same schedule. A QUEUED
// request is re-polled every 500 ms, and at once when a new map moves its
// shard: under the same id at the new owner, which answers it as the old
// owner would have when the request came with the shard (a planned
// handoff keeps its place in the queue), or UNKNOWN_REQUEST, and then the
// request goes again under a fresh id (wire/SPEC.md section 18). Every GRANT_ASYNC is acknowledged with GRANT_ACK (the worker
// retransmits it until then), and so is the outcome of a queued request
// learned by a re-poll. When the context of a request that may
// be queued or granted ends, the client sends CANCEL and then resends the
// request's id to learn its outcome from the worker's reply cache; a grant
// that stands is released (Acquire) or kept (Convert).
//
// # Validity
//
// Every promise is counted from when the client first sent the request that
// obtained it, less a margin d·Drift + 10 ms (SPEC.md section 13). The client
// keeps a deadline per (worker, shard, epoch) where it holds grants, renewed
// by GRANT replies and by the OK entries of KEEPALIVE replies; a background
// loop sends each such worker a KEEPALIVE listing those (shard, epoch) pairs
// every W/4, and renews the session (KEEPALIVE with RENEW) every S/3 at its
// home worker, moving to another worker if that fails. A token is valid
// (Token.Valid) before min(session deadline, shard deadline)
// (Token.ValidUntil). After that it is in jeopardy: if the map shows the
// shard at a newer epoch, the client RECLAIMs the token at the new owner
// with its old fence and it becomes valid again; Lost is closed when the
// session ends, the reclaim is refused, or deadline + G − margin passes
// without a reclaim, which is before the worker side may grant the token to
// anyone else.
//
// A grant is valid when Acquire or Convert returns it, for at least half
// of min(W, S) less the margin, whatever the wait: a grant that arrives
// with less (after a long wait in the queue, its validity counted from the
// request's first send has mostly passed) is confirmed first by a KEEPALIVE
// sent after it arrived, or by its reclaim if the shard moved. Until then
// it is nobody's: the grace rule does not declare it lost and its
// revocations wait; if ctx ends first, the grant is given back and Acquire
// fails with ErrUnavailable.
//
// # Revocation and the other callbacks
//
// A worker sends REVOKE to holders of a grant a waiter conflicts with. The
// client acknowledges it (REVOKE_ACK) and calls Config.OnRevoke on a
// goroutine of its own, once per (fence, wanted mode, range), with a
// Revocation that names the grant (fence, mode held) and what is wanted,
// and a context that ends after Config.HandlerTimeout (3 s) or at Close:
// pass it to Release or Convert, which then cannot hang on a dead worker.
// Neither waits behind an upgrade of the same token that is queued: it is
// withdrawn first (its Convert returns ErrCanceled). The default handler
// releases the token. A REVOKE for a fence the client does not hold is
// answered with RELEASE of that fence.
//
// Config.OnJeopardy is called when a token's validity comes within
// Config.JeopardyBefore (min(W, S)/3) of its end without renewal; Config.OnLost
// when it is lost. Token.Done closes when the token ends for any reason
// (Release, loss, Close), Token.Lost only on a loss; Token.State says
// valid, in jeopardy, released or lost in one call, and Token.ValueState
// tells a value block never set from one lost with a worker.
//
// # Token cache
//
// With Config.TokenCache set (DefaultTokenCache is a good size), Release
// of a grant nobody else has asked for keeps it: the worker still holds it
// for the session, and the next Acquire of the same name that it can serve
// returns it with no datagram, as a new *Token with the same fence (the
// worker never saw it leave). It is off by default (every release reaches
// the worker) because of the one thing other clients can tell: while a
// grant is cached, their Try of a conflicting mode fails (see "Held
// meanwhile" below). The rules:
//
//   - Kept: a grant in PR, PW or EX over the whole token, released by the
//     application with no SetValue (a value write is sent, and the grant
//     with it), for which no REVOKE came (someone else wants it), that is
//     not being reclaimed and whose Client is open. NL, CR and CW grants
//     and byte ranges are released as without the cache: beside them
//     another session may hold a writing grant and set the value block,
//     so a re-acquire would hand out a stale value.
//   - Served: an Acquire of mode m over range r by a cached grant in mode
//     c over the whole token when c covers m (wire.Covers: every mode that
//     conflicts with m conflicts with c; EX covers all, PW covers PR, CW, CR
//     and NL, PR covers CR and NL) and the grant is valid for at least
//     half of min(W, S) less the margin, as any grant Acquire returns. The
//     Token holds the cached grant as it is: Mode says c, Range the whole
//     token, Value the value block (unchanged: nobody else could set it).
//     Options do not matter (Try, Wait, Range inside, DetectDeadlock: the
//     grant is there at once). Otherwise the Acquire goes to the worker,
//     and first gives back (RELEASE, waiting for the answer) the cached
//     grants of the name that conflict with it or are no longer fresh: the
//     worker would make it wait for, or with Try fail on, the session's own
//     grant. AcquireBatch takes a shard with a cached name token by
//     token, so that the cache serves it the same way.
//   - Revoked: a REVOKE of a cached grant is answered by the library at
//     once with RELEASE (whatever mode is wanted); OnRevoke is not called.
//     A grant grown beyond what the REVOKE wants (Grow) is split when the
//     wanted part is a prefix or suffix of it: that part goes back with a
//     partial release, the rest stays cached with its fence
//     (Stats().CacheSplits) and serves Acquires inside it with Range what
//     is left and ValueState ValueUnknown (the client that took the part
//     given back may set the value). A hole in the middle sends it all back.
//     REVOKE and re-acquire are decided under the client's lock: if the
//     REVOKE comes first, the grant is gone from the cache and the Acquire
//     goes to the worker; if the Acquire comes first, the application holds
//     the grant and the REVOKE takes the usual path (OnRevoke).
//   - Held meanwhile: to the worker and to other clients a cached grant is
//     held. Keepalives vouch for it, a shard move reclaims it (crash) or
//     confirms it (handoff) with its fence, and a lapse of validity past
//     the grace period ends it, quietly: OnJeopardy and OnLost are for
//     grants the application holds. Another client's request that waits
//     revokes it within a round trip, but a Try or Wait(0) of a conflicting
//     mode fails with ErrConflict while it is cached (a TRY sends no
//     REVOKE): applications that poll with Try across clients should leave
//     the cache off, or lower TokenCacheIdle. The same holds for this
//     client's own Try for a moment after its cache gave a conflicting
//     grant of the name back (evicted, idle, or revoked): that RELEASE may
//     still be on its way.
//   - Bounded: at most Config.TokenCache grants, least
//     recently released given back first, and none kept longer than
//     Config.TokenCacheIdle (default 30 s, counted from the maintenance
//     pass before its release); given back with RELEASE in the
//     background (while 64 of those are unanswered, a full cache keeps
//     no more: Release sends its own). Close gives them back with the
//     session (SESSION_CLOSE); the session's end ends them.
//   - Counted: Stats().CacheHits, CacheMisses, CacheEvictions,
//     CacheRevoked, CacheDropped and Cached; Stats().Sent counts datagrams.
//
// The Token a Release ended stays ended (State TokenReleased, Err
// ErrNotHeld) whatever becomes of its grant: a re-acquire gets a new Token.
//
// # Deadlocks
//
// Acquire and Convert fail with an error wrapping ErrDeadlock when their
// wait would never end (wire/SPEC.md section 19): at once for a conversion
// deadlock (two PR holders both converting to EX: the second is the
// victim), and within a few hundred milliseconds for a cycle of sessions
// waiting for each other's tokens across shards or workers, among requests
// made with DetectDeadlock (the younger request is the victim). A Client
// whose goroutines hold and wait independently should not use it: one of
// them may give its token back on revocation, so a cycle through it
// resolves by itself. The victim keeps everything it holds, a Convert's
// token stays in its old mode with its old fence: give something back
// (Release, or Convert down), then retry. A revoke handler that releases
// promptly (within 50 ms) breaks a cycle across tokens before anyone is
// answered ErrDeadlock.
//
// AcquireBatch takes several tokens all or nothing without that risk among
// its callers: it takes them in one fixed global order (shard, name, range),
// one ACQUIRE_BATCH datagram per shard (up to 8 tokens, granted together or
// not at all, never queued; wire/SPEC.md section 21), falling back to
// Acquire in the same order when a shard's batch conflicts, and releases
// what it got if anything fails. The C client's tokend_acquire_batch uses
// the same order.
//
// # Choices where SPEC.md leaves room
//
// What a worker (and the C client) should expect from this client:
//
//   - SESSION_OPEN goes to one seed at a time, three sends each (timeouts;
//     the send with a fresh cookie goes at once and does not count). A
//     cookie goes only to the worker that gave it; another worker gets
//     the open without one. Its request id and nonce stay the same
//     throughout, so a worker answers a retransmission from its table of
//     recent opens.
//   - Bundles (wire/SPEC.md section 22; off with Config.NoBundle):
//     SESSION_OPEN offers them (flag BUNDLE) on every other send, starting
//     with the first and, after a COOKIE, the first with the cookie: an
//     older worker drops an open with the flag. The client bundles to a
//     worker whose OK SESSION_REPLY had the flag, or that sent it a
//     BUNDLE_REPLY with at least one datagram of the session whose tag
//     verified. Sends are combined (flat combining): the goroutine that
//     finds nobody sending writes its datagram at once, alone, and then
//     sends what the others queued meanwhile, where the datagrams for one
//     such worker and one session go in BUNDLEs in their order (up to
//     1200 bytes; one with nothing to go with goes alone). A bundle's
//     header carries the first datagram's request id and map version.
//     A request's retransmissions go byte for byte and alone, never in a
//     bundle, so that a worker an older one replaced at the same address
//     still answers them. A BUNDLE_REPLY of a bad layout is dropped whole
//     (Stats().BundlesDropped); otherwise each datagram in it is handled
//     as if it came alone, with every check. A REVOKE_ACK or GRANT_ACK for
//     such a worker is held for at most 2 ms and goes ahead of the next
//     request to that worker in its BUNDLE (in a handoff, the RELEASE that
//     follows), or alone when the 2 ms end; every held one for a worker
//     goes out before any later datagram to it (Stats().AcksHeld,
//     Stats().AcksAlone).
//   - MAP_REQUEST carries the session and an id from the session's counter
//     (it counts for ack like any request). The map is asked of the home
//     worker, then the map's workers, then the seeds, six sends each; a map
//     older than the cached one is ignored.
//   - Session renewal is a KEEPALIVE with RENEW and no entries, every S/3
//     (from the first send of the last renewal that worked), each try
//     bounded by S/8 and with a request id of its own (a worker answers
//     an id once); a reply with session_ttl_ms = 0 counts as a failure
//     and the next worker is tried. Grant keepalives carry no RENEW.
//   - wait_ms: Wait(d) gives d; without Wait, the time left until the
//     context's deadline, or WaitForever if it has none. Try and Wait(0)
//     set the TRY flag.
//   - GRACE, UNAVAILABLE, LIMIT and EXHAUSTED are retried on the RTO
//     schedule (not after grace_ms). A NOT_OWNER/STALE_EPOCH hint is used at
//     once when its epoch is newer than the request's; retryable answers
//     from another worker or epoch than the latest send are ignored.
//   - Any answer to a token request about a shard epoch that is over (the
//     request has since been sent at a newer epoch, or the map has one) is
//     ignored, final ones included: the old owner's table is gone, so a
//     grant from it (say, a late GRANT_ASYNC from a worker that hung past
//     its lease) is not valid; the request goes on at the new owner.
//   - A RELEASE answered NOT_HELD by the owner of a newer epoch than the one
//     the grant was held under succeeds: the shard moved before the grant
//     was reclaimed, so it ended with the move. (With a value to set it
//     stays ErrNotHeld: the value was not stored.)
//   - CANCEL is sent for every ACQUIRE or CONVERT given up after being sent,
//     answered or not; then the target id is resent to read its outcome from
//     the reply cache. GRANT after a CANCEL answered NOT_HELD: the grant
//     stands (an ACQUIRE's is released, a CONVERT's kept). GRANT after CANCEL
//     OK: the CANCEL released it. Anything else after CANCEL OK may mean
//     either for an upgrade (the worker answers CANCELED in both cases), so
//     the client asks with a CONVERT of the old fence to the mode held: OK,
//     the token is unchanged; NOT_HELD, the whole grant is gone. A target
//     the worker never saw is applied by the resend (then canceled again, or
//     its grant released).
//   - A downgrade CONVERT given up unanswered is assumed applied. A CONVERT
//     answered NOT_HELD makes the token lost.
//   - A REVOKE for a fence the client does not hold is not acknowledged
//     while an ACQUIRE, CONVERT or RECLAIM of that name is unfinished (the
//     fence may be about to become the client's): it is parked and handled
//     as if it arrived anew when the last of them finishes, right after
//     the grant is taken (a worker sends a fresh holder GRANT_ASYNC and
//     the REVOKE for the next waiter together; waiting for the worker's
//     retransmission cost 20 ms per contended handoff). Beyond 1024 parked
//     REVOKEs the retransmission brings them back. GRANT_ASYNC for an id
//     the client no longer waits for is acknowledged and otherwise
//     ignored (the REVOKE path frees such a grant).
//   - Whenever the map shows a newer epoch for a shard where tokens are held
//     (crash or planned move alike), the client RECLAIMs them at the new
//     owner. After a handoff without grace, the worker must answer OK with
//     the GRANT when it already has exactly that grant (session, fence,
//     mode, range); RECLAIM_REFUSED makes the token lost.
//   - The client margin d·Drift + 10 ms is taken off validity_ms, the session
//     TTL and the grace period alike.
package clientlib
