package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"

	"github.com/tokend/tokend/wire"
)

// CookieLen is the length of a cookie: a 4-byte timestamp then a 16-byte
// tag.
const CookieLen = wire.CookieLen

// Cookies mints and checks the stateless cookies of a worker's session
// opens. A cookie binds the opener's source address and port, its nonce
// and the name of its key to a time on the worker's clock, under a secret
// only that worker knows; returning it proves the opener receives at its
// source address, and it costs the worker no state. Time is passed in as
// seconds on the worker's monotonic clock: cookies go back only to the
// worker that minted them.
//
// Cookies is not safe for concurrent use; Rotate between uses.
type Cookies struct {
	cur, prev Key
	hasPrev   bool
	lifetime  uint32
}

// NewCookies returns a minter whose cookies are valid for lifetime seconds
// (at least 1).
func NewCookies(secret Key, lifetime uint32) *Cookies {
	return &Cookies{cur: secret, lifetime: max(lifetime, 1)}
}

// Rotate makes next the minting secret; cookies minted under the previous
// secret stay valid until they expire, those under older ones do not.
func (c *Cookies) Rotate(next Key) {
	c.prev, c.cur, c.hasPrev = c.cur, next, true
}

// Mint returns the cookie for an open from addr with nonce and key name
// at time now (seconds).
func (c *Cookies) Mint(now uint32, addr netip.AddrPort, nonce Nonce, keyName string) [CookieLen]byte {
	var out [CookieLen]byte
	binary.BigEndian.PutUint32(out[:4], now)
	copy(out[4:], cookieTag(c.cur, now, addr, nonce, keyName))
	return out
}

// Check reports why cookie is not valid for this open at time now, or nil:
// ErrCookieLength, ErrCookieExpired (older than the lifetime, or from the
// future), ErrCookieForged (no secret of ours made it for these inputs).
func (c *Cookies) Check(now uint32, addr netip.AddrPort, nonce Nonce, keyName string, cookie []byte) error {
	if len(cookie) != CookieLen {
		return ErrCookieLength
	}
	at := binary.BigEndian.Uint32(cookie[:4])
	if at > now || now-at > c.lifetime {
		return ErrCookieExpired
	}
	if hmac.Equal(cookieTag(c.cur, at, addr, nonce, keyName), cookie[4:]) {
		return nil
	}
	if c.hasPrev && hmac.Equal(cookieTag(c.prev, at, addr, nonce, keyName), cookie[4:]) {
		return nil
	}
	return ErrCookieForged
}

// cookieTag is HMAC-SHA256(secret, "tokend v2 cookie" || at (4 bytes) ||
// address as 16 bytes (IPv4 mapped into IPv6) || port (2 bytes) || nonce ||
// key name), truncated to 16 bytes.
func cookieTag(secret Key, at uint32, addr netip.AddrPort, nonce Nonce, keyName string) []byte {
	h := hmac.New(sha256.New, secret[:])
	var b [4 + 16 + 2]byte
	binary.BigEndian.PutUint32(b[:4], at)
	a16 := addr.Addr().As16()
	copy(b[4:20], a16[:])
	binary.BigEndian.PutUint16(b[20:], addr.Port())
	h.Write([]byte("tokend v2 cookie"))
	h.Write(b[:])
	h.Write(nonce[:])
	h.Write([]byte(keyName))
	return h.Sum(nil)[:16]
}
