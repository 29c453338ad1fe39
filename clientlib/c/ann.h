/*
 * ann.h - worker announcements (announce/SPEC.md, version 2): decoding,
 * Ed25519 verification with OpenSSL libcrypto, the announce key's text form,
 * and the multicast listener socket. Internal (not installed).
 */
#ifndef TOKEND_ANN_H
#define TOKEND_ANN_H

#include <stddef.h>
#include <stdint.h>

#define TKM_PUB_LEN 32
#define TKM_SIG_LEN 64
#define TKM_HEADER_LEN 48
#define TKM_MAX_DATAGRAM 1200
#define TKM_MAX_CLUSTER 64
#define TKM_MAX_TEXT 255
#define TKM_MAX_SKEW_MS 30000 /* announce.MaxSkew */
#define TKM_DEFAULT_GROUP "239.255.84.75:7790"
#define TKM_DEFAULT_CLUSTER "tokend"

/* Why a datagram was dropped (the labels of announce.Reason, plus the
 * listener's "cluster" and "timestamp"). TKM_OK = accepted. */
enum tkm_reason {
	TKM_OK = 0,
	TKM_SHORT,
	TKM_TOO_LARGE,
	TKM_MAGIC,
	TKM_VERSION,
	TKM_LENGTH,
	TKM_CHECKSUM,
	TKM_MALFORMED,
	TKM_CLUSTER,
	TKM_UNSIGNED,
	TKM_SIGNATURE,
	TKM_TIMESTAMP,
	TKM_NREASONS
};

/* A decoded announcement; the strings are NUL-terminated copies. */
struct tkm_ann {
	int bye, is_signed;
	uint32_t interval_ms;
	uint64_t sender, seq, map_version, sent_at_ms;
	char cluster[TKM_MAX_CLUSTER + 1];
	char addr[TKM_MAX_TEXT + 1];
	char worker_id[TKM_MAX_TEXT + 1];
};

/* Label of a reason ("short", ..., "timestamp"). */
const char *tkm_reason_name(int r);

/*
 * Check datagram b[0..n) in the order of announce/SPEC.md "Receiving":
 * size, magic, version, length, checksum, field rules, then the cluster
 * name (if cluster is not NULL), then, with pub (TKM_PUB_LEN bytes) not
 * NULL, the signature and sent_at against now_ms (Unix milliseconds).
 * Returns TKM_OK and fills *out, or the reason for dropping it. Never reads
 * beyond b[n).
 */
int tkm_decode(const uint8_t *b, size_t n, const char *cluster, const uint8_t *pub, uint64_t now_ms,
	       struct tkm_ann *out);

/* Parse an announce key as `tokenctl announce-key` prints it (43
 * characters of unpadded base64url, surrounding white space ignored), as
 * announce.ParsePublicKey. Returns 0 or -1. */
int tkm_parse_public_key(const char *s, uint8_t pub[TKM_PUB_LEN]);

/* The parts of tokend_options.multicast: "[CLUSTER@][GROUP:PORT][%IFACE]". */
struct tkm_config {
	char cluster[TKM_MAX_CLUSTER + 1];
	char group[64];  /* "a.b.c.d:port" */
	char iface[64];  /* "" = the first loopback interface that is up */
};

/* Split and validate spec into *out (defaults applied). Returns 0, or -1
 * with a message in err. */
int tkm_parse_config(const char *spec, struct tkm_config *out, char *err, size_t errcap);

/* Open a non-blocking socket bound to the group's port and joined to the
 * group on the configured interface. Returns the fd, or -1 with a message. */
int tkm_listen(const struct tkm_config *cfg, char *err, size_t errcap);

/* Unix time in milliseconds (CLOCK_REALTIME). */
uint64_t tkm_unix_ms(void);

#endif
