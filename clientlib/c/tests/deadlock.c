/*
 * deadlock.c - deadlocks answered, not waited out (wire/SPEC.md section 19),
 * seen from libtokend. Driven by clientlib/ctest (Go), which starts the
 * cluster; usable by hand:
 *
 *   tokend-deadlock conv NAME SEED...   two PR holders of NAME both convert to
 *                                       EX: the second conversion must fail
 *                                       with TOKEND_EDEADLK within 1 s and keep
 *                                       its PR; once it releases, the first is
 *                                       granted EX
 *   tokend-deadlock cycle X Y SEED...   client A holds X and waits for Y; client
 *                                       B holds Y and asks for X: B's request
 *                                       (the younger) must fail with
 *                                       TOKEND_EDEADLK within 1 s, B keeps Y;
 *                                       once B releases Y, A gets it
 *
 * Both print "deadlock after T ms", then "ok <scenario>" and exit 0, or
 * print "FAIL: ..." and exit 1. Neither client has an on_revoke callback:
 * holders keep what they hold while they wait, which is what deadlocks.
 */
#define _POSIX_C_SOURCE 200809L
#include "../tokend.h"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The acceptance bound, and how long a waiter may wait at all. */
#define BOUND_MS 1000
#define WAIT_MS 10000

static const char *const *seeds;
static size_t nseeds;

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static tokend_client *connect_client(void)
{
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = nseeds;
	tokend_client *c = NULL;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect");
	return c;
}

/* A request that waits on a thread of its own, so that the main thread can
 * close the cycle meanwhile. */
struct waiter {
	tokend_client *c;
	const char *name;
	tokend_grant g; /* convert: the grant to convert; acquire: the result */
	int convert;
	int rc;
	int64_t done_ms;
	pthread_mutex_t mu;
	int done;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;
	int rc;
	if (w->convert)
		rc = tokend_convert(w->c, &w->g, TOKEND_EX, WAIT_MS, NULL, 0);
	else
		rc = tokend_acquire(w->c, w->name, strlen(w->name), TOKEND_EX, WAIT_MS, &w->g);
	pthread_mutex_lock(&w->mu);
	w->rc = rc;
	w->done_ms = now_ms();
	w->done = 1;
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static int finished(struct waiter *w)
{
	pthread_mutex_lock(&w->mu);
	int d = w->done;
	pthread_mutex_unlock(&w->mu);
	return d;
}

/*
 * Give the first request time to reach its worker's queue before the second
 * is sent, so that the second is the younger and hence the victim. This
 * asserts nothing.
 */
#define QUEUE_MS 150

static void conv(const char *name)
{
	tokend_client *a = connect_client(), *b = connect_client();
	struct waiter wa = {.c = a, .name = name, .convert = 1};
	pthread_mutex_init(&wa.mu, NULL);
	tokend_grant gb;
	CHECK_RC(tokend_acquire(a, name, strlen(name), TOKEND_PR, WAIT_MS, &wa.g), TOKEND_OK, "a: acquire PR");
	CHECK_RC(tokend_acquire(b, name, strlen(name), TOKEND_PR, WAIT_MS, &gb), TOKEND_OK, "b: acquire PR");
	pthread_t th;
	CHECK(pthread_create(&th, NULL, wait_thread, &wa) == 0, "pthread_create");
	sleep_ms(QUEUE_MS);
	int64_t t0 = now_ms();
	int rc = tokend_convert(b, &gb, TOKEND_EX, WAIT_MS, NULL, 0);
	int64_t took = now_ms() - t0;
	CHECK_RC(rc, TOKEND_EDEADLK, "b: convert PR -> EX (closes the cycle)");
	printf("deadlock after %lld ms\n", (long long)took);
	CHECK(took <= BOUND_MS, "conversion deadlock answered after %lld ms", (long long)took);
	CHECK(!finished(&wa), "a's conversion ended before b released (rc %d)", wa.rc);
	CHECK(gb.mode == TOKEND_PR, "b's grant after DEADLOCK: mode %d, want PR", (int)gb.mode);
	CHECK_RC(tokend_grant_check(b, &gb, NULL), TOKEND_OK, "b: its PR is still valid");
	CHECK_RC(tokend_release(b, &gb, NULL, 0), TOKEND_OK, "b: release");
	CHECK(pthread_join(th, NULL) == 0, "pthread_join");
	CHECK_RC(wa.rc, TOKEND_OK, "a: convert PR -> EX once b released");
	CHECK(wa.g.mode == TOKEND_EX, "a's mode %d, want EX", (int)wa.g.mode);
	CHECK_RC(tokend_release(a, &wa.g, NULL, 0), TOKEND_OK, "a: release");
	pthread_mutex_destroy(&wa.mu);
	tokend_close(a);
	tokend_close(b);
	printf("ok conv\n");
}

static void cycle(const char *x, const char *y)
{
	tokend_client *a = connect_client(), *b = connect_client();
	tokend_grant ax, by, bx;
	/* each handle is one owner: it keeps x (y) while it waits */
	CHECK_RC(tokend_detect_deadlocks(a, 1), TOKEND_OK, "a: detect deadlocks");
	CHECK_RC(tokend_detect_deadlocks(b, 1), TOKEND_OK, "b: detect deadlocks");
	CHECK_RC(tokend_acquire(a, x, strlen(x), TOKEND_EX, WAIT_MS, &ax), TOKEND_OK, "a: acquire x");
	CHECK_RC(tokend_acquire(b, y, strlen(y), TOKEND_EX, WAIT_MS, &by), TOKEND_OK, "b: acquire y");
	struct waiter wa = {.c = a, .name = y};
	pthread_mutex_init(&wa.mu, NULL);
	pthread_t th;
	CHECK(pthread_create(&th, NULL, wait_thread, &wa) == 0, "pthread_create");
	sleep_ms(QUEUE_MS);
	int64_t t0 = now_ms();
	int rc = tokend_acquire(b, x, strlen(x), TOKEND_PR, WAIT_MS, &bx);
	int64_t took = now_ms() - t0;
	CHECK_RC(rc, TOKEND_EDEADLK, "b: acquire x (closes the cycle)");
	printf("deadlock after %lld ms\n", (long long)took);
	CHECK(took <= BOUND_MS, "cycle answered after %lld ms", (long long)took);
	CHECK(!finished(&wa), "a's acquire of y ended before b released it (rc %d)", wa.rc);
	CHECK_RC(tokend_grant_check(b, &by, NULL), TOKEND_OK, "b: y is still held");
	CHECK_RC(tokend_grant_check(a, &ax, NULL), TOKEND_OK, "a: x is still held");
	CHECK_RC(tokend_release(b, &by, NULL, 0), TOKEND_OK, "b: release y");
	CHECK(pthread_join(th, NULL) == 0, "pthread_join");
	CHECK_RC(wa.rc, TOKEND_OK, "a: acquire y once b released it");
	CHECK_RC(tokend_release(a, &wa.g, NULL, 0), TOKEND_OK, "a: release y");
	CHECK_RC(tokend_release(a, &ax, NULL, 0), TOKEND_OK, "a: release x");
	pthread_mutex_destroy(&wa.mu);
	tokend_close(a);
	tokend_close(b);
	printf("ok cycle\n");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 4 && strcmp(argv[1], "conv") == 0) {
		seeds = (const char *const *)&argv[3];
		nseeds = (size_t)(argc - 3);
		conv(argv[2]);
		return 0;
	}
	if (argc >= 5 && strcmp(argv[1], "cycle") == 0) {
		seeds = (const char *const *)&argv[4];
		nseeds = (size_t)(argc - 4);
		cycle(argv[2], argv[3]);
		return 0;
	}
	fprintf(stderr, "usage: %s conv NAME SEED... | cycle X Y SEED...\n", argv[0]);
	return 2;
}
