/*
 * cache.c - the token cache (tokend.h, tokend_token_cache): a grant the
 * application releases while nobody else wants it stays held by the
 * library, and the next compatible acquire of its name takes it with no
 * datagram and the same fence. The same design as the Go client's
 * (clientlib/cache.go).
 *
 * A cached grant is an ordinary grant_rec with `cached` set, on the LRU list
 * c->cache_head..cache_tail: keepalives, reclaims after a worker failure or
 * a planned move, and REVOKEs find it as any held grant. The application's
 * calls do not: release, convert and tokend_grant_check answer
 * TOKEND_ENOTHELD for it, since the application gave it up. on_revoke,
 * on_jeopardy and on_lost are never called for it: a REVOKE is answered by
 * a RELEASE at once (cache_revoke), a lost one is forgotten (grant_lost in
 * engine.c). Every function here expects c->mu held, except the public ones.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <string.h>

#define DEFAULT_IDLE_MS TOKEND_DEFAULT_TOKEN_CACHE_IDLE_MS

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static void push(struct tokend_client *c, struct grant_rec *g)
{
	g->cprev = NULL;
	g->cnext = c->cache_head;
	if (c->cache_head)
		c->cache_head->cprev = g;
	else
		c->cache_tail = g;
	c->cache_head = g;
	c->cache_n++;
}

void cache_unlink(struct tokend_client *c, struct grant_rec *g)
{
	if (!g->cached)
		return;
	if (g->cprev)
		g->cprev->cnext = g->cnext;
	else
		c->cache_head = g->cnext;
	if (g->cnext)
		g->cnext->cprev = g->cprev;
	else
		c->cache_tail = g->cprev;
	g->cprev = g->cnext = NULL;
	g->cached = 0;
	c->cache_n--;
}

/* Out of the cache and given back: the RELEASE goes in the background; the
 * record stays (G_RELEASING) until it is answered, so that an acquire of
 * the name can wait for it (cache_releasing). A grant not held (being
 * reclaimed) is given back all the same. */
static void give_back(struct tokend_client *c, struct grant_rec *g)
{
	cache_unlink(c, g);
	uint32_t epoch = g->grp ? g->grp->epoch : 1;
	g->state = G_RELEASING;
	struct req *r = send_release_async(c, g->g.name, g->g.name_len, g->g.fence, NULL, g->shard, epoch);
	if (r)
		r->from_cache = 1;
	else
		grant_remove(c, g); /* no session to send it in: nothing is held */
}

/* Whether [s2, e2) lies within [s1, e1), and whether they overlap. */
static int contains(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2) { return s1 <= s2 && e2 <= e1; }
static int overlap(uint64_t s1, uint64_t e1, uint64_t s2, uint64_t e2) { return s1 < e2 && s2 < e1; }

/*
 * The grant g the application releases (no value given) is kept if: the
 * cache is on and the session open; g is held, confirmed (not pending, not
 * in jeopardy, not being reclaimed, its shard not moved) and nobody asked
 * for it (no REVOKE seen for this fence); and its value block cannot change
 * while it is cached: mode PR, PW or EX over the whole token (a CR or NL
 * grant, or one of a byte range, may see a PW holder of another range set
 * the value meanwhile, and would hand out a stale value).
 */
int cache_release(struct tokend_client *c, struct grant_rec *g)
{
	if (c->cache_max == 0 || c->sstate != S_OPEN || g->session != c->session || g->state != G_HELD ||
	    g->pending || g->jeopardy || g->cached || g->nseen > 0 || g->ndeferred > 0 || !g->grp || g->grp->stale)
		return 0;
	if (g->g.mode != TOKEND_PR && g->g.mode != TOKEND_PW && g->g.mode != TOKEND_EX)
		return 0;
	if (g->g.start != 0 || g->g.end != TKW_WHOLE_END)
		return 0;
	int64_t now = tkn_now();
	g->cached = 1;
	g->cached_at = now;
	push(c, g);
	while (c->cache_n > c->cache_max) {
		c->cache_evictions++;
		give_back(c, c->cache_tail);
	}
	if (c->cache_idle_ns < 1000 * NS_PER_MS && !c->evloop)
		wake_bg(c); /* its idle time may end before the engine's next look */
	return 1;
}

/*
 * A cached grant of name serves an acquire of mode over [start, end) if
 * its mode covers mode (every mode that conflicts with the one asked
 * conflicts with it), its range contains the one asked, and it is valid
 * for at least fresh_ns(), what acquire promises any grant it returns.
 * Otherwise the cached grants of name that must not stay beside the
 * request are given back: those that conflict with it (the worker would
 * make this session's request wait for its own cached grant, or fail a try)
 * and those no longer fresh enough to serve a hit.
 */
int cache_acquire(struct tokend_client *c, const uint8_t *name, size_t len, int mode, uint64_t start,
		  uint64_t end, tokend_grant *out)
{
	if (c->cache_max == 0 && c->cache_n == 0)
		return 0;
	int64_t now = tkn_now(), fresh = fresh_ns(c);
	for (struct grant_rec *g = c->cache_head; g; g = g->cnext) {
		int64_t left;
		if (g->g.name_len != len || memcmp(g->g.name, name, len) != 0)
			continue;
		if (!tkw_mode_covers((int)g->g.mode, mode) || !contains(g->g.start, g->g.end, start, end))
			continue;
		if (grant_valid(c, g, now, &left) != TOKEND_OK || left < fresh)
			continue;
		cache_unlink(c, g);
		c->cache_hits++;
		grant_view(c, g, now, out);
		return 1;
	}
	if (c->cache_max)
		c->cache_misses++;
	for (struct grant_rec *g = c->cache_head, *next; g; g = next) {
		next = g->cnext;
		if (g->g.name_len != len || memcmp(g->g.name, name, len) != 0)
			continue;
		int64_t left;
		int conflicts = !tkw_mode_compatible((int)g->g.mode, mode) && overlap(g->g.start, g->g.end, start, end);
		if (!conflicts && grant_valid(c, g, now, &left) == TOKEND_OK && left >= fresh)
			continue;
		give_back(c, g);
	}
	return 0;
}

int64_t cache_releasing(struct tokend_client *c, const uint8_t *name, size_t len)
{
	int64_t w = 0;
	for (struct req *r = c->reqs; r; r = r->next)
		if (r->type == TKW_RELEASE && r->from_cache && !r->done && r->name_len == len &&
		    memcmp(r->name, name, len) == 0)
			w = w ? min64(w, r->next_send) : r->next_send;
	return w;
}

/*
 * A grant grown beyond what the REVOKE wants (tokend_acquire_ex with
 * TOKEND_ACQUIRE_GROW) is split when the wanted range covers a prefix or a
 * suffix of it and leaves the rest: that part goes back with a RELEASE
 * flagged RANGE (partial_release: the entry shrinks at once) and the rest
 * stays cached under the same fence, its value state unknown, since
 * another client may set the value from the part given back. If the worker
 * refuses the partial release, the whole grant goes back (partial_done in
 * engine.c). A hole in the middle, or all of it, sends the whole grant
 * back; a REVOKE of nothing it still has (a repeat about the part a split
 * gives back) changes nothing.
 */
void cache_revoke(struct tokend_client *c, struct grant_rec *g, int wanted, uint64_t start, uint64_t end)
{
	if (tkw_mode_covers(wanted, (int)g->g.mode))
		return; /* already at or below what is wanted */
	uint64_t gs = g->g.start, ge = g->g.end, ws = start, we = end;
	if (we <= gs || ge <= ws)
		return;
	if ((ws > gs || we < ge) && g->state == G_HELD && (ws <= gs || ge <= we)) {
		uint64_t rs = ws <= gs ? gs : ws, re = ws <= gs ? we : ge; /* the part given back */
		struct req *r = partial_release(c, g, rs, re, OWN_ASYNC);
		if (r) {
			r->from_cache = 1; /* an acquire of the name waits for it (cache_releasing) */
			g->g.value_state = TOKEND_VALUE_UNKNOWN;
			g->g.value_len = 0;
			c->cache_splits++;
			return;
		}
	}
	c->cache_revoked++;
	give_back(c, g);
}

int cache_has(struct tokend_client *c, const uint8_t *name, size_t len)
{
	for (struct grant_rec *g = c->cache_head; g; g = g->cnext)
		if (g->g.name_len == len && memcmp(g->g.name, name, len) == 0)
			return 1;
	return cache_releasing(c, name, len) != 0;
}

int64_t cache_expire(struct tokend_client *c, int64_t now)
{
	while (c->cache_tail) {
		int64_t at = c->cache_tail->cached_at + c->cache_idle_ns;
		if (now < at)
			return at;
		c->cache_evictions++;
		give_back(c, c->cache_tail);
	}
	return NEVER;
}

/* ------------------------------------------------------------ the API */

int tokend_token_cache(tokend_client *c, size_t max, int idle_ms)
{
	if (!c || idle_ms < 0)
		return TOKEND_EINVAL;
	pthread_mutex_lock(&c->mu);
	int rc = api_enter(c);
	if (rc == TOKEND_OK) {
		c->cache_max = max;
		c->cache_idle_ns = (int64_t)(idle_ms ? idle_ms : DEFAULT_IDLE_MS) * NS_PER_MS;
		while (c->cache_n > c->cache_max) {
			c->cache_evictions++;
			give_back(c, c->cache_tail);
		}
		if (!c->evloop)
			wake_bg(c); /* the idle time may be shorter now */
		api_leave(c);
	}
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int tokend_get_cache_stats(tokend_client *c, tokend_cache_stats *out)
{
	if (!c || !out)
		return TOKEND_EINVAL;
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&c->mu);
	out->hits = c->cache_hits;
	out->misses = c->cache_misses;
	out->revoked = c->cache_revoked;
	out->evictions = c->cache_evictions;
	out->cached = c->cache_n;
	out->splits = c->cache_splits;
	pthread_mutex_unlock(&c->mu);
	return TOKEND_OK;
}
