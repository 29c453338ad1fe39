/*
 * test_api.c - libtokend's API without a real service: argument checks,
 * names, hashes, connect failures, and the client's main paths (connect,
 * keepalive, acquire, release, revoke, convert, close) against a tiny
 * in-process fake worker that grants everything. The fake authenticates
 * like a worker (wire/SPEC.md 20: cookie, open key, session keys; it knows
 * one client key, TEST_KEY) unless it plays an --insecure one. It also
 * throws garbage and forgeries at the client, which must drop them and carry
 * on. Meant to run under ASan/UBSan (make test SAN=1) and valgrind (make
 * valgrind).
 *
 * The fake uses the library's own codec; clientlib/ctest (Go) runs the real
 * scenarios against a fake built on the Go codec and against tokend itself.
 */
#define _POSIX_C_SOURCE 200809L
#include "../auth.h"
#include "../codec.h"
#include "../tokend.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

static int failures;

#define CHECK(cond, ...)                                          \
	do {                                                      \
		if (!(cond)) {                                    \
			failures++;                               \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);             \
			fputc('\n', stderr);                      \
		}                                                 \
	} while (0)

#define CHECK_RC(rc, want, what) \
	CHECK((rc) == (want), "%s: got %s, want %s", what, tokend_strerror(rc), tokend_strerror(want))

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ fake worker */

/* The one client key the fake knows: name "test", bytes 0, 1, ..., 31. */
#define TEST_KEY "tokend-key v1 test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
/* Same name, another key. */
#define WRONG_KEY "tokend-key v1 test AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"

struct fake {
	int fd;
	int port;
	char addr[64];
	pthread_t th;
	pthread_mutex_t mu;
	int stop;          /* under mu */
	int garbage;       /* answer every request with junk first (set before start) */
	int silent;        /* answer nothing (set before start) */
	const char *map_addr; /* the one worker its map lists; NULL: itself (set before start) */
	int map_only;      /* answer MAP_REQUEST only (set before start) */
	/* ACQUIREs of names "q/..." queue for queue_ms, then GRANT_ASYNC (one at a time) */
	int queue_ms;      /* under mu */
	int ka_cannot_vouch; /* KEEPALIVE replies say validity 0 (under mu) */
	int drop_releases;   /* RELEASEs go unanswered (under mu) */
	int bundle_acquires; /* answer this many ACQUIREs inside a BUNDLE_REPLY, not alone (under mu) */
	int bundles_sent;    /* under mu */
	int open_flags;      /* the flags of every SESSION_OPEN, or'ed (under mu) */
	int q_state;       /* 0 none, 1 queued, 2 granted */
	uint64_t q_request, q_fence;
	uint32_t q_shard;
	int64_t q_grant_at;
	uint64_t dl_request; /* "dl/..." ACQUIRE or upgrade: QUEUED, then DEADLOCK on the re-poll */
	uint64_t next_fence;
	/* what it saw */
	int sessions_opened, sessions_closed, keepalives, renews, acquires, releases, revoke_acks, grant_acks, converts;
	int map_requests;
	uint64_t released_fences[64];
	int nreleased;
	/* the last client address and grant, to send REVOKEs */
	struct sockaddr_in client;
	int have_client;
	uint64_t session;
	uint64_t revoke_seq;
	/* authentication (SPEC 20) */
	int insecure;        /* an unauthenticated worker: zero tags, no checks (set before start) */
	int forge;           /* seal what the fake sends with a key the client does not have (under mu) */
	int auth_drops;      /* datagrams dropped: bad tag, unknown key, bad cookie (under mu) */
	struct tka_mac open_c2w, open_w2c;   /* TEST_KEY's open key; read-only after start */
	uint8_t client_key[TKA_KEY_LEN];     /* read-only after start */
	struct tka_mac s_c2w, s_w2c, forged; /* the session's keys (under mu) */
	int have_sk;         /* under mu */
	uint8_t cookie[TKW_COOKIE_LEN];      /* the fake thread's */
};

/* Encode and tag m into dg (TKW_MAX_DATAGRAM bytes) as the fake sends it
 * alone; 0, or -1 (counted as a failure). Which key tags what: SPEC 20
 * "Which key signs what". */
static int fake_seal(struct fake *f, struct tkw_msg *m, uint8_t *dg, size_t *lenp)
{
	size_t len;
	int e = tkw_encode(m, dg, TKW_MAX_DATAGRAM, &len);
	if (e != TKW_OK) {
		fprintf(stderr, "fake: encode type %#x: %s\n", m->h.type, tkw_err_name(e));
		failures++;
		return -1;
	}
	struct tka_mac key;
	const struct tka_mac *k = &key;
	pthread_mutex_lock(&f->mu);
	if (f->insecure || (m->h.type == (TKW_MAP_REQUEST | TKW_REPLY) && m->h.session == 0))
		k = NULL;
	else if (m->h.type == (TKW_SESSION_OPEN | TKW_REPLY) && m->h.status == TKW_ST_COOKIE)
		k = NULL;
	else if (m->h.type == (TKW_SESSION_OPEN | TKW_REPLY) && m->h.status != TKW_ST_OK)
		key = f->open_w2c;
	else
		key = f->forge ? f->forged : f->s_w2c;
	pthread_mutex_unlock(&f->mu);
	if (tka_seal(k, dg, len) != 0) {
		fprintf(stderr, "fake: tka_seal failed\n");
		failures++;
		return -1;
	}
	*lenp = len;
	return 0;
}

static void fake_send(struct fake *f, struct tkw_msg *m, const struct sockaddr_in *to)
{
	uint8_t dg[TKW_MAX_DATAGRAM];
	size_t len;
	if (fake_seal(f, m, dg, &len) == 0)
		sendto(f->fd, dg, len, 0, (const struct sockaddr *)to, sizeof *to);
}

/* Send m inside a BUNDLE_REPLY (SPEC 22), tagged as it would be alone; the
 * bundle's own tag is zero. */
static void fake_send_bundled(struct fake *f, struct tkw_msg *m, const struct sockaddr_in *to)
{
	static uint8_t in[TKW_MAX_DATAGRAM];
	static struct tkw_msg b;
	uint8_t dg[TKW_MAX_DATAGRAM];
	size_t len;
	if (fake_seal(f, m, in, &len) != 0)
		return;
	memset(&b, 0, sizeof b);
	b.h.type = TKW_BUNDLE | TKW_REPLY;
	b.h.session = m->h.session;
	b.h.request = m->h.request;
	b.h.map_version = m->h.map_version;
	b.count = 1;
	b.datagrams[0].p = in;
	b.datagrams[0].len = len;
	int e = tkw_encode(&b, dg, sizeof dg, &len);
	if (e != TKW_OK) {
		fprintf(stderr, "fake: encode a BUNDLE_REPLY: %s\n", tkw_err_name(e));
		failures++;
		return;
	}
	sendto(f->fd, dg, len, 0, (const struct sockaddr *)to, sizeof *to);
}

/* Does the fake accept what came (SPEC 20)? Counts what it drops. Only the
 * fake's thread writes the session keys, so it reads them without mu. */
static int fake_verify(struct fake *f, const uint8_t *b, size_t n, const struct tkw_msg *q)
{
	int ok;
	if (f->insecure || (q->h.type == TKW_MAP_REQUEST && q->h.session == 0))
		return 1;
	if (q->h.type == TKW_SESSION_OPEN && q->cookie.len == 0)
		ok = tka_tag_zero(b, n);
	else if (q->h.type == TKW_SESSION_OPEN)
		ok = q->key_name.len == 4 && !memcmp(q->key_name.p, "test", 4) && tka_verify(&f->open_c2w, b, n) &&
		     !memcmp(q->cookie.p + 4, q->nonce, TKA_NONCE_LEN);
	else
		ok = f->have_sk && q->h.session == f->session && tka_verify(&f->s_c2w, b, n);
	if (!ok) {
		pthread_mutex_lock(&f->mu);
		f->auth_drops++;
		pthread_mutex_unlock(&f->mu);
	}
	return ok;
}

static void send_junk(struct fake *f, const struct sockaddr_in *to, const uint8_t *req, size_t n)
{
	uint8_t b[1300];
	/* random bytes */
	for (size_t i = 0; i < sizeof b; i++)
		b[i] = (uint8_t)(rand() & 0xff);
	sendto(f->fd, b, 100, 0, (const struct sockaddr *)to, sizeof *to);
	/* too large */
	sendto(f->fd, b, 1300, 0, (const struct sockaddr *)to, sizeof *to);
	/* empty */
	sendto(f->fd, b, 0, 0, (const struct sockaddr *)to, sizeof *to);
	/* the request echoed back (a request type: dropped by clients) */
	sendto(f->fd, req, n, 0, (const struct sockaddr *)to, sizeof *to);
	/* the request as a "reply" with a broken checksum */
	memcpy(b, req, n);
	b[3] |= 0x80;
	sendto(f->fd, b, n, 0, (const struct sockaddr *)to, sizeof *to);
	/* truncated header */
	sendto(f->fd, req, n > 40 ? 40 : n, 0, (const struct sockaddr *)to, sizeof *to);
}

static void fake_handle(struct fake *f, const uint8_t *b, size_t n, const struct sockaddr_in *from)
{
	static struct tkw_msg q, r; /* only the fake's thread uses them */
	if (tkw_decode(b, n, &q) != TKW_OK)
		return;
	if (f->silent || (f->map_only && q.h.type != TKW_MAP_REQUEST))
		return;
	if (!fake_verify(f, b, n, &q))
		return;
	if (f->garbage)
		send_junk(f, from, b, n);
	memset(&r, 0, sizeof r);
	r.h.type = (uint8_t)(q.h.type | TKW_REPLY);
	r.h.session = q.h.session;
	r.h.request = q.h.request;
	r.h.shard = q.h.shard;
	r.h.epoch = q.h.epoch;
	r.h.map_version = 1;
	int bundled = 0;
	pthread_mutex_lock(&f->mu);
	f->client = *from;
	f->have_client = 1;
	switch (q.h.type) {
	case TKW_MAP_REQUEST:
		f->map_requests++;
		r.body_map_version = 1;
		r.shard_count = 64;
		r.grace_ms = 300;
		r.nworkers = 1;
		r.workers[0].index = 0;
		r.workers[0].addr.p = (const uint8_t *)(f->map_addr ? f->map_addr : f->addr);
		r.workers[0].addr.len = strlen((const char *)r.workers[0].addr.p);
		r.workers[0].id.p = (const uint8_t *)"fake";
		r.workers[0].id.len = 4;
		if (q.first_shard < 64) {
			/* two pages: [first, 32) then [32, 64) */
			uint32_t end = q.first_shard < 32 ? 32 : 64;
			r.nruns = 1;
			r.runs[0].first = q.first_shard;
			r.runs[0].count = end - q.first_shard;
			r.runs[0].worker = 0;
			r.runs[0].epoch = 1;
		}
		break;
	case TKW_SESSION_OPEN:
		f->open_flags |= q.h.flags;
		if (!f->insecure && q.cookie.len == 0) {
			/* a cookie the fake recognises: four zero bytes, then the nonce */
			memset(f->cookie, 0, 4);
			memcpy(f->cookie + 4, q.nonce, TKA_NONCE_LEN);
			r.h.status = TKW_ST_COOKIE;
			r.cookie.p = f->cookie;
			r.cookie.len = TKW_COOKIE_LEN;
			break;
		}
		f->sessions_opened++;
		f->session = 4242 + (uint64_t)f->sessions_opened;
		r.h.session = f->session;
		if (!f->insecure) {
			uint8_t sk[TKA_KEY_LEN];
			tka_random(r.worker_nonce, TKA_NONCE_LEN);
			if (tka_session_key(f->client_key, q.nonce, r.worker_nonce, f->session, sk) != 0 ||
			    tka_mac_init(&f->s_c2w, sk, TKA_CLIENT_TO_WORKER) != 0 ||
			    tka_mac_init(&f->s_w2c, sk, TKA_WORKER_TO_CLIENT) != 0) {
				fprintf(stderr, "fake: session key\n");
				failures++;
			}
			f->have_sk = 1;
		}
		r.ttl_ms = q.ttl_ms ? q.ttl_ms : 2000;
		r.shard_count = 64;
		r.grace_ms = 300;
		r.worker_ttl_ms = 900;
		break;
	case TKW_KEEPALIVE:
		f->keepalives++;
		f->renews += q.renew;
		r.session_ttl_ms = q.renew ? 2000 : 0;
		r.validity_ms = f->ka_cannot_vouch ? 0 : 800;
		r.nentries = q.nentries;
		for (unsigned i = 0; i < q.nentries; i++)
			r.entry_status[i] = TKW_ST_OK;
		break;
	case TKW_SESSION_CLOSE:
		f->sessions_closed++;
		break;
	case TKW_ACQUIRE:
		if (q.name.len > 3 && !memcmp(q.name.p, "dl/", 3) && q.mode == TKW_EX) {
			int again = f->dl_request == q.h.request;
			f->dl_request = q.h.request;
			r.h.status = again ? TKW_ST_DEADLOCK : TKW_ST_QUEUED;
			break;
		}
		if (f->queue_ms > 0 && q.name.len > 2 && !memcmp(q.name.p, "q/", 2)) {
			if (f->q_state == 0 || f->q_request != q.h.request) {
				f->acquires++;
				f->q_state = 1;
				f->q_request = q.h.request;
				f->q_shard = q.h.shard;
				f->q_fence = (UINT64_C(1) << 40) | ++f->next_fence;
				f->q_grant_at = now_ms() + f->queue_ms;
			}
			if (f->q_state == 1) {
				r.h.status = TKW_ST_QUEUED;
				r.position = 0;
				break;
			}
			r.fence = f->q_fence; /* a re-poll after the grant */
		} else {
			f->acquires++;
			r.fence = (UINT64_C(1) << 40) | ++f->next_fence;
			if (f->bundle_acquires > 0) {
				f->bundle_acquires--;
				f->bundles_sent++;
				bundled = 1;
			}
		}
		r.mode = q.mode;
		r.validity_ms = 800;
		r.start = q.start;
		r.end = q.end;
		break;
	case TKW_CONVERT:
		if (q.name.len > 3 && !memcmp(q.name.p, "dl/", 3) && q.mode == TKW_EX) {
			int again = f->dl_request == q.h.request;
			f->dl_request = q.h.request;
			r.h.status = again ? TKW_ST_DEADLOCK : TKW_ST_QUEUED;
			break;
		}
		f->converts++;
		if (f->queue_ms > 0 && q.name.len > 2 && !memcmp(q.name.p, "q/", 2) && q.mode == TKW_EX) {
			/* an upgrade that queues, like "q/..." acquires */
			if (f->q_state == 0 || f->q_request != q.h.request) {
				f->q_state = 1;
				f->q_request = q.h.request;
				f->q_shard = q.h.shard;
				f->q_fence = (UINT64_C(1) << 40) | ++f->next_fence;
				f->q_grant_at = now_ms() + f->queue_ms;
			}
			if (f->q_state == 1) {
				r.h.status = TKW_ST_QUEUED;
				break;
			}
			r.fence = f->q_fence;
			r.mode = q.mode;
			r.validity_ms = 800;
			r.end = TKW_WHOLE_END;
			break;
		}
		/* to EX: an upgrade, with a new fence; anything else: a downgrade */
		r.fence = q.mode == TKW_EX ? (UINT64_C(1) << 40) | ++f->next_fence : q.fence;
		r.mode = q.mode;
		r.validity_ms = 800;
		r.end = TKW_WHOLE_END;
		break;
	case TKW_RELEASE:
		if (f->drop_releases) {
			pthread_mutex_unlock(&f->mu);
			return;
		}
		f->releases++;
		if (f->nreleased < 64)
			f->released_fences[f->nreleased++] = q.fence;
		break;
	case TKW_REVOKE_ACK:
		f->revoke_acks++;
		pthread_mutex_unlock(&f->mu);
		return; /* one-way */
	case TKW_GRANT_ACK:
		f->grant_acks++;
		pthread_mutex_unlock(&f->mu);
		return; /* one-way */
	default:
		r.h.status = TKW_ST_BAD_REQUEST;
	}
	pthread_mutex_unlock(&f->mu);
	if (bundled)
		fake_send_bundled(f, &r, from);
	else
		fake_send(f, &r, from);
}

static int fake_stopping(struct fake *f)
{
	pthread_mutex_lock(&f->mu);
	int s = f->stop;
	pthread_mutex_unlock(&f->mu);
	return s;
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;
	uint8_t buf[2048];
	while (!fake_stopping(f)) {
		pthread_mutex_lock(&f->mu);
		if (f->q_state == 1 && now_ms() >= f->q_grant_at) {
			static struct tkw_msg g;
			memset(&g, 0, sizeof g);
			f->q_state = 2;
			g.h.type = TKW_GRANT_ASYNC;
			g.h.session = f->session;
			g.h.request = f->q_request;
			g.h.shard = f->q_shard;
			g.h.epoch = 1;
			g.h.map_version = 1;
			g.fence = f->q_fence;
			g.mode = TKW_EX;
			g.validity_ms = 800;
			g.end = TKW_WHOLE_END;
			struct sockaddr_in to = f->client;
			pthread_mutex_unlock(&f->mu);
			fake_send(f, &g, &to);
		} else {
			pthread_mutex_unlock(&f->mu);
		}
		struct pollfd p = {f->fd, POLLIN, 0};
		if (poll(&p, 1, 20) <= 0)
			continue;
		struct sockaddr_in from;
		socklen_t fl = sizeof from;
		ssize_t n = recvfrom(f->fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
		if (n >= 0)
			fake_handle(f, buf, (size_t)n, &from);
	}
	return NULL;
}

static void fake_start_full(struct fake *f, int silent, int garbage, const char *map_addr, int map_only,
			    int insecure)
{
	memset(f, 0, sizeof *f);
	f->insecure = insecure;
	char name[TKA_MAX_NAME + 1], err[200];
	uint8_t open[TKA_KEY_LEN], zero[TKA_KEY_LEN] = {0};
	if (tka_parse_key_file(TEST_KEY, strlen(TEST_KEY), name, f->client_key, err, sizeof err) != 0 ||
	    tka_open_key(f->client_key, open) != 0 || tka_mac_init(&f->open_c2w, open, TKA_CLIENT_TO_WORKER) != 0 ||
	    tka_mac_init(&f->open_w2c, open, TKA_WORKER_TO_CLIENT) != 0 ||
	    tka_mac_init(&f->forged, zero, TKA_WORKER_TO_CLIENT) != 0) {
		fprintf(stderr, "fake: keys: %s\n", err);
		failures++;
	}
	f->silent = silent;
	f->garbage = garbage;
	f->map_addr = map_addr;
	f->map_only = map_only;
	pthread_mutex_init(&f->mu, NULL);
	f->fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(f->fd, (struct sockaddr *)&a, sizeof a);
	socklen_t al = sizeof a;
	getsockname(f->fd, (struct sockaddr *)&a, &al);
	f->port = ntohs(a.sin_port);
	snprintf(f->addr, sizeof f->addr, "127.0.0.1:%d", f->port);
	pthread_create(&f->th, NULL, fake_main, f);
}

static void fake_start_map(struct fake *f, int silent, int garbage, const char *map_addr, int map_only)
{
	fake_start_full(f, silent, garbage, map_addr, map_only, 0);
}

static void fake_start(struct fake *f, int silent, int garbage) { fake_start_map(f, silent, garbage, NULL, 0); }

static void fake_stop(struct fake *f)
{
	pthread_mutex_lock(&f->mu);
	f->stop = 1;
	pthread_mutex_unlock(&f->mu);
	pthread_join(f->th, NULL);
	close(f->fd);
	pthread_mutex_destroy(&f->mu);
}

/* The fake sends a REVOKE for `fence` of `name` to the last client. */
static void fake_revoke(struct fake *f, const char *name, uint64_t fence, int wanted)
{
	static struct tkw_msg m;
	memset(&m, 0, sizeof m);
	pthread_mutex_lock(&f->mu);
	m.h.type = TKW_REVOKE;
	m.h.session = f->session;
	m.h.request = ++f->revoke_seq;
	m.h.shard = tkw_shard(name, strlen(name), 64);
	m.h.epoch = 1;
	m.h.map_version = 1;
	m.fence = fence;
	m.mode = (uint8_t)wanted;
	m.end = TKW_WHOLE_END;
	m.name.p = (const uint8_t *)name;
	m.name.len = strlen(name);
	struct sockaddr_in to = f->client;
	pthread_mutex_unlock(&f->mu);
	fake_send(f, &m, &to);
}

static int fake_get(struct fake *f, const int *field)
{
	pthread_mutex_lock(&f->mu);
	int v = *field;
	pthread_mutex_unlock(&f->mu);
	return v;
}

static int fake_released(struct fake *f, uint64_t fence)
{
	pthread_mutex_lock(&f->mu);
	int found = 0;
	for (int i = 0; i < f->nreleased; i++)
		found |= f->released_fences[i] == fence;
	pthread_mutex_unlock(&f->mu);
	return found;
}

/* ------------------------------------------------------------ tests */

static void test_names(void)
{
	CHECK(strcmp(tokend_version(), TOKEND_VERSION_STRING) == 0, "version");
	CHECK(TOKEND_VERSION_NUMBER == TOKEND_VERSION_MAJOR * 10000 + TOKEND_VERSION_MINOR * 100 + TOKEND_VERSION_PATCH,
	      "version number");
	for (int s = 0; s >= -20; s--) {
		const char *t = tokend_strerror(s);
		CHECK(t && *t && strcmp(t, tokend_strerror(-999)) != 0, "strerror(%d)", s);
		for (int u = s - 1; u >= -20; u--)
			CHECK(strcmp(t, tokend_strerror(u)) != 0, "strerror(%d) == strerror(%d)", s, u);
	}
	tokend_mode m;
	const char *names[] = {"NL", "CR", "CW", "PR", "PW", "EX"};
	for (int i = 0; i < 6; i++) {
		CHECK(strcmp(tokend_mode_name((tokend_mode)i), names[i]) == 0, "mode name %d", i);
		CHECK(tokend_mode_parse(names[i], &m) == TOKEND_OK && (int)m == i, "parse %s", names[i]);
	}
	CHECK(tokend_mode_parse("Shared", &m) == TOKEND_OK && m == TOKEND_PR, "shared");
	CHECK(tokend_mode_parse("exclusive", &m) == TOKEND_OK && m == TOKEND_EX, "exclusive");
	CHECK(tokend_mode_parse("xx", &m) == TOKEND_EINVAL, "bad mode");
	CHECK(tokend_mode_parse(NULL, &m) == TOKEND_EINVAL, "NULL mode");
	/* SPEC 8 table */
	CHECK(tokend_hash("a", 1) == UINT64_C(0xaf63dc4c8601ec8c), "hash a");
	CHECK(tokend_hash("file/7/page/3", 13) % 4096 == 2083, "shard of file/7/page/3");
	CHECK(tokend_hash("\0", 1) == UINT64_C(0xaf63bd4c8601b7df), "hash of a zero byte");
}

static void test_connect_errors(void)
{
	tokend_options o;
	tokend_client *c = (tokend_client *)1;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	CHECK_RC(tokend_connect(NULL, &c), TOKEND_EINVAL, "NULL options");
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "no seeds");
	CHECK(c == NULL, "*out not cleared");
	const char *bad[] = {"nohostport"};
	o.seeds = bad;
	o.nseeds = 1;
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "seed without port");
	const char *bad2[] = {"1.2.3.4:99999"};
	o.seeds = bad2;
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "port out of range");
	const char *bad3[] = {"::1:7700"};
	o.seeds = bad3;
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "IPv6 without brackets");
	o.seeds = NULL;
	o.nseeds = 0;
	/* multicast discovery: the announce key is required, parsed strictly */
	char eb[256];
	o.errbuf = eb;
	o.errbuf_len = sizeof eb;
	o.multicast = "239.1.2.3:7701";
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EAUTH, "multicast without an announce key");
	CHECK(strstr(eb, "announcements need the cluster's announce key: tokenctl announce-key") != NULL,
	      "no announce key: %s", eb);
	o.announce_key = "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64/sNfV8zkDo1Q"; /* '/' is not base64url */
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EAUTH, "a malformed announce key");
	o.announce_key = "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q";
	o.multicast = "10.1.2.3:7701";
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "a group that is not multicast");
	o.multicast = NULL;
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EINVAL, "announce_key without multicast");
	o.announce_key = NULL;
	o.errbuf = NULL;
	o.errbuf_len = 0;
	CHECK_RC(tokend_close(NULL), TOKEND_OK, "close NULL");
	tokend_grant g;
	memset(&g, 0, sizeof g);
	CHECK_RC(tokend_acquire(NULL, "a", 1, TOKEND_EX, 0, &g), TOKEND_EINVAL, "acquire NULL client");
	CHECK_RC(tokend_release(NULL, &g, NULL, 0), TOKEND_EINVAL, "release NULL client");
	CHECK(tokend_session_id(NULL) == 0, "session id NULL");
}

/* A silent worker: connect gives up after connect_timeout_ms. */
static void test_unreachable(void)
{
	struct fake f;
	fake_start(&f, 1, 0);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f.addr, "[::1]:9"};
	o.seeds = seeds;
	o.nseeds = 2;
	o.connect_timeout_ms = 300;
	char err[256];
	o.errbuf = err;
	o.errbuf_len = sizeof err;
	tokend_client *c;
	int64_t t0 = now_ms();
	CHECK_RC(tokend_connect(&o, &c), TOKEND_EUNREACHABLE, "silent worker");
	int64_t took = now_ms() - t0;
	CHECK(took >= 250 && took < 2000, "connect gave up after %" PRId64 " ms", took);
	CHECK(strstr(err, f.addr) && strstr(err, "MAP_REQUEST"), "connect's message: \"%s\"", err);
	printf("silent seed: %s\n", err);
	fake_stop(&f);
}

/*
 * Issue 17: a map whose worker never answers. (1) The seed answers only
 * MAP_REQUEST: connect fails within its deadline, naming the silent worker.
 * (2) The seed also opens sessions: connect works, but acquire (try, and a
 * wait) fails within its deadline, and tokend_last_error names the silent
 * worker and the shard.
 */
static void test_silent_map(void)
{
	struct fake silent, seed;
	fake_start(&silent, 1, 0); /* a bound UDP socket that never replies */
	char err[256];
	for (int opens = 0; opens <= 1; opens++) {
		fake_start_map(&seed, 0, 0, silent.addr, !opens);
		tokend_options o;
		tokend_options_init(&o);
	o.key = TEST_KEY;
		const char *seeds[] = {seed.addr};
		o.seeds = seeds;
		o.nseeds = 1;
		o.connect_timeout_ms = 500;
		o.errbuf = err;
		o.errbuf_len = sizeof err;
		tokend_client *c = NULL;
		int64_t t0 = now_ms();
		int rc = tokend_connect(&o, &c);
		int64_t took = now_ms() - t0;
		CHECK(took < 1500, "connect took %" PRId64 " ms (limit 500)", took);
		if (!opens) {
			CHECK_RC(rc, TOKEND_EUNREACHABLE, "connect, the map's worker silent");
			CHECK(strstr(err, silent.addr) && strstr(err, "SESSION_OPEN"), "connect's message: \"%s\"", err);
			printf("silent map: %s\n", err);
			fake_stop(&seed);
			continue;
		}
		CHECK_RC(rc, TOKEND_OK, "connect to a seed that opens sessions");
		CHECK(err[0] == 0, "errbuf after success: \"%s\"", err);
		if (rc != TOKEND_OK) {
			fake_stop(&seed);
			continue;
		}
		char last[256];
		CHECK(tokend_last_error(c, last, sizeof last)[0] == 0, "last error before any failure: \"%s\"", last);
		tokend_grant g;
		t0 = now_ms();
		CHECK_RC(tokend_acquire(c, "far", 3, TOKEND_EX, TOKEND_TRY, &g), TOKEND_ETIMEDOUT, "try on a silent worker");
		took = now_ms() - t0;
		CHECK(took >= 450 && took < 1500, "try gave up after %" PRId64 " ms (connect timeout 500)", took);
		tokend_last_error(c, last, sizeof last);
		CHECK(strstr(last, silent.addr) && strstr(last, "no answer") && strstr(last, "\"far\""),
		      "acquire's message: \"%s\"", last);
		printf("silent worker: %s\n", last);
		t0 = now_ms();
		CHECK_RC(tokend_acquire(c, "far", 3, TOKEND_EX, 300, &g), TOKEND_ETIMEDOUT, "wait on a silent worker");
		took = now_ms() - t0;
		CHECK(took >= 250 && took < 1500, "a 300 ms wait gave up after %" PRId64 " ms", took);
		CHECK(strstr(tokend_last_error(c, last, sizeof last), silent.addr), "wait's message: \"%s\"", last);
		tokend_close(c);
		fake_stop(&seed);
	}
	fake_stop(&silent);
}

static int revokes_seen;
static int revoke_wanted = -1;
static int revoke_release_rc = 99, revoke_convert_rc = 99, revoke_acquire_rc = 99, revoke_close_rc = 99;
static pthread_mutex_t cb_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted, uint64_t start, uint64_t end,
		      void *arg)
{
	(void)start;
	(void)end;
	(void)arg;
	tokend_grant copy = *g, other;
	int acq = tokend_acquire(c, "x", 1, TOKEND_EX, 0, &other); /* would wait: refused */
	int cl = tokend_close(c);                                  /* refused */
	int conv = 99, rel;
	if (wanted == TOKEND_PR) {
		conv = tokend_convert(c, &copy, TOKEND_EX, 0, NULL, 0); /* an upgrade: refused */
		rel = tokend_convert(c, &copy, TOKEND_PR, 0, NULL, 0);  /* a downgrade: allowed */
	} else {
		rel = tokend_release(c, g, NULL, 0);
	}
	pthread_mutex_lock(&cb_mu);
	revokes_seen++;
	revoke_wanted = (int)wanted;
	revoke_release_rc = rel;
	revoke_convert_rc = conv;
	revoke_acquire_rc = acq;
	revoke_close_rc = cl;
	pthread_mutex_unlock(&cb_mu);
}

static int cb_get(const int *v)
{
	pthread_mutex_lock(&cb_mu);
	int x = *v;
	pthread_mutex_unlock(&cb_mu);
	return x;
}

static int wait_for(int (*pred)(void *), void *arg, int ms)
{
	int64_t t0 = now_ms();
	while (now_ms() - t0 < ms) {
		if (pred(arg))
			return 1;
		sleep_ms(10);
	}
	return pred(arg);
}

struct fence_arg {
	struct fake *f;
	uint64_t fence;
};

static int released_pred(void *a)
{
	struct fence_arg *x = a;
	return fake_released(x->f, x->fence);
}

static int revokes_pred(void *a)
{
	return cb_get(&revokes_seen) >= *(int *)a;
}

/*
 * Start a fake worker (garbage: it also sends junk) and connect to it with
 * the options most tests use: TEST_KEY, a 2 s session, on_revoke. On
 * failure the check has failed and the fake is stopped.
 */
static int connect_fake(struct fake *f, int garbage, tokend_client **c)
{
	fake_start(f, 0, garbage);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f->addr};
	o.seeds = seeds;
	o.nseeds = 1;
	o.session_ttl_ms = 2000;
	o.on_revoke = on_revoke;
	int rc = tokend_connect(&o, c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK)
		fake_stop(f);
	return rc;
}

static void test_fake(int garbage)
{
	struct fake f;
	tokend_client *c;
	if (connect_fake(&f, garbage, &c) != TOKEND_OK)
		return;
	CHECK(tokend_session_id(c) == 4243, "session id %" PRIu64, tokend_session_id(c));

	tokend_grant g, g2;
	CHECK_RC(tokend_acquire(c, "tok", 3, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	CHECK(g.fence == ((UINT64_C(1) << 40) | 1), "fence %" PRIu64, g.fence);
	CHECK(g.validity_ms > 500 && g.validity_ms <= 800, "validity %u", g.validity_ms);
	CHECK_RC(tokend_acquire_range(c, "rng", 3, TOKEND_PW, 10, 20, 100, &g2), TOKEND_OK, "acquire range");
	CHECK(g2.start == 10 && g2.end == 20 && g2.mode == TOKEND_PW, "range grant");
	/* rejected before anything is sent */
	tokend_grant g3 = g2;
	CHECK_RC(tokend_acquire_ex(c, "rng", 3, TOKEND_PW, 30, 40, TOKEND_TRY, 0x80, &g3), TOKEND_EINVAL,
		 "acquire_ex: unknown flags");
	CHECK_RC(tokend_acquire_ex(NULL, "rng", 3, TOKEND_PW, 30, 40, TOKEND_TRY, TOKEND_ACQUIRE_GROW, &g3),
		 TOKEND_EINVAL, "acquire_ex: NULL");
	CHECK_RC(tokend_acquire_ex(c, "rng", 3, TOKEND_PW, 40, 30, TOKEND_TRY, TOKEND_ACQUIRE_GROW, &g3),
		 TOKEND_EINVAL, "acquire_ex: start > end");
	CHECK_RC(tokend_release_range(c, &g3, 12, 15), TOKEND_EINVAL, "release_range: a hole in the middle");
	CHECK_RC(tokend_release_range(c, &g3, 5, 15), TOKEND_EINVAL, "release_range: starts outside");
	CHECK_RC(tokend_release_range(c, &g3, 15, 25), TOKEND_EINVAL, "release_range: ends outside");
	CHECK_RC(tokend_release_range(c, &g3, 15, 15), TOKEND_EINVAL, "release_range: empty");
	CHECK_RC(tokend_release_range(c, &g3, 0, 0), TOKEND_EINVAL, "release_range: the whole token");
	CHECK(g3.start == 10 && g3.end == 20 && g3.fence == g2.fence, "a refused range changed the grant");

	/* hold past several keepalive periods (W/3 = 300 ms; validity 800 ms) */
	sleep_ms(1500);
	uint32_t left = 0;
	CHECK_RC(tokend_grant_check(c, &g, &left), TOKEND_OK, "still valid after 1.5 s");
	CHECK(left > 0, "no validity left");
	CHECK(fake_get(&f, &f.keepalives) >= 3, "%d keepalives", fake_get(&f, &f.keepalives));
	CHECK(fake_get(&f, &f.renews) >= 3, "%d renews", fake_get(&f, &f.renews));

	/* a REVOKE: callback once (duplicates are not handed over twice), released from it */
	pthread_mutex_lock(&cb_mu);
	revokes_seen = 0;
	pthread_mutex_unlock(&cb_mu);
	fake_revoke(&f, "tok", g.fence, TOKEND_NL);
	fake_revoke(&f, "tok", g.fence, TOKEND_NL);
	int one = 1;
	CHECK(wait_for(revokes_pred, &one, 2000), "no revoke callback");
	struct fence_arg fa = {&f, g.fence};
	CHECK(wait_for(released_pred, &fa, 2000), "revoked grant not released");
	sleep_ms(100);
	CHECK(cb_get(&revokes_seen) == 1, "%d revoke callbacks for one revocation", cb_get(&revokes_seen));
	CHECK(cb_get(&revoke_wanted) == TOKEND_NL, "wanted");
	CHECK_RC(cb_get(&revoke_release_rc), TOKEND_OK, "release in the callback");
	CHECK_RC(cb_get(&revoke_acquire_rc), TOKEND_ECALLBACK, "acquire in the callback");
	CHECK_RC(cb_get(&revoke_close_rc), TOKEND_ECALLBACK, "close in the callback");
	CHECK(fake_get(&f, &f.revoke_acks) >= 2, "%d REVOKE_ACKs", fake_get(&f, &f.revoke_acks));
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_ENOTHELD, "revoked grant");

	/* downgrade in a callback: PW range grant, wanted PR */
	fake_revoke(&f, "rng", g2.fence, TOKEND_PR);
	int two = 2;
	CHECK(wait_for(revokes_pred, &two, 2000), "no second revoke callback");
	CHECK_RC(cb_get(&revoke_release_rc), TOKEND_OK, "downgrade in the callback");
	CHECK_RC(cb_get(&revoke_convert_rc), TOKEND_ECALLBACK, "upgrade in the callback");
	sleep_ms(100);
	CHECK(fake_get(&f, &f.converts) == 1, "%d converts", fake_get(&f, &f.converts));

	/* a REVOKE for a fence we never had: answered by RELEASE */
	uint64_t stranger = (UINT64_C(1) << 40) | 999;
	fake_revoke(&f, "nobody", stranger, TOKEND_NL);
	struct fence_arg fs = {&f, stranger};
	CHECK(wait_for(released_pred, &fs, 2000), "unknown fence not released");

	/* release with a value, twice */
	CHECK_RC(tokend_acquire(c, "val", 3, TOKEND_EX, 0, &g), TOKEND_OK, "acquire val");
	CHECK_RC(tokend_release(c, &g, "abc", 3), TOKEND_OK, "release with value");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_ENOTHELD, "release again");

	int opened = fake_get(&f, &f.sessions_opened);
	CHECK(opened == 1, "%d sessions opened", opened);
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	CHECK(fake_get(&f, &f.sessions_closed) >= 1, "no SESSION_CLOSE");
	fake_stop(&f);
}

/*
 * The token cache against the fake: off by default; once on, a released
 * grant stays held (no RELEASE), re-acquires send nothing and keep the
 * fence, a REVOKE of the cached grant is answered by a RELEASE without
 * on_revoke, and a value release is not cached.
 */
struct cache_ex {
	tokend_client *c;
	int rc, done;
	tokend_grant g;
};

static void *cache_ex_acquire(void *arg)
{
	struct cache_ex *x = arg;
	x->rc = tokend_acquire(x->c, "co", 2, TOKEND_EX, TOKEND_TRY, &x->g);
	__atomic_store_n(&x->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static void test_cache(void)
{
	struct fake f;
	tokend_client *c;
	if (connect_fake(&f, 0, &c) != TOKEND_OK)
		return;
	tokend_cache_stats st;
	CHECK_RC(tokend_token_cache(NULL, 1, 0), TOKEND_EINVAL, "cache of NULL");
	CHECK_RC(tokend_token_cache(c, 1, -1), TOKEND_EINVAL, "negative idle time");
	CHECK_RC(tokend_get_cache_stats(NULL, &st), TOKEND_EINVAL, "cache stats of NULL");
	CHECK_RC(tokend_get_cache_stats(c, NULL), TOKEND_EINVAL, "cache stats into NULL");

	tokend_grant g, g2;
	CHECK_RC(tokend_acquire(c, "cc", 2, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release, cache off");
	struct fence_arg fa = {&f, g.fence};
	CHECK(wait_for(released_pred, &fa, 2000), "no RELEASE with the cache off");

	CHECK_RC(tokend_token_cache(c, TOKEND_DEFAULT_TOKEN_CACHE, 0), TOKEND_OK, "cache on");
	CHECK_RC(tokend_acquire(c, "cc", 2, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	int acq = fake_get(&f, &f.acquires), rel = fake_get(&f, &f.releases);
	for (int i = 0; i < 100; i++) {
		CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release into the cache");
		CHECK_RC(tokend_acquire(c, "cc", 2, i % 2 ? TOKEND_PR : TOKEND_EX, TOKEND_TRY, &g2), TOKEND_OK,
			 "acquire from the cache");
		CHECK(g2.fence == g.fence && g2.mode == TOKEND_EX, "hit %d: fence %" PRIu64 " mode %d", i, g2.fence,
		      g2.mode);
	}
	CHECK(fake_get(&f, &f.acquires) == acq && fake_get(&f, &f.releases) == rel,
	      "the cached pairs sent %d ACQUIREs and %d RELEASEs", fake_get(&f, &f.acquires) - acq,
	      fake_get(&f, &f.releases) - rel);
	CHECK_RC(tokend_get_cache_stats(c, &st), TOKEND_OK, "stats");
	CHECK(st.hits == 100 && st.misses == 1 && st.cached == 0, "hits %" PRIu64 " misses %" PRIu64 " cached %" PRIu64,
	      st.hits, st.misses, st.cached);

	/* a REVOKE of the cached grant: RELEASE at once, no callback */
	pthread_mutex_lock(&cb_mu);
	revokes_seen = 0;
	pthread_mutex_unlock(&cb_mu);
	CHECK_RC(tokend_release(c, &g2, NULL, 0), TOKEND_OK, "release into the cache");
	fake_revoke(&f, "cc", g.fence, TOKEND_NL);
	fa.fence = g.fence;
	CHECK(wait_for(released_pred, &fa, 2000), "cached grant not released on REVOKE");
	sleep_ms(50);
	CHECK(cb_get(&revokes_seen) == 0, "%d revoke callbacks for a cached grant", cb_get(&revokes_seen));
	CHECK_RC(tokend_get_cache_stats(c, &st), TOKEND_OK, "stats");
	CHECK(st.revoked == 1 && st.cached == 0, "revoked %" PRIu64 " cached %" PRIu64, st.revoked, st.cached);

	/* a conflicting re-acquire gives the cached grant back and sends its
	 * ACQUIRE only once that RELEASE is answered */
	CHECK_RC(tokend_acquire(c, "co", 2, TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "acquire PR");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release PR into the cache");
	pthread_mutex_lock(&f.mu);
	f.drop_releases = 1;
	pthread_mutex_unlock(&f.mu);
	acq = fake_get(&f, &f.acquires);
	struct cache_ex x = {c, TOKEND_ETIMEDOUT, 0, {0}};
	pthread_t th;
	CHECK(pthread_create(&th, NULL, cache_ex_acquire, &x) == 0, "thread");
	sleep_ms(300);
	CHECK(fake_get(&f, &f.acquires) == acq, "the ACQUIRE went out before the cached grant's RELEASE was answered");
	CHECK(!__atomic_load_n(&x.done, __ATOMIC_SEQ_CST), "the EX acquire returned while the PR was being given back");
	pthread_mutex_lock(&f.mu);
	f.drop_releases = 0;
	pthread_mutex_unlock(&f.mu);
	pthread_join(th, NULL);
	CHECK_RC(x.rc, TOKEND_OK, "EX after the cached PR was given back");
	CHECK(x.g.fence > g.fence, "EX fence %" PRIu64 " after the cached PR's %" PRIu64, x.g.fence, g.fence);
	fa.fence = g.fence;
	CHECK(fake_released(&f, g.fence), "the cached PR was not released");
	CHECK(fake_get(&f, &f.acquires) == acq + 1, "%d ACQUIREs", fake_get(&f, &f.acquires) - acq);
	CHECK_RC(tokend_release(c, &x.g, "y", 1), TOKEND_OK, "release EX");

	/* a value release is sent */
	CHECK_RC(tokend_acquire(c, "cv", 2, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	CHECK_RC(tokend_release(c, &g, "x", 1), TOKEND_OK, "release with a value");
	fa.fence = g.fence;
	CHECK(wait_for(released_pred, &fa, 2000), "a value release was cached");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close with the cache on");
	fake_stop(&f);
}

/* tokend_options keeps the first release's layout: new fields took reserved slots. */
struct options_0_1 {
	const char *const *seeds;
	size_t nseeds;
	const char *multicast;
	uint32_t session_ttl_ms, connect_timeout_ms, rto_ms;
	tokend_revoke_fn on_revoke;
	tokend_lost_fn on_lost;
	void *cb_arg;
	void *reserved[8];
};

/* tokend_cache_stats keeps the first release's layout: splits took a reserved slot. */
struct cache_stats_0_1 {
	uint64_t hits, misses, revoked, evictions, cached;
	uint64_t reserved[3];
};

static void test_options_abi(void)
{
	CHECK(sizeof(tokend_cache_stats) == sizeof(struct cache_stats_0_1) &&
		      offsetof(tokend_cache_stats, splits) == offsetof(struct cache_stats_0_1, reserved),
	      "tokend_cache_stats layout changed");
	CHECK(sizeof(tokend_options) == sizeof(struct options_0_1), "sizeof(tokend_options) %zu, was %zu",
	      sizeof(tokend_options), sizeof(struct options_0_1));
	CHECK(offsetof(tokend_options, cb_arg) == offsetof(struct options_0_1, cb_arg), "cb_arg moved");
	CHECK(offsetof(tokend_options, rto_ms) == offsetof(struct options_0_1, rto_ms), "rto_ms moved");
	tokend_options o;
	memset(&o, 0xff, sizeof o);
	tokend_options_init(&o);
	CHECK(o.on_jeopardy == NULL && o.jeopardy_ms == 0 && o.errbuf == NULL && o.errbuf_len == 0 &&
		      o.key_file == NULL && o.key == NULL && o.insecure == 0 && o.announce_key == NULL,
	      "options_init leaves junk");
}

/* Callbacks that record what they were told (no action). */
static struct {
	int revokes, losts, jeopardies;
	uint64_t fence;
	int mode, wanted;
} rec;

static void rec_revoke(tokend_client *c, const tokend_grant *g, tokend_mode wanted, uint64_t start, uint64_t end,
		       void *arg)
{
	(void)c, (void)start, (void)end, (void)arg;
	pthread_mutex_lock(&cb_mu);
	rec.revokes++;
	rec.fence = g->fence;
	rec.mode = (int)g->mode;
	rec.wanted = (int)wanted;
	pthread_mutex_unlock(&cb_mu);
}

static void rec_lost(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	(void)c, (void)g, (void)why, (void)arg;
	pthread_mutex_lock(&cb_mu);
	rec.losts++;
	pthread_mutex_unlock(&cb_mu);
}

static void rec_jeopardy(tokend_client *c, const tokend_grant *g, int recovered, void *arg)
{
	(void)c, (void)g, (void)recovered, (void)arg;
	pthread_mutex_lock(&cb_mu);
	rec.jeopardies++;
	pthread_mutex_unlock(&cb_mu);
}

static int rec_revokes_pred(void *a)
{
	(void)a;
	return cb_get(&rec.revokes) > 0;
}

/*
 * on_revoke is told the grant that was revoked: after an upgrade (new
 * fence), a REVOKE for the old fence is not the new grant's (it is answered
 * by RELEASE of that fence), and one for the new fence carries the new fence
 * and mode. Closing with grants held is quiet: no on_lost, no on_jeopardy.
 */
static void test_revoke_after_upgrade(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f.addr};
	o.seeds = seeds;
	o.nseeds = 1;
	o.on_revoke = rec_revoke;
	o.on_lost = rec_lost;
	o.on_jeopardy = rec_jeopardy;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	memset(&rec, 0, sizeof rec);
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, "up", 2, TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "acquire PR");
	uint64_t f1 = g.fence;
	CHECK_RC(tokend_convert(c, &g, TOKEND_EX, 1000, NULL, 0), TOKEND_OK, "upgrade to EX");
	CHECK(g.fence != f1 && g.mode == TOKEND_EX, "upgrade: fence %" PRIu64 " (was %" PRIu64 ") mode %d", g.fence,
	      f1, g.mode);
	fake_revoke(&f, "up", f1, TOKEND_NL);
	struct fence_arg fa = {&f, f1};
	CHECK(wait_for(released_pred, &fa, 2000), "REVOKE of the old fence not answered by RELEASE");
	CHECK(cb_get(&rec.revokes) == 0, "on_revoke called for the old fence");
	fake_revoke(&f, "up", g.fence, TOKEND_PR);
	CHECK(wait_for(rec_revokes_pred, NULL, 2000), "no on_revoke for the new fence");
	pthread_mutex_lock(&cb_mu);
	CHECK(rec.revokes == 1 && rec.fence == g.fence && rec.mode == TOKEND_EX && rec.wanted == TOKEND_PR,
	      "on_revoke told %d times, fence %" PRIu64 " mode %d wanted %d", rec.revokes, rec.fence, rec.mode,
	      rec.wanted);
	pthread_mutex_unlock(&cb_mu);
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	CHECK(cb_get(&rec.losts) == 0 && cb_get(&rec.jeopardies) == 0, "close with a grant held: %d lost, %d jeopardy",
	      cb_get(&rec.losts), cb_get(&rec.jeopardies));
	fake_stop(&f);
}

static void fake_set(struct fake *f, int *field, int v)
{
	pthread_mutex_lock(&f->mu);
	*field = v;
	pthread_mutex_unlock(&f->mu);
}

/*
 * Asynchronous grants are confirmed before acquire returns them (SPEC 13;
 * issue 11). The fake queues "q/..." for 700 ms and then sends GRANT_ASYNC
 * with 800 ms of validity, which, counted from the first send of the
 * ACQUIRE, leaves about 80 ms: acquire must get the worker to vouch anew
 * (a KEEPALIVE sent after the grant) and return at least (W - margin)/2 =
 * 440 ms (W 900 ms). When the worker cannot vouch, acquire fails at its
 * wait limit with TOKEND_ETIMEDOUT and gives the grant back.
 */
static void test_async_confirm(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	fake_set(&f, &f.queue_ms, 700);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f.addr};
	o.seeds = seeds;
	o.nseeds = 1;
	o.session_ttl_ms = 2000;
	o.on_lost = rec_lost;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	memset(&rec, 0, sizeof rec);
	tokend_grant g, g2;
	int64_t t0 = now_ms();
	CHECK_RC(tokend_acquire(c, "q/a", 3, TOKEND_EX, 3000, &g), TOKEND_OK, "queued acquire");
	int64_t took = now_ms() - t0;
	uint32_t left = 0;
	CHECK_RC(tokend_grant_check(c, &g, &left), TOKEND_OK, "the queued grant on return");
	CHECK(took >= 650 && g.validity_ms >= 400 && left >= 400,
	      "queued %" PRId64 " ms, then %" PRIu32 " ms of validity (%" PRIu32 " ms left): want >= 440", took,
	      g.validity_ms, left);
	printf("async grant after %" PRId64 " ms in the queue: %" PRIu32 " ms left\n", took, left);
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release the confirmed grant");

	/* (a held grant would be lost now: nothing is vouched for) */
	fake_set(&f, &f.ka_cannot_vouch, 1);
	t0 = now_ms();
	CHECK_RC(tokend_acquire(c, "q/b", 3, TOKEND_EX, 1000, &g2), TOKEND_ETIMEDOUT, "a grant nobody vouches for");
	took = now_ms() - t0;
	CHECK(took >= 1000 && took < 2000, "gave up after %" PRId64 " ms (wait 1000 ms + slack)", took);
	pthread_mutex_lock(&f.mu);
	struct fence_arg fa = {&f, f.q_fence};
	pthread_mutex_unlock(&f.mu);
	CHECK(wait_for(released_pred, &fa, 2000), "the unconfirmed grant was not given back");
	char last[256];
	CHECK(strstr(tokend_last_error(c, last, sizeof last), "vouch"), "message: \"%s\"", last);
	CHECK(cb_get(&rec.losts) == 0, "on_lost for a grant the caller never had");
	CHECK_RC(tokend_grant_check(c, &g2, NULL), TOKEND_ENOTHELD, "the unconfirmed grant");
	tokend_close(c);
	fake_stop(&f);
}

/*
 * An upgrade that waited in a queue is confirmed like an acquire; if it
 * cannot be, convert returns TOKEND_ETIMEDOUT, the new grant is given back,
 * and on_lost is told about the grant the caller had (old fence and mode).
 */
static struct {
	int n;
	uint64_t fence;
	int mode, why;
} lost_seen;

static void lost_record(tokend_client *c, const tokend_grant *g, tokend_status why, void *arg)
{
	(void)c, (void)arg;
	pthread_mutex_lock(&cb_mu);
	lost_seen.n++;
	lost_seen.fence = g->fence;
	lost_seen.mode = (int)g->mode;
	lost_seen.why = (int)why;
	pthread_mutex_unlock(&cb_mu);
}

static int lost_seen_pred(void *a)
{
	(void)a;
	return cb_get(&lost_seen.n) > 0;
}

static void test_upgrade_confirm(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f.addr};
	o.seeds = seeds;
	o.nseeds = 1;
	o.session_ttl_ms = 2000;
	o.on_lost = lost_record;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	memset(&lost_seen, 0, sizeof lost_seen);
	tokend_grant g, g2;
	CHECK_RC(tokend_acquire(c, "q/u", 3, TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "acquire PR");
	CHECK_RC(tokend_acquire(c, "q/v", 3, TOKEND_PR, TOKEND_TRY, &g2), TOKEND_OK, "acquire another PR");
	fake_set(&f, &f.queue_ms, 700);
	uint64_t f0 = g.fence;
	CHECK_RC(tokend_convert(c, &g, TOKEND_EX, 3000, NULL, 0), TOKEND_OK, "queued upgrade");
	uint32_t left = 0;
	CHECK_RC(tokend_grant_check(c, &g, &left), TOKEND_OK, "the upgraded grant");
	CHECK(g.fence != f0 && g.mode == TOKEND_EX && left >= 400, "upgrade: fence %" PRIu64 " mode %d, %" PRIu32 " ms left",
	      g.fence, g.mode, left);
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release the upgraded grant");

	/* now nothing is vouched for: the upgrade cannot be confirmed */
	fake_set(&f, &f.ka_cannot_vouch, 1);
	/* granted with too little left (800 - 500 ms), before g2 (renewed last at most
	 * 225 ms ago) could be lost by the grace rule (800 - 225 + 300 ms) */
	fake_set(&f, &f.queue_ms, 500);
	tokend_grant before = g2;
	CHECK_RC(tokend_convert(c, &g2, TOKEND_EX, 1000, NULL, 0), TOKEND_ETIMEDOUT, "an upgrade nobody vouches for");
	CHECK(g2.fence == before.fence && g2.mode == TOKEND_PR, "*g changed on failure");
	CHECK(wait_for(lost_seen_pred, NULL, 2000), "on_lost not called for the caller's grant");
	pthread_mutex_lock(&cb_mu);
	CHECK(lost_seen.fence == before.fence && lost_seen.mode == TOKEND_PR && lost_seen.why == TOKEND_ELOST,
	      "on_lost told fence %" PRIu64 " mode %d why %d", lost_seen.fence, lost_seen.mode, lost_seen.why);
	pthread_mutex_unlock(&cb_mu);
	pthread_mutex_lock(&f.mu);
	struct fence_arg fa = {&f, f.q_fence};
	pthread_mutex_unlock(&f.mu);
	CHECK(wait_for(released_pred, &fa, 2000), "the unconfirmed upgrade was not given back");
	CHECK_RC(tokend_grant_check(c, &g2, NULL), TOKEND_ENOTHELD, "the caller's grant after a failed upgrade");
	tokend_close(c);
	fake_stop(&f);
}

/*
 * A DEADLOCK answer to a queued ACQUIRE or upgrade ends the wait at once
 * with TOKEND_EDEADLK; the grant being converted stays, as it was.
 */
static void test_deadlock_answer(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	tokend_options o;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	const char *seeds[] = {f.addr};
	o.seeds = seeds;
	o.nseeds = 1;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	tokend_grant g, g2;
	int64_t t0 = now_ms();
	CHECK_RC(tokend_acquire(c, "dl/a", 4, TOKEND_EX, 10000, &g2), TOKEND_EDEADLK, "queued acquire answered DEADLOCK");
	CHECK(now_ms() - t0 < 3000, "DEADLOCK took %" PRId64 " ms to end the wait", now_ms() - t0);
	char last[256];
	CHECK(strstr(tokend_last_error(c, last, sizeof last), "DEADLOCK"), "message: \"%s\"", last);
	CHECK_RC(tokend_acquire(c, "dl/b", 4, TOKEND_PR, TOKEND_TRY, &g), TOKEND_OK, "acquire PR");
	tokend_grant before = g;
	t0 = now_ms();
	CHECK_RC(tokend_convert(c, &g, TOKEND_EX, 10000, NULL, 0), TOKEND_EDEADLK, "queued upgrade answered DEADLOCK");
	CHECK(now_ms() - t0 < 3000, "DEADLOCK took %" PRId64 " ms to end the upgrade", now_ms() - t0);
	CHECK(g.fence == before.fence && g.mode == TOKEND_PR, "the grant changed: fence %" PRIu64 " mode %d", g.fence,
	      g.mode);
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_OK, "the grant after DEADLOCK");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release after DEADLOCK");
	tokend_close(c);
	fake_stop(&f);
}

/* Connect to f with o; the status, and the message in err. */
static int try_connect(struct fake *f, tokend_options *o, char *err, size_t cap, tokend_client **c)
{
	static const char *seeds[1];
	seeds[0] = f->addr;
	o->seeds = seeds;
	o->nseeds = 1;
	o->errbuf = err;
	o->errbuf_len = cap;
	if (!o->connect_timeout_ms)
		o->connect_timeout_ms = 1000;
	*c = NULL;
	return tokend_connect(o, c);
}

static int write_file(const char *path, const char *text)
{
	FILE *w = fopen(path, "w");
	if (!w)
		return -1;
	fputs(text, w);
	return fclose(w);
}

/*
 * Where the client key comes from (tokend_options): key, key_file,
 * $TOKEND_KEY_FILE, tokend-data/pki/client.key in the working directory;
 * none (and not insecure) is TOKEND_EAUTH with a message naming the ways;
 * bad ones are TOKEND_EAUTH naming the file and the fault, never the key.
 */
static void test_key_sources(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	char dir[] = "/tmp/test_api_keysXXXXXX", path[128], cwd[512], err[256];
	tokend_options o;
	tokend_client *c;
	if (!mkdtemp(dir) || !getcwd(cwd, sizeof cwd) || chdir(dir) != 0) {
		CHECK(0, "temp dir: %s", strerror(errno));
		fake_stop(&f);
		return;
	}
	unsetenv("TOKEND_KEY_FILE");

	tokend_options_init(&o);
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_EAUTH, "no key anywhere");
	CHECK(strstr(err, "no client key") && strstr(err, "key_file") && strstr(err, "TOKEND_KEY_FILE") &&
		      strstr(err, "tokend-data/pki/client.key") && strstr(err, "insecure"),
	      "no key: \"%s\"", err);
	CHECK(fake_get(&f, &f.sessions_opened) == 0, "a session opened without a key");

	tokend_options_init(&o);
	o.key = "tokend-key v1 test AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGx";
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_EAUTH, "a short key");
	CHECK(strstr(err, "options.key") && strstr(err, "43 characters") && !strstr(err, "AAEC"), "short key: \"%s\"",
	      err);

	tokend_options_init(&o);
	o.key_file = "missing.key";
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_EAUTH, "a missing key file");
	CHECK(strstr(err, "missing.key") && strstr(err, "No such file"), "missing file: \"%s\"", err);

	tokend_options_init(&o);
	o.key = TEST_KEY;
	o.insecure = 1;
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_EINVAL, "insecure and a key");

	snprintf(path, sizeof path, "%s/env.key", dir);
	CHECK(write_file(path, TEST_KEY "\n") == 0, "write %s", path);
	setenv("TOKEND_KEY_FILE", path, 1);
	tokend_options_init(&o);
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_OK, "key from $TOKEND_KEY_FILE");
	tokend_close(c);
	setenv("TOKEND_KEY_FILE", "/nonexistent/tokend.key", 1);
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_EAUTH, "$TOKEND_KEY_FILE names no file");
	CHECK(strstr(err, "$TOKEND_KEY_FILE") && strstr(err, "/nonexistent/tokend.key"), "env: \"%s\"", err);
	unsetenv("TOKEND_KEY_FILE");

	CHECK(mkdir("tokend-data", 0700) == 0 && mkdir("tokend-data/pki", 0700) == 0, "mkdir");
	CHECK(write_file("tokend-data/pki/client.key", TEST_KEY "\n") == 0, "write the default key file");
	tokend_options_init(&o);
	CHECK_RC(try_connect(&f, &o, err, sizeof err, &c), TOKEND_OK, "the default key file");
	tokend_close(c);
	CHECK(fake_get(&f, &f.sessions_opened) == 2, "%d sessions", fake_get(&f, &f.sessions_opened));
	CHECK(fake_get(&f, &f.auth_drops) == 0, "the fake dropped %d datagrams", fake_get(&f, &f.auth_drops));

	unlink("tokend-data/pki/client.key");
	rmdir("tokend-data/pki");
	rmdir("tokend-data");
	unlink(path);
	CHECK(chdir(cwd) == 0, "chdir back");
	rmdir(dir);
	fake_stop(&f);
}

/*
 * Keys that do not match: a keyed client and an --insecure worker (its OK
 * reply carries no tag: refused), an insecure client and an authenticating
 * worker (answered COOKIE: refused), a client whose key the worker does not
 * have (its open is dropped: the message says so), a worker whose OK reply
 * is tagged with another key (dropped: the message says so). And an
 * insecure client with an insecure worker works.
 */
static void test_auth_mismatch(void)
{
	struct fake keyed, insecure;
	fake_start(&keyed, 0, 0);
	fake_start_full(&insecure, 0, 0, NULL, 0, 1);
	char err[256];
	tokend_options o;
	tokend_client *c;

	tokend_options_init(&o);
	o.key = TEST_KEY;
	CHECK_RC(try_connect(&insecure, &o, err, sizeof err, &c), TOKEND_EAUTH, "keyed client, insecure worker");
	CHECK(strstr(err, "not authenticated") && strstr(err, "--insecure"), "keyed vs insecure: \"%s\"", err);
	printf("keyed client, insecure worker: %s\n", err);

	tokend_options_init(&o);
	o.insecure = 1;
	CHECK_RC(try_connect(&keyed, &o, err, sizeof err, &c), TOKEND_EAUTH, "insecure client, keyed worker");
	CHECK(strstr(err, "COOKIE") && strstr(err, "no key"), "insecure vs keyed: \"%s\"", err);
	printf("insecure client, keyed worker: %s\n", err);

	tokend_options_init(&o);
	o.key = WRONG_KEY;
	o.connect_timeout_ms = 500;
	int64_t t0 = now_ms();
	CHECK_RC(try_connect(&keyed, &o, err, sizeof err, &c), TOKEND_EAUTH, "a key the worker does not have");
	CHECK(now_ms() - t0 < 2000, "wrong key took %" PRId64 " ms", now_ms() - t0);
	CHECK(strstr(err, "cookie") && strstr(err, "\"test\"") && strstr(err, "tokenctl keys add"),
	      "wrong key: \"%s\"", err);
	CHECK(fake_get(&keyed, &keyed.auth_drops) > 0, "the fake dropped no open");
	CHECK(fake_get(&keyed, &keyed.sessions_opened) == 0, "a session opened with the wrong key");
	printf("wrong key: %s\n", err);

	/* a worker whose OK reply is tagged with another session key */
	pthread_mutex_lock(&keyed.mu);
	keyed.forge = 1;
	pthread_mutex_unlock(&keyed.mu);
	tokend_options_init(&o);
	o.key = TEST_KEY;
	o.connect_timeout_ms = 500;
	CHECK_RC(try_connect(&keyed, &o, err, sizeof err, &c), TOKEND_EAUTH, "an OK reply that does not verify");
	CHECK(strstr(err, "does not verify") && strstr(err, "\"test\""), "forged OK: \"%s\"", err);
	CHECK(fake_get(&keyed, &keyed.sessions_opened) >= 1, "the fake opened no session");
	printf("OK reply under another key: %s\n", err);

	tokend_options_init(&o);
	o.insecure = 1;
	CHECK_RC(try_connect(&insecure, &o, err, sizeof err, &c), TOKEND_OK, "insecure client, insecure worker");
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, "i", 1, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "insecure acquire");
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "insecure release");
	tokend_close(c);
	fake_stop(&keyed);
	fake_stop(&insecure);
}

static int auth_failures_pred(void *a)
{
	tokend_stats st;
	tokend_get_stats(a, &st);
	return st.auth_failures > 0;
}

/*
 * Datagrams that do not carry the session's tag are dropped and counted,
 * never acted on: a REVOKE and a KEEPALIVE reply sealed with another key
 * change nothing; the same REVOKE with the right tag reaches on_revoke.
 */
static void test_forged(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	char err[256];
	tokend_options o;
	tokend_client *c;
	tokend_options_init(&o);
	o.key = TEST_KEY;
	o.on_revoke = on_revoke;
	int rc = try_connect(&f, &o, err, sizeof err, &c);
	CHECK_RC(rc, TOKEND_OK, "connect");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, "forge", 5, TOKEND_EX, TOKEND_TRY, &g), TOKEND_OK, "acquire");
	pthread_mutex_lock(&cb_mu);
	revokes_seen = 0;
	pthread_mutex_unlock(&cb_mu);
	pthread_mutex_lock(&f.mu);
	f.forge = 1;
	pthread_mutex_unlock(&f.mu);
	fake_revoke(&f, "forge", g.fence, TOKEND_NL);
	CHECK(wait_for(auth_failures_pred, c, 2000), "a forged REVOKE was not counted");
	/* the forged keepalive replies (the fake answers under the wrong key
	 * while forge is on) are dropped too: the grant loses its renewals */
	pthread_mutex_lock(&f.mu);
	f.forge = 0;
	pthread_mutex_unlock(&f.mu);
	CHECK(cb_get(&revokes_seen) == 0, "a forged REVOKE reached on_revoke");
	CHECK(fake_get(&f, &f.revoke_acks) == 0, "a forged REVOKE was acknowledged");
	CHECK_RC(tokend_grant_check(c, &g, NULL), TOKEND_OK, "the grant after a forged REVOKE");
	fake_revoke(&f, "forge", g.fence, TOKEND_NL);
	int one = 1;
	CHECK(wait_for(revokes_pred, &one, 2000), "the genuine REVOKE did not reach on_revoke");
	tokend_stats st;
	CHECK_RC(tokend_get_stats(c, &st), TOKEND_OK, "stats");
	CHECK(st.auth_failures >= 1 && st.dropped >= st.auth_failures, "stats: dropped %" PRIu64 ", auth %" PRIu64,
	      st.dropped, st.auth_failures);
	CHECK(fake_get(&f, &f.auth_drops) == 0, "the fake dropped %d of the client's datagrams",
	      fake_get(&f, &f.auth_drops));
	CHECK_RC(tokend_get_stats(NULL, &st), TOKEND_EINVAL, "stats of NULL");
	tokend_close(c);
	fake_stop(&f);
}

/* ------------------------------------------------------------ announcements */

/* The announce signing seed and public key of announce/format_test.go
 * (goldenSeed, goldenPublic as tokenctl announce-key prints it). */
static const uint8_t golden_seed[32] = {
	0x85, 0x4b, 0xa4, 0x6d, 0x5b, 0xa8, 0x84, 0x47, 0xea, 0xff, 0x5e, 0xcc, 0x55, 0xca, 0x9e, 0xca,
	0xbf, 0x74, 0x1b, 0x71, 0xad, 0xfa, 0x4e, 0xb6, 0x5d, 0xad, 0xf8, 0xa8, 0x0a, 0x35, 0x1e, 0xdf};
#define GOLDEN_ANNOUNCE_KEY "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q"

static uint8_t *put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

/* An announcement (announce/SPEC.md) of cluster "api", worker addr, map
 * version mv, sent now, signed with seed (NULL: unsigned). Returns its
 * length. */
static size_t ann_build(uint8_t *b, const char *addr, uint64_t mv, uint64_t seq, const uint8_t *seed)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t sent = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	uint8_t *p = b;
	*p++ = 'T';
	*p++ = 'A';
	*p++ = 2;
	*p++ = seed ? 0x02 : 0;
	p += 8; /* length, reserved, checksum: below */
	p = put_be(p, 1000, 4);
	p = put_be(p, 42, 8);
	p = put_be(p, seq, 8);
	p = put_be(p, mv, 8);
	p = put_be(p, sent, 8);
	const char *texts[3] = {"api", addr, "fake"};
	for (int i = 0; i < 3; i++) {
		size_t l = strlen(texts[i]);
		*p++ = (uint8_t)l;
		memcpy(p, texts[i], l);
		p += l;
	}
	size_t body = (size_t)(p - b), n = body + (seed ? 64 : 0);
	memset(b + 4, 0, 8);
	put_be(b + 4, n, 2);
	put_be(b + 8, tkw_crc32c(b, body), 4);
	if (seed) {
		size_t siglen = 64;
		EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
		EVP_MD_CTX *ctx = EVP_MD_CTX_new();
		if (!k || !ctx || EVP_DigestSignInit(ctx, NULL, NULL, NULL, k) != 1 ||
		    EVP_DigestSign(ctx, b + body, &siglen, b, body) != 1 || siglen != 64) {
			fprintf(stderr, "ann_build: Ed25519 signing failed\n");
			failures++;
		}
		EVP_MD_CTX_free(ctx);
		EVP_PKEY_free(k);
	}
	return n;
}

static int fake_map_requests(struct fake *f)
{
	pthread_mutex_lock(&f->mu);
	int n = f->map_requests;
	pthread_mutex_unlock(&f->mu);
	return n;
}

static tokend_stats stats_of(tokend_client *c)
{
	tokend_stats s;
	tokend_get_stats(c, &s);
	return s;
}

/*
 * A BUNDLE_REPLY to a client that never asked for bundles (its SESSION_OPEN
 * has no BUNDLE flag, SPEC 22) is dropped whole and counted, not opened: the
 * grant it carries is not taken, and the retransmitted ACQUIRE's answer,
 * sent alone with the next fence, is. Not an auth failure: a bundle's own
 * tag is zero by design. Keyed and insecure clients alike.
 */
static void test_bundle_reply(int insecure)
{
	struct fake f;
	fake_start_full(&f, 0, 0, NULL, 0, insecure);
	tokend_options o;
	tokend_options_init(&o);
	if (insecure)
		o.insecure = 1;
	else
		o.key = TEST_KEY;
	const char *seeds[] = {f.addr};
	o.seeds = seeds;
	o.nseeds = 1;
	tokend_client *c;
	int rc = tokend_connect(&o, &c);
	CHECK_RC(rc, TOKEND_OK, "connect to the fake");
	if (rc != TOKEND_OK) {
		fake_stop(&f);
		return;
	}
	tokend_stats before = stats_of(c);
	fake_set(&f, &f.bundle_acquires, 3);
	tokend_grant g;
	CHECK_RC(tokend_acquire(c, "bun", 3, TOKEND_EX, 0, &g), TOKEND_OK, "acquire answered in bundles first");
	tokend_stats after = stats_of(c);
	int sent = fake_get(&f, &f.bundles_sent);
	CHECK(sent == 3, "the fake sent %d bundles, want 3", sent);
	/* fences 1..3 went out in the bundles; a slow run may retransmit once
	 * more than needed, whose answer (alone) is then unexpected too */
	CHECK(fake_get(&f, &f.acquires) >= 4, "%d ACQUIREs reached the fake, want 4", fake_get(&f, &f.acquires));
	CHECK(g.fence >= ((UINT64_C(1) << 40) | 4), "fence %#" PRIx64 ": a grant from inside a bundle was taken",
	      g.fence);
	CHECK(after.dropped - before.dropped >= (uint64_t)sent, "%" PRIu64 " datagrams dropped, want the %d bundles",
	      after.dropped - before.dropped, sent);
	CHECK(after.auth_failures == before.auth_failures, "%" PRIu64 " auth failures for bundles",
	      after.auth_failures - before.auth_failures);
	CHECK(fake_get(&f, &f.open_flags) == 0, "SESSION_OPEN flags %#x: the client asked for bundles",
	      fake_get(&f, &f.open_flags));
	CHECK_RC(tokend_release(c, &g, NULL, 0), TOKEND_OK, "release after the bundles");
	CHECK_RC(tokend_close(c), TOKEND_OK, "close");
	fake_stop(&f);
}

/*
 * A client with seeds listens to announcements: a verified one of a newer
 * map version than the client's makes it fetch the map; forged ones
 * (unsigned, another key) are dropped and counted. Skipped where multicast
 * does not come back on the loopback interface.
 */
static void test_announce_refresh(void)
{
	struct fake f;
	fake_start(&f, 0, 0);
	int sfd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in lo, group;
	memset(&lo, 0, sizeof lo);
	lo.sin_family = AF_INET;
	lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof lo;
	unsigned char loop = 1;
	if (sfd < 0 || bind(sfd, (struct sockaddr *)&lo, sizeof lo) != 0 ||
	    getsockname(sfd, (struct sockaddr *)&lo, &sl) != 0 ||
	    setsockopt(sfd, IPPROTO_IP, IP_MULTICAST_IF, &lo.sin_addr, sizeof lo.sin_addr) != 0 ||
	    setsockopt(sfd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0) {
		printf("announce refresh: skipped: sender socket: %s\n", strerror(errno));
		if (sfd >= 0)
			close(sfd);
		fake_stop(&f);
		return;
	}
	/* a group and port of its own: the sender's ephemeral port */
	memset(&group, 0, sizeof group);
	group.sin_family = AF_INET;
	group.sin_port = lo.sin_port;
	group.sin_addr.s_addr = htonl(0xefffc800u | (uint32_t)(1 + rand() % 250)); /* 239.255.200.x */
	char mc[64], gs[32];
	inet_ntop(AF_INET, &group.sin_addr, gs, sizeof gs);
	snprintf(mc, sizeof mc, "api@%s:%u", gs, (unsigned)ntohs(group.sin_port));

	const char *seeds[] = {f.addr};
	char eb[256];
	tokend_options o;
	tokend_options_init(&o);
	o.seeds = seeds;
	o.nseeds = 1;
	o.key = TEST_KEY;
	o.multicast = mc;
	o.announce_key = GOLDEN_ANNOUNCE_KEY;
	o.errbuf = eb;
	o.errbuf_len = sizeof eb;
	tokend_client *c = NULL;
	int rc = tokend_connect(&o, &c);
	if (rc == TOKEND_ESYS) {
		printf("announce refresh: skipped: %s\n", eb);
		close(sfd);
		fake_stop(&f);
		return;
	}
	CHECK_RC(rc, TOKEND_OK, "connect with multicast and seeds");
	if (rc != TOKEND_OK) {
		close(sfd);
		fake_stop(&f);
		return;
	}
	uint8_t b[1300];
	uint64_t seq = 1;
	/* a verified announcement of the client's own map version: accepted,
	 * nothing fetched; also the probe that multicast works here */
	int64_t end = now_ms() + 2000;
	while (stats_of(c).announce_accepted == 0 && now_ms() < end) {
		size_t n = ann_build(b, f.addr, 1, seq++, golden_seed);
		sendto(sfd, b, n, 0, (struct sockaddr *)&group, sizeof group);
		struct pollfd none = {-1, 0, 0};
		poll(&none, 0, 20);
	}
	if (stats_of(c).announce_accepted == 0) {
		printf("announce refresh: skipped: multicast does not come back on loopback\n");
		tokend_close(c);
		close(sfd);
		fake_stop(&f);
		return;
	}
	int before = fake_map_requests(&f);
	/* forgeries of a newer version: unsigned, another key */
	uint8_t other[32];
	memcpy(other, golden_seed, sizeof other);
	other[0] ^= 1;
	uint64_t dropped0 = stats_of(c).announce_dropped;
	size_t n = ann_build(b, f.addr, 9, seq++, NULL);
	sendto(sfd, b, n, 0, (struct sockaddr *)&group, sizeof group);
	n = ann_build(b, f.addr, 9, seq++, other);
	sendto(sfd, b, n, 0, (struct sockaddr *)&group, sizeof group);
	end = now_ms() + 2000;
	while (stats_of(c).announce_dropped < dropped0 + 2 && now_ms() < end) {
		struct pollfd none = {-1, 0, 0};
		poll(&none, 0, 5);
	}
	CHECK(stats_of(c).announce_dropped == dropped0 + 2, "forged announcements: %" PRIu64 " dropped, want %" PRIu64,
	      stats_of(c).announce_dropped, dropped0 + 2);
	/* the real one of a newer version: the client fetches the map */
	n = ann_build(b, f.addr, 9, seq++, golden_seed);
	sendto(sfd, b, n, 0, (struct sockaddr *)&group, sizeof group);
	end = now_ms() + 2000;
	while (fake_map_requests(&f) == before && now_ms() < end) {
		struct pollfd none = {-1, 0, 0};
		poll(&none, 0, 5);
	}
	CHECK(fake_map_requests(&f) > before, "no MAP_REQUEST after a verified announcement of map version 9");
	tokend_close(c);
	close(sfd);
	fake_stop(&f);
}

int main(void)
{
	srand(1);
	test_names();
	test_connect_errors();
	test_options_abi();
	test_unreachable();
	test_silent_map();
	test_fake(0);
	test_fake(1);
	test_cache();
	test_revoke_after_upgrade();
	test_async_confirm();
	test_deadlock_answer();
	test_upgrade_confirm();
	test_key_sources();
	test_auth_mismatch();
	test_forged();
	test_bundle_reply(0);
	test_bundle_reply(1);
	test_announce_refresh();
	printf("test_api: %s (%d failures)\n", failures ? "FAIL" : "ok", failures);
	return failures ? 1 : 0;
}
