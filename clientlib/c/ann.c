/*
 * ann.c - worker announcements (see ann.h and announce/SPEC.md): the
 * decoder, the Ed25519 check with OpenSSL libcrypto, and the multicast
 * socket. The base64url decoding of the announce key is plain text
 * handling, not cryptography.
 */
#define _DEFAULT_SOURCE /* getifaddrs, struct ip_mreq */
#include "ann.h"

#include "codec.h"
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

static const char *const reason_names[TKM_NREASONS] = {
	"ok", "short", "too_large", "magic", "version", "length", "checksum",
	"malformed", "cluster", "unsigned", "signature", "timestamp",
};

const char *tkm_reason_name(int r)
{
	return r >= 0 && r < TKM_NREASONS ? reason_names[r] : "other";
}

uint64_t tkm_unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const uint8_t *p)
{
	return (uint64_t)be32(p) << 32 | be32(p + 4);
}

/* Valid UTF-8 as Go's utf8.Valid: no overlong forms, surrogates or values
 * beyond U+10FFFF. */
static int utf8_valid(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		size_t k;
		uint32_t lo = 0x80, hi = 0xbf;
		if (c < 0x80) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return 0;
		}
		if (n - i - 1 < k)
			return 0;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return 0;
		for (size_t j = 2; j <= k; j++)
			if (s[i + j] < 0x80 || s[i + j] > 0xbf)
				return 0;
		i += k + 1;
	}
	return 1;
}

/* "host:port" with a non-empty host and a port 1..65535, as announce's
 * checkAddr (net.SplitHostPort, then the port in decimal). */
static int addr_ok(const char *s)
{
	char host[256];
	unsigned port;
	return tkn_split_hostport(s, host, sizeof host, &port) == 0 && host[0] != 0;
}

static int verify_sig(const uint8_t *pub, const uint8_t *msg, size_t len, const uint8_t *sig)
{
	int ok = 0;
	EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, TKM_PUB_LEN);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (key && ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
	    EVP_DigestVerify(ctx, sig, TKM_SIG_LEN, msg, len) == 1)
		ok = 1;
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	return ok;
}

int tkm_decode(const uint8_t *b, size_t n, const char *cluster, const uint8_t *pub, uint64_t now_ms,
	       struct tkm_ann *out)
{
	memset(out, 0, sizeof *out);
	if (n < TKM_HEADER_LEN)
		return TKM_SHORT;
	if (n > TKM_MAX_DATAGRAM)
		return TKM_TOO_LARGE;
	if (b[0] != 'T' || b[1] != 'A')
		return TKM_MAGIC;
	if (b[2] != 2)
		return TKM_VERSION;
	if (((size_t)b[4] << 8 | b[5]) != n)
		return TKM_LENGTH;
	int is_signed = (b[3] & 0x02) != 0;
	size_t body = n;
	if (is_signed) {
		if (n < TKM_HEADER_LEN + TKM_SIG_LEN)
			return TKM_SHORT;
		body = n - TKM_SIG_LEN;
	}
	/* CRC32C of the body with the checksum field taken as zero */
	uint8_t tmp[TKM_MAX_DATAGRAM];
	memcpy(tmp, b, body);
	memset(tmp + 8, 0, 4);
	if (tkw_crc32c(tmp, body) != be32(b + 8))
		return TKM_CHECKSUM;
	if ((b[3] & ~0x03) != 0 || b[6] != 0 || b[7] != 0)
		return TKM_MALFORMED;
	out->bye = (b[3] & 0x01) != 0;
	out->is_signed = is_signed;
	out->interval_ms = be32(b + 12);
	out->sender = be64(b + 16);
	out->seq = be64(b + 24);
	out->map_version = be64(b + 32);
	out->sent_at_ms = be64(b + 40);
	char *dst[3] = {out->cluster, out->addr, out->worker_id};
	size_t off = TKM_HEADER_LEN;
	for (int i = 0; i < 3; i++) {
		if (off >= body || off + 1 + b[off] > body)
			return TKM_MALFORMED;
		size_t len = b[off];
		if (!utf8_valid(b + off + 1, len) || memchr(b + off + 1, 0, len))
			return TKM_MALFORMED;
		memcpy(dst[i], b + off + 1, len);
		dst[i][len] = 0;
		off += 1 + len;
	}
	if (off != body)
		return TKM_MALFORMED;
	if (out->sender == 0 || out->seq == 0 || out->sent_at_ms == 0 || out->interval_ms < 1 ||
	    out->interval_ms > 3600000 || out->cluster[0] == 0 || strlen(out->cluster) > TKM_MAX_CLUSTER ||
	    !addr_ok(out->addr))
		return TKM_MALFORMED;
	if (cluster && strcmp(cluster, out->cluster) != 0)
		return TKM_CLUSTER;
	if (pub) {
		if (!is_signed)
			return TKM_UNSIGNED;
		if (!verify_sig(pub, b, body, b + body))
			return TKM_SIGNATURE;
		uint64_t d = out->sent_at_ms > now_ms ? out->sent_at_ms - now_ms : now_ms - out->sent_at_ms;
		if (d > TKM_MAX_SKEW_MS)
			return TKM_TIMESTAMP;
	}
	return TKM_OK;
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

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int tkm_parse_public_key(const char *s, uint8_t pub[TKM_PUB_LEN])
{
	if (!s)
		return -1;
	while (is_space(*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && is_space(s[n - 1]))
		n--;
	if (n != 43)
		return -1;
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int v = b64url_val(s[i]);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			pub[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	return o == TKM_PUB_LEN ? 0 : -1;
}

/* "a.b.c.d:port" of an IPv4 multicast group with a non-zero port. */
static int group_parse(const char *s, struct sockaddr_in *out)
{
	char host[64];
	unsigned port;
	memset(out, 0, sizeof *out);
	if (tkn_split_hostport(s, host, sizeof host, &port) != 0 || inet_pton(AF_INET, host, &out->sin_addr) != 1)
		return -1;
	if ((ntohl(out->sin_addr.s_addr) >> 28) != 0xe)
		return -1;
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)port);
	return 0;
}

int tkm_parse_config(const char *spec, struct tkm_config *out, char *err, size_t errcap)
{
	memset(out, 0, sizeof *out);
	snprintf(out->cluster, sizeof out->cluster, "%s", TKM_DEFAULT_CLUSTER);
	snprintf(out->group, sizeof out->group, "%s", TKM_DEFAULT_GROUP);
	const char *s = spec ? spec : "";
	const char *at = strchr(s, '@');
	if (at) {
		size_t len = (size_t)(at - s);
		if (len == 0 || len > TKM_MAX_CLUSTER || !utf8_valid((const uint8_t *)s, len)) {
			snprintf(err, errcap, "multicast %.100s: the cluster name (before '@') must be 1..%d bytes",
				 s, TKM_MAX_CLUSTER);
			return -1;
		}
		memcpy(out->cluster, s, len);
		out->cluster[len] = 0;
		s = at + 1;
	}
	const char *pct = strchr(s, '%');
	size_t glen = pct ? (size_t)(pct - s) : strlen(s);
	if (pct) {
		size_t ilen = strlen(pct + 1);
		if (ilen == 0 || ilen >= sizeof out->iface) {
			snprintf(err, errcap, "multicast %.100s: the interface name (after '%%') must be 1..%zu bytes",
				 spec, sizeof out->iface - 1);
			return -1;
		}
		memcpy(out->iface, pct + 1, ilen + 1);
	}
	if (glen > 0) {
		if (glen >= sizeof out->group) {
			snprintf(err, errcap, "multicast %.100s: the group is not \"a.b.c.d:port\"", spec);
			return -1;
		}
		memcpy(out->group, s, glen);
		out->group[glen] = 0;
	}
	struct sockaddr_in g;
	if (group_parse(out->group, &g) != 0) {
		snprintf(err, errcap,
			 "multicast %.100s: group %.63s is not an IPv4 multicast group \"a.b.c.d:port\" (224.0.0.0/4, "
			 "port 1..65535)",
			 spec, out->group);
		return -1;
	}
	return 0;
}

/* The IPv4 address of interface name ("" = the first loopback interface
 * that is up). Returns 0 or -1. */
static int iface_addr(const char *name, struct in_addr *out, char *err, size_t errcap)
{
	struct ifaddrs *ifs, *i;
	if (getifaddrs(&ifs) != 0) {
		snprintf(err, errcap, "listing interfaces: %s", strerror(errno));
		return -1;
	}
	int found = -1;
	for (i = ifs; i; i = i->ifa_next) {
		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP))
			continue;
		if (name[0] ? strcmp(i->ifa_name, name) == 0 : (i->ifa_flags & IFF_LOOPBACK) != 0) {
			*out = ((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr;
			found = 0;
			break;
		}
	}
	freeifaddrs(ifs);
	if (found != 0)
		snprintf(err, errcap, "interface %s: not found, down, or without an IPv4 address",
			 name[0] ? name : "(loopback)");
	return found;
}

int tkm_listen(const struct tkm_config *cfg, char *err, size_t errcap)
{
	struct sockaddr_in g;
	struct in_addr ifa;
	if (group_parse(cfg->group, &g) != 0) {
		snprintf(err, errcap, "group %.63s is not an IPv4 multicast group", cfg->group);
		return -1;
	}
	if (iface_addr(cfg->iface, &ifa, err, errcap) != 0)
		return -1;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		snprintf(err, errcap, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	struct ip_mreq mr;
	memset(&mr, 0, sizeof mr);
	mr.imr_multiaddr = g.sin_addr;
	mr.imr_interface = ifa;
	const char *what = NULL;
	/* Bound to the group address: only datagrams sent to it arrive. Shared
	 * with other listeners of the host (SO_REUSEADDR, as Go's). */
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
		what = "fcntl";
	else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
		what = "SO_REUSEADDR";
	else if (bind(fd, (struct sockaddr *)&g, sizeof g) != 0)
		what = "bind";
	else if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr) != 0)
		what = "IP_ADD_MEMBERSHIP";
	if (what) {
		snprintf(err, errcap, "multicast %s on %s: %s: %s", cfg->group, cfg->iface[0] ? cfg->iface : "loopback",
			 what, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}
