/*
 * cload - load generator for tokend-bench with the C client (libtokend).
 *
 * Threads loop on acquire+release pairs against a running tokend, as the
 * bench's Go workloads do, and the program prints one JSON object with the
 * rate and latency percentiles on standard output when done:
 *
 *   uncontended  each thread on its own token: EX acquire, release (a pair)
 *   contended    all threads on one token: EX acquire (queued), keep it until
 *                on_revoke says someone waits (at most 1 s), release (a handoff)
 *
 * Handles: "thread" gives every thread a tokend_client of its own; "shared"
 * has all threads use one (the handle is thread-safe).
 *
 *   cload --seeds 127.0.0.1:7700 --threads 16 --mode uncontended \
 *         --handles thread --warmup-ms 300 --duration-ms 2000 --prefix bench/c1
 *
 * --cache N turns on every handle's token cache (tokend_token_cache, at most
 * N grants): an uncontended loop then re-acquires from the cache; the JSON
 * reports the handles' cache_hits and cache_misses.
 *
 * It authenticates with the client key file of --key-file FILE (else
 * $TOKEND_KEY_FILE, as the library reads it); --insecure connects without
 * a key, to a cluster started with --insecure.
 *
 * Every loop ends with the window (time) or at --max-ops, whichever comes
 * first. An operation counts if it started and ended inside the window.
 * Exit status 0 if the run completed (errors are counted in the JSON), 2 on
 * bad arguments, 1 if a connect failed.
 */
#define _POSIX_C_SOURCE 200809L
#include "tokend.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_THREADS 256
#define MAX_SEEDS 16

/* ------------------------------------------------------------ clock */

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------ histogram */

/* A log-linear histogram of nanoseconds, about three significant digits:
 * values below 2048 exactly, above that 1024 sub-buckets per power of two. */
#define H_SUB 1024
#define H_MAXMAG 40
#define H_BUCKETS (2 * H_SUB + H_MAXMAG * H_SUB)

struct hist {
	uint64_t n[H_BUCKETS];
	uint64_t count;
	int64_t max;
	double sum;
};

static int bitlen(uint64_t v)
{
	int n = 0;
	while (v) {
		n++;
		v >>= 1;
	}
	return n;
}

static size_t h_index(int64_t v)
{
	if (v < 0)
		v = 0;
	if (v < 2 * H_SUB)
		return (size_t)v;
	int m = bitlen((uint64_t)v) - 11; /* >= 1 */
	if (m > H_MAXMAG)
		return H_BUCKETS - 1;
	return (size_t)(2 * H_SUB + (m - 1) * H_SUB + (((uint64_t)v >> m) - H_SUB));
}

/* The middle of bucket i, in ns. */
static double h_value(size_t i)
{
	if (i < 2 * H_SUB)
		return (double)i;
	size_t m = (i - 2 * H_SUB) / H_SUB + 1;
	uint64_t sub = (i - 2 * H_SUB) % H_SUB + H_SUB;
	return (double)(sub << m) + (double)((uint64_t)1 << m) / 2;
}

static void h_record(struct hist *h, int64_t v)
{
	h->n[h_index(v)]++;
	h->count++;
	h->sum += (double)v;
	if (v > h->max)
		h->max = v;
}

static void h_merge(struct hist *into, const struct hist *h)
{
	for (size_t i = 0; i < H_BUCKETS; i++)
		into->n[i] += h->n[i];
	into->count += h->count;
	into->sum += h->sum;
	if (h->max > into->max)
		into->max = h->max;
}

static double h_quantile(const struct hist *h, double q)
{
	if (h->count == 0)
		return 0;
	uint64_t want = (uint64_t)(q * (double)h->count + 0.5);
	if (want < 1)
		want = 1;
	uint64_t seen = 0;
	for (size_t i = 0; i < H_BUCKETS; i++) {
		seen += h->n[i];
		if (seen >= want) {
			double v = h_value(i);
			return v > (double)h->max ? (double)h->max : v;
		}
	}
	return (double)h->max;
}

static void h_json(FILE *f, const char *name, const struct hist *h)
{
	fprintf(f,
		"\"%s\":{\"count\":%" PRIu64 ",\"p50_us\":%.3f,\"p99_us\":%.3f,\"p999_us\":%.3f,"
		"\"max_us\":%.3f,\"mean_us\":%.3f}",
		name, h->count, h_quantile(h, 0.50) / 1e3, h_quantile(h, 0.99) / 1e3, h_quantile(h, 0.999) / 1e3,
		(double)h->max / 1e3, h->count ? h->sum / (double)h->count / 1e3 : 0);
}

/* ------------------------------------------------------------ the run */

enum { LAT_ACQUIRE, LAT_RELEASE, LAT_THIRD, NLAT };

struct thread {
	int i;
	pthread_t tid;
	tokend_client *c;
	char name[128];
	size_t name_len;
	pthread_cond_t cv;  /* contended: signalled when its grant is revoked */
	uint64_t holding;   /* contended: fence of the grant it waits to see revoked (0: none); rev_mu */
	uint64_t ops, errors, revoked;
	int last_error;
	char last_msg[256];
	struct hist *lat[NLAT];
};

static struct {
	int threads, contended, shared;
	size_t cache; /* --cache N: the token cache of every handle (0: off) */
	int64_t warmup_ns, duration_ns;
	uint64_t max_ops;
	const char *prefix;
	const char *key_file; /* NULL: the library's default ($TOKEND_KEY_FILE, ...) */
	int insecure;
	const char *seeds[MAX_SEEDS];
	size_t nseeds;
	int64_t start, win_start, end;

	pthread_mutex_t ops_mu; /* guards total, stop_early */
	uint64_t total;
	int stop_early;

	pthread_mutex_t rev_mu; /* guards max_revoked and every thread's holding */
	uint64_t max_revoked;   /* contended: highest fence revoked so far (one token) */

	struct thread th[MAX_THREADS];
} R;

/* on_revoke (contended): fences of the one token grow, so "revoked up to F"
 * says every grant with fence <= F has been asked for. */
static void on_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted, uint64_t start, uint64_t end,
		      void *arg)
{
	(void)c;
	(void)wanted;
	(void)start;
	(void)end;
	(void)arg;
	pthread_mutex_lock(&R.rev_mu);
	if (g->fence > R.max_revoked)
		R.max_revoked = g->fence;
	for (int i = 0; i < R.threads; i++)
		if (R.th[i].holding == g->fence)
			pthread_cond_signal(&R.th[i].cv);
	pthread_mutex_unlock(&R.rev_mu);
}

static int stopped(void)
{
	if (now_ns() >= R.end)
		return 1;
	pthread_mutex_lock(&R.ops_mu);
	int s = R.stop_early;
	pthread_mutex_unlock(&R.ops_mu);
	return s;
}

static void fail(struct thread *t, int rc)
{
	t->errors++;
	t->last_error = rc;
	tokend_last_error(t->c, t->last_msg, sizeof t->last_msg);
}

/* Wait (at most 1 s, and not past the window) until fence is revoked.
 * Returns 1 if it was. */
static int wait_revoked(struct thread *t, uint64_t fence)
{
	int64_t until = now_ns() + 1000000000;
	if (until > R.end)
		until = R.end;
	struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
	pthread_mutex_lock(&R.rev_mu);
	t->holding = fence;
	int rc = 0;
	while (R.max_revoked < fence && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&t->cv, &R.rev_mu, &ts);
	int ok = R.max_revoked >= fence;
	t->holding = 0;
	pthread_mutex_unlock(&R.rev_mu);
	return ok;
}

static void *run_thread(void *arg)
{
	struct thread *t = arg;
	while (!stopped()) {
		tokend_grant g;
		int64_t t0 = now_ns();
		int on = t0 >= R.win_start;
		int rc = tokend_acquire(t->c, t->name, t->name_len, TOKEND_EX, R.contended ? 1000 : 5000, &g);
		if (rc != TOKEND_OK) {
			if (!stopped())
				fail(t, rc);
			continue;
		}
		int64_t t1 = now_ns();
		int64_t seen = 0;
		if (R.contended && wait_revoked(t, g.fence)) {
			seen = now_ns() - t1;
			if (on)
				t->revoked++;
		}
		int64_t t2 = now_ns();
		rc = tokend_release(t->c, &g, NULL, 0);
		int64_t t3 = now_ns();
		if (rc != TOKEND_OK && rc != TOKEND_ENOTHELD) {
			fail(t, rc);
			continue;
		}
		if (!on || t3 >= R.end)
			continue;
		h_record(t->lat[LAT_ACQUIRE], t1 - t0);
		h_record(t->lat[LAT_RELEASE], t3 - t2);
		if (R.contended) {
			if (seen)
				h_record(t->lat[LAT_THIRD], seen);
		} else {
			h_record(t->lat[LAT_THIRD], t3 - t0);
		}
		t->ops++;
		pthread_mutex_lock(&R.ops_mu);
		if (++R.total >= R.max_ops)
			R.stop_early = 1;
		pthread_mutex_unlock(&R.ops_mu);
	}
	return NULL;
}

static tokend_client *connect_one(void)
{
	tokend_options o;
	char errbuf[512];
	tokend_options_init(&o);
	o.seeds = R.seeds;
	o.nseeds = R.nseeds;
	o.key_file = R.key_file;
	o.insecure = R.insecure;
	o.errbuf = errbuf;
	o.errbuf_len = sizeof errbuf;
	if (R.contended)
		o.on_revoke = on_revoke;
	tokend_client *c = NULL;
	int rc = tokend_connect(&o, &c);
	if (rc != TOKEND_OK) {
		fprintf(stderr, "cload: connect: %s: %s\n", tokend_strerror(rc), errbuf);
		return NULL;
	}
	if (R.cache && (rc = tokend_token_cache(c, R.cache, 0)) != TOKEND_OK) {
		fprintf(stderr, "cload: token cache: %s\n", tokend_strerror(rc));
		tokend_close(c);
		return NULL;
	}
	return c;
}

static void usage(void)
{
	fprintf(stderr, "usage: cload --seeds host:port[,host:port...] [--threads N] [--mode uncontended|contended]\n"
			"             [--handles thread|shared] [--warmup-ms N] [--duration-ms N] [--max-ops N]\n"
			"             [--prefix NAME] [--key-file FILE | --insecure] [--cache N]\n");
	exit(2);
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

int main(int argc, char **argv)
{
	static char seedbuf[1024];
	R.threads = 1;
	R.warmup_ns = 300 * INT64_C(1000000);
	R.duration_ns = 2000 * INT64_C(1000000);
	R.max_ops = UINT64_MAX;
	R.prefix = "bench/cload";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--insecure") == 0) {
			R.insecure = 1;
			continue;
		}
		if (!v)
			usage();
		i++;
		if (strcmp(a, "--seeds") == 0) {
			snprintf(seedbuf, sizeof seedbuf, "%s", v);
			for (char *p = strtok(seedbuf, ","); p && R.nseeds < MAX_SEEDS; p = strtok(NULL, ","))
				R.seeds[R.nseeds++] = p;
		} else if (strcmp(a, "--threads") == 0) {
			R.threads = atoi(v);
		} else if (strcmp(a, "--mode") == 0) {
			if (strcmp(v, "contended") == 0)
				R.contended = 1;
			else if (strcmp(v, "uncontended") != 0)
				usage();
		} else if (strcmp(a, "--handles") == 0) {
			if (strcmp(v, "shared") == 0)
				R.shared = 1;
			else if (strcmp(v, "thread") != 0)
				usage();
		} else if (strcmp(a, "--warmup-ms") == 0) {
			R.warmup_ns = atoll(v) * INT64_C(1000000);
		} else if (strcmp(a, "--duration-ms") == 0) {
			R.duration_ns = atoll(v) * INT64_C(1000000);
		} else if (strcmp(a, "--max-ops") == 0) {
			R.max_ops = (uint64_t)atoll(v);
		} else if (strcmp(a, "--prefix") == 0) {
			R.prefix = v;
		} else if (strcmp(a, "--key-file") == 0) {
			R.key_file = v;
		} else if (strcmp(a, "--cache") == 0) {
			R.cache = (size_t)atoll(v);
		} else {
			usage();
		}
	}
	if (R.nseeds == 0 || R.threads < 1 || R.threads > MAX_THREADS || R.duration_ns <= 0 || R.warmup_ns < 0 ||
	    R.max_ops == 0 || (R.insecure && R.key_file))
		usage();
	pthread_mutex_init(&R.ops_mu, NULL);
	pthread_mutex_init(&R.rev_mu, NULL);

	tokend_client *shared = NULL;
	if (R.shared && !(shared = connect_one()))
		return 1;
	for (int i = 0; i < R.threads; i++) {
		struct thread *t = &R.th[i];
		t->i = i;
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&t->cv, &ca);
		pthread_condattr_destroy(&ca);
		t->c = R.shared ? shared : connect_one();
		if (!t->c)
			return 1;
		if (R.contended)
			snprintf(t->name, sizeof t->name, "%s/one", R.prefix);
		else
			snprintf(t->name, sizeof t->name, "%s/%d", R.prefix, i);
		t->name_len = strlen(t->name);
		for (int k = 0; k < NLAT; k++)
			if (!(t->lat[k] = calloc(1, sizeof(struct hist)))) {
				fprintf(stderr, "cload: out of memory\n");
				return 1;
			}
	}
	R.start = now_ns();
	R.win_start = R.start + R.warmup_ns;
	R.end = R.win_start + R.duration_ns;
	for (int i = 0; i < R.threads; i++)
		if (pthread_create(&R.th[i].tid, NULL, run_thread, &R.th[i]) != 0) {
			fprintf(stderr, "cload: pthread_create failed\n");
			return 1;
		}
	for (int i = 0; i < R.threads; i++)
		pthread_join(R.th[i].tid, NULL);
	int64_t stopped_at = now_ns();
	if (stopped_at > R.end)
		stopped_at = R.end;
	double window = (double)(stopped_at - R.win_start) / 1e9;

	struct hist *all[NLAT];
	uint64_t ops = 0, errors = 0, revoked = 0;
	const char *last = "";
	for (int k = 0; k < NLAT; k++)
		if (!(all[k] = calloc(1, sizeof(struct hist))))
			return 1;
	for (int i = 0; i < R.threads; i++) {
		struct thread *t = &R.th[i];
		for (int k = 0; k < NLAT; k++)
			h_merge(all[k], t->lat[k]);
		ops += t->ops;
		errors += t->errors;
		revoked += t->revoked;
		if (t->errors)
			last = t->last_msg[0] ? t->last_msg : tokend_strerror(t->last_error);
	}
	uint64_t hits = 0, misses = 0;
	for (int i = 0; i < (R.shared ? 1 : R.threads); i++) {
		tokend_cache_stats cs;
		if (tokend_get_cache_stats(R.shared ? shared : R.th[i].c, &cs) == TOKEND_OK) {
			hits += cs.hits;
			misses += cs.misses;
		}
	}
	printf("{\"threads\":%d,\"mode\":\"%s\",\"handles\":\"%s\",\"window_s\":%.6f,\"ops\":%" PRIu64
	       ",\"rate_per_s\":%.3f,\"errors\":%" PRIu64 ",\"revoked\":%" PRIu64 ",\"cache_hits\":%" PRIu64
	       ",\"cache_misses\":%" PRIu64 ",\"last_error\":",
	       R.threads, R.contended ? "contended" : "uncontended", R.shared ? "shared" : "thread", window, ops,
	       window > 0 ? (double)ops / window : 0, errors, revoked, hits, misses);
	json_string(stdout, last);
	printf(",");
	h_json(stdout, "acquire", all[LAT_ACQUIRE]);
	printf(",");
	h_json(stdout, "release", all[LAT_RELEASE]);
	printf(",");
	h_json(stdout, R.contended ? "revoke_seen" : "pair", all[LAT_THIRD]);
	printf("}\n");
	fflush(stdout);

	if (R.shared) {
		tokend_close(shared);
	} else {
		for (int i = 0; i < R.threads; i++)
			tokend_close(R.th[i].c);
	}
	return 0;
}
