/*
 * check.h - the end-to-end test programs' assertions (e2e.c, deadlock.c,
 * evloop.c): CHECK prints "FAIL: file:line: ..." and exits 1, so that the Go
 * driver (clientlib/ctest) reports the line; now_ms is a monotonic clock.
 */
#ifndef TOKEND_TESTS_CHECK_H
#define TOKEND_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECK(cond, ...)                                             \
	do {                                                         \
		if (!(cond)) {                                       \
			printf("FAIL: %s:%d: ", __FILE__, __LINE__); \
			printf(__VA_ARGS__);                         \
			printf("\n");                                \
			fflush(stdout);                              \
			exit(1);                                     \
		}                                                    \
	} while (0)

#define CHECK_RC(rc, want, what) \
	CHECK((rc) == (want), "%s: got %s (%d), want %s", what, tokend_strerror(rc), rc, tokend_strerror(want))

static inline int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
