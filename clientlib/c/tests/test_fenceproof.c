/*
 * test_fenceproof.c - tokend_fence_proof_verify (fenceproof.c, libcrypto
 * Ed25519) against fenceproof/testdata/vectors.txt, the vectors package
 * fenceproof (Go) pins itself to:
 *
 *   test_fenceproof VECTORS.TXT
 *
 * Every proof verifies under "public-key" with the listed claims; each one
 * with any single byte flipped, cut short or under another key is refused;
 * every "bad" line is refused; malformed input is TOKEND_EINVAL.
 */
#define _POSIX_C_SOURCE 200809L
#include "../tokend.h"
#include "hex.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define FAIL(...)                                     \
	do {                                          \
		failures++;                           \
		fprintf(stderr, "FAIL: " __VA_ARGS__); \
		fputc('\n', stderr);                  \
	} while (0)

#define CHECK(cond, ...)              \
	do {                          \
		checks++;             \
		if (!(cond))          \
			FAIL(__VA_ARGS__); \
	} while (0)

/* The claims of the record being read, as the file lists them. */
struct want {
	unsigned char name[256], worker[256];
	long name_len, worker_len;
	uint64_t fence, mode, start, end, shard, epoch, issued;
};

static unsigned char pub[TOKEND_FENCE_KEY_LEN];
static int have_pub, nproofs, nbad;

static void check_proof(const unsigned char *p, size_t n, const struct want *w)
{
	tokend_fence_claims c;
	int rc = tokend_fence_proof_verify(pub, p, n, &c);
	CHECK(rc == TOKEND_OK, "proof %d: %s", nproofs, tokend_strerror(rc));
	if (rc != TOKEND_OK)
		return;
	CHECK(c.name_len == (size_t)w->name_len && !memcmp(c.name, w->name, c.name_len), "proof %d: name", nproofs);
	CHECK(c.worker_id_len == (size_t)w->worker_len && !memcmp(c.worker_id, w->worker, c.worker_id_len),
	      "proof %d: worker id", nproofs);
	CHECK(c.fence == w->fence && (uint64_t)c.mode == w->mode && c.start == w->start && c.end == w->end &&
		      c.shard == w->shard && c.epoch == w->epoch && c.issued_at_ms == w->issued,
	      "proof %d: claims differ (fence %" PRIu64 " mode %d [%" PRIu64 ", %" PRIu64 ") shard %" PRIu32
	      " epoch %" PRIu32 " at %" PRIu64 ")",
	      nproofs, c.fence, (int)c.mode, c.start, c.end, c.shard, c.epoch, c.issued_at_ms);

	/* Any single bit flipped anywhere: refused. */
	unsigned char *x = malloc(n);
	if (!x) {
		FAIL("out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		memcpy(x, p, n);
		x[i] ^= 0x01;
		rc = tokend_fence_proof_verify(pub, x, n, &c);
		CHECK(rc != TOKEND_OK && c.fence == 0, "proof %d: byte %zu flipped verified", nproofs, i);
	}
	/* Cut short at every length: refused, never read past the end. */
	for (size_t i = 0; i < n; i++) {
		memcpy(x, p, i);
		rc = tokend_fence_proof_verify(pub, x, i, &c);
		CHECK(rc != TOKEND_OK, "proof %d: its first %zu bytes verified", nproofs, i);
	}
	free(x);
	/* Another cluster's key. */
	unsigned char other[TOKEND_FENCE_KEY_LEN];
	memcpy(other, pub, sizeof other);
	other[0] ^= 0x01;
	rc = tokend_fence_proof_verify(other, p, n, &c);
	CHECK(rc == TOKEND_EAUTH || rc == TOKEND_EINVAL, "proof %d under another key: %s", nproofs, tokend_strerror(rc));
	CHECK(rc != TOKEND_OK, "proof %d verified under another key", nproofs);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: test_fenceproof VECTORS.TXT\n");
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	static char line[8192];
	static unsigned char buf[2048];
	struct want w;
	memset(&w, 0, sizeof w);
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		char *hash = strstr(line, " # ");
		if (hash)
			*hash = 0;
		if (line[0] == '#' || line[0] == 0)
			continue;
		char *val = strchr(line, ' ');
		if (!val) {
			FAIL("bad line %s", line);
			continue;
		}
		*val++ = 0;
		const char *k = line;
		if (!strcmp(k, "cluster-key") || !strcmp(k, "seed") || !strcmp(k, "message")) {
			continue; /* the key derivation is the servers' business; message is for readers */
		} else if (!strcmp(k, "public-key")) {
			have_pub = unhex(val, pub, sizeof pub) == TOKEND_FENCE_KEY_LEN;
			CHECK(have_pub, "public-key %s", val);
		} else if (!strcmp(k, "name")) {
			memset(&w, 0, sizeof w);
			w.name_len = unhex(val, w.name, sizeof w.name);
		} else if (!strcmp(k, "worker-id")) {
			w.worker_len = unhex(val, w.worker, sizeof w.worker);
		} else if (!strcmp(k, "fence")) {
			w.fence = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "mode")) {
			w.mode = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "start")) {
			w.start = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "end")) {
			w.end = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "shard")) {
			w.shard = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "epoch")) {
			w.epoch = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "issued-at-ms")) {
			w.issued = strtoull(val, NULL, 0);
		} else if (!strcmp(k, "proof") || !strcmp(k, "bad")) {
			long n = unhex(val, buf, sizeof buf);
			if (n < 0 || !have_pub) {
				FAIL("%s line unreadable, or no public-key before it", k);
				continue;
			}
			if (!strcmp(k, "proof")) {
				nproofs++;
				check_proof(buf, (size_t)n, &w);
			} else {
				nbad++;
				tokend_fence_claims c;
				int rc = tokend_fence_proof_verify(pub, buf, (size_t)n, &c);
				CHECK(rc != TOKEND_OK, "bad line %d verified", nbad);
			}
		} else {
			FAIL("unknown line %s", k);
		}
	}
	fclose(f);
	tokend_fence_claims c;
	CHECK(tokend_fence_proof_verify(NULL, buf, 100, &c) == TOKEND_EINVAL, "NULL key");
	CHECK(tokend_fence_proof_verify(pub, NULL, 100, &c) == TOKEND_EINVAL, "NULL proof");
	CHECK(tokend_fence_proof_verify(pub, buf, 100, NULL) == TOKEND_EINVAL, "NULL out");
	memset(buf, 0, sizeof buf);
	CHECK(tokend_fence_proof_verify(pub, buf, sizeof buf, &c) == TOKEND_EINVAL, "too long");
	if (nproofs < 3 || nbad < 4)
		FAIL("only %d proofs and %d bad lines: wrong file?", nproofs, nbad);
	printf("test_fenceproof: %d proofs, %d bad lines, %d checks, %d failures\n", nproofs, nbad, checks, failures);
	return failures ? 1 : 0;
}
