/*
 * engine.c - libtokend's protocol engine: requests and retransmission,
 * replies, grants and their validity, revocations, keepalives, the shard map,
 * and the background thread that receives datagrams and runs the timers.
 *
 * Every function here runs with c->mu held (the thread loop, the event
 * dispatch and reader_wait release it around poll()/epoll_wait() and the
 * callbacks). Section numbers ("SPEC 13") refer to wire/SPEC.md.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <errno.h>
#include <poll.h>
#if defined(__linux__)
#include <sys/epoll.h>
#if defined(EPOLLEXCLUSIVE)
#define TKN_EPOLL 1
#endif
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static uint64_t rng_next(struct tokend_client *c)
{
	/* xorshift64* */
	uint64_t x = c->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	c->rng = x;
	return x * UINT64_C(2685821657736338717);
}

/* d multiplied by a uniformly random factor in [0.75, 1.25] (SPEC 12). */
static int64_t jitter(struct tokend_client *c, int64_t d)
{
	if (d <= 0)
		return 0;
	return d - d / 4 + (int64_t)(rng_next(c) % (uint64_t)(d / 2 + 1));
}

/* client_margin for a lease of ms (SPEC 13): ms/100 + 10 ms, which is at
 * least the 1 % drift rate the spec assumes. */
int64_t margin_ns(uint32_t ms) { return ((int64_t)ms / 100 + 10) * NS_PER_MS; }

/* End of a lease of ms counted from t0, the first send of its request id. */
static int64_t lease_end(int64_t t0, uint32_t ms)
{
	return t0 + (int64_t)ms * NS_PER_MS - margin_ns(ms);
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static void put32(uint8_t *q, uint32_t v)
{
	q[0] = (uint8_t)(v >> 24);
	q[1] = (uint8_t)(v >> 16);
	q[2] = (uint8_t)(v >> 8);
	q[3] = (uint8_t)v;
}

static void put64(uint8_t *q, uint64_t v)
{
	put32(q, (uint32_t)(v >> 32));
	put32(q + 4, (uint32_t)v);
}

int on_bg_thread(struct tokend_client *c)
{
	if (c->evloop) /* no thread: "in a callback" (async.c) */
		return c->in_cb && pthread_equal(pthread_self(), c->cb_thread);
	return c->thread_started && pthread_equal(pthread_self(), c->thread);
}

void wake_bg(struct tokend_client *c)
{
	char b = 1;
	if (c->wake[1] >= 0 && write(c->wake[1], &b, 1) < 0) {
		/* full pipe: the thread is awake anyway */
	}
}

int status_to_result(int st)
{
	switch (st) {
	case TKW_ST_OK: return TOKEND_OK;
	case TKW_ST_CONFLICT: return TOKEND_ECONFLICT;
	case TKW_ST_TIMEOUT: return TOKEND_ETIMEDOUT;
	case TKW_ST_UNKNOWN_SESSION:
	case TKW_ST_SESSION_EXPIRED: return TOKEND_ESESSION;
	case TKW_ST_BAD_REQUEST: return TOKEND_EREFUSED;
	case TKW_ST_NOT_HELD: return TOKEND_ENOTHELD;
	case TKW_ST_RECLAIM_REFUSED: return TOKEND_ELOST;
	case TKW_ST_CANCELED: return TOKEND_ECANCELED;
	case TKW_ST_LIMIT: return TOKEND_ELIMIT;
	case TKW_ST_DEADLOCK: return TOKEND_EDEADLK;
	default: return TOKEND_ESERVER;
	}
}

static void signal_req(struct tokend_client *c, struct req *r)
{
	if (r->owner == OWN_SYNC && r->has_cond)
		pthread_cond_signal(&r->cond);
	if (c->reading == r)
		reader_wake(c); /* its thread waits in epoll_wait, not on r->cond */
}

/* ------------------------------------------------------------ events */

static void queue_event(struct tokend_client *c, int kind, const tokend_grant *g, int wanted,
			uint64_t start, uint64_t end, int why)
{
	if ((kind == EV_REVOKE && !c->on_revoke) || (kind == EV_LOST && !c->on_lost) ||
	    (kind == EV_JEOPARDY && !c->on_jeopardy) || c->closing)
		return;
	struct event *e = calloc(1, sizeof *e);
	if (!e)
		return; /* cannot report it; the grant's own state still says so */
	e->kind = kind;
	e->g = *g;
	if (kind != EV_JEOPARDY)
		e->g.validity_ms = 0;
	e->wanted = (tokend_mode)wanted;
	e->start = start;
	e->end = end;
	e->why = why;
	if (c->ev_tail)
		c->ev_tail->next = e;
	else
		c->ev_head = e;
	c->ev_tail = e;
	if (!on_bg_thread(c))
		wake_bg(c);
}

/* Run the queued callbacks, without the lock. */
static void dispatch_events(struct tokend_client *c)
{
	while (c->ev_head && !c->stopping) {
		struct event *e = c->ev_head;
		c->ev_head = e->next;
		if (!c->ev_head)
			c->ev_tail = NULL;
		if (!c->closing) {
			pthread_mutex_unlock(&c->mu);
			if (e->kind == EV_REVOKE)
				c->on_revoke(c, &e->g, e->wanted, e->start, e->end, c->cb_arg);
			else if (e->kind == EV_JEOPARDY)
				c->on_jeopardy(c, &e->g, e->why, c->cb_arg);
			else
				c->on_lost(c, &e->g, (tokend_status)e->why, c->cb_arg);
			pthread_mutex_lock(&c->mu);
		}
		free(e);
	}
}

/* ------------------------------------------------------------ requests */

struct req *req_new(struct tokend_client *c, uint8_t type, int owner)
{
	struct req *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	if (owner == OWN_SYNC) {
		pthread_condattr_t ca;
		if (pthread_condattr_init(&ca) != 0) {
			free(r);
			return NULL;
		}
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		int e = pthread_cond_init(&r->cond, &ca);
		pthread_condattr_destroy(&ca);
		if (e != 0) {
			free(r);
			return NULL;
		}
		r->has_cond = 1;
	}
	r->type = type;
	r->owner = owner;
	r->rto = c->rto0;
	r->final_status = -1;
	r->in_session = type != TKW_SESSION_OPEN && type != TKW_MAP_REQUEST;
	r->session = r->in_session ? c->session : 0;
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	r->linked = 1;
	if (owner == OWN_ASYNC && !on_bg_thread(c))
		wake_bg(c); /* its retransmissions are the thread's job */
	return r;
}

/* req_for_grant starts a routed request of the given type about grant g:
 * the request remembers the grant's shard, name and fence, and c->tx is
 * cleared and given the fields every such message carries (type, fence,
 * name). The caller adds the rest and builds. NULL when out of memory. */
struct req *req_for_grant(struct tokend_client *c, uint8_t type, int owner, const struct grant_rec *g)
{
	struct req *r = req_new(c, type, owner);
	if (!r)
		return NULL;
	r->routed = 1;
	r->shard = g->shard;
	memcpy(r->name, g->g.name, g->g.name_len);
	r->name_len = (uint8_t)g->g.name_len;
	r->fence = g->g.fence;
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = type;
	m->fence = g->g.fence;
	m->name.p = g->g.name;
	m->name.len = g->g.name_len;
	return r;
}

void req_unlink(struct tokend_client *c, struct req *r)
{
	if (!r->linked)
		return;
	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->next = r->prev = NULL;
	r->linked = 0;
	if (r->counted) {
		r->counted = 0;
		c->unfinished--;
	}
}

void req_free(struct req *r)
{
	if (r->has_cond)
		pthread_cond_destroy(&r->cond);
	free(r->batch);
	tka_wipe(r->s_key, sizeof r->s_key);
	free(r);
}

/*
 * The request's outcome is known: it is finished (no longer holds the ack
 * back). A sync request is handed to its waiting thread; an async one is
 * freed.
 */
void req_complete(struct tokend_client *c, struct req *r, int result)
{
	if (r->done)
		return;
	r->done = 1;
	r->result = result;
	req_unlink(c, r);
	if (r->cancel) {
		r->cancel->target = NULL;
		r->cancel = NULL;
	}
	if (r->target) {
		r->target->cancel = NULL;
		r->target = NULL;
	}
	if (r->from_cache) {
		/* an ACQUIRE of the name may be waiting for it (cache_releasing) */
		for (struct req *a = c->reqs; a; a = a->next)
			if (a->type == TKW_ACQUIRE && a->sends == 0 && a->name_len == r->name_len &&
			    memcmp(a->name, r->name, r->name_len) == 0)
				signal_req(c, a);
	}
	if (r->owner == OWN_SYNC)
		signal_req(c, r);
	else
		req_free(r);
}

/*
 * Encode m as r's datagram. The header's request id, ack, epoch and map
 * version are placeholders that req_send rewrites on every send: an
 * in-session request gets its id at its first send, so ids strictly increase
 * in the order datagrams first leave (SPEC 11).
 */
int req_build(struct tokend_client *c, struct req *r, struct tkw_msg *m)
{
	m->h.session = r->in_session ? r->session : 0;
	if (r->in_session)
		m->h.request = UINT64_C(1) << 62; /* > any CANCEL target, patched at send */
	else
		m->h.request = r->id;
	m->h.ack = 0;
	m->h.shard = r->shard;
	if (r->routed && m->h.epoch == 0)
		m->h.epoch = 1; /* patched at send with the map's epoch */
	m->h.map_version = c->map.version;
	size_t len;
	int e = tkw_encode(m, r->dg, sizeof r->dg, &len);
	if (e != TKW_OK)
		return TOKEND_EINVAL;
	r->dglen = len;
	r->epoch = m->h.epoch;
	return TOKEND_OK;
}

/*
 * Build r's SESSION_OPEN: the handle's TTL, library, nonce and key name,
 * with cookie (20 bytes) or without (NULL). Every build of one open keeps
 * its request id and nonce (SPEC 20, "Opening").
 */
int open_build(struct tokend_client *c, struct req *r, const uint8_t *cookie)
{
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_SESSION_OPEN;
	m->ttl_ms = c->req_ttl_ms;
	m->lib.p = (const uint8_t *)LIB_ID;
	m->lib.len = strlen(LIB_ID);
	if (c->keyed) {
		memcpy(m->nonce, c->open_nonce, TKA_NONCE_LEN);
		m->key_name.p = (const uint8_t *)c->key_name;
		m->key_name.len = strlen(c->key_name);
	}
	if (cookie) {
		m->cookie.p = cookie;
		m->cookie.len = TKW_COOKIE_LEN;
	}
	r->cookie = cookie != NULL;
	return req_build(c, r, m);
}

/*
 * Seal datagram b before it leaves: its auth tag under key (NULL: all zero,
 * for MAP_REQUEST and a SESSION_OPEN without cookie, and for every datagram
 * of an unauthenticated client), then the checksum (SPEC 20 "Tag").
 */
static void seal(uint8_t *b, size_t n, const struct tka_mac *key)
{
	if (tka_seal(key, b, n) != 0)
		tkw_reseal(b, n); /* libcrypto failed: an all-zero tag, which no worker accepts */
}

/* The key that tags what r sends. */
static const struct tka_mac *send_key(struct tokend_client *c, const struct req *r)
{
	if (!c->keyed)
		return NULL;
	if (r->type == TKW_SESSION_OPEN)
		return r->cookie ? &c->open_c2w : NULL;
	return r->in_session ? &c->sess_c2w : NULL;
}

/* The longest wait before a request answered GRACE goes again (±25 %). */
#define GRACE_RETRY_NS (200 * NS_PER_MS)

static void backoff(struct tokend_client *c, struct req *r, int64_t now)
{
	r->next_send = now + jitter(c, r->rto);
	r->rto = r->rto * 2 > RTO_MAX_NS ? RTO_MAX_NS : r->rto * 2;
}

/* Remember where a MAP_REQUEST or SESSION_OPEN went (for error messages). */
static void note_tried(struct tokend_client *c, uint8_t type, const struct tkn_addr *a)
{
	for (int i = 0; i < c->ntried; i++)
		if (c->tried[i].type == type && tkn_addr_equal(&c->tried[i].a, a)) {
			c->tried[i].sends++;
			return;
		}
	if (c->ntried == 8)
		return;
	c->tried[c->ntried].type = type;
	c->tried[c->ntried].a = *a;
	c->tried[c->ntried].sends = 1;
	c->ntried++;
}

/* "10.0.0.1:7700 (5 sends), [::1]:7700 (4 sends)": where requests of that
 * type went since the list was last cleared. */
void tried_format(struct tokend_client *c, uint8_t type, char *buf, size_t cap)
{
	size_t n = 0;
	buf[0] = 0;
	for (int i = 0; i < c->ntried && n + 1 < cap; i++) {
		if (c->tried[i].type != type)
			continue;
		char a[80];
		tkn_addr_format(&c->tried[i].a, a, sizeof a);
		int k = snprintf(buf + n, cap - n, "%s%s (%d send%s)", n ? ", " : "", a, c->tried[i].sends,
				 c->tried[i].sends == 1 ? "" : "s");
		if (k < 0)
			break;
		n += (size_t)k;
	}
	if (n == 0)
		snprintf(buf, cap, "nothing (no address could be used)");
}

/* Oldest unfinished request id of a session that is not exempt (answered
 * QUEUED: the worker keeps those whatever the ack), UINT64_MAX if none
 * (SPEC 11). */
static uint64_t oldest_unfinished(struct tokend_client *c, uint64_t session)
{
	uint64_t o = UINT64_MAX;
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->counted && !r->exempt && r->session == session && r->id < o)
			o = r->id;
	return o;
}

/* Destinations for a MAP_REQUEST: seeds, then the map's workers, in turn. */
static int pick_map_dest(struct tokend_client *c, struct tkn_addr *out)
{
	size_t total = c->nseeds + c->map.nworkers;
	for (size_t k = 0; k < total; k++) {
		size_t i = c->mf.rr++ % total;
		if (i < c->nseeds) {
			*out = c->seeds[i];
			return 1;
		}
		const struct map_worker *w = &c->map.workers[i - c->nseeds];
		if (w->resolved) {
			*out = w->a;
			return 1;
		}
	}
	return 0;
}

/* Any known worker, in turn: the map's, then the seeds. */
int pick_worker(struct tokend_client *c, struct tkn_addr *out)
{
	size_t total = c->map.nworkers + c->nseeds;
	for (size_t k = 0; k < total; k++) {
		size_t i = c->dest_rr++ % total;
		if (i < c->map.nworkers) {
			if (c->map.workers[i].resolved) {
				*out = c->map.workers[i].a;
				return 1;
			}
		} else {
			*out = c->seeds[i - c->map.nworkers];
			return 1;
		}
	}
	return 0;
}

static const struct map_worker *map_worker_by_index(const struct shard_map *m, uint16_t idx)
{
	size_t lo = 0, hi = m->nworkers;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (m->workers[mid].index == idx)
			return &m->workers[mid];
		if (m->workers[mid].index < idx)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* The current owner of a shard and its epoch; 0 if unknown or unowned. */
int map_route(struct tokend_client *c, uint32_t shard, struct tkn_addr *dest, uint32_t *epoch)
{
	if (!c->map.have || shard >= c->map.shard_count)
		return 0;
	uint16_t own = c->map.owner[shard];
	if (own == TKW_NO_WORKER)
		return 0;
	const struct map_worker *w = map_worker_by_index(&c->map, own);
	if (!w || !w->resolved)
		return 0;
	*dest = w->a;
	*epoch = c->map.epoch[shard];
	return 1;
}

/*
 * Send (or resend) r now if it can go: pick its destination, number it,
 * refresh the header fields a retransmission may change, reseal, send, and
 * schedule the next retransmission (SPEC 12).
 *
 * Besides ack and map version, a resend to a shard's new owner also carries
 * the new epoch in the header (and goes to the new address): the same request
 * id, re-sealed (SPEC 11, 15 "Redirects").
 */
void req_send(struct tokend_client *c, struct req *r, int64_t now)
{
	if (r->done || r->abandoned) {
		r->next_send = NEVER;
		return;
	}
	if (r->type == TKW_MAP_REQUEST) {
		if (!pick_map_dest(c, &r->dest)) {
			backoff(c, r, now);
			return;
		}
		r->has_dest = 1;
	} else if (r->type == TKW_SESSION_OPEN && r->sends > 0 && r->sends % 3 == 0) {
		/* a worker that does not answer three times: try another one
		 * (an orphan session there expires by itself, SPEC 11) */
		if (pick_worker(c, &r->dest))
			r->has_dest = 1;
	}
	if (r->routed) {
		struct tkn_addr d;
		uint32_t ep;
		if (!map_route(c, r->shard, &d, &ep)) {
			map_refresh(c, now); /* unknown or unowned shard: wait and ask */
			backoff(c, r, now);
			return;
		}
		if (r->exempt && r->sends > 0 && (ep != r->epoch || !tkn_addr_equal(&d, &r->dest))) {
			/* Answered QUEUED and moved to another owner or epoch: ask
			 * the new owner under the same id (SPEC 18), at fast
			 * retransmission until it answers. A planned handoff brought
			 * the request along: it answers as the old owner would have.
			 * Otherwise it answers UNKNOWN_REQUEST, and the request goes
			 * again under a fresh id (on_reply). Still exempt: the new
			 * owner keeps it whatever the ack, if it has it. */
			r->queued = 0;
			r->rto = c->rto0;
		}
		r->dest = d;
		r->has_dest = 1;
		r->epoch = ep;
		put32(r->dg + 36, ep);
	}
	if (!r->has_dest) {
		backoff(c, r, now);
		return;
	}
	if (r->in_session) {
		if (r->session != c->session || c->sstate != S_OPEN) {
			backoff(c, r, now);
			return;
		}
		if (r->id == 0) {
			if (c->unfinished >= MAX_UNFINISHED) {
				backoff(c, r, now); /* wait for a slot */
				return;
			}
			r->id = c->next_id++;
			r->counted = 1;
			c->unfinished++;
			put64(r->dg + 16, r->id);
		}
		uint64_t ack = oldest_unfinished(c, r->session);
		put64(r->dg + 24, ack < r->id ? ack : r->id);
	}
	put64(r->dg + 40, c->map.version);
	seal(r->dg, r->dglen, send_key(c, r));
	if (sendto(c->fd, r->dg, r->dglen, 0, (const struct sockaddr *)&r->dest.sa, r->dest.len) < 0) {
		/* ENOBUFS, EHOSTUNREACH, ICMP errors...: like a lost datagram */
	}
	if (!r->first_send)
		r->first_send = now;
	r->sends++;
	if (r->type == TKW_MAP_REQUEST || r->type == TKW_SESSION_OPEN)
		note_tried(c, r->type, &r->dest);
	if (r->queued)
		r->next_send = now + QUEUED_POLL_NS;
	else
		backoff(c, r, now);
}

/* ------------------------------------------------------------ groups and grants */

static struct group *group_find(struct tokend_client *c, uint32_t shard, uint32_t epoch)
{
	for (struct group *g = c->groups; g; g = g->next)
		if (g->shard == shard && g->epoch == epoch)
			return g;
	return NULL;
}

/* The group of (shard, epoch), created with deadline t0 (nothing vouched yet). */
static struct group *group_get(struct tokend_client *c, uint32_t shard, uint32_t epoch,
			       const struct tkn_addr *dest, int64_t t0)
{
	struct group *g = group_find(c, shard, epoch);
	if (g)
		return g;
	g = calloc(1, sizeof *g);
	if (!g)
		return NULL;
	g->shard = shard;
	g->epoch = epoch;
	g->dest = *dest;
	g->deadline = t0;
	g->next = c->groups;
	c->groups = g;
	return g;
}

static void group_put(struct tokend_client *c, struct group *g)
{
	if (--g->refs > 0)
		return;
	for (struct group **p = &c->groups; *p; p = &(*p)->next)
		if (*p == g) {
			*p = g->next;
			break;
		}
	free(g);
}

/* A reply vouches for the group: its deadline only moves forward (SPEC 13).
 * Calls waiting to confirm a grant (confirm_grant in client.c) are woken. */
static void group_renew(struct tokend_client *c, struct group *g, int64_t first_send, uint32_t validity_ms)
{
	if (validity_ms == 0)
		return;
	int64_t e = lease_end(first_send, validity_ms);
	if (e > g->deadline) {
		g->deadline = e;
		c->next_lost_check = 0; /* jeopardy may have ended */
		if (c->confirming)
			pthread_cond_broadcast(&c->cond);
	}
}

struct grant_rec *grant_find(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence)
{
	for (struct grant_rec *g = c->grants; g; g = g->next)
		if (g->g.fence == fence && g->g.name_len == len && memcmp(g->g.name, name, len) == 0)
			return g;
	return NULL;
}

static void grant_set_group(struct tokend_client *c, struct grant_rec *g, struct group *grp)
{
	if (g->grp == grp)
		return;
	if (grp)
		grp->refs++;
	if (g->grp)
		group_put(c, g->grp);
	g->grp = grp;
}

void grant_remove(struct tokend_client *c, struct grant_rec *g)
{
	for (struct grant_rec **p = &c->grants; *p; p = &(*p)->next)
		if (*p == g) {
			*p = g->next;
			break;
		}
	grant_set_group(c, g, NULL);
	free(g);
}

/* Finish (drop) requests about a grant that is gone: its reclaims. */
static void drop_reclaims(struct tokend_client *c, const struct grant_rec *g)
{
	for (struct req *r = c->reqs, *next; r; r = next) {
		next = r->next;
		if (r->type == TKW_RECLAIM && r->fence == g->g.fence && r->name_len == g->g.name_len &&
		    memcmp(r->name, g->g.name, r->name_len) == 0)
			req_complete(c, r, TOKEND_ELOST);
	}
}

/*
 * The grant can no longer be trusted. While the session lives the worker may
 * still hold it (a session keeps its grants until it ends), so it is given
 * back at once, best effort: nobody will use it, and a holder that does not
 * exist must not make others wait. The record stays (state G_LOST) until the
 * application releases it.
 */
static void grant_lost(struct tokend_client *c, struct grant_rec *g, int why)
{
	if (g->state == G_LOST)
		return;
	if (g->cached) {
		/* nobody uses it: give it back (while the session lives) and forget it */
		uint32_t ep = g->grp ? g->grp->epoch : 1;
		cache_unlink(c, g);
		drop_reclaims(c, g);
		if (why != TOKEND_ESESSION && g->session == c->session)
			send_release_async(c, g->g.name, g->g.name_len, g->g.fence, NULL, g->shard, ep);
		grant_remove(c, g);
		return;
	}
	int was_released = g->state == G_RELEASING;
	g->state = G_LOST;
	g->lost_why = why;
	uint32_t epoch = g->grp ? g->grp->epoch : 1;
	grant_set_group(c, g, NULL);
	drop_reclaims(c, g);
	if (why != TOKEND_ESESSION && g->session == c->session)
		send_release_async(c, g->g.name, g->g.name_len, g->g.fence, NULL, g->shard, epoch);
	if (g->pending) {
		/* nobody has it yet: confirm_grant reports it to its caller */
		if (c->confirming)
			pthread_cond_broadcast(&c->cond);
	} else if (!was_released) {
		queue_event(c, EV_LOST, &g->g, 0, 0, 0, why);
	}
}

/* How long a grant stays valid: the earlier of its group's deadline and the
 * session's. */
static int64_t grant_deadline(struct tokend_client *c, const struct grant_rec *g)
{
	if (!g->grp || g->session != c->session || c->sstate != S_OPEN)
		return 0;
	return min64(g->grp->deadline, c->session_deadline);
}

void grant_view(struct tokend_client *c, struct grant_rec *g, int64_t now, tokend_grant *out)
{
	*out = g->g;
	int64_t left = g->state == G_HELD ? grant_deadline(c, g) - now : 0;
	if (left < 0)
		left = 0;
	left /= NS_PER_MS;
	out->validity_ms = left > UINT32_MAX ? UINT32_MAX : (uint32_t)left;
}

int grant_valid(struct tokend_client *c, struct grant_rec *g, int64_t now, int64_t *left)
{
	*left = 0;
	switch (g->state) {
	case G_LOST: return TOKEND_ELOST;
	case G_RELEASING: return TOKEND_ENOTHELD;
	case G_RECLAIMING: return TOKEND_EJEOPARDY;
	}
	int64_t d = grant_deadline(c, g);
	if (now >= d)
		return TOKEND_EJEOPARDY;
	*left = d - now;
	return TOKEND_OK;
}

static void fill_value(tokend_grant *g, const struct reply_grant *rep)
{
	if (rep->value_flags & TKW_VALUE_VALID) {
		g->value_state = TOKEND_VALUE_VALID;
		g->value_len = rep->value_len;
		memcpy(g->value, rep->value, rep->value_len);
	} else {
		g->value_state = rep->value_flags & TKW_VALUE_LOST ? TOKEND_VALUE_LOST : TOKEND_VALUE_NONE;
		g->value_len = 0;
	}
}

/* Keepalive period: S/3 for the session, W/4 for the workers' vouching,
 * whichever is shorter. A worker renews its own lease every W/4 or so, so
 * it vouches for at least about 3W/4 - margin; renewing every W/4 keeps a
 * grant's validity above W/3 (the default jeopardy threshold) with room
 * for round trips. */
static int64_t ka_period(struct tokend_client *c)
{
	int64_t s = (int64_t)c->S * NS_PER_MS / 3, w = (int64_t)c->W * NS_PER_MS / 4;
	int64_t ns = s < w ? s : w;
	return ns > 0 ? ns : 1000 * NS_PER_MS;
}

/*
 * The validity a grant has at least when tokend_acquire or tokend_convert
 * hands it over: (W - margin)/2, or (S - margin)/2 if the session TTL is the
 * shorter (a session renewed every S/3 never has more than S - margin left).
 */
int64_t fresh_ns(struct tokend_client *c)
{
	int64_t w = ((int64_t)c->W * NS_PER_MS - margin_ns(c->W)) / 2;
	int64_t s = ((int64_t)c->S * NS_PER_MS - margin_ns(c->S)) / 2;
	return w < s ? w : s;
}

/* ------------------------------------------------------------ revocations */

static int revoke_seen(struct grant_rec *g, uint8_t wanted, uint64_t start, uint64_t end)
{
	for (int i = 0; i < g->nseen && i < 4; i++)
		if (g->seen[i].mode == wanted && g->seen[i].start == start && g->seen[i].end == end)
			return 1;
	int i = g->nseen++ % 4; /* a ring of the last four */
	g->seen[i].mode = wanted;
	g->seen[i].start = start;
	g->seen[i].end = end;
	return 0;
}

/* Hand a revocation to the application, at most once per (fence, wanted,
 * range), and only if the grant is above the wanted mode (SPEC 12). */
static void deliver_revoke(struct tokend_client *c, struct grant_rec *g, uint8_t wanted, uint64_t start,
			   uint64_t end)
{
	if (g->state != G_HELD && g->state != G_RECLAIMING)
		return;
	if (tkw_mode_covers(wanted, g->g.mode))
		return; /* already at or below what is wanted */
	if (revoke_seen(g, wanted, start, end))
		return;
	if (g->pending) {
		/* the caller does not have it yet: tell it after the hand-over */
		if (g->ndeferred < 4) {
			g->deferred[g->ndeferred].mode = wanted;
			g->deferred[g->ndeferred].start = start;
			g->deferred[g->ndeferred].end = end;
			g->ndeferred++;
		}
		return;
	}
	queue_event(c, EV_REVOKE, &g->g, wanted, start, end, 0);
}

/* Returns the RELEASE on its way (a new one or one already sent), or NULL. */
struct req *send_release_async(struct tokend_client *c, const uint8_t *name, size_t len, uint64_t fence,
			       const struct tkn_addr *to, uint32_t shard, uint32_t epoch)
{
	if (c->sstate != S_OPEN || len == 0 || len > TKW_MAX_NAME)
		return NULL;
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->type == TKW_RELEASE && !r->partial && r->fence == fence && r->name_len == len &&
		    memcmp(r->name, name, len) == 0)
			return r; /* already on its way */
	struct req *r = req_new(c, TKW_RELEASE, OWN_ASYNC);
	if (!r)
		return NULL;
	memcpy(r->name, name, len);
	r->name_len = (uint8_t)len;
	r->fence = fence;
	r->shard = shard;
	if (to) {
		r->dest = *to;
		r->has_dest = 1;
	} else {
		r->routed = 1;
	}
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_RELEASE;
	m->h.epoch = epoch;
	m->fence = fence;
	m->name.p = name;
	m->name.len = len;
	if (req_build(c, r, m) != TOKEND_OK) {
		req_complete(c, r, TOKEND_EINVAL);
		return NULL;
	}
	req_send(c, r, tkn_now());
	return r;
}

struct req *partial_release(struct tokend_client *c, struct grant_rec *g, uint64_t start, uint64_t end, int owner)
{
	struct req *r = req_for_grant(c, TKW_RELEASE, owner, g);
	if (!r)
		return NULL;
	struct tkw_msg *m = &c->tx;
	if (g->grp)
		m->h.epoch = g->grp->epoch;
	m->has_range = 1;
	m->start = start;
	m->end = end;
	if (req_build(c, r, m) != TOKEND_OK) {
		req_unlink(c, r);
		req_free(r);
		return NULL;
	}
	r->partial = 1;
	if (start == g->g.start)
		g->g.start = end; /* a prefix given back */
	else
		g->g.end = start; /* a suffix */
	if (owner == OWN_ASYNC)
		req_send(c, r, tkn_now());
	return r;
}

/*
 * The answer to a partial RELEASE of grant g (NULL: gone since). g shrank
 * when the request was made, and stays so whatever the answer: holding
 * less than the worker believes is safe, while growing back could claim
 * what the worker no longer has (a reclaim after a worker crash carried
 * the smaller range, and the new owner refuses the range given back as
 * outside the grant). A cached grant the worker did not shrink is given
 * back whole (as the Go client does); one the worker does not have is lost.
 */
static void partial_done(struct tokend_client *c, struct grant_rec *g, int st)
{
	if (st == TKW_ST_OK || !g || g->state == G_RELEASING || g->state == G_LOST)
		return;
	if (g->cached)
		cache_revoke(c, g, TOKEND_NL, 0, TKW_WHOLE_END);
	else if (st == TKW_ST_NOT_HELD)
		grant_lost(c, g, TOKEND_ELOST);
}

/* An ACQUIRE, CONVERT or ACQUIRE_BATCH of this name still waiting for its answer? */
static int pending_grant_for(struct tokend_client *c, const uint8_t *name, size_t len)
{
	for (struct req *r = c->reqs; r; r = r->next) {
		if (r->abandoned || r->session != c->session)
			continue;
		if ((r->type == TKW_ACQUIRE || r->type == TKW_CONVERT) && r->name_len == len &&
		    memcmp(r->name, name, len) == 0)
			return 1;
		for (int k = 0; r->type == TKW_ACQUIRE_BATCH && r->batch && k < r->batch->n; k++)
			if (r->batch->e[k].name_len == len && memcmp(r->batch->e[k].name, name, len) == 0)
				return 1;
	}
	return 0;
}

static void stash_free_one(struct tokend_client *c, struct stash **p)
{
	struct stash *s = *p;
	*p = s->next;
	free(s);
	c->nstash--;
}

/* A grant has just been installed: deliver revocations that came early. */
static void stash_match(struct tokend_client *c, struct grant_rec *g)
{
	for (struct stash **p = &c->stash; *p;) {
		struct stash *s = *p;
		if (s->fence == g->g.fence && s->name_len == g->g.name_len &&
		    memcmp(s->name, g->g.name, s->name_len) == 0) {
			deliver_revoke(c, g, s->wanted, s->start, s->end);
			stash_free_one(c, p);
		} else {
			p = &s->next;
		}
	}
}

/* Early revocations whose grant never came: release those fences. */
static void stash_sweep(struct tokend_client *c, int64_t now)
{
	for (struct stash **p = &c->stash; *p;) {
		struct stash *s = *p;
		if (!pending_grant_for(c, s->name, s->name_len) || now - s->at > STASH_TTL_NS) {
			if (!grant_find(c, s->name, s->name_len, s->fence))
				send_release_async(c, s->name, s->name_len, s->fence, &s->src, s->shard, s->epoch);
			stash_free_one(c, p);
		} else {
			p = &s->next;
		}
	}
}

/* A one-way acknowledgement, REVOKE_ACK or GRANT_ACK of request `target`,
 * with the shard and epoch of m, the datagram it answers. A fresh request id,
 * finished as soon as sent (SPEC 11 "Exceptions"). If it is lost, the worker
 * sends m again (or the re-poll comes again). */
static void send_ack(struct tokend_client *c, uint8_t type, const struct tkw_msg *m, uint64_t target,
		     const struct tkn_addr *src)
{
	uint64_t id = c->next_id++;
	uint64_t ack = oldest_unfinished(c, c->session);
	struct tkw_msg *a = &c->tx;
	memset(a, 0, sizeof *a);
	a->h.type = type;
	a->h.session = c->session;
	a->h.request = id;
	a->h.ack = ack < id ? ack : id;
	a->h.shard = m->h.shard;
	a->h.epoch = m->h.epoch;
	a->h.map_version = c->map.version;
	a->target = target;
	uint8_t dg[TKW_HEADER_LEN + 8];
	size_t len;
	if (tkw_encode(a, dg, sizeof dg, &len) != TKW_OK)
		return;
	seal(dg, len, c->keyed ? &c->sess_c2w : NULL);
	if (sendto(c->fd, dg, len, 0, (const struct sockaddr *)&src->sa, src->len) < 0) {
		/* lost: the worker sends m again, or the re-poll comes again */
	}
}

static void on_revoke(struct tokend_client *c, const struct tkw_msg *m, const struct tkn_addr *src)
{
	if (c->sstate != S_OPEN || m->h.session != c->session) {
		c->drops++;
		return;
	}
	send_ack(c, TKW_REVOKE_ACK, m, m->h.request, src);
	struct grant_rec *g = grant_find(c, m->name.p, m->name.len, m->fence);
	if (g && g->cached) {
		cache_revoke(c, g, m->mode, m->start, m->end); /* the application never hears of it */
		return;
	}
	if (g && g->state != G_LOST) {
		deliver_revoke(c, g, m->mode, m->start, m->end);
		return;
	}
	if (g) {
		/* lost at our end but still held at the worker: give it back */
		send_release_async(c, m->name.p, m->name.len, m->fence, src, m->h.shard, m->h.epoch);
		return;
	}
	if (pending_grant_for(c, m->name.p, m->name.len)) {
		/* Its GRANT may still be on the way (lost, reordered): keep the
		 * REVOKE until the ACQUIRE/CONVERT finishes. */
		for (struct stash *s = c->stash; s; s = s->next)
			if (s->fence == m->fence && s->wanted == m->mode && s->start == m->start &&
			    s->end == m->end && s->name_len == m->name.len &&
			    memcmp(s->name, m->name.p, s->name_len) == 0)
				return;
		struct stash *s = c->nstash < MAX_STASH ? calloc(1, sizeof *s) : NULL;
		if (s) {
			memcpy(s->name, m->name.p, m->name.len);
			s->name_len = (uint8_t)m->name.len;
			s->fence = m->fence;
			s->wanted = m->mode;
			s->start = m->start;
			s->end = m->end;
			s->shard = m->h.shard;
			s->epoch = m->h.epoch;
			s->src = *src;
			s->at = tkn_now();
			s->next = c->stash;
			c->stash = s;
			c->nstash++;
			return;
		}
	}
	/* A fence we do not hold (e.g. an acquire we gave up that was granted
	 * anyway): give it back (SPEC 12). */
	send_release_async(c, m->name.p, m->name.len, m->fence, src, m->h.shard, m->h.epoch);
}

/* ------------------------------------------------------------ session */

/* Forget the session: every grant of it is lost, every request of it
 * finished. Called when its deadline passes or a worker says it is gone. */
static void session_lost(struct tokend_client *c, int why)
{
	if (c->sstate != S_OPEN)
		return;
	c->sstate = S_LOST;
	for (struct grant_rec *g = c->grants, *next; g; g = next) {
		next = g->next;
		if (g->session != c->session)
			continue;
		if (g->state == G_RELEASING)
			grant_remove(c, g);
		else
			grant_lost(c, g, why);
	}
	for (;;) {
		struct req *r = c->reqs;
		while (r && !(r->in_session && r->session == c->session))
			r = r->next;
		if (!r)
			break;
		req_complete(c, r, TOKEND_ESESSION);
	}
	while (c->stash)
		stash_free_one(c, &c->stash);
	pthread_cond_broadcast(&c->cond);
}

/* Reset per-session counters for a new session (client.c, after SESSION_OPEN). */
void session_reset(struct tokend_client *c)
{
	c->next_id = 1;
	c->renew_misses = 0;
	c->next_lost_check = 0;
}

/* ------------------------------------------------------------ keepalives */

static void ka_send_done(struct tokend_client *c, const struct tkn_addr *dest, const uint32_t *shards,
			 const uint32_t *epochs, unsigned n, int renew, uint64_t done_version, int64_t now)
{
	struct req *r = req_new(c, TKW_KEEPALIVE, OWN_ASYNC);
	if (!r)
		return;
	r->dest = *dest;
	r->has_dest = 1;
	r->renew = renew;
	r->done_version = done_version;
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_KEEPALIVE;
	m->renew = renew;
	m->done_version = done_version;
	m->nentries = (uint16_t)n;
	if (n > 0) { /* memcpy from NULL is undefined even for 0 bytes */
		memcpy(m->entry_shard, shards, n * sizeof *shards);
		memcpy(m->entry_epoch, epochs, n * sizeof *epochs);
	}
	if (req_build(c, r, m) != TOKEND_OK) {
		req_complete(c, r, TOKEND_EINVAL);
		return;
	}
	req_send(c, r, now);
}

static void ka_send(struct tokend_client *c, const struct tkn_addr *dest, const uint32_t *shards,
		    const uint32_t *epochs, unsigned n, int renew, int64_t now)
{
	ka_send_done(c, dest, shards, epochs, n, renew, 0, now);
}

/* ------------------------------------------------------------ DONE */

/* How often a DONE waiting for reclaims looks at them again. */
#define DONE_RECHECK_NS (10 * NS_PER_MS)

/* Note a DONE owed to the worker at a (once). */
static void done_owe(struct tokend_client *c, const struct tkn_addr *a)
{
	for (int i = 0; i < c->ndone; i++)
		if (tkn_addr_equal(&c->done[i].a, a))
			return;
	if (c->ndone == TKN_MAX_DONE)
		return; /* that worker keeps its full grace period */
	c->done[c->ndone].a = *a;
	c->done[c->ndone].next = 0;
	c->ndone++;
}

/*
 * Before installing nm: every worker that nm gives a (shard, epoch) above
 * epoch 1 that the current map does not have (every such worker, for the
 * first map) is owed a DONE (SPEC 13, "Early end of grace"). Workers are
 * sorted by index in both maps.
 */
static void done_mark(struct tokend_client *c, const struct shard_map *nm)
{
	/* A worker nm no longer names is owed nothing (as in the Go client):
	 * without this a DONE owed to a worker that died or left before
	 * answering would be sent every keepalive period for good, and hold
	 * one of the TKN_MAX_DONE slots, so that after enough such workers
	 * no recovering worker would hear a DONE from this handle again. */
	for (int i = 0; i < c->ndone;) {
		int named = 0;
		for (size_t k = 0; k < nm->nworkers && !named; k++)
			named = nm->workers[k].resolved && tkn_addr_equal(&nm->workers[k].a, &c->done[i].a);
		if (named)
			i++;
		else
			c->done[i] = c->done[--c->ndone];
	}
	const struct shard_map *om = &c->map;
	for (uint32_t s = 0; s < nm->shard_count; s++) {
		if (nm->owner[s] == TKW_NO_WORKER || nm->epoch[s] <= 1)
			continue;
		const struct map_worker *w = map_worker_by_index(nm, nm->owner[s]);
		if (!w || !w->resolved)
			continue;
		if (om->have && s < om->shard_count && om->owner[s] != TKW_NO_WORKER && om->epoch[s] == nm->epoch[s]) {
			const struct map_worker *ow = map_worker_by_index(om, om->owner[s]);
			if (ow && ow->resolved && tkn_addr_equal(&ow->a, &w->a))
				continue;
		}
		done_owe(c, &w->a);
	}
}

/* Whether every reclaim owed to the worker at a has its final answer: no
 * grant of this session waits to be reclaimed there. */
static int done_ready(struct tokend_client *c, const struct tkn_addr *a)
{
	for (struct grant_rec *g = c->grants; g; g = g->next) {
		if (g->session != c->session)
			continue;
		if (g->state != G_RECLAIMING && !(g->state == G_HELD && g->grp && g->grp->stale))
			continue;
		struct tkn_addr d;
		uint32_t ep;
		if (!map_route(c, g->shard, &d, &ep) || tkn_addr_equal(&d, a))
			return 0;
	}
	return 1;
}

/* Send the DONEs that are due; returns when to look again. */
static int64_t done_tick(struct tokend_client *c, int64_t now)
{
	int64_t wake = INT64_MAX;
	if (c->sstate != S_OPEN || !c->map.have)
		return wake;
	for (int i = 0; i < c->ndone; i++) {
		struct done_owed *d = &c->done[i];
		if (now < d->next) {
			wake = min64(wake, d->next);
			continue;
		}
		if (!done_ready(c, &d->a)) {
			/* reclaims still under way there: look again shortly (not
			 * on every turn of the loop: done_ready scans the grants) */
			d->next = now + DONE_RECHECK_NS;
			wake = min64(wake, d->next);
			continue;
		}
		d->next = now + ka_period(c); /* again then, unless answered */
		wake = min64(wake, d->next);
		ka_send_done(c, &d->a, NULL, NULL, 0, 0, c->map.version, now);
	}
	return wake;
}

/* The worker at a answered a DONE for version v. */
static void done_answered(struct tokend_client *c, const struct tkn_addr *a, uint64_t v)
{
	for (int i = 0; i < c->ndone; i++) {
		if (!tkn_addr_equal(&c->done[i].a, a))
			continue;
		if (c->map.version == v)
			c->done[i] = c->done[--c->ndone];
		else
			c->done[i].next = 0; /* a newer map came meanwhile: say it for that one */
		return;
	}
}

/*
 * Every min(S, W)/3: renew the session (RENEW to the session's worker) and
 * ask each worker we hold grants on to vouch for their (shard, epoch)s, at
 * most 141 per datagram (SPEC 13). Keepalives still unanswered from the
 * previous tick are given up (a fresh id counts validity from a later send).
 */
static void ka_tick(struct tokend_client *c, int64_t now)
{
	if (c->sstate != S_OPEN || now < c->ka_next)
		return;
	c->ka_next = now + ka_period(c);
	int missed_renew = 0;
	for (struct req *r = c->reqs, *next; r; r = next) {
		next = r->next;
		if (r->type == TKW_KEEPALIVE && r->owner == OWN_ASYNC) {
			missed_renew |= r->renew;
			req_complete(c, r, TOKEND_ETIMEDOUT);
			next = c->reqs; /* the list changed */
		}
	}
	if (missed_renew) {
		/* Any worker can renew the session (SPEC 14): try another. */
		c->renew_misses++;
		struct tkn_addr a;
		if (pick_worker(c, &a))
			c->session_dest = a;
	}
	uint32_t shards[TKW_MAX_KA_ENTRIES], epochs[TKW_MAX_KA_ENTRIES];
	for (struct group *g = c->groups; g; g = g->next)
		g->mark = 0;
	int renewed = 0;
	for (struct group *g = c->groups; g; g = g->next) {
		if (g->mark || g->refs <= 0 || g->stale)
			continue;
		int renew = !renewed && tkn_addr_equal(&g->dest, &c->session_dest);
		unsigned n = 0;
		for (struct group *h = g; h; h = h->next) {
			if (h->mark || h->refs <= 0 || h->stale || !tkn_addr_equal(&h->dest, &g->dest))
				continue;
			h->mark = 1;
			shards[n] = h->shard;
			epochs[n] = h->epoch;
			if (++n == TKW_MAX_KA_ENTRIES) {
				ka_send(c, &g->dest, shards, epochs, n, renew, now);
				renewed |= renew;
				renew = 0;
				n = 0;
			}
		}
		if (n > 0) {
			ka_send(c, &g->dest, shards, epochs, n, renew, now);
			renewed |= renew;
		}
	}
	if (!renewed)
		ka_send(c, &c->session_dest, NULL, NULL, 0, 1, now);
}

static void ka_reply(struct tokend_client *c, struct req *r, const struct tkw_msg *m, int64_t now)
{
	if (r->done_version)
		done_answered(c, &r->dest, r->done_version);
	if (r->renew && m->session_ttl_ms > 0) {
		int64_t e = lease_end(r->first_send, m->session_ttl_ms);
		if (e > c->session_deadline) {
			c->session_deadline = e;
			c->next_lost_check = 0; /* jeopardy may have ended */
		}
		c->renew_misses = 0;
	}
	/* The entries we asked about are in our own datagram. */
	struct tkw_msg *q = &c->aux;
	if (tkw_decode(r->dg, r->dglen, q) != TKW_OK || q->nentries != m->nentries)
		return;
	int refresh = 0;
	for (unsigned i = 0; i < q->nentries; i++) {
		struct group *g = group_find(c, q->entry_shard[i], q->entry_epoch[i]);
		if (m->entry_status[i] == TKW_ST_OK) {
			if (g)
				group_renew(c, g, r->first_send, m->validity_ms);
		} else {
			refresh = 1; /* NOT_OWNER / STALE_EPOCH: the shard moved */
		}
	}
	if (refresh)
		map_refresh(c, now);
}

/* ------------------------------------------------------------ confirming grants */

/*
 * Ask the worker to vouch for a pending grant anew (SPEC 13, "asynchronous
 * grant"): a KEEPALIVE with a fresh request id, sent now (after the grant
 * arrived), listing the grant's (shard, epoch); its reply renews the group
 * counted from this send. If the shard has moved, the reclaim at the new
 * owner does the same. A session about to run out is renewed too.
 */
void grant_vouch(struct tokend_client *c, struct grant_rec *g, int64_t now)
{
	if (c->sstate != S_OPEN)
		return;
	if (g->state == G_HELD && g->grp && !g->grp->stale) {
		uint32_t shard = g->grp->shard, epoch = g->grp->epoch;
		ka_send(c, &g->grp->dest, &shard, &epoch, 1, 0, now);
	}
	if (c->session_deadline - now < fresh_ns(c)) {
		c->ka_next = now; /* the next tick renews the session */
		wake_bg(c);
	}
}

/* The caller of acquire/convert gets g now: it is no longer pending, and
 * the revocations that came meanwhile are handed to the application. */
void grant_handover(struct tokend_client *c, struct grant_rec *g)
{
	if (!g->pending)
		return;
	g->pending = 0;
	for (int i = 0; i < g->ndeferred; i++)
		queue_event(c, EV_REVOKE, &g->g, g->deferred[i].mode, g->deferred[i].start, g->deferred[i].end, 0);
	g->ndeferred = 0;
	c->next_lost_check = 0;
}

/*
 * A pending grant that could not be confirmed in time (or was lost before
 * the hand-over) is given back in the background and forgotten. report,
 * if not NULL, is what the application knows of it (an upgrade's old
 * grant): on_lost is told with why.
 */
void grant_give_up(struct tokend_client *c, struct grant_rec *g, const tokend_grant *report, int why)
{
	uint8_t name[TKW_MAX_NAME];
	size_t len = g->g.name_len;
	uint64_t fence = g->g.fence;
	uint32_t shard = g->shard, epoch = g->grp ? g->grp->epoch : 1;
	int held = g->state != G_LOST && g->session == c->session;
	memcpy(name, g->g.name, len);
	drop_reclaims(c, g);
	grant_remove(c, g);
	if (held) /* (grant_lost has given a lost one back already) */
		send_release_async(c, name, len, fence, NULL, shard, epoch);
	if (report)
		queue_event(c, EV_LOST, report, 0, 0, 0, why);
}

/* ------------------------------------------------------------ reclaim */

/* Grants in a group whose shard moved to a new epoch: ask the new owner to
 * reinstate them (SPEC 13 "Recovery"). */
static void start_reclaims(struct tokend_client *c, int64_t now)
{
	for (struct grant_rec *g = c->grants; g; g = g->next) {
		if (g->state != G_HELD || !g->grp || !g->grp->stale || g->session != c->session)
			continue;
		struct req *r = req_for_grant(c, TKW_RECLAIM, OWN_ASYNC, g);
		if (!r)
			return;
		struct tkw_msg *m = &c->tx;
		m->mode = (uint8_t)g->g.mode;
		m->start = g->g.start;
		m->end = g->g.end;
		if (g->g.value_state == TOKEND_VALUE_VALID &&
		    (g->g.mode == TOKEND_PR || g->g.mode == TOKEND_PW || g->g.mode == TOKEND_EX)) {
			/* The holder's copy of the value block: the new owner
			 * recovers a value lost in the crash from it (SPEC 13). */
			m->has_value = 1;
			m->value.p = g->g.value;
			m->value.len = g->g.value_len;
		}
		if (req_build(c, r, m) != TOKEND_OK) {
			req_complete(c, r, TOKEND_EINVAL);
			continue;
		}
		g->state = G_RECLAIMING;
		req_send(c, r, now);
	}
}

/* ------------------------------------------------------------ replies */

static void copy_grant(struct reply_grant *rep, const struct tkw_msg *m)
{
	rep->fence = m->fence;
	rep->mode = m->mode;
	rep->validity_ms = m->validity_ms;
	rep->start = m->start;
	rep->end = m->end;
	rep->value_flags = m->value_flags;
	rep->value_len = (uint8_t)m->value.len;
	memcpy(rep->value, m->value.p, m->value.len);
}

/* After a GRANT for (shard, epoch): renew its group; an asynchronous grant
 * (after QUEUED) takes the group's current deadline, and if that is near or
 * absent we ask for a keepalive at once (SPEC 13). */
static struct group *grant_group(struct tokend_client *c, struct req *r, uint32_t epoch, int64_t now)
{
	struct group *grp = group_get(c, r->shard, epoch, &r->dest, r->first_send);
	if (!grp)
		return NULL;
	group_renew(c, grp, r->first_send, r->rep.validity_ms);
	if (grp->deadline - now < ka_period(c))
		c->ka_next = now;
	c->next_lost_check = 0;
	return grp;
}

/* g's grant becomes the one rep says: fence, mode, range and value. */
static void grant_fill(struct grant_rec *g, const struct reply_grant *rep)
{
	g->g.fence = rep->fence;
	g->g.mode = (tokend_mode)rep->mode;
	g->g.start = rep->start;
	g->g.end = rep->end;
	fill_value(&g->g, rep);
}

/*
 * g, new, becomes the grant of name that rep says r's session got: held,
 * pending until the caller confirms it (confirm_grant), in grp and on
 * c->grants; its view in *out (if out).
 */
static void grant_link(struct tokend_client *c, const struct req *r, struct grant_rec *g, const uint8_t *name,
		       uint8_t name_len, const struct reply_grant *rep, struct group *grp, int64_t now,
		       tokend_grant *out)
{
	memcpy(g->g.name, name, name_len);
	g->g.name_len = name_len;
	grant_fill(g, rep);
	g->shard = r->shard;
	g->session = r->session;
	g->state = G_HELD;
	g->pending = 1;
	grant_set_group(c, g, grp);
	g->next = c->grants;
	c->grants = g;
	if (out)
		grant_view(c, g, now, out);
	stash_match(c, g);
}

static void acquire_ok(struct tokend_client *c, struct req *r, uint32_t epoch, int64_t now)
{
	struct grant_rec *g = calloc(1, sizeof *g);
	struct group *grp = g ? grant_group(c, r, epoch, now) : NULL;
	if (!grp) {
		free(g);
		send_release_async(c, r->name, r->name_len, r->rep.fence, NULL, r->shard, epoch);
		req_complete(c, r, TOKEND_ENOMEM);
		return;
	}
	grant_link(c, r, g, r->name, r->name_len, &r->rep, grp, now, &r->out);
	req_complete(c, r, TOKEND_OK);
}

static void convert_ok(struct tokend_client *c, struct req *r, uint32_t epoch, int64_t now)
{
	struct grant_rec *g = grant_find(c, r->name, r->name_len, r->fence);
	if (!g || g->state == G_LOST || g->state == G_RELEASING) {
		/* released or lost meanwhile: an upgrade's new grant is ours to return */
		if (r->rep.fence != r->fence)
			send_release_async(c, r->name, r->name_len, r->rep.fence, NULL, r->shard, epoch);
		req_complete(c, r, g && g->state == G_LOST ? TOKEND_ELOST : TOKEND_ENOTHELD);
		return;
	}
	struct group *grp = grant_group(c, r, epoch, now);
	if (!grp) {
		req_complete(c, r, TOKEND_ENOMEM);
		return;
	}
	grant_set_group(c, g, grp);
	if (r->owner == OWN_SYNC && !tkw_mode_covers(g->g.mode, r->rep.mode))
		g->pending = 1; /* an upgrade: until confirm_grant hands it over */
	if (g->g.fence != r->rep.fence)
		g->nseen = g->ndeferred = 0; /* a new grant (upgrade): new revocations */
	grant_fill(g, &r->rep);
	grant_view(c, g, now, &r->out);
	stash_match(c, g);
	req_complete(c, r, TOKEND_OK);
}

/*
 * GRANT_BATCH for r (SPEC 21): one grant per entry, in entry order, each
 * recorded by grant_link as acquire_ok records one (pending until the
 * caller confirms it), its view in r->bout. An orphan's grants (its caller
 * gave up), or all of them when they cannot be recorded, are given back.
 */
static void batch_ok(struct tokend_client *c, struct req *r, const struct tkw_msg *m, uint32_t epoch, int64_t now)
{
	const struct batch_ents *b = r->batch;
	struct grant_rec *gs[TKW_MAX_BATCH] = {0};
	int n = m->count, rc = TOKEND_OK;
	if (r->orphan || !b || n != b->n) {
		rc = r->orphan ? TOKEND_ECANCELED : TOKEND_ESERVER;
		if (!r->orphan)
			snprintf(r->errtext, sizeof r->errtext, "%d grants for %d entries", n, b ? b->n : 0);
	}
	for (int k = 0; k < n && rc == TOKEND_OK; k++)
		if (!(gs[k] = calloc(1, sizeof *gs[k])))
			rc = TOKEND_ENOMEM;
	r->rep.validity_ms = m->validity_ms;
	struct group *grp = rc == TOKEND_OK ? grant_group(c, r, epoch, now) : NULL;
	if (!grp) {
		for (int k = 0; k < n; k++) {
			free(gs[k]);
			if (b && k < b->n)
				send_release_async(c, b->e[k].name, b->e[k].name_len, m->batch[k].fence, NULL, r->shard,
						   epoch);
		}
		req_complete(c, r, rc == TOKEND_OK ? TOKEND_ENOMEM : rc);
		return;
	}
	for (int k = 0; k < n; k++) {
		struct grant_rec *g = gs[k];
		const struct tkw_batch_item *it = &m->batch[k];
		struct reply_grant rep = {.fence = it->fence, .mode = it->mode, .start = it->start, .end = it->end,
					  .value_flags = it->value_flags, .value_len = (uint8_t)it->value.len};
		memcpy(rep.value, it->value.p, it->value.len);
		grant_link(c, r, g, b->e[k].name, b->e[k].name_len, &rep, grp, now, r->bout ? &r->bout[k] : NULL);
	}
	req_complete(c, r, TOKEND_OK);
}

/* The CANCEL of an abandoned ACQUIRE/CONVERT got its answer. */
static void cancel_done(struct tokend_client *c, struct req *k, int st)
{
	struct req *t = k->target;
	if (t) {
		if (t->late_fence && (st == TKW_ST_NOT_HELD || t->type == TKW_CONVERT))
			send_release_async(c, t->name, t->name_len, t->late_fence, NULL, t->shard, t->epoch);
		if (t->type == TKW_CONVERT) {
			/*
			 * An upgrade we gave up on. Unless we saw its final error
			 * (then the grant is intact), we cannot tell whether the
			 * worker still has our grant: a CANCEL of a conversion
			 * that was granted meanwhile releases it (SPEC 14), and a
			 * GRANT we never received changed its fence. Play safe.
			 */
			int intact = t->final_status > 0 && t->final_status != TKW_ST_NOT_HELD && !t->late_fence;
			struct grant_rec *g = grant_find(c, t->name, t->name_len, t->fence);
			if (g && !intact)
				grant_lost(c, g, TOKEND_ELOST); /* also releases the old fence */
		}
		req_complete(c, t, TOKEND_ECANCELED);
	}
	req_complete(c, k, status_to_result(st));
}

static void on_reply(struct tokend_client *c, struct req *r, const struct tkw_msg *m, int64_t now);

/* MAP reply page (SPEC 15). */
static void map_page(struct tokend_client *c, struct req *r, const struct tkw_msg *m, int64_t now);

static void on_reply(struct tokend_client *c, struct req *r, const struct tkw_msg *m, int64_t now)
{
	uint8_t st = m->h.status;
	if (r->type == TKW_MAP_REQUEST) {
		map_page(c, r, m, now);
		return;
	}
	if (r->type == TKW_SESSION_OPEN && st == TKW_ST_COOKIE) {
		/* SPEC 20 step 3: the same open again, with the cookie, tagged */
		r->got_cookie = 1;
		if (!c->keyed) {
			r->final_status = st;
			snprintf(r->errtext, sizeof r->errtext,
				 "the workers authenticate, and this client has no key (insecure)");
			req_complete(c, r, TOKEND_EAUTH);
			return;
		}
		if (r->abandoned || m->cookie.len != TKW_COOKIE_LEN)
			return;
		if (open_build(c, r, m->cookie.p) != TOKEND_OK) {
			req_complete(c, r, TOKEND_EINVAL);
			return;
		}
		r->rto = c->rto0;
		req_send(c, r, now);
		signal_req(c, r);
		return;
	}
	if (st == TKW_ST_QUEUED) {
		/* no more fast retransmission: re-poll every 500 ms (SPEC 12);
		 * the ack no longer waits for it (SPEC 11) */
		r->queued = 1;
		r->exempt = 1;
		r->next_send = now + QUEUED_POLL_NS;
		signal_req(c, r);
		return;
	}
	if (tkw_status_retryable(st)) {
		/* not applied: same request id again later, after a map refresh
		 * for NOT_OWNER/STALE_EPOCH (SPEC 6, 12) */
		if (st == TKW_ST_NOT_OWNER || st == TKW_ST_STALE_EPOCH)
			map_refresh(c, now);
		r->queued = 0;
		if (st == TKW_ST_GRACE && r->rto > GRACE_RETRY_NS)
			r->rto = GRACE_RETRY_NS; /* grace may end early (SPEC 13): ask again soon */
		backoff(c, r, now);
		signal_req(c, r);
		return;
	}
	if (st == TKW_ST_UNKNOWN_REQUEST && r->routed && !r->abandoned &&
	    (r->type == TKW_ACQUIRE || r->type == TKW_CONVERT)) {
		/* The shard's owner does not hold this id (a request answered
		 * QUEUED by a previous owner that did not hand it over): not
		 * applied there, and never will be under this id, so the same
		 * request goes again under a fresh id (SPEC 18). */
		if (r->counted) {
			r->counted = 0;
			c->unfinished--;
		}
		r->id = 0;
		r->exempt = r->queued = 0;
		r->first_send = 0;
		r->sends = 0;
		r->rto = c->rto0;
		req_send(c, r, now);
		signal_req(c, r);
		return;
	}
	r->final_status = st;
	r->rep_epoch = m->h.epoch;
	if (m->kind == TKW_K_ERROR && m->message.len > 0) {
		size_t n = m->message.len < sizeof r->errtext - 1 ? m->message.len : sizeof r->errtext - 1;
		memcpy(r->errtext, m->message.p, n);
		r->errtext[n] = 0;
	}
	if (st == TKW_ST_OK && m->kind == TKW_K_GRANT)
		copy_grant(&r->rep, m);
	if (r->abandoned) {
		/* its CANCEL decides (cancel_done) */
		if (st == TKW_ST_OK && m->kind == TKW_K_GRANT)
			r->late_fence = m->fence;
		r->next_send = NEVER;
		return;
	}
	switch (r->type) {
	case TKW_SESSION_OPEN:
		if (st == TKW_ST_OK && c->keyed && !r->s_key_ok) {
			/* SPEC 20: a keyed client refuses an unauthenticated session */
			snprintf(r->errtext, sizeof r->errtext,
				 "the worker's OK reply is not authenticated: was the cluster started with --insecure?");
			req_complete(c, r, TOKEND_EAUTH);
			return;
		}
		if (st == TKW_ST_OK) {
			r->s_session = m->h.session;
			r->s_ttl = m->ttl_ms;
			r->s_shards = m->shard_count;
			r->s_grace = m->grace_ms;
			r->s_wttl = m->worker_ttl_ms;
		}
		req_complete(c, r, status_to_result(st));
		return;
	case TKW_SESSION_CLOSE:
		/* a retransmitted close may find the session gone: success (SPEC 11) */
		req_complete(c, r,
			     (st == TKW_ST_OK || st == TKW_ST_UNKNOWN_SESSION || st == TKW_ST_SESSION_EXPIRED)
				     ? TOKEND_OK
				     : status_to_result(st));
		return;
	}
	if (st == TKW_ST_UNKNOWN_SESSION || st == TKW_ST_SESSION_EXPIRED) {
		session_lost(c, TOKEND_ESESSION); /* finishes r too */
		return;
	}
	struct grant_rec *g;
	switch (r->type) {
	case TKW_ACQUIRE:
		if (st == TKW_ST_OK)
			acquire_ok(c, r, m->h.epoch, now);
		else
			req_complete(c, r, status_to_result(st));
		break;
	case TKW_CONVERT:
		if (st == TKW_ST_OK) {
			convert_ok(c, r, m->h.epoch, now);
			break;
		}
		if (st == TKW_ST_NOT_HELD && (g = grant_find(c, r->name, r->name_len, r->fence)))
			grant_lost(c, g, TOKEND_ELOST); /* the worker does not have it */
		req_complete(c, r, status_to_result(st));
		break;
	case TKW_RELEASE:
		g = grant_find(c, r->name, r->name_len, r->fence);
		if (r->partial) {
			partial_done(c, g, st);
		} else if (g && g->state == G_RELEASING) {
			if (st == TKW_ST_OK || st == TKW_ST_NOT_HELD || r->from_cache)
				grant_remove(c, g); /* (a cached one refused: nobody's; a REVOKE finds it gone) */
			else
				g->state = G_HELD; /* refused: still ours */
		}
		req_complete(c, r, status_to_result(st));
		break;
	case TKW_RECLAIM: {
		int lost = 0;
		g = grant_find(c, r->name, r->name_len, r->fence);
		if (g && g->state == G_RECLAIMING) {
			struct group *grp = st == TKW_ST_OK ? grant_group(c, r, m->h.epoch, now) : NULL;
			if (grp) {
				grant_set_group(c, g, grp);
				g->state = G_HELD;
				fill_value(&g->g, &r->rep); /* comes back LOST */
			} else {
				lost = 1; /* RECLAIM_REFUSED (SPEC 13) */
			}
		}
		/* r first: grant_lost finishes (frees) the grant's reclaims */
		req_complete(c, r, status_to_result(st));
		if (lost)
			grant_lost(c, g, TOKEND_ELOST);
		break;
	}
	case TKW_KEEPALIVE:
		if (st == TKW_ST_OK)
			ka_reply(c, r, m, now);
		req_complete(c, r, status_to_result(st));
		break;
	case TKW_CANCEL:
		cancel_done(c, r, st);
		break;
	case TKW_ACQUIRE_BATCH:
		if (st == TKW_ST_OK) {
			batch_ok(c, r, m, m->h.epoch, now);
			break;
		}
		if (m->kind == TKW_K_BATCH_CONFLICT)
			snprintf(r->errtext, sizeof r->errtext, "entry %u conflicts%s%.*s", (unsigned)m->conflict_entry,
				 m->message.len ? ": " : "", (int)(m->message.len < 80 ? m->message.len : 80),
				 m->message.len ? (const char *)m->message.p : "");
		req_complete(c, r, status_to_result(st));
		break;
	default:
		req_complete(c, r, status_to_result(st));
	}
}

/* The unfinished SESSION_OPEN with request id `id`, or NULL. */
static struct req *open_req(struct tokend_client *c, uint64_t id)
{
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->type == TKW_SESSION_OPEN && r->id == id && !r->done)
			return r;
	return NULL;
}

static uint64_t get64(const uint8_t *q)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | q[i];
	return v;
}

enum { AUTH_OK, AUTH_FAIL, AUTH_NOT_OURS };

/*
 * SPEC 20: may datagram b (its frame and checksum checked, its body not
 * decoded yet) be acted on? Which key checks it follows from its header:
 * SESSION_OPEN replies with the open key (errors), the session key derived
 * from the reply itself (OK; the reply's worker nonce is at a fixed offset)
 * or none (COOKIE); a MAP reply without session none; everything else the
 * key of the open session. An OK reply with an all-zero tag passes here
 * and is refused by on_reply, with a message. Unkeyed clients check nothing.
 */
static int auth_check(struct tokend_client *c, const uint8_t *b, size_t n)
{
	if (!c->keyed)
		return AUTH_OK;
	uint8_t t = b[3], st = b[5];
	uint64_t session = get64(b + 8);
	if (t == (TKW_MAP_REQUEST | TKW_REPLY) && session == 0)
		return AUTH_OK;
	if (t == (TKW_SESSION_OPEN | TKW_REPLY)) {
		if (st == TKW_ST_COOKIE)
			return AUTH_OK;
		struct req *r = open_req(c, get64(b + 16));
		if (!r)
			return AUTH_NOT_OURS;
		if (st != TKW_ST_OK) {
			if (tka_verify(&c->open_w2c, b, n))
				return AUTH_OK;
			/* an unauthenticated retryable answer changes nothing but
			 * the pace of retransmission */
			return tka_tag_zero(b, n) && tkw_status_retryable(st) ? AUTH_OK : AUTH_FAIL;
		}
		if (tka_tag_zero(b, n))
			return AUTH_OK; /* refused in on_reply, with a message */
		if (n < TKW_HEADER_LEN + 16 + TKA_NONCE_LEN)
			return AUTH_FAIL;
		uint8_t sk[TKA_KEY_LEN];
		struct tka_mac w2c;
		int ok = tka_session_key(c->client_key, c->open_nonce, b + TKW_HEADER_LEN + 16, session, sk) == 0 &&
			 tka_mac_init(&w2c, sk, TKA_WORKER_TO_CLIENT) == 0 && tka_verify(&w2c, b, n);
		if (ok) {
			memcpy(r->s_key, sk, sizeof sk);
			r->s_key_ok = 1;
		} else {
			r->bad_ok = 1;
		}
		tka_wipe(sk, sizeof sk);
		tka_wipe(&w2c, sizeof w2c);
		return ok ? AUTH_OK : AUTH_FAIL;
	}
	if (c->sstate != S_OPEN || session != c->session)
		return AUTH_NOT_OURS;
	return tka_verify(&c->sess_w2c, b, n) ? AUTH_OK : AUTH_FAIL;
}

/* A datagram from the socket (SPEC 7, 20: drop anything invalid, unexpected
 * or not authenticated). */
static void on_datagram(struct tokend_client *c, const uint8_t *b, size_t n, const struct tkn_addr *src,
			int64_t now)
{
	struct tkw_msg *m = &c->rx;
	if (tkw_check_frame(b, n) != TKW_OK) {
		c->drops++;
		return;
	}
	if (b[3] == (TKW_BUNDLE | TKW_REPLY)) {
		/*
		 * This library never sets the BUNDLE flag in its SESSION_OPEN, so
		 * no worker may send it a BUNDLE_REPLY (SPEC 22): one that comes
		 * anyway is unexpected, dropped whole without looking inside. Its
		 * own tag is zero by design, so it is not an auth failure.
		 */
		c->drops++;
		return;
	}
	switch (auth_check(c, b, n)) {
	case AUTH_FAIL:
		c->auth_failures++;
		/* fall through */
	case AUTH_NOT_OURS:
		c->drops++;
		return;
	}
	if (tkw_decode(b, n, m) != TKW_OK) {
		c->drops++;
		return;
	}
	uint8_t t = m->h.type;
	if (t < 0x40) {
		c->drops++; /* requests are for workers */
		return;
	}
	if (t != (TKW_MAP_REQUEST | TKW_REPLY) && c->map.have && m->h.map_version > c->map.version &&
	    !(c->mf.active && c->mf.m.version >= m->h.map_version))
		map_refresh(c, now); /* someone knows a newer map (SPEC 15) */
	if (t == TKW_REVOKE) {
		on_revoke(c, m, src);
		return;
	}
	if (t == TKW_GRANT_ASYNC && c->sstate == S_OPEN && m->h.session == c->session)
		/* whatever becomes of it (a duplicate, an abandoned request's) */
		send_ack(c, TKW_GRANT_ACK, m, m->h.request, src);
	struct req *r;
	for (r = c->reqs; r; r = r->next) {
		if (r->id != m->h.request || r->done || (r->in_session && !r->counted))
			continue;
		if (t == TKW_GRANT_ASYNC ? (r->type == TKW_ACQUIRE || r->type == TKW_CONVERT)
					 : r->type == (t & 0x7F))
			break;
	}
	if (!r) {
		c->drops++; /* nothing waits for it (SPEC 12) */
		return;
	}
	if (r->in_session ? (m->h.session != r->session || r->session != c->session)
			  : (r->type == TKW_MAP_REQUEST && m->h.session != 0 && m->h.session != c->session)) {
		c->drops++;
		return;
	}
	if (r->routed && m->h.shard != r->shard) {
		c->drops++;
		return;
	}
	if (r->exempt && t != TKW_GRANT_ASYNC && m->h.status != TKW_ST_QUEUED && !tkw_status_retryable(m->h.status))
		send_ack(c, TKW_GRANT_ACK, m, r->id, src); /* a queued request's outcome, by a re-poll */
	on_reply(c, r, m, now);
}

/* ------------------------------------------------------------ the shard map */

void map_free(struct shard_map *m)
{
	free(m->owner);
	free(m->epoch);
	free(m->workers);
	memset(m, 0, sizeof *m);
}

static void map_request(struct tokend_client *c, uint32_t first, int64_t now)
{
	struct req *r = req_new(c, TKW_MAP_REQUEST, OWN_ASYNC);
	if (!r) {
		c->mf.active = 0;
		return;
	}
	do
		r->id = rng_next(c) | (UINT64_C(1) << 63); /* never a session counter value */
	while (r->id == 0);
	r->map_first = first;
	struct tkw_msg *m = &c->tx;
	memset(m, 0, sizeof *m);
	m->h.type = TKW_MAP_REQUEST;
	m->first_shard = first;
	if (req_build(c, r, m) != TOKEND_OK) {
		req_complete(c, r, TOKEND_EINVAL);
		c->mf.active = 0;
		return;
	}
	c->mf.req = r;
	req_send(c, r, now);
}

/* Fetch the whole map again (one fetch at a time; a request during a fetch
 * starts another one after it). */
void map_refresh(struct tokend_client *c, int64_t now)
{
	if (c->stopping)
		return;
	if (c->mf.active) {
		c->mf.again = 1;
		return;
	}
	c->mf.active = 1;
	c->mf.again = 0;
	c->mf.ready = 0;
	map_free(&c->mf.m);
	c->mf.next_first = 0;
	map_request(c, 0, now);
}

static void map_fetch_end(struct tokend_client *c, int64_t now)
{
	c->mf.active = 0;
	c->mf.req = NULL;
	map_free(&c->mf.m);
	if (c->mf.again) {
		c->mf.again = 0;
		map_refresh(c, now);
	}
}

static int assembly_start(struct map_fetch *mf, const struct tkw_msg *m)
{
	map_free(&mf->m);
	mf->m.owner = malloc(m->shard_count * sizeof *mf->m.owner);
	mf->m.epoch = calloc(m->shard_count, sizeof *mf->m.epoch);
	if (!mf->m.owner || !mf->m.epoch) {
		map_free(&mf->m);
		return -1;
	}
	for (uint32_t s = 0; s < m->shard_count; s++)
		mf->m.owner[s] = TKW_NO_WORKER;
	mf->m.version = m->h.map_version;
	mf->m.shard_count = m->shard_count;
	mf->m.grace_ms = m->grace_ms;
	mf->next_first = 0;
	return 0;
}

static void map_page(struct tokend_client *c, struct req *r, const struct tkw_msg *m, int64_t now)
{
	struct map_fetch *mf = &c->mf;
	if (r != mf->req) {
		req_complete(c, r, TOKEND_OK); /* a page of an abandoned fetch */
		return;
	}
	if (m->h.status != TKW_ST_OK || m->shard_count > MAX_SHARDS) {
		backoff(c, r, now); /* ask again, another worker (pick_map_dest) */
		return;
	}
	if (c->map.have && m->h.map_version < c->map.version) {
		/* a worker behind us: our map is newer */
		req_complete(c, r, TOKEND_OK);
		map_fetch_end(c, now);
		return;
	}
	if (mf->m.version != 0 &&
	    (m->h.map_version != mf->m.version || m->shard_count != mf->m.shard_count)) {
		if (m->h.map_version < mf->m.version) {
			backoff(c, r, now);
			return;
		}
		map_free(&mf->m); /* the map changed in between: start over */
		mf->next_first = 0;
	}
	if (mf->m.version == 0) {
		if (assembly_start(mf, m) != 0) {
			backoff(c, r, now);
			return;
		}
	}
	if (r->map_first != mf->next_first) {
		/* the answer to a page of a previous version: ask from the start */
		req_complete(c, r, TOKEND_OK);
		map_request(c, mf->next_first, now);
		return;
	}
	/* workers: the same index means the same worker within a version */
	for (unsigned i = 0; i < m->nworkers; i++) {
		const struct tkw_map_worker *w = &m->workers[i];
		struct map_worker *have = NULL;
		for (size_t k = 0; k < mf->m.nworkers; k++)
			if (mf->m.workers[k].index == w->index)
				have = &mf->m.workers[k];
		if (have) {
			if (strlen(have->addr) != w->addr.len || memcmp(have->addr, w->addr.p, w->addr.len) != 0) {
				map_free(&mf->m); /* inconsistent pages: start over */
				req_complete(c, r, TOKEND_OK);
				map_request(c, 0, now);
				return;
			}
			continue;
		}
		struct map_worker *nw = realloc(mf->m.workers, (mf->m.nworkers + 1) * sizeof *nw);
		if (!nw) {
			backoff(c, r, now);
			return;
		}
		mf->m.workers = nw;
		nw += mf->m.nworkers++;
		memset(nw, 0, sizeof *nw);
		nw->index = w->index;
		memcpy(nw->addr, w->addr.p, w->addr.len);
		nw->addr[w->addr.len] = 0;
	}
	if (mf->next_first < mf->m.shard_count) {
		if (m->nruns == 0 || m->runs[0].first != mf->next_first) {
			backoff(c, r, now); /* must start where we asked */
			return;
		}
		for (unsigned i = 0; i < m->nruns; i++) {
			const struct tkw_map_run *run = &m->runs[i];
			for (uint32_t s = run->first; s < run->first + run->count; s++) {
				mf->m.owner[s] = run->worker;
				mf->m.epoch[s] = run->epoch;
			}
		}
		mf->next_first = m->runs[m->nruns - 1].first + m->runs[m->nruns - 1].count;
	}
	req_complete(c, r, TOKEND_OK);
	mf->req = NULL;
	if (mf->next_first >= mf->m.shard_count)
		mf->ready = 1; /* installed by the thread loop (it may resolve names) */
	else
		map_request(c, mf->next_first, now);
}

static int cmp_worker(const void *a, const void *b)
{
	const struct map_worker *x = a, *y = b;
	return (int)x->index - (int)y->index;
}

/* After a new map: resend routed requests whose owner or epoch changed, and
 * reclaim grants whose shard moved to a new epoch. */
static void after_map_change(struct tokend_client *c, int64_t now)
{
	for (struct req *r = c->reqs; r; r = r->next) {
		if (!r->routed || r->abandoned || r->done)
			continue;
		struct tkn_addr d;
		uint32_t ep;
		if (!map_route(c, r->shard, &d, &ep))
			continue;
		if (!r->has_dest || !tkn_addr_equal(&d, &r->dest) || ep != r->epoch || r->sends == 0) {
			r->rto = c->rto0;
			if (!r->queued || r->epoch != ep)
				r->next_send = now;
			signal_req(c, r);
		}
	}
	for (struct group *g = c->groups; g; g = g->next) {
		if (g->shard >= c->map.shard_count)
			continue;
		uint32_t ep = c->map.epoch[g->shard];
		if (ep > g->epoch && c->map.owner[g->shard] != TKW_NO_WORKER)
			g->stale = 1;
		else if (ep < g->epoch)
			c->mf.again = 1; /* our map is older than a grant we hold */
	}
	start_reclaims(c, now);
	c->next_lost_check = 0;
}

/* Install the assembled map. Worker names that are not numeric addresses
 * are resolved with the lock released. */
static void map_install(struct tokend_client *c, int64_t now)
{
	struct shard_map nm = c->mf.m;
	memset(&c->mf.m, 0, sizeof c->mf.m);
	c->mf.ready = 0;
	int need_dns = 0;
	for (size_t i = 0; i < nm.nworkers; i++) {
		struct map_worker *w = &nm.workers[i];
		w->resolved = tkn_resolve(w->addr, c->family, 1, &w->a) == 0;
		need_dns |= !w->resolved;
	}
	if (need_dns) {
		pthread_mutex_unlock(&c->mu);
		for (size_t i = 0; i < nm.nworkers; i++)
			if (!nm.workers[i].resolved)
				nm.workers[i].resolved = tkn_resolve(nm.workers[i].addr, c->family, 0, &nm.workers[i].a) == 0;
		pthread_mutex_lock(&c->mu);
		now = tkn_now();
	}
	if (nm.nworkers > 0) /* qsort wants a non-NULL array even for 0 elements */
		qsort(nm.workers, nm.nworkers, sizeof *nm.workers, cmp_worker);
	if (c->map.have && nm.version < c->map.version) {
		map_free(&nm);
	} else {
		if (!c->map.have || nm.version != c->map.version)
			done_mark(c, &nm);
		map_free(&c->map);
		c->map = nm;
		c->map.have = 1;
		after_map_change(c, now);
	}
	c->mf.active = 0;
	if (c->mf.again) {
		c->mf.again = 0;
		map_refresh(c, now);
	}
	pthread_cond_broadcast(&c->cond);
}

/* ------------------------------------------------------------ abandonment */

/*
 * The waiting thread gives up on r (deadline, close). A sent ACQUIRE or
 * CONVERT is withdrawn with CANCEL (SPEC 12): r then belongs to the engine
 * and stays unfinished until the CANCEL is answered, so that the ack cannot
 * pass it. Returns 1 if r was handed over (the caller must not free it).
 */
int req_abandon(struct tokend_client *c, struct req *r)
{
	if ((r->type == TKW_ACQUIRE || r->type == TKW_CONVERT) && r->id != 0 && !r->done &&
	    r->session == c->session && c->sstate == S_OPEN && !c->closing) {
		struct req *k = req_new(c, TKW_CANCEL, OWN_ASYNC);
		if (k) {
			k->routed = 1;
			k->shard = r->shard;
			struct tkw_msg *m = &c->tx;
			memset(m, 0, sizeof *m);
			m->h.type = TKW_CANCEL;
			m->h.epoch = r->epoch;
			m->target = r->id;
			if (req_build(c, k, m) == TOKEND_OK) {
				r->owner = OWN_ASYNC;
				r->abandoned = 1;
				r->next_send = NEVER;
				k->target = r;
				r->cancel = k;
				req_send(c, k, tkn_now());
				return 1;
			}
			req_complete(c, k, TOKEND_EINVAL);
		}
	}
	if (((r->type == TKW_RELEASE && r->partial) || r->type == TKW_ACQUIRE_BATCH) && !r->done &&
	    r->session == c->session && c->sstate == S_OPEN && !c->closing) {
		/*
		 * Its outcome matters though the caller leaves: a partial
		 * RELEASE goes on (its answer may say the grant is lost, or
		 * give a cached one back whole), and a batch granted late
		 * must not leave grants nobody knows of. The
		 * engine retransmits it until it is answered (the reply cache
		 * answers a repeat with the same outcome, SPEC 11).
		 */
		r->owner = OWN_ASYNC;
		r->orphan = r->type == TKW_ACQUIRE_BATCH;
		r->bout = NULL;
		if (!on_bg_thread(c))
			wake_bg(c);
		return 1;
	}
	req_unlink(c, r);
	return 0;
}

/* ------------------------------------------------------------ lost detection */

/*
 * A grant being released whose worker has not answered until its lease and
 * grace ran out (the session may live on through other workers): the caller
 * of tokend_release gets TOKEND_ELOST instead of waiting forever, the grant is
 * forgotten, and the RELEASE goes on in the background with a fresh id.
 */
static void release_gave_up(struct tokend_client *c, struct grant_rec *g)
{
	uint8_t name[TKW_MAX_NAME];
	size_t len = g->g.name_len;
	uint64_t fence = g->g.fence;
	uint32_t shard = g->shard, epoch = g->grp ? g->grp->epoch : 1;
	memcpy(name, g->g.name, len);
	for (struct req *r = c->reqs, *next; r; r = next) {
		next = r->next;
		if (r->type == TKW_RELEASE && r->fence == fence && r->name_len == len &&
		    memcmp(r->name, name, len) == 0) {
			req_complete(c, r, TOKEND_ELOST);
			next = c->reqs;
		}
	}
	grant_remove(c, g);
	send_release_async(c, name, len, fence, NULL, shard, epoch);
}

/* The on_jeopardy threshold: jeopardy_ms, or a third of min(W, S). A
 * healthy grant never gets that close: keepalives go out every min(S/3, W/4)
 * and are answered with about 3W/4 (S for the session) or more. */
static int64_t jeopardy_ns(struct tokend_client *c)
{
	if (c->jeopardy_ns > 0)
		return c->jeopardy_ns;
	uint32_t t = c->S < c->W ? c->S : c->W;
	return (int64_t)t * NS_PER_MS / 3;
}

/*
 * on_jeopardy for a held grant: once when its validity drops below the
 * threshold without renewal, and once more ("recovered") when a keepalive
 * or a reclaim has brought it back above. Returns when to look again.
 */
static int64_t check_jeopardy(struct tokend_client *c, struct grant_rec *g, int64_t now)
{
	if (!c->on_jeopardy || g->pending || g->cached || (g->state != G_HELD && g->state != G_RECLAIMING))
		return NEVER;
	int64_t j = jeopardy_ns(c);
	int64_t d = g->state == G_HELD ? grant_deadline(c, g) : 0;
	if (!g->jeopardy) {
		if (now < d - j)
			return d - j;
		g->jeopardy = 1;
	} else if (d - now > j) {
		g->jeopardy = 0;
	} else {
		return NEVER; /* a renewal resets next_lost_check */
	}
	tokend_grant v;
	grant_view(c, g, now, &v);
	queue_event(c, EV_JEOPARDY, &v, 0, 0, 0, !g->jeopardy);
	return g->jeopardy ? NEVER : d - j;
}

/*
 * The session is lost at its deadline; a grant whose group deadline has
 * passed is in jeopardy, and lost at deadline + G - client_margin unless a
 * keepalive or a reclaim brought it back (SPEC 13).
 */
static void check_lost(struct tokend_client *c, int64_t now)
{
	if (now < c->next_lost_check)
		return;
	int64_t next = NEVER;
	if (c->sstate == S_OPEN) {
		if (now >= c->session_deadline)
			session_lost(c, TOKEND_ESESSION);
		else
			next = c->session_deadline;
	}
	int64_t grace = (int64_t)c->G * NS_PER_MS - margin_ns(c->G);
	if (grace < 0)
		grace = 0;
	for (struct grant_rec *g = c->grants, *nx; g; g = nx) {
		nx = g->next;
		if (g->state == G_LOST || !g->grp || g->pending)
			continue; /* a pending grant is confirm_grant's business */
		int64_t jt = check_jeopardy(c, g, now);
		if (jt < next)
			next = jt;
		int64_t lost_at = g->grp->deadline + grace;
		if (now < lost_at) {
			if (lost_at < next)
				next = lost_at;
		} else if (g->state == G_RELEASING) {
			release_gave_up(c, g);
			nx = c->grants; /* the list changed */
		} else {
			grant_lost(c, g, TOKEND_ELOST);
		}
	}
	c->next_lost_check = next;
}

/* ------------------------------------------------------------ the thread */

/* Read what the socket holds (up to 64 datagrams) and act on it. */
static void receive(struct tokend_client *c, int64_t now)
{
	for (int i = 0; i < 64 && !c->stopping; i++) {
		struct tkn_addr src;
		memset(&src, 0, sizeof src);
		src.len = sizeof src.sa;
		ssize_t n = recvfrom(c->fd, c->rxbuf, sizeof c->rxbuf, 0, (struct sockaddr *)&src.sa, &src.len);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				break;
			continue; /* ECONNREFUSED and the like: ICMP for an earlier send */
		}
		/* rxbuf is larger than any valid datagram: an oversized one is
		 * seen as such and rejected (SPEC 2) */
		on_datagram(c, c->rxbuf, (size_t)n, &src, now);
	}
}

/*
 * One announcement datagram b[0..n) from src: verified and used, or dropped
 * and counted. A verified worker becomes a seed (when the client has room
 * for it: the seeds it was given, or up to 16 discovered ones); a newer map
 * version than the client's starts a map fetch. Returns 1 if accepted.
 */
static int ann_handle(struct tokend_client *c, const uint8_t *b, size_t n, const struct tkn_addr *src, int64_t now)
{
	struct tkm_ann a;
	int r = tkm_decode(b, n, c->mcfg.cluster, c->ann_keyed ? c->ann_pub : NULL, tkm_unix_ms(), &a);
	if (r != TKM_OK) {
		c->ann_drops++;
		return 0;
	}
	c->ann_ok++;
	if (a.bye)
		return 1;
	char host[256], hp[300];
	unsigned port;
	if (tkn_split_hostport(a.addr, host, sizeof host, &port) != 0)
		return 1;
	/* an unspecified host means the datagram's source address */
	if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) {
		char s[128];
		tkn_addr_format(src, s, sizeof s);
		char *colon = strrchr(s, ':');
		if (!colon)
			return 1;
		*colon = 0;
		snprintf(hp, sizeof hp, "%s:%u", s, port);
	} else {
		snprintf(hp, sizeof hp, "%s", a.addr);
	}
	struct tkn_addr w;
	if (tkn_resolve(hp, c->family, 1, &w) != 0)
		return 1; /* names are not looked up here (no DNS on this thread) */
	int known = 0;
	for (size_t i = 0; i < c->nseeds && !known; i++)
		known = tkn_addr_equal(&c->seeds[i], &w);
	if (!known && c->nseeds < c->seeds_cap)
		c->seeds[c->nseeds++] = w;
	if (c->map.have && a.map_version > c->map.version && !c->mf.active)
		map_refresh(c, now);
	return 1;
}

int ann_receive(struct tokend_client *c, int64_t now)
{
	int ok = 0;
	for (int i = 0; i < 64 && !c->stopping && c->mfd >= 0; i++) {
		struct tkn_addr src;
		memset(&src, 0, sizeof src);
		src.len = sizeof src.sa;
		ssize_t n = recvfrom(c->mfd, c->ann_buf, sizeof c->ann_buf, 0, (struct sockaddr *)&src.sa, &src.len);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				break;
			continue;
		}
		ok += ann_handle(c, c->ann_buf, (size_t)n, &src, now);
	}
	return ok;
}

#if defined(TKN_EPOLL)
static int ep_add(int ep, int fd, uint32_t events)
{
	struct epoll_event ev;
	memset(&ev, 0, sizeof ev);
	ev.events = events;
	ev.data.fd = fd;
	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void drain(int fd)
{
	char buf[64];
	while (read(fd, buf, sizeof buf) > 0) {
	}
}
#endif

/*
 * Set up the two epoll sets (see struct tokend_client): before the
 * background thread starts. Returns 0, or -1 if there is no epoll (then
 * every datagram goes through the background thread, as with poll()).
 */
int reader_init(struct tokend_client *c)
{
#if defined(TKN_EPOLL)
	/* The order matters: a datagram wakes the first exclusive waiter of
	 * the socket's wait queue that has a thread waiting, and the sets are
	 * queued in the order they are added. The waiting thread's first. */
	if (tkn_pipe(c->rwake) != 0) {
		c->rwake[0] = c->rwake[1] = -1;
		return -1;
	}
	c->app_ep = epoll_create1(EPOLL_CLOEXEC);
	if (c->app_ep >= 0 && ep_add(c->app_ep, c->fd, EPOLLIN | EPOLLEXCLUSIVE) == 0 &&
	    ep_add(c->app_ep, c->rwake[0], EPOLLIN) == 0) {
		c->bg_ep = epoll_create1(EPOLL_CLOEXEC);
		if (c->bg_ep >= 0 && ep_add(c->bg_ep, c->fd, EPOLLIN | EPOLLEXCLUSIVE) == 0 &&
		    ep_add(c->bg_ep, c->wake[0], EPOLLIN) == 0 && (c->mfd < 0 || ep_add(c->bg_ep, c->mfd, EPOLLIN) == 0))
			return 0;
	}
	if (c->app_ep >= 0)
		close(c->app_ep);
	if (c->bg_ep >= 0)
		close(c->bg_ep);
	c->app_ep = c->bg_ep = -1;
	return -1;
#else
	(void)c;
	return -1;
#endif
}

/* Interrupt the thread waiting in reader_wait, if any. */
void reader_wake(struct tokend_client *c)
{
	char b = 1;
	if (c->rwake[1] >= 0 && write(c->rwake[1], &b, 1) < 0) {
		/* full pipe: it wakes anyway */
	}
}

/*
 * After a thread other than the background one acted on datagrams: the
 * background thread sleeps until c->bg_sleep_until with timers computed
 * before; wake it if something now needs it sooner (callbacks to run, a
 * map to install, a keepalive, a jeopardy or loss check, a retransmission).
 */
static void after_receive(struct tokend_client *c, int64_t now)
{
	check_lost(c, now);
	int64_t w = c->bg_sleep_until;
	if (w == 0)
		return; /* awake: it looks at everything before it sleeps again */
	int wake = c->ev_head || c->mf.ready || (c->sstate == S_OPEN && c->ka_next < w) || c->next_lost_check < w;
	for (struct req *q = c->reqs; q && !wake; q = q->next)
		if (q->owner == OWN_ASYNC && !q->abandoned && !q->done && q->next_send < w)
			wake = 1;
	if (wake)
		wake_bg(c);
}

/*
 * Wait until `until` at the latest for something to happen to sync request
 * r, reading the socket in this thread: a reply arrives here without
 * passing through the background thread. Only while this is the handle's
 * only call in progress (one thread per handle, the common case: a shared
 * handle's replies would mostly be other threads', each a wake-up from
 * here instead of from the background thread); returns 0 without waiting
 * otherwise (or without epoll): then the caller waits on r->cond. Returns
 * 1 after it waited.
 */
int reader_wait(struct tokend_client *c, struct req *r, int64_t until)
{
#if defined(TKN_EPOLL)
	if (c->app_ep < 0 || c->reading || c->active > 1 || c->stopping || c->closing)
		return 0; /* with other calls in progress, the replies are mostly theirs */
	int64_t d = until - tkn_now();
	if (d > 1000 * NS_PER_MS)
		d = 1000 * NS_PER_MS;
	int timeout = d <= 0 ? 0 : (int)((d + NS_PER_MS - 1) / NS_PER_MS);
	struct epoll_event ev[2];
	c->reading = r;
	pthread_mutex_unlock(&c->mu);
	int n = epoll_wait(c->app_ep, ev, 2, timeout);
	pthread_mutex_lock(&c->mu);
	c->reading = NULL;
	int sock = 0;
	for (int i = 0; i < n; i++) {
		if (ev[i].data.fd == c->fd)
			sock = 1;
		else
			drain(c->rwake[0]);
	}
	if (sock && !c->stopping) {
		int64_t now = tkn_now();
		receive(c, now);
		after_receive(c, now);
	}
	return 1;
#else
	(void)c;
	(void)r;
	(void)until;
	return 0;
#endif
}

void *bg_main(void *arg)
{
	struct tokend_client *c = arg;
	pthread_mutex_lock(&c->mu);
	while (!c->stopping) {
		int64_t now = tkn_now();
		int64_t wake = engine_timers(c, now); /* the same timers as tokend_process */
		if (c->ev_head) {
			dispatch_events(c);
			continue;
		}
		if (c->mf.ready)
			continue;

		int64_t d = wake - now;
		int timeout = d <= 0 ? 0 : (int)((d + NS_PER_MS - 1) / NS_PER_MS);
#if defined(TKN_EPOLL)
		if (c->bg_ep >= 0) {
			struct epoll_event ev[3];
			c->bg_sleep_until = wake; /* exactly: see after_receive */
			pthread_mutex_unlock(&c->mu);
			int n = epoll_wait(c->bg_ep, ev, 3, timeout);
			pthread_mutex_lock(&c->mu);
			c->bg_sleep_until = 0;
			int sock = 0, ann = 0;
			for (int i = 0; i < n; i++) {
				if (ev[i].data.fd == c->fd)
					sock = 1;
				else if (ev[i].data.fd == c->mfd)
					ann = 1;
				else
					drain(c->wake[0]);
			}
			if (sock)
				receive(c, tkn_now());
			if (ann)
				(void)ann_receive(c, tkn_now());
			continue;
		}
#endif
		struct pollfd p[3] = {{c->fd, POLLIN, 0}, {c->wake[0], POLLIN, 0}, {c->mfd, POLLIN, 0}};
		pthread_mutex_unlock(&c->mu);
		int pr = poll(p, c->mfd >= 0 ? 3 : 2, timeout);
		pthread_mutex_lock(&c->mu);
		if (pr <= 0)
			continue; /* timeout, EINTR */
		if (p[1].revents) {
			char buf[64];
			while (read(c->wake[0], buf, sizeof buf) > 0) {
			}
		}
		if (p[0].revents & (POLLIN | POLLERR))
			receive(c, tkn_now());
		if (c->mfd >= 0 && (p[2].revents & (POLLIN | POLLERR)))
			(void)ann_receive(c, tkn_now());
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ------------------------------------------------------------ no thread (async.c) */

/*
 * What the background thread's loop does between two waits, for a handle
 * without one (tokend_process): install a fetched map, send the engine's own
 * requests when due, keepalives, loss and jeopardy checks, the stash. Returns
 * when it needs to run next (at most a second from now, as the thread).
 * bg_main runs it too, so both kinds of handle run the same timers; a timer
 * added here needs its next time in engine_next as well.
 */
int64_t engine_timers(struct tokend_client *c, int64_t now)
{
	while (c->mf.ready && !c->stopping)
		map_install(c, now);
	int64_t wake = now + 1000 * NS_PER_MS;
	for (struct req *r = c->reqs; r; r = r->next) {
		if (r->owner != OWN_ASYNC || r->abandoned || r->done)
			continue;
		if (r->next_send <= now)
			req_send(c, r, now);
		wake = min64(wake, r->next_send);
	}
	ka_tick(c, now);
	if (c->sstate == S_OPEN)
		wake = min64(wake, c->ka_next);
	wake = min64(wake, done_tick(c, now));
	check_lost(c, now);
	wake = min64(wake, c->next_lost_check);
	if (c->cache_n)
		wake = min64(wake, cache_expire(c, now));
	if (c->stash)
		stash_sweep(c, now);
	return c->ev_head || c->mf.ready ? now : wake;
}

/* When engine_timers must run next, without running anything (tokend_timeout). */
int64_t engine_next(struct tokend_client *c, int64_t now)
{
	if (c->ev_head || c->mf.ready)
		return now;
	int64_t wake = now + 1000 * NS_PER_MS;
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->owner == OWN_ASYNC && !r->abandoned && !r->done)
			wake = min64(wake, r->next_send);
	if (c->sstate == S_OPEN) {
		wake = min64(wake, c->ka_next);
		for (int i = 0; c->map.have && i < c->ndone; i++)
			wake = min64(wake, c->done[i].next); /* done_tick */
	}
	if (c->cache_tail)
		wake = min64(wake, c->cache_tail->cached_at + c->cache_idle_ns); /* cache_expire */
	return min64(wake, c->next_lost_check);
}

/* Read what the socket holds, without waiting (tokend_process). */
void engine_receive(struct tokend_client *c, int64_t now) { receive(c, now); }

/* Run the queued on_revoke/on_lost/on_jeopardy callbacks on this thread,
 * which counts as the callback thread meanwhile (on_bg_thread). */
void engine_dispatch(struct tokend_client *c)
{
	if (!c->ev_head)
		return;
	int was = c->in_cb;
	pthread_t t = c->cb_thread;
	c->in_cb = 1;
	c->cb_thread = pthread_self();
	dispatch_events(c);
	c->in_cb = was;
	c->cb_thread = t;
}
