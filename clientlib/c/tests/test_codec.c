/*
 * test_codec.c - the C codec against the golden vectors of wire/testdata.
 *
 *   test_codec VECTORS.TXT      run every check, print a summary, exit 0 if all pass
 *   test_codec --classify       read one hex datagram per line on stdin, print
 *                               "<ErrName> <reencode>" per line, where <reencode>
 *                               is "same" if a valid datagram re-encodes to the
 *                               same bytes, "DIFF" if not, "-" for invalid ones
 *                               (used by the Go differential test)
 *
 * For every message record: decode "hex", compare the outcome with "expect"
 * and, for "ok" records, every listed field in order; then build a message
 * from the record's fields alone and encode it: the bytes must equal "hex".
 * Also: CRC32C and FNV-1a lines, UTF-8 and mode-lattice unit checks, and a
 * robustness pass (every truncation, and every one-byte change re-sealed with
 * a correct CRC) that must never crash and whose valid results must re-encode
 * to the same bytes (canonical encodings, SPEC.md 17.3).
 */
#define _POSIX_C_SOURCE 200809L
#include "../codec.h"
#include "hex.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
static int checks;

#define FAIL(...)                                     \
	do {                                          \
		failures++;                           \
		fprintf(stderr, "FAIL: " __VA_ARGS__); \
		fputc('\n', stderr);                  \
	} while (0)

/* ------------------------------------------------------------ helpers */

/* Decode hex s into out (cap bytes); returns the length or -1. */
static int parse_u64(const char *s, uint64_t *v)
{
	char *end;
	if (!*s)
		return -1;
	errno = 0;
	*v = strtoull(s, &end, 0);
	return (errno || *end) ? -1 : 0;
}

/* ------------------------------------------------------------ records */

#define MAX_PAIRS 512
#define MAX_LINE 4096

struct pair {
	char key[64];
	char val[2600]; /* hex of up to 1200 bytes */
};

struct record {
	int lineno;
	int npairs;
	struct pair pairs[MAX_PAIRS];
};

/* The decoded message as (key, value) pairs in the order of SPEC.md 16. */
struct dump {
	int n;
	struct pair pairs[MAX_PAIRS];
};

/* Copy a string that must fit; a test failure if it does not. */
static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap) {
		FAIL("string of %zu bytes does not fit in %zu", n, cap);
		n = cap - 1;
	}
	memcpy(dst, src, n);
	dst[n] = 0;
}

static void d_add(struct dump *d, const char *key, const char *val)
{
	if (d->n >= MAX_PAIRS)
		return;
	copy_str(d->pairs[d->n].key, sizeof d->pairs[d->n].key, key);
	copy_str(d->pairs[d->n].val, sizeof d->pairs[d->n].val, val);
	d->n++;
}

static void d_u(struct dump *d, const char *key, uint64_t v)
{
	char b[32];
	snprintf(b, sizeof b, "%" PRIu64, v);
	d_add(d, key, b);
}

static void d_b(struct dump *d, const char *key, struct tkw_bytes b)
{
	char h[2 * TKW_MAX_BODY + 1];
	tohex(b.p, b.len, h);
	d_add(d, key, h);
}

/* key "<list>.<i>.<field>", e.g. entry.3.shard */
static void d_ui(struct dump *d, const char *list, unsigned i, const char *field, uint64_t v)
{
	char k[64];
	snprintf(k, sizeof k, "%s.%u.%s", list, i, field);
	d_u(d, k, v);
}

static void d_bi(struct dump *d, const char *list, unsigned i, const char *field, struct tkw_bytes b)
{
	char k[64];
	snprintf(k, sizeof k, "%s.%u.%s", list, i, field);
	d_b(d, k, b);
}

static void dump_msg(const struct tkw_msg *m, struct dump *d)
{
	d->n = 0;
	d_u(d, "type", m->h.type);
	d_u(d, "flags", m->h.flags);
	d_u(d, "status", m->h.status);
	d_u(d, "body_len", m->h.body_len);
	d_u(d, "session", m->h.session);
	d_u(d, "request", m->h.request);
	d_u(d, "ack", m->h.ack);
	d_u(d, "shard", m->h.shard);
	d_u(d, "epoch", m->h.epoch);
	d_u(d, "map_version", m->h.map_version);
	d_u(d, "crc", m->h.crc);
	d_add(d, "body", tkw_kind_name(m->kind));
	switch (m->kind) {
	case TKW_K_SESSION_OPEN:
		d_u(d, "ttl_ms", m->ttl_ms);
		d_b(d, "lib", m->lib);
		d_b(d, "nonce", (struct tkw_bytes){m->nonce, TKW_NONCE_LEN});
		d_b(d, "key_name", m->key_name);
		d_b(d, "cookie", m->cookie);
		break;
	case TKW_K_SESSION_REPLY:
		d_u(d, "ttl_ms", m->ttl_ms);
		d_u(d, "shard_count", m->shard_count);
		d_u(d, "grace_ms", m->grace_ms);
		d_u(d, "worker_ttl_ms", m->worker_ttl_ms);
		d_b(d, "worker_nonce", (struct tkw_bytes){m->worker_nonce, TKW_NONCE_LEN});
		break;
	case TKW_K_COOKIE:
		d_b(d, "cookie", m->cookie);
		break;
	case TKW_K_KEEPALIVE:
		d_u(d, "renew", (uint64_t)m->renew);
		d_u(d, "entries", m->nentries);
		for (unsigned i = 0; i < m->nentries; i++) {
			d_ui(d, "entry", i, "shard", m->entry_shard[i]);
			d_ui(d, "entry", i, "epoch", m->entry_epoch[i]);
		}
		d_u(d, "done", m->done_version);
		break;
	case TKW_K_KEEPALIVE_REPLY:
		d_u(d, "session_ttl_ms", m->session_ttl_ms);
		d_u(d, "validity_ms", m->validity_ms);
		d_u(d, "entries", m->nentries);
		for (unsigned i = 0; i < m->nentries; i++)
			d_ui(d, "entry", i, "status", m->entry_status[i]);
		break;
	case TKW_K_ACQUIRE:
		d_u(d, "try", (uint64_t)m->try_);
		d_u(d, "detect", (uint64_t)m->detect);
		d_u(d, "grow", (uint64_t)m->grow);
		d_u(d, "mode", m->mode);
		d_u(d, "wait_ms", m->wait_ms);
		d_u(d, "start", m->start);
		d_u(d, "end", m->end);
		d_b(d, "token", m->name);
		break;
	case TKW_K_RELEASE:
		d_u(d, "fence", m->fence);
		d_b(d, "token", m->name);
		d_u(d, "has_range", (uint64_t)m->has_range);
		d_u(d, "start", m->has_range ? m->start : 0);
		d_u(d, "end", m->has_range ? m->end : 0);
		d_u(d, "has_value", (uint64_t)m->has_value);
		d_b(d, "value", m->value);
		break;
	case TKW_K_CONVERT:
		d_u(d, "try", (uint64_t)m->try_);
		d_u(d, "detect", (uint64_t)m->detect);
		d_u(d, "fence", m->fence);
		d_u(d, "mode", m->mode);
		d_u(d, "wait_ms", m->wait_ms);
		d_b(d, "token", m->name);
		d_u(d, "has_value", (uint64_t)m->has_value);
		d_b(d, "value", m->value);
		break;
	case TKW_K_CANCEL:
	case TKW_K_REVOKE_ACK:
	case TKW_K_GRANT_ACK:
		d_u(d, "target", m->target);
		break;
	case TKW_K_RECLAIM:
	case TKW_K_REVOKE:
		d_u(d, "fence", m->fence);
		d_u(d, "mode", m->mode);
		d_u(d, "start", m->start);
		d_u(d, "end", m->end);
		d_b(d, "token", m->name);
		if (m->kind == TKW_K_RECLAIM) {
			d_u(d, "has_value", (uint64_t)m->has_value);
			d_b(d, "value", m->value);
		}
		break;
	case TKW_K_MAP_REQUEST:
		d_u(d, "first_shard", m->first_shard);
		break;
	case TKW_K_FENCE_PROOF:
		d_u(d, "fence", m->fence);
		d_u(d, "start", m->start);
		d_u(d, "end", m->end);
		d_b(d, "token", m->name);
		break;
	case TKW_K_PROOF:
		d_b(d, "proof", m->proof);
		break;
	case TKW_K_MAP_REPLY:
		d_u(d, "map_version", m->body_map_version);
		d_u(d, "shard_count", m->shard_count);
		d_u(d, "grace_ms", m->grace_ms);
		d_u(d, "workers", m->nworkers);
		for (unsigned i = 0; i < m->nworkers; i++) {
			d_ui(d, "worker", i, "index", m->workers[i].index);
			d_bi(d, "worker", i, "addr", m->workers[i].addr);
			d_bi(d, "worker", i, "id", m->workers[i].id);
		}
		d_u(d, "runs", m->nruns);
		for (unsigned i = 0; i < m->nruns; i++) {
			d_ui(d, "run", i, "first", m->runs[i].first);
			d_ui(d, "run", i, "count", m->runs[i].count);
			d_ui(d, "run", i, "worker", m->runs[i].worker);
			d_ui(d, "run", i, "epoch", m->runs[i].epoch);
		}
		break;
	case TKW_K_GRANT:
		d_u(d, "fence", m->fence);
		d_u(d, "mode", m->mode);
		d_u(d, "validity_ms", m->validity_ms);
		d_u(d, "start", m->start);
		d_u(d, "end", m->end);
		d_u(d, "value_flags", m->value_flags);
		d_b(d, "value", m->value);
		break;
	case TKW_K_QUEUED:
		d_u(d, "position", m->position);
		break;
	case TKW_K_ERROR:
		d_b(d, "message", m->message);
		break;
	case TKW_K_NOT_OWNER:
		d_b(d, "message", m->message);
		d_b(d, "owner_addr", m->owner_addr);
		d_u(d, "owner_epoch", m->owner_epoch);
		break;
	case TKW_K_ACQUIRE_BATCH:
		d_u(d, "count", m->count);
		for (unsigned i = 0; i < m->count; i++) {
			d_ui(d, "entry", i, "mode", m->batch[i].mode);
			d_ui(d, "entry", i, "start", m->batch[i].start);
			d_ui(d, "entry", i, "end", m->batch[i].end);
			d_bi(d, "entry", i, "token", m->batch[i].name);
		}
		break;
	case TKW_K_GRANT_BATCH:
		d_u(d, "validity_ms", m->validity_ms);
		d_u(d, "count", m->count);
		for (unsigned i = 0; i < m->count; i++) {
			d_ui(d, "grant", i, "fence", m->batch[i].fence);
			d_ui(d, "grant", i, "mode", m->batch[i].mode);
			d_ui(d, "grant", i, "start", m->batch[i].start);
			d_ui(d, "grant", i, "end", m->batch[i].end);
			d_ui(d, "grant", i, "value_flags", m->batch[i].value_flags);
			d_bi(d, "grant", i, "value", m->batch[i].value);
		}
		break;
	case TKW_K_BATCH_CONFLICT:
		d_u(d, "conflict_entry", m->conflict_entry);
		d_b(d, "message", m->message);
		break;
	case TKW_K_BUNDLE:
		d_u(d, "count", m->count);
		for (unsigned i = 0; i < m->count; i++) {
			char k[32];
			snprintf(k, sizeof k, "datagram.%u", i);
			d_b(d, k, m->datagrams[i]);
		}
		break;
	}
}

/* Keys whose values are byte strings (hex) rather than integers. */
static int is_bytes_key(const char *k)
{
	const char *dot = strrchr(k, '.');
	const char *f = dot ? dot + 1 : k;
	if (!strncmp(k, "datagram.", 9))
		return 1; /* datagram.<i>: a whole datagram in a bundle */
	return !strcmp(f, "lib") || !strcmp(f, "nonce") || !strcmp(f, "key_name") || !strcmp(f, "cookie") ||
	       !strcmp(f, "worker_nonce") || !strcmp(f, "token") || !strcmp(f, "value") || !strcmp(f, "addr") ||
	       !strcmp(f, "id") || !strcmp(f, "message") || !strcmp(f, "owner_addr") || !strcmp(f, "proof");
}

static int values_equal(const char *key, const char *want, const char *got)
{
	if (!strcmp(key, "body") || is_bytes_key(key))
		return !strcmp(want, got);
	uint64_t a, b;
	if (parse_u64(want, &a) || parse_u64(got, &b))
		return 0;
	return a == b;
}

/* ------------------------------------------------------------ record -> message */

/* Storage for the byte strings of one message built from a record. */
struct arena {
	uint8_t buf[8192];
	size_t used;
};

static int arena_hex(struct arena *a, const char *hex, struct tkw_bytes *out)
{
	long n = unhex(hex, a->buf + a->used, sizeof a->buf - a->used);
	if (n < 0)
		return -1;
	out->p = a->buf + a->used;
	out->len = (size_t)n;
	a->used += (size_t)n;
	return 0;
}

static int kind_by_name(const char *s)
{
	for (int k = TKW_K_EMPTY; k <= TKW_K_BUNDLE; k++)
		if (!strcmp(tkw_kind_name(k), s))
			return k;
	return TKW_K_INVALID;
}

/* Fill m from the pairs after "expect"; returns 0 or -1 on an unknown key. */
static int msg_from_pairs(const struct pair *p, int n, struct tkw_msg *m, struct arena *a)
{
	memset(m, 0, sizeof *m);
	a->used = 0;
	for (int i = 0; i < n; i++) {
		const char *k = p[i].key, *v = p[i].val;
		uint64_t u = 0;
		unsigned idx;
		char field[32];
		if (!strcmp(k, "body")) {
			m->kind = kind_by_name(v);
			continue;
		}
		if (is_bytes_key(k)) {
			struct tkw_bytes b;
			if (arena_hex(a, v, &b))
				return -1;
			if (!strcmp(k, "lib"))
				m->lib = b;
			else if (!strcmp(k, "nonce") && b.len == TKW_NONCE_LEN)
				memcpy(m->nonce, b.p, TKW_NONCE_LEN);
			else if (!strcmp(k, "worker_nonce") && b.len == TKW_NONCE_LEN)
				memcpy(m->worker_nonce, b.p, TKW_NONCE_LEN);
			else if (!strcmp(k, "key_name"))
				m->key_name = b;
			else if (!strcmp(k, "cookie"))
				m->cookie = b;
			else if (!strcmp(k, "token"))
				m->name = b;
			else if (!strcmp(k, "value"))
				m->value = b;
			else if (!strcmp(k, "message"))
				m->message = b;
			else if (!strcmp(k, "owner_addr"))
				m->owner_addr = b;
			else if (!strcmp(k, "proof"))
				m->proof = b;
			else if (sscanf(k, "entry.%u.%31s", &idx, field) == 2 && idx < TKW_MAX_BATCH &&
				 !strcmp(field, "token"))
				m->batch[idx].name = b;
			else if (sscanf(k, "grant.%u.%31s", &idx, field) == 2 && idx < TKW_MAX_BATCH &&
				 !strcmp(field, "value"))
				m->batch[idx].value = b;
			else if (sscanf(k, "datagram.%u", &idx) == 1 && idx < TKW_MAX_BUNDLE)
				m->datagrams[idx] = b;
			else if (sscanf(k, "worker.%u.%31s", &idx, field) == 2 && idx < TKW_MAP_MAX_WORKERS) {
				if (!strcmp(field, "addr"))
					m->workers[idx].addr = b;
				else
					m->workers[idx].id = b;
			} else
				return -1;
			continue;
		}
		if (parse_u64(v, &u))
			return -1;
		if (sscanf(k, "entry.%u.%31s", &idx, field) == 2 &&
		    (!strcmp(field, "mode") || !strcmp(field, "start") || !strcmp(field, "end"))) {
			if (idx >= TKW_MAX_BATCH)
				return -1;
			if (!strcmp(field, "mode"))
				m->batch[idx].mode = (uint8_t)u;
			else if (!strcmp(field, "start"))
				m->batch[idx].start = u;
			else
				m->batch[idx].end = u;
		} else if (sscanf(k, "grant.%u.%31s", &idx, field) == 2) {
			if (idx >= TKW_MAX_BATCH)
				return -1;
			if (!strcmp(field, "fence"))
				m->batch[idx].fence = u;
			else if (!strcmp(field, "mode"))
				m->batch[idx].mode = (uint8_t)u;
			else if (!strcmp(field, "start"))
				m->batch[idx].start = u;
			else if (!strcmp(field, "end"))
				m->batch[idx].end = u;
			else if (!strcmp(field, "value_flags"))
				m->batch[idx].value_flags = (uint8_t)u;
			else
				return -1;
		} else if (sscanf(k, "entry.%u.%31s", &idx, field) == 2) {
			if (idx >= TKW_MAX_KA_ENTRIES)
				return -1;
			if (!strcmp(field, "shard"))
				m->entry_shard[idx] = (uint32_t)u;
			else if (!strcmp(field, "epoch"))
				m->entry_epoch[idx] = (uint32_t)u;
			else if (!strcmp(field, "status"))
				m->entry_status[idx] = (uint8_t)u;
			else
				return -1;
		} else if (sscanf(k, "worker.%u.%31s", &idx, field) == 2) {
			if (idx >= TKW_MAP_MAX_WORKERS || strcmp(field, "index"))
				return -1;
			m->workers[idx].index = (uint16_t)u;
		} else if (sscanf(k, "run.%u.%31s", &idx, field) == 2) {
			if (idx >= TKW_MAP_MAX_RUNS)
				return -1;
			if (!strcmp(field, "first"))
				m->runs[idx].first = (uint32_t)u;
			else if (!strcmp(field, "count"))
				m->runs[idx].count = (uint32_t)u;
			else if (!strcmp(field, "worker"))
				m->runs[idx].worker = (uint16_t)u;
			else if (!strcmp(field, "epoch"))
				m->runs[idx].epoch = (uint32_t)u;
			else
				return -1;
		}
		else if (!strcmp(k, "type"))
			m->h.type = (uint8_t)u;
		else if (!strcmp(k, "flags"))
			m->h.flags = (uint8_t)u;
		else if (!strcmp(k, "status"))
			m->h.status = (uint8_t)u;
		else if (!strcmp(k, "body_len"))
			m->h.body_len = (uint16_t)u;
		else if (!strcmp(k, "session"))
			m->h.session = u;
		else if (!strcmp(k, "request"))
			m->h.request = u;
		else if (!strcmp(k, "ack"))
			m->h.ack = u;
		else if (!strcmp(k, "shard"))
			m->h.shard = (uint32_t)u;
		else if (!strcmp(k, "epoch"))
			m->h.epoch = (uint32_t)u;
		else if (!strcmp(k, "crc"))
			m->h.crc = (uint32_t)u;
		else if (!strcmp(k, "ttl_ms"))
			m->ttl_ms = (uint32_t)u;
		else if (!strcmp(k, "shard_count"))
			m->shard_count = (uint32_t)u;
		else if (!strcmp(k, "grace_ms"))
			m->grace_ms = (uint32_t)u;
		else if (!strcmp(k, "worker_ttl_ms"))
			m->worker_ttl_ms = (uint32_t)u;
		else if (!strcmp(k, "renew"))
			m->renew = (int)u;
		else if (!strcmp(k, "done"))
			m->done_version = u;
		else if (!strcmp(k, "entries"))
			m->nentries = (uint16_t)u;
		else if (!strcmp(k, "session_ttl_ms"))
			m->session_ttl_ms = (uint32_t)u;
		else if (!strcmp(k, "validity_ms"))
			m->validity_ms = (uint32_t)u;
		else if (!strcmp(k, "try"))
			m->try_ = (int)u;
		else if (!strcmp(k, "detect"))
			m->detect = (int)u;
		else if (!strcmp(k, "grow"))
			m->grow = (int)u;
		else if (!strcmp(k, "has_range"))
			m->has_range = (int)u;
		else if (!strcmp(k, "mode"))
			m->mode = (uint8_t)u;
		else if (!strcmp(k, "wait_ms"))
			m->wait_ms = (uint32_t)u;
		else if (!strcmp(k, "start"))
			m->start = u;
		else if (!strcmp(k, "end"))
			m->end = u;
		else if (!strcmp(k, "fence"))
			m->fence = u;
		else if (!strcmp(k, "has_value"))
			m->has_value = (int)u;
		else if (!strcmp(k, "target"))
			m->target = u;
		else if (!strcmp(k, "first_shard"))
			m->first_shard = (uint32_t)u;
		else if (!strcmp(k, "workers"))
			m->nworkers = (uint16_t)u;
		else if (!strcmp(k, "runs"))
			m->nruns = (uint16_t)u;
		else if (!strcmp(k, "value_flags"))
			m->value_flags = (uint8_t)u;
		else if (!strcmp(k, "position"))
			m->position = (uint32_t)u;
		else if (!strcmp(k, "owner_epoch"))
			m->owner_epoch = (uint32_t)u;
		else if (!strcmp(k, "count"))
			m->count = (uint8_t)u;
		else if (!strcmp(k, "conflict_entry"))
			m->conflict_entry = (uint8_t)u;
		else if (!strcmp(k, "map_version")) {
			/* header first, then (MAP_REPLY) the body's copy */
			if (m->kind == TKW_K_INVALID)
				m->h.map_version = u;
			else
				m->body_map_version = u;
		} else
			return -1;
	}
	/* The BUNDLE flag has no body key: vectors.txt shows it in "flags"
	 * alone, the only place a receiver finds it (S22). */
	if (m->kind == TKW_K_SESSION_OPEN || m->kind == TKW_K_SESSION_REPLY)
		m->bundle = (m->h.flags & TKW_FLAG_BUNDLE) != 0;
	return 0;
}

/* ------------------------------------------------------------ checks */

static void check_message(const struct record *r)
{
	const char *name = "", *hex = NULL, *expect = NULL;
	int first_field = -1;
	for (int i = 0; i < r->npairs; i++) {
		const struct pair *p = &r->pairs[i];
		if (!strcmp(p->key, "name"))
			name = p->val;
		else if (!strcmp(p->key, "hex"))
			hex = p->val;
		else if (!strcmp(p->key, "expect")) {
			expect = p->val;
			first_field = i + 1;
			break;
		}
	}
	if (!hex || !expect) {
		FAIL("line %d: record %s lacks hex or expect", r->lineno, name);
		return;
	}
	static uint8_t dg[4096];
	long n = unhex(hex, dg, sizeof dg);
	if (n < 0) {
		FAIL("%s: bad hex", name);
		return;
	}
	static struct tkw_msg m;
	int e = tkw_decode(dg, (size_t)n, &m);
	checks++;
	if (strncmp(expect, "error ", 6) == 0) {
		if (strcmp(tkw_err_name(e), expect + 6) != 0)
			FAIL("%s: decode gave %s, want %s", name, tkw_err_name(e), expect + 6);
		return;
	}
	if (strcmp(expect, "ok") != 0) {
		FAIL("%s: unknown expect \"%s\"", name, expect);
		return;
	}
	if (e != TKW_OK) {
		FAIL("%s: decode gave %s, want ok", name, tkw_err_name(e));
		return;
	}
	/* Decoded fields, in order. */
	static struct dump d;
	dump_msg(&m, &d);
	int nf = r->npairs - first_field;
	if (nf != d.n)
		FAIL("%s: record lists %d fields, decoder produced %d", name, nf, d.n);
	for (int i = 0; i < nf && i < d.n; i++) {
		const struct pair *want = &r->pairs[first_field + i], *got = &d.pairs[i];
		if (strcmp(want->key, got->key) != 0) {
			FAIL("%s: field %d is %s, decoder has %s", name, i, want->key, got->key);
			break;
		}
		if (!values_equal(want->key, want->val, got->val))
			FAIL("%s: %s = %s, decoder has %s", name, want->key, want->val, got->val);
	}
	/* Encode from the record's fields alone. */
	static struct tkw_msg em;
	static struct arena a;
	if (msg_from_pairs(&r->pairs[first_field], nf, &em, &a) != 0) {
		FAIL("%s: cannot build a message from the record", name);
		return;
	}
	uint8_t out[TKW_MAX_DATAGRAM];
	size_t len;
	e = tkw_encode(&em, out, sizeof out, &len);
	checks++;
	if (e != TKW_OK) {
		FAIL("%s: encode failed: %s", name, tkw_err_name(e));
		return;
	}
	if (len != (size_t)n || memcmp(out, dg, len) != 0) {
		char got[2 * TKW_MAX_DATAGRAM + 1];
		tohex(out, len, got);
		FAIL("%s: encoded\n  %s\nwant\n  %s", name, got, hex);
	}
	/* The flags the encoder derived from the body must be the record's. */
	if (em.h.flags != out[4])
		FAIL("%s: flags %#x, encoder derived %#x", name, em.h.flags, out[4]);
}

static void check_crc_line(const char *v, int lineno)
{
	char data[2600], want[64];
	if (sscanf(v, "%2599s %63s", data, want) != 2) {
		/* empty data: "crc32c:  0x..." is not in the file, but be safe */
		FAIL("line %d: bad crc32c line", lineno);
		return;
	}
	uint8_t buf[1300];
	long n = unhex(data, buf, sizeof buf);
	uint64_t w;
	if (n < 0 || parse_u64(want, &w)) {
		FAIL("line %d: bad crc32c line", lineno);
		return;
	}
	checks++;
	uint32_t got = tkw_crc32c(buf, (size_t)n);
	if (got != (uint32_t)w)
		FAIL("line %d: crc32c %#x, want %#" PRIx64, lineno, got, w);
}

static void check_hash_line(const char *v, int lineno)
{
	char name[600], h[64], sh[64];
	if (sscanf(v, "%599s %63s %63s", name, h, sh) != 3) {
		FAIL("line %d: bad hash line", lineno);
		return;
	}
	uint8_t buf[300];
	long n = unhex(name, buf, sizeof buf);
	uint64_t wh, ws;
	if (n < 0 || parse_u64(h, &wh) || parse_u64(sh, &ws)) {
		FAIL("line %d: bad hash line", lineno);
		return;
	}
	checks++;
	if (tkw_fnv1a64(buf, (size_t)n) != wh)
		FAIL("line %d: fnv1a64 %#" PRIx64 ", want %#" PRIx64, lineno, tkw_fnv1a64(buf, (size_t)n), wh);
	if (tkw_shard(buf, (size_t)n, 4096) != ws)
		FAIL("line %d: shard %u, want %" PRIu64, lineno, tkw_shard(buf, (size_t)n, 4096), ws);
}

/* Split "key: value # comment" into key and value (comment dropped). */
static int split_line(char *line, char **key, char **val)
{
	char *c = strstr(line, " # ");
	if (c)
		*c = 0;
	size_t n = strlen(line);
	while (n && (line[n - 1] == ' ' || line[n - 1] == '\r'))
		line[--n] = 0;
	char *colon = strchr(line, ':');
	if (!colon)
		return -1;
	*colon = 0;
	*key = line;
	*val = colon + 1;
	while (**val == ' ')
		(*val)++;
	return 0;
}

static void flush_record(struct record *r, int *nrecords)
{
	if (r->npairs > 0 && !strcmp(r->pairs[0].key, "name")) {
		check_message(r);
		(*nrecords)++;
	}
	r->npairs = 0;
}

/* Mutation pass on one valid datagram (see the file comment). */
static void robustness(const uint8_t *dg, size_t n, const char *name)
{
	static struct tkw_msg m, m2;
	uint8_t buf[TKW_MAX_DATAGRAM + 16], out[TKW_MAX_DATAGRAM];
	size_t len;
	for (size_t cut = 0; cut < n; cut++) {
		if (tkw_decode(dg, cut, &m) == TKW_OK)
			FAIL("%s: truncated to %zu bytes still decodes", name, cut);
		/* the same truncation with a consistent length and CRC */
		if (cut >= TKW_HEADER_LEN) {
			memcpy(buf, dg, cut);
			tkw_reseal(buf, cut);
			(void)tkw_decode(buf, cut, &m);
		}
	}
	static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x05, 0x06, 0x7f, 0x80, 0xc3, 0xfe, 0xff};
	for (size_t i = 0; i < n; i++) {
		for (size_t k = 0; k < sizeof vals; k++) {
			memcpy(buf, dg, n);
			if (buf[i] == vals[k])
				continue;
			buf[i] = vals[k];
			if (i >= 60 && i < 64)
				continue; /* changing the CRC itself is the checksum test */
			if (tkw_decode(buf, n, &m) == TKW_OK)
				FAIL("%s: byte %zu changed, CRC not re-sealed, still decodes", name, i);
			if (i == 6 || i == 7)
				continue; /* the body length is rewritten by reseal */
			tkw_reseal(buf, n);
			if (tkw_decode(buf, n, &m) != TKW_OK)
				continue;
			checks++;
			if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK) {
				FAIL("%s: byte %zu = %#x decodes but does not re-encode", name, i, vals[k]);
				continue;
			}
			if (len != n || memcmp(out, buf, n) != 0)
				FAIL("%s: byte %zu = %#x decodes but re-encodes differently", name, i, vals[k]);
			else if (tkw_decode(out, len, &m2) != TKW_OK)
				FAIL("%s: re-encoding does not decode", name);
		}
	}
	/* one byte too many, re-sealed: trailing byte or too large */
	if (n < TKW_MAX_DATAGRAM + 1) {
		memcpy(buf, dg, n);
		buf[n] = 0;
		tkw_reseal(buf, n + 1);
		if (tkw_decode(buf, n + 1, &m) == TKW_OK && m.kind != TKW_K_INVALID) {
			/* only layouts whose last field is open-ended could accept it; none are */
			FAIL("%s: one trailing byte accepted", name);
		}
	}
}

static void unit_checks(void)
{
	/* UTF-8 (Go's utf8.Valid rules). */
	struct {
		const char *s;
		size_t n;
		int ok;
	} u[] = {
		{"", 0, 1},
		{"abc", 3, 1},
		{"\xc3\xa9", 2, 1},
		{"\xc3\x28", 2, 0},
		{"\xc0\xaf", 2, 0},         /* overlong '/' */
		{"\xe0\x80\xaf", 3, 0},     /* overlong */
		{"\xed\xa0\x80", 3, 0},     /* surrogate */
		{"\xef\xbf\xbf", 3, 1},     /* U+FFFF */
		{"\xf0\x9f\x98\x80", 4, 1}, /* emoji */
		{"\xf4\x8f\xbf\xbf", 4, 1}, /* U+10FFFF */
		{"\xf4\x90\x80\x80", 4, 0}, /* > U+10FFFF */
		{"\xf5\x80\x80\x80", 4, 0},
		{"\xe2\x82", 2, 0}, /* truncated */
		{"\x80", 1, 0},
		{"a\0b", 3, 1},
	};
	for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
		checks++;
		if (tkw_utf8_valid((const uint8_t *)u[i].s, u[i].n) != u[i].ok)
			FAIL("utf8 case %zu: want %d", i, u[i].ok);
	}
	/* The lattice: NL < CR < CW,PR < PW < EX; CW and PR incomparable. */
	checks++;
	if (!tkw_mode_covers(TKW_EX, TKW_NL) || !tkw_mode_covers(TKW_PW, TKW_PR) ||
	    !tkw_mode_covers(TKW_PW, TKW_CW) || tkw_mode_covers(TKW_CW, TKW_PR) ||
	    tkw_mode_covers(TKW_PR, TKW_CW) || tkw_mode_covers(TKW_PR, TKW_PW) ||
	    !tkw_mode_covers(TKW_PR, TKW_CR) || !tkw_mode_covers(TKW_CR, TKW_CR))
		FAIL("mode covers");
	for (int a = 0; a < TKW_NMODES; a++)
		for (int b = 0; b < TKW_NMODES; b++)
			if (tkw_mode_compatible(a, b) != tkw_mode_compatible(b, a))
				FAIL("compat not symmetric at %d,%d", a, b);
	/* CRC check value from SPEC.md 3. */
	checks++;
	if (tkw_crc32c("123456789", 9) != 0xE3069283u)
		FAIL("crc32c check value");
	/* Encoder refuses what it cannot represent. */
	static struct tkw_msg m;
	uint8_t out[TKW_MAX_DATAGRAM];
	size_t len;
	uint8_t big[300] = {0};
	memset(&m, 0, sizeof m);
	m.h.type = TKW_ACQUIRE;
	m.h.session = 1;
	m.h.request = 1;
	m.h.epoch = 1;
	m.mode = TKW_EX;
	m.name.p = big;
	m.name.len = 256;
	checks++;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_ENAMELENGTH)
		FAIL("encode 256-byte name");
	m.name.len = 0;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_ENAMELENGTH)
		FAIL("encode empty name");
	m.name.len = 1;
	m.mode = 6;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADMODE)
		FAIL("encode bad mode");
	m.mode = TKW_EX;
	m.h.epoch = 0;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADHEADER)
		FAIL("encode epoch 0");
	m.h.epoch = 1;
	if (tkw_encode(&m, out, 100, &len) != TKW_OK || len != 64 + 22 + 1)
		FAIL("encode small acquire");
	if (tkw_encode(&m, out, 70, &len) != TKW_ETOOLARGE)
		FAIL("encode into a small buffer");
	m.h.type = TKW_RELEASE;
	m.fence = (UINT64_C(1) << 40) | 1;
	m.has_value = 1;
	m.value.p = big;
	m.value.len = 65;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EVALUELENGTH)
		FAIL("encode 65-byte value");
	/* SESSION_OPEN: key name 0..64 bytes, cookie empty or 20 bytes; COOKIE: 20 bytes */
	memset(&m, 0, sizeof m);
	m.h.type = TKW_SESSION_OPEN;
	m.h.request = 1;
	m.key_name.p = big;
	m.key_name.len = 64;
	m.cookie.p = big;
	m.cookie.len = 20;
	checks++;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || len != 64 + 4 + 1 + 16 + 65 + 21)
		FAIL("encode an open with a 64-byte key name and a cookie");
	m.key_name.len = 65;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode a 65-byte key name");
	m.key_name.len = 4;
	m.cookie.len = 19;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode a 19-byte cookie");
	m.h.type = TKW_SESSION_OPEN | TKW_REPLY;
	m.h.status = TKW_ST_COOKIE;
	m.cookie.len = 20;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || len != 64 + 21)
		FAIL("encode a COOKIE reply");
	m.cookie.len = 0;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode an empty COOKIE reply");
	m.h.type = TKW_ACQUIRE | TKW_REPLY;
	m.h.session = 1;
	m.h.epoch = 1;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADSTATUS)
		FAIL("encode COOKIE in an ACQUIRE reply");
	/* the auth tag is carried as given, and decoded as received */
	m.h.type = TKW_SESSION_OPEN;
	m.h.status = 0;
	m.h.session = 0;
	m.h.epoch = 0;
	memset(m.h.auth, 0xa5, sizeof m.h.auth);
	static struct tkw_msg d;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || out[TKW_AUTH_OFF] != 0xa5 ||
	    tkw_decode(out, len, &d) != TKW_OK || memcmp(d.h.auth, m.h.auth, sizeof d.h.auth) != 0)
		FAIL("auth tag not carried");
}

/* A 64-byte SESSION_CLOSE of session s, request id i: the smallest datagram
 * a BUNDLE may carry. */
static void session_close(uint8_t *b, uint64_t s, uint64_t i)
{
	static struct tkw_msg m;
	size_t len;
	memset(&m, 0, sizeof m);
	m.h.type = TKW_SESSION_CLOSE;
	m.h.session = s;
	m.h.request = i;
	if (tkw_encode(&m, b, TKW_HEADER_LEN, &len) != TKW_OK || len != TKW_HEADER_LEN)
		FAIL("encode a SESSION_CLOSE");
}

/* Bundles (S22) beyond what the vectors show: the type table, the most
 * datagrams a bundle holds, and what the encoder refuses. */
static void bundle_checks(void)
{
	/* the types a bundle may carry, spelled out from S22 */
	static const uint8_t in_bundle[] = {0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0C, 0x0D};
	static const uint8_t in_reply[] = {0x41, 0x42, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x8B, 0x8D};
	for (int t = 0; t < 256; t++) {
		int want_b = memchr(in_bundle, t, sizeof in_bundle) != NULL;
		int want_r = memchr(in_reply, t, sizeof in_reply) != NULL;
		checks++;
		if (tkw_bundles(TKW_BUNDLE, (uint8_t)t) != want_b || tkw_bundles(TKW_BUNDLE | TKW_REPLY, (uint8_t)t) != want_r)
			FAIL("tkw_bundles(.., %#x): %d %d, want %d %d", t, tkw_bundles(TKW_BUNDLE, (uint8_t)t),
			     tkw_bundles(TKW_BUNDLE | TKW_REPLY, (uint8_t)t), want_b, want_r);
		if (tkw_bundles((uint8_t)t, TKW_ACQUIRE) && t != TKW_BUNDLE)
			FAIL("tkw_bundles(%#x, ACQUIRE): not a bundle type", t);
	}

	/* TKW_MAX_BUNDLE 64-byte datagrams fill a bundle: all decode, in order */
	static uint8_t inner[TKW_MAX_BUNDLE + 1][TKW_HEADER_LEN];
	static struct tkw_msg m, d;
	uint8_t out[TKW_MAX_DATAGRAM];
	size_t len;
	const uint64_t sess = 77;
	checks++;
	if (TKW_MAX_BUNDLE != 17 ||
	    TKW_HEADER_LEN + (TKW_MAX_BUNDLE + 1) * (TKW_BUNDLE_ENTRY_OVERHEAD + TKW_HEADER_LEN) <= TKW_MAX_DATAGRAM)
		FAIL("TKW_MAX_BUNDLE %d is not the most 64-byte datagrams a bundle holds", TKW_MAX_BUNDLE);
	memset(&m, 0, sizeof m);
	m.h.type = TKW_BUNDLE;
	m.h.session = sess;
	m.h.request = 1;
	for (unsigned i = 0; i <= TKW_MAX_BUNDLE; i++) {
		session_close(inner[i], sess, i + 1);
		if (i < TKW_MAX_BUNDLE)
			m.datagrams[i] = (struct tkw_bytes){inner[i], TKW_HEADER_LEN};
	}
	m.count = TKW_MAX_BUNDLE;
	int e = tkw_encode(&m, out, sizeof out, &len);
	checks++;
	if (e != TKW_OK || len != TKW_HEADER_LEN + TKW_MAX_BUNDLE * (2 + TKW_HEADER_LEN))
		FAIL("encode a full bundle: %s, %zu bytes", tkw_err_name(e), len);
	else if ((e = tkw_decode(out, len, &d)) != TKW_OK || d.kind != TKW_K_BUNDLE || d.count != TKW_MAX_BUNDLE)
		FAIL("decode a full bundle: %s, kind %s, count %u", tkw_err_name(e), tkw_kind_name(d.kind), d.count);
	else
		for (unsigned i = 0; i < TKW_MAX_BUNDLE; i++) {
			struct tkw_bytes b = d.datagrams[i];
			if (b.p != out + TKW_HEADER_LEN + i * (2 + TKW_HEADER_LEN) + 2 || b.len != TKW_HEADER_LEN ||
			    memcmp(b.p, inner[i], TKW_HEADER_LEN) != 0 || tkw_decode(b.p, b.len, &m) != TKW_OK ||
			    m.h.request != i + 1)
				FAIL("full bundle: datagram %u", i);
		}

	/* what the encoder refuses */
	memset(&m, 0, sizeof m);
	m.h.type = TKW_BUNDLE | TKW_REPLY;
	m.h.session = sess;
	m.h.request = 1;
	checks++;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode an empty bundle");
	m.count = TKW_MAX_BUNDLE + 1;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode %d datagrams in a bundle", TKW_MAX_BUNDLE + 1);
	m.count = 1;
	uint8_t reply[TKW_HEADER_LEN];
	memcpy(reply, inner[0], sizeof reply);
	reply[3] = TKW_SESSION_CLOSE | TKW_REPLY;
	m.datagrams[0] = (struct tkw_bytes){reply, TKW_HEADER_LEN - 1};
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode a bundled datagram shorter than a header");
	m.datagrams[0].len = TKW_HEADER_LEN;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK)
		FAIL("encode a BUNDLE_REPLY");
	m.h.status = TKW_ST_BAD_REQUEST;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADSTATUS)
		FAIL("encode a BUNDLE_REPLY with status BAD_REQUEST");
	m.h.status = TKW_ST_OK;
	m.h.session = sess + 1;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode a bundled datagram of another session");
	m.h.session = sess;
	m.datagrams[0].p = inner[0];
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADBODY)
		FAIL("encode a request in a BUNDLE_REPLY");
	m.h.type = TKW_BUNDLE;
	m.h.ack = 1;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_EBADHEADER)
		FAIL("encode a BUNDLE with an ack");
	m.h.ack = 0;
	/* 17 datagrams of 66 bytes do not fit in 1200 */
	static uint8_t big[TKW_MAX_BUNDLE][TKW_HEADER_LEN + 2];
	for (unsigned i = 0; i < TKW_MAX_BUNDLE; i++) {
		memcpy(big[i], inner[i], TKW_HEADER_LEN);
		m.datagrams[i] = (struct tkw_bytes){big[i], sizeof big[i]};
	}
	m.count = TKW_MAX_BUNDLE;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_ETOOLARGE)
		FAIL("encode a bundle over 1200 bytes");

	/* the flag: SESSION_OPEN and its OK reply carry it, nothing else */
	memset(&m, 0, sizeof m);
	m.h.type = TKW_SESSION_OPEN;
	m.h.request = 1;
	m.bundle = 1;
	checks++;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || out[4] != TKW_FLAG_BUNDLE ||
	    tkw_decode(out, len, &d) != TKW_OK || !d.bundle)
		FAIL("SESSION_OPEN with BUNDLE");
	m.bundle = 0;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || out[4] != 0 || tkw_decode(out, len, &d) != TKW_OK ||
	    d.bundle)
		FAIL("SESSION_OPEN without BUNDLE");
	m.h.type = TKW_SESSION_OPEN | TKW_REPLY;
	m.h.session = sess;
	m.ttl_ms = m.shard_count = m.worker_ttl_ms = 1;
	m.bundle = 1;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || out[4] != TKW_FLAG_BUNDLE ||
	    tkw_decode(out, len, &d) != TKW_OK || !d.bundle)
		FAIL("SESSION_REPLY with BUNDLE");
	/* the same flag on a refusal (status UNAVAILABLE, error body) */
	m.h.status = TKW_ST_UNAVAILABLE;
	m.h.session = 0;
	if (tkw_encode(&m, out, sizeof out, &len) != TKW_OK || out[4] != 0)
		FAIL("an error SESSION_REPLY has no flags to derive");
	out[4] = TKW_FLAG_BUNDLE;
	tkw_reseal(out, len);
	if (tkw_decode(out, len, &d) != TKW_EBADFLAGS)
		FAIL("an error SESSION_REPLY with BUNDLE decodes");
}

static int classify(void)
{
	static char line[8192];
	static uint8_t dg[4096];
	static struct tkw_msg m;
	uint8_t out[TKW_MAX_DATAGRAM];
	while (fgets(line, sizeof line, stdin)) {
		size_t l = strlen(line);
		while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
			line[--l] = 0;
		long n = unhex(line, dg, sizeof dg);
		if (n < 0) {
			printf("BADHEX -\n");
			continue;
		}
		int e = tkw_decode(dg, (size_t)n, &m);
		const char *re = "-";
		if (e == TKW_OK) {
			size_t len;
			re = (tkw_encode(&m, out, sizeof out, &len) == TKW_OK && len == (size_t)n &&
			      memcmp(out, dg, len) == 0)
				     ? "same"
				     : "DIFF";
		}
		printf("%s %s\n", tkw_err_name(e), re);
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--classify"))
		return classify();
	if (argc != 2) {
		fprintf(stderr, "usage: %s VECTORS.TXT | --classify\n", argv[0]);
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	static struct record rec;
	static char line[MAX_LINE];
	int lineno = 0, nrecords = 0, nmisc = 0;
	rec.npairs = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		size_t l = strlen(line);
		if (l == sizeof line - 1 && line[l - 1] != '\n') {
			FAIL("line %d too long", lineno);
			break;
		}
		while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
			line[--l] = 0;
		if (l == 0) {
			flush_record(&rec, &nrecords);
			continue;
		}
		if (line[0] == '#')
			continue;
		char *k, *v;
		if (split_line(line, &k, &v) != 0) {
			FAIL("line %d: not key: value", lineno);
			continue;
		}
		if (!strcmp(k, "crc32c")) {
			check_crc_line(v, lineno);
			nmisc++;
			continue;
		}
		if (!strcmp(k, "hash")) {
			check_hash_line(v, lineno);
			nmisc++;
			continue;
		}
		if (rec.npairs == 0)
			rec.lineno = lineno;
		if (rec.npairs >= MAX_PAIRS) {
			FAIL("line %d: record too long", lineno);
			continue;
		}
		copy_str(rec.pairs[rec.npairs].key, sizeof rec.pairs[0].key, k);
		copy_str(rec.pairs[rec.npairs].val, sizeof rec.pairs[0].val, v);
		rec.npairs++;
	}
	flush_record(&rec, &nrecords);
	fclose(f);

	/* Robustness over every valid vector. */
	f = fopen(argv[1], "r");
	int nrob = 0;
	if (f) {
		while (fgets(line, sizeof line, f)) {
			if (strncmp(line, "hex: ", 5) != 0)
				continue;
			char *h = line + 5;
			h[strcspn(h, "\r\n")] = 0;
			static uint8_t dg[4096];
			static struct tkw_msg m;
			long n = unhex(h, dg, sizeof dg);
			if (n > 0 && tkw_decode(dg, (size_t)n, &m) == TKW_OK) {
				robustness(dg, (size_t)n, h);
				nrob++;
			}
		}
		fclose(f);
	}
	unit_checks();
	bundle_checks();

	if (nrecords < 100 || nmisc < 10)
		FAIL("only %d message records and %d crc/hash lines: wrong file?", nrecords, nmisc);
	printf("test_codec: %d message records, %d crc/hash lines, %d mutated vectors, %d checks, %d failures\n",
	       nrecords, nmisc, nrob, checks, failures);
	return failures ? 1 : 0;
}
