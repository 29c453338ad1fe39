/*
 * test_auth.c - auth.c (libcrypto) against wire/auth/testdata/vectors.txt,
 * the vectors package wire/auth (Go) pins itself to:
 *
 *   test_auth VECTORS.TXT
 *   test_auth --seal     read "KEY DIR DATAGRAM" lines (hex, DIR 1 = client to
 *                        worker, 2 = worker to client) on stdin and print each
 *                        datagram sealed with the MAC of (KEY, DIR), and
 *                        whether the result verifies (for the Go differential
 *                        test)
 *
 * Every line of the file is checked (an unknown name is a failure): the
 * open and session keys, the three sealed datagrams (tag recomputed and
 * verified, and refused under the other direction's key and after a
 * change), the worker's cookie (rebuilt with tka_hmac from SPEC.md 20's
 * recipe), and the key file. Then key files that must be refused.
 */
#define _POSIX_C_SOURCE 200809L
#include "../auth.h"
#include "../codec.h"
#include "hex.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures, checks;

#define FAIL(...)                                     \
	do {                                          \
		failures++;                           \
		fprintf(stderr, "FAIL: " __VA_ARGS__); \
		fputc('\n', stderr);                  \
	} while (0)

/* Compare got with the hex of a vector. */
static void want_hex(const char *what, const uint8_t *got, size_t n, const char *hex)
{
	char h[2 * TKW_MAX_DATAGRAM + 1];
	checks++;
	tohex(got, n, h);
	if (strcmp(h, hex) != 0)
		FAIL("%s:\n  got  %s\n  want %s", what, h, hex);
}

static struct {
	uint8_t client[32], cnonce[16], wnonce[16], cookie_key[32];
	uint64_t session;
	int have_client, have_nonces, have_session, have_cookie_key;
} in;

/* A sealed datagram: it verifies under (key, dir), not under the other
 * direction, not after a byte of its body changes; resealing a copy with
 * the tag cleared gives the same bytes. */
static void check_datagram(const char *name, const char *hex, const uint8_t key[32], int dir)
{
	uint8_t dg[TKW_MAX_DATAGRAM], copy[TKW_MAX_DATAGRAM];
	long n = unhex(hex, dg, sizeof dg);
	if (n < TKW_HEADER_LEN) {
		FAIL("%s: bad hex", name);
		return;
	}
	static struct tkw_msg m;
	checks++;
	if (tkw_decode(dg, (size_t)n, &m) != TKW_OK)
		FAIL("%s: does not decode", name);
	struct tka_mac mac, other;
	if (tka_mac_init(&mac, key, dir) || tka_mac_init(&other, key, dir == TKA_CLIENT_TO_WORKER
								  ? TKA_WORKER_TO_CLIENT
								  : TKA_CLIENT_TO_WORKER)) {
		FAIL("%s: tka_mac_init", name);
		return;
	}
	checks += 4;
	if (!tka_verify(&mac, dg, (size_t)n))
		FAIL("%s: does not verify", name);
	if (tka_verify(&other, dg, (size_t)n))
		FAIL("%s: verifies under the other direction's key", name);
	memcpy(copy, dg, (size_t)n);
	memset(copy + TKW_AUTH_OFF, 0, TKW_HEADER_LEN - TKW_AUTH_OFF);
	if (tka_seal(&mac, copy, (size_t)n) != 0)
		FAIL("%s: tka_seal", name);
	want_hex(name, copy, (size_t)n, hex);
	copy[n - 1] ^= 1;
	tkw_reseal(copy, (size_t)n);
	if (tka_verify(&mac, copy, (size_t)n))
		FAIL("%s: verifies after a body byte changed", name);
	if (tka_tag_zero(dg, (size_t)n))
		FAIL("%s: tag is zero", name);
}

/* SPEC.md 20, step 2: at || first 16 bytes of HMAC-SHA256(secret,
 * "tokend v2 cookie" || at || address as 16 bytes || port || nonce || key name). */
static void check_cookie(const char *name, const char *hex)
{
	uint32_t at;
	unsigned a, b, c, d, port;
	char keyname[65];
	if (sscanf(name, "cookie-at-%" SCNu32 "-from-%u.%u.%u.%u:%u-%64s", &at, &a, &b, &c, &d, &port, keyname) != 7) {
		FAIL("%s: cannot read the cookie's inputs from its name", name);
		return;
	}
	uint8_t msg[16 + 4 + 16 + 2 + 16 + 64];
	size_t o = 0;
	memcpy(msg, "tokend v2 cookie", 16);
	o = 16;
	uint8_t at4[4] = {(uint8_t)(at >> 24), (uint8_t)(at >> 16), (uint8_t)(at >> 8), (uint8_t)at};
	memcpy(msg + o, at4, 4);
	o += 4;
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	memcpy(msg + o, mapped, 12);
	o += 12;
	msg[o++] = (uint8_t)a, msg[o++] = (uint8_t)b, msg[o++] = (uint8_t)c, msg[o++] = (uint8_t)d;
	msg[o++] = (uint8_t)(port >> 8), msg[o++] = (uint8_t)port;
	memcpy(msg + o, in.cnonce, 16);
	o += 16;
	memcpy(msg + o, keyname, strlen(keyname));
	o += strlen(keyname);
	uint8_t sum[32], cookie[20];
	if (tka_hmac(in.cookie_key, 32, msg, o, sum) != 0) {
		FAIL("%s: tka_hmac", name);
		return;
	}
	memcpy(cookie, at4, 4);
	memcpy(cookie + 4, sum, 16);
	want_hex(name, cookie, sizeof cookie, hex);
}

static void check_line(const char *name, const char *val)
{
	uint8_t k[32];
	if (!strcmp(name, "client-key")) {
		in.have_client = unhex(val, in.client, 32) == 32;
	} else if (!strcmp(name, "client-nonce")) {
		in.have_nonces |= (unhex(val, in.cnonce, 16) == 16);
	} else if (!strcmp(name, "worker-nonce")) {
		in.have_nonces |= (unhex(val, in.wnonce, 16) == 16) << 1;
	} else if (!strcmp(name, "session-id")) {
		in.session = strtoull(val, NULL, 16);
		in.have_session = 1;
	} else if (!strcmp(name, "cookie-key")) {
		in.have_cookie_key = unhex(val, in.cookie_key, 32) == 32;
	} else if (!strcmp(name, "open-key")) {
		if (tka_open_key(in.client, k) != 0)
			FAIL("tka_open_key");
		want_hex(name, k, 32, val);
	} else if (!strcmp(name, "session-key")) {
		if (tka_session_key(in.client, in.cnonce, in.wnonce, in.session, k) != 0)
			FAIL("tka_session_key");
		want_hex(name, k, 32, val);
	} else if (!strcmp(name, "acquire-c2w") || !strcmp(name, "acquire-w2c")) {
		tka_session_key(in.client, in.cnonce, in.wnonce, in.session, k);
		check_datagram(name, val, k, name[8] == 'c' ? TKA_CLIENT_TO_WORKER : TKA_WORKER_TO_CLIENT);
	} else if (!strcmp(name, "acquire-open-key-c2w")) {
		tka_open_key(in.client, k);
		check_datagram(name, val, k, TKA_CLIENT_TO_WORKER);
	} else if (!strncmp(name, "cookie-at-", 10)) {
		check_cookie(name, val);
	} else if (!strcmp(name, "key-file")) {
		char kn[TKA_MAX_NAME + 1], err[200];
		checks++;
		if (tka_parse_key_file(val, strlen(val), kn, k, err, sizeof err) != 0)
			FAIL("key-file: %s", err);
		else if (strcmp(kn, "cluster") != 0 || memcmp(k, in.client, 32) != 0)
			FAIL("key-file: name %s or key differs from client-key", kn);
	} else {
		FAIL("unknown vector %s: this test checks every line", name);
		return;
	}
	if (strcmp(name, "client-key") && strcmp(name, "client-nonce") && strcmp(name, "worker-nonce") &&
	    strcmp(name, "session-id") && strcmp(name, "cookie-key") &&
	    !(in.have_client && in.have_nonces == 3 && in.have_session))
		FAIL("%s comes before its inputs", name);
}

static void key_files(void)
{
	static const struct {
		const char *text, *why;
	} bad[] = {
		{"", "does not start"},
		{"tokend-key v2 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n", "does not start"},
		{"tokend-key v1  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n", "name"},
		{"tokend-key v1 a/b AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n", "name"},
		{"tokend-key v1 "
		 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
		 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n",
		 "name"},
		{"tokend-key v1 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n", "43 characters"},
		{"tokend-key v1 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh\n", "43 characters"},
		{"tokend-key v1 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\r\n", "43 characters"},
		{"tokend-key v1 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n\n", "43 characters"},
		{"tokend-key v1 a AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdH+8\n", "not valid"},
	};
	char name[TKA_MAX_NAME + 1], err[200];
	uint8_t key[32];
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		checks++;
		err[0] = 0;
		if (tka_parse_key_file(bad[i].text, strlen(bad[i].text), name, key, err, sizeof err) == 0)
			FAIL("bad key file %zu accepted", i);
		else if (!strstr(err, bad[i].why))
			FAIL("bad key file %zu: \"%s\" does not say \"%s\"", i, err, bad[i].why);
		else if (strstr(err, "AAEC"))
			FAIL("bad key file %zu: the message quotes the key", i);
	}
	/* without the final newline; a 64-byte name */
	static const char ok[] =
		"tokend-key v1 "
		"a.b_C-0123456789012345678901234567890123456789012345678901234567 "
		"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
	checks++;
	if (tka_parse_key_file(ok, strlen(ok), name, key, err, sizeof err) != 0 || strlen(name) != 64 ||
	    key[31] != 31)
		FAIL("64-byte name without a final newline: %s", err);
	/* from a file, and a missing file named in the message */
	char path[] = "/tmp/test_auth_keyXXXXXX";
	int fd = mkstemp(path);
	if (fd < 0) {
		FAIL("mkstemp");
		return;
	}
	static const char file[] = "tokend-key v1 default AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n";
	if (write(fd, file, sizeof file - 1) != (ssize_t)(sizeof file - 1))
		FAIL("write");
	close(fd);
	checks += 2;
	if (tka_load_key_file(path, name, key, err, sizeof err) != 0 || strcmp(name, "default") || key[0] != 0 ||
	    key[1] != 1)
		FAIL("load %s: %s", path, err);
	unlink(path);
	if (tka_load_key_file(path, name, key, err, sizeof err) == 0 || !strstr(err, path))
		FAIL("a missing key file: \"%s\"", err);
}

static int seal_lines(void)
{
	static char line[3 * TKW_MAX_DATAGRAM + 200], keyhex[100], dghex[2 * TKW_MAX_DATAGRAM + 10];
	static char out[2 * TKW_MAX_DATAGRAM + 1];
	while (fgets(line, sizeof line, stdin)) {
		uint8_t key[32], dg[TKW_MAX_DATAGRAM];
		int dir;
		struct tka_mac m;
		long n;
		if (sscanf(line, "%99s %d %2409s", keyhex, &dir, dghex) != 3 || unhex(keyhex, key, sizeof key) != 32 ||
		    (n = unhex(dghex, dg, sizeof dg)) < 0 || tka_mac_init(&m, key, dir) != 0 ||
		    tka_seal(&m, dg, (size_t)n) != 0) {
			printf("BAD -\n");
			continue;
		}
		tohex(dg, (size_t)n, out);
		printf("%s %d\n", out, tka_verify(&m, dg, (size_t)n));
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--seal"))
		return seal_lines();
	if (argc != 2) {
		fprintf(stderr, "usage: %s wire/auth/testdata/vectors.txt\n", argv[0]);
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	static char line[8192];
	int nvec = 0;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		if (!line[0] || line[0] == '#')
			continue;
		char *sp = strchr(line, ' ');
		if (!sp) {
			FAIL("not \"name value\": %s", line);
			continue;
		}
		*sp = 0;
		check_line(line, sp + 1);
		nvec++;
	}
	fclose(f);
	if (nvec < 12)
		FAIL("only %d vectors: wrong file?", nvec);
	key_files();
	printf("test_auth: %d vectors, %d checks, %d failures\n", nvec, checks, failures);
	return failures ? 1 : 0;
}
