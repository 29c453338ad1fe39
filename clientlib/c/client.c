/*
 * client.c - libtokend's public API (tokend.h): argument checks, the calls
 * that wait for an answer, connect and close. The protocol itself is in
 * engine.c; see internal.h for the locking rules.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ small helpers */

static int cond_init(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		return -1;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int e = pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
	return e == 0 ? 0 : -1;
}

/* Wait on cv until `until` (monotonic ns) at the latest. */
static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t until)
{
	int64_t now = tkn_now();
	if (until == NEVER || until - now > 1000 * NS_PER_MS)
		until = now + 1000 * NS_PER_MS; /* re-check at least every second */
	struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
	pthread_cond_timedwait(cv, mu, &ts);
}

/* ------------------------------------------------------------ error messages */

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

/* The message tokend_last_error returns (c->mu held). */
void set_err(struct tokend_client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
	va_end(ap);
}

/* `acquire "name" EX`: the call, for messages. Names are bytes: anything
 * but printable ASCII is shown as \xHH, and long names are cut. */
void op_name(char *buf, size_t cap, const char *verb, const uint8_t *name, size_t len, int mode)
{
	static const char *const modes[] = {"NL", "CR", "CW", "PR", "PW", "EX"};
	size_t n = (size_t)snprintf(buf, cap, "%s \"", verb);
	for (size_t i = 0; i < len && n + 8 < cap; i++) {
		if (i == 40) {
			n += (size_t)snprintf(buf + n, cap - n, "...");
			break;
		}
		uint8_t b = name[i];
		if (b >= 0x20 && b < 0x7f && b != '"' && b != '\\')
			buf[n++] = (char)b;
		else
			n += (size_t)snprintf(buf + n, cap - n, "\\x%02x", b);
	}
	if (n < cap)
		snprintf(buf + n, cap - n, "\"%s%s", mode >= 0 ? " " : "", mode >= 0 && mode < 6 ? modes[mode] : "");
}

/* Why a token request failed, naming where it went (c->mu held). */
void req_failed(struct tokend_client *c, const char *op, const struct req *r, int rc, int64_t t0)
{
	char to[80] = "?";
	long long ms = (long long)((tkn_now() - t0) / NS_PER_MS);
	if (r->has_dest)
		tkn_addr_format(&r->dest, to, sizeof to);
	if (r->final_status > 0) {
		set_err(c, "%s: %s answered %s%s%s", op, to, tkw_status_name(r->final_status), r->errtext[0] ? ": " : "",
			r->errtext);
	} else if (rc == TOKEND_ETIMEDOUT && r->queued) {
		set_err(c, "%s: still queued at %s (shard %u, epoch %u) after %lld ms, the wait limit", op, to, r->shard,
			r->epoch, ms);
	} else if (rc == TOKEND_ETIMEDOUT || rc == TOKEND_ELOST) {
		if (r->sends == 0 && r->routed && !r->has_dest)
			set_err(c, "%s: no reachable owner of shard %u in map version %llu within %lld ms", op, r->shard,
				(unsigned long long)c->map.version, ms);
		else if (r->sends == 0)
			set_err(c, "%s: not sent within %lld ms (no open session, or too many requests in flight)", op, ms);
		else
			set_err(c, "%s: no answer from %s (shard %u, epoch %u) to %d send%s in %lld ms", op, to, r->shard,
				r->epoch, r->sends, r->sends == 1 ? "" : "s", ms);
	} else if (rc == TOKEND_ESESSION) {
		set_err(c, "%s: the session ended (expired, or unknown to the workers)", op);
	} else {
		set_err(c, "%s: %s", op, tokend_strerror(rc));
	}
}

/* Every API call that touches the handle runs between enter and leave, so
 * that tokend_close can wait for calls in progress. */
static int enter(struct tokend_client *c)
{
	if (c->closing)
		return TOKEND_ECLOSED;
	c->active++;
	return TOKEND_OK;
}

static void leave(struct tokend_client *c)
{
	if (--c->active == 0)
		pthread_cond_broadcast(&c->cond);
}

int api_enter(struct tokend_client *c) { return enter(c); }
void api_leave(struct tokend_client *c) { leave(c); }

/* Wait on cv until `until` at the latest; a handle without a background
 * thread drives the engine meanwhile instead (async.c). */
static void wait_for(struct tokend_client *c, pthread_cond_t *cv, int64_t until)
{
	if (c->evloop)
		evl_drive(c, until);
	else
		timed_wait(cv, &c->mu, until);
}

static int valid_name(const void *name, size_t len)
{
	return name != NULL && len >= 1 && len <= TOKEND_MAX_NAME;
}

int valid_mode(int m) { return m >= TOKEND_NL && m <= TOKEND_EX; }

int check_range(uint64_t start, uint64_t *end)
{
	if (start == 0 && *end == 0)
		*end = TOKEND_WHOLE_END;
	return start < *end ? TOKEND_OK : TOKEND_EINVAL;
}

int check_acquire(const void *name, size_t name_len, tokend_mode mode, uint64_t start, uint64_t *end,
		  int64_t wait_ms, unsigned flags)
{
	if (!valid_name(name, name_len) || !valid_mode((int)mode) || wait_ms < TOKEND_WAIT_FOREVER ||
	    (flags & ~TOKEND_ACQUIRE_GROW))
		return TOKEND_EINVAL;
	return check_range(start, end);
}

static int writer_mode(int m) { return m == TOKEND_PW || m == TOKEND_EX; }

/* wait_ms on the wire: 0 = TRY, -1 = no limit (SPEC 5 ACQUIRE). */
static uint32_t wire_wait(int64_t wait_ms)
{
	if (wait_ms < 0)
		return TKW_WAIT_FOREVER;
	if (wait_ms >= (int64_t)TKW_WAIT_FOREVER)
		return TKW_WAIT_FOREVER - 1;
	return (uint32_t)wait_ms;
}

/*
 * The local deadline of a call that may queue. A try gets its answer in a
 * round trip, so it is bounded by the connect timeout (the worker may be
 * unreachable). A wait of w ms lets the request stay queued w ms at the
 * worker, which then answers TIMEOUT; we give that answer WAIT_SLACK_NS to
 * arrive before we give up ourselves and CANCEL, because a TIMEOUT leaves no
 * doubt about the outcome and a CANCEL racing a grant may (see cancel_done
 * in engine.c). So a call returns at most about w + 250 ms after it started.
 */
int64_t wait_deadline(struct tokend_client *c, int64_t wait_ms, int64_t now)
{
	if (wait_ms < 0)
		return NEVER;
	if (wait_ms == 0)
		return now + c->connect_ns;
	if (wait_ms > (int64_t)TKW_WAIT_FOREVER - 1)
		wait_ms = (int64_t)TKW_WAIT_FOREVER - 1; /* what the wire can say (~49 days) */
	return now + wait_ms * NS_PER_MS + WAIT_SLACK_NS;
}

/*
 * One look at a sync request: 1 once it has its outcome (*rc), 0 if it is
 * to be looked at again by *until (it is retransmitted when due). If the
 * deadline passes (or the handle closes) the request is abandoned; then
 * *handed tells whether the engine took it over (the caller must not free it).
 */
int req_step(struct tokend_client *c, struct req *r, int64_t deadline, int closing_ok, int *handed, int *rc,
	     int64_t *until)
{
	*handed = 0;
	if (r->done) {
		*rc = r->result;
		return 1;
	}
	int64_t now = tkn_now();
	*rc = TOKEND_OK;
	if (c->stopping || (c->closing && !closing_ok))
		*rc = TOKEND_ECLOSED;
	else if (now >= deadline)
		*rc = TOKEND_ETIMEDOUT;
	if (*rc != TOKEND_OK) {
		*handed = req_abandon(c, r);
		return 1;
	}
	if (r->type == TKW_ACQUIRE && r->sends == 0) {
		/* a RELEASE of a cached grant of the name goes first (cache.c) */
		int64_t w = cache_releasing(c, r->name, r->name_len);
		if (w) {
			*until = w < deadline ? w : deadline;
			return 0;
		}
	}
	if (now >= r->next_send)
		req_send(c, r, now);
	*until = r->next_send < deadline ? r->next_send : deadline;
	return 0;
}

/* Wait for a sync request's outcome (req_step). */
static int wait_req(struct tokend_client *c, struct req *r, int64_t deadline, int closing_ok, int *handed)
{
	for (;;) {
		int rc;
		int64_t until;
		if (req_step(c, r, deadline, closing_ok, handed, &rc, &until))
			return rc;
		if (!reader_wait(c, r, until)) /* the reply may come to this thread */
			wait_for(c, &r->cond, until);
	}
}

/* Run a sync request to its end and free it (unless the engine took it).
 * A failure is described for tokend_last_error, as op (if not NULL). */
static int run_req(struct tokend_client *c, struct req *r, int64_t deadline, int closing_ok, tokend_grant *out,
		   const char *op)
{
	int handed;
	int64_t t0 = tkn_now();
	int rc = wait_req(c, r, deadline, closing_ok, &handed);
	if (rc != TOKEND_OK && op)
		req_failed(c, op, r, rc, t0);
	if (!handed) {
		if (rc == TOKEND_OK && out)
			*out = r->out;
		req_free(r);
	}
	return rc;
}

/*
 * Wait until the grant (name, fence) that the caller's ACQUIRE or CONVERT
 * has just got is valid for at least fresh_ns(), then hand it over (*out).
 * A grant that waited in a queue may come with a validity counted from the
 * first send of its request, long ago, or none (SPEC 13): the worker is
 * asked to vouch for it anew (grant_vouch), and the answer counts from that
 * later send. Until the hand-over the grant is pending: nobody relies on it,
 * so the loss rule does not apply to it, and its revocations wait.
 *
 * If it cannot be confirmed by deadline (or the handle closes), or it is
 * lost meanwhile (reclaim refused, session ended), it is given back in the
 * background and the call fails: TOKEND_ETIMEDOUT, TOKEND_ECLOSED, or why it
 * was lost. `old` (an upgrade: the grant as the caller knew it before) is
 * then reported to on_lost, since the caller's grant is gone with it.
 *
 * confirm_step is one look: 1 once decided (*rc), 0 to look again by
 * *until (a KEEPALIVE asking to vouch goes out every VOUCH_EVERY_NS);
 * confirm_grant waits between looks, an asynchronous operation (async.c)
 * looks again from tokend_process.
 */
int confirm_step(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence, int64_t deadline,
		 const tokend_grant *old, tokend_grant *out, const char *op, int64_t *next_vouch, int *rc,
		 int64_t *until)
{
	struct grant_rec *g = grant_find(c, name, len, fence);
	if (!g || g->state == G_RELEASING) {
		*rc = TOKEND_ENOTHELD; /* released by someone who guessed its fence */
		return 1;
	}
	int64_t now = tkn_now(), left;
	if (g->state == G_LOST) {
		*rc = g->lost_why ? g->lost_why : TOKEND_ELOST;
		set_err(c, "%s: granted (fence %llu), then lost before it could be confirmed: %s", op,
			(unsigned long long)fence, *rc == TOKEND_ESESSION ? "the session ended" : "the reclaim was refused");
		grant_give_up(c, g, old, *rc);
		return 1;
	}
	if (grant_valid(c, g, now, &left) == TOKEND_OK && left >= fresh_ns(c)) {
		grant_handover(c, g);
		grant_view(c, g, now, out);
		*rc = TOKEND_OK;
		return 1;
	}
	*rc = TOKEND_OK;
	if (c->stopping || c->closing)
		*rc = TOKEND_ECLOSED;
	else if (now >= deadline)
		*rc = TOKEND_ETIMEDOUT;
	if (*rc != TOKEND_OK) {
		char to[80] = "?";
		if (g->grp)
			tkn_addr_format(&g->grp->dest, to, sizeof to);
		if (*rc == TOKEND_ETIMEDOUT)
			set_err(c, "%s: granted (fence %llu), but %s did not vouch for the grant again before the "
				   "wait limit; it was given back", op, (unsigned long long)fence, to);
		grant_give_up(c, g, old, TOKEND_ELOST);
		return 1;
	}
	if (now >= *next_vouch) {
		grant_vouch(c, g, now);
		*next_vouch = now + VOUCH_EVERY_NS;
	}
	*until = *next_vouch < deadline ? *next_vouch : deadline;
	return 0;
}

static int confirm_grant(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence, int64_t deadline,
			 const tokend_grant *old, tokend_grant *out, const char *op)
{
	int64_t next_vouch = 0, until;
	int rc;
	c->confirming++;
	while (!confirm_step(c, name, len, fence, deadline, old, out, op, &next_vouch, &rc, &until))
		wait_for(c, &c->cond, until);
	c->confirming--;
	return rc;
}

/* ------------------------------------------------------------ session */

static int open_session(struct tokend_client *c, int64_t deadline)
{
	int64_t now = tkn_now();
	int64_t limit = now + c->connect_ns < deadline ? now + c->connect_ns : deadline;
	struct req *r = req_new(c, TKW_SESSION_OPEN, OWN_SYNC);
	if (!r)
		return TOKEND_ENOMEM;
	int rc = TOKEND_OK;
	uint8_t id[8];
	do {
		if (tka_random(id, sizeof id) != 0 || (c->keyed && tka_random(c->open_nonce, TKA_NONCE_LEN) != 0)) {
			set_err(c, "opening a session: no random bytes from libcrypto (RAND_bytes)");
			rc = TOKEND_ESYS;
			break;
		}
		r->id = 0;
		for (int i = 0; i < 8; i++)
			r->id = r->id << 8 | id[i];
	} while (r->id == 0); /* a random non-zero request id (SPEC 20, step 1) */
	if (c->session_dest.len) {
		r->dest = c->session_dest;
		r->has_dest = 1;
	} else {
		r->has_dest = pick_worker(c, &r->dest);
	}
	if (rc == TOKEND_OK)
		rc = open_build(c, r, NULL);
	if (rc != TOKEND_OK) {
		req_unlink(c, r);
		req_free(r);
		return rc;
	}
	int handed;
	for (int i = 0; i < c->ntried;) /* a fresh list of where SESSION_OPEN went */
		if (c->tried[i].type == TKW_SESSION_OPEN)
			c->tried[i] = c->tried[--c->ntried];
		else
			i++;
	rc = wait_req(c, r, limit, 0, &handed);
	if (rc == TOKEND_ETIMEDOUT && r->bad_ok) {
		char to[80] = "?";
		tkn_addr_format(&r->dest, to, sizeof to);
		set_err(c,
			"%s opened a session, but its reply does not verify under key \"%s\": the workers hold "
			"another key of that name (another cluster's key file?)",
			to, c->key_name);
		rc = TOKEND_EAUTH;
	} else if (rc == TOKEND_ETIMEDOUT && r->got_cookie) {
		char to[80] = "?";
		tkn_addr_format(&r->dest, to, sizeof to);
		set_err(c,
			"%s sent a cookie but did not accept the session with key \"%s\" within %lld ms: is the key "
			"registered with this cluster (tokenctl keys add) and not revoked?",
			to, c->key_name, (long long)((tkn_now() - now) / NS_PER_MS));
		rc = TOKEND_EAUTH;
	} else if (rc == TOKEND_ETIMEDOUT) {
		char tried[200];
		tried_format(c, TKW_SESSION_OPEN, tried, sizeof tried);
		set_err(c, "no worker answered SESSION_OPEN within %lld ms; tried %s",
			(long long)((tkn_now() - now) / NS_PER_MS), tried);
	} else if (rc != TOKEND_OK) {
		char to[80] = "?";
		tkn_addr_format(&r->dest, to, sizeof to);
		set_err(c, "opening a session at %s: %s%s%s", to,
			r->final_status > 0 ? tkw_status_name(r->final_status) : tokend_strerror(rc),
			r->errtext[0] ? ": " : "", r->errtext);
	}
	if (rc == TOKEND_OK && c->keyed &&
	    (tka_mac_init(&c->sess_c2w, r->s_key, TKA_CLIENT_TO_WORKER) != 0 ||
	     tka_mac_init(&c->sess_w2c, r->s_key, TKA_WORKER_TO_CLIENT) != 0)) {
		set_err(c, "opening a session: deriving its keys failed (libcrypto)");
		rc = TOKEND_ESYS; /* the worker's session expires by itself */
	}
	tka_wipe(r->s_key, sizeof r->s_key);
	if (rc == TOKEND_OK) {
		c->session = r->s_session;
		c->S = r->s_ttl;
		c->W = r->s_wttl;
		c->G = r->s_grace;
		c->shard_count = r->s_shards;
		session_reset(c);
		c->session_deadline = r->first_send + (int64_t)c->S * NS_PER_MS - margin_ns(c->S);
		c->session_dest = r->dest;
		c->ka_next = tkn_now() + (int64_t)(c->S < c->W ? c->S : c->W) * NS_PER_MS / 3;
		c->sstate = S_OPEN;
		wake_bg(c); /* the keepalive timer starts */
	}
	if (!handed)
		req_free(r);
	return rc;
}

/* Make sure a session is open, opening one (again) if needed. */
int ensure_session(struct tokend_client *c, int64_t deadline)
{
	for (;;) {
		if (c->closing)
			return TOKEND_ECLOSED;
		if (c->sstate == S_OPEN)
			return TOKEND_OK;
		if (c->sstate == S_OPENING) {
			if (tkn_now() >= deadline)
				return TOKEND_ETIMEDOUT;
			wait_for(c, &c->cond, deadline);
			continue;
		}
		c->sstate = S_OPENING;
		int rc = open_session(c, deadline);
		if (c->sstate == S_OPENING)
			c->sstate = S_LOST;
		pthread_cond_broadcast(&c->cond);
		return rc;
	}
}

/* ------------------------------------------------------------ connect, close */

void tokend_options_init(tokend_options *o)
{
	if (o)
		memset(o, 0, sizeof *o);
}

static void destroy(struct tokend_client *c)
{
	if (c->thread_started) {
		pthread_mutex_lock(&c->mu);
		c->stopping = 1;
		wake_bg(c);
		pthread_mutex_unlock(&c->mu);
		pthread_join(c->thread, NULL);
	}
	while (c->reqs) {
		struct req *r = c->reqs;
		req_unlink(c, r);
		req_free(r);
	}
	while (c->grants) {
		struct grant_rec *g = c->grants;
		c->grants = g->next;
		free(g);
	}
	while (c->groups) {
		struct group *g = c->groups;
		c->groups = g->next;
		free(g);
	}
	while (c->stash) {
		struct stash *s = c->stash;
		c->stash = s->next;
		free(s);
	}
	while (c->ev_head) {
		struct event *e = c->ev_head;
		c->ev_head = e->next;
		free(e);
	}
	map_free(&c->map);
	map_free(&c->mf.m);
	free(c->seeds);
	if (c->fd >= 0)
		close(c->fd);
	if (c->mfd >= 0)
		close(c->mfd);
	if (c->wake[0] >= 0)
		close(c->wake[0]);
	if (c->wake[1] >= 0)
		close(c->wake[1]);
	if (c->app_ep >= 0)
		close(c->app_ep);
	if (c->bg_ep >= 0)
		close(c->bg_ep);
	if (c->rwake[0] >= 0)
		close(c->rwake[0]);
	if (c->rwake[1] >= 0)
		close(c->rwake[1]);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	tka_wipe(c, sizeof *c); /* keys */
	free(c);
}

/* Where the client key comes from when nothing else names one. */
#define DEFAULT_KEY_FILE "tokend-data/pki/client.key"

/*
 * The client key of opts (see tokend_options): 1 with name and key filled,
 * 0 for an unauthenticated client (insecure), or a negative status with
 * msg saying why.
 */
static int client_key(const tokend_options *opts, char name[TKA_MAX_NAME + 1], uint8_t key[TKA_KEY_LEN],
		      char *msg, size_t cap)
{
	char why[400];
	if (opts->insecure) {
		if (opts->key || opts->key_file) {
			snprintf(msg, cap, "options.insecure and a client key (key or key_file) exclude each other");
			return TOKEND_EINVAL;
		}
		return 0;
	}
	if (opts->key) {
		if (tka_parse_key_file(opts->key, strlen(opts->key), name, key, why, sizeof why) != 0) {
			snprintf(msg, cap, "options.key: %.200s", why);
			return TOKEND_EAUTH;
		}
		return 1;
	}
	const char *path = opts->key_file, *from = "options.key_file";
	if (!path || !*path) {
		path = getenv("TOKEND_KEY_FILE");
		from = "$TOKEND_KEY_FILE";
	}
	if (!path || !*path) {
		if (access(DEFAULT_KEY_FILE, F_OK) != 0) {
			snprintf(msg, cap,
				 "no client key: set options.key_file (or key), or $TOKEND_KEY_FILE, or run where "
				 "%s exists; options.insecure only for a cluster started with --insecure",
				 DEFAULT_KEY_FILE);
			return TOKEND_EAUTH;
		}
		path = DEFAULT_KEY_FILE;
		from = "the default key file";
	}
	if (tka_load_key_file(path, name, key, why, sizeof why) != 0) {
		snprintf(msg, cap, "%s: %.220s", from, why);
		return TOKEND_EAUTH;
	}
	return 1;
}

/* tokend_connect, with what went wrong in msg[0..cap). */
static int do_connect(const tokend_options *opts, unsigned flags, tokend_client **out, char *msg, size_t cap)
{
	if (!opts || !out)
		return TOKEND_EINVAL;
	*out = NULL;
	if (flags & ~(unsigned)TOKEND_NO_THREAD) {
		snprintf(msg, cap, "unknown flags 0x%x", flags & ~(unsigned)TOKEND_NO_THREAD);
		return TOKEND_EINVAL;
	}
	if ((flags & TOKEND_NO_THREAD) && opts->multicast) {
		snprintf(msg, cap, "multicast discovery needs the background thread (not with TOKEND_NO_THREAD)");
		return TOKEND_ENOTSUP;
	}
	struct tkm_config mcfg;
	uint8_t ann_pub[TKM_PUB_LEN];
	int ann_keyed = 0;
	if (opts->multicast) {
		if (tkm_parse_config(opts->multicast, &mcfg, msg, cap) != 0)
			return TOKEND_EINVAL;
		if (opts->announce_key) {
			if (tkm_parse_public_key(opts->announce_key, ann_pub) != 0) {
				snprintf(msg, cap, "announce_key: an announce key is 32 bytes in unpadded base64url "
						   "(43 characters, as tokenctl announce-key prints it)");
				return TOKEND_EAUTH;
			}
			ann_keyed = 1;
		} else if (!opts->insecure) {
			snprintf(msg, cap, "announcements need the cluster's announce key: tokenctl announce-key");
			return TOKEND_EAUTH;
		}
	} else if (opts->announce_key) {
		snprintf(msg, cap, "announce_key without multicast");
		return TOKEND_EINVAL;
	}
	if (opts->multicast && (!opts->seeds || opts->nseeds == 0)) {
		/* seedless: the workers come from announcements */
	} else if (!opts->seeds || opts->nseeds == 0 || opts->nseeds > 1024) {
		snprintf(msg, cap, "%zu seeds: give 1 to 1024 \"host:port\" addresses", opts->seeds ? opts->nseeds : 0);
		return TOKEND_EINVAL;
	}
	char host[256];
	unsigned port;
	for (size_t i = 0; opts->seeds && i < opts->nseeds; i++)
		if (!opts->seeds[i] || tkn_split_hostport(opts->seeds[i], host, sizeof host, &port) != 0) {
			snprintf(msg, cap, "seed %zu (%.100s): not \"host:port\" or \"[v6]:port\"", i,
				 opts->seeds[i] ? opts->seeds[i] : "NULL");
			return TOKEND_EINVAL;
		}
	char key_name[TKA_MAX_NAME + 1];
	uint8_t key[TKA_KEY_LEN];
	int keyed = client_key(opts, key_name, key, msg, cap);
	if (keyed < 0)
		return keyed;

	struct tokend_client *c = calloc(1, sizeof *c);
	if (!c) {
		tka_wipe(key, sizeof key);
		return TOKEND_ENOMEM;
	}
	if (keyed) {
		uint8_t open_key[TKA_KEY_LEN];
		c->keyed = 1;
		memcpy(c->key_name, key_name, sizeof key_name);
		memcpy(c->client_key, key, sizeof key);
		int bad = tka_open_key(key, open_key) != 0 || tka_mac_init(&c->open_c2w, open_key, TKA_CLIENT_TO_WORKER) != 0 ||
			  tka_mac_init(&c->open_w2c, open_key, TKA_WORKER_TO_CLIENT) != 0;
		tka_wipe(open_key, sizeof open_key);
		tka_wipe(key, sizeof key);
		if (bad) {
			snprintf(msg, cap, "deriving the open key failed (libcrypto)");
			tka_wipe(c, sizeof *c);
			free(c);
			return TOKEND_ESYS;
		}
	}
	c->fd = c->wake[0] = c->wake[1] = c->mfd = -1;
	c->app_ep = c->bg_ep = c->rwake[0] = c->rwake[1] = -1;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return TOKEND_ESYS;
	}
	if (cond_init(&c->cond) != 0) {
		pthread_mutex_destroy(&c->mu);
		free(c);
		return TOKEND_ESYS;
	}
	int rc = TOKEND_OK;
	c->on_revoke = opts->on_revoke;
	c->on_lost = opts->on_lost;
	c->on_jeopardy = opts->on_jeopardy;
	c->jeopardy_ns = (int64_t)opts->jeopardy_ms * NS_PER_MS;
	c->cb_arg = opts->cb_arg;
	c->req_ttl_ms = opts->session_ttl_ms;
	c->rto0 = (int64_t)(opts->rto_ms ? opts->rto_ms : DEFAULT_RTO_MS) * NS_PER_MS;
	c->connect_ns = (int64_t)(opts->connect_timeout_ms ? opts->connect_timeout_ms : DEFAULT_CONNECT_MS) *
			NS_PER_MS;
	c->rng = tkn_random_seed();
	c->sstate = S_NONE;
	c->evloop = (flags & TOKEND_NO_THREAD) != 0;

	c->fd = tkn_udp_socket(&c->family);
	if (c->fd < 0 || (!c->evloop && tkn_pipe(c->wake) != 0)) {
		snprintf(msg, cap, "%s: %s", c->fd < 0 ? "socket" : "pipe", strerror(errno));
		rc = TOKEND_ESYS;
		goto fail;
	}
	size_t ngiven = opts->seeds ? opts->nseeds : 0;
	if (opts->multicast) {
		char why[200];
		c->mcfg = mcfg;
		c->ann_keyed = ann_keyed;
		memcpy(c->ann_pub, ann_pub, sizeof ann_pub);
		c->mfd = tkm_listen(&mcfg, why, sizeof why);
		if (c->mfd < 0) {
			snprintf(msg, cap, "multicast discovery: %.200s", why);
			rc = TOKEND_ESYS;
			goto fail;
		}
	}
	if (!c->evloop)
		(void)reader_init(c); /* without it, replies pass through the background thread */
	c->seeds_cap = ngiven ? ngiven : MAX_DISCOVERED;
	c->seeds = calloc(c->seeds_cap, sizeof *c->seeds);
	if (!c->seeds) {
		rc = TOKEND_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < ngiven; i++)
		if (tkn_resolve(opts->seeds[i], c->family, 0, &c->seeds[c->nseeds]) == 0)
			c->nseeds++;
	if (ngiven > 0 && c->nseeds == 0) {
		snprintf(msg, cap, "no seed could be resolved (first: %.100s)", opts->seeds[0]);
		rc = TOKEND_EADDR;
		goto fail;
	}
	int64_t deadline = tkn_now() + c->connect_ns;
	if (ngiven == 0) {
		/* Without seeds: the first verified announcement names them. */
		for (int64_t now = tkn_now(); c->nseeds == 0 && now < deadline; now = tkn_now()) {
			struct pollfd p = {c->mfd, POLLIN, 0};
			int64_t d = deadline - now;
			if (poll(&p, 1, (int)((d + NS_PER_MS - 1) / NS_PER_MS)) > 0)
				(void)ann_receive(c, now);
		}
		if (c->nseeds == 0) {
			snprintf(msg, cap,
				 "no seeds, and no verified announcement of cluster %.40s on %.30s (%.20s) within "
				 "%lld ms (%llu dropped)",
				 c->mcfg.cluster, c->mcfg.group, c->mcfg.iface[0] ? c->mcfg.iface : "loopback",
				 (long long)(c->connect_ns / NS_PER_MS), (unsigned long long)c->ann_drops);
			rc = TOKEND_EUNREACHABLE;
			goto fail;
		}
	}

	pthread_mutex_lock(&c->mu);
	/* c->thread is written before the thread can take the lock */
	if (!c->evloop && pthread_create(&c->thread, NULL, bg_main, c) != 0) {
		pthread_mutex_unlock(&c->mu);
		rc = TOKEND_ESYS;
		goto fail;
	}
	c->thread_started = !c->evloop;
	c->active++;
	int64_t now = tkn_now();
	map_refresh(c, now);
	while (!c->map.have && tkn_now() < deadline)
		wait_for(c, &c->cond, deadline);
	if (!c->map.have) {
		char tried[200];
		tried_format(c, TKW_MAP_REQUEST, tried, sizeof tried);
		snprintf(msg, cap, "no worker answered MAP_REQUEST within %lld ms; tried %.190s",
			 (long long)(c->connect_ns / NS_PER_MS), tried);
		rc = TOKEND_EUNREACHABLE;
	} else {
		rc = ensure_session(c, deadline);
		if (rc != TOKEND_OK)
			snprintf(msg, cap, "got the shard map (version %llu, %zu workers), but %.180s",
				 (unsigned long long)c->map.version, c->map.nworkers, c->errmsg);
	}
	c->active--;
	pthread_mutex_unlock(&c->mu);
	if (rc == TOKEND_ETIMEDOUT)
		rc = TOKEND_EUNREACHABLE;
	if (rc != TOKEND_OK)
		goto fail;
	*out = c;
	return TOKEND_OK;
fail:
	destroy(c);
	return rc;
}

int tokend_connect(const tokend_options *opts, tokend_client **out) { return tokend_connect_ex(opts, 0, out); }

int tokend_connect_ex(const tokend_options *opts, unsigned flags, tokend_client **out)
{
	char msg[256] = "";
	int rc = do_connect(opts, flags, out, msg, sizeof msg);
	if (opts && opts->errbuf && opts->errbuf_len > 0) {
		if (rc != TOKEND_OK && !msg[0])
			snprintf(msg, sizeof msg, "%s", tokend_strerror(rc));
		snprintf(opts->errbuf, opts->errbuf_len, "%s", rc == TOKEND_OK ? "" : msg);
	}
	return rc;
}

const char *tokend_last_error(tokend_client *c, char *buf, size_t len)
{
	if (!buf || len == 0)
		return buf;
	buf[0] = 0;
	if (!c)
		return buf;
	pthread_mutex_lock(&c->mu);
	snprintf(buf, len, "%s", c->errmsg);
	pthread_mutex_unlock(&c->mu);
	return buf;
}

int tokend_close(tokend_client *c)
{
	if (!c)
		return TOKEND_OK;
	if (on_bg_thread(c))
		return TOKEND_ECALLBACK;
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->owner == OWN_SYNC && r->has_cond)
			pthread_cond_signal(&r->cond);
	reader_wake(c);
	pthread_cond_broadcast(&c->cond);
	while (c->active > 0)
		timed_wait(&c->cond, &c->mu, tkn_now() + 100 * NS_PER_MS);
	if (c->evloop)
		aops_close(c);
	if (c->sstate == S_OPEN) {
		/* End the session: every worker drops its grants (SPEC 11). */
		struct req *r = req_new(c, TKW_SESSION_CLOSE, OWN_SYNC);
		if (r) {
			r->dest = c->session_dest;
			r->has_dest = 1;
			struct tkw_msg *m = &c->tx;
			memset(m, 0, sizeof *m);
			m->h.type = TKW_SESSION_CLOSE;
			if (req_build(c, r, m) == TOKEND_OK) {
				(void)run_req(c, r, tkn_now() + CLOSE_WAIT_MS * NS_PER_MS, 1, NULL, NULL);
			} else {
				req_unlink(c, r);
				req_free(r);
			}
		}
		c->sstate = S_CLOSED;
	}
	pthread_mutex_unlock(&c->mu);
	destroy(c);
	return TOKEND_OK;
}

int tokend_detect_deadlocks(tokend_client *c, int on)
{
	if (!c)
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	c->detect = on != 0;
	pthread_mutex_unlock(&c->mu);
	return TOKEND_OK;
}

int tokend_get_stats(tokend_client *c, tokend_stats *out)
{
	if (!c || !out)
		return TOKEND_EINVAL;
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&c->mu);
	out->dropped = c->drops;
	out->auth_failures = c->auth_failures;
	out->announce_accepted = c->ann_ok;
	out->announce_dropped = c->ann_drops;
	pthread_mutex_unlock(&c->mu);
	return TOKEND_OK;
}

uint64_t tokend_session_id(tokend_client *c)
{
	if (!c)
		return 0;
	pthread_mutex_lock(&c->mu);
	uint64_t s = c->sstate == S_OPEN ? c->session : 0;
	pthread_mutex_unlock(&c->mu);
	return s;
}

/* ------------------------------------------------------------ acquire */

int tokend_acquire(tokend_client *c, const void *name, size_t name_len, tokend_mode mode, int64_t wait_ms,
		   tokend_grant *out)
{
	return tokend_acquire_range(c, name, name_len, mode, 0, 0, wait_ms, out);
}

/* The global order of tokend_acquire_batch: shard, name bytes (shorter
 * first on a common prefix, as Go compares strings), start, end. */
struct batch_key {
	uint32_t shard;
	size_t i;
	const tokend_batch_req *r;
	uint64_t start, end;
};

static int batch_cmp(const void *a, const void *b)
{
	const struct batch_key *x = a, *y = b;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	size_t n = x->r->name_len < y->r->name_len ? x->r->name_len : y->r->name_len;
	int c = memcmp(x->r->name, y->r->name, n);
	if (c)
		return c;
	if (x->r->name_len != y->r->name_len)
		return x->r->name_len < y->r->name_len ? -1 : 1;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

#define BATCH_MAX 64

/*
 * One ACQUIRE_BATCH (SPEC 21) of keys[0..n), 2..TKW_MAX_BATCH tokens of one
 * shard: on TOKEND_OK out[keys[k].i] is the grant of each, confirmed as
 * tokend_acquire confirms one; otherwise nothing of it is held (grants it
 * got are given back in the background). TOKEND_ENOTSUP: not sent, since
 * the token cache holds (or is giving back) one of the names: a hit is
 * served, and a cached grant in the way given back first, only one by one.
 * A batch never queues, so it waits for its answer at most as a try does
 * (and no longer than wait_ms would let a queued ACQUIRE wait); if none
 * comes, the engine keeps asking and gives back what a late answer grants.
 */
static int batch_send(tokend_client *c, const struct batch_key *keys, size_t n, int64_t wait_ms, tokend_grant *out)
{
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	int64_t now = tkn_now(), deadline = now + c->connect_ns;
	if (wait_ms > 0 && wait_deadline(c, wait_ms, now) < deadline)
		deadline = wait_deadline(c, wait_ms, now);
	rc = ensure_session(c, deadline);
	for (size_t k = 0; k < n && rc == TOKEND_OK; k++)
		if (cache_has(c, keys[k].r->name, keys[k].r->name_len))
			rc = TOKEND_ENOTSUP;
	struct batch_ents *b = NULL;
	struct req *r = NULL;
	if (rc == TOKEND_OK) {
		b = calloc(1, sizeof *b);
		r = b ? req_new(c, TKW_ACQUIRE_BATCH, OWN_SYNC) : NULL;
		if (!r) {
			free(b);
			rc = TOKEND_ENOMEM;
		}
	}
	tokend_grant res[TKW_MAX_BATCH];
	if (rc == TOKEND_OK) {
		r->routed = 1;
		r->shard = keys[0].shard;
		r->batch = b;
		r->bout = res;
		memcpy(r->name, keys[0].r->name, keys[0].r->name_len); /* for messages */
		r->name_len = (uint8_t)keys[0].r->name_len;
		struct tkw_msg *m = &c->tx;
		memset(m, 0, sizeof *m);
		m->h.type = TKW_ACQUIRE_BATCH;
		m->count = (uint8_t)n;
		b->n = (int)n;
		for (size_t k = 0; k < n; k++) {
			const struct batch_key *key = &keys[k];
			b->e[k].mode = (uint8_t)key->r->mode;
			b->e[k].name_len = (uint8_t)key->r->name_len;
			memcpy(b->e[k].name, key->r->name, key->r->name_len);
			b->e[k].start = key->start;
			b->e[k].end = key->end;
			m->batch[k].mode = (uint8_t)key->r->mode;
			m->batch[k].start = key->start;
			m->batch[k].end = key->end;
			m->batch[k].name.p = key->r->name;
			m->batch[k].name.len = key->r->name_len;
		}
		rc = req_build(c, r, m);
		if (rc != TOKEND_OK) {
			req_unlink(c, r);
			req_free(r);
		}
	}
	if (rc == TOKEND_OK) {
		char op[160];
		op_name(op, sizeof op, "acquire batch, first", keys[0].r->name, keys[0].r->name_len,
			(int)keys[0].r->mode);
		rc = run_req(c, r, deadline, 0, NULL, op);
		int granted = rc == TOKEND_OK;
		for (size_t k = 0; k < n && rc == TOKEND_OK; k++)
			rc = confirm_grant(c, res[k].name, res[k].name_len, res[k].fence, deadline, NULL, &res[k], op);
		for (size_t k = 0; k < n; k++) {
			struct grant_rec *g;
			if (rc == TOKEND_OK)
				out[keys[k].i] = res[k];
			else if (granted && (g = grant_find(c, res[k].name, res[k].name_len, res[k].fence)))
				grant_give_up(c, g, NULL, 0);
		}
	}
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/*
 * The grants of keys[0..n) in out, taken shard by shard or token by token:
 * those taken first aged while a later one waited (another shard's, or
 * the same shard's after a conflict), so each is confirmed as
 * tokend_acquire confirms one (valid for at least fresh_ns() when the call
 * returns), or the batch fails; a grant not confirmed is given back.
 */
static int batch_confirm(tokend_client *c, const struct batch_key *keys, size_t n, int64_t wait_ms,
			 tokend_grant *out)
{
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	int64_t deadline = wait_deadline(c, wait_ms, tkn_now());
	for (size_t k = 0; k < n && rc == TOKEND_OK; k++) {
		tokend_grant *g = &out[keys[k].i];
		char op[160];
		op_name(op, sizeof op, "acquire batch", g->name, g->name_len, (int)g->mode);
		rc = confirm_grant(c, g->name, g->name_len, g->fence, deadline, NULL, g, op);
	}
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int tokend_acquire_batch(tokend_client *c, const tokend_batch_req *reqs, size_t n, int64_t wait_ms,
			 tokend_grant *out)
{
	if (!c || !reqs || !out || n == 0 || n > BATCH_MAX || wait_ms < TOKEND_WAIT_FOREVER)
		return TOKEND_EINVAL;
	if (on_bg_thread(c))
		return TOKEND_ECALLBACK;
	struct batch_key keys[BATCH_MAX];
	pthread_mutex_lock(&c->mu);
	uint32_t shards = c->shard_count;
	pthread_mutex_unlock(&c->mu);
	for (size_t i = 0; i < n; i++) {
		const tokend_batch_req *r = &reqs[i];
		if (!valid_name(r->name, r->name_len) || !valid_mode((int)r->mode))
			return TOKEND_EINVAL;
		keys[i] = (struct batch_key){tkw_shard(r->name, r->name_len, shards), i, r, r->start, r->end};
		if (check_range(keys[i].start, &keys[i].end) != TOKEND_OK)
			return TOKEND_EINVAL;
	}
	qsort(keys, n, sizeof keys[0], batch_cmp);
	/* Per shard in the order, up to TKW_MAX_BATCH tokens in one
	 * ACQUIRE_BATCH; if that fails (a conflict, or anything else), that
	 * shard's tokens one by one, each waiting as wait_ms says. A shard with
	 * one token of the batch gets an ordinary ACQUIRE: one datagram either
	 * way, and it may queue at once. */
	for (size_t lo = 0; lo < n;) {
		size_t hi = lo + 1;
		while (hi < n && hi - lo < TKW_MAX_BATCH && keys[hi].shard == keys[lo].shard)
			hi++;
		int rc = hi - lo > 1 ? batch_send(c, keys + lo, hi - lo, wait_ms, out) : TOKEND_ENOTSUP;
		size_t got = rc == TOKEND_OK ? hi : lo; /* out[keys[0..got).i] are held */
		/* (a try's conflict stays one: the same rule, FIFO included,
		 * decides a TRY ACQUIRE, SPEC 21) */
		if (rc != TOKEND_OK && rc != TOKEND_ECLOSED && !(rc == TOKEND_ECONFLICT && wait_ms == TOKEND_TRY))
			for (rc = TOKEND_OK; got < hi && rc == TOKEND_OK; got += rc == TOKEND_OK) {
				const struct batch_key *b = &keys[got];
				rc = tokend_acquire_range(c, b->r->name, b->r->name_len, b->r->mode, b->start, b->end,
							  wait_ms, &out[b->i]);
			}
		if (rc != TOKEND_OK) {
			for (size_t k = 0; k < got; k++)
				(void)tokend_release(c, &out[keys[k].i], NULL, 0);
			return rc;
		}
		lo = hi;
	}
	int rc = batch_confirm(c, keys, n, wait_ms, out);
	if (rc != TOKEND_OK)
		for (size_t k = 0; k < n; k++)
			(void)tokend_release(c, &out[keys[k].i], NULL, 0);
	return rc;
}

int tokend_acquire_range(tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
			 uint64_t end, int64_t wait_ms, tokend_grant *out)
{
	return tokend_acquire_ex(c, name, name_len, mode, start, end, wait_ms, 0, out);
}

int tokend_acquire_ex(tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
		      uint64_t end, int64_t wait_ms, unsigned flags, tokend_grant *out)
{
	if (!c || !out || check_acquire(name, name_len, mode, start, &end, wait_ms, flags) != TOKEND_OK)
		return TOKEND_EINVAL;
	if (on_bg_thread(c))
		return TOKEND_ECALLBACK;
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	int64_t deadline = wait_deadline(c, wait_ms, tkn_now());
	rc = ensure_session(c, deadline);
	struct req *r;
	if (rc == TOKEND_OK && cache_acquire(c, name, name_len, (int)mode, start, end, out))
		goto out; /* from the token cache */
	if (rc == TOKEND_OK)
		rc = acquire_req(c, name, name_len, mode, start, end, wait_ms, flags, &r);
	if (rc == TOKEND_OK) {
		char op[160];
		op_name(op, sizeof op, "acquire", name, name_len, (int)mode);
		rc = run_req(c, r, deadline, 0, out, op);
		if (rc == TOKEND_OK)
			rc = confirm_grant(c, out->name, out->name_len, out->fence, deadline, NULL, out, op);
	}
out:
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* A new sync ACQUIRE request (not sent yet), arguments checked, range
 * normalized, session open. */
int acquire_req(struct tokend_client *c, const void *name, size_t name_len, tokend_mode mode, uint64_t start,
		uint64_t end, int64_t wait_ms, unsigned flags, struct req **out)
{
	struct req *r = req_new(c, TKW_ACQUIRE, OWN_SYNC);
	if (!r)
		return TOKEND_ENOMEM;
	r->routed = 1;
	r->shard = tkw_shard(name, name_len, c->shard_count);
	memcpy(r->name, name, name_len);
	r->name_len = (uint8_t)name_len;
	r->mode = (uint8_t)mode;
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_ACQUIRE;
	m->try_ = wait_ms == 0;
	m->detect = c->detect && !m->try_;
	m->grow = (flags & TOKEND_ACQUIRE_GROW) != 0;
	m->mode = (uint8_t)mode;
	m->wait_ms = wait_ms == 0 ? 0 : wire_wait(wait_ms);
	m->start = start;
	m->end = end;
	m->name.p = name;
	m->name.len = name_len;
	int rc = req_build(c, r, m);
	if (rc != TOKEND_OK) {
		req_unlink(c, r);
		req_free(r);
		return rc;
	}
	*out = r;
	return TOKEND_OK;
}

/* ------------------------------------------------------------ release, convert */

int valid_grant_arg(const tokend_grant *g)
{
	return g && valid_name(g->name, g->name_len) && tkw_fence_valid(g->fence);
}

int tokend_release(tokend_client *c, const tokend_grant *gr, const void *value, size_t value_len)
{
	if (!c || !valid_grant_arg(gr) || (value && value_len > TOKEND_MAX_VALUE))
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	struct req *r;
	rc = release_req(c, gr, value, value_len, &r);
	if (rc == TOKEND_OK && r) {
		char op[160];
		op_name(op, sizeof op, "release", gr->name, gr->name_len, -1);
		rc = run_req(c, r, NEVER, 0, NULL, op);
		if (rc == TOKEND_ECLOSED) {
			/* the session close releases it */
		}
	}
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int tokend_release_range(tokend_client *c, tokend_grant *gr, uint64_t start, uint64_t end)
{
	if (!c || !valid_grant_arg(gr) || check_range(start, &end) != TOKEND_OK)
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	char op[160];
	op_name(op, sizeof op, "release range of", gr->name, gr->name_len, -1);
	struct grant_rec *g = grant_find(c, gr->name, gr->name_len, gr->fence);
	struct req *r = NULL;
	if (!g || g->state == G_RELEASING || g->cached)
		rc = TOKEND_ENOTHELD;
	else if (g->state == G_LOST)
		rc = g->lost_why ? g->lost_why : TOKEND_ELOST;
	else if (g->state == G_RECLAIMING)
		rc = TOKEND_EJEOPARDY;
	else if (g->session != c->session || c->sstate != S_OPEN)
		rc = TOKEND_ESESSION;
	if (rc != TOKEND_OK)
		goto out;
	uint64_t gs = g->g.start, ge = g->g.end;
	if (start == gs && end == ge) {
		/* all of it: a full release */
		rc = release_req(c, gr, NULL, 0, &r);
		if (rc == TOKEND_OK && r) {
			op_name(op, sizeof op, "release", gr->name, gr->name_len, -1);
			rc = run_req(c, r, NEVER, 0, NULL, op);
		}
		goto out;
	}
	int prefix = start == gs && end < ge, suffix = end == ge && start > gs;
	if (!prefix && !suffix) {
		set_err(c, "%s: [%llu, %llu) is not a prefix or suffix of the grant [%llu, %llu)", op,
			(unsigned long long)start, (unsigned long long)end, (unsigned long long)gs,
			(unsigned long long)ge);
		rc = TOKEND_EINVAL;
		goto out;
	}
	int async = on_bg_thread(c);
	r = partial_release(c, g, start, end, async ? OWN_ASYNC : OWN_SYNC);
	if (!r) {
		rc = TOKEND_ENOMEM;
		goto out;
	}
	gr->start = g->g.start;
	gr->end = g->g.end;
	if (async)
		goto out;
	rc = run_req(c, r, tkn_now() + c->connect_ns, 0, NULL, op);
out:
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/*
 * Start releasing gr: the grant is given up locally. From a callback the
 * RELEASE is the engine's (sent now, *out = NULL); otherwise *out is the
 * sync request to wait for (not sent yet).
 */
int release_req(struct tokend_client *c, const tokend_grant *gr, const void *value, size_t value_len,
		struct req **out)
{
	*out = NULL;
	struct grant_rec *g = grant_find(c, gr->name, gr->name_len, gr->fence);
	if (!g || g->state == G_RELEASING || g->cached)
		return TOKEND_ENOTHELD;
	if (g->state == G_LOST) {
		grant_remove(c, g); /* the engine gave it back when it was lost */
		return TOKEND_ELOST;
	}
	if (value && !writer_mode(g->g.mode))
		return TOKEND_EINVAL; /* only PW and EX holders set the value block */
	if (!value && cache_release(c, g))
		return TOKEND_OK; /* kept in the token cache: nothing to send */
	int async = on_bg_thread(c);
	struct req *r = req_for_grant(c, TKW_RELEASE, async ? OWN_ASYNC : OWN_SYNC, g);
	if (!r)
		return TOKEND_ENOMEM;
	struct tkw_msg *m = &c->tx;
	m->has_value = value != NULL;
	m->value.p = value;
	m->value.len = value ? value_len : 0;
	int rc = req_build(c, r, m);
	if (rc != TOKEND_OK) {
		req_complete(c, r, rc);
		if (!async)
			req_free(r);
		return rc;
	}
	/* given up from now on, whatever the answer */
	g->state = G_RELEASING;
	if (async)
		req_send(c, r, tkn_now());
	else
		*out = r;
	return TOKEND_OK;
}

int tokend_convert(tokend_client *c, tokend_grant *gr, tokend_mode mode, int64_t wait_ms, const void *value,
		   size_t value_len)
{
	if (!c || !valid_grant_arg(gr) || !valid_mode((int)mode) || wait_ms < TOKEND_WAIT_FOREVER ||
	    (value && value_len > TOKEND_MAX_VALUE))
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	int rc = enter(c);
	if (rc != TOKEND_OK) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	struct req *r;
	int down;
	rc = convert_req(c, gr, mode, wait_ms, value, value_len, &r, &down);
	if (rc != TOKEND_OK || !r)
		goto out;
	struct grant_rec *g;
	tokend_grant res, old = *gr;
	int64_t deadline = down ? tkn_now() + c->connect_ns : wait_deadline(c, wait_ms, tkn_now());
	char op[160];
	op_name(op, sizeof op, "convert", old.name, old.name_len, (int)mode);
	rc = run_req(c, r, deadline, 0, &res, op);
	if (rc == TOKEND_OK && (g = grant_find(c, res.name, res.name_len, res.fence)) && g->pending)
		rc = confirm_grant(c, res.name, res.name_len, res.fence, deadline, &old, &res, op);
	if (rc == TOKEND_OK)
		*gr = res;
out:
	leave(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/*
 * Start converting gr to mode (a downgrade lowers the grant, and gr->mode,
 * at once; *down says it was one). From a callback (downgrades only) the
 * CONVERT is the engine's (sent now, *out = NULL); otherwise *out is the
 * sync request to wait for (not sent yet).
 */
int convert_req(struct tokend_client *c, tokend_grant *gr, tokend_mode mode, int64_t wait_ms, const void *value,
		size_t value_len, struct req **out, int *down_out)
{
	*out = NULL;
	int rc = TOKEND_OK;
	struct grant_rec *g = grant_find(c, gr->name, gr->name_len, gr->fence);
	int async = on_bg_thread(c);
	int down = g && tkw_mode_covers((int)g->g.mode, (int)mode);
	*down_out = down;
	if (!g || g->state == G_RELEASING || g->cached)
		rc = TOKEND_ENOTHELD;
	else if (g->state == G_LOST)
		rc = TOKEND_ELOST;
	else if (g->state == G_RECLAIMING)
		rc = TOKEND_EJEOPARDY;
	else if (value && !writer_mode(g->g.mode))
		rc = TOKEND_EINVAL;
	else if (async && !down)
		rc = TOKEND_ECALLBACK; /* an upgrade may wait */
	else if (g->session != c->session || c->sstate != S_OPEN)
		rc = TOKEND_ESESSION;
	if (rc != TOKEND_OK)
		return rc;
	struct req *r = req_new(c, TKW_CONVERT, async ? OWN_ASYNC : OWN_SYNC);
	if (!r)
		return TOKEND_ENOMEM;
	r->routed = 1;
	r->shard = g->shard;
	memcpy(r->name, g->g.name, g->g.name_len);
	r->name_len = (uint8_t)g->g.name_len;
	r->fence = g->g.fence;
	r->mode = (uint8_t)mode;
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_CONVERT;
	m->fence = g->g.fence;
	m->mode = (uint8_t)mode;
	/* a downgrade never waits: send it as a try */
	m->try_ = down || wait_ms == 0;
	m->detect = c->detect && !m->try_;
	m->wait_ms = m->try_ ? 0 : wire_wait(wait_ms);
	m->name.p = g->g.name;
	m->name.len = g->g.name_len;
	m->has_value = value != NULL;
	m->value.p = value;
	m->value.len = value ? value_len : 0;
	rc = req_build(c, r, m);
	if (rc != TOKEND_OK) {
		req_complete(c, r, rc);
		if (!async)
			req_free(r);
		return rc;
	}
	if (down) {
		/* Holding less than we have is always safe: lower it now. */
		g->g.mode = mode;
		gr->mode = mode;
	}
	if (async)
		req_send(c, r, tkn_now());
	else
		*out = r;
	return TOKEND_OK;
}

int tokend_grant_check(tokend_client *c, const tokend_grant *gr, uint32_t *remaining_ms)
{
	if (remaining_ms)
		*remaining_ms = 0;
	if (!c || !valid_grant_arg(gr))
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	struct grant_rec *g = grant_find(c, gr->name, gr->name_len, gr->fence);
	int64_t left = 0;
	int rc = g && !g->cached ? grant_valid(c, g, tkn_now(), &left) : TOKEND_ENOTHELD;
	pthread_mutex_unlock(&c->mu);
	if (remaining_ms) {
		left /= NS_PER_MS;
		*remaining_ms = left > UINT32_MAX ? UINT32_MAX : (uint32_t)left;
	}
	return rc;
}

/* ------------------------------------------------------------ names */

const char *tokend_strerror(int status)
{
	switch (status) {
	case TOKEND_OK: return "success";
	case TOKEND_EINVAL: return "invalid argument";
	case TOKEND_ENOMEM: return "out of memory";
	case TOKEND_ENOTSUP: return "not supported";
	case TOKEND_ECONFLICT: return "token held in a conflicting mode";
	case TOKEND_ETIMEDOUT: return "timed out";
	case TOKEND_ENOTHELD: return "grant not held";
	case TOKEND_ELOST: return "grant lost";
	case TOKEND_ESESSION: return "session expired or unknown";
	case TOKEND_EUNREACHABLE: return "no tokend worker answered";
	case TOKEND_EREFUSED: return "request refused by the worker";
	case TOKEND_ECANCELED: return "request canceled";
	case TOKEND_ESERVER: return "internal error in the worker";
	case TOKEND_EADDR: return "bad or unresolvable address";
	case TOKEND_ESYS: return "system call failed";
	case TOKEND_ECLOSED: return "client closed";
	case TOKEND_ECALLBACK: return "call not allowed from a callback";
	case TOKEND_ELIMIT: return "too many requests in flight";
	case TOKEND_EJEOPARDY: return "grant lease not confirmed";
	case TOKEND_EDEADLK: return "deadlock: the request was chosen to fail to break a wait-for cycle";
	case TOKEND_EAUTH: return "authentication failed or not configured";
	}
	return "unknown tokend status";
}

const char *tokend_mode_name(tokend_mode m)
{
	static const char *const names[] = {"NL", "CR", "CW", "PR", "PW", "EX"};
	return valid_mode((int)m) ? names[m] : "?";
}

static int ieq(const char *a, const char *b)
{
	for (; *a && *b; a++, b++) {
		char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
		if (x != *b)
			return 0;
	}
	return *a == 0 && *b == 0;
}

int tokend_mode_parse(const char *s, tokend_mode *out)
{
	static const struct {
		const char *name;
		tokend_mode m;
	} t[] = {{"nl", TOKEND_NL},        {"null", TOKEND_NL},       {"cr", TOKEND_CR},
		 {"cw", TOKEND_CW},        {"pr", TOKEND_PR},         {"shared", TOKEND_PR},
		 {"sh", TOKEND_PR},        {"read", TOKEND_PR},       {"pw", TOKEND_PW},
		 {"ex", TOKEND_EX},        {"exclusive", TOKEND_EX},  {"write", TOKEND_EX}};
	if (!s || !out)
		return TOKEND_EINVAL;
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (ieq(s, t[i].name)) {
			*out = t[i].m;
			return TOKEND_OK;
		}
	return TOKEND_EINVAL;
}

uint64_t tokend_hash(const void *name, size_t name_len)
{
	return name ? tkw_fnv1a64(name, name_len) : tkw_fnv1a64("", 0);
}

const char *tokend_version(void) { return TOKEND_VERSION_STRING; }
