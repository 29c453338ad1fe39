/*
 * codec.c - tokend wire protocol v2: encode/decode, CRC32C, FNV-1a.
 *
 * Pure code (no I/O, no clock, no allocation), written from wire/SPEC.md.
 * "S7" etc. refer to the sections of SPEC.md. The decoder validates in the
 * exact order of S7 so that it reports the same error class as every other
 * implementation; each body field's checks run right after the field is read.
 */
#include "codec.h"

#include <string.h>

/* ---------------------------------------------------------------- CRC32C */

/*
 * Table of the reflected Castagnoli polynomial 0x82F63B78 (0x1EDC6F41),
 * byte-at-a-time. Constant, so there is nothing to initialise or race on.
 * crc_table[i] = i shifted right 8 times, xoring the polynomial on each 1 bit
 * shifted out (checked by the crc32c vectors).
 */
static const uint32_t crc_table[256] = {
	0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
	0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
	0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
	0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
	0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
	0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
	0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
	0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
	0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
	0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
	0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
	0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
	0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
	0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
	0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
	0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
	0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
	0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
	0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
	0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
	0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
	0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
	0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
	0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
	0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
	0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
	0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
	0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
	0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
	0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
	0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
	0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
	0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
	0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
	0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
	0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
	0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
	0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
	0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
	0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
	0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
	0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
	0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

static uint32_t crc_update(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
	return crc;
}

uint32_t tkw_crc32c(const void *data, size_t n)
{
	return crc_update(0xFFFFFFFFu, (const uint8_t *)data, n) ^ 0xFFFFFFFFu;
}

/* CRC of a datagram with its checksum field (bytes 60..63) taken as zero. */
static uint32_t datagram_crc(const uint8_t *b, size_t n)
{
	static const uint8_t zero[4];
	uint32_t c = crc_update(0xFFFFFFFFu, b, 60);
	c = crc_update(c, zero, 4);
	c = crc_update(c, b + 64, n - 64);
	return c ^ 0xFFFFFFFFu;
}

/* ---------------------------------------------------------------- FNV-1a */

uint64_t tkw_fnv1a64(const void *name, size_t n)
{
	const uint8_t *p = (const uint8_t *)name;
	uint64_t h = UINT64_C(14695981039346656037);
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= UINT64_C(1099511628211);
	}
	return h;
}

uint32_t tkw_shard(const void *name, size_t n, uint32_t shard_count)
{
	if (shard_count == 0)
		return 0;
	return (uint32_t)(tkw_fnv1a64(name, n) % shard_count);
}

/* ---------------------------------------------------------------- tables */

int tkw_type_known(uint8_t t)
{
	switch (t) {
	case 0x01: case 0x02: case 0x03: case 0x04: case 0x05:
	case 0x06: case 0x07: case 0x08: case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x0E:
	case 0x41: case 0x42:
	case 0x81: case 0x82: case 0x83: case 0x84: case 0x85:
	case 0x86: case 0x87: case 0x88: case 0x8A: case 0x8B: case 0x8D: case 0x8E:
		return 1;
	}
	return 0;
}

int tkw_status_known(uint8_t s) { return s <= 18 || s == 255; }

int tkw_status_retryable(uint8_t s)
{
	return s == TKW_ST_NOT_OWNER || s == TKW_ST_STALE_EPOCH || s == TKW_ST_GRACE ||
	       s == TKW_ST_UNAVAILABLE || s == TKW_ST_LIMIT || s == TKW_ST_EXHAUSTED || s == TKW_ST_COOKIE;
}

static int is_request(uint8_t t) { return t >= 0x01 && t <= 0x3F; }
static int is_server(uint8_t t) { return t >= 0x40 && t <= 0x7F; }
static int is_reply(uint8_t t) { return t >= 0x80; }

int tkw_bundles(uint8_t outer, uint8_t inner)
{
	if (!tkw_type_known(inner))
		return 0;
	switch (outer) {
	case TKW_BUNDLE:
		return is_request(inner) && inner != TKW_SESSION_OPEN && inner != TKW_MAP_REQUEST &&
		       inner != TKW_BUNDLE;
	case TKW_BUNDLE | TKW_REPLY:
		return !is_request(inner) && inner != (TKW_SESSION_OPEN | TKW_REPLY) &&
		       inner != (TKW_MAP_REQUEST | TKW_REPLY) && inner != (TKW_BUNDLE | TKW_REPLY);
	}
	return 0;
}

/* Flag bits defined per type (S4); replies have none but SESSION_REPLY's
 * BUNDLE, which check_header allows with status OK only (S22). */
static uint8_t allowed_flags(uint8_t t)
{
	switch (t) {
	case TKW_SESSION_OPEN: return TKW_FLAG_BUNDLE;
	case TKW_SESSION_OPEN | TKW_REPLY: return TKW_FLAG_BUNDLE;
	case TKW_KEEPALIVE: return TKW_FLAG_RENEW | TKW_FLAG_DONE;
	case TKW_ACQUIRE: return TKW_FLAG_TRY | TKW_FLAG_ACQUIRE_DETECT | TKW_FLAG_ACQUIRE_GROW;
	case TKW_RELEASE: return TKW_FLAG_RELEASE_VALUE | TKW_FLAG_RELEASE_RANGE;
	case TKW_CONVERT: return TKW_FLAG_TRY | TKW_FLAG_CONVERT_VALUE | TKW_FLAG_CONVERT_DETECT;
	case TKW_RECLAIM: return TKW_FLAG_RECLAIM_VALUE;
	}
	return 0;
}

/* Messages about one shard: non-zero epoch required (S3 "Epoch"). */
static int needs_epoch(uint8_t t)
{
	switch (t) {
	case TKW_ACQUIRE: case TKW_RELEASE: case TKW_CONVERT: case TKW_CANCEL:
	case TKW_RECLAIM: case TKW_REVOKE_ACK: case TKW_REVOKE: case TKW_GRANT_ASYNC:
	case TKW_GRANT_ACK: case TKW_FENCE_PROOF: case TKW_FENCE_PROOF | TKW_REPLY:
	case TKW_ACQUIRE | TKW_REPLY: case TKW_RELEASE | TKW_REPLY:
	case TKW_CONVERT | TKW_REPLY: case TKW_CANCEL | TKW_REPLY:
	case TKW_RECLAIM | TKW_REPLY:
	case TKW_ACQUIRE_BATCH: case TKW_ACQUIRE_BATCH | TKW_REPLY:
		return 1;
	}
	return 0;
}

/* The body layout of (type, status): S4 "Which body a reply carries". */
int tkw_kind_of(uint8_t t, uint8_t s)
{
	if (!tkw_type_known(t))
		return TKW_K_INVALID;
	if (!is_reply(t)) {
		switch (t) {
		case TKW_SESSION_OPEN: return TKW_K_SESSION_OPEN;
		case TKW_KEEPALIVE: return TKW_K_KEEPALIVE;
		case TKW_SESSION_CLOSE: return TKW_K_EMPTY;
		case TKW_ACQUIRE: return TKW_K_ACQUIRE;
		case TKW_RELEASE: return TKW_K_RELEASE;
		case TKW_CONVERT: return TKW_K_CONVERT;
		case TKW_CANCEL: return TKW_K_CANCEL;
		case TKW_RECLAIM: return TKW_K_RECLAIM;
		case TKW_REVOKE_ACK: return TKW_K_REVOKE_ACK;
		case TKW_MAP_REQUEST: return TKW_K_MAP_REQUEST;
		case TKW_FENCE_PROOF: return TKW_K_FENCE_PROOF;
		case TKW_GRANT_ACK: return TKW_K_GRANT_ACK;
		case TKW_ACQUIRE_BATCH: return TKW_K_ACQUIRE_BATCH;
		case TKW_BUNDLE: return TKW_K_BUNDLE;
		case TKW_REVOKE: return TKW_K_REVOKE;
		case TKW_GRANT_ASYNC: return TKW_K_GRANT;
		}
		return TKW_K_INVALID;
	}
	if (!tkw_status_known(s))
		return TKW_K_INVALID;
	if (s == TKW_ST_QUEUED)
		return (t == (TKW_ACQUIRE | TKW_REPLY) || t == (TKW_CONVERT | TKW_REPLY)) ? TKW_K_QUEUED
											    : TKW_K_INVALID;
	if (s == TKW_ST_NOT_OWNER || s == TKW_ST_STALE_EPOCH)
		return TKW_K_NOT_OWNER;
	if (s == TKW_ST_COOKIE)
		return t == (TKW_SESSION_OPEN | TKW_REPLY) ? TKW_K_COOKIE : TKW_K_INVALID;
	if (s == TKW_ST_CONFLICT && t == (TKW_ACQUIRE_BATCH | TKW_REPLY))
		return TKW_K_BATCH_CONFLICT;
	if (s != TKW_ST_OK)
		return TKW_K_ERROR;
	switch (t & 0x7F) {
	case TKW_SESSION_OPEN: return TKW_K_SESSION_REPLY;
	case TKW_KEEPALIVE: return TKW_K_KEEPALIVE_REPLY;
	case TKW_SESSION_CLOSE: case TKW_RELEASE: case TKW_CANCEL: return TKW_K_EMPTY;
	case TKW_ACQUIRE: case TKW_CONVERT: case TKW_RECLAIM: return TKW_K_GRANT;
	case TKW_MAP_REQUEST: return TKW_K_MAP_REPLY;
	case TKW_FENCE_PROOF: return TKW_K_PROOF;
	case TKW_ACQUIRE_BATCH: return TKW_K_GRANT_BATCH;
	case TKW_BUNDLE: return TKW_K_BUNDLE;
	}
	return TKW_K_INVALID;
}

/* ---------------------------------------------------------------- UTF-8 */

int tkw_utf8_valid(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = p[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t need;
		uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
		if (c >= 0xC2 && c <= 0xDF) {
			need = 1;
		} else if (c >= 0xE0 && c <= 0xEF) {
			need = 2;
			if (c == 0xE0)
				lo = 0xA0; /* no overlongs */
			else if (c == 0xED)
				hi = 0x9F; /* no surrogates */
		} else if (c >= 0xF0 && c <= 0xF4) {
			need = 3;
			if (c == 0xF0)
				lo = 0x90; /* no overlongs */
			else if (c == 0xF4)
				hi = 0x8F; /* <= U+10FFFF */
		} else {
			return 0; /* 0x80..0xC1, 0xF5..0xFF */
		}
		if (n - i - 1 < need)
			return 0;
		if (p[i + 1] < lo || p[i + 1] > hi)
			return 0;
		for (size_t k = 2; k <= need; k++)
			if (p[i + k] < 0x80 || p[i + k] > 0xBF)
				return 0;
		i += need + 1;
	}
	return 1;
}

/* ---------------------------------------------------------------- modes */

static const unsigned char compat[TKW_NMODES][TKW_NMODES] = {
	/*        NL CR CW PR PW EX */
	/* NL */ {1, 1, 1, 1, 1, 1},
	/* CR */ {1, 1, 1, 1, 1, 0},
	/* CW */ {1, 1, 1, 0, 0, 0},
	/* PR */ {1, 1, 0, 1, 0, 0},
	/* PW */ {1, 1, 0, 0, 0, 0},
	/* EX */ {1, 0, 0, 0, 0, 0},
};

int tkw_mode_compatible(int a, int b)
{
	if (a < 0 || a >= TKW_NMODES || b < 0 || b >= TKW_NMODES)
		return 0;
	return compat[a][b];
}

int tkw_mode_covers(int a, int b)
{
	if (a < 0 || a >= TKW_NMODES || b < 0 || b >= TKW_NMODES)
		return 0;
	for (int m = 0; m < TKW_NMODES; m++)
		if (!compat[b][m] && compat[a][m])
			return 0; /* m conflicts with b but not with a */
	return 1;
}

/* ---------------------------------------------------------------- reader */

struct rd {
	const uint8_t *p;
	size_t n;   /* body length */
	size_t off; /* read position */
};

static int rd_take(struct rd *r, size_t k, const uint8_t **out)
{
	if (r->n - r->off < k)
		return TKW_ESHORT;
	*out = r->p + r->off;
	r->off += k;
	return TKW_OK;
}

static int rd_u8(struct rd *r, uint8_t *v)
{
	const uint8_t *q;
	int e = rd_take(r, 1, &q);
	if (!e)
		*v = q[0];
	return e;
}

static int rd_u16(struct rd *r, uint16_t *v)
{
	const uint8_t *q;
	int e = rd_take(r, 2, &q);
	if (!e)
		*v = (uint16_t)((q[0] << 8) | q[1]);
	return e;
}

static uint32_t get32(const uint8_t *q)
{
	return ((uint32_t)q[0] << 24) | ((uint32_t)q[1] << 16) | ((uint32_t)q[2] << 8) | q[3];
}

static uint64_t get64(const uint8_t *q) { return ((uint64_t)get32(q) << 32) | get32(q + 4); }

static int rd_u32(struct rd *r, uint32_t *v)
{
	const uint8_t *q;
	int e = rd_take(r, 4, &q);
	if (!e)
		*v = get32(q);
	return e;
}

static int rd_u64(struct rd *r, uint64_t *v)
{
	const uint8_t *q;
	int e = rd_take(r, 8, &q);
	if (!e)
		*v = get64(q);
	return e;
}

#define CHECK(x)                        \
	do {                            \
		int e_ = (x);           \
		if (e_ != TKW_OK)       \
			return e_;      \
	} while (0)

static int rd_bytes8(struct rd *r, struct tkw_bytes *b)
{
	uint8_t l;
	CHECK(rd_u8(r, &l));
	b->len = l;
	return rd_take(r, l, &b->p);
}

/* Token name: length 1..255 checked on the length byte (S7). */
static int rd_name(struct rd *r, struct tkw_bytes *b)
{
	uint8_t l;
	CHECK(rd_u8(r, &l));
	if (l == 0)
		return TKW_ENAMELENGTH;
	b->len = l;
	return rd_take(r, l, &b->p);
}

/* Value block: length <= 64 checked on the length byte, before the bytes. */
static int rd_value(struct rd *r, struct tkw_bytes *b)
{
	uint8_t l;
	CHECK(rd_u8(r, &l));
	if (l > TKW_MAX_VALUE)
		return TKW_EVALUELENGTH;
	b->len = l;
	return rd_take(r, l, &b->p);
}

/* Text: bytes8 that must be UTF-8 (checked after its bytes are read). */
static int rd_text(struct rd *r, struct tkw_bytes *b)
{
	CHECK(rd_bytes8(r, b));
	return tkw_utf8_valid(b->p, b->len) ? TKW_OK : TKW_EBADBODY;
}

static int rd_mode(struct rd *r, uint8_t *m)
{
	CHECK(rd_u8(r, m));
	return *m < TKW_NMODES ? TKW_OK : TKW_EBADMODE;
}

static int rd_fence(struct rd *r, uint64_t *f)
{
	CHECK(rd_u64(r, f));
	return tkw_fence_valid(*f) ? TKW_OK : TKW_EBADBODY;
}

/* Range (S10): 0,0 is the whole token, decoded as 0, TKW_WHOLE_END. */
static int rd_range(struct rd *r, uint64_t *start, uint64_t *end)
{
	CHECK(rd_u64(r, start));
	CHECK(rd_u64(r, end));
	if (*start == 0 && *end == 0) {
		*end = TKW_WHOLE_END;
		return TKW_OK;
	}
	if (*start == 0 && *end == TKW_WHOLE_END)
		return TKW_EBADRANGE; /* the whole token spelled out */
	return *start < *end ? TKW_OK : TKW_EBADRANGE;
}

/* An epoch in a body: 1..2^24-1 (or 0..2^24-1 where 0 means unknown). */
static int rd_epoch(struct rd *r, uint32_t *ep, int zero_ok)
{
	CHECK(rd_u32(r, ep));
	if (*ep > TKW_MAX_EPOCH || (*ep == 0 && !zero_ok))
		return TKW_EBADBODY;
	return TKW_OK;
}

static int rd_nonzero32(struct rd *r, uint32_t *v)
{
	CHECK(rd_u32(r, v));
	return *v ? TKW_OK : TKW_EBADBODY;
}

/* ---------------------------------------------------------------- bodies */

static int dec_map_reply(struct rd *r, struct tkw_msg *m)
{
	CHECK(rd_u64(r, &m->body_map_version));
	if (m->body_map_version != m->h.map_version)
		return TKW_EBADBODY;
	CHECK(rd_nonzero32(r, &m->shard_count));
	CHECK(rd_u32(r, &m->grace_ms));
	CHECK(rd_u16(r, &m->nworkers));
	for (unsigned i = 0; i < m->nworkers; i++) {
		if (i >= TKW_MAP_MAX_WORKERS)
			return TKW_ESHORT; /* unreachable: see TKW_MAP_MAX_WORKERS */
		struct tkw_map_worker *w = &m->workers[i];
		CHECK(rd_u16(r, &w->index));
		if (w->index == TKW_NO_WORKER || (i > 0 && w->index <= m->workers[i - 1].index))
			return TKW_EBADBODY;
		CHECK(rd_text(r, &w->addr));
		if (w->addr.len == 0)
			return TKW_EBADBODY;
		CHECK(rd_text(r, &w->id));
		if (w->id.len == 0)
			return TKW_EBADBODY;
	}
	CHECK(rd_u16(r, &m->nruns));
	for (unsigned i = 0; i < m->nruns; i++) {
		if (i >= TKW_MAP_MAX_RUNS)
			return TKW_ESHORT; /* unreachable: see TKW_MAP_MAX_RUNS */
		/*
		 * A run is read whole (14 bytes) before its rules are checked, as
		 * the Go reference does: a run cut short is ErrShort even if its
		 * first fields already break a rule. (SPEC 7 leaves this open.)
		 */
		struct tkw_map_run *run = &m->runs[i];
		CHECK(rd_u32(r, &run->first));
		CHECK(rd_u32(r, &run->count));
		CHECK(rd_u16(r, &run->worker));
		CHECK(rd_u32(r, &run->epoch));
		if (i > 0 && (uint64_t)run->first != (uint64_t)m->runs[i - 1].first + m->runs[i - 1].count)
			return TKW_EBADBODY; /* not contiguous */
		if (run->count == 0 || (uint64_t)run->first + run->count > m->shard_count)
			return TKW_EBADBODY; /* empty, or past the shard count */
		if (run->worker != TKW_NO_WORKER) {
			int listed = 0;
			for (unsigned k = 0; k < m->nworkers && !listed; k++)
				listed = m->workers[k].index == run->worker;
			if (!listed)
				return TKW_EBADBODY;
		}
		if (run->epoch > TKW_MAX_EPOCH || (run->epoch == 0 && run->worker != TKW_NO_WORKER))
			return TKW_EBADBODY;
	}
	return TKW_OK;
}

/*
 * BUNDLE and BUNDLE_REPLY (S22), the checks of Go's wire.CheckBundle in its
 * order: at least one entry; each a u16 length n >= 64 (ErrBadBody) and n
 * bytes within the body (ErrShort), a datagram of a type the bundle may carry
 * and of the bundle's session (ErrBadBody). The datagrams themselves are not
 * validated further: the receiver does that, one by one.
 */
static int dec_bundle(struct rd *r, struct tkw_msg *m)
{
	if (r->n == 0)
		return TKW_EBADBODY; /* a bundle without datagrams */
	while (r->off < r->n) {
		uint16_t n;
		const uint8_t *d;
		CHECK(rd_u16(r, &n));
		if (n < TKW_HEADER_LEN)
			return TKW_EBADBODY;
		CHECK(rd_take(r, n, &d));
		if (n > TKW_MAX_BODY - TKW_BUNDLE_ENTRY_OVERHEAD)
			return TKW_ETOOLARGE; /* unreachable: the body is at most 1136 bytes */
		if (!tkw_bundles(m->h.type, d[3]) || get64(d + 8) != m->h.session)
			return TKW_EBADBODY;
		if (m->count >= TKW_MAX_BUNDLE)
			return TKW_EBADBODY; /* unreachable: see TKW_MAX_BUNDLE */
		m->datagrams[m->count].p = d;
		m->datagrams[m->count].len = n;
		m->count++;
	}
	return TKW_OK;
}

static int dec_body(struct rd *r, struct tkw_msg *m)
{
	const struct tkw_header *h = &m->h;
	switch (m->kind) {
	case TKW_K_EMPTY:
		break;
	case TKW_K_SESSION_OPEN: {
		const uint8_t *q;
		m->bundle = (h->flags & TKW_FLAG_BUNDLE) != 0;
		CHECK(rd_u32(r, &m->ttl_ms));
		CHECK(rd_text(r, &m->lib));
		CHECK(rd_take(r, TKW_NONCE_LEN, &q));
		memcpy(m->nonce, q, TKW_NONCE_LEN);
		CHECK(rd_text(r, &m->key_name));
		if (m->key_name.len > TKW_MAX_KEY_NAME)
			return TKW_EBADBODY;
		/* the cookie's bytes are read before its length is judged, as
		 * the Go reference does */
		CHECK(rd_bytes8(r, &m->cookie));
		if (m->cookie.len != 0 && m->cookie.len != TKW_COOKIE_LEN)
			return TKW_EBADBODY;
		break;
	}
	case TKW_K_SESSION_REPLY: {
		const uint8_t *q;
		m->bundle = (h->flags & TKW_FLAG_BUNDLE) != 0;
		CHECK(rd_nonzero32(r, &m->ttl_ms));
		CHECK(rd_nonzero32(r, &m->shard_count));
		CHECK(rd_u32(r, &m->grace_ms));
		CHECK(rd_nonzero32(r, &m->worker_ttl_ms));
		CHECK(rd_take(r, TKW_NONCE_LEN, &q));
		memcpy(m->worker_nonce, q, TKW_NONCE_LEN);
		break;
	}
	case TKW_K_COOKIE: {
		/* the length is judged before the bytes are read (Go: wire.Cookie) */
		uint8_t l;
		CHECK(rd_u8(r, &l));
		if (l != TKW_COOKIE_LEN)
			return TKW_EBADBODY;
		m->cookie.len = l;
		CHECK(rd_take(r, l, &m->cookie.p));
		break;
	}
	case TKW_K_KEEPALIVE:
		m->renew = (h->flags & TKW_FLAG_RENEW) != 0;
		CHECK(rd_u16(r, &m->nentries));
		if (m->nentries > TKW_MAX_KA_ENTRIES)
			return TKW_ETOOLARGE;
		for (unsigned i = 0; i < m->nentries; i++) {
			CHECK(rd_u32(r, &m->entry_shard[i]));
			CHECK(rd_epoch(r, &m->entry_epoch[i], 0));
		}
		m->done_version = 0;
		if (h->flags & TKW_FLAG_DONE) {
			CHECK(rd_u64(r, &m->done_version));
			if (m->done_version == 0)
				return TKW_EBADBODY;
		}
		break;
	case TKW_K_KEEPALIVE_REPLY:
		CHECK(rd_u32(r, &m->session_ttl_ms));
		CHECK(rd_u32(r, &m->validity_ms));
		CHECK(rd_u16(r, &m->nentries));
		if (m->nentries > TKW_MAX_KA_ENTRIES)
			return TKW_ETOOLARGE;
		for (unsigned i = 0; i < m->nentries; i++) {
			uint8_t s;
			CHECK(rd_u8(r, &s));
			if (s != TKW_ST_OK && s != TKW_ST_NOT_OWNER && s != TKW_ST_STALE_EPOCH)
				return TKW_EBADSTATUS;
			m->entry_status[i] = s;
		}
		break;
	case TKW_K_ACQUIRE:
		m->try_ = (h->flags & TKW_FLAG_TRY) != 0;
		m->detect = (h->flags & TKW_FLAG_ACQUIRE_DETECT) != 0;
		m->grow = (h->flags & TKW_FLAG_ACQUIRE_GROW) != 0;
		CHECK(rd_mode(r, &m->mode));
		CHECK(rd_u32(r, &m->wait_ms));
		CHECK(rd_range(r, &m->start, &m->end));
		CHECK(rd_name(r, &m->name));
		break;
	case TKW_K_RELEASE:
		m->has_value = (h->flags & TKW_FLAG_RELEASE_VALUE) != 0;
		m->has_range = (h->flags & TKW_FLAG_RELEASE_RANGE) != 0;
		CHECK(rd_fence(r, &m->fence));
		CHECK(rd_name(r, &m->name));
		if (m->has_range)
			CHECK(rd_range(r, &m->start, &m->end));
		if (m->has_value)
			CHECK(rd_value(r, &m->value));
		break;
	case TKW_K_CONVERT:
		m->try_ = (h->flags & TKW_FLAG_TRY) != 0;
		m->detect = (h->flags & TKW_FLAG_CONVERT_DETECT) != 0;
		m->has_value = (h->flags & TKW_FLAG_CONVERT_VALUE) != 0;
		CHECK(rd_fence(r, &m->fence));
		CHECK(rd_mode(r, &m->mode));
		CHECK(rd_u32(r, &m->wait_ms));
		CHECK(rd_name(r, &m->name));
		if (m->has_value)
			CHECK(rd_value(r, &m->value));
		break;
	case TKW_K_CANCEL:
	case TKW_K_GRANT_ACK:
		/* An earlier request, possibly below the ack (S11). */
		CHECK(rd_u64(r, &m->target));
		if (m->target == 0 || m->target >= h->request)
			return TKW_EBADBODY;
		break;
	case TKW_K_RECLAIM:
	case TKW_K_REVOKE:
		m->has_value = m->kind == TKW_K_RECLAIM && (h->flags & TKW_FLAG_RECLAIM_VALUE) != 0;
		CHECK(rd_fence(r, &m->fence));
		CHECK(rd_mode(r, &m->mode));
		CHECK(rd_range(r, &m->start, &m->end));
		CHECK(rd_name(r, &m->name));
		if (m->has_value)
			CHECK(rd_value(r, &m->value));
		break;
	case TKW_K_REVOKE_ACK:
		CHECK(rd_u64(r, &m->target));
		if (m->target == 0)
			return TKW_EBADBODY;
		break;
	case TKW_K_MAP_REQUEST:
		CHECK(rd_u32(r, &m->first_shard));
		break;
	case TKW_K_FENCE_PROOF:
		CHECK(rd_fence(r, &m->fence));
		CHECK(rd_range(r, &m->start, &m->end));
		CHECK(rd_name(r, &m->name));
		break;
	case TKW_K_PROOF: {
		uint16_t n;
		CHECK(rd_u16(r, &n));
		if (n == 0 || n > TKW_MAX_PROOF)
			return TKW_EBADBODY;
		CHECK(rd_take(r, n, &m->proof.p));
		m->proof.len = n;
		break;
	}
	case TKW_K_MAP_REPLY:
		CHECK(dec_map_reply(r, m));
		break;
	case TKW_K_GRANT:
		CHECK(rd_fence(r, &m->fence));
		CHECK(rd_mode(r, &m->mode));
		CHECK(rd_u32(r, &m->validity_ms));
		CHECK(rd_range(r, &m->start, &m->end));
		CHECK(rd_u8(r, &m->value_flags));
		if ((m->value_flags & ~(TKW_VALUE_VALID | TKW_VALUE_LOST)) ||
		    m->value_flags == (TKW_VALUE_VALID | TKW_VALUE_LOST))
			return TKW_EBADFLAGS;
		/* value: its length is checked on the length byte (> 64), and
		 * "bytes without VALID" once the bytes are read, as the Go
		 * reference does (SPEC 7 leaves the order open). */
		CHECK(rd_value(r, &m->value));
		if (m->value.len != 0 && !(m->value_flags & TKW_VALUE_VALID))
			return TKW_EBADBODY;
		break;
	case TKW_K_QUEUED:
		CHECK(rd_u32(r, &m->position));
		break;
	case TKW_K_ACQUIRE_BATCH:
		CHECK(rd_u8(r, &m->count));
		if (m->count == 0 || m->count > TKW_MAX_BATCH)
			return TKW_EBADBODY;
		for (unsigned i = 0; i < m->count; i++) {
			struct tkw_batch_item *e = &m->batch[i];
			CHECK(rd_mode(r, &e->mode));
			CHECK(rd_range(r, &e->start, &e->end));
			CHECK(rd_name(r, &e->name));
		}
		break;
	case TKW_K_GRANT_BATCH:
		CHECK(rd_u32(r, &m->validity_ms));
		CHECK(rd_u8(r, &m->count));
		if (m->count == 0 || m->count > TKW_MAX_BATCH)
			return TKW_EBADBODY;
		for (unsigned i = 0; i < m->count; i++) {
			struct tkw_batch_item *g = &m->batch[i];
			CHECK(rd_fence(r, &g->fence));
			CHECK(rd_mode(r, &g->mode));
			CHECK(rd_range(r, &g->start, &g->end));
			CHECK(rd_u8(r, &g->value_flags));
			if ((g->value_flags & ~(TKW_VALUE_VALID | TKW_VALUE_LOST)) ||
			    g->value_flags == (TKW_VALUE_VALID | TKW_VALUE_LOST))
				return TKW_EBADFLAGS;
			CHECK(rd_value(r, &g->value));
			if (g->value.len != 0 && !(g->value_flags & TKW_VALUE_VALID))
				return TKW_EBADBODY;
		}
		break;
	case TKW_K_BATCH_CONFLICT:
		CHECK(rd_u8(r, &m->conflict_entry));
		if (m->conflict_entry >= TKW_MAX_BATCH)
			return TKW_EBADBODY;
		CHECK(rd_text(r, &m->message));
		break;
	case TKW_K_ERROR:
		CHECK(rd_text(r, &m->message));
		break;
	case TKW_K_NOT_OWNER:
		CHECK(rd_text(r, &m->message));
		CHECK(rd_text(r, &m->owner_addr));
		CHECK(rd_epoch(r, &m->owner_epoch, 1));
		break;
	case TKW_K_BUNDLE:
		CHECK(dec_bundle(r, m));
		break;
	default:
		return TKW_EUNKNOWNTYPE; /* unreachable after the header checks */
	}
	return r->off == r->n ? TKW_OK : TKW_EBADBODY; /* trailing bytes */
}

/* Header rules, steps 6..9 of S7. */
static int check_header(const struct tkw_header *h)
{
	uint8_t t = h->type;
	if (!tkw_type_known(t))
		return TKW_EUNKNOWNTYPE;
	if ((h->flags & ~allowed_flags(t)) ||
	    (h->flags && t == (TKW_SESSION_OPEN | TKW_REPLY) && h->status != TKW_ST_OK))
		return TKW_EBADFLAGS;
	if (is_request(t) || is_server(t)) {
		if (h->status != 0)
			return TKW_EBADSTATUS;
	} else {
		if (!tkw_status_known(h->status))
			return TKW_EBADSTATUS;
		if (h->status == TKW_ST_QUEUED && t != (TKW_ACQUIRE | TKW_REPLY) && t != (TKW_CONVERT | TKW_REPLY))
			return TKW_EBADSTATUS;
		if (h->status == TKW_ST_COOKIE && t != (TKW_SESSION_OPEN | TKW_REPLY))
			return TKW_EBADSTATUS;
		if (h->status != TKW_ST_OK && t == (TKW_BUNDLE | TKW_REPLY))
			return TKW_EBADSTATUS;
	}
	/* Session id: top bit 0; zero exactly where S3 says. */
	if (h->session >> 63)
		return TKW_EBADHEADER;
	if (t == TKW_SESSION_OPEN) {
		if (h->session != 0)
			return TKW_EBADHEADER;
	} else if (t == (TKW_SESSION_OPEN | TKW_REPLY)) {
		if ((h->status == TKW_ST_OK) != (h->session != 0))
			return TKW_EBADHEADER;
	} else if (t != TKW_MAP_REQUEST && t != (TKW_MAP_REQUEST | TKW_REPLY)) {
		if (h->session == 0)
			return TKW_EBADHEADER;
	}
	if (h->request == 0)
		return TKW_EBADHEADER;
	if (is_request(t)) {
		if (h->ack > h->request || (h->session == 0 && h->ack != 0) || (t == TKW_BUNDLE && h->ack != 0))
			return TKW_EBADHEADER; /* a bundle acks nothing: its datagrams do (S22) */
	} else if (h->ack != 0) {
		return TKW_EBADHEADER;
	}
	if (h->epoch > TKW_MAX_EPOCH || (h->epoch == 0 && needs_epoch(t)))
		return TKW_EBADHEADER;
	return TKW_OK;
}

int tkw_check_frame(const uint8_t *b, size_t n)
{
	if (n < TKW_HEADER_LEN)
		return TKW_ESHORT;
	if (n > TKW_MAX_DATAGRAM)
		return TKW_ETOOLARGE;
	if (b[0] != 0x54 || b[1] != 0x4B)
		return TKW_EBADMAGIC;
	if (b[2] != TKW_VERSION)
		return TKW_EVERSION;
	if ((size_t)((b[6] << 8) | b[7]) != n - TKW_HEADER_LEN)
		return TKW_ELENGTH;
	if (datagram_crc(b, n) != get32(b + 60))
		return TKW_ECHECKSUM;
	return TKW_OK;
}

int tkw_decode(const uint8_t *b, size_t n, struct tkw_msg *m)
{
	memset(m, 0, sizeof *m);
	CHECK(tkw_check_frame(b, n));
	struct tkw_header *h = &m->h;
	h->body_len = (uint16_t)((b[6] << 8) | b[7]);
	h->crc = get32(b + 60);
	/* The auth tag is carried, not checked here (auth.c, S20). */
	memcpy(h->auth, b + TKW_AUTH_OFF, TKW_AUTH_LEN);
	h->type = b[3];
	h->flags = b[4];
	h->status = b[5];
	h->session = get64(b + 8);
	h->request = get64(b + 16);
	h->ack = get64(b + 24);
	h->shard = get32(b + 32);
	h->epoch = get32(b + 36);
	h->map_version = get64(b + 40);
	CHECK(check_header(h));
	m->kind = tkw_kind_of(h->type, h->status);
	struct rd r = {b + TKW_HEADER_LEN, n - TKW_HEADER_LEN, 0};
	return dec_body(&r, m);
}

/* ---------------------------------------------------------------- writer */

struct wr {
	uint8_t *p;
	size_t cap;
	size_t off;
	int err;
};

static void wr_put(struct wr *w, const void *src, size_t k)
{
	if (w->err)
		return;
	if (w->cap - w->off < k) {
		w->err = TKW_ETOOLARGE;
		return;
	}
	if (k)
		memcpy(w->p + w->off, src, k);
	w->off += k;
}

static void wr_u8(struct wr *w, uint8_t v) { wr_put(w, &v, 1); }

static void wr_u16(struct wr *w, uint16_t v)
{
	uint8_t q[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	wr_put(w, q, 2);
}

static void wr_u32(struct wr *w, uint32_t v)
{
	uint8_t q[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
	wr_put(w, q, 4);
}

static void wr_u64(struct wr *w, uint64_t v)
{
	wr_u32(w, (uint32_t)(v >> 32));
	wr_u32(w, (uint32_t)v);
}

/* bytes8; a length that does not fit in a byte is reported as errlen. */
static void wr_bytes8(struct wr *w, struct tkw_bytes b, size_t max, int errlen)
{
	if (b.len > max) {
		if (!w->err)
			w->err = errlen;
		return;
	}
	if (b.len && !b.p) {
		if (!w->err)
			w->err = TKW_EBADBODY;
		return;
	}
	wr_u8(w, (uint8_t)b.len);
	wr_put(w, b.p, b.len);
}

static void wr_range(struct wr *w, uint64_t start, uint64_t end)
{
	if (start == 0 && end == TKW_WHOLE_END)
		end = 0; /* the whole token is written 0,0 (S10) */
	wr_u64(w, start);
	wr_u64(w, end);
}

static void put32(uint8_t *q, uint32_t v)
{
	q[0] = (uint8_t)(v >> 24);
	q[1] = (uint8_t)(v >> 16);
	q[2] = (uint8_t)(v >> 8);
	q[3] = (uint8_t)v;
}

static void put64(uint8_t *q, uint64_t v)
{
	put32(q, (uint32_t)(v >> 32));
	put32(q + 4, (uint32_t)v);
}

void tkw_reseal(uint8_t *b, size_t n)
{
	if (n < TKW_HEADER_LEN)
		return;
	b[6] = (uint8_t)((n - TKW_HEADER_LEN) >> 8);
	b[7] = (uint8_t)(n - TKW_HEADER_LEN);
	put32(b + 60, datagram_crc(b, n));
}

static uint8_t derive_flags(const struct tkw_msg *m, int kind)
{
	switch (kind) {
	case TKW_K_SESSION_OPEN:
	case TKW_K_SESSION_REPLY:
		return m->bundle ? TKW_FLAG_BUNDLE : 0;
	case TKW_K_KEEPALIVE:
		return (uint8_t)((m->renew ? TKW_FLAG_RENEW : 0) | (m->done_version ? TKW_FLAG_DONE : 0));
	case TKW_K_ACQUIRE:
		return (uint8_t)((m->try_ ? TKW_FLAG_TRY : 0) | (m->detect ? TKW_FLAG_ACQUIRE_DETECT : 0) |
				 (m->grow ? TKW_FLAG_ACQUIRE_GROW : 0));
	case TKW_K_RELEASE:
		return (uint8_t)((m->has_value ? TKW_FLAG_RELEASE_VALUE : 0) | (m->has_range ? TKW_FLAG_RELEASE_RANGE : 0));
	case TKW_K_CONVERT:
		return (uint8_t)((m->try_ ? TKW_FLAG_TRY : 0) | (m->has_value ? TKW_FLAG_CONVERT_VALUE : 0) |
				 (m->detect ? TKW_FLAG_CONVERT_DETECT : 0));
	case TKW_K_RECLAIM: return m->has_value ? TKW_FLAG_RECLAIM_VALUE : 0;
	}
	return 0;
}

static void enc_body(struct wr *w, const struct tkw_msg *m, int kind)
{
	switch (kind) {
	case TKW_K_EMPTY:
		break;
	case TKW_K_SESSION_OPEN:
		wr_u32(w, m->ttl_ms);
		wr_bytes8(w, m->lib, TKW_MAX_TEXT, TKW_ETOOLARGE);
		wr_put(w, m->nonce, TKW_NONCE_LEN);
		wr_bytes8(w, m->key_name, TKW_MAX_KEY_NAME, TKW_EBADBODY);
		if (m->cookie.len != 0 && m->cookie.len != TKW_COOKIE_LEN && !w->err)
			w->err = TKW_EBADBODY;
		wr_bytes8(w, m->cookie, TKW_COOKIE_LEN, TKW_EBADBODY);
		break;
	case TKW_K_SESSION_REPLY:
		wr_u32(w, m->ttl_ms);
		wr_u32(w, m->shard_count);
		wr_u32(w, m->grace_ms);
		wr_u32(w, m->worker_ttl_ms);
		wr_put(w, m->worker_nonce, TKW_NONCE_LEN);
		break;
	case TKW_K_COOKIE:
		if (m->cookie.len != TKW_COOKIE_LEN) {
			if (!w->err)
				w->err = TKW_EBADBODY;
			return;
		}
		wr_bytes8(w, m->cookie, TKW_COOKIE_LEN, TKW_EBADBODY);
		break;
	case TKW_K_KEEPALIVE:
		if (m->nentries > TKW_MAX_KA_ENTRIES) {
			w->err = TKW_ETOOLARGE;
			return;
		}
		wr_u16(w, m->nentries);
		for (unsigned i = 0; i < m->nentries; i++) {
			wr_u32(w, m->entry_shard[i]);
			wr_u32(w, m->entry_epoch[i]);
		}
		if (m->done_version)
			wr_u64(w, m->done_version);
		break;
	case TKW_K_KEEPALIVE_REPLY:
		if (m->nentries > TKW_MAX_KA_ENTRIES) {
			w->err = TKW_ETOOLARGE;
			return;
		}
		wr_u32(w, m->session_ttl_ms);
		wr_u32(w, m->validity_ms);
		wr_u16(w, m->nentries);
		for (unsigned i = 0; i < m->nentries; i++)
			wr_u8(w, m->entry_status[i]);
		break;
	case TKW_K_ACQUIRE:
		wr_u8(w, m->mode);
		wr_u32(w, m->wait_ms);
		wr_range(w, m->start, m->end);
		wr_bytes8(w, m->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
		break;
	case TKW_K_RELEASE:
		wr_u64(w, m->fence);
		wr_bytes8(w, m->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
		if (m->has_range)
			wr_range(w, m->start, m->end);
		if (m->has_value)
			wr_bytes8(w, m->value, TKW_MAX_VALUE, TKW_EVALUELENGTH);
		break;
	case TKW_K_CONVERT:
		wr_u64(w, m->fence);
		wr_u8(w, m->mode);
		wr_u32(w, m->wait_ms);
		wr_bytes8(w, m->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
		if (m->has_value)
			wr_bytes8(w, m->value, TKW_MAX_VALUE, TKW_EVALUELENGTH);
		break;
	case TKW_K_CANCEL:
	case TKW_K_REVOKE_ACK:
	case TKW_K_GRANT_ACK:
		wr_u64(w, m->target);
		break;
	case TKW_K_RECLAIM:
	case TKW_K_REVOKE:
		wr_u64(w, m->fence);
		wr_u8(w, m->mode);
		wr_range(w, m->start, m->end);
		wr_bytes8(w, m->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
		if (kind == TKW_K_RECLAIM && m->has_value)
			wr_bytes8(w, m->value, TKW_MAX_VALUE, TKW_EVALUELENGTH);
		break;
	case TKW_K_MAP_REQUEST:
		wr_u32(w, m->first_shard);
		break;
	case TKW_K_FENCE_PROOF:
		wr_u64(w, m->fence);
		wr_range(w, m->start, m->end);
		wr_bytes8(w, m->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
		break;
	case TKW_K_PROOF:
		if (m->proof.len == 0 || m->proof.len > TKW_MAX_PROOF || !m->proof.p) {
			if (!w->err)
				w->err = TKW_EBADBODY;
			return;
		}
		wr_u16(w, (uint16_t)m->proof.len);
		wr_put(w, m->proof.p, m->proof.len);
		break;
	case TKW_K_MAP_REPLY:
		if (m->nworkers > TKW_MAP_MAX_WORKERS || m->nruns > TKW_MAP_MAX_RUNS) {
			w->err = TKW_ETOOLARGE;
			return;
		}
		wr_u64(w, m->body_map_version);
		wr_u32(w, m->shard_count);
		wr_u32(w, m->grace_ms);
		wr_u16(w, m->nworkers);
		for (unsigned i = 0; i < m->nworkers; i++) {
			wr_u16(w, m->workers[i].index);
			wr_bytes8(w, m->workers[i].addr, TKW_MAX_TEXT, TKW_ETOOLARGE);
			wr_bytes8(w, m->workers[i].id, TKW_MAX_TEXT, TKW_ETOOLARGE);
		}
		wr_u16(w, m->nruns);
		for (unsigned i = 0; i < m->nruns; i++) {
			wr_u32(w, m->runs[i].first);
			wr_u32(w, m->runs[i].count);
			wr_u16(w, m->runs[i].worker);
			wr_u32(w, m->runs[i].epoch);
		}
		break;
	case TKW_K_GRANT:
		wr_u64(w, m->fence);
		wr_u8(w, m->mode);
		wr_u32(w, m->validity_ms);
		wr_range(w, m->start, m->end);
		wr_u8(w, m->value_flags);
		wr_bytes8(w, m->value, TKW_MAX_VALUE, TKW_EVALUELENGTH);
		break;
	case TKW_K_QUEUED:
		wr_u32(w, m->position);
		break;
	case TKW_K_ACQUIRE_BATCH:
	case TKW_K_GRANT_BATCH:
		if (m->count == 0 || m->count > TKW_MAX_BATCH) {
			if (!w->err)
				w->err = TKW_EBADBODY;
			return;
		}
		if (kind == TKW_K_GRANT_BATCH)
			wr_u32(w, m->validity_ms);
		wr_u8(w, m->count);
		for (unsigned i = 0; i < m->count; i++) {
			const struct tkw_batch_item *e = &m->batch[i];
			if (kind == TKW_K_ACQUIRE_BATCH) {
				wr_u8(w, e->mode);
				wr_range(w, e->start, e->end);
				wr_bytes8(w, e->name, TKW_MAX_NAME, TKW_ENAMELENGTH);
			} else {
				wr_u64(w, e->fence);
				wr_u8(w, e->mode);
				wr_range(w, e->start, e->end);
				wr_u8(w, e->value_flags);
				wr_bytes8(w, e->value, TKW_MAX_VALUE, TKW_EVALUELENGTH);
			}
		}
		break;
	case TKW_K_BATCH_CONFLICT:
		wr_u8(w, m->conflict_entry);
		wr_bytes8(w, m->message, TKW_MAX_TEXT, TKW_ETOOLARGE);
		break;
	case TKW_K_ERROR:
		wr_bytes8(w, m->message, TKW_MAX_TEXT, TKW_ETOOLARGE);
		break;
	case TKW_K_NOT_OWNER:
		wr_bytes8(w, m->message, TKW_MAX_TEXT, TKW_ETOOLARGE);
		wr_bytes8(w, m->owner_addr, TKW_MAX_TEXT, TKW_ETOOLARGE);
		wr_u32(w, m->owner_epoch);
		break;
	case TKW_K_BUNDLE:
		/* each datagram whole, as it would be sent alone; the decoder
		 * run by tkw_encode checks types and sessions (S22) */
		if (m->count == 0 || m->count > TKW_MAX_BUNDLE) {
			if (!w->err)
				w->err = TKW_EBADBODY;
			return;
		}
		for (unsigned i = 0; i < m->count; i++) {
			struct tkw_bytes d = m->datagrams[i];
			if (!d.p || d.len < TKW_HEADER_LEN) {
				if (!w->err)
					w->err = TKW_EBADBODY;
				return;
			}
			if (d.len > TKW_MAX_BODY - TKW_BUNDLE_ENTRY_OVERHEAD) {
				if (!w->err)
					w->err = TKW_ETOOLARGE;
				return;
			}
			wr_u16(w, (uint16_t)d.len);
			wr_put(w, d.p, d.len);
		}
		break;
	default:
		w->err = TKW_EUNKNOWNTYPE;
	}
}

int tkw_encode(const struct tkw_msg *m, uint8_t *out, size_t cap, size_t *len)
{
	*len = 0;
	if (cap > TKW_MAX_DATAGRAM)
		cap = TKW_MAX_DATAGRAM;
	if (cap < TKW_HEADER_LEN)
		return TKW_ETOOLARGE;
	const struct tkw_header *h = &m->h;
	int kind = tkw_kind_of(h->type, h->status);
	if (kind == TKW_K_INVALID)
		return tkw_type_known(h->type) ? TKW_EBADSTATUS : TKW_EUNKNOWNTYPE;

	memset(out, 0, TKW_HEADER_LEN);
	out[0] = 0x54;
	out[1] = 0x4B;
	out[2] = TKW_VERSION;
	out[3] = h->type;
	out[4] = derive_flags(m, kind);
	out[5] = h->status;
	put64(out + 8, h->session);
	put64(out + 16, h->request);
	put64(out + 24, h->ack);
	put32(out + 32, h->shard);
	put32(out + 36, h->epoch);
	put64(out + 40, h->map_version);
	memcpy(out + TKW_AUTH_OFF, h->auth, TKW_AUTH_LEN);

	struct wr w = {out, cap, TKW_HEADER_LEN, 0};
	enc_body(&w, m, kind);
	if (w.err)
		return w.err;
	tkw_reseal(out, w.off);

	/* Whatever we send must decode: run the receiver's checks on it. */
	struct tkw_msg check;
	int e = tkw_decode(out, w.off, &check);
	if (e)
		return e;
	*len = w.off;
	return TKW_OK;
}

/* ---------------------------------------------------------------- names */

const char *tkw_err_name(int err)
{
	static const char *const names[TKW_NERR] = {
		"OK", "ErrShort", "ErrTooLarge", "ErrBadMagic", "ErrVersion", "ErrLength",
		"ErrChecksum", "ErrUnknownType", "ErrBadFlags", "ErrBadStatus",
		"ErrBadHeader", "ErrNameLength", "ErrValueLength", "ErrBadMode", "ErrBadRange",
		"ErrBadBody",
	};
	return err >= 0 && err < TKW_NERR ? names[err] : "ErrUnknown";
}

const char *tkw_kind_name(int kind)
{
	static const char *const names[] = {
		"INVALID", "EMPTY", "SESSION_OPEN", "SESSION_REPLY", "KEEPALIVE",
		"KEEPALIVE_REPLY", "ACQUIRE", "RELEASE", "CONVERT", "CANCEL", "RECLAIM",
		"REVOKE_ACK", "MAP_REQUEST", "MAP_REPLY", "REVOKE", "GRANT", "QUEUED",
		"ERROR", "NOT_OWNER", "COOKIE", "FENCE_PROOF", "PROOF", "GRANT_ACK",
		"ACQUIRE_BATCH", "GRANT_BATCH", "BATCH_CONFLICT", "BUNDLE",
	};
	return kind >= 0 && kind < (int)(sizeof names / sizeof names[0]) ? names[kind] : "INVALID";
}

const char *tkw_status_name(int s)
{
	static const char *const names[] = {
		"OK", "QUEUED", "CONFLICT", "TIMEOUT", "NOT_OWNER", "STALE_EPOCH",
		"UNKNOWN_SESSION", "GRACE", "UNAVAILABLE", "BAD_REQUEST", "NOT_HELD", "LIMIT",
		"RECLAIM_REFUSED", "CANCELED", "EXHAUSTED", "SESSION_EXPIRED", "DEADLOCK", "COOKIE",
	};
	if (s >= 0 && s <= 17)
		return names[s];
	return s == 255 ? "INTERNAL" : "UNDEFINED";
}
