/*
 * revoke.c - hold a token until another client needs it: the
 * flag-and-release pattern for on_revoke.
 *
 *   cc -o revoke revoke.c $(pkg-config --cflags --libs tokend)
 *   ./revoke 127.0.0.1:7700 example/revoke
 *
 * Callbacks run on the library's thread and must return quickly, so
 * on_revoke only records which grant is wanted; the application thread
 * sees it, flushes what it cached under the token, then releases it.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <tokend.h>

struct state {
	pthread_mutex_t mu;     /* guards the fields below */
	uint64_t revoked_fence; /* the grant someone else wants */
	int lost;               /* a grant was lost: stop using it */
};

static void on_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted,
		      uint64_t start, uint64_t end, void *arg)
{
	struct state *s = arg;
	(void)c, (void)wanted, (void)start, (void)end;
	pthread_mutex_lock(&s->mu);
	s->revoked_fence = g->fence; /* which grant: a fence is one grant */
	pthread_mutex_unlock(&s->mu);
}

static void on_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	struct state *s = arg;
	(void)c, (void)g, (void)why;
	pthread_mutex_lock(&s->mu);
	s->lost = 1;
	pthread_mutex_unlock(&s->mu);
}

int main(int argc, char **argv)
{
	const char *seeds[] = {argc > 1 ? argv[1] : "127.0.0.1:7700"};
	const char *name = argc > 2 ? argv[2] : "example/revoke";
	struct state s = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	o.on_revoke = on_revoke;
	o.on_lost = on_lost;
	o.cb_arg = &s;
	tokend_client *c = NULL;
	tokend_grant g;
	int rc = tokend_connect(&o, &c);
	if (rc == TOKEND_OK)
		rc = tokend_acquire(c, name, strlen(name), TOKEND_EX, 10000, &g);
	if (rc != TOKEND_OK) {
		fprintf(stderr, "revoke: %s\n", tokend_strerror(rc));
		tokend_close(c);
		return 1;
	}
	printf("holding %s with fence %llu\n", name, (unsigned long long)g.fence);
	fflush(stdout);

	unsigned cached = 0, written = 0;
	int revoked = 0, lost = 0;
	while (!revoked && !lost) {
		cached++; /* work under the token: writes cached, tagged with g.fence */
		struct timespec tick = {0, 10 * 1000 * 1000};
		nanosleep(&tick, NULL);
		pthread_mutex_lock(&s.mu);
		revoked = s.revoked_fence == g.fence;
		lost = s.lost;
		pthread_mutex_unlock(&s.mu);
	}
	if (lost) {
		/* The grant is gone: what is cached may be stale. Drop it. */
		printf("lost: dropped %u cached writes\n", cached);
		tokend_release(c, &g, NULL, 0); /* forgets the lost grant */
		rc = TOKEND_ELOST;
	} else {
		written += cached; /* flush first (storage checks g.fence) ... */
		rc = tokend_release(c, &g, NULL, 0); /* ... then give it back */
		printf("revoked: flushed %u writes, released fence %llu: %s\n", written,
		       (unsigned long long)g.fence, tokend_strerror(rc));
	}
	tokend_close(c);
	return rc != TOKEND_OK;
}
