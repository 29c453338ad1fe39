/*
 * tokend.h - C client of tokend, the distributed token (lock) service.
 *
 * A client connects to the service (tokend_connect), acquires named tokens in
 * one of the six DLM modes over an optional byte range (tokend_acquire,
 * tokend_acquire_range), changes their mode (tokend_convert) and gives them
 * back (tokend_release). Every grant carries a fence, a number that strictly
 * grows for that token across all time: pass it to storage so that a stale
 * holder is refused.
 *
 * The library speaks the UDP protocol of wire/SPEC.md and keeps grants alive
 * by itself: a background thread (one per client) reads the socket and runs
 * the keepalive timer (on Linux, a thread that is the handle's only call in
 * progress reads its own reply from the socket, saving a thread switch). It
 * calls three optional callbacks, each with a copy of the grant concerned
 * (its fence and mode at that moment):
 *
 *   on_revoke    another client wants a conflicting mode; flush what you cache
 *                under the grant, then tokend_release it (or tokend_convert it
 *                down to `wanted`, or give back the part of a grown grant
 *                the other wants with tokend_release_range). Until you do,
 *                the other client waits.
 *                (clientlib/c/examples/revoke.c: set a flag, let the
 *                application thread flush and release.)
 *   on_jeopardy  the grant's validity dropped below jeopardy_ms without
 *                renewal (recovered = 0), or came back (recovered = 1).
 *   on_lost      the grant can no longer be trusted (its lease ran out and
 *                could not be renewed or reclaimed, or the session expired):
 *                stop using what it protects. tokend_release it to forget it.
 *
 * THREADS. A client handle is fully thread-safe: any thread may call any
 * function at any time, concurrently (except tokend_close, below). One mutex
 * inside the handle guards its state; it is never held while a call waits for
 * the network, so a thread blocked in tokend_acquire does not delay other
 * threads, the keepalives, or the callbacks. Why not "one handle per thread":
 * the background thread shares the handle's state anyway, so the mutex is
 * needed regardless, and the revoke callback must be able to release a grant
 * while an application thread is blocked waiting for another token; the
 * cost of the lock is nothing next to a network round trip.
 *
 * CALLBACKS run on the background thread, one at a time, with no lock held.
 * They must return quickly (no blocking I/O, no sleeping): while a callback
 * runs, no datagram is received and no keepalive is sent. No library call
 * made from a callback blocks. You may call tokend_release,
 * tokend_release_range and tokend_convert to a mode the grant already
 * covers (a downgrade, e.g. EX -> PR, or -> NL); these do not wait for the
 * worker's answer: the call returns TOKEND_OK at once, the grant is given
 * up (shrunk, or lowered) locally from that moment, and the background
 * thread retransmits the request until the
 * worker answers or the grant's lease and grace run out (then it goes on in
 * the background, best effort). tokend_grant_check, tokend_last_error,
 * tokend_strerror and the other helpers never block. Calls that would have
 * to wait (tokend_acquire, an upgrading convert, tokend_close) return
 * TOKEND_ECALLBACK from a callback, at once. The library never prints: a
 * normal tokend_close calls no callback and writes nothing.
 *
 * tokend_close ends the handle: call it once, from a thread that is not the
 * callback thread. Calls in progress in other threads return TOKEND_ECLOSED
 * and close waits for them; no call may start after close has begun.
 *
 * AUTHENTICATION. Sessions are authenticated with a client key (a key file
 * "tokend-key v1 NAME KEY": tokend_options says where it is looked for);
 * every datagram carries a MAC, and what does not verify is dropped and
 * counted (tokend_get_stats). Cryptography: OpenSSL libcrypto (link with
 * pkg-config's libcrypto flags, or -lcrypto).
 *
 * ERRORS. Every function that can fail returns a tokend_status (0 = OK,
 * negative = error); tokend_strerror names it. errno is never the only error
 * report (it is left as the system calls set it).
 *
 * EVENT LOOPS. A handle opened with tokend_connect_ex(opts, TOKEND_NO_THREAD,
 * &c) has no background thread: the application's event loop drives it, in
 * the manner of c-ares, and may keep many requests in flight from one thread:
 *
 *   poll tokend_fd(c) for reading, with a timeout of tokend_timeout(c) ms
 *   (asked again after every call on the handle: a call may start a timer);
 *   call tokend_process(c) when it is readable or the timeout has passed.
 *
 * tokend_process reads the datagrams that are ready (it never waits), runs
 * the timers (retransmissions, keepalives and session renewal, re-polls of
 * queued requests, jeopardy and loss), and calls the callbacks that are due,
 * on the calling thread: first the completion callbacks of asynchronous
 * operations (tokend_acquire_async, tokend_release_async,
 * tokend_convert_async), oldest first, then on_revoke, on_jeopardy and
 * on_lost. If nothing calls tokend_process, nothing is renewed: grants and
 * the session run out as if the network were down (on_jeopardy, on_lost
 * when it is called again). tokend_timeout is at most 1000 ms while a
 * session is open.
 *
 * Callbacks of a no-thread handle (completions and on_*) follow the rules
 * of THREADS above for callbacks: they must not block; tokend_release,
 * tokend_release_range, a downgrading tokend_convert, the *_async calls,
 * tokend_cancel_async and
 * the helpers may be called from them; calls that would wait
 * (tokend_acquire, an upgrading tokend_convert, tokend_close,
 * tokend_process) return TOKEND_ECALLBACK. A completion callback is called
 * exactly once for every start call that returned TOKEND_OK, never from
 * within that call.
 *
 * The blocking calls work on a no-thread handle too: while one waits it does
 * tokend_process's work itself (so callbacks may be called from inside it,
 * on that thread), until its own request completes. tokend_connect_ex
 * itself blocks (the map fetch and SESSION_OPEN, within connect_timeout_ms,
 * as tokend_connect), and so does an asynchronous acquire started after the
 * session ran out: it opens a new one first (from a callback it returns
 * TOKEND_ECALLBACK instead). A no-thread handle is meant for one thread, the
 * event loop's; other threads may call tokend_grant_check, tokend_last_error,
 * tokend_get_stats and tokend_session_id. tokend_close completes every
 * operation in flight with TOKEND_ECLOSED (its callback called, from inside
 * tokend_close), ends the session and frees everything. Multicast discovery
 * needs the background thread (TOKEND_ENOTSUP with TOKEND_NO_THREAD).
 * clientlib/c/examples/eventloop.c shows a poll() loop.
 *
 * Not fork-safe: a child process must not use its parent's handles.
 */
#ifndef TOKEND_H
#define TOKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOKEND_VERSION_MAJOR 0
#define TOKEND_VERSION_MINOR 1
#define TOKEND_VERSION_PATCH 0
#define TOKEND_VERSION_STRING "0.1.0"
/* MAJOR*10000 + MINOR*100 + PATCH, for #if comparisons. */
#define TOKEND_VERSION_NUMBER \
	(TOKEND_VERSION_MAJOR * 10000 + TOKEND_VERSION_MINOR * 100 + TOKEND_VERSION_PATCH)

#if defined(__GNUC__) && __GNUC__ >= 4
#define TOKEND_API __attribute__((visibility("default")))
#else
#define TOKEND_API
#endif

/* Status codes. */
typedef enum tokend_status {
	TOKEND_OK = 0,
	TOKEND_EINVAL = -1,       /* invalid argument (name length, mode, range, value, NULL) */
	TOKEND_ENOMEM = -2,       /* out of memory */
	TOKEND_ENOTSUP = -3,      /* not supported */
	TOKEND_ECONFLICT = -4,    /* a try-only request conflicts with a holder or a waiter */
	TOKEND_ETIMEDOUT = -5,    /* the wait or connect deadline passed */
	TOKEND_ENOTHELD = -6,     /* no such grant (already released, or never held) */
	TOKEND_ELOST = -7,        /* the grant was lost: lease and grace passed, or reclaim refused */
	TOKEND_ESESSION = -8,     /* the session expired or the service no longer knows it */
	TOKEND_EUNREACHABLE = -9, /* no worker answered (connect) */
	TOKEND_EREFUSED = -10,    /* the worker refused the request (BAD_REQUEST) */
	TOKEND_ECANCELED = -11,   /* the queued request was canceled */
	TOKEND_ESERVER = -12,     /* the worker reported an internal error */
	TOKEND_EADDR = -13,       /* an address could not be parsed or resolved */
	TOKEND_ESYS = -14,        /* a system call failed (socket, pipe, thread) */
	TOKEND_ECLOSED = -15,     /* the handle is being closed */
	TOKEND_ECALLBACK = -16,   /* this call would block and is not allowed from a callback */
	TOKEND_ELIMIT = -17,      /* too many requests in flight on this handle */
	TOKEND_EJEOPARDY = -18,   /* held, but its lease is not confirmed right now (do not rely on it) */
	TOKEND_EDEADLK = -19,     /* the wait would deadlock: this request was chosen to fail; grants held stay */
	TOKEND_EAUTH = -20        /* authentication: no client key, a bad key file, or a worker that does not
				   * authenticate (or requires a key this client does not have) */
} tokend_status;

/* The six DLM modes, weakest first. NL holds a place and conflicts with
 * nothing; EX conflicts with everything but NL. Compatibility:
 *
 *        NL CR CW PR PW EX
 *    NL  y  y  y  y  y  y
 *    CR  y  y  y  y  y  .
 *    CW  y  y  y  .  .  .
 *    PR  y  y  .  y  .  .
 *    PW  y  y  .  .  .  .
 *    EX  y  .  .  .  .  .
 */
typedef enum tokend_mode {
	TOKEND_NL = 0, /* null */
	TOKEND_CR = 1, /* concurrent read */
	TOKEND_CW = 2, /* concurrent write */
	TOKEND_PR = 3, /* protected read: "shared" */
	TOKEND_PW = 4, /* protected write */
	TOKEND_EX = 5  /* exclusive */
} tokend_mode;
#define TOKEND_SHARED TOKEND_PR
#define TOKEND_EXCLUSIVE TOKEND_EX

/* wait_ms arguments: 0 = try once, never queue; > 0 = wait at most that
 * long; TOKEND_WAIT_FOREVER = no limit. */
#define TOKEND_TRY 0
#define TOKEND_WAIT_FOREVER (-1)

/* Byte ranges [start, end) of a token; the whole token is
 * [0, TOKEND_WHOLE_END). Acquire also accepts 0,0 for the whole token. */
#define TOKEND_WHOLE_END UINT64_MAX

#define TOKEND_MAX_NAME 255 /* token names are 1..255 arbitrary bytes */
#define TOKEND_MAX_VALUE 64 /* value blocks are 0..64 arbitrary bytes */

/* State of a grant's value block. */
#define TOKEND_VALUE_NONE 0  /* no value block was ever set */
#define TOKEND_VALUE_VALID 1 /* value/value_len hold it */
#define TOKEND_VALUE_LOST 2  /* it was lost in a worker crash */
#define TOKEND_VALUE_UNKNOWN 3 /* not known: a grant the token cache split (TOKEN CACHE below) no
				* longer covers the whole token, and another client may have set
				* the value from the part given back; value_len is 0 */

/*
 * A grant, as returned by acquire. Plain data: copy it freely. Release and
 * convert find the library's own record by (name, fence), so a copy works as
 * well as the original.
 */
typedef struct tokend_grant {
	uint64_t fence;      /* strictly increases per token; pass it to storage */
	tokend_mode mode;    /* the granted mode */
	uint64_t start, end; /* the granted range; whole token: 0, TOKEND_WHOLE_END */
	uint32_t validity_ms; /* lease left when the call returned (keepalives extend it) */
	int value_state;     /* TOKEND_VALUE_* */
	size_t value_len;
	unsigned char value[TOKEND_MAX_VALUE];
	size_t name_len;
	unsigned char name[TOKEND_MAX_NAME];
} tokend_grant;

typedef struct tokend_client tokend_client;

/* Revoke callback: a conflicting request wants [start, end) of the token in a
 * mode that needs this grant at most in mode `wanted` (TOKEND_NL: release it).
 * Called at most once per (grant, wanted, range). */
typedef void (*tokend_revoke_fn)(tokend_client *c, const tokend_grant *g, tokend_mode wanted,
				 uint64_t start, uint64_t end, void *arg);

/* Lost callback: the grant is no longer valid (why: TOKEND_ELOST or
 * TOKEND_ESESSION). Called once per grant. */
typedef void (*tokend_lost_fn)(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg);

/* Jeopardy callback. recovered == 0: the grant's validity has dropped below
 * jeopardy_ms without being renewed (its worker has not vouched for it
 * lately, or the session could not be renewed); g->validity_ms is what is
 * left (0 once it ran out). Stop starting work that needs the grant: it is
 * either renewed or reclaimed (then on_jeopardy is called again with
 * recovered == 1), or lost (on_lost). Called once per stretch of doubt per
 * grant, always before on_lost for a grant that is lost that way. */
typedef void (*tokend_jeopardy_fn)(tokend_client *c, const tokend_grant *g, int recovered, void *arg);

typedef struct tokend_options {
	/* Seed workers, "host:port" or "[v6addr]:port"; at least one unless
	 * multicast is set. The library fetches the shard map from any of them. */
	const char *const *seeds;
	size_t nseeds;
	/*
	 * Multicast discovery (announce/SPEC.md): non-NULL listens to the
	 * workers' announcements, "[CLUSTER@][GROUP:PORT][%IFACE]", every part
	 * optional: "" = cluster "tokend", group 239.255.84.75:7790, the
	 * loopback interface (a cluster spread over hosts names its LAN
	 * interface, e.g. "prod@239.255.84.75:7790%eth0"). Without seeds,
	 * connect waits (within connect_timeout_ms) for a verified announcement
	 * and uses the workers it names as seeds; afterwards an announcement of
	 * a newer map version makes the client fetch the map. Needs
	 * announce_key, unless insecure.
	 */
	const char *multicast;
	uint32_t session_ttl_ms;     /* requested session TTL; 0 = the service's default */
	uint32_t connect_timeout_ms; /* 0 = 5000 */
	uint32_t rto_ms;             /* initial retransmission timeout; 0 = 20 (loopback/LAN) */
	tokend_revoke_fn on_revoke;  /* optional */
	tokend_lost_fn on_lost;      /* optional */
	void *cb_arg;                /* passed to every callback */
	/* The fields below took slots of the first release's reserved[8]: the
	 * struct's size and the offsets of the fields above are unchanged
	 * (LP64 and ILP32; test_api checks). */
	tokend_jeopardy_fn on_jeopardy; /* optional */
	uint32_t jeopardy_ms;        /* on_jeopardy threshold; 0 = a third of the workers' lease
				      * TTL W (or of the session TTL, if shorter) */
	/* Optional: if tokend_connect fails, it writes what it tried and why
	 * it failed here (NUL-terminated, truncated to errbuf_len); on success
	 * an empty string. After connect, see tokend_last_error. */
	char *errbuf;
	size_t errbuf_len;
	/*
	 * Authentication (wire/SPEC.md section 20). Every session is
	 * authenticated with a client key, read from the first of: key (the
	 * contents of a key file: "tokend-key v1 NAME BASE64URL"), the file
	 * key_file, the file named by $TOKEND_KEY_FILE, the file
	 * tokend-data/pki/client.key (relative to the working directory: where
	 * an all-in-one tokend started in that directory writes it). Without
	 * a key, connect fails with TOKEND_EAUTH, unless insecure is non-zero:
	 * then sessions are not authenticated, which only a cluster started
	 * with --insecure accepts (key and key_file must then be NULL).
	 */
	const char *key_file;
	const char *key;
	int insecure;
	/*
	 * The cluster's announce key, as `tokenctl announce-key` prints it
	 * (43 characters of unpadded base64url): with multicast, only
	 * announcements signed with it (Ed25519) and sent less than 30 s from
	 * this host's clock are used; others are dropped and counted
	 * (tokend_stats.announce_dropped). With multicast and neither this nor
	 * insecure, connect fails with TOKEND_EAUTH. With insecure and no key,
	 * announcements are used unverified. (It occupies the last of the
	 * first release's reserved slots.)
	 */
	const char *announce_key;
} tokend_options;

/* Fill *o with the defaults (all zero). */
TOKEND_API void tokend_options_init(tokend_options *o);

/*
 * Connect: resolve the seeds, fetch the shard map, open a session, start the
 * background thread. On success *out is a new handle (free it with
 * tokend_close). Returns within about connect_timeout_ms (default 5 s)
 * whether or not anything answers. Errors: TOKEND_EINVAL, TOKEND_EADDR, TOKEND_ESYS, TOKEND_ENOMEM, TOKEND_EUNREACHABLE
 * (no map or session within connect_timeout_ms), TOKEND_ESERVER,
 * TOKEND_EAUTH (no client key, a bad key file, a key the workers do not
 * know, a worker that does not authenticate; multicast without a valid
 * announce_key). With multicast and no seeds, TOKEND_EUNREACHABLE also
 * when no verified announcement arrived in time. On failure,
 * opts->errbuf (if set) says what was tried, e.g. "no worker answered
 * MAP_REQUEST within 300 ms; tried 127.0.0.1:7700 (5 sends)".
 */
TOKEND_API int tokend_connect(const tokend_options *opts, tokend_client **out);

/* tokend_connect_ex flags. */
#define TOKEND_NO_THREAD 0x1u /* no background thread: the application drives the handle (EVENT LOOPS) */

/*
 * tokend_connect with flags (0: the same as tokend_connect). With
 * TOKEND_NO_THREAD the handle has no background thread (see EVENT LOOPS);
 * connect still blocks until the session is open. Errors: as tokend_connect;
 * TOKEND_EINVAL for unknown flags, TOKEND_ENOTSUP for TOKEND_NO_THREAD with
 * multicast.
 */
TOKEND_API int tokend_connect_ex(const tokend_options *opts, unsigned flags, tokend_client **out);

/*
 * Acquire token `name` (1..255 bytes) in `mode` over the whole token.
 * wait_ms: TOKEND_TRY (answer at once, never queue), a limit in ms, or
 * TOKEND_WAIT_FOREVER. On TOKEND_OK *out describes the grant.
 *
 * Validity on return: TOKEND_OK means the grant is valid (tokend_grant_check
 * says TOKEND_OK) with at least (W - margin)/2 left, W being the workers'
 * lease TTL and margin W/100 + 10 ms (or (S - margin)/2 if the session TTL S
 * is shorter), however long it waited. A grant that waited in a queue comes
 * with a validity counted from the first send of the request, possibly long
 * ago; before returning it the library asks the worker to vouch for it anew
 * (a KEEPALIVE sent after the grant arrived, counted from that send) or, if
 * its shard moved meanwhile, reclaims it from the new owner. Until then the
 * grant is nobody's: it cannot be reported lost or in jeopardy, and its
 * revocations are handed to on_revoke only after this call returns it.
 *
 * Timing: a try returns after one round trip, or TOKEND_ETIMEDOUT after
 * connect_timeout_ms if no worker answers. A wait of w ms queues at most w ms
 * at the worker; the call returns at most about w + 250 ms after it started
 * (the slack lets the worker's own TIMEOUT answer arrive; if it does not, the
 * library withdraws the request with CANCEL). A grant that cannot be
 * confirmed within that limit is given back (in the background) and the
 * call returns TOKEND_ETIMEDOUT (TOKEND_ELOST if the reclaim was refused).
 *
 * Errors: TOKEND_EINVAL, TOKEND_ECONFLICT (try), TOKEND_ETIMEDOUT,
 * TOKEND_EDEADLK (the wait closed a cycle of waiters and this request was
 * chosen to fail; nothing is held, nothing else changed), TOKEND_ELOST,
 * TOKEND_ESESSION, TOKEND_ECANCELED, TOKEND_EREFUSED, TOKEND_ESERVER,
 * TOKEND_ELIMIT, TOKEND_ENOMEM, TOKEND_ECLOSED, TOKEND_ECALLBACK. If the
 * session has expired, a new one is opened first (grants of the old one are
 * lost and were reported to on_lost).
 */
TOKEND_API int tokend_acquire(tokend_client *c, const void *name, size_t name_len, tokend_mode mode,
			      int64_t wait_ms, tokend_grant *out);

/* Acquire over the byte range [start, end) (start < end; 0,0 or
 * 0,TOKEND_WHOLE_END = the whole token). Modes conflict only on overlapping
 * ranges. */
TOKEND_API int tokend_acquire_range(tokend_client *c, const void *name, size_t name_len,
				    tokend_mode mode, uint64_t start, uint64_t end, int64_t wait_ms,
				    tokend_grant *out);

/* tokend_acquire_ex and tokend_acquire_async_ex flags. */
#define TOKEND_ACQUIRE_GROW 0x1u /* the worker may grant more than [start, end), see tokend_acquire_ex */

/*
 * tokend_acquire_range with flags (0: the same as tokend_acquire_range).
 *
 * TOKEND_ACQUIRE_GROW (wire/SPEC.md section 10, as GPFS byte-range
 * tokens): if no other client holds a grant on the token and nothing
 * waits on it, the worker grants the largest range that contains [start,
 * end) and overlaps none of this client's own grants of the token (with
 * none: the whole token); otherwise exactly [start, end). out->start and
 * out->end say what was granted. A sequential writer that asks with GROW
 * for its first page typically gets the whole object, and with the token
 * cache on (tokend_token_cache) the later pages are cache hits: one
 * ACQUIRE per object. When another client later wants part of a grown
 * grant, on_revoke says which range; tokend_release_range gives back a
 * prefix or suffix and keeps the rest (the token cache does that by
 * itself for cached grants). Errors: as tokend_acquire_range, and
 * TOKEND_EINVAL for unknown flags.
 */
TOKEND_API int tokend_acquire_ex(tokend_client *c, const void *name, size_t name_len, tokend_mode mode,
				 uint64_t start, uint64_t end, int64_t wait_ms, unsigned flags, tokend_grant *out);

/*
 * Give back [start, end) of grant *g, a prefix or a suffix of its range,
 * and keep the rest under the same fence (wire/SPEC.md section 10, RELEASE
 * flag RANGE): what a holder of a grown grant does when on_revoke names a
 * part it does not need. 0,0 means the whole token. The grant shrinks in
 * the library at once, and *g with it, whatever the worker answers
 * (holding less than the worker believes is always safe): from then on the
 * fence must not be used for the bytes given back. The call waits for the
 * worker's answer (at most connect_timeout_ms). A range equal to the
 * grant's is a full tokend_release (no value). From a callback it does not
 * wait: the RELEASE goes in the background and the call returns TOKEND_OK.
 *
 * Errors: TOKEND_EINVAL (NULL, or [start, end) is not a prefix or suffix
 * strictly inside the grant: a hole in the middle, a range reaching
 * outside it, start >= end; nothing changes), TOKEND_ENOTHELD (not held,
 * released, or in the token cache; or the worker does not have it: then
 * it is lost), TOKEND_ELOST, TOKEND_EJEOPARDY (being reclaimed after a
 * worker failure: try again later; nothing changes), TOKEND_ESESSION,
 * TOKEND_ENOMEM, TOKEND_ECLOSED; and, with the grant shrunk all the same,
 * TOKEND_EREFUSED (the worker keeps the whole grant until it is released)
 * and TOKEND_ETIMEDOUT (no answer in time: the RELEASE goes on in the
 * background).
 */
TOKEND_API int tokend_release_range(tokend_client *c, tokend_grant *g, uint64_t start, uint64_t end);

/* One token of tokend_acquire_batch: name, mode, range (0,0 = whole). */
typedef struct tokend_batch_req {
	const void *name;
	size_t name_len;
	tokend_mode mode;
	uint64_t start, end;
} tokend_batch_req;

/*
 * Acquire the n tokens of reqs all or nothing (wire/SPEC.md section 21):
 * on TOKEND_OK out[i] is the grant of reqs[i] for every i; on any error
 * nothing is held (what was granted has been released) and out is
 * undefined. The tokens are taken in one fixed global order, by shard,
 * then name, then range, the order the Go client's AcquireBatch uses too:
 * two callers that batch overlapping sets, listed in any order, cannot
 * wait for each other in a cycle. The tokens of one shard go in one
 * datagram (ACQUIRE_BATCH, up to 8 tokens; more in several, in the
 * order), granted together at once or not at all; it never waits. If it
 * is not granted (a token is held or waited for in a conflicting mode, or
 * any other failure), that shard's tokens are taken one by one (one
 * ACQUIRE each, wait_ms as in tokend_acquire, per token), holding the ones
 * before. A shard with one token of the batch, or one whose tokens the
 * token cache holds, is taken one by one from the start. n is 1..64.
 * Every grant it returns is valid for as long as one tokend_acquire
 * returns: those of the first shards, which may have aged while a later
 * one waited, are confirmed by their workers first (or the call fails with
 * what tokend_acquire's confirmation would).
 * Errors: as tokend_acquire, and TOKEND_EINVAL for n out of range or an
 * invalid request.
 */
TOKEND_API int tokend_acquire_batch(tokend_client *c, const tokend_batch_req *reqs, size_t n, int64_t wait_ms,
				    tokend_grant *out);

/*
 * Release grant g. value != NULL also sets the token's value block to
 * value[0..value_len) (value_len <= 64; only PW and EX holders may: else
 * TOKEND_EINVAL); value == NULL leaves it unchanged. The grant is given up
 * locally at once; the call waits for the worker's answer (except from a
 * callback, where it returns TOKEND_OK at once).
 *
 * Errors: TOKEND_ENOTHELD (not held, or already released), TOKEND_ELOST (the
 * grant had been lost, and is now forgotten; or the worker did not answer
 * before the grant's lease and grace ran out: the RELEASE goes on in the
 * background), TOKEND_ESESSION (the session ended: the service dropped the
 * grant anyway), TOKEND_EREFUSED, TOKEND_EINVAL, TOKEND_ENOMEM,
 * TOKEND_ECLOSED.
 */
TOKEND_API int tokend_release(tokend_client *c, const tokend_grant *g, const void *value,
			      size_t value_len);

/*
 * Convert grant g to `mode`, updating *g on success. A downgrade (a mode the
 * current one covers, e.g. EX -> PR) is immediate and keeps the fence; an
 * upgrade may wait like acquire (wait_ms) and gets a new fence; if it fails
 * the grant stays as it was. value/value_len as in tokend_release (PW/EX
 * holders only). From a callback only downgrades are allowed (see THREADS).
 * An upgrade returns TOKEND_OK only once the new grant is valid with at
 * least (W - margin)/2 left, as acquire.
 *
 * Errors: as acquire, plus TOKEND_ENOTHELD, TOKEND_ELOST, TOKEND_EJEOPARDY
 * (the grant is being reclaimed after a worker failure: try again later),
 * and TOKEND_EDEADLK: the upgrade would deadlock (e.g. two PR holders both
 * converting to EX) and this one was chosen to fail; the grant stays as it
 * was, still held in its old mode with its old fence. Release it (or
 * convert it down) to let the other party through.
 * If an upgrade is given up (timeout) after the worker may have granted it,
 * or was granted but could not be confirmed in time, the library cannot
 * rely on the grant: it gives it back and reports it lost (on_lost, with
 * the grant as *g still describes it) rather than guess.
 */
TOKEND_API int tokend_convert(tokend_client *c, tokend_grant *g, tokend_mode mode, int64_t wait_ms,
			      const void *value, size_t value_len);

/*
 * Is grant g valid now? TOKEND_OK (and *remaining_ms, if not NULL, the lease
 * left before renewal), TOKEND_EJEOPARDY (held, but the lease is not
 * confirmed right now: a worker failed or the network is slow; it may come
 * back), TOKEND_ELOST, TOKEND_ENOTHELD.
 */
TOKEND_API int tokend_grant_check(tokend_client *c, const tokend_grant *g, uint32_t *remaining_ms);

/*
 * Close: end the session (the service releases every grant still held),
 * stop the background thread, free the handle. Waits at most about one
 * second for the service to confirm. c == NULL is a no-op. Returns TOKEND_OK,
 * or TOKEND_ECALLBACK (called from a callback: nothing is done).
 */
TOKEND_API int tokend_close(tokend_client *c);

/*
 * The message of the most recent call on c that failed (from any thread),
 * naming what was tried: the worker addresses, shard and epoch, how long
 * and how often, or the worker's own error text; "" if none failed yet.
 * Copied into buf (NUL-terminated, truncated to len); returns buf. Safe to
 * call from a callback. For example, after TOKEND_ETIMEDOUT from a try:
 * "acquire \"a\" EX: no answer from 10.0.0.7:7700 (shard 12, epoch 3) to 9
 * sends in 5000 ms".
 */
TOKEND_API const char *tokend_last_error(tokend_client *c, char *buf, size_t len);

/* The session id (random, chosen by the worker that opened it), 0 if none
 * is open. */
TOKEND_API uint64_t tokend_session_id(tokend_client *c);

/* Counters of a handle, since connect. */
typedef struct tokend_stats {
	uint64_t dropped;       /* datagrams dropped: malformed, unexpected, or for another session */
	uint64_t auth_failures; /* of those, the ones whose auth tag did not verify (a forgery, or a
				 * worker with another key) */
	uint64_t announce_accepted; /* announcements used (multicast) */
	uint64_t announce_dropped;  /* announcements dropped: unsigned, forged (signature), stale (sent_at
				     * more than 30 s away), another cluster, another version, malformed */
	uint64_t reserved[4];
} tokend_stats;

/* Fill *out with c's counters. TOKEND_OK, or TOKEND_EINVAL for NULL. */
TOKEND_API int tokend_get_stats(tokend_client *c, tokend_stats *out);

/*
 * TOKEN CACHE (off by default), as the kernel lock managers keep one:
 * tokend_token_cache(c, max, idle_ms) with max > 0 turns it on. Then
 * releasing a grant nobody else wants (tokend_release or
 * tokend_release_async without a value; no revocation seen for it; mode
 * PR, PW or EX over the whole token; held and confirmed) keeps it held by
 * the library instead of sending RELEASE: the call returns TOKEND_OK at
 * once and the application's copy answers TOKEND_ENOTHELD from then on. A
 * later acquire (blocking or asynchronous) of that name in a mode the
 * cached one covers, over a range it contains, is served locally with no
 * datagram: the same grant, the same fence, valid for at least what
 * acquire promises (else it is not used). Conflicting or stale cached
 * grants of the name are given back first, and the acquire's request
 * waits until that RELEASE is answered.
 *
 * A REVOKE of a cached grant is answered by the library with a RELEASE at
 * once; on_revoke, on_jeopardy and on_lost are never called for cached
 * grants. A cached grant grown beyond what the REVOKE wants
 * (TOKEND_ACQUIRE_GROW) is split instead when the wanted range covers a
 * prefix or a suffix of it: that part is given back (RELEASE flag RANGE)
 * and the rest stays cached under the same fence, served to a later
 * acquire it contains with value_state TOKEND_VALUE_UNKNOWN (another
 * client may set the value from the part given back); a hole in the middle
 * sends the whole grant back (tokend_cache_stats: splits, revoked). A
 * split grant covers no longer the whole token: released again, it is
 * given back, not cached. At most max grants are kept (least recently released given back
 * first), each at most idle_ms (0: TOKEND_DEFAULT_TOKEN_CACHE_IDLE_MS; the
 * library looks about once a second, so later by up to that). Cached
 * grants are kept alive, and reclaimed after a worker failure or a planned
 * move, as held ones; one lost is dropped silently. max = 0 turns the
 * cache off and gives back what it holds. Trade-off: while a grant is
 * cached, another client's TRY of a conflicting mode fails (its REVOKE
 * frees the token for the next request) and a waiter waits one round trip
 * more. Callable any time (also from a callback). TOKEND_OK, TOKEND_EINVAL
 * (c NULL, idle_ms < 0), TOKEND_ECLOSED.
 */
#define TOKEND_DEFAULT_TOKEN_CACHE 1024
#define TOKEND_DEFAULT_TOKEN_CACHE_IDLE_MS 30000
TOKEND_API int tokend_token_cache(tokend_client *c, size_t max, int idle_ms);

/* Token cache counters, since connect. */
typedef struct tokend_cache_stats {
	uint64_t hits;      /* acquires served from the cache */
	uint64_t misses;    /* acquires with the cache on that it could not serve */
	uint64_t revoked;   /* cached grants given back on a REVOKE */
	uint64_t evictions; /* given back for the count bound, idle time, or tokend_token_cache */
	uint64_t cached;    /* grants in the cache now */
	uint64_t splits;    /* cached grown grants split on a REVOKE: a prefix or suffix given back, the
			     * rest kept (it took the first of the first release's reserved slots: the
			     * struct's size is unchanged) */
	uint64_t reserved[2];
} tokend_cache_stats;

/* Fill *out with c's cache counters. TOKEND_OK, or TOKEND_EINVAL for NULL. */
TOKEND_API int tokend_get_cache_stats(tokend_client *c, tokend_cache_stats *out);

/*
 * Deadlock detection across tokens (wire/SPEC.md section 19). With on != 0,
 * every later acquire or upgrading convert of this handle that waits takes
 * part: if it closes a wait-for cycle of such requests, the youngest one
 * fails with TOKEND_EDEADLK instead of waiting. Turn it on only when the
 * handle is one owner, like a transaction: it keeps the grants it holds
 * until the waiting call returns. A handle whose threads hold and wait
 * independently must leave it off (one of them may release on revocation,
 * so a cycle through it is no deadlock). Off by default. A conversion
 * deadlock on one token is answered TOKEND_EDEADLK either way.
 * Returns TOKEND_OK, or TOKEND_EINVAL for c == NULL.
 */
TOKEND_API int tokend_detect_deadlocks(tokend_client *c, int on);

/*
 * Fence proofs (docs/SECURITY.md section 4). A worker signs, on request, the
 * claims of a grant a session holds with the cluster's fence key (Ed25519,
 * derived from the cluster key); storage checks such a proof with the
 * public fence key alone, without calling tokend. The public key is 32
 * bytes: `tokenctl fence-key` prints it in hex, and the servers publish it
 * in etcd at /tokend/fence-key.
 */
#define TOKEND_FENCE_KEY_LEN 32

/* What a verified proof states: the grant of fence on name over
 * [start, end) in mode, by worker worker_id serving shard at epoch, at
 * issued_at_ms (Unix milliseconds of the worker's clock). */
typedef struct tokend_fence_claims {
	uint64_t fence;
	tokend_mode mode;
	uint64_t start, end; /* whole token: 0, TOKEND_WHOLE_END */
	uint32_t shard, epoch;
	uint64_t issued_at_ms;
	size_t name_len;
	unsigned char name[TOKEND_MAX_NAME];
	size_t worker_id_len;
	unsigned char worker_id[255];
} tokend_fence_claims;

/*
 * Verify fence proof proof[0..len) under the public fence key pub32
 * (TOKEND_FENCE_KEY_LEN bytes). TOKEND_OK: *out holds the claims. Otherwise
 * *out is zeroed and the result is TOKEND_EINVAL (a NULL argument, or not a
 * proof: wrong length or layout, invalid fence, mode, range or epoch),
 * TOKEND_EAUTH (the signature does not verify: forged, altered, or another
 * cluster's key) or TOKEND_ENOMEM. A verified proof says the fence was
 * granted; storage still compares it with the highest fence it has seen.
 * Needs no handle; thread-safe.
 */
TOKEND_API int tokend_fence_proof_verify(const unsigned char *pub32, const unsigned char *proof, size_t len,
					 tokend_fence_claims *out);

/*
 * ---- Event loops (see EVENT LOOPS above): handles opened with
 * TOKEND_NO_THREAD. On a handle with a background thread these calls return
 * TOKEND_ENOTSUP (tokend_timeout: -1). ----
 */

/* The descriptor to poll for reading (a UDP socket; do not read it, close it
 * or change its flags). TOKEND_EINVAL for NULL. */
TOKEND_API int tokend_fd(tokend_client *c);

/* Milliseconds until tokend_process must run (rounded up; 0: now), at most
 * 1000 while a session is open; -1 if never (NULL, a handle with a thread,
 * or closing). Ask again after every call on the handle. */
TOKEND_API int64_t tokend_timeout(tokend_client *c);

/* Read the datagrams that are ready, run the timers that are due, call the
 * callbacks that are due (see EVENT LOOPS). Never waits. TOKEND_OK, or
 * TOKEND_EINVAL, TOKEND_ENOTSUP, TOKEND_ECALLBACK (from a callback: nothing
 * done), TOKEND_ECLOSED. */
TOKEND_API int tokend_process(tokend_client *c);

/*
 * Completion of an asynchronous operation: status is what the blocking call
 * would have returned. g: acquire: the grant on TOKEND_OK (keep a copy), NULL
 * otherwise; release: the grant that was passed; convert: the grant after
 * the conversion on TOKEND_OK (replace your copy with it: an upgrade has a
 * new fence), else as it stands (a downgrade is applied at once in any
 * case). g is valid during the call only.
 */
typedef void (*tokend_done_fn)(tokend_client *c, int status, const tokend_grant *g, void *arg);

/* Asynchronous operations a handle takes at once (acquires, converts and
 * releases not yet completed; also the most requests it has unfinished on
 * its session when one starts, withdrawn ones waiting for their CANCEL's
 * answer included): the session's 256 request ids (wire/SPEC.md section 11)
 * less a reserve for keepalives, CANCELs and renewals. */
#define TOKEND_MAX_ASYNC 224

/*
 * Start acquiring, as tokend_acquire_range (same arguments, same waiting,
 * timing, validity on completion and errors), without waiting: cb(c,
 * status, grant, arg) is called once from tokend_process when it is done.
 * *id (if id != NULL) gets the operation's id for tokend_cancel_async
 * (ids are never 0 and never reused by the handle). Returns TOKEND_OK
 * (started), or without calling cb: TOKEND_EINVAL (cb NULL, a bad name,
 * mode, range or wait), TOKEND_ENOTSUP (a handle with a thread),
 * TOKEND_ELIMIT (TOKEND_MAX_ASYNC in flight), TOKEND_ENOMEM,
 * TOKEND_ECLOSED, TOKEND_ECALLBACK (from a callback while the session must
 * be opened again), or an error opening a new session.
 */
TOKEND_API int tokend_acquire_async(tokend_client *c, const void *name, size_t name_len, tokend_mode mode,
				    uint64_t start, uint64_t end, int64_t wait_ms, tokend_done_fn cb, void *arg,
				    uint64_t *id);

/* tokend_acquire_async with flags, as tokend_acquire_ex (TOKEND_ACQUIRE_GROW);
 * TOKEND_EINVAL for unknown flags. */
TOKEND_API int tokend_acquire_async_ex(tokend_client *c, const void *name, size_t name_len, tokend_mode mode,
				       uint64_t start, uint64_t end, int64_t wait_ms, unsigned flags,
				       tokend_done_fn cb, void *arg, uint64_t *id);

/*
 * Start releasing g, as tokend_release (value copied); the grant is given
 * up locally at once; cb gets what tokend_release would have returned.
 * Errors known at once (TOKEND_ENOTHELD, TOKEND_ELOST, TOKEND_EINVAL...)
 * are returned without calling cb, as for acquire.
 */
TOKEND_API int tokend_release_async(tokend_client *c, const tokend_grant *g, const void *value,
				    size_t value_len, tokend_done_fn cb, void *arg, uint64_t *id);

/*
 * Start converting g to mode, as tokend_convert (waiting as it does; value
 * copied). *g is not changed: cb gets the converted grant. Errors known at
 * once (TOKEND_ENOTHELD, TOKEND_EJEOPARDY, TOKEND_ESESSION...) are returned
 * without calling cb.
 */
TOKEND_API int tokend_convert_async(tokend_client *c, const tokend_grant *g, tokend_mode mode, int64_t wait_ms,
				    const void *value, size_t value_len, tokend_done_fn cb, void *arg,
				    uint64_t *id);

/*
 * Withdraw the acquire or upgrading convert `id`: a request already sent is
 * withdrawn with CANCEL (wire/SPEC.md section 12), as a blocking call does
 * when its wait runs out, and a grant that came meanwhile is given back.
 * Its callback is then called from the next tokend_process with
 * TOKEND_ECANCELED, or with the error it had already got; never TOKEND_OK.
 * An upgrade withdrawn after the worker may have granted it loses the grant
 * (on_lost), as with tokend_convert. Returns TOKEND_OK, TOKEND_ENOTHELD (no
 * such operation in flight: finished, or never started), TOKEND_ENOTSUP (a
 * release or downgrade: they do not wait), TOKEND_EINVAL (NULL, id 0).
 */
TOKEND_API int tokend_cancel_async(tokend_client *c, uint64_t id);

/* Human-readable text of a status code; never NULL. */
TOKEND_API const char *tokend_strerror(int status);

/* Mode names "NL".."EX"; parse also accepts "shared"/"sh"/"read" (PR) and
 * "exclusive"/"write" (EX), case-insensitive. */
TOKEND_API const char *tokend_mode_name(tokend_mode m);
TOKEND_API int tokend_mode_parse(const char *s, tokend_mode *out);

/* The token-name hash (64-bit FNV-1a) the service shards by; shard =
 * hash % shard_count. */
TOKEND_API uint64_t tokend_hash(const void *name, size_t name_len);

/* The library's version string (may differ from TOKEND_VERSION_STRING
 * when linked dynamically against another build). */
TOKEND_API const char *tokend_version(void);

#ifdef __cplusplus
}
#endif
#endif /* TOKEND_H */
