/*
 * hex.h: hex text of the golden vector files, for the C tests.
 */
#ifndef TOKEND_TESTS_HEX_H
#define TOKEND_TESTS_HEX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* hexval returns the value of hex digit c, or -1. */
static inline int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* unhex decodes hex string s into out (at most cap bytes): the byte count,
 * or -1 if s is not hex of at most cap bytes. */
static inline long unhex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		int a = hexval((unsigned char)s[2 * i]), b = hexval((unsigned char)s[2 * i + 1]);
		if (a < 0 || b < 0)
			return -1;
		out[i] = (uint8_t)(a << 4 | b);
	}
	return (long)(n / 2);
}

/* tohex writes the lowercase hex of p[0..n) and a NUL to out (2n+1 bytes). */
static inline void tohex(const uint8_t *p, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[p[i] >> 4];
		out[2 * i + 1] = d[p[i] & 15];
	}
	out[2 * n] = 0;
}

#endif
