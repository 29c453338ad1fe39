/*
 * discover.c - a seedless client that finds its workers by multicast
 * announcements (driven by clientlib/ctest TestMulticastDiscovery).
 *
 *   tokend-discover MULTICAST ANNOUNCE_KEY|- MIN_DROPPED CONNECT_MS
 *
 * Connects with no seeds (the client key from the default chain:
 * $TOKEND_KEY_FILE), acquires token "discovered" EX, waits until at least
 * MIN_DROPPED announcements were dropped (at most 10 s), prints
 * "fence=N" and "stats accepted=A dropped=D", releases and closes. On a
 * connect failure it prints "connect: STATUS: MESSAGE" and exits 2.
 */
#define _POSIX_C_SOURCE 200809L
#include <tokend.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: tokend-discover MULTICAST ANNOUNCE_KEY|- MIN_DROPPED CONNECT_MS\n");
		return 64;
	}
	char err[512];
	tokend_options o;
	tokend_options_init(&o);
	o.multicast = argv[1];
	o.announce_key = strcmp(argv[2], "-") ? argv[2] : NULL;
	o.connect_timeout_ms = (uint32_t)strtoul(argv[4], NULL, 10);
	o.errbuf = err;
	o.errbuf_len = sizeof err;
	unsigned long long min_dropped = strtoull(argv[3], NULL, 10);
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	if (rc != TOKEND_OK) {
		printf("connect: %s: %s\n", tokend_strerror(rc), err);
		return 2;
	}
	tokend_grant g;
	rc = tokend_acquire(c, "discovered", 10, TOKEND_EX, 5000, &g);
	if (rc != TOKEND_OK) {
		printf("acquire: %s: %s\n", tokend_strerror(rc), tokend_last_error(c, err, sizeof err));
		tokend_close(c);
		return 1;
	}
	printf("fence=%llu\n", (unsigned long long)g.fence);
	tokend_stats s;
	struct timespec tick = {0, 20 * 1000 * 1000};
	for (int i = 0; i < 500; i++) { /* the counter is the condition; 10 s at most */
		tokend_get_stats(c, &s);
		if (s.announce_dropped >= min_dropped)
			break;
		nanosleep(&tick, NULL);
	}
	printf("stats accepted=%llu dropped=%llu\n", (unsigned long long)s.announce_accepted,
	       (unsigned long long)s.announce_dropped);
	rc = tokend_release(c, &g, NULL, 0);
	tokend_close(c);
	if (rc != TOKEND_OK) {
		printf("release: %s\n", tokend_strerror(rc));
		return 1;
	}
	return 0;
}
