/*
 * test_ann.c - the announcement decoder and verifier (ann.c) against the
 * golden datagrams of announce/format_test.go (goldenSigned, golden) and
 * tampered variants of them.
 */
#include "../ann.h"
#include "../codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond, ...)                                                   \
	do {                                                               \
		if (!(cond)) {                                             \
			fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);   \
			fprintf(stderr, __VA_ARGS__);                      \
			fputc('\n', stderr);                               \
			failures++;                                        \
		}                                                          \
	} while (0)

/* announce/format_test.go: golden, goldenSigned, goldenPublic. */
static const char golden_hex[] =
	"5441" "02" "00" "0046" "0000" "b4262bc6" "000003e8"
	"0102030405060708" "0000000000000009" "0000000000000011" "0000019b76daa800"
	"0470726f64" "0d31302e302e302e373a37373030" "027737";
static const char signed_hex[] =
	"5441" "02" "02" "0086" "0000" "efb6ac47" "000003e8"
	"0102030405060708" "0000000000000009" "0000000000000011" "0000019b76daa800"
	"0470726f64" "0d31302e302e302e373a37373030" "027737"
	"7c56ebf13a5b0a0da28263552a8ff4e12f561aa3314256d324cd99b597a7cb9a"
	"cff3d3a9c5a1d3112e6ed7c433204b2b24d56e5bf26c1cac2401c974804b9509";
static const char public_hex[] = "6ce6b967ac35d587fd36f20e554ce59a840719774d37ae3fb0d7d5f33903a354";
static const char public_text[] = "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q";
static const uint64_t sent_at = 1767225600000ULL;

static size_t unhex(const char *s, uint8_t *out)
{
	size_t n = strlen(s) / 2;
	for (size_t i = 0; i < n; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			abort();
		out[i] = (uint8_t)v;
	}
	return n;
}

/* Recompute the CRC32C of an edited datagram (signature excluded). */
static void reseal(uint8_t *b, size_t n, int is_signed)
{
	size_t body = is_signed ? n - TKM_SIG_LEN : n;
	memset(b + 8, 0, 4);
	uint32_t c = tkw_crc32c(b, body);
	b[8] = (uint8_t)(c >> 24);
	b[9] = (uint8_t)(c >> 16);
	b[10] = (uint8_t)(c >> 8);
	b[11] = (uint8_t)c;
}

static void test_public_key(void)
{
	uint8_t want[TKM_PUB_LEN], got[TKM_PUB_LEN];
	unhex(public_hex, want);
	CHECK(tkm_parse_public_key(public_text, got) == 0 && memcmp(got, want, sizeof want) == 0,
	      "parse %s", public_text);
	CHECK(tkm_parse_public_key("  bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q\n", got) == 0 &&
		      memcmp(got, want, sizeof want) == 0,
	      "surrounding spaces");
	/* the rejects of announce's TestParsePublicKey */
	const char *bad[] = {"", "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1", "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1QA",
			     "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q=", "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64/sNfV8zkDo1Q",
			     public_hex, NULL};
	for (int i = 0; bad[i]; i++)
		CHECK(tkm_parse_public_key(bad[i], got) != 0, "accepted bad key %s", bad[i]);
	CHECK(tkm_parse_public_key(NULL, got) != 0, "accepted NULL");
}

static void test_golden(void)
{
	uint8_t pub[TKM_PUB_LEN], b[TKM_MAX_DATAGRAM + 1];
	unhex(public_hex, pub);
	size_t n = unhex(signed_hex, b);
	struct tkm_ann a;
	int r = tkm_decode(b, n, "prod", pub, sent_at, &a);
	CHECK(r == TKM_OK, "goldenSigned: %s", tkm_reason_name(r));
	CHECK(a.is_signed && !a.bye && a.interval_ms == 1000 && a.sender == 0x0102030405060708ULL && a.seq == 9 &&
		      a.map_version == 17 && a.sent_at_ms == sent_at && strcmp(a.cluster, "prod") == 0 &&
		      strcmp(a.addr, "10.0.0.7:7700") == 0 && strcmp(a.worker_id, "w7") == 0,
	      "goldenSigned decoded wrong");
	/* within the skew either way, and just outside */
	CHECK(tkm_decode(b, n, "prod", pub, sent_at + TKM_MAX_SKEW_MS, &a) == TKM_OK, "+30 s");
	CHECK(tkm_decode(b, n, "prod", pub, sent_at - TKM_MAX_SKEW_MS, &a) == TKM_OK, "-30 s");
	CHECK(tkm_decode(b, n, "prod", pub, sent_at + TKM_MAX_SKEW_MS + 1, &a) == TKM_TIMESTAMP, "replayed later");
	CHECK(tkm_decode(b, n, "prod", pub, sent_at - TKM_MAX_SKEW_MS - 1, &a) == TKM_TIMESTAMP, "from the future");
	/* another cluster is dropped by name before the signature */
	CHECK(tkm_decode(b, n, "test", pub, sent_at, &a) == TKM_CLUSTER, "other cluster");
	/* without a key (insecure) the signature is not checked */
	CHECK(tkm_decode(b, n, NULL, NULL, 0, &a) == TKM_OK, "no key");

	/* every byte of the signature matters */
	for (size_t i = n - TKM_SIG_LEN; i < n; i++) {
		b[i] ^= 0x01;
		r = tkm_decode(b, n, "prod", pub, sent_at, &a);
		CHECK(r == TKM_SIGNATURE, "signature byte %zu flipped: %s", i, tkm_reason_name(r));
		b[i] ^= 0x01;
	}
	/* a field changed and the checksum recomputed: the signature fails */
	b[39] ^= 0x01; /* map_version 17 -> 16 */
	reseal(b, n, 1);
	r = tkm_decode(b, n, "prod", pub, sent_at, &a);
	CHECK(r == TKM_SIGNATURE, "map_version forged: %s", tkm_reason_name(r));
	/* without recomputing it: checksum */
	b[39] ^= 0x01;
	b[39] ^= 0x02;
	r = tkm_decode(b, n, "prod", pub, sent_at, &a);
	CHECK(r == TKM_CHECKSUM, "map_version flipped: %s", tkm_reason_name(r));
	b[39] ^= 0x02;
	reseal(b, n, 1);
	CHECK(tkm_decode(b, n, "prod", pub, sent_at, &a) == TKM_OK, "restored");

	/* another announce key */
	uint8_t other[TKM_PUB_LEN];
	memcpy(other, pub, sizeof other);
	other[0] ^= 0x80;
	r = tkm_decode(b, n, "prod", other, sent_at, &a);
	CHECK(r == TKM_SIGNATURE, "wrong key: %s", tkm_reason_name(r));

	/* the unsigned golden datagram: fine without a key, "unsigned" with one */
	n = unhex(golden_hex, b);
	CHECK(tkm_decode(b, n, "prod", NULL, 0, &a) == TKM_OK, "golden, insecure");
	CHECK(strcmp(a.addr, "10.0.0.7:7700") == 0 && !a.is_signed, "golden decoded wrong");
	r = tkm_decode(b, n, "prod", pub, sent_at, &a);
	CHECK(r == TKM_UNSIGNED, "golden with a key: %s", tkm_reason_name(r));
	/* version 1 */
	b[2] = 1;
	reseal(b, n, 0);
	r = tkm_decode(b, n, "prod", NULL, 0, &a);
	CHECK(r == TKM_VERSION, "version 1: %s", tkm_reason_name(r));
}

/* Every failure of the "Receiving" order, on the unsigned golden datagram. */
static void test_rejects(void)
{
	uint8_t g[TKM_MAX_DATAGRAM + 2], b[TKM_MAX_DATAGRAM + 2];
	size_t n = unhex(golden_hex, g), m;
	struct tkm_ann a;
	int r;
#define EXPECT(len, want, what)                                                        \
	do {                                                                           \
		r = tkm_decode(b, (len), "prod", NULL, 0, &a);                         \
		CHECK(r == (want), "%s: got %s, want %s", what, tkm_reason_name(r),    \
		      tkm_reason_name(want));                                          \
	} while (0)
	memcpy(b, g, n);
	for (m = 0; m < TKM_HEADER_LEN; m++)
		EXPECT(m, TKM_SHORT, "truncated");
	memset(b, 0, sizeof b);
	EXPECT(TKM_MAX_DATAGRAM + 1, TKM_TOO_LARGE, "too large");
	memcpy(b, g, n);
	b[0] = 'X';
	EXPECT(n, TKM_MAGIC, "magic");
	memcpy(b, g, n);
	EXPECT(n - 1, TKM_LENGTH, "length");
	memcpy(b, g, n);
	b[3] = 0x02; /* SIGNED, but 70 < 112 bytes */
	EXPECT(n, TKM_SHORT, "signed and short");
	memcpy(b, g, n);
	b[12] ^= 1;
	EXPECT(n, TKM_CHECKSUM, "checksum");
	struct {
		size_t off;
		uint8_t val;
		const char *what;
	} mal[] = {
		{3, 0x04, "unknown flag"}, {6, 1, "reserved"}, {12, 0, "interval 0 (high byte)"},
		{48, 5, "cluster overruns"}, {53, 0, "empty address"},
	};
	for (size_t i = 0; i < sizeof mal / sizeof mal[0]; i++) {
		memcpy(b, g, n);
		b[mal[i].off] = mal[i].val;
		if (mal[i].off == 12) /* interval 1000 -> 0 */
			memset(b + 12, 0, 4);
		reseal(b, n, 0);
		EXPECT(n, TKM_MALFORMED, mal[i].what);
	}
	/* zero sender, seq, sent_at */
	size_t zero_at[] = {16, 24, 40};
	for (size_t i = 0; i < 3; i++) {
		memcpy(b, g, n);
		memset(b + zero_at[i], 0, 8);
		reseal(b, n, 0);
		EXPECT(n, TKM_MALFORMED, "zero id or time");
	}
	/* the address without a port: "10.0.0.7:7700" -> "10.0.0.7:0700"? no:
	 * port 0 ("10.0.0.7:0000") */
	memcpy(b, g, n);
	memcpy(b + 63, "0000", 4);
	reseal(b, n, 0);
	EXPECT(n, TKM_MALFORMED, "port 0");
	/* invalid UTF-8 in the worker id */
	memcpy(b, g, n);
	b[69] = 0xff;
	reseal(b, n, 0);
	EXPECT(n, TKM_MALFORMED, "worker id not UTF-8");
	/* a byte after worker_id */
	memcpy(b, g, n);
	b[n] = 0;
	b[5] = (uint8_t)(n + 1);
	reseal(b, n + 1, 0);
	EXPECT(n + 1, TKM_MALFORMED, "trailing byte");
	memcpy(b, g, n);
	EXPECT(n, TKM_OK, "golden itself");
#undef EXPECT
}

static void test_config(void)
{
	struct tkm_config c;
	char err[256];
	CHECK(tkm_parse_config(NULL, &c, err, sizeof err) == 0 && strcmp(c.group, TKM_DEFAULT_GROUP) == 0 &&
		      strcmp(c.cluster, "tokend") == 0 && c.iface[0] == 0,
	      "defaults");
	CHECK(tkm_parse_config("", &c, err, sizeof err) == 0 && strcmp(c.group, TKM_DEFAULT_GROUP) == 0, "empty");
	CHECK(tkm_parse_config("prod@239.1.2.3:9000%eth0", &c, err, sizeof err) == 0 &&
		      strcmp(c.cluster, "prod") == 0 && strcmp(c.group, "239.1.2.3:9000") == 0 &&
		      strcmp(c.iface, "eth0") == 0,
	      "all parts");
	CHECK(tkm_parse_config("%lo", &c, err, sizeof err) == 0 && strcmp(c.iface, "lo") == 0 &&
		      strcmp(c.group, TKM_DEFAULT_GROUP) == 0,
	      "interface only");
	const char *bad[] = {"10.0.0.1:7790", "239.1.2.3", "239.1.2.3:0", "@239.1.2.3:1", "239.1.2.3:1%", "x:1", NULL};
	for (int i = 0; bad[i]; i++)
		CHECK(tkm_parse_config(bad[i], &c, err, sizeof err) != 0, "accepted %s", bad[i]);
}

int main(void)
{
	test_public_key();
	test_golden();
	test_rejects();
	test_config();
	if (failures) {
		fprintf(stderr, "test_ann: %d failures\n", failures);
		return 1;
	}
	printf("test_ann: ok\n");
	return 0;
}
