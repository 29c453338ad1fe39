package auth

import "errors"

var (
	// ErrSealed: a sealed key did not open under this cluster key and label.
	ErrSealed = errors.New("auth: sealed key does not open under this cluster key")
	// ErrCookieLength: a cookie of the wrong length.
	ErrCookieLength = errors.New("auth: cookie of the wrong length")
	// ErrCookieExpired: a cookie older than its lifetime, or from the future.
	ErrCookieExpired = errors.New("auth: cookie expired")
	// ErrCookieForged: a cookie none of our secrets made for this open.
	ErrCookieForged = errors.New("auth: cookie not ours")
	// ErrKeyFile: a key file that does not parse.
	ErrKeyFile = errors.New("auth: bad key file")
)
