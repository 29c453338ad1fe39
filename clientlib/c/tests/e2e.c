/*
 * e2e.c - end-to-end scenarios of libtokend against a running tokend worker.
 * Driven by clientlib/ctest (Go), which starts the server; usable by hand:
 *
 *   tokend-e2e HOST:PORT basic | conflict | shared | ranges | revoke | convert | value | many | cache
 *                        | batch | grow | cachesplit
 *   tokend-e2e HOST:PORT batchwire SHARDS  a batch of 10 tokens of one shard (SHARDS: the cluster's
 *                                          shard count): the driver counts two ACQUIRE_BATCHes and
 *                                          no ACQUIRE
 *   tokend-e2e HOST:PORT batchfall SHARDS  a batch of 4 tokens of one shard, one of them held by
 *                                          another client for a second: the batch conflicts, falls
 *                                          back to one ACQUIRE each, and succeeds once it is free
 *   tokend-e2e HOST:PORT batchlate SHARDS SHARD FILE
 *                                          a batch of 3 tokens of shard SHARD, whose worker the
 *                                          driver has muted: "timed out" and "names N1 N2 N3";
 *                                          then, once FILE exists (the driver unmuted the worker
 *                                          and saw the late batch granted and given back), the
 *                                          same batch succeeds
 *   tokend-e2e HOST:PORT hold NAME MS      acquire EX, print "fence F", hold MS ms, release
 *   tokend-e2e HOST:PORT wait NAME MS      acquire EX waiting <= MS ms, print "fence F ms T"
 *   tokend-e2e HOST:PORT fences NAME N     acquire+release EX N times, print "fence F" each
 *   tokend-e2e HOST:PORT lost NAME MS      acquire EX, then wait <= MS ms for the lost callback
 *   tokend-e2e HOST:PORT stuck NAME OTHER  acquire EX on NAME, print "fence F", wait 300 ms (the
 *                                          driver makes NAME's worker unreachable), release: must
 *                                          return TOKEND_ELOST after lease + grace, not hang;
 *                                          then OTHER (on a live worker) can still be acquired
 *   tokend-e2e HOST:PORT survive NAME MS   acquire EX, print "fence F", hold MS ms (the driver
 *                                          crashes or moves the worker meanwhile), check it is
 *                                          still valid with the same fence, release
 *   tokend-e2e HOST:PORT cached NAME MS    token cache on: acquire EX, release it into the cache,
 *                                          print "fence F", wait MS ms (the driver crashes or
 *                                          moves the worker), re-acquire: "hit" (same fence) or
 *                                          "refetched", then another client gets it; no callbacks
 *   tokend-e2e HOST:PORT cachedfresh NAME MS
 *                                          token cache on: a cached grant, print "fence F"; the
 *                                          driver mutes its worker; after MS ms the re-acquire
 *                                          must not be served from the cache (validity too low)
 *   tokend-e2e HOST:PORT longwait NAME MS W
 *                                          one client holds NAME for MS ms (ignoring the revoke)
 *                                          while another waits for it: the waiter's grant must be
 *                                          valid on return with more than W/4 ms left (W: the
 *                                          worker TTL), stay valid for MS/3 ms (checked every
 *                                          100 ms), and never be reported lost; prints
 *                                          "validity V ms after waiting T ms"
 *   tokend-e2e HOST:PORT pinned NAME N     one client holds NAME while another waits for it (one
 *                                          request answered QUEUED) and meanwhile does N acquire
 *                                          and release pairs on other names; then the waiter is
 *                                          granted NAME. The driver counts the LIMIT answers:
 *                                          with the ack skipping the queued request, none
 *   tokend-e2e HOST:PORT jeopardy NAME lost|recover
 *                                          acquire EX on NAME, print "fence F"; the driver makes
 *                                          NAME's worker unreachable (and, for recover, reachable
 *                                          again): on_jeopardy must come first, then on_lost
 *                                          (lost) or on_jeopardy "recovered" and no loss (recover)
 *
 * Every scenario prints "ok <scenario>" and exits 0, or prints "FAIL: ..."
 * and exits 1. Token names get a per-run suffix so that runs do not collide.
 */
#define _POSIX_C_SOURCE 200809L
#include "../tokend.h"
#include "check.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *addr;
static char suffix[32];

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Callback bookkeeping (written from the library's thread). */
struct cb_state {
	pthread_mutex_t mu;
	int revokes, losts;
	int jeopardies, recoveries;
	char order[16]; /* 'j' jeopardy, 'r' recovered, 'l' lost, in call order */
	uint32_t jeopardy_left; /* validity_ms the first on_jeopardy saw */
	int64_t jeopardy_at, lost_at;
	int release_on_revoke;
	int shrink_on_revoke; /* give back the wanted range's side with tokend_release_range */
	uint64_t shrunk_start, shrunk_end; /* what the grant kept */
	tokend_mode wanted;
	int release_rc;
};

static void on_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted, uint64_t start, uint64_t end,
		      void *arg)
{
	struct cb_state *s = arg;
	int rc = TOKEND_OK;
	tokend_grant cp = *g;
	if (s->release_on_revoke)
		rc = tokend_release(c, g, NULL, 0); /* allowed from a callback: does not wait */
	else if (s->shrink_on_revoke && start > g->start)
		rc = tokend_release_range(c, &cp, start, g->end); /* does not wait either */
	else if (s->shrink_on_revoke && end < g->end)
		rc = tokend_release_range(c, &cp, g->start, end);
	pthread_mutex_lock(&s->mu);
	s->shrunk_start = cp.start;
	s->shrunk_end = cp.end;
	s->revokes++;
	s->wanted = wanted;
	s->release_rc = rc;
	pthread_mutex_unlock(&s->mu);
}

static void note(struct cb_state *s, char what)
{
	size_t n = strlen(s->order);
	if (n + 1 < sizeof s->order)
		s->order[n] = what;
}

static void on_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	struct cb_state *s = arg;
	(void)c;
	(void)g;
	(void)why;
	pthread_mutex_lock(&s->mu);
	s->losts++;
	s->lost_at = now_ms();
	note(s, 'l');
	pthread_mutex_unlock(&s->mu);
}

static void on_jeopardy(tokend_client *c, const tokend_grant *g, int recovered, void *arg)
{
	struct cb_state *s = arg;
	(void)c;
	pthread_mutex_lock(&s->mu);
	if (recovered) {
		s->recoveries++;
		note(s, 'r');
	} else {
		if (s->jeopardies++ == 0) {
			s->jeopardy_left = g->validity_ms;
			s->jeopardy_at = now_ms();
		}
		note(s, 'j');
	}
	pthread_mutex_unlock(&s->mu);
}

/* A handle on addr, flags as tokend_connect_ex takes them; its callbacks
 * recorded in *s, if s. */
static tokend_client *connect_flags(struct cb_state *s, unsigned flags)
{
	const char *seeds[1] = {addr};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	if (s) { /* callbacks only when someone records them */
		o.on_revoke = on_revoke;
		o.on_lost = on_lost;
		o.on_jeopardy = on_jeopardy;
		o.cb_arg = s;
	}
	tokend_client *c = NULL;
	int rc = tokend_connect_ex(&o, flags, &c);
	CHECK_RC(rc, TOKEND_OK, flags & TOKEND_NO_THREAD ? "connect without a thread" : "connect");
	CHECK(tokend_session_id(c) != 0, "no session id");
	return c;
}

static tokend_client *connect_cb(struct cb_state *s) { return connect_flags(s, 0); }

static tokend_client *connect_plain(void) { return connect_cb(NULL); }

static void cb_init(struct cb_state *s)
{
	memset(s, 0, sizeof *s);
	pthread_mutex_init(&s->mu, NULL);
}

static void name_of(char *buf, size_t cap, const char *base)
{
	snprintf(buf, cap, "%s/%s", base, suffix);
}

static void s_basic(void)
{
	char n[128];
	name_of(n, sizeof n, "basic");
	tokend_client *c = connect_plain();
	tokend_grant g, g2;
	int rc = tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g);
	CHECK_RC(rc, TOKEND_OK, "acquire EX");
	CHECK(g.fence != 0 && g.mode == TOKEND_EX, "grant fence %" PRIu64 " mode %d", g.fence, g.mode);
	CHECK(g.start == 0 && g.end == TOKEND_WHOLE_END, "whole range");
	CHECK(g.validity_ms > 0, "validity 0");
	CHECK(g.name_len == strlen(n) && memcmp(g.name, n, g.name_len) == 0, "grant name");
	uint32_t left;
	CHECK_RC(tokend_grant_check(c, &g, &left), TOKEND_OK, "grant_check");
	/* the same session's second EX conflicts too (grants, not owners, conflict) */
	rc = tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g2);
	CHECK_RC(rc, TOKEND_ECONFLICT, "second EX try");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_ENOTHELD, "release twice");
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_ENOTHELD, "grant_check after release");
	rc = tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g2);
	CHECK_RC(rc, TOKEND_OK, "reacquire");
	CHECK(g2.fence > g.fence, "fence did not grow: %" PRIu64 " then %" PRIu64, g.fence, g2.fence);
	/* bad arguments */
	CHECK_RC(tokend_acquire(c, n, 0, TOKEND_EX, 0, &g), TOKEND_EINVAL, "empty name");
	CHECK_RC(tokend_acquire(c, n, 256, TOKEND_EX, 0, &g), TOKEND_EINVAL, "long name");
	CHECK_RC(tokend_acquire(c, n, strlen(n), (tokend_mode)6, 0, &g), TOKEND_EINVAL, "bad mode");
	CHECK_RC(tokend_acquire_range(c, n, strlen(n), TOKEND_EX, 5, 5, 0, &g), TOKEND_EINVAL, "empty range");
	CHECK_RC(tokend_release(c, &g2, "x", 65), TOKEND_EINVAL, "value too long");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	/* close released everything: another client gets it at once */
	c = connect_plain();
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire after close");
	CHECK(g.fence > g2.fence, "fence after close");
	tokend_close(c);
}

struct releaser {
	tokend_client *c;
	tokend_grant g;
	int delay_ms;
	int rc;
};

static void *release_later(void *arg)
{
	struct releaser *r = arg;
	sleep_ms(r->delay_ms);
	r->rc = tokend_release(r->c, &r->g, NULL, 0);
	return NULL;
}

static void s_conflict(void)
{
	char n[128];
	name_of(n, sizeof n, "conflict");
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_grant ga, gb;
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &ga), TOKEND_OK, "A EX");
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, TOKEND_TRY, &gb), TOKEND_ECONFLICT, "B try");
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_PR, TOKEND_TRY, &gb), TOKEND_ECONFLICT, "B PR try");
	int64_t t0 = now_ms();
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 300, &gb), TOKEND_ETIMEDOUT, "B wait 300");
	int64_t took = now_ms() - t0;
	CHECK(took >= 250 && took < 2000, "wait 300 ms took %" PRId64 " ms", took);
	/* A releases in 300 ms while B waits */
	struct releaser r = {a, ga, 300, -99};
	pthread_t th;
	pthread_create(&th, NULL, release_later, &r);
	t0 = now_ms();
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 5000, &gb), TOKEND_OK, "B wait for release");
	took = now_ms() - t0;
	pthread_join(th, NULL);
	CHECK_RC(r.rc, TOKEND_OK, "A release");
	CHECK(took >= 200 && took < 3000, "B got it after %" PRId64 " ms", took);
	CHECK(gb.fence > ga.fence, "fence %" PRIu64 " after %" PRIu64, gb.fence, ga.fence);
	CHECK(gb.validity_ms > 0, "async grant without validity");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	tokend_close(a);
	tokend_close(b);
}

static void s_shared(void)
{
	char n[128];
	name_of(n, sizeof n, "shared");
	tokend_client *a = connect_plain(), *b = connect_plain(), *c = connect_plain();
	tokend_grant ga, gb, gc;
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_PR, TOKEND_TRY, &ga), TOKEND_OK, "A PR");
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_PR, TOKEND_TRY, &gb), TOKEND_OK, "B PR");
	CHECK(ga.fence != gb.fence, "two grants, one fence");
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_CR, TOKEND_TRY, &gc), TOKEND_OK, "C CR with PR holders");
	CHECK_RC(tokend_release(c, &gc, NULL, 0), TOKEND_OK, "C release CR");
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &gc), TOKEND_ECONFLICT, "C EX try");
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_PW, TOKEND_TRY, &gc), TOKEND_ECONFLICT, "C PW try");
	CHECK_RC(tokend_release(a, &ga, NULL, 0), TOKEND_OK, "A release");
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_EX, TOKEND_TRY, &gc), TOKEND_ECONFLICT, "C EX try, B holds");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_acquire(c, n, strlen(n), TOKEND_EX, 2000, &gc), TOKEND_OK, "C EX");
	tokend_close(a);
	tokend_close(b);
	tokend_close(c);
}

struct batcher {
	const char *x, *y, *z;
	int rounds, rc;
};

/* Batch x, y, z (listed in the caller's order) in EX, rounds times. */
static void *batch_rounds(void *arg)
{
	struct batcher *b = arg;
	tokend_client *c = connect_plain();
	tokend_batch_req r[3] = {{b->x, strlen(b->x), TOKEND_EX, 0, 0}, {b->y, strlen(b->y), TOKEND_EX, 0, 0},
				 {b->z, strlen(b->z), TOKEND_EX, 0, 0}};
	tokend_grant g[3];
	b->rc = TOKEND_OK;
	for (int i = 0; i < b->rounds && b->rc == TOKEND_OK; i++) {
		b->rc = tokend_acquire_batch(c, r, 3, 10000, g);
		for (int k = 0; k < 3 && b->rc == TOKEND_OK; k++)
			b->rc = tokend_release(c, &g[k], NULL, 0);
	}
	tokend_close(c);
	return NULL;
}

static void s_batch(void)
{
	char n1[128], n2[128], n3[128], n4[128];
	name_of(n1, sizeof n1, "batch1");
	name_of(n2, sizeof n2, "batch2");
	name_of(n3, sizeof n3, "batch3");
	name_of(n4, sizeof n4, "batch4");
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_batch_req ra[3] = {{n3, strlen(n3), TOKEND_EX, 0, 0}, {n1, strlen(n1), TOKEND_PR, 0, 0},
				  {n2, strlen(n2), TOKEND_EX, 0, 100}};
	tokend_grant ga[3], gb[3], g;
	CHECK_RC(tokend_acquire_batch(a, ra, 3, TOKEND_TRY, ga), TOKEND_OK, "A batch");
	CHECK(ga[0].mode == TOKEND_EX && ga[0].name_len == strlen(n3) && !memcmp(ga[0].name, n3, ga[0].name_len),
	      "grant 0 is not %s EX", n3);
	CHECK(ga[1].mode == TOKEND_PR && ga[2].start == 0 && ga[2].end == 100, "grants out of order");
	/* B: n4 free, n1 shared, n3 held EX: with TRY nothing is kept */
	tokend_batch_req rb[3] = {{n4, strlen(n4), TOKEND_EX, 0, 0}, {n1, strlen(n1), TOKEND_PR, 0, 0},
				  {n3, strlen(n3), TOKEND_EX, 0, 0}};
	CHECK_RC(tokend_acquire_batch(b, rb, 3, TOKEND_TRY, gb), TOKEND_ECONFLICT, "B batch try");
	CHECK_RC(tokend_acquire(a, n4, strlen(n4), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "B kept n4");
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "release n4");
	CHECK_RC(tokend_acquire_batch(b, rb, 0, TOKEND_TRY, gb), TOKEND_EINVAL, "empty batch");
	tokend_batch_req rbad[2] = {{n4, strlen(n4), TOKEND_EX, 0, 0}, {n1, strlen(n1), TOKEND_PR, 7, 7}};
	CHECK_RC(tokend_acquire_batch(b, rbad, 2, TOKEND_TRY, gb), TOKEND_EINVAL, "an entry's empty range");
	for (int k = 0; k < 3; k++)
		CHECK_RC(tokend_release(a, &ga[k], NULL, 0), TOKEND_OK, "A release");
	CHECK_RC(tokend_acquire_batch(b, rb, 3, 2000, gb), TOKEND_OK, "B batch after release");
	tokend_close(a);
	tokend_close(b);
	/* Two clients batch one set listed in opposite orders: the fixed
	 * order means neither waits for the other forever. */
	struct batcher x = {n1, n2, n3, 20, -99}, y = {n3, n2, n1, 20, -99};
	pthread_t tx, ty;
	pthread_create(&tx, NULL, batch_rounds, &x);
	pthread_create(&ty, NULL, batch_rounds, &y);
	pthread_join(tx, NULL);
	pthread_join(ty, NULL);
	CHECK_RC(x.rc, TOKEND_OK, "batcher x");
	CHECK_RC(y.rc, TOKEND_OK, "batcher y");
}

static void s_ranges(void)
{
	char n[128];
	name_of(n, sizeof n, "ranges");
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_grant g1, g2, g3;
	CHECK_RC(tokend_acquire_range(a, n, strlen(n), TOKEND_EX, 0, 100, TOKEND_TRY, &g1), TOKEND_OK, "A [0,100)");
	CHECK(g1.start == 0 && g1.end == 100, "range [%" PRIu64 ",%" PRIu64 ")", g1.start, g1.end);
	CHECK_RC(tokend_acquire_range(b, n, strlen(n), TOKEND_EX, 100, 200, TOKEND_TRY, &g2), TOKEND_OK,
		 "B [100,200)");
	CHECK_RC(tokend_acquire_range(b, n, strlen(n), TOKEND_EX, 50, 150, TOKEND_TRY, &g3), TOKEND_ECONFLICT,
		 "B [50,150)");
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_PR, TOKEND_TRY, &g3), TOKEND_ECONFLICT, "B whole PR");
	CHECK_RC(tokend_acquire_range(b, n, strlen(n), TOKEND_EX, 200, TOKEND_WHOLE_END, TOKEND_TRY, &g3), TOKEND_OK,
		 "B [200,end)");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "A release");
	CHECK_RC(tokend_acquire_range(a, n, strlen(n), TOKEND_EX, 50, 99, TOKEND_TRY, &g1), TOKEND_OK, "A [50,99)");
	tokend_close(a);
	tokend_close(b);
}

static void s_revoke(void)
{
	char n[128];
	name_of(n, sizeof n, "revoke");
	struct cb_state sa;
	cb_init(&sa);
	sa.release_on_revoke = 1;
	sa.wanted = (tokend_mode)-1;
	tokend_client *a = connect_cb(&sa), *b = connect_plain();
	tokend_grant ga, gb;
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &ga), TOKEND_OK, "A EX");
	int64_t t0 = now_ms();
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 5000, &gb), TOKEND_OK, "B EX after revoke");
	int64_t took = now_ms() - t0;
	CHECK(took < 3000, "revoke took %" PRId64 " ms", took);
	CHECK(gb.fence > ga.fence, "fence");
	/* The callback's release lets B in before the callback has returned
	 * and recorded it: wait for its bookkeeping. */
	int revokes = 0, rrc = -99;
	tokend_mode wanted = (tokend_mode)-1;
	for (int64_t t1 = now_ms(); now_ms() - t1 < 2000; sleep_ms(5)) {
		pthread_mutex_lock(&sa.mu);
		revokes = sa.revokes;
		rrc = sa.release_rc;
		wanted = sa.wanted;
		pthread_mutex_unlock(&sa.mu);
		if (revokes > 0)
			break;
	}
	sleep_ms(100); /* a duplicate REVOKE must not call back again */
	pthread_mutex_lock(&sa.mu);
	revokes = sa.revokes;
	pthread_mutex_unlock(&sa.mu);
	CHECK(revokes == 1, "%d revoke callbacks", revokes);
	CHECK(wanted == TOKEND_NL, "wanted mode %d", wanted);
	CHECK_RC(rrc, TOKEND_OK, "release from the callback");
	CHECK_RC(tokend_grant_check(a, &ga, NULL), TOKEND_ENOTHELD, "A's grant after revoke");
	tokend_close(b);
	tokend_close(a);
	pthread_mutex_destroy(&sa.mu);
}

static void s_convert(void)
{
	char n[128];
	name_of(n, sizeof n, "convert");
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_grant g, gb;
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "EX");
	uint64_t f0 = g.fence;
	CHECK_RC(tokend_convert(a, &g, TOKEND_PR, TOKEND_TRY, NULL, 0), TOKEND_OK, "EX -> PR");
	CHECK(g.mode == TOKEND_PR && g.fence == f0, "downgrade: mode %d fence %" PRIu64 " (was %" PRIu64 ")",
	      g.mode, g.fence, f0);
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_PR, TOKEND_TRY, &gb), TOKEND_OK, "B PR next to PR");
	CHECK_RC(tokend_convert(a, &g, TOKEND_EX, TOKEND_TRY, NULL, 0), TOKEND_ECONFLICT, "PR -> EX try, B holds");
	CHECK(g.mode == TOKEND_PR && g.fence == f0, "failed upgrade changed the grant");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_convert(a, &g, TOKEND_EX, 2000, NULL, 0), TOKEND_OK, "PR -> EX");
	CHECK(g.mode == TOKEND_EX && g.fence > f0, "upgrade: mode %d fence %" PRIu64, g.mode, g.fence);
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "release");
	tokend_close(a);
	tokend_close(b);
}

static void s_value(void)
{
	char n[128];
	name_of(n, sizeof n, "value");
	tokend_client *a = connect_plain();
	tokend_grant g;
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "PR");
	CHECK_RC(tokend_release(a, &g, "v", 1), TOKEND_EINVAL, "a reader sets the value");
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "release PR");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "EX");
	char v64[TOKEND_MAX_VALUE];
	memset(v64, 'v', sizeof v64);
	CHECK_RC(tokend_release(a, &g, v64, sizeof v64), TOKEND_OK, "release EX with a 64-byte value");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "PR again");
	CHECK(g.value_state == TOKEND_VALUE_VALID && g.value_len == sizeof v64 && memcmp(g.value, v64, sizeof v64) == 0,
	      "value state %d len %zu", g.value_state, g.value_len);
	tokend_close(a);
}

/* Many tokens and threads on one handle: the handle is thread-safe. */
struct worker_arg {
	tokend_client *c;
	int id;
	int fails;
};

/* Token cache on a handle with a thread and on one without. */
static void cache_stats(tokend_client *c, tokend_cache_stats *st)
{
	CHECK_RC(tokend_get_cache_stats(c, st), TOKEND_OK, "cache stats");
}

struct async_res {
	int calls, status;
	tokend_grant g;
};

static void async_done(tokend_client *c, int status, const tokend_grant *g, void *arg)
{
	struct async_res *r = arg;
	(void)c;
	r->calls++;
	r->status = status;
	if (g)
		r->g = *g;
}

static void pump(tokend_client *c, struct async_res *r)
{
	for (int64_t t0 = now_ms(); r->calls == 0 && now_ms() - t0 < 5000; sleep_ms(1))
		CHECK_RC(tokend_process(c), TOKEND_OK, "process");
	CHECK(r->calls == 1, "completion callback called %d times", r->calls);
}

struct cache_waiter {
	tokend_client *c;
	const char *name;
	int finished, rc;
	int pad;
	tokend_grant g;
};

static void *cache_wait(void *arg)
{
	struct cache_waiter *w = arg;
	w->rc = tokend_acquire(w->c, w->name, strlen(w->name), TOKEND_EX, 5000, &w->g);
	__atomic_store_n(&w->finished, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void s_cache(void)
{
	char n[128], n2[128], n3[128];
	name_of(n, sizeof n, "cache");
	name_of(n2, sizeof n2, "cache2");
	name_of(n3, sizeof n3, "cache3");
	struct cb_state sa;
	cb_init(&sa);
	tokend_client *a = connect_cb(&sa), *b = connect_plain();
	tokend_cache_stats st;
	tokend_grant g1, g2, gb;

	/* off by default: a release sends RELEASE, B gets the token at once */
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g1), TOKEND_OK, "A EX (no cache)");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "A release (no cache)");
	cache_stats(a, &st);
	CHECK(st.cached == 0 && st.misses == 0 && st.hits == 0, "cache off: cached %llu misses %llu",
	      (unsigned long long)st.cached, (unsigned long long)st.misses);
	CHECK_RC(tokend_token_cache(a, TOKEND_DEFAULT_TOKEN_CACHE, 0), TOKEND_OK, "cache on");

	/* release keeps it; the old copy is no longer held; re-acquires are hits with the same fence */
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g1), TOKEND_OK, "A EX");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "A release into the cache");
	cache_stats(a, &st);
	CHECK(st.cached == 1 && st.misses == 1, "cached %llu misses %llu", (unsigned long long)st.cached,
	      (unsigned long long)st.misses);
	CHECK_RC(tokend_grant_check(a, &g1, NULL), TOKEND_ENOTHELD, "a cached grant's old copy");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_ENOTHELD, "second release");
	CHECK_RC(tokend_convert(a, &g1, TOKEND_PR, TOKEND_TRY, NULL, 0), TOKEND_ENOTHELD, "convert a cached grant");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_PR, TOKEND_TRY, &g2), TOKEND_OK, "A PR from the cache");
	CHECK(g2.fence == g1.fence && g2.mode == TOKEND_EX, "hit: fence %llu mode %d, cached fence %llu",
	      (unsigned long long)g2.fence, g2.mode, (unsigned long long)g1.fence);
	CHECK(g2.validity_ms > 0, "hit with no validity");
	CHECK_RC(tokend_grant_check(a, &g2, NULL), TOKEND_OK, "a hit is held");
	CHECK_RC(tokend_release(a, &g2, NULL, 0), TOKEND_OK, "release the hit");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g2), TOKEND_OK, "A EX from the cache");
	CHECK(g2.fence == g1.fence, "second hit fence");
	cache_stats(a, &st);
	CHECK(st.hits == 2 && st.cached == 0, "hits %llu cached %llu", (unsigned long long)st.hits,
	      (unsigned long long)st.cached);

	/* a REVOKE of a cached grant is answered by the library; on_revoke is not called */
	CHECK_RC(tokend_release(a, &g2, NULL, 0), TOKEND_OK, "A release into the cache");
	int64_t t0 = now_ms();
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 5000, &gb), TOKEND_OK, "B EX while A has it cached");
	int64_t took = now_ms() - t0;
	CHECK(took < 3000, "B waited %lld ms", (long long)took);
	CHECK(gb.fence > g1.fence, "B's fence %llu after A's %llu", (unsigned long long)gb.fence,
	      (unsigned long long)g1.fence);
	cache_stats(a, &st);
	CHECK(st.revoked == 1 && st.cached == 0, "revoked %llu cached %llu", (unsigned long long)st.revoked,
	      (unsigned long long)st.cached);
	pthread_mutex_lock(&sa.mu);
	CHECK(sa.revokes == 0 && sa.losts == 0, "callbacks for a cached grant: %d revokes %d losts", sa.revokes,
	      sa.losts);
	pthread_mutex_unlock(&sa.mu);
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");

	/* a conflicting re-acquire is a miss: the cached PR grant is given back first, and a try
	 * then succeeds (it does not meet this session's own cached grant) */
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_PR, TOKEND_TRY, &g1), TOKEND_OK, "A PR");
	CHECK(g1.fence > gb.fence, "A's fence after B's");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "A release PR into the cache");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g2), TOKEND_OK, "A EX over its cached PR");
	CHECK(g2.fence > g1.fence, "EX fence %llu after the cached PR's %llu", (unsigned long long)g2.fence,
	      (unsigned long long)g1.fence);
	/* not cached: a release that sets the value, a byte range */
	CHECK_RC(tokend_release(a, &g2, "v", 1), TOKEND_OK, "release with a value");
	CHECK_RC(tokend_acquire_range(a, n2, strlen(n2), TOKEND_EX, 0, 10, TOKEND_TRY, &g1), TOKEND_OK, "range");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "release a range");
	cache_stats(a, &st);
	CHECK(st.cached == 0, "%llu cached after a value release and a range", (unsigned long long)st.cached);
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, TOKEND_TRY, &gb), TOKEND_OK, "B try: nothing cached");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");

	/* the count bound evicts the least recently released; max 0 gives back everything */
	CHECK_RC(tokend_token_cache(a, 2, 0), TOKEND_OK, "cache of 2");
	const char *names[3] = {n, n2, n3};
	tokend_grant gs[3];
	for (int i = 0; i < 3; i++)
		CHECK_RC(tokend_acquire(a, names[i], strlen(names[i]), TOKEND_EX, TOKEND_TRY, &gs[i]), TOKEND_OK, "EX");
	for (int i = 0; i < 3; i++)
		CHECK_RC(tokend_release(a, &gs[i], NULL, 0), TOKEND_OK, "release");
	cache_stats(a, &st);
	uint64_t ev = st.evictions;
	CHECK(st.cached == 2 && ev == 1, "cached %llu evictions %llu", (unsigned long long)st.cached,
	      (unsigned long long)ev);
	/* the evicted one (n, released first) is free for B at once */
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 2000, &gb), TOKEND_OK, "B EX of the evicted one");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_token_cache(a, 0, 0), TOKEND_OK, "cache off");
	cache_stats(a, &st);
	CHECK(st.cached == 0 && st.evictions == ev + 2, "off: cached %llu evictions %llu",
	      (unsigned long long)st.cached, (unsigned long long)st.evictions);

	/* idle time */
	CHECK_RC(tokend_token_cache(a, 16, 200), TOKEND_OK, "cache with 200 ms idle");
	CHECK_RC(tokend_acquire(a, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g1), TOKEND_OK, "A EX");
	CHECK_RC(tokend_release(a, &g1, NULL, 0), TOKEND_OK, "A release into the cache");
	for (t0 = now_ms(); now_ms() - t0 < 5000; sleep_ms(20)) {
		cache_stats(a, &st);
		if (st.cached == 0)
			break;
	}
	CHECK(st.cached == 0 && st.evictions == ev + 3, "idle: cached %llu evictions %llu",
	      (unsigned long long)st.cached, (unsigned long long)st.evictions);
	CHECK_RC(tokend_acquire(b, n, strlen(n), TOKEND_EX, 2000, &gb), TOKEND_OK, "B EX after the idle eviction");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	pthread_mutex_lock(&sa.mu);
	CHECK(sa.revokes == 0 && sa.losts == 0, "callbacks: %d revokes %d losts", sa.revokes, sa.losts);
	pthread_mutex_unlock(&sa.mu);
	tokend_close(a);

	/* a handle without a thread: asynchronous release into the cache, asynchronous hit */
	tokend_client *e = connect_flags(NULL, TOKEND_NO_THREAD);
	CHECK_RC(tokend_token_cache(e, 8, 0), TOKEND_OK, "cache on");
	CHECK_RC(tokend_acquire(e, n, strlen(n), TOKEND_EX, 2000, &g1), TOKEND_OK, "EX");
	struct async_res r1 = {0, -99, {0}}, r2 = {0, -99, {0}};
	CHECK_RC(tokend_release_async(e, &g1, NULL, 0, async_done, &r1, NULL), TOKEND_OK, "release_async");
	pump(e, &r1);
	CHECK_RC(r1.status, TOKEND_OK, "release_async into the cache");
	CHECK_RC(tokend_acquire_async(e, n, strlen(n), TOKEND_PW, 0, 0, TOKEND_TRY, async_done, &r2, NULL), TOKEND_OK,
		 "acquire_async");
	CHECK(r2.calls == 0, "completion called from within the start call");
	pump(e, &r2);
	CHECK_RC(r2.status, TOKEND_OK, "acquire_async from the cache");
	CHECK(r2.g.fence == g1.fence, "async hit fence %llu, cached %llu", (unsigned long long)r2.g.fence,
	      (unsigned long long)g1.fence);
	cache_stats(e, &st);
	CHECK(st.hits == 1, "async hits %llu", (unsigned long long)st.hits);
	CHECK_RC(tokend_release(e, &r2.g, NULL, 0), TOKEND_OK, "release into the cache");
	/* B's request revokes it; this handle answers from tokend_process */
	struct cache_waiter w = {b, n, 0, -99, 0, {0}};
	pthread_t th;
	CHECK(pthread_create(&th, NULL, cache_wait, &w) == 0, "thread");
	for (t0 = now_ms(); now_ms() - t0 < 6000; sleep_ms(1)) {
		CHECK_RC(tokend_process(e), TOKEND_OK, "process");
		if (__atomic_load_n(&w.finished, __ATOMIC_SEQ_CST))
			break;
	}
	pthread_join(th, NULL);
	CHECK_RC(w.rc, TOKEND_OK, "B EX while the no-thread handle has it cached");
	CHECK(w.g.fence > g1.fence, "B's fence after the cached one");
	CHECK_RC(tokend_release(b, &w.g, NULL, 0), TOKEND_OK, "B release");
	cache_stats(e, &st);
	CHECK(st.revoked == 1 && st.cached == 0, "no-thread: revoked %llu cached %llu", (unsigned long long)st.revoked,
	      (unsigned long long)st.cached);
	tokend_close(e);
	tokend_close(b);
	pthread_mutex_destroy(&sa.mu);
}

#define MiB (UINT64_C(1) << 20)

/* c's grant of n in mode, asked for [0, end) with TOKEND_ACQUIRE_GROW: n
 * has no other holder, so it has grown to the whole token. */
static void acquire_grown(tokend_client *c, const char *n, tokend_mode mode, uint64_t end, tokend_grant *g)
{
	char what[160];
	snprintf(what, sizeof what, "%s %s [0, %llu) with GROW", n, tokend_mode_name(mode), (unsigned long long)end);
	CHECK_RC(tokend_acquire_ex(c, n, strlen(n), mode, 0, end, TOKEND_TRY, TOKEND_ACQUIRE_GROW, g), TOKEND_OK, what);
	CHECK(g->start == 0 && g->end == TOKEND_WHOLE_END, "%s: grant [%llu, %llu), want it grown to the whole token",
	      what, (unsigned long long)g->start, (unsigned long long)g->end);
}

/* Growing grants (TOKEND_ACQUIRE_GROW) and partial releases. */
static void s_grow(void)
{
	char n[128], n2[128];
	name_of(n, sizeof n, "grow");
	name_of(n2, sizeof n2, "grow2");
	size_t len = strlen(n);
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_grant g, bad, gb, gb2, g3;
	CHECK_RC(tokend_acquire_ex(a, n, len, TOKEND_PW, 0, 4096, TOKEND_TRY, 0x2, &g), TOKEND_EINVAL, "unknown flag");
	acquire_grown(a, n, TOKEND_PW, 4096, &g);
	uint64_t f = g.fence;
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, MiB, 2 * MiB, TOKEND_TRY, &gb), TOKEND_ECONFLICT,
		 "B inside A's grown grant");

	/* not a prefix or suffix strictly inside: refused, nothing changes */
	bad = g;
	CHECK_RC(tokend_release_range(a, &bad, 10, 20), TOKEND_EINVAL, "a hole in the middle");
	CHECK_RC(tokend_release_range(a, &bad, 20, 10), TOKEND_EINVAL, "start >= end");
	CHECK_RC(tokend_release_range(NULL, &bad, 0, 10), TOKEND_EINVAL, "NULL handle");
	CHECK_RC(tokend_release_range(a, NULL, 0, 10), TOKEND_EINVAL, "NULL grant");
	CHECK(bad.start == 0 && bad.end == TOKEND_WHOLE_END && bad.fence == f, "a refused range changed the grant");

	/* the suffix goes back: B can take it, not the part A kept */
	CHECK_RC(tokend_release_range(a, &g, MiB, TOKEND_WHOLE_END), TOKEND_OK, "give back [1 MiB, whole)");
	CHECK(g.fence == f && g.start == 0 && g.end == MiB, "after the suffix: fence %llu [%llu, %llu)",
	      (unsigned long long)g.fence, (unsigned long long)g.start, (unsigned long long)g.end);
	CHECK_RC(tokend_grant_check(a, &g, NULL), TOKEND_OK, "A keeps the rest");
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, MiB, 2 * MiB, TOKEND_TRY, &gb), TOKEND_OK,
		 "B in the part given back");
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, MiB - 10, MiB, TOKEND_TRY, &gb2), TOKEND_ECONFLICT,
		 "B in the part A kept");
	/* then a prefix */
	CHECK_RC(tokend_release_range(a, &g, 0, 4096), TOKEND_OK, "give back [0, 4096)");
	CHECK(g.fence == f && g.start == 4096 && g.end == MiB, "after the prefix: [%llu, %llu)",
	      (unsigned long long)g.start, (unsigned long long)g.end);
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, 0, 4096, TOKEND_TRY, &gb2), TOKEND_OK, "B the prefix");
	bad = g;
	bad.start = 0;
	CHECK_RC(tokend_release_range(a, &bad, 0, 4096), TOKEND_EINVAL, "a part A no longer has");

	/* beside another holder, GROW grants what was asked */
	CHECK_RC(tokend_acquire_ex(a, n, len, TOKEND_PR, 10 * MiB, 11 * MiB, TOKEND_TRY, TOKEND_ACQUIRE_GROW, &g3),
		 TOKEND_OK, "A PR with GROW beside B");
	CHECK(g3.start == 10 * MiB && g3.end == 11 * MiB, "grew to [%llu, %llu) beside another holder",
	      (unsigned long long)g3.start, (unsigned long long)g3.end);
	CHECK_RC(tokend_release_range(a, &g3, 10 * MiB, 11 * MiB), TOKEND_OK, "a range equal to the grant's");
	CHECK_RC(tokend_grant_check(a, &g3, NULL), TOKEND_ENOTHELD, "released in full");
	CHECK_RC(tokend_release_range(a, &g3, 10 * MiB, 10 * MiB + 5), TOKEND_ENOTHELD, "range of a released grant");
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "A release");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_release(b, &gb2, NULL, 0), TOKEND_OK, "B release prefix");
	tokend_close(b);
	tokend_close(a);

	/* on_revoke shrinks a grown grant (from the callback: does not wait);
	 * the waiter gets its range, the holder keeps the rest */
	struct cb_state sa;
	cb_init(&sa);
	sa.shrink_on_revoke = 1;
	a = connect_cb(&sa);
	b = connect_plain();
	acquire_grown(a, n2, TOKEND_EX, 100, &g);
	CHECK_RC(tokend_acquire_range(b, n2, strlen(n2), TOKEND_EX, 5 * MiB, 6 * MiB, 5000, &gb), TOKEND_OK,
		 "B waits for a part of A's grant");
	/* (B's grant may come before the callback has noted what it did) */
	pthread_mutex_lock(&sa.mu);
	for (int64_t t0 = now_ms(); sa.revokes == 0 && now_ms() - t0 < 5000;) {
		pthread_mutex_unlock(&sa.mu);
		sleep_ms(5);
		pthread_mutex_lock(&sa.mu);
	}
	CHECK(sa.revokes >= 1 && sa.release_rc == TOKEND_OK && sa.shrunk_start == 0 && sa.shrunk_end == 5 * MiB,
	      "on_revoke: %d calls, release_range %s, kept [%llu, %llu)", sa.revokes, tokend_strerror(sa.release_rc),
	      (unsigned long long)sa.shrunk_start, (unsigned long long)sa.shrunk_end);
	pthread_mutex_unlock(&sa.mu);
	CHECK_RC(tokend_grant_check(a, &g, NULL), TOKEND_OK, "A keeps [0, 5 MiB)");
	CHECK_RC(tokend_acquire_range(b, n2, strlen(n2), TOKEND_EX, 0, 10, TOKEND_TRY, &gb2), TOKEND_ECONFLICT,
		 "B in the part A kept");
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "A release");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	tokend_close(b);
	tokend_close(a);
	pthread_mutex_destroy(&sa.mu);

	/* asynchronous acquire with GROW on a handle without a thread */
	tokend_client *e = connect_flags(NULL, TOKEND_NO_THREAD);
	struct async_res r1 = {0, -99, {0}};
	CHECK_RC(tokend_acquire_async_ex(e, n, len, TOKEND_PW, 0, 4096, TOKEND_TRY, 0x4, async_done, &r1, NULL),
		 TOKEND_EINVAL, "async: unknown flag");
	CHECK_RC(tokend_acquire_async_ex(e, n, len, TOKEND_PW, 0, 4096, TOKEND_TRY, TOKEND_ACQUIRE_GROW, async_done,
					 &r1, NULL),
		 TOKEND_OK, "acquire_async_ex with GROW");
	pump(e, &r1);
	CHECK_RC(r1.status, TOKEND_OK, "async GROW");
	CHECK(r1.g.start == 0 && r1.g.end == TOKEND_WHOLE_END, "async grant [%llu, %llu), want the whole token",
	      (unsigned long long)r1.g.start, (unsigned long long)r1.g.end);
	CHECK_RC(tokend_release_range(e, &r1.g, 0, MiB), TOKEND_OK, "no thread: give back a prefix");
	CHECK(r1.g.start == MiB && r1.g.end == TOKEND_WHOLE_END, "no thread: kept [%llu, %llu)",
	      (unsigned long long)r1.g.start, (unsigned long long)r1.g.end);
	CHECK_RC(tokend_release(e, &r1.g, NULL, 0), TOKEND_OK, "no thread: release");
	tokend_close(e);
}

/* The token cache splits a cached grown grant on a REVOKE of a prefix or
 * suffix of it, and gives it back whole for a hole in the middle. */
static void s_cachesplit(void)
{
	char n[128], n2[128];
	name_of(n, sizeof n, "split");
	name_of(n2, sizeof n2, "split2");
	size_t len = strlen(n);
	struct cb_state sa;
	cb_init(&sa);
	tokend_client *a = connect_cb(&sa), *b = connect_plain();
	tokend_cache_stats st;
	tokend_grant g, g2, gb, gb2;
	CHECK_RC(tokend_token_cache(a, TOKEND_DEFAULT_TOKEN_CACHE, 0), TOKEND_OK, "cache on");
	acquire_grown(a, n, TOKEND_PW, 4096, &g);
	uint64_t f = g.fence;
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "A release into the cache");
	cache_stats(a, &st);
	CHECK(st.cached == 1, "grown grant not cached (%llu)", (unsigned long long)st.cached);

	/* B wants the suffix from 1 MiB: A's cache gives back that part only */
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, MiB, TOKEND_WHOLE_END, 5000, &gb), TOKEND_OK,
		 "B the suffix while A has it cached");
	cache_stats(a, &st);
	CHECK(st.splits == 1 && st.revoked == 0 && st.cached == 1, "after the split: splits %llu revoked %llu cached %llu",
	      (unsigned long long)st.splits, (unsigned long long)st.revoked, (unsigned long long)st.cached);
	pthread_mutex_lock(&sa.mu);
	CHECK(sa.revokes == 0, "on_revoke called %d times for a cached grant", sa.revokes);
	pthread_mutex_unlock(&sa.mu);
	/* the rest is served locally, same fence, value unknown */
	CHECK_RC(tokend_acquire_range(a, n, len, TOKEND_PW, 4096, 8192, TOKEND_TRY, &g2), TOKEND_OK,
		 "A re-acquires inside the kept part");
	CHECK(g2.fence == f && g2.start == 0 && g2.end == MiB && g2.value_state == TOKEND_VALUE_UNKNOWN,
	      "hit: fence %llu (cached %llu) [%llu, %llu) value state %d", (unsigned long long)g2.fence,
	      (unsigned long long)f, (unsigned long long)g2.start, (unsigned long long)g2.end, g2.value_state);
	cache_stats(a, &st);
	CHECK(st.hits == 1 && st.cached == 0, "hits %llu cached %llu", (unsigned long long)st.hits,
	      (unsigned long long)st.cached);
	/* the worker still has the kept part as A's */
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, 0, 10, TOKEND_TRY, &gb2), TOKEND_ECONFLICT,
		 "B in the part A kept");
	/* released again it covers no longer the whole token: given back */
	CHECK_RC(tokend_release(a, &g2, NULL, 0), TOKEND_OK, "A release the split grant");
	cache_stats(a, &st);
	CHECK(st.cached == 0, "a split grant was cached again");
	CHECK_RC(tokend_acquire_range(b, n, len, TOKEND_PW, 0, 10, 2000, &gb2), TOKEND_OK, "B after A gave it back");
	CHECK_RC(tokend_release(b, &gb2, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release the suffix");

	/* a hole in the middle: the whole grant goes back */
	acquire_grown(a, n2, TOKEND_EX, 10, &g);
	CHECK_RC(tokend_release(a, &g, NULL, 0), TOKEND_OK, "into the cache");
	CHECK_RC(tokend_acquire_range(b, n2, strlen(n2), TOKEND_EX, 100, 200, 5000, &gb), TOKEND_OK,
		 "B in the middle");
	cache_stats(a, &st);
	CHECK(st.splits == 1 && st.revoked == 1 && st.cached == 0, "middle: splits %llu revoked %llu cached %llu",
	      (unsigned long long)st.splits, (unsigned long long)st.revoked, (unsigned long long)st.cached);
	CHECK_RC(tokend_acquire_range(b, n2, strlen(n2), TOKEND_EX, 0, 10, TOKEND_TRY, &gb2), TOKEND_OK,
		 "B where A's grant was");
	CHECK_RC(tokend_release(b, &gb2, NULL, 0), TOKEND_OK, "B release");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "B release");
	tokend_close(b);
	tokend_close(a);
	pthread_mutex_destroy(&sa.mu);
}

/* n names of one shard (shard count `shards`), "<base><i>/<suffix>": of
 * shard `want`, or (want < 0) of the first name's. */
static void same_shard(char names[][128], int n, const char *base, uint32_t shards, int64_t want)
{
	int k = 0;
	for (int i = 0; k < n && i < 100000; i++) {
		char cand[128];
		snprintf(cand, sizeof cand, "%s%d/%s", base, i, suffix);
		int64_t s = (int64_t)(tokend_hash(cand, strlen(cand)) % shards);
		if (want < 0)
			want = s;
		if (s == want)
			snprintf(names[k++], 128, "%s", cand);
	}
	CHECK(k == n, "only %d names of one shard", k);
}

static void p_batchwire(uint32_t shards)
{
	char names[10][128];
	same_shard(names, 10, "bw", shards, -1);
	tokend_batch_req r[10];
	tokend_grant g[10];
	for (int i = 0; i < 10; i++)
		r[i] = (tokend_batch_req){names[i], strlen(names[i]), i % 2 ? TOKEND_PR : TOKEND_EX, 0, 0};
	CHECK_RC(tokend_acquire_batch(NULL, r, 10, TOKEND_TRY, g), TOKEND_EINVAL, "NULL handle");
	tokend_client *a = connect_plain(), *b = connect_plain();
	CHECK_RC(tokend_acquire_batch(a, r, 10, TOKEND_TRY, g), TOKEND_OK, "batch of 10 of one shard");
	/* (then B's batch of 2, which conflicts: a try's conflict is final) */
	for (int i = 0; i < 10; i++) {
		CHECK(g[i].name_len == strlen(names[i]) && !memcmp(g[i].name, names[i], g[i].name_len) &&
			      g[i].mode == r[i].mode,
		      "grant %d is not the request's", i);
		CHECK_RC(tokend_grant_check(a, &g[i], NULL), TOKEND_OK, "batch grant held");
		for (int j = 0; j < i; j++)
			CHECK(g[i].fence != g[j].fence, "one fence twice");
	}
	tokend_grant x[2];
	tokend_batch_req rb[2] = {r[0], r[9]};
	rb[1].mode = TOKEND_EX;
	CHECK_RC(tokend_acquire_batch(b, rb, 2, TOKEND_TRY, x), TOKEND_ECONFLICT, "another client while A holds them");
	for (int i = 0; i < 10; i++)
		CHECK_RC(tokend_release(a, &g[i], NULL, 0), TOKEND_OK, "release");
	tokend_close(b);
	tokend_close(a);
}

struct fall {
	tokend_client *c;
	tokend_batch_req *r;
	int n, rc;
	int64_t done_at;
	tokend_grant g[4];
};

static void *fall_batch(void *arg)
{
	struct fall *f = arg;
	f->rc = tokend_acquire_batch(f->c, f->r, f->n, 10000, f->g);
	f->done_at = now_ms();
	return NULL;
}

static void p_batchfall(uint32_t shards)
{
	char names[4][128];
	same_shard(names, 4, "bf", shards, -1);
	tokend_batch_req r[4];
	for (int i = 0; i < 4; i++)
		r[i] = (tokend_batch_req){names[i], strlen(names[i]), TOKEND_EX, 0, 0};
	tokend_client *a = connect_plain(), *b = connect_plain();
	tokend_grant held, x;
	CHECK_RC(tokend_acquire(b, names[2], strlen(names[2]), TOKEND_EX, TOKEND_TRY, &held), TOKEND_OK, "B holds one");
	/* a try conflicts and keeps nothing */
	tokend_grant g[4];
	CHECK_RC(tokend_acquire_batch(a, r, 4, TOKEND_TRY, g), TOKEND_ECONFLICT, "batch try beside B");
	CHECK_RC(tokend_acquire(b, names[0], strlen(names[0]), TOKEND_EX, TOKEND_TRY, &x), TOKEND_OK,
		 "the failed try kept nothing");
	CHECK_RC(tokend_release(b, &x, NULL, 0), TOKEND_OK, "release");
	/* a wait falls back to one by one and succeeds once B lets go */
	struct fall f = {a, r, 4, -99, 0, {{0}}};
	pthread_t th;
	CHECK(pthread_create(&th, NULL, fall_batch, &f) == 0, "thread");
	sleep_ms(1000); /* (the batch is sent meanwhile: the driver counts its CONFLICT) */
	int64_t let_go = now_ms();
	CHECK_RC(tokend_release(b, &held, NULL, 0), TOKEND_OK, "B lets go");
	pthread_join(th, NULL);
	CHECK_RC(f.rc, TOKEND_OK, "batch after the conflict went away");
	CHECK(f.done_at >= let_go, "the batch returned %lld ms before B let go", (long long)(let_go - f.done_at));
	for (int i = 0; i < 4; i++)
		CHECK_RC(tokend_release(a, &f.g[i], NULL, 0), TOKEND_OK, "release");
	tokend_close(b);
	tokend_close(a);
}

static void p_batchlate(uint32_t shards, int shard, const char *go)
{
	char names[3][128];
	same_shard(names, 3, "bl", shards, shard);
	tokend_batch_req r[3];
	tokend_grant g[3];
	for (int i = 0; i < 3; i++)
		r[i] = (tokend_batch_req){names[i], strlen(names[i]), TOKEND_EX, 0, 0};
	const char *seeds[1] = {addr};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	o.connect_timeout_ms = 1000; /* a try's limit */
	tokend_client *a = NULL;
	CHECK_RC(tokend_connect(&o, &a), TOKEND_OK, "connect");
	CHECK_RC(tokend_acquire_batch(a, r, 3, TOKEND_TRY, g), TOKEND_ETIMEDOUT, "batch to a muted worker");
	printf("timed out\nnames %s %s %s\n", names[0], names[1], names[2]);
	for (int64_t t0 = now_ms(); access(go, F_OK) != 0; sleep_ms(10))
		CHECK(now_ms() - t0 < 30000, "no %s within 30 s", go);
	/* the late grants were given back: the same batch gets them (a try's
	 * conflict with a grant still on its way back is asked again) */
	int rc = TOKEND_ECONFLICT;
	for (int64_t t0 = now_ms(); rc != TOKEND_OK && now_ms() - t0 < 10000; sleep_ms(20))
		rc = tokend_acquire_batch(a, r, 3, TOKEND_TRY, g);
	CHECK_RC(rc, TOKEND_OK, "the batch again");
	for (int i = 0; i < 3; i++)
		CHECK_RC(tokend_release(a, &g[i], NULL, 0), TOKEND_OK, "release");
	printf("rebatched\n");
	tokend_close(a);
}

static void *many_worker(void *arg)
{
	struct worker_arg *w = arg;
	for (int i = 0; i < 40; i++) {
		char n[128];
		snprintf(n, sizeof n, "many/%s/%d", suffix, (w->id * 7 + i) % 10);
		tokend_grant g;
		int rc = tokend_acquire(w->c, n, strlen(n), TOKEND_EX, 5000, &g);
		if (rc != TOKEND_OK) {
			printf("many: thread %d acquire %s: %s\n", w->id, n, tokend_strerror(rc));
			w->fails++;
			continue;
		}
		if (tokend_release(w->c, &g, NULL, 0) != TOKEND_OK)
			w->fails++;
	}
	return NULL;
}

static void s_many(void)
{
	tokend_client *c = connect_plain();
	pthread_t th[4];
	struct worker_arg w[4];
	for (int i = 0; i < 4; i++) {
		w[i].c = c;
		w[i].id = i;
		w[i].fails = 0;
		pthread_create(&th[i], NULL, many_worker, &w[i]);
	}
	int fails = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		fails += w[i].fails;
	}
	CHECK(fails == 0, "%d failures", fails);
	tokend_close(c);
}

static void p_hold(const char *name, int ms)
{
	tokend_client *c = connect_plain();
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_WAIT_FOREVER, &g), TOKEND_OK, "hold acquire");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	sleep_ms(ms);
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_OK, "still valid after holding");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "hold release");
	printf("released\n");
	tokend_close(c);
}

static void p_wait(const char *name, int ms)
{
	tokend_client *c = connect_plain();
	tokend_grant g;
	int64_t t0 = now_ms();
	int rc = tokend_acquire(c, name, strlen(name), TOKEND_EX, ms, &g);
	CHECK_RC(rc, TOKEND_OK, "wait acquire");
	printf("fence %" PRIu64 " ms %" PRId64 "\n", g.fence, now_ms() - t0);
	tokend_release(c, &g, NULL, 0);
	tokend_close(c);
}

static void p_fences(const char *name, int n)
{
	tokend_client *c = connect_plain();
	uint64_t last = 0;
	for (int i = 0; i < n; i++) {
		tokend_grant g;
		CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, 10000, &g), TOKEND_OK, "fences acquire");
		CHECK(g.fence > last, "fence %" PRIu64 " after %" PRIu64, g.fence, last);
		last = g.fence;
		printf("fence %" PRIu64 "\n", g.fence);
		fflush(stdout);
		CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "fences release");
	}
	tokend_close(c);
}

static void p_lost(const char *name, int ms)
{
	struct cb_state s;
	cb_init(&s);
	tokend_client *c = connect_cb(&s);
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "lost acquire");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	int64_t t0 = now_ms();
	int losts = 0;
	while (now_ms() - t0 < ms) {
		pthread_mutex_lock(&s.mu);
		losts = s.losts;
		pthread_mutex_unlock(&s.mu);
		if (losts)
			break;
		sleep_ms(20);
	}
	CHECK(losts == 1, "lost callback not called within %d ms", ms);
	int rc = tokend_grant_check(c, &g, NULL);
	CHECK(rc == TOKEND_ELOST, "grant_check after loss: %s", tokend_strerror(rc));
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_ELOST, "release a lost grant");
	printf("lost after %" PRId64 " ms\n", now_ms() - t0);
	tokend_close(c);
	pthread_mutex_destroy(&s.mu);
}

static void p_stuck(const char *name, const char *other)
{
	struct cb_state s;
	cb_init(&s);
	tokend_client *c = connect_cb(&s);
	tokend_grant g, g2;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "stuck acquire");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	sleep_ms(300);
	int64_t t0 = now_ms();
	int rc = tokend_release(c, &g, NULL, 0);
	int64_t took = now_ms() - t0;
	CHECK_RC(rc, TOKEND_ELOST, "release on an unreachable worker");
	CHECK(took < 8000, "release took %" PRId64 " ms", took);
	pthread_mutex_lock(&s.mu);
	int losts = s.losts;
	pthread_mutex_unlock(&s.mu);
	CHECK(losts == 0, "lost callback for a grant being released");
	CHECK(tokend_session_id(c) != 0, "the session should live on");
	CHECK_RC(tokend_acquire(c, other, strlen(other), TOKEND_EX, 5000, &g2), TOKEND_OK, "acquire on a live worker");
	CHECK_RC(tokend_release(c, &g2, NULL, 0), TOKEND_OK, "release on a live worker");
	printf("release gave up after %" PRId64 " ms\n", took);
	tokend_close(c);
	pthread_mutex_destroy(&s.mu);
}

static void p_survive(const char *name, int ms)
{
	struct cb_state s;
	cb_init(&s);
	tokend_client *c = connect_cb(&s);
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "survive acquire");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	sleep_ms(ms);
	/* after the fault the grant must come back (keepalive or reclaim) */
	int64_t t0 = now_ms();
	int rc;
	while ((rc = tokend_grant_check(c, &g, NULL)) == TOKEND_EJEOPARDY && now_ms() - t0 < 5000)
		sleep_ms(20);
	CHECK_RC(rc, TOKEND_OK, "grant after the fault");
	pthread_mutex_lock(&s.mu);
	int losts = s.losts;
	pthread_mutex_unlock(&s.mu);
	CHECK(losts == 0, "lost callback called");
	/* the session still works for new grants */
	char other[300];
	snprintf(other, sizeof other, "%s/other", name);
	tokend_grant g2;
	CHECK_RC(tokend_acquire(c, other, strlen(other), TOKEND_EX, 5000, &g2), TOKEND_OK, "acquire after the fault");
	/* (fences are per token: g2 may even equal g.fence, in another shard) */
	CHECK_RC(tokend_release(c, &g2, NULL, 0), TOKEND_OK, "release the new grant");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release the surviving grant");
	printf("survived\n");
	tokend_close(c);
	pthread_mutex_destroy(&s.mu);
}

/* A grant cached while the driver crashes or moves its worker: it is
 * reclaimed like a held one, and the re-acquire after the fault is served
 * from the cache with the same fence (printed "hit"), or, if the cache had
 * to drop it, granted anew with a larger one ("refetched"); never an error,
 * never a callback. */
static void p_cached(const char *name, int ms)
{
	struct cb_state s;
	cb_init(&s);
	tokend_client *c = connect_cb(&s);
	CHECK_RC(tokend_token_cache(c, 16, 60000), TOKEND_OK, "cache on");
	tokend_grant g, g2;
	tokend_cache_stats st;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "cached acquire");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release into the cache");
	CHECK_RC(tokend_get_cache_stats(c, &st), TOKEND_OK, "stats");
	CHECK(st.cached == 1, "%llu cached", (unsigned long long)st.cached);
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	sleep_ms(ms);
	int rc = TOKEND_ETIMEDOUT;
	for (int64_t t0 = now_ms(); now_ms() - t0 < 8000; sleep_ms(50)) {
		rc = tokend_acquire(c, name, strlen(name), TOKEND_EX, 5000, &g2);
		if (rc == TOKEND_OK)
			break;
	}
	CHECK_RC(rc, TOKEND_OK, "re-acquire after the fault");
	CHECK_RC(tokend_grant_check(c, &g2, NULL), TOKEND_OK, "the re-acquired grant");
	CHECK(g2.fence >= g.fence, "fence %llu after %llu", (unsigned long long)g2.fence, (unsigned long long)g.fence);
	CHECK_RC(tokend_get_cache_stats(c, &st), TOKEND_OK, "stats");
	printf("%s hits %llu\n", g2.fence == g.fence ? "hit" : "refetched", (unsigned long long)st.hits);
	CHECK_RC(tokend_release(c, &g2, NULL, 0), TOKEND_OK, "release into the cache again");
	/* another client's request is answered by the cache at the new owner */
	tokend_client *b = connect_plain();
	tokend_grant gb;
	CHECK_RC(tokend_acquire(b, name, strlen(name), TOKEND_EX, 5000, &gb), TOKEND_OK, "other client after the fault");
	CHECK(gb.fence > g2.fence, "other client's fence");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "other client's release");
	tokend_close(b);
	pthread_mutex_lock(&s.mu);
	CHECK(s.revokes == 0 && s.losts == 0 && s.jeopardies == 0, "callbacks for a cached grant: %d revokes %d losts %d "
	      "jeopardies", s.revokes, s.losts, s.jeopardies);
	pthread_mutex_unlock(&s.mu);
	printf("survived\n");
	tokend_close(c);
	pthread_mutex_destroy(&s.mu);
}

/* A cached grant whose worker stops vouching for it (the driver mutes the
 * worker after "fence F" and unmutes it later) is not handed out once its
 * validity is below what acquire promises: the re-acquire after MS ms is a
 * miss and gets a new, larger fence ("fresh F2"). */
static void p_cachedfresh(const char *name, int ms)
{
	tokend_client *c = connect_plain();
	CHECK_RC(tokend_token_cache(c, 16, 60000), TOKEND_OK, "cache on");
	tokend_grant g, g2;
	tokend_cache_stats st;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release into the cache");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	sleep_ms(ms);
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, 10000, &g2), TOKEND_OK, "re-acquire");
	CHECK(g2.fence > g.fence, "a cached grant in doubt was handed out: fence %llu, cached %llu",
	      (unsigned long long)g2.fence, (unsigned long long)g.fence);
	CHECK_RC(tokend_get_cache_stats(c, &st), TOKEND_OK, "stats");
	CHECK(st.hits == 0, "%llu hits", (unsigned long long)st.hits);
	printf("fresh %" PRIu64 "\n", g2.fence);
	CHECK_RC(tokend_release(c, &g2, NULL, 0), TOKEND_OK, "release");
	tokend_close(c);
}

/* A grant after a long wait in the queue is valid on return (SPEC 13,
 * "asynchronous grant"; issue 11), stays valid, and is never reported lost. */
static void p_longwait(const char *name, int hold_ms, int w_ms)
{
	struct cb_state s;
	cb_init(&s);
	tokend_client *holder = connect_plain(), *c = connect_cb(&s);
	tokend_grant h, g;
	CHECK_RC(tokend_acquire(holder, name, strlen(name), TOKEND_EX, TOKEND_TRY, &h), TOKEND_OK, "holder acquire");
	struct releaser r = {holder, h, hold_ms, -99};
	pthread_t th;
	pthread_create(&th, NULL, release_later, &r);
	int64_t t0 = now_ms();
	int rc = tokend_acquire(c, name, strlen(name), TOKEND_EX, (int64_t)hold_ms * 2 + 10000, &g);
	int64_t waited = now_ms() - t0;
	uint32_t left = 0;
	int check = rc == TOKEND_OK ? tokend_grant_check(c, &g, &left) : rc;
	pthread_join(th, NULL);
	CHECK_RC(r.rc, TOKEND_OK, "holder release");
	CHECK_RC(rc, TOKEND_OK, "waiter acquire");
	printf("validity %" PRIu32 " ms after waiting %" PRId64 " ms (grant says %" PRIu32 " ms)\n", left, waited,
	       g.validity_ms);
	CHECK(waited >= hold_ms - 100, "granted after %" PRId64 " ms, before the holder let go", waited);
	CHECK_RC(check, TOKEND_OK, "grant_check on return");
	CHECK(left > (uint32_t)w_ms / 4, "only %" PRIu32 " ms left on return (W %d ms)", left, w_ms);
	CHECK(g.fence > h.fence, "fence %" PRIu64 " after %" PRIu64, g.fence, h.fence);
	/* renewed by keepalives from here on */
	for (int64_t t1 = now_ms(); now_ms() - t1 < hold_ms / 3; sleep_ms(100)) {
		rc = tokend_grant_check(c, &g, &left);
		CHECK_RC(rc, TOKEND_OK, "grant_check while held");
		CHECK(left > 0, "no validity left while held");
	}
	pthread_mutex_lock(&s.mu);
	int losts = s.losts;
	pthread_mutex_unlock(&s.mu);
	CHECK(losts == 0, "on_lost called %d times", losts);
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release after the long wait");
	tokend_close(c);
	tokend_close(holder);
	pthread_mutex_destroy(&s.mu);
}

/* A batch over two shards, a's first in the order, b's held by another
 * client for hold_ms: the harness keeps a's worker from vouching while b
 * waits, so a's grant ages; tokend_acquire_batch returns it only once its
 * worker vouched again, valid for more than W/3. */
static void p_batchconfirm(const char *a, const char *b, int hold_ms, int w_ms)
{
	tokend_client *holder = connect_plain(), *c = connect_plain();
	tokend_grant h, g[2];
	CHECK_RC(tokend_acquire(holder, b, strlen(b), TOKEND_EX, TOKEND_TRY, &h), TOKEND_OK, "holder acquire");
	printf("holding\n");
	fflush(stdout);
	struct releaser r = {holder, h, hold_ms, -99};
	pthread_t th;
	pthread_create(&th, NULL, release_later, &r);
	tokend_batch_req reqs[2] = {
		{.name = a, .name_len = strlen(a), .mode = TOKEND_EX},
		{.name = b, .name_len = strlen(b), .mode = TOKEND_EX},
	};
	int rc = tokend_acquire_batch(c, reqs, 2, 20000, g);
	uint32_t left = 0;
	int check = rc == TOKEND_OK ? tokend_grant_check(c, &g[0], &left) : rc;
	pthread_join(th, NULL);
	CHECK_RC(r.rc, TOKEND_OK, "holder release");
	CHECK_RC(rc, TOKEND_OK, "batch");
	printf("validity %" PRIu32 " ms of a on return\n", left);
	CHECK_RC(check, TOKEND_OK, "grant_check of a on return");
	CHECK(left > (uint32_t)w_ms / 3, "a returned with %" PRIu32 " ms left (W %d ms): not confirmed", left, w_ms);
	CHECK_RC(tokend_release(c, &g[0], NULL, 0), TOKEND_OK, "release a");
	CHECK_RC(tokend_release(c, &g[1], NULL, 0), TOKEND_OK, "release b");
	tokend_close(c);
	tokend_close(holder);
}

struct waiter {
	tokend_client *c;
	const char *name;
	tokend_grant g;
	int rc;
};

static void *wait_for(void *arg)
{
	struct waiter *w = arg;
	w->rc = tokend_acquire(w->c, w->name, strlen(w->name), TOKEND_EX, 60000, &w->g);
	return NULL;
}

/* While one request of the client waits in a queue, n more operations:
 * the ack skips the queued request (SPEC 11), so none is refused LIMIT
 * however small the worker's reply cache. */
static void p_pinned(const char *name, int n)
{
	tokend_client *holder = connect_plain(), *c = connect_plain();
	tokend_grant h;
	CHECK_RC(tokend_acquire(holder, name, strlen(name), TOKEND_EX, TOKEND_TRY, &h), TOKEND_OK, "holder acquire");
	struct waiter w = {c, name, {0}, -99};
	pthread_t th;
	pthread_create(&th, NULL, wait_for, &w);
	sleep_ms(300); /* let it queue: an operation before that only holds the ack back a little longer */
	char other[64];
	snprintf(other, sizeof other, "%s-op", name);
	for (int i = 0; i < n; i++) {
		tokend_grant g;
		CHECK_RC(tokend_acquire(c, other, strlen(other), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire while queued");
		CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release while queued");
	}
	printf("done %d\n", n);
	CHECK_RC(tokend_release(holder, &h, NULL, 0), TOKEND_OK, "holder release");
	pthread_join(th, NULL);
	CHECK_RC(w.rc, TOKEND_OK, "waiter acquire");
	CHECK(w.g.fence > h.fence, "fence %" PRIu64 " after %" PRIu64, w.g.fence, h.fence);
	CHECK_RC(tokend_release(c, &w.g, NULL, 0), TOKEND_OK, "waiter release");
	tokend_close(c);
	tokend_close(holder);
}

/* on_jeopardy comes before on_lost when a grant's worker stops answering,
 * and says "recovered" when it answers again in time. */
static void p_jeopardy(const char *name, const char *mode)
{
	int recover = !strcmp(mode, "recover");
	struct cb_state s;
	cb_init(&s);
	tokend_client *c = connect_cb(&s);
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, name, strlen(name), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "jeopardy acquire");
	printf("fence %" PRIu64 "\n", g.fence);
	fflush(stdout);
	int64_t t0 = now_ms();
	char order[sizeof s.order];
	for (;;) {
		pthread_mutex_lock(&s.mu);
		memcpy(order, s.order, sizeof order);
		int done = recover ? s.recoveries > 0 : s.losts > 0;
		pthread_mutex_unlock(&s.mu);
		if (done)
			break;
		CHECK(now_ms() - t0 < 20000, "no %s within 20 s; callbacks so far \"%s\"", recover ? "recovery" : "loss",
		      order);
		sleep_ms(10);
	}
	CHECK(!strcmp(order, recover ? "jr" : "jl"), "callbacks in order \"%s\"", order);
	if (recover) {
		/* a renewed grant: valid again, and not lost meanwhile */
		CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_OK, "grant after recovery");
		CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release after recovery");
		printf("jeopardy with %" PRIu32 " ms left, then recovered\n", s.jeopardy_left);
	} else {
		CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_ELOST, "grant after loss");
		printf("jeopardy with %" PRIu32 " ms left, lost %" PRId64 " ms later\n", s.jeopardy_left,
		       s.lost_at - s.jeopardy_at);
	}
	tokend_close(c);
	pthread_mutex_destroy(&s.mu);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s HOST:PORT scenario [args]\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	addr = argv[1];
	snprintf(suffix, sizeof suffix, "%ld-%ld", (long)getpid(), (long)time(NULL));
	const char *s = argv[2];
	if (!strcmp(s, "basic"))
		s_basic();
	else if (!strcmp(s, "conflict"))
		s_conflict();
	else if (!strcmp(s, "shared"))
		s_shared();
	else if (!strcmp(s, "ranges"))
		s_ranges();
	else if (!strcmp(s, "batch"))
		s_batch();
	else if (!strcmp(s, "revoke"))
		s_revoke();
	else if (!strcmp(s, "convert"))
		s_convert();
	else if (!strcmp(s, "value"))
		s_value();
	else if (!strcmp(s, "many"))
		s_many();
	else if (!strcmp(s, "cache"))
		s_cache();
	else if (!strcmp(s, "grow"))
		s_grow();
	else if (!strcmp(s, "cachesplit"))
		s_cachesplit();
	else if (!strcmp(s, "batchwire") && argc == 4)
		p_batchwire((uint32_t)atoi(argv[3]));
	else if (!strcmp(s, "batchfall") && argc == 4)
		p_batchfall((uint32_t)atoi(argv[3]));
	else if (!strcmp(s, "batchlate") && argc == 6)
		p_batchlate((uint32_t)atoi(argv[3]), atoi(argv[4]), argv[5]);
	else if (!strcmp(s, "hold") && argc == 5)
		p_hold(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "wait") && argc == 5)
		p_wait(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "fences") && argc == 5)
		p_fences(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "lost") && argc == 5)
		p_lost(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "stuck") && argc == 5)
		p_stuck(argv[3], argv[4]);
	else if (!strcmp(s, "survive") && argc == 5)
		p_survive(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "cached") && argc == 5)
		p_cached(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "cachedfresh") && argc == 5)
		p_cachedfresh(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "jeopardy") && argc == 5)
		p_jeopardy(argv[3], argv[4]);
	else if (!strcmp(s, "pinned") && argc == 5)
		p_pinned(argv[3], atoi(argv[4]));
	else if (!strcmp(s, "longwait") && argc == 6)
		p_longwait(argv[3], atoi(argv[4]), atoi(argv[5]));
	else if (!strcmp(s, "batchconfirm") && argc == 7)
		p_batchconfirm(argv[3], argv[4], atoi(argv[5]), atoi(argv[6]));
	else {
		fprintf(stderr, "unknown scenario %s\n", s);
		return 2;
	}
	printf("ok %s\n", s);
	return 0;
}
