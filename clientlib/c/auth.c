/*
 * auth.c - wire/SPEC.md section 20 with OpenSSL libcrypto: key derivation
 * (HKDF-SHA256 through EVP_KDF), datagram tags (HMAC-SHA256), constant-time
 * comparison (CRYPTO_memcmp), random bytes (RAND_bytes), and key files.
 * The base64url decoding of key files is plain text handling, not
 * cryptography.
 */
#define _POSIX_C_SOURCE 200809L
#include "auth.h"

#include "codec.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/opensslv.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "libtokend needs OpenSSL 3.0 or later (libcrypto, EVP_KDF)"
#endif

int tka_hkdf(const uint8_t *secret, size_t secretlen, const uint8_t *salt, size_t saltlen,
	     const void *info, size_t infolen, uint8_t out[TKA_KEY_LEN])
{
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	if (!kdf)
		return -1;
	EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
	EVP_KDF_free(kdf);
	if (!ctx)
		return -1;
	OSSL_PARAM params[5], *p = params;
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secretlen);
	if (salt && saltlen)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
	*p = OSSL_PARAM_construct_end();
	int ok = EVP_KDF_derive(ctx, out, TKA_KEY_LEN, params) == 1;
	EVP_KDF_CTX_free(ctx);
	return ok ? 0 : -1;
}

int tka_hmac(const uint8_t *key, size_t keylen, const void *data, size_t n, uint8_t out[32])
{
	unsigned int outlen = 0;
	if (!HMAC(EVP_sha256(), key, (int)keylen, data, n, out, &outlen) || outlen != 32)
		return -1;
	return 0;
}

int tka_open_key(const uint8_t client[TKA_KEY_LEN], uint8_t out[TKA_KEY_LEN])
{
	static const char info[] = "tokend v2 open";
	return tka_hkdf(client, TKA_KEY_LEN, NULL, 0, info, sizeof info - 1, out);
}

int tka_session_key(const uint8_t client[TKA_KEY_LEN], const uint8_t cnonce[TKA_NONCE_LEN],
		    const uint8_t wnonce[TKA_NONCE_LEN], uint64_t session, uint8_t out[TKA_KEY_LEN])
{
	static const char prefix[] = "tokend v2 session ";
	uint8_t salt[2 * TKA_NONCE_LEN], info[sizeof prefix - 1 + 8];
	memcpy(salt, cnonce, TKA_NONCE_LEN);
	memcpy(salt + TKA_NONCE_LEN, wnonce, TKA_NONCE_LEN);
	memcpy(info, prefix, sizeof prefix - 1);
	for (int i = 0; i < 8; i++)
		info[sizeof prefix - 1 + i] = (uint8_t)(session >> (56 - 8 * i));
	return tka_hkdf(client, TKA_KEY_LEN, salt, sizeof salt, info, sizeof info, out);
}

int tka_mac_init(struct tka_mac *m, const uint8_t k[TKA_KEY_LEN], int dir)
{
	static const char c2w[] = "tokend v2 mac client to worker", w2c[] = "tokend v2 mac worker to client";
	if (dir != TKA_CLIENT_TO_WORKER && dir != TKA_WORKER_TO_CLIENT)
		return -1;
	const char *info = dir == TKA_CLIENT_TO_WORKER ? c2w : w2c;
	return tka_hkdf(k, TKA_KEY_LEN, NULL, 0, info, strlen(info), m->key);
}

/* The full HMAC of datagram b with bytes 48..63 (tag and checksum) as zero. */
static int tag_of(const struct tka_mac *m, const uint8_t *b, size_t n, uint8_t out[32])
{
	uint8_t buf[TKW_MAX_DATAGRAM];
	if (n < TKW_HEADER_LEN || n > sizeof buf)
		return -1;
	memcpy(buf, b, n);
	memset(buf + TKW_AUTH_OFF, 0, TKW_HEADER_LEN - TKW_AUTH_OFF);
	return tka_hmac(m->key, TKA_KEY_LEN, buf, n, out);
}

int tka_seal(const struct tka_mac *m, uint8_t *b, size_t n)
{
	if (n < TKW_HEADER_LEN || n > TKW_MAX_DATAGRAM)
		return -1;
	b[6] = (uint8_t)((n - TKW_HEADER_LEN) >> 8); /* the body length is under the tag */
	b[7] = (uint8_t)(n - TKW_HEADER_LEN);
	if (m) {
		uint8_t sum[32];
		if (tag_of(m, b, n, sum) != 0)
			return -1;
		memcpy(b + TKW_AUTH_OFF, sum, TKA_TAG_LEN);
	} else {
		memset(b + TKW_AUTH_OFF, 0, TKA_TAG_LEN);
	}
	tkw_reseal(b, n);
	return 0;
}

int tka_verify(const struct tka_mac *m, const uint8_t *b, size_t n)
{
	uint8_t sum[32];
	if (!m || tag_of(m, b, n, sum) != 0)
		return 0;
	return CRYPTO_memcmp(sum, b + TKW_AUTH_OFF, TKA_TAG_LEN) == 0;
}

int tka_tag_zero(const uint8_t *b, size_t n)
{
	if (n < TKW_HEADER_LEN)
		return 0;
	uint8_t acc = 0;
	for (int i = 0; i < TKA_TAG_LEN; i++)
		acc |= b[TKW_AUTH_OFF + i];
	return acc == 0;
}

int tka_random(void *p, size_t n) { return RAND_bytes(p, (int)n) == 1 ? 0 : -1; }

void tka_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

int tka_valid_name(const char *name, size_t n)
{
	if (n == 0 || n > TKA_MAX_NAME)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

static int b64url_val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

#define KEY_B64_LEN 43 /* unpadded base64url of 32 bytes */

int tka_parse_key_file(const char *text, size_t n, char name[TKA_MAX_NAME + 1], uint8_t key[TKA_KEY_LEN],
		       char *err, size_t errcap)
{
	static const char prefix[] = "tokend-key v1 ";
	const size_t plen = sizeof prefix - 1;
	if (n > 0 && text[n - 1] == '\n')
		n--;
	if (n < plen || memcmp(text, prefix, plen) != 0) {
		snprintf(err, errcap, "bad key file: does not start with \"tokend-key v1 \"");
		return -1;
	}
	const char *rest = text + plen, *end = text + n;
	const char *sp = memchr(rest, ' ', (size_t)(end - rest));
	if (!sp || !tka_valid_name(rest, (size_t)(sp - rest))) {
		snprintf(err, errcap, "bad key file: the name must be 1 to %d characters of A-Z a-z 0-9 . _ -",
			 TKA_MAX_NAME);
		return -1;
	}
	const char *enc = sp + 1;
	if (end - enc != KEY_B64_LEN) {
		snprintf(err, errcap, "bad key file: the key must be %d characters of unpadded base64url", KEY_B64_LEN);
		return -1;
	}
	uint8_t k[TKA_KEY_LEN];
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	for (int i = 0; i < KEY_B64_LEN; i++) {
		int v = b64url_val(enc[i]);
		if (v < 0) {
			tka_wipe(k, sizeof k);
			snprintf(err, errcap, "bad key file: the key is not valid unpadded base64url");
			return -1;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o < sizeof k)
				k[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	memcpy(name, rest, (size_t)(sp - rest));
	name[sp - rest] = 0;
	memcpy(key, k, sizeof k);
	tka_wipe(k, sizeof k);
	return 0;
}

int tka_load_key_file(const char *path, char name[TKA_MAX_NAME + 1], uint8_t key[TKA_KEY_LEN], char *err,
		      size_t errcap)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errcap, "key file %.200s: %s", path, strerror(errno));
		return -1;
	}
	char buf[4097];
	size_t n = fread(buf, 1, sizeof buf, f);
	int rerr = ferror(f);
	fclose(f);
	if (rerr) {
		tka_wipe(buf, sizeof buf);
		snprintf(err, errcap, "key file %.200s: read error", path);
		return -1;
	}
	if (n == sizeof buf) {
		tka_wipe(buf, sizeof buf);
		snprintf(err, errcap, "key file %.200s: larger than 4 KiB, not a key file", path);
		return -1;
	}
	char why[160];
	int rc = tka_parse_key_file(buf, n, name, key, why, sizeof why);
	tka_wipe(buf, sizeof buf);
	if (rc != 0)
		snprintf(err, errcap, "key file %.200s: %s", path, why);
	return rc;
}
