/*
 * net.h - sockets, addresses, the monotonic clock and random seeds for
 * libtokend. Internal (not installed). POSIX only.
 */
#ifndef TOKEND_NET_H
#define TOKEND_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A resolved UDP address in the form the client's socket sends to. */
struct tkn_addr {
	struct sockaddr_storage sa;
	socklen_t len;
};

/* Monotonic clock (CLOCK_MONOTONIC) in nanoseconds. */
int64_t tkn_now(void);

/* 64 random bits for seeding (from /dev/urandom, else time and pid). */
uint64_t tkn_random_seed(void);

/*
 * Split "host:port" or "[v6]:port" into host and port (1..65535, decimal).
 * Returns 0, or -1 if malformed or too long for the buffers.
 */
int tkn_split_hostport(const char *s, char *host, size_t hostcap, unsigned *port);

/*
 * Resolve "host:port" for a socket of family sock_family (AF_INET6 sockets are
 * dual-stack: IPv4 results become v4-mapped). numeric_only: no DNS lookup.
 * Returns 0 or -1.
 */
int tkn_resolve(const char *hostport, int sock_family, int numeric_only, struct tkn_addr *out);

/* Open the client's UDP socket: AF_INET6 dual-stack if the kernel allows,
 * else AF_INET; non-blocking, close-on-exec. Returns the fd or -1; *family
 * receives the family. */
int tkn_udp_socket(int *family);

/* A non-blocking, close-on-exec pipe. Returns 0 or -1. */
int tkn_pipe(int fds[2]);

/* Equal addresses (same family, address and port). */
int tkn_addr_equal(const struct tkn_addr *a, const struct tkn_addr *b);

/* "1.2.3.4:5" / "[::1]:5" for messages. */
void tkn_addr_format(const struct tkn_addr *a, char *buf, size_t cap);

#endif
