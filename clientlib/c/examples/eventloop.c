/*
 * eventloop.c - many tokens in flight from one thread: a handle without a
 * background thread (TOKEND_NO_THREAD) driven by a poll() loop.
 *
 *   cc -o eventloop eventloop.c $(pkg-config --cflags --libs tokend)
 *   ./eventloop 127.0.0.1:7700 example/evloop 16
 *
 * Starts N acquires of PREFIX-0 .. PREFIX-(N-1) at once; each grant is
 * released (asynchronously) as soon as it arrives; the loop ends when every
 * release has completed. A real server would poll its own descriptors in
 * the same poll() call.
 */
#define _POSIX_C_SOURCE 200809L
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tokend.h>

struct state {
	int granted, released, failed;
};

static void on_released(tokend_client *c, int status, const tokend_grant *g, void *arg)
{
	struct state *s = arg;
	(void)c, (void)g;
	if (status == TOKEND_OK)
		s->released++;
	else
		s->failed++;
}

static void on_granted(tokend_client *c, int status, const tokend_grant *g, void *arg)
{
	struct state *s = arg;
	if (status != TOKEND_OK) {
		fprintf(stderr, "acquire: %s\n", tokend_strerror(status));
		s->failed++;
		return;
	}
	s->granted++;
	printf("granted %.*s fence %llu\n", (int)g->name_len, (const char *)g->name,
	       (unsigned long long)g->fence);
	/* ... use it; then give it back (allowed from a callback: never waits) */
	if (tokend_release_async(c, g, NULL, 0, on_released, s, NULL) != TOKEND_OK)
		s->failed++;
}

int main(int argc, char **argv)
{
	const char *seeds[] = {argc > 1 ? argv[1] : "127.0.0.1:7700"};
	const char *prefix = argc > 2 ? argv[2] : "example/evloop";
	int n = argc > 3 ? atoi(argv[3]) : 16;
	if (n < 1 || n > TOKEND_MAX_ASYNC)
		n = 16;
	struct state s = {0, 0, 0};
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	tokend_client *c = NULL;
	int rc = tokend_connect_ex(&o, TOKEND_NO_THREAD, &c); /* blocks until the session is open */
	if (rc != TOKEND_OK) {
		fprintf(stderr, "connect: %s\n", tokend_strerror(rc));
		return 1;
	}
	for (int i = 0; i < n; i++) {
		char name[200];
		snprintf(name, sizeof name, "%s-%d", prefix, i);
		rc = tokend_acquire_async(c, name, strlen(name), TOKEND_EX, 0, 0, 10000, on_granted, &s, NULL);
		if (rc != TOKEND_OK) {
			fprintf(stderr, "acquire_async: %s\n", tokend_strerror(rc));
			s.failed++;
		}
	}
	while (s.released + s.failed < n) {
		struct pollfd p = {tokend_fd(c), POLLIN, 0};
		int64_t ms = tokend_timeout(c); /* asked again every turn */
		if (poll(&p, 1, (int)ms) < 0)
			break;
		if (tokend_process(c) != TOKEND_OK) /* reads, timers, callbacks */
			break;
	}
	printf("%d granted, %d released, %d failed\n", s.granted, s.released, s.failed);
	tokend_close(c);
	return s.failed ? 1 : 0;
}
