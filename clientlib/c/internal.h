/*
 * internal.h - libtokend's state: the client handle, requests, grants,
 * validity groups and the shard map. Not installed.
 *
 * Locking: one mutex per handle (c->mu) guards everything in struct
 * tokend_client and everything reachable from it, except the fields marked
 * "read-only after connect". Every function in engine.c expects c->mu held.
 * Nothing blocks while holding it except sendto on a non-blocking socket and
 * numeric address parsing.
 *
 * Time is CLOCK_MONOTONIC nanoseconds (int64_t) everywhere.
 */
#ifndef TOKEND_INTERNAL_H
#define TOKEND_INTERNAL_H

#include "ann.h"
#include "auth.h"
#include "codec.h"
#include "net.h"
#include "tokend.h"

#include <pthread.h>

#define NS_PER_MS INT64_C(1000000)
#define NEVER INT64_MAX

#define MAX_UNFINISHED 256       /* SPEC 11: unfinished request ids per session */
#define MAX_SHARDS (1u << 20)    /* largest shard count we allocate a map for */
#define RTO_MAX_NS (1000 * NS_PER_MS)
#define QUEUED_POLL_NS (500 * NS_PER_MS) /* SPEC 12: re-poll of a queued request */
#define DEFAULT_CONNECT_MS 5000
#define MAX_DISCOVERED 16 /* seeds multicast discovery adds to a seedless client */
#define DEFAULT_RTO_MS 20
#define CLOSE_WAIT_MS 1000
#define WAIT_SLACK_NS (250 * NS_PER_MS) /* see wait_deadline() in client.c */
#define MAX_STASH 64
#define STASH_TTL_NS (10000 * NS_PER_MS)
#define VOUCH_EVERY_NS (500 * NS_PER_MS) /* a fresh confirming KEEPALIVE, see grant_vouch */
#define LIB_ID "c/" TOKEND_VERSION_STRING

/* Reply data kept in a request for whoever completes it. */
struct reply_grant {
	uint64_t fence;
	uint8_t mode;
	uint32_t validity_ms;
	uint64_t start, end;
	uint8_t value_flags;
	uint8_t value_len;
	uint8_t value[TKW_MAX_VALUE];
};

enum { OWN_SYNC, OWN_ASYNC };

struct aop; /* an asynchronous operation (async.c) */

/*
 * One request id's life. Sync requests belong to the application thread
 * waiting for them (it retransmits them and frees them), or to the
 * asynchronous operation (async.c) that does the same from tokend_process;
 * async ones belong to
 * the background thread (keepalives, reclaims, cancels, releases made from
 * callbacks, map fetches). Every live request is on c->reqs until it is
 * finished; a finished request no longer holds the ack back.
 */
/* Workers a client owes a DONE at once (engine.c, done_owe). */
#define TKN_MAX_DONE 64

struct req {
	struct req *next, *prev;
	int linked;         /* on c->reqs */
	uint8_t type;
	int owner;          /* OWN_SYNC or OWN_ASYNC */
	int in_session;     /* numbered from the session counter (all but SESSION_OPEN and MAP_REQUEST) */
	uint64_t session;   /* session it belongs to (in_session) */
	uint64_t id;        /* request id; in-session ones get theirs at their first send */
	int counted;        /* counted in c->unfinished */
	int routed;         /* token request: sent to the map's owner of `shard`, at its epoch */
	uint32_t shard;
	uint32_t epoch;     /* header epoch of the last send */
	struct tkn_addr dest;
	int has_dest;
	uint8_t dg[TKW_MAX_DATAGRAM];
	size_t dglen;
	int64_t first_send; /* 0 = never sent; validity is counted from here (SPEC 13) */
	int64_t next_send;
	int64_t rto;
	int sends;
	int queued;         /* got QUEUED: re-poll every 500 ms */
	int exempt;         /* answered QUEUED: the ack skips it (SPEC 11); same id if it moves (SPEC 18) */
	int abandoned;      /* the caller gave up: never sent again; its CANCEL finishes it */
	int done;
	int result;         /* tokend_status once done */
	int final_status;   /* wire status of a final reply, -1 if none */
	pthread_cond_t cond; /* OWN_SYNC: signalled on every change */
	int has_cond;

	/* what the request is about */
	uint8_t name[TKW_MAX_NAME];
	uint8_t name_len;
	uint64_t fence;     /* RELEASE, CONVERT, RECLAIM: the grant's fence */
	uint8_t mode;
	int renew;          /* KEEPALIVE with RENEW */
	int from_cache;     /* RELEASE of a grant taken out of the token cache (cache.c) */
	int partial;        /* RELEASE with flag RANGE (the grant shrank when it was made) */
	struct batch_ents *batch;      /* ACQUIRE_BATCH: its entries, in order (freed with the request) */
	tokend_grant *bout;            /* ACQUIRE_BATCH, sync: where the grants go, in entry order */
	int orphan;                    /* ACQUIRE_BATCH its caller gave up: grants it gets are given back */
	uint64_t done_version; /* KEEPALIVE with DONE: the map version it is about */
	struct req *target; /* CANCEL: the abandoned request */
	struct req *cancel; /* abandoned ACQUIRE/CONVERT: its CANCEL */
	uint64_t late_fence; /* abandoned ACQUIRE/CONVERT: a grant that arrived anyway */
	uint32_t map_first; /* MAP_REQUEST: first_shard asked for */

	/* reply */
	struct reply_grant rep;
	uint32_t rep_epoch; /* header epoch of the final reply */
	char errtext[128];  /* the worker's ERROR message, if any (for tokend_last_error) */
	uint64_t s_session; /* SESSION_OPEN reply */
	uint32_t s_ttl, s_shards, s_grace, s_wttl;
	int cookie;         /* SESSION_OPEN: dg carries a cookie (tagged with the open key) */
	int got_cookie;     /* SESSION_OPEN: a COOKIE reply came */
	int s_key_ok;       /* SESSION_OPEN: s_key verified the OK reply's tag */
	int bad_ok;         /* SESSION_OPEN: an OK reply came whose tag did not verify */
	uint8_t s_key[TKA_KEY_LEN]; /* SESSION_OPEN: the session key of that reply */
	tokend_grant out;   /* ACQUIRE/CONVERT: what the caller gets */
};

/* The entries of an ACQUIRE_BATCH, for its reply (the GRANT_BATCH names
 * no token) and for a REVOKE that comes before it (pending_grant_for). */
struct batch_ents {
	int n;
	struct {
		uint8_t mode;
		uint8_t name_len;
		uint8_t name[TKW_MAX_NAME];
		uint64_t start, end;
	} e[TKW_MAX_BATCH];
};

/*
 * Validity group: the client's deadline for one (shard, epoch) (SPEC 13).
 * A grant is valid while now < its group's deadline and the session's.
 */
struct group {
	struct group *next;
	uint32_t shard, epoch;
	int64_t deadline; /* renewed forward only */
	struct tkn_addr dest; /* the worker that vouches for it */
	int refs;         /* grants (not lost) in it */
	int stale;        /* the map shows a newer epoch: reclaim from the new owner */
	int mark;         /* scratch for the keepalive tick */
};

enum { G_HELD, G_RELEASING, G_RECLAIMING, G_LOST };

/*
 * A grant the library holds. A grant is "pending" from its GRANT (or an
 * upgrade's) until tokend_acquire / tokend_convert hands it to the caller,
 * which happens only once it is valid for at least fresh_ns() (SPEC 13,
 * "asynchronous grant"). Nobody relies on a pending grant: the loss rule
 * (deadline + grace) and jeopardy notices skip it, and its revocations wait
 * in `deferred` until the hand-over.
 */
struct grant_rec {
	struct grant_rec *next;
	tokend_grant g;   /* the public view (name, fence, mode, range, value) */
	uint32_t shard;
	uint64_t session;
	struct group *grp; /* NULL once lost */
	int state;
	int lost_why;     /* G_LOST: TOKEND_ELOST or TOKEND_ESESSION */
	int pending;
	int jeopardy;     /* on_jeopardy was told it is in doubt (until it recovers) */
	struct {
		uint8_t mode;
		uint64_t start, end;
	} deferred[4];    /* revocations that came while pending */
	int ndeferred;
	/* revocations already handed to the application (SPEC 12 dedup) */
	struct {
		uint8_t mode;
		uint64_t start, end;
	} seen[4];
	int nseen; /* revocations seen; the last four are kept */
	/* token cache (cache.c): released by the application, kept held by
	 * the library for a compatible re-acquire; on the LRU list */
	int cached;
	int64_t cached_at;
	struct grant_rec *cprev, *cnext;
};

/* A REVOKE for a fence we do not know yet while an ACQUIRE/CONVERT of the
 * same name is unfinished: its GRANT may still be on the way. */
struct stash {
	struct stash *next;
	uint8_t name[TKW_MAX_NAME];
	uint8_t name_len;
	uint64_t fence;
	uint8_t wanted;
	uint64_t start, end;
	uint32_t shard, epoch;
	struct tkn_addr src;
	int64_t at;
};

enum { EV_REVOKE, EV_LOST, EV_JEOPARDY };

struct event {
	struct event *next;
	int kind;
	tokend_grant g;
	tokend_mode wanted;
	uint64_t start, end;
	int why; /* EV_LOST: the status; EV_JEOPARDY: 1 = recovered */
};

struct map_worker {
	uint16_t index;
	char addr[TKW_MAX_TEXT + 1];
	struct tkn_addr a;
	int resolved;
};

struct shard_map {
	int have;
	uint64_t version;
	uint32_t shard_count, grace_ms;
	uint16_t *owner;  /* per shard: worker index or TKW_NO_WORKER */
	uint32_t *epoch;  /* per shard */
	struct map_worker *workers;
	size_t nworkers;
};

/* A paginated map fetch in progress (SPEC 15). */
struct map_fetch {
	int active;
	int again;          /* asked for again while running */
	int ready;          /* assembled, waiting to be installed by the thread loop */
	struct req *req;    /* the MAP_REQUEST in flight */
	uint32_t next_first;
	struct shard_map m; /* being assembled (m.version 0: no page yet) */
	size_t rr;          /* round robin over destinations */
};

enum { S_NONE, S_OPENING, S_OPEN, S_LOST, S_CLOSED };

struct tokend_client {
	pthread_mutex_t mu;
	pthread_cond_t cond; /* broadcast: session/map state changed, a call left */

	/* read-only after connect */
	int fd, family;
	int wake[2];
	pthread_t thread;
	int thread_started;
	tokend_revoke_fn on_revoke;
	tokend_lost_fn on_lost;
	tokend_jeopardy_fn on_jeopardy;
	void *cb_arg;
	int64_t jeopardy_ns; /* 0: a third of min(W, S) (jeopardy_ns() in engine.c) */
	uint32_t req_ttl_ms;
	int64_t rto0, connect_ns;
	/* authentication (SPEC 20), read-only after connect */
	int keyed;                      /* a client key: every session is authenticated */
	char key_name[TKA_MAX_NAME + 1];
	uint8_t client_key[TKA_KEY_LEN];
	struct tka_mac open_c2w, open_w2c; /* MAC keys under the open key */
	struct tkn_addr *seeds;
	size_t nseeds, seeds_cap; /* multicast discovery adds seeds up to seeds_cap (guarded by mu) */

	/* multicast discovery (ann.h): mfd < 0 = off */
	int mfd;
	struct tkm_config mcfg;
	int ann_keyed;                /* verify with ann_pub */
	uint8_t ann_pub[TKM_PUB_LEN];
	uint64_t ann_ok, ann_drops;   /* guarded by mu */
	uint8_t ann_buf[TKM_MAX_DATAGRAM + 1];

	/* token cache (cache.c; guarded by mu): cache_max 0 = off. head is
	 * the most recently released grant, tail the next to go. */
	size_t cache_max, cache_n;
	int64_t cache_idle_ns;
	struct grant_rec *cache_head, *cache_tail;
	uint64_t cache_hits, cache_misses, cache_revoked, cache_evictions, cache_splits;

	int detect; /* tokend_detect_deadlocks: DETECT on waiting acquires and upgrades (guarded by mu) */

	/* lifetime */
	int closing, stopping;
	int active; /* API calls in progress */

	uint64_t rng;

	/* session */
	int sstate;
	uint64_t session;
	uint64_t next_id;
	size_t unfinished;
	int64_t session_deadline;
	uint32_t S, W, G, shard_count;
	uint8_t open_nonce[TKA_NONCE_LEN]; /* the nonce of the SESSION_OPEN in progress */
	struct tka_mac sess_c2w, sess_w2c; /* MAC keys of the open session (keyed) */
	struct tkn_addr session_dest;
	size_t dest_rr;
	int renew_misses;
	int64_t ka_next;

	struct shard_map map;
	struct map_fetch mf;
	/*
	 * DONEs owed to workers that a new map gave shards (SPEC 13, "Early
	 * end of grace"): sent once the reclaims there are answered. At most
	 * TKN_MAX_DONE workers; one beyond keeps its full grace period.
	 */
	struct done_owed {
		struct tkn_addr a;
		int64_t next; /* not before: the retry of a DONE unanswered */
	} done[TKN_MAX_DONE];
	int ndone;

	struct req *reqs;
	struct grant_rec *grants;
	struct group *groups;
	struct stash *stash;
	int nstash;
	struct event *ev_head, *ev_tail;
	int64_t next_lost_check;
	int confirming; /* calls waiting in confirm_grant: group renewals broadcast c->cond */

	uint64_t drops; /* malformed or unexpected datagrams */
	uint64_t auth_failures; /* of drops: tag did not verify */

	/* for messages: where MAP_REQUEST and SESSION_OPEN went lately */
	struct tried {
		uint8_t type;
		struct tkn_addr a;
		int sends;
	} tried[8];
	int ntried;
	char errmsg[256]; /* tokend_last_error */

	/*
	 * The reply goes to the thread that waits for it (Linux): a thread
	 * waiting in wait_req reads the socket itself (reader_wait in
	 * engine.c) instead of being woken by the background thread, which
	 * saves a thread switch per request. Two epoll sets hold the socket
	 * with EPOLLEXCLUSIVE, the waiting thread's registered first, so a
	 * datagram wakes the waiting thread if there is one and the
	 * background thread only if not. -1 where there is no epoll.
	 */
	int app_ep, bg_ep;   /* read-only after connect */
	int rwake[2];        /* wakes the reading thread; read-only after connect */
	struct req *reading; /* the request whose thread waits in app_ep, or NULL */
	int64_t bg_sleep_until; /* the background thread sleeps until then; 0 while it is awake */

	/*
	 * A handle without a background thread (tokend_connect_ex with
	 * TOKEND_NO_THREAD, async.c): the application drives the engine with
	 * tokend_process, and blocking calls drive it while they wait.
	 */
	int evloop;          /* read-only after connect */
	int in_cb;           /* evloop: callbacks are running on cb_thread */
	pthread_t cb_thread;
	struct aop *aops;    /* asynchronous operations, oldest first */
	size_t naops;        /* of them, the ones not finished */
	uint64_t next_aop;   /* the last operation id given */

	struct tkw_msg tx;  /* scratch for building datagrams */
	struct tkw_msg aux; /* scratch for re-reading our own datagrams */
	struct tkw_msg rx;  /* the background thread's decode buffer */
	uint8_t rxbuf[2048];
};

/* ---- engine.c (c->mu held) ---- */
int64_t margin_ns(uint32_t ms);
int on_bg_thread(struct tokend_client *c);
void wake_bg(struct tokend_client *c);
struct req *req_new(struct tokend_client *c, uint8_t type, int owner);
struct req *req_for_grant(struct tokend_client *c, uint8_t type, int owner, const struct grant_rec *g);
int req_build(struct tokend_client *c, struct req *r, struct tkw_msg *m);
int open_build(struct tokend_client *c, struct req *r, const uint8_t *cookie);
void req_send(struct tokend_client *c, struct req *r, int64_t now);
void req_complete(struct tokend_client *c, struct req *r, int result);
void req_unlink(struct tokend_client *c, struct req *r);
void req_free(struct req *r);
int req_abandon(struct tokend_client *c, struct req *r); /* 1 = ownership passed to the engine */
void map_refresh(struct tokend_client *c, int64_t now);
void map_free(struct shard_map *m);
int map_route(struct tokend_client *c, uint32_t shard, struct tkn_addr *dest, uint32_t *epoch);
int pick_worker(struct tokend_client *c, struct tkn_addr *out);
struct grant_rec *grant_find(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence);
void grant_remove(struct tokend_client *c, struct grant_rec *g);
void grant_view(struct tokend_client *c, struct grant_rec *g, int64_t now, tokend_grant *out);
int grant_valid(struct tokend_client *c, struct grant_rec *g, int64_t now, int64_t *left);
void session_reset(struct tokend_client *c);
void *bg_main(void *arg);
int reader_init(struct tokend_client *c);
/* Read what the multicast socket holds and act on it (mu held). Returns the
 * number of announcements accepted. */
int ann_receive(struct tokend_client *c, int64_t now);
int reader_wait(struct tokend_client *c, struct req *r, int64_t until); /* 1 = waited (see engine.c) */
void reader_wake(struct tokend_client *c);
void tried_format(struct tokend_client *c, uint8_t type, char *buf, size_t cap);
int status_to_result(int wire_status);
int64_t fresh_ns(struct tokend_client *c);
void grant_vouch(struct tokend_client *c, struct grant_rec *g, int64_t now);
void grant_handover(struct tokend_client *c, struct grant_rec *g);
void grant_give_up(struct tokend_client *c, struct grant_rec *g, const tokend_grant *report, int why);
struct req *send_release_async(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence,
			const struct tkn_addr *to, uint32_t shard, uint32_t epoch);
/* A RELEASE with flag RANGE giving back [start, end), a prefix or suffix
 * strictly inside held grant g: g shrinks now; an OWN_ASYNC one is sent
 * now. NULL (nothing changed) when out of memory. */
struct req *partial_release(struct tokend_client *c, struct grant_rec *g, uint64_t start, uint64_t end, int owner);

/* ---- engine.c: a handle without a background thread (c->mu held) ---- */
int64_t engine_timers(struct tokend_client *c, int64_t now);
int64_t engine_next(struct tokend_client *c, int64_t now);
void engine_receive(struct tokend_client *c, int64_t now);
void engine_dispatch(struct tokend_client *c);

/* ---- client.c, shared with async.c (c->mu held) ---- */
int api_enter(struct tokend_client *c);
void api_leave(struct tokend_client *c);
void set_err(struct tokend_client *c, const char *fmt, ...)
#if defined(__GNUC__)
	__attribute__((format(printf, 2, 3)))
#endif
	;
void op_name(char *buf, size_t cap, const char *verb, const uint8_t *name, size_t len, int mode);
void req_failed(struct tokend_client *c, const char *op, const struct req *r, int rc, int64_t t0);
int64_t wait_deadline(struct tokend_client *c, int64_t wait_ms, int64_t now);
int ensure_session(struct tokend_client *c, int64_t deadline);
int req_step(struct tokend_client *c, struct req *r, int64_t deadline, int closing_ok, int *handed, int *rc,
	     int64_t *until);
int confirm_step(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence, int64_t deadline,
		 const tokend_grant *old, tokend_grant *out, const char *op, int64_t *next_vouch, int *rc,
		 int64_t *until);
/* A mode the API knows: 1. */
int valid_mode(int m);
/* A grant as a caller hands it back (a name, a valid fence): 1. */
int valid_grant_arg(const tokend_grant *g);
/* The range [start, *end) of a call: 0,0 is the whole token (*end becomes
 * TOKEND_WHOLE_END); an empty or inverted one is TOKEND_EINVAL. */
int check_range(uint64_t start, uint64_t *end);
/* An acquire's arguments but the handle and where the result goes, the
 * range as check_range takes it: TOKEND_OK or TOKEND_EINVAL. */
int check_acquire(const void *name, size_t name_len, tokend_mode mode, uint64_t start, uint64_t *end,
		  int64_t wait_ms, unsigned flags);
int acquire_req(struct tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
		uint64_t end, int64_t wait_ms, unsigned flags, struct req **out);
int convert_req(struct tokend_client *c, tokend_grant *gr, tokend_mode mode, int64_t wait_ms, const void *value,
		size_t value_len, struct req **out, int *down);
int release_req(struct tokend_client *c, const tokend_grant *gr, const void *value, size_t value_len,
		struct req **out);

/* ---- cache.c: the token cache (c->mu held) ---- */
/* Release's fast path: 1 = g is cached (nothing to send). */
int cache_release(struct tokend_client *c, struct grant_rec *g);
/* Acquire's: 1 = a cached grant serves it (*out); else the cached grants
 * of name that must not stay beside the request are given back. */
int cache_acquire(struct tokend_client *c, const uint8_t *name, size_t len, int mode, uint64_t start,
		  uint64_t end, tokend_grant *out);
/* A RELEASE of a cached grant of name is unanswered: an ACQUIRE of name
 * waits for it (returns when to look again) before its first send; 0 if none. */
int64_t cache_releasing(struct tokend_client *c, const uint8_t *name, size_t len);
/* The engine is done with a cached grant (lost, session ended): out of the
 * list, silently. */
void cache_unlink(struct tokend_client *c, struct grant_rec *g);
/* A REVOKE of the cached grant g wanting [start, end) in a mode that needs
 * g at most in `wanted`: given back at once (or the part wanted, if that
 * is a prefix or suffix of it), the application not told. */
void cache_revoke(struct tokend_client *c, struct grant_rec *g, int wanted, uint64_t start, uint64_t end);
/* A name the token cache holds a grant of, or is giving one back: 1. */
int cache_has(struct tokend_client *c, const uint8_t *name, size_t len);
/* Evict grants idle too long; returns when to look again. */
int64_t cache_expire(struct tokend_client *c, int64_t now);

/* ---- async.c (c->mu held) ---- */
/* Wait until `until` at most for something to happen, driving the engine
 * (a handle without thread: blocking calls wait this way). */
void evl_drive(struct tokend_client *c, int64_t until);
/* tokend_close: every operation in flight ends with TOKEND_ECLOSED, its
 * callback called. */
void aops_close(struct tokend_client *c);

#endif
