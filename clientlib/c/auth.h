/*
 * auth.h - the cryptography of wire/SPEC.md section 20 ("Authentication"),
 * built on OpenSSL libcrypto (3.0 or later) alone: HKDF-SHA256 for every
 * derived key, HMAC-SHA256 truncated to 96 bits for the datagrams' auth
 * tags, CRYPTO_memcmp to compare them, RAND_bytes for nonces; and the key
 * file format. Internal to libtokend (not installed). wire/auth is the Go
 * twin; both check themselves against wire/auth/testdata/vectors.txt.
 *
 * No global state: every function is safe to call from any thread.
 */
#ifndef TOKEND_AUTH_H
#define TOKEND_AUTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TKA_KEY_LEN 32   /* every key: client, open, session, MAC */
#define TKA_NONCE_LEN 16 /* client and worker nonces */
#define TKA_TAG_LEN 12   /* the header's auth field */
#define TKA_MAX_NAME 64  /* key names: 1..64 bytes of [A-Za-z0-9._-] */

/* Who sends a datagram: each direction has its own MAC key. */
enum tka_dir { TKA_CLIENT_TO_WORKER = 1, TKA_WORKER_TO_CLIENT = 2 };

/*
 * HKDF-SHA256 (RFC 5869) of 32 bytes: out = HKDF(secret, salt, info).
 * salt == NULL (or saltlen 0): no salt. Returns 0, or -1 if libcrypto fails.
 */
int tka_hkdf(const uint8_t *secret, size_t secretlen, const uint8_t *salt, size_t saltlen,
	     const void *info, size_t infolen, uint8_t out[TKA_KEY_LEN]);

/* HMAC-SHA256 of data under key (32 bytes out). Returns 0 or -1. */
int tka_hmac(const uint8_t *key, size_t keylen, const void *data, size_t n, uint8_t out[32]);

/* The open key: HKDF(client key, no salt, "tokend v2 open"). */
int tka_open_key(const uint8_t client[TKA_KEY_LEN], uint8_t out[TKA_KEY_LEN]);

/* A session's key: HKDF(client key, client nonce || worker nonce,
 * "tokend v2 session " || session id as 8 bytes big-endian). */
int tka_session_key(const uint8_t client[TKA_KEY_LEN], const uint8_t cnonce[TKA_NONCE_LEN],
		    const uint8_t wnonce[TKA_NONCE_LEN], uint64_t session, uint8_t out[TKA_KEY_LEN]);

/* The MAC key of one direction under an open or session key:
 * HKDF(k, no salt, "tokend v2 mac client to worker" / "... worker to client"). */
struct tka_mac {
	uint8_t key[TKA_KEY_LEN];
};
int tka_mac_init(struct tka_mac *m, const uint8_t k[TKA_KEY_LEN], int dir);

/*
 * Finish datagram b[0..n) (a whole datagram, header and body, n <= 1200):
 * its body length field is set to n - 64, then the auth field gets the first 12 bytes of HMAC-SHA256(MAC key, b with
 * bytes 48..63 taken as zero), then the checksum is recomputed over the
 * result. m == NULL writes an all-zero tag (unauthenticated datagrams).
 * Returns 0, or -1 (too short or too long, or libcrypto failed).
 */
int tka_seal(const struct tka_mac *m, uint8_t *b, size_t n);

/* Does datagram b[0..n) carry m's tag? Compared in constant time; b is
 * not modified. 1 yes, 0 no. Check the checksum first (tkw_decode). */
int tka_verify(const struct tka_mac *m, const uint8_t *b, size_t n);

/* Is the auth field of datagram b all zero (an unauthenticated datagram)? */
int tka_tag_zero(const uint8_t *b, size_t n);

/* n cryptographically random bytes (RAND_bytes). Returns 0 or -1. */
int tka_random(void *p, size_t n);

/* Is name[0..n) a valid key name (1..64 bytes of [A-Za-z0-9._-])? */
int tka_valid_name(const char *name, size_t n);

/*
 * Parse a key file's contents: exactly "tokend-key v1 NAME BASE64URL" with
 * an optional final newline (BASE64URL: the 32-byte key in unpadded
 * base64url, 43 characters). On success name (NUL-terminated) and key are
 * filled and 0 is returned; otherwise -1 and err says what is wrong, never
 * quoting the key.
 */
int tka_parse_key_file(const char *text, size_t n, char name[TKA_MAX_NAME + 1], uint8_t key[TKA_KEY_LEN],
		       char *err, size_t errcap);

/* Read and parse the key file at path (at most 4 KiB): as above, with the
 * path in the error message. */
int tka_load_key_file(const char *path, char name[TKA_MAX_NAME + 1], uint8_t key[TKA_KEY_LEN], char *err,
		      size_t errcap);

/* Overwrite a secret so that it does not linger in memory. */
void tka_wipe(void *p, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* TOKEND_AUTH_H */
