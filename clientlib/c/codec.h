/*
 * codec.h - the tokend wire protocol v2: datagram encode/decode, CRC32C and
 * the FNV-1a token hash. Internal to libtokend (not installed).
 *
 * Written from wire/SPEC.md alone. Pure: no I/O, no clock, no allocation, no
 * global state; safe to call from any thread. Section numbers below ("S7")
 * refer to SPEC.md.
 */
#ifndef TOKEND_CODEC_H
#define TOKEND_CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Limits (S2). */
#define TKW_VERSION 2
#define TKW_HEADER_LEN 64
#define TKW_MAX_DATAGRAM 1200
#define TKW_MAX_BODY (TKW_MAX_DATAGRAM - TKW_HEADER_LEN) /* 1136 */
#define TKW_MAX_NAME 255
#define TKW_MAX_VALUE 64
#define TKW_MAX_TEXT 255
#define TKW_MAX_KA_ENTRIES 141 /* (1136 - 2) / 8 */
#define TKW_MAX_EPOCH 0xFFFFFFu
#define TKW_SEQ_BITS 40
#define TKW_WHOLE_END UINT64_MAX /* decoded end of the whole token */
#define TKW_WAIT_FOREVER 0xFFFFFFFFu
#define TKW_NO_WORKER 0xFFFFu
#define TKW_MAX_KEY_NAME 64 /* SESSION_OPEN key_name: 0..64 bytes */
#define TKW_NONCE_LEN 16    /* SESSION_OPEN nonce, SESSION_REPLY worker_nonce */
#define TKW_COOKIE_LEN 20   /* SESSION_OPEN cookie, COOKIE body */
#define TKW_MAX_PROOF 1024  /* PROOF body: a fence proof of 1..1024 bytes */
#define TKW_MAX_BATCH 8     /* ACQUIRE_BATCH entries, GRANT_BATCH grants (S21) */
#define TKW_AUTH_OFF 48     /* the header's auth tag: bytes 48..59 (S20) */
#define TKW_AUTH_LEN 12
/*
 * BUNDLE and BUNDLE_REPLY (S22): each datagram inside takes a u16 length and
 * at least a header, so a body of at most 1136 bytes holds at most
 * 1136 / (2 + 64) = 17 of them.
 */
#define TKW_BUNDLE_ENTRY_OVERHEAD 2
#define TKW_MAX_BUNDLE (TKW_MAX_BODY / (TKW_BUNDLE_ENTRY_OVERHEAD + TKW_HEADER_LEN))
/*
 * Capacity of the MAP reply arrays. A valid worker entry takes at least 6
 * bytes and a run 14, and the fixed part of the body 20, so a body of at most
 * 1136 bytes can never list more than 186 workers or 79 runs: these arrays
 * cannot overflow on any input (the decoder still checks).
 */
#define TKW_MAP_MAX_WORKERS 192
#define TKW_MAP_MAX_RUNS 80

/* Message types (S4). */
enum {
	TKW_SESSION_OPEN = 0x01,
	TKW_KEEPALIVE = 0x02,
	TKW_SESSION_CLOSE = 0x03,
	TKW_ACQUIRE = 0x04,
	TKW_RELEASE = 0x05,
	TKW_CONVERT = 0x06,
	TKW_CANCEL = 0x07,
	TKW_RECLAIM = 0x08,
	TKW_REVOKE_ACK = 0x09,
	TKW_MAP_REQUEST = 0x0A,
	TKW_FENCE_PROOF = 0x0B, /* read-only: a signed proof of a held grant's fence */
	TKW_GRANT_ACK = 0x0C,   /* one-way: the outcome of a QUEUED request arrived */
	TKW_ACQUIRE_BATCH = 0x0D, /* all-or-none acquire of 1..8 tokens of one shard (S21) */
	TKW_BUNDLE = 0x0E,        /* whole datagrams of one session in one (S22); reply 0x8E */
	TKW_REVOKE = 0x41,
	TKW_GRANT_ASYNC = 0x42,
	TKW_REPLY = 0x80 /* reply type = request type | TKW_REPLY */
};

/* Flag bits (S4). */
#define TKW_FLAG_BUNDLE 0x01        /* SESSION_OPEN, and its reply with status OK (S22) */
#define TKW_FLAG_RENEW 0x01         /* KEEPALIVE */
#define TKW_FLAG_DONE 0x02          /* KEEPALIVE: done_version follows the entries */
#define TKW_FLAG_TRY 0x01           /* ACQUIRE, CONVERT */
#define TKW_FLAG_RELEASE_VALUE 0x01 /* RELEASE */
#define TKW_FLAG_CONVERT_VALUE 0x02 /* CONVERT */
#define TKW_FLAG_RECLAIM_VALUE 0x01 /* RECLAIM: the holder's copy of the value block */
#define TKW_FLAG_ACQUIRE_DETECT 0x02 /* ACQUIRE: cross-token deadlock detection (SPEC 19) */
#define TKW_FLAG_CONVERT_DETECT 0x04 /* CONVERT: cross-token deadlock detection (SPEC 19) */
#define TKW_FLAG_ACQUIRE_GROW 0x04 /* ACQUIRE: may be granted a larger range (SPEC 10) */
#define TKW_FLAG_RELEASE_RANGE 0x02 /* RELEASE: give back only a prefix or suffix (SPEC 10) */

/* GRANT value flags (S5). */
#define TKW_VALUE_VALID 0x01
#define TKW_VALUE_LOST 0x02

/* Status codes (S6). */
enum {
	TKW_ST_OK = 0,
	TKW_ST_QUEUED = 1,
	TKW_ST_CONFLICT = 2,
	TKW_ST_TIMEOUT = 3,
	TKW_ST_NOT_OWNER = 4,
	TKW_ST_STALE_EPOCH = 5,
	TKW_ST_UNKNOWN_SESSION = 6,
	TKW_ST_GRACE = 7,
	TKW_ST_UNAVAILABLE = 8,
	TKW_ST_BAD_REQUEST = 9,
	TKW_ST_NOT_HELD = 10,
	TKW_ST_LIMIT = 11,
	TKW_ST_RECLAIM_REFUSED = 12,
	TKW_ST_CANCELED = 13,
	TKW_ST_EXHAUSTED = 14,
	TKW_ST_SESSION_EXPIRED = 15,
	TKW_ST_DEADLOCK = 16,
	TKW_ST_COOKIE = 17,
	TKW_ST_UNKNOWN_REQUEST = 18,
	TKW_ST_INTERNAL = 255
};

/* Modes (S5 ACQUIRE). */
enum { TKW_NL = 0, TKW_CR, TKW_CW, TKW_PR, TKW_PW, TKW_EX, TKW_NMODES };

/* Body layouts: what a datagram carries after its header (S4, S17.1). */
enum tkw_kind {
	TKW_K_INVALID = 0,
	TKW_K_EMPTY,
	TKW_K_SESSION_OPEN,
	TKW_K_SESSION_REPLY,
	TKW_K_KEEPALIVE,
	TKW_K_KEEPALIVE_REPLY,
	TKW_K_ACQUIRE,
	TKW_K_RELEASE,
	TKW_K_CONVERT,
	TKW_K_CANCEL,
	TKW_K_RECLAIM,
	TKW_K_REVOKE_ACK,
	TKW_K_MAP_REQUEST,
	TKW_K_MAP_REPLY,
	TKW_K_REVOKE,
	TKW_K_GRANT,
	TKW_K_QUEUED,
	TKW_K_ERROR,
	TKW_K_NOT_OWNER,
	TKW_K_COOKIE,
	TKW_K_FENCE_PROOF,
	TKW_K_PROOF,
	TKW_K_GRANT_ACK,
	TKW_K_ACQUIRE_BATCH,
	TKW_K_GRANT_BATCH,
	TKW_K_BATCH_CONFLICT,
	TKW_K_BUNDLE /* BUNDLE, and BUNDLE_REPLY (status OK only) */
};

/*
 * Decode errors, one per class of SPEC.md section 7, in its order. The names
 * (tkw_err_name) are the Go sentinels the test vectors use.
 */
enum tkw_err {
	TKW_OK = 0,
	TKW_ESHORT,
	TKW_ETOOLARGE,
	TKW_EBADMAGIC,
	TKW_EVERSION,
	TKW_ELENGTH,
	TKW_ECHECKSUM,
	TKW_EUNKNOWNTYPE,
	TKW_EBADFLAGS,
	TKW_EBADSTATUS,
	TKW_EBADHEADER,
	TKW_ENAMELENGTH,
	TKW_EVALUELENGTH,
	TKW_EBADMODE,
	TKW_EBADRANGE,
	TKW_EBADBODY,
	TKW_NERR
};

/* A byte string. After tkw_decode it points into the decoded datagram. */
struct tkw_bytes {
	const uint8_t *p;
	size_t len;
};

struct tkw_header {
	uint8_t type;
	uint8_t flags; /* decode: as received; encode: ignored (derived from the body) */
	uint8_t status;
	uint16_t body_len; /* decode only */
	uint64_t session;
	uint64_t request;
	uint64_t ack;
	uint32_t shard;
	uint32_t epoch;
	uint64_t map_version;
	/* The auth tag as received (decode), or as written (encode); the codec
	 * does not check it: auth.c does (S20). */
	uint8_t auth[TKW_AUTH_LEN];
	uint32_t crc; /* decode only */
};

struct tkw_map_worker {
	uint16_t index;
	struct tkw_bytes addr;
	struct tkw_bytes id;
};

struct tkw_map_run {
	uint32_t first;
	uint32_t count;
	uint16_t worker;
	uint32_t epoch;
};

/*
 * One message: the header and every body field of every layout (only those
 * of `kind` are meaningful). Field names follow the keys of vectors.txt.
 * Ranges are in decoded form: the whole token is start 0, end TKW_WHOLE_END.
 * About 10 KiB: keep one per thread, not one per request.
 */
/* One ACQUIRE_BATCH entry (mode, range, name) or GRANT_BATCH grant (all). */
struct tkw_batch_item {
	uint8_t mode;
	uint64_t start, end;
	struct tkw_bytes name;  /* ACQUIRE_BATCH */
	uint64_t fence;         /* GRANT_BATCH */
	uint8_t value_flags;    /* GRANT_BATCH */
	struct tkw_bytes value; /* GRANT_BATCH */
};

struct tkw_msg {
	struct tkw_header h;
	int kind; /* enum tkw_kind, set by tkw_decode; tkw_encode derives it */

	uint32_t ttl_ms;         /* SESSION_OPEN, SESSION_REPLY */
	int bundle;              /* SESSION_OPEN, SESSION_REPLY (flag BUNDLE, S22) */
	struct tkw_bytes lib;    /* SESSION_OPEN */
	uint8_t nonce[TKW_NONCE_LEN];        /* SESSION_OPEN */
	struct tkw_bytes key_name;           /* SESSION_OPEN: 0..64 bytes */
	struct tkw_bytes cookie;             /* SESSION_OPEN: empty or 20 bytes; COOKIE: 20 bytes */
	uint8_t worker_nonce[TKW_NONCE_LEN]; /* SESSION_REPLY */
	uint32_t shard_count;    /* SESSION_REPLY, MAP_REPLY */
	uint32_t grace_ms;       /* SESSION_REPLY, MAP_REPLY */
	uint32_t worker_ttl_ms;  /* SESSION_REPLY */
	int renew;               /* KEEPALIVE (flag) */
	uint64_t done_version;   /* KEEPALIVE: flag DONE with this map version; 0: no DONE */
	uint16_t nentries;       /* KEEPALIVE, KEEPALIVE_REPLY */
	uint32_t entry_shard[TKW_MAX_KA_ENTRIES];
	uint32_t entry_epoch[TKW_MAX_KA_ENTRIES];
	uint8_t entry_status[TKW_MAX_KA_ENTRIES];
	uint32_t session_ttl_ms; /* KEEPALIVE_REPLY */
	uint32_t validity_ms;    /* KEEPALIVE_REPLY, GRANT */
	int try_;                /* ACQUIRE, CONVERT (flag) */
	int detect;              /* ACQUIRE, CONVERT (flag DETECT) */
	int grow;                /* ACQUIRE (flag GROW) */
	int has_range;           /* RELEASE (flag RANGE): start, end are the range given back */
	uint8_t mode;
	uint32_t wait_ms;
	uint64_t start, end;
	struct tkw_bytes name;
	uint64_t fence;
	int has_value;           /* RELEASE, CONVERT, RECLAIM (flag) */
	struct tkw_bytes value;  /* RELEASE, CONVERT, RECLAIM, GRANT */
	uint64_t target;         /* CANCEL, REVOKE_ACK, GRANT_ACK */
	uint32_t first_shard;    /* MAP_REQUEST */
	struct tkw_bytes proof;  /* PROOF: 1..TKW_MAX_PROOF bytes */
	uint64_t body_map_version; /* MAP_REPLY (key "map_version" in the body) */
	uint16_t nworkers;
	struct tkw_map_worker workers[TKW_MAP_MAX_WORKERS];
	uint16_t nruns;
	struct tkw_map_run runs[TKW_MAP_MAX_RUNS];
	uint8_t value_flags;     /* GRANT */
	uint32_t position;       /* QUEUED */
	struct tkw_bytes message;    /* ERROR, NOT_OWNER */
	struct tkw_bytes owner_addr; /* NOT_OWNER */
	uint32_t owner_epoch;        /* NOT_OWNER */
	uint8_t count;               /* ACQUIRE_BATCH, GRANT_BATCH: 1..TKW_MAX_BATCH; BUNDLE: 1..TKW_MAX_BUNDLE */
	struct tkw_batch_item batch[TKW_MAX_BATCH];
	uint8_t conflict_entry;      /* BATCH_CONFLICT: 0..TKW_MAX_BATCH-1 */
	/*
	 * BUNDLE, BUNDLE_REPLY: the datagrams inside, whole, in order (point
	 * into the decoded bundle). tkw_decode checks only what S22 asks of the
	 * bundle (lengths, types a bundle may carry, the bundle's session): a
	 * receiver passes each to tkw_check_frame, its auth check and
	 * tkw_decode as if it had arrived alone, and drops only the bad ones.
	 */
	struct tkw_bytes datagrams[TKW_MAX_BUNDLE];
};

/* CRC32C (Castagnoli) of n bytes, as in S3 ("123456789" -> 0xE3069283). */
uint32_t tkw_crc32c(const void *data, size_t n);

/* FNV-1a 64 of a token name, and its shard (S8). shard_count 0 gives 0. */
uint64_t tkw_fnv1a64(const void *name, size_t n);
uint32_t tkw_shard(const void *name, size_t n, uint32_t shard_count);

/* Fence layout (S9). */
static inline uint32_t tkw_fence_epoch(uint64_t f) { return (uint32_t)(f >> TKW_SEQ_BITS); }
static inline uint64_t tkw_fence_seq(uint64_t f) { return f & ((UINT64_C(1) << TKW_SEQ_BITS) - 1); }
static inline int tkw_fence_valid(uint64_t f) { return tkw_fence_epoch(f) != 0 && tkw_fence_seq(f) != 0; }

/* Is the reply type known; is status defined; body layout of (type, status). */
int tkw_type_known(uint8_t type);
int tkw_status_known(uint8_t status);
int tkw_kind_of(uint8_t type, uint8_t status);
/* Retryable statuses: not applied, not cached, resend the same id (S6, S17.6). */
int tkw_status_retryable(uint8_t status);
/*
 * May a bundle of type outer (TKW_BUNDLE or its reply) carry a datagram of
 * type inner (S22)? A BUNDLE carries requests other than SESSION_OPEN,
 * MAP_REQUEST and BUNDLE; a BUNDLE_REPLY carries replies and server-initiated
 * messages other than the replies to those.
 */
int tkw_bundles(uint8_t outer, uint8_t inner);

/*
 * Decode and validate datagram b[0..n) in the order of S7. On success m holds
 * the header and body (byte strings point into b) and TKW_OK is returned;
 * otherwise the first failing check's class. Never reads outside b.
 */
int tkw_decode(const uint8_t *b, size_t n, struct tkw_msg *m);

/*
 * Steps 1..5 of S7 alone (size, magic, version, body length, checksum): the
 * frame a receiver checks before the auth tag (S20) and before any other
 * field. TKW_OK or the first failing check's class.
 */
int tkw_check_frame(const uint8_t *b, size_t n);

/*
 * Encode m into out (cap >= TKW_MAX_DATAGRAM recommended): header from m->h
 * (flags derived from the body fields, body length and CRC computed), body
 * from the fields of the layout that (type, status) calls for. The result is
 * then decoded again, so anything tkw_encode returns TKW_OK for is a valid
 * datagram; otherwise the decoder's error class (TKW_ETOOLARGE if it does not
 * fit). *len receives the datagram length.
 */
int tkw_encode(const struct tkw_msg *m, uint8_t *out, size_t cap, size_t *len);

/* Reseal a datagram after changing header fields: recompute the CRC. */
void tkw_reseal(uint8_t *b, size_t n);

/* Names for tests and logs. */
const char *tkw_err_name(int err);     /* "ErrShort", ... */
const char *tkw_kind_name(int kind);   /* "EMPTY", "ACQUIRE", ... as in vectors.txt */
const char *tkw_status_name(int status); /* "OK", "NOT_OWNER", ... */

/* Modes: DLM compatibility, and "a covers b" (converting a -> b never waits). */
int tkw_mode_compatible(int a, int b);
int tkw_mode_covers(int a, int b);

/* Strict UTF-8 (RFC 3629: no overlongs, no surrogates, <= U+10FFFF). */
int tkw_utf8_valid(const uint8_t *p, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* TOKEND_CODEC_H */
