/*
 * evloop.c - handles without a background thread (TOKEND_NO_THREAD): the
 * asynchronous API driven by one thread's poll() loop. Driven by
 * clientlib/ctest (Go), against fake workers and a real tokend; usable by
 * hand:
 *
 *   tokend-evloop HOST:PORT many      64 acquires of distinct tokens in flight at once from one
 *                                     thread, all granted (distinct fences, valid), then all
 *                                     released asynchronously; then TOKEND_MAX_ASYNC in flight
 *                                     and one more refused with TOKEND_ELIMIT
 *   tokend-evloop HOST:PORT queued    an async acquire queued behind another client's grant is
 *                                     granted when that client releases (GRANT_ASYNC); then the
 *                                     other client waits for it: on_revoke on the loop's thread
 *                                     releases from the callback
 *   tokend-evloop HOST:PORT cancel    a queued async acquire withdrawn with tokend_cancel_async
 *                                     (TOKEND_ECANCELED, nothing held afterwards)
 *   tokend-evloop HOST:PORT convert   async upgrade (new fence) and downgrade (same fence); the
 *                                     blocking calls on a no-thread handle
 *   tokend-evloop HOST:PORT keepalive MS
 *                                     hold a grant MS ms with only tokend_timeout/tokend_process
 *                                     driving the handle: still valid, same session, no on_lost
 *                                     or on_jeopardy
 *   tokend-evloop HOST:PORT expire TTL
 *                                     the loop stops turning for 2 TTL ms (the session TTL): on_lost
 *                                     from the next tokend_process, then the next async acquire
 *                                     opens a new session
 *   tokend-evloop HOST:PORT close     close with acquires queued and releases in flight: every
 *                                     callback called with TOKEND_ECLOSED, the grants released
 *   tokend-evloop HOST:PORT badargs   bad arguments and misuse give clear statuses
 *
 * Every scenario prints "ok <scenario>" and exits 0, or prints "FAIL: ..."
 * and exits 1. Token names get a per-run suffix so that runs do not collide.
 */
#define _POSIX_C_SOURCE 200809L
#include "../tokend.h"
#include "check.h"

#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *addr;
static char suffix[32];

static void name_of(char *buf, size_t cap, const char *base, int i)
{
	snprintf(buf, cap, "%s-%d/%s", base, i, suffix);
}

/* What the loop's callbacks saw (one thread: no lock). */
struct seen {
	int revokes, losts, jeopardies;
	int release_on_revoke, release_rc;
	tokend_client *c;
};

static void on_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted, uint64_t start, uint64_t end,
		      void *arg)
{
	struct seen *s = arg;
	(void)wanted, (void)start, (void)end;
	s->revokes++;
	if (s->release_on_revoke)
		s->release_rc = tokend_release(c, g, NULL, 0); /* does not wait from a callback */
}

static void on_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	struct seen *s = arg;
	(void)c, (void)g, (void)why;
	s->losts++;
}

static void on_jeopardy(tokend_client *c, const tokend_grant *g, int recovered, void *arg)
{
	struct seen *s = arg;
	(void)c, (void)g, (void)recovered;
	s->jeopardies++;
}

static tokend_client *connect_flags(unsigned flags, struct seen *s)
{
	const char *seeds[1] = {addr};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	if (s) {
		o.on_revoke = on_revoke;
		o.on_lost = on_lost;
		o.on_jeopardy = on_jeopardy;
		o.cb_arg = s;
	}
	char err[256];
	o.errbuf = err;
	o.errbuf_len = sizeof err;
	tokend_client *c = NULL;
	int rc = tokend_connect_ex(&o, flags, &c);
	CHECK(rc == TOKEND_OK, "connect (flags %u): %s: %s", flags, tokend_strerror(rc), err);
	CHECK(tokend_session_id(c) != 0, "no session id");
	if (s)
		s->c = c;
	return c;
}

/* One completion. */
struct done {
	int called;
	int status;
	tokend_grant g;
	int in_flight_calls; /* calls made from the callback, and their statuses */
	int blocking_rc, process_rc, close_rc;
};

static int ncalled;

static void done_cb(tokend_client *c, int status, const tokend_grant *g, void *arg)
{
	struct done *d = arg;
	(void)c;
	d->called++;
	d->status = status;
	if (g)
		d->g = *g;
	ncalled++;
}

/* Calls that would wait, from a completion callback: TOKEND_ECALLBACK. */
static void misuse_cb(tokend_client *c, int status, const tokend_grant *g, void *arg)
{
	struct done *d = arg;
	tokend_grant x;
	done_cb(c, status, g, arg);
	d->blocking_rc = tokend_acquire(c, "x", 1, TOKEND_EX, TOKEND_TRY, &x);
	d->process_rc = tokend_process(c);
	d->close_rc = tokend_close(c);
}

/*
 * The event loop: poll tokend_fd for at most tokend_timeout ms, then
 * tokend_process, for at most ms ms or until *count reaches want.
 */
static void pump(tokend_client *c, int64_t ms, const int *count, int want)
{
	int64_t end = now_ms() + ms;
	int fd = tokend_fd(c);
	CHECK(fd >= 0, "tokend_fd: %d", fd);
	while (now_ms() < end && !(count && *count >= want)) {
		int64_t t = tokend_timeout(c), left = end - now_ms();
		CHECK(t >= 0 && t <= 1000, "tokend_timeout %" PRId64, t);
		if (t > left)
			t = left < 0 ? 0 : left;
		struct pollfd p = {fd, POLLIN, 0};
		CHECK(poll(&p, 1, (int)t) >= 0, "poll");
		CHECK_RC(tokend_process(c), TOKEND_OK, "process");
	}
}

#define MANY 64

static void s_many(void)
{
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, NULL);
	static struct done acq[TOKEND_MAX_ASYNC + 1], rel[TOKEND_MAX_ASYNC];
	char n[128];
	ncalled = 0;
	for (int i = 0; i < MANY; i++) {
		name_of(n, sizeof n, "many", i);
		uint64_t id = 0;
		CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 5000, done_cb, &acq[i], &id), TOKEND_OK,
			 "acquire_async");
		CHECK(id != 0, "no id");
	}
	CHECK(ncalled == 0, "a completion called from within a start call");
	int64_t t0 = now_ms();
	pump(c, 20000, &ncalled, MANY);
	CHECK(ncalled == MANY, "%d of %d acquires completed", ncalled, MANY);
	int64_t took = now_ms() - t0;
	for (int i = 0; i < MANY; i++) {
		CHECK(acq[i].called == 1, "acquire %d called %d times", i, acq[i].called);
		CHECK_RC(acq[i].status, TOKEND_OK, "async acquire");
		CHECK(acq[i].g.mode == TOKEND_EX && acq[i].g.fence != 0, "grant %d", i);
		uint32_t left = 0;
		CHECK_RC(tokend_grant_check(c, &acq[i].g, &left), TOKEND_OK, "grant_check");
		for (int j = 0; j < i; j++)
			CHECK(acq[j].g.name_len != acq[i].g.name_len ||
				      memcmp(acq[j].g.name, acq[i].g.name, acq[i].g.name_len) != 0,
			      "two grants of one name");
	}
	printf("%d acquires in flight at once, all granted in %" PRId64 " ms\n", MANY, took);
	ncalled = 0;
	for (int i = 0; i < MANY; i++)
		CHECK_RC(tokend_release_async(c, &acq[i].g, NULL, 0, done_cb, &rel[i], NULL), TOKEND_OK, "release_async");
	/* given up locally at once */
	CHECK_RC(tokend_release_async(c, &acq[0].g, NULL, 0, done_cb, &rel[MANY], NULL), TOKEND_ENOTHELD,
		 "release_async twice");
	pump(c, 20000, &ncalled, MANY);
	for (int i = 0; i < MANY; i++) {
		CHECK(rel[i].called == 1, "release %d called %d times", i, rel[i].called);
		CHECK_RC(rel[i].status, TOKEND_OK, "async release");
		CHECK(rel[i].g.fence == acq[i].g.fence, "release callback's grant");
		CHECK_RC(tokend_grant_check(c, &acq[i].g, NULL), TOKEND_ENOTHELD, "grant_check after release");
	}
	/* the limit: TOKEND_MAX_ASYNC in flight, one more refused */
	memset(acq, 0, sizeof acq);
	memset(rel, 0, sizeof rel);
	ncalled = 0;
	for (int i = 0; i < TOKEND_MAX_ASYNC; i++) {
		name_of(n, sizeof n, "limit", i);
		CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_PR, 0, 0, 5000, done_cb, &acq[i], NULL), TOKEND_OK,
			 "acquire_async under the limit");
	}
	name_of(n, sizeof n, "limit", TOKEND_MAX_ASYNC);
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_PR, 0, 0, 5000, done_cb, &acq[TOKEND_MAX_ASYNC], NULL),
		 TOKEND_ELIMIT, "one more than TOKEND_MAX_ASYNC");
	pump(c, 30000, &ncalled, TOKEND_MAX_ASYNC);
	CHECK(ncalled == TOKEND_MAX_ASYNC, "%d of %d completed", ncalled, TOKEND_MAX_ASYNC);
	ncalled = 0;
	for (int i = 0; i < TOKEND_MAX_ASYNC; i++) {
		CHECK_RC(acq[i].status, TOKEND_OK, "acquire under the limit");
		CHECK_RC(tokend_release_async(c, &acq[i].g, NULL, 0, done_cb, &rel[i], NULL), TOKEND_OK, "release_async");
	}
	pump(c, 30000, &ncalled, TOKEND_MAX_ASYNC);
	for (int i = 0; i < TOKEND_MAX_ASYNC; i++)
		CHECK_RC(rel[i].status, TOKEND_OK, "release under the limit");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
}

struct waiter {
	tokend_client *c;
	const char *name;
	int rc;
	tokend_grant g;
	int done;
	pthread_mutex_t mu;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;
	tokend_grant g;
	int rc = tokend_acquire(w->c, w->name, strlen(w->name), TOKEND_EX, 10000, &g);
	pthread_mutex_lock(&w->mu);
	w->rc = rc;
	w->g = g;
	w->done = 1;
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void s_queued(void)
{
	char n[128];
	name_of(n, sizeof n, "queued", 0);
	struct seen s = {0};
	tokend_client *h = connect_flags(0, NULL); /* another client, with its thread */
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, &s);
	tokend_grant hg;
	CHECK_RC(tokend_acquire(h, n, strlen(n), TOKEND_EX, TOKEND_TRY, &hg), TOKEND_OK, "other client's acquire");
	struct done d = {0};
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 10000, done_cb, &d, NULL), TOKEND_OK,
		 "acquire_async");
	pump(c, 600, &ncalled, 1);
	CHECK(d.called == 0, "granted while the other client holds it: %s", tokend_strerror(d.status));
	CHECK_RC(tokend_release(h, &hg, NULL, 0), TOKEND_OK, "other client's release");
	int64_t t0 = now_ms();
	pump(c, 10000, &ncalled, 1);
	CHECK(d.called == 1, "not granted within 10 s of the release");
	CHECK_RC(d.status, TOKEND_OK, "queued async acquire");
	CHECK(d.g.fence > hg.fence, "fence %" PRIu64 " after %" PRIu64, d.g.fence, hg.fence);
	CHECK_RC(tokend_grant_check(c, &d.g, NULL), TOKEND_OK, "grant_check");
	printf("granted %" PRId64 " ms after the other client released\n", now_ms() - t0);

	/* the other client waits now: on_revoke on this thread releases */
	s.release_on_revoke = 1;
	s.release_rc = 1;
	struct waiter w = {h, n, 1, {0}, 0, PTHREAD_MUTEX_INITIALIZER};
	pthread_t th;
	CHECK(pthread_create(&th, NULL, wait_thread, &w) == 0, "pthread_create");
	int64_t end = now_ms() + 10000;
	for (int fin = 0; !fin && now_ms() < end;) {
		pump(c, 50, NULL, 0);
		pthread_mutex_lock(&w.mu);
		fin = w.done;
		pthread_mutex_unlock(&w.mu);
	}
	pthread_join(th, NULL);
	CHECK(s.revokes == 1, "%d revokes", s.revokes);
	CHECK_RC(s.release_rc, TOKEND_OK, "release from on_revoke");
	CHECK_RC(w.rc, TOKEND_OK, "the other client's wait");
	CHECK(w.g.fence > d.g.fence, "fence after the revoke");
	pump(c, 200, NULL, 0);
	CHECK(s.losts == 0, "on_lost called");
	CHECK_RC(tokend_release(h, &w.g, NULL, 0), TOKEND_OK, "release");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	CHECK_RC(tokend_close(h), TOKEND_OK, "close");
}

static void s_cancel(void)
{
	char n[128];
	name_of(n, sizeof n, "cancel", 0);
	tokend_client *h = connect_flags(0, NULL);
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, NULL);
	tokend_grant hg, g2;
	CHECK_RC(tokend_acquire(h, n, strlen(n), TOKEND_EX, TOKEND_TRY, &hg), TOKEND_OK, "holder's acquire");
	struct done d = {0}, d2 = {0};
	uint64_t id = 0, id2 = 0;
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_WAIT_FOREVER, done_cb, &d, &id),
		 TOKEND_OK, "acquire_async");
	pump(c, 400, &ncalled, 1); /* queued at the worker */
	CHECK(d.called == 0, "completed while held elsewhere");
	CHECK_RC(tokend_cancel_async(c, id), TOKEND_OK, "cancel");
	CHECK(d.called == 0, "callback called from within tokend_cancel_async");
	CHECK_RC(tokend_cancel_async(c, id), TOKEND_ENOTHELD, "cancel twice");
	pump(c, 2000, &ncalled, 1);
	CHECK(d.called == 1, "canceled acquire's callback called %d times", d.called);
	CHECK_RC(d.status, TOKEND_ECANCELED, "canceled acquire");
	/* a canceled acquire never sent: also ECANCELED */
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 5000, done_cb, &d2, &id2), TOKEND_OK,
		 "acquire_async");
	CHECK_RC(tokend_cancel_async(c, id2), TOKEND_OK, "cancel at once");
	pump(c, 2000, &ncalled, 2);
	CHECK_RC(d2.status, TOKEND_ECANCELED, "canceled at once");
	/* the worker holds nothing for c: the holder's release lets a try in */
	CHECK_RC(tokend_release(h, &hg, NULL, 0), TOKEND_OK, "holder's release");
	pump(c, 500, NULL, 0);
	CHECK_RC(tokend_acquire(h, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g2), TOKEND_OK,
		 "try after the cancel (the canceled request must not hold or queue)");
	CHECK_RC(tokend_cancel_async(c, 999999), TOKEND_ENOTHELD, "cancel of an unknown id");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	CHECK_RC(tokend_close(h), TOKEND_OK, "close");
}

static void s_convert(void)
{
	char n[128], m[128];
	name_of(n, sizeof n, "convert", 0);
	name_of(m, sizeof m, "convert", 1);
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, NULL);
	struct done a = {0}, up = {0}, down = {0}, rel = {0};
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_PR, 0, 0, TOKEND_TRY, done_cb, &a, NULL), TOKEND_OK,
		 "acquire_async PR");
	pump(c, 5000, &ncalled, 1);
	CHECK_RC(a.status, TOKEND_OK, "acquire PR");
	CHECK_RC(tokend_convert_async(c, &a.g, TOKEND_EX, 5000, NULL, 0, done_cb, &up, NULL), TOKEND_OK,
		 "convert_async up");
	pump(c, 5000, &ncalled, 2);
	CHECK_RC(up.status, TOKEND_OK, "upgrade");
	CHECK(up.g.mode == TOKEND_EX && up.g.fence > a.g.fence, "upgrade: mode %d fence %" PRIu64 " after %" PRIu64,
	      up.g.mode, up.g.fence, a.g.fence);
	CHECK_RC(tokend_grant_check(c, &a.g, NULL), TOKEND_ENOTHELD, "the old fence after an upgrade");
	uint64_t id = 0;
	CHECK_RC(tokend_convert_async(c, &up.g, TOKEND_PR, 5000, "v", 1, done_cb, &down, &id), TOKEND_OK,
		 "convert_async down");
	CHECK_RC(tokend_cancel_async(c, id), TOKEND_ENOTSUP, "cancel of a downgrade");
	pump(c, 5000, &ncalled, 3);
	CHECK_RC(down.status, TOKEND_OK, "downgrade");
	CHECK(down.g.mode == TOKEND_PR && down.g.fence == up.g.fence, "downgrade keeps the fence");
	CHECK(down.g.value_state == TOKEND_VALUE_VALID && down.g.value_len == 1, "value set by the downgrade");
	CHECK_RC(tokend_release_async(c, &down.g, NULL, 0, done_cb, &rel, &id), TOKEND_OK, "release_async");
	CHECK_RC(tokend_cancel_async(c, id), TOKEND_ENOTSUP, "cancel of a release");
	pump(c, 5000, &ncalled, 4);
	CHECK_RC(rel.status, TOKEND_OK, "release");

	/* the blocking calls on a no-thread handle drive it themselves */
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, m, strlen(m), TOKEND_PR, 2000, &g), TOKEND_OK, "blocking acquire");
	CHECK_RC(tokend_convert(c, &g, TOKEND_EX, 2000, NULL, 0), TOKEND_OK, "blocking upgrade");
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_OK, "grant_check");
	CHECK_RC(tokend_convert(c, &g, TOKEND_NL, 2000, NULL, 0), TOKEND_OK, "blocking downgrade");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "blocking release");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
}

static void s_keepalive(int ms)
{
	char n[128];
	name_of(n, sizeof n, "keepalive", 0);
	struct seen s = {0};
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, &s);
	uint64_t sid = tokend_session_id(c);
	struct done d = {0};
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_TRY, done_cb, &d, NULL), TOKEND_OK,
		 "acquire_async");
	pump(c, 5000, &ncalled, 1);
	CHECK_RC(d.status, TOKEND_OK, "acquire");
	int64_t t0 = now_ms();
	uint32_t min_left = UINT32_MAX;
	while (now_ms() - t0 < ms) {
		pump(c, 100, NULL, 0);
		uint32_t left = 0;
		CHECK_RC(tokend_grant_check(c, &d.g, &left), TOKEND_OK, "grant_check while only the loop runs");
		if (left < min_left)
			min_left = left;
	}
	CHECK(tokend_session_id(c) == sid, "the session changed: %" PRIx64 " then %" PRIx64, sid,
	      tokend_session_id(c));
	CHECK(s.losts == 0 && s.jeopardies == 0, "on_lost %d, on_jeopardy %d", s.losts, s.jeopardies);
	FILE *f = fopen("/proc/self/status", "r"); /* Linux: no thread but this one did it */
	if (f) {
		char line[256];
		int threads = -1;
		while (fgets(line, sizeof line, f))
			if (sscanf(line, "Threads: %d", &threads) == 1)
				break;
		fclose(f);
		CHECK(threads == 1, "%d threads in the process, want 1", threads);
	}
	printf("held %d ms on tokend_process alone; least validity seen %" PRIu32 " ms\n", ms, min_left);
	CHECK_RC(tokend_release(c, &d.g, NULL, 0), TOKEND_OK, "release");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
}

/*
 * The loop stops turning for longer than the session TTL: the session and
 * its grant are lost (on_lost, from the next tokend_process); the next
 * acquire opens a new session.
 */
static void s_expire(int ttl_ms)
{
	char n[128];
	name_of(n, sizeof n, "expire", 0);
	struct seen s = {0};
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, &s);
	uint64_t sid = tokend_session_id(c);
	struct done d = {0}, d2 = {0};
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_TRY, done_cb, &d, NULL), TOKEND_OK,
		 "acquire_async");
	pump(c, 5000, &ncalled, 1);
	CHECK_RC(d.status, TOKEND_OK, "acquire");
	struct timespec ts = {(time_t)(ttl_ms * 2 / 1000), (long)(ttl_ms * 2 % 1000) * 1000000L};
	nanosleep(&ts, NULL); /* the loop is stuck */
	CHECK_RC(tokend_process(c), TOKEND_OK, "process");
	CHECK(s.losts == 1, "on_lost called %d times after the session ran out", s.losts);
	int rc = tokend_grant_check(c, &d.g, NULL);
	CHECK(rc == TOKEND_ELOST || rc == TOKEND_ESESSION, "grant_check after expiry: %s", tokend_strerror(rc));
	CHECK(tokend_session_id(c) == 0, "session id after expiry");
	/* a new session, and the token again (the worker expired the old one) */
	int64_t end = now_ms() + 10000;
	do {
		memset(&d2, 0, sizeof d2);
		CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 1000, done_cb, &d2, NULL), TOKEND_OK,
			 "acquire_async after expiry");
		pump(c, 5000, &d2.called, 1);
	} while (d2.status != TOKEND_OK && now_ms() < end);
	CHECK_RC(d2.status, TOKEND_OK, "acquire after expiry");
	CHECK(tokend_session_id(c) != 0 && tokend_session_id(c) != sid, "no new session");
	CHECK(d2.g.fence > d.g.fence, "fence after expiry");
	CHECK_RC(tokend_release(c, &d.g, NULL, 0), TOKEND_ELOST, "release of the lost grant");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
}

#define NCLOSE 5

static void s_close(void)
{
	tokend_client *h = connect_flags(0, NULL);
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, NULL);
	char n[128];
	tokend_grant held[NCLOSE];
	struct done free_[NCLOSE], queued[NCLOSE], rel[NCLOSE];
	memset(free_, 0, sizeof free_);
	memset(queued, 0, sizeof queued);
	memset(rel, 0, sizeof rel);
	ncalled = 0;
	for (int i = 0; i < NCLOSE; i++) {
		name_of(n, sizeof n, "close-held", i);
		CHECK_RC(tokend_acquire(h, n, strlen(n), TOKEND_EX, TOKEND_TRY, &held[i]), TOKEND_OK, "holder's acquire");
		CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_WAIT_FOREVER, done_cb, &queued[i],
					      NULL),
			 TOKEND_OK, "acquire_async queued");
		name_of(n, sizeof n, "close-free", i);
		CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 5000, done_cb, &free_[i], NULL), TOKEND_OK,
			 "acquire_async");
	}
	pump(c, 10000, &ncalled, NCLOSE);
	CHECK(ncalled == NCLOSE, "%d completed, want the %d free ones", ncalled, NCLOSE);
	for (int i = 0; i < NCLOSE; i++) {
		CHECK_RC(free_[i].status, TOKEND_OK, "free acquire");
		CHECK(queued[i].called == 0, "queued acquire completed");
		CHECK_RC(tokend_release_async(c, &free_[i].g, NULL, 0, done_cb, &rel[i], NULL), TOKEND_OK,
			 "release_async");
	}
	/* a callback that tries what it must not, while close runs */
	struct done misuse = {0};
	name_of(n, sizeof n, "close-held", 0);
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_WAIT_FOREVER, misuse_cb, &misuse, NULL),
		 TOKEND_OK, "acquire_async");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close with operations in flight");
	for (int i = 0; i < NCLOSE; i++) {
		CHECK(queued[i].called == 1 && rel[i].called == 1, "callbacks at close: %d %d", queued[i].called,
		      rel[i].called);
		CHECK_RC(queued[i].status, TOKEND_ECLOSED, "queued acquire at close");
		CHECK_RC(rel[i].status, TOKEND_ECLOSED, "release in flight at close");
	}
	CHECK(misuse.called == 1, "misuse callback");
	CHECK_RC(misuse.status, TOKEND_ECLOSED, "acquire at close");
	CHECK_RC(misuse.blocking_rc, TOKEND_ECALLBACK, "blocking acquire from a completion callback");
	CHECK_RC(misuse.process_rc, TOKEND_ECALLBACK, "tokend_process from a completion callback");
	CHECK_RC(misuse.close_rc, TOKEND_ECALLBACK, "tokend_close from a completion callback");
	/* the session is closed: its grants are free */
	for (int i = 0; i < NCLOSE; i++) {
		tokend_grant g;
		name_of(n, sizeof n, "close-free", i);
		CHECK_RC(tokend_acquire(h, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "after close");
	}
	CHECK_RC(tokend_close(h), TOKEND_OK, "close");
}

static void s_badargs(void)
{
	char n[128];
	name_of(n, sizeof n, "badargs", 0);
	tokend_client *t = connect_flags(0, NULL);
	tokend_client *c = connect_flags(TOKEND_NO_THREAD, NULL);
	struct done d = {0};
	uint64_t id = 7;
	tokend_grant g;
	memset(&g, 0, sizeof g);
	/* a handle with a thread */
	CHECK_RC(tokend_fd(t), TOKEND_ENOTSUP, "tokend_fd, thread");
	CHECK(tokend_timeout(t) == -1, "tokend_timeout, thread");
	CHECK_RC(tokend_process(t), TOKEND_ENOTSUP, "tokend_process, thread");
	CHECK_RC(tokend_acquire_async(t, n, strlen(n), TOKEND_EX, 0, 0, 0, done_cb, &d, &id), TOKEND_ENOTSUP,
		 "acquire_async, thread");
	CHECK(id == 0, "id set on failure");
	CHECK_RC(tokend_cancel_async(t, 1), TOKEND_ENOTSUP, "cancel_async, thread");
	/* NULL and bad values */
	CHECK_RC(tokend_fd(NULL), TOKEND_EINVAL, "tokend_fd(NULL)");
	CHECK(tokend_timeout(NULL) == -1, "tokend_timeout(NULL)");
	CHECK_RC(tokend_process(NULL), TOKEND_EINVAL, "tokend_process(NULL)");
	CHECK_RC(tokend_acquire_async(NULL, n, strlen(n), TOKEND_EX, 0, 0, 0, done_cb, &d, NULL), TOKEND_EINVAL, "NULL c");
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, 0, NULL, &d, NULL), TOKEND_EINVAL, "NULL cb");
	CHECK_RC(tokend_acquire_async(c, NULL, 1, TOKEND_EX, 0, 0, 0, done_cb, &d, NULL), TOKEND_EINVAL, "NULL name");
	CHECK_RC(tokend_acquire_async(c, n, 0, TOKEND_EX, 0, 0, 0, done_cb, &d, NULL), TOKEND_EINVAL, "empty name");
	CHECK_RC(tokend_acquire_async(c, n, 256, TOKEND_EX, 0, 0, 0, done_cb, &d, NULL), TOKEND_EINVAL, "long name");
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), (tokend_mode)6, 0, 0, 0, done_cb, &d, NULL), TOKEND_EINVAL,
		 "bad mode");
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 5, 5, 0, done_cb, &d, NULL), TOKEND_EINVAL,
		 "empty range");
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, -2, done_cb, &d, NULL), TOKEND_EINVAL,
		 "wait -2");
	CHECK_RC(tokend_release_async(c, NULL, NULL, 0, done_cb, &d, NULL), TOKEND_EINVAL, "release NULL grant");
	CHECK_RC(tokend_release_async(c, &g, NULL, 0, done_cb, &d, NULL), TOKEND_EINVAL, "release zero grant");
	CHECK_RC(tokend_convert_async(c, &g, TOKEND_EX, 0, NULL, 0, done_cb, &d, NULL), TOKEND_EINVAL,
		 "convert zero grant");
	CHECK_RC(tokend_cancel_async(c, 0), TOKEND_EINVAL, "cancel id 0");
	CHECK_RC(tokend_cancel_async(NULL, 1), TOKEND_EINVAL, "cancel NULL");
	CHECK(d.called == 0, "a callback for a call that failed");
	/* a grant not held */
	CHECK_RC(tokend_acquire(t, n, strlen(n), TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire (other handle)");
	CHECK_RC(tokend_release_async(c, &g, NULL, 0, done_cb, &d, NULL), TOKEND_ENOTHELD, "release of another's grant");
	CHECK_RC(tokend_convert_async(c, &g, TOKEND_PR, 0, NULL, 0, done_cb, &d, NULL), TOKEND_ENOTHELD,
		 "convert of another's grant");
	/* a try that conflicts completes with TOKEND_ECONFLICT */
	ncalled = 0;
	CHECK_RC(tokend_acquire_async(c, n, strlen(n), TOKEND_EX, 0, 0, TOKEND_TRY, done_cb, &d, NULL), TOKEND_OK,
		 "acquire_async try");
	pump(c, 5000, &ncalled, 1);
	CHECK_RC(d.status, TOKEND_ECONFLICT, "conflicting try");
	char err[256];
	tokend_last_error(c, err, sizeof err);
	CHECK(strstr(err, "acquire") != NULL, "last error after the async try: \"%s\"", err);
	/* connect_ex flags */
	const char *seeds[1] = {addr};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	tokend_client *x = (tokend_client *)&o;
	CHECK_RC(tokend_connect_ex(&o, 0x80, &x), TOKEND_EINVAL, "unknown flag");
	CHECK(x == NULL, "handle set on failure");
	o.multicast = "";
	o.insecure = 1;
	CHECK_RC(tokend_connect_ex(&o, TOKEND_NO_THREAD, &x), TOKEND_ENOTSUP, "multicast without a thread");
	CHECK_RC(tokend_release(t, &g, NULL, 0), TOKEND_OK, "release");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	CHECK_RC(tokend_close(t), TOKEND_OK, "close");
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
	if (!strcmp(s, "many"))
		s_many();
	else if (!strcmp(s, "queued"))
		s_queued();
	else if (!strcmp(s, "cancel"))
		s_cancel();
	else if (!strcmp(s, "convert"))
		s_convert();
	else if (!strcmp(s, "keepalive") && argc == 4)
		s_keepalive(atoi(argv[3]));
	else if (!strcmp(s, "expire") && argc == 4)
		s_expire(atoi(argv[3]));
	else if (!strcmp(s, "close"))
		s_close();
	else if (!strcmp(s, "badargs"))
		s_badargs();
	else {
		fprintf(stderr, "unknown scenario %s\n", s);
		return 2;
	}
	printf("ok %s\n", s);
	return 0;
}
