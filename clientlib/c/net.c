/*
 * net.c - sockets, addresses, clock and seeds for libtokend (see net.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int64_t tkn_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t tkn_random_seed(void)
{
	uint64_t v = 0;
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, &v, sizeof v);
		close(fd);
		if (n == (ssize_t)sizeof v && v != 0)
			return v;
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	v = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 17) ^
	    (uint64_t)(uintptr_t)&v;
	return v ? v : 0x9E3779B97F4A7C15u;
}

int tkn_split_hostport(const char *s, char *host, size_t hostcap, unsigned *port)
{
	const char *colon, *h = s;
	size_t hlen;
	if (!s || !*s)
		return -1;
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':')
			return -1;
		h = s + 1;
		hlen = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -1;
		hlen = (size_t)(colon - s);
		if (memchr(s, ':', hlen))
			return -1; /* bare IPv6 without brackets */
	}
	if (hlen == 0 || hlen >= hostcap)
		return -1;
	const char *p = colon + 1;
	if (!*p)
		return -1;
	unsigned long v = 0;
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > 65535)
			return -1;
	}
	if (v == 0)
		return -1;
	memcpy(host, h, hlen);
	host[hlen] = 0;
	*port = (unsigned)v;
	return 0;
}

/* Put a resolved address into the form a socket of sock_family sends to. */
static int convert(int sock_family, const struct sockaddr *sa, struct tkn_addr *out)
{
	memset(out, 0, sizeof *out);
	if (sa->sa_family == AF_INET && sock_family == AF_INET) {
		memcpy(&out->sa, sa, sizeof(struct sockaddr_in));
		out->len = sizeof(struct sockaddr_in);
		return 0;
	}
	if (sa->sa_family == AF_INET6 && sock_family == AF_INET6) {
		memcpy(&out->sa, sa, sizeof(struct sockaddr_in6));
		out->len = sizeof(struct sockaddr_in6);
		return 0;
	}
	if (sa->sa_family == AF_INET && sock_family == AF_INET6) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		struct sockaddr_in6 *o = (struct sockaddr_in6 *)&out->sa;
		o->sin6_family = AF_INET6;
		o->sin6_port = in->sin_port;
		o->sin6_addr.s6_addr[10] = 0xff;
		o->sin6_addr.s6_addr[11] = 0xff;
		memcpy(&o->sin6_addr.s6_addr[12], &in->sin_addr, 4);
		out->len = sizeof(struct sockaddr_in6);
		return 0;
	}
	return -1; /* IPv6 destination on an IPv4-only socket */
}

int tkn_resolve(const char *hostport, int sock_family, int numeric_only, struct tkn_addr *out)
{
	char host[256], port[8];
	unsigned p;
	if (tkn_split_hostport(hostport, host, sizeof host, &p) != 0)
		return -1;
	snprintf(port, sizeof port, "%u", p);
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = sock_family == AF_INET ? AF_INET : AF_UNSPEC;
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_NUMERICSERV | (numeric_only ? AI_NUMERICHOST : 0);
	if (getaddrinfo(host, port, &hints, &res) != 0 || !res)
		return -1;
	int rc = -1;
	/* Prefer IPv4 results: the service's own addresses are usually v4. */
	for (int pass = 0; pass < 2 && rc != 0; pass++)
		for (struct addrinfo *ai = res; ai && rc != 0; ai = ai->ai_next)
			if ((pass == 0) == (ai->ai_family == AF_INET))
				rc = convert(sock_family, ai->ai_addr, out);
	freeaddrinfo(res);
	return rc;
}

static int set_flags(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -1;
	int fd_fl = fcntl(fd, F_GETFD);
	if (fd_fl < 0 || fcntl(fd, F_SETFD, fd_fl | FD_CLOEXEC) < 0)
		return -1;
	return 0;
}

int tkn_udp_socket(int *family)
{
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd >= 0) {
		int off = 0;
		if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) == 0 && set_flags(fd) == 0) {
			*family = AF_INET6;
			return fd;
		}
		close(fd);
	}
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return -1;
	if (set_flags(fd) != 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	*family = AF_INET;
	return fd;
}

int tkn_pipe(int fds[2])
{
	if (pipe(fds) != 0)
		return -1;
	if (set_flags(fds[0]) != 0 || set_flags(fds[1]) != 0) {
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	return 0;
}

int tkn_addr_equal(const struct tkn_addr *a, const struct tkn_addr *b)
{
	if (a->sa.ss_family != b->sa.ss_family)
		return 0;
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->sa, *y = (const void *)&b->sa;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)&a->sa, *y = (const void *)&b->sa;
		return x->sin6_port == y->sin6_port &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
	}
	return 0;
}

void tkn_addr_format(const struct tkn_addr *a, char *buf, size_t cap)
{
	char h[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;
	if (a->sa.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->sa;
		inet_ntop(AF_INET, &x->sin_addr, h, sizeof h);
		port = ntohs(x->sin_port);
		snprintf(buf, cap, "%s:%u", h, port);
	} else if (a->sa.ss_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)&a->sa;
		port = ntohs(x->sin6_port);
		if (IN6_IS_ADDR_V4MAPPED(&x->sin6_addr)) {
			/* an IPv4 address on the dual-stack socket: say it as given */
			inet_ntop(AF_INET, &x->sin6_addr.s6_addr[12], h, sizeof h);
			snprintf(buf, cap, "%s:%u", h, port);
			return;
		}
		inet_ntop(AF_INET6, &x->sin6_addr, h, sizeof h);
		snprintf(buf, cap, "[%s]:%u", h, port);
	} else {
		snprintf(buf, cap, "?");
	}
}
