package auth

import (
	"bytes"
	"encoding/base64"
	"fmt"
)

// A key file holds one named key on one line:
//
//	tokend-key v1 NAME BASE64URL
//
// NAME is 1 to 64 bytes of [A-Za-z0-9._-] ("cluster" names the cluster
// client key); BASE64URL is the 32-byte key in unpadded base64url (43
// characters). A trailing newline is allowed; nothing else is.

const keyFilePrefix = "tokend-key v1 "

// MaxKeyName is the longest key name.
const MaxKeyName = 64

// ValidKeyName reports whether name may name a client key.
func ValidKeyName(name string) bool {
	if len(name) == 0 || len(name) > MaxKeyName {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// FormatKeyFile returns the key file for name and k. It panics if name is
// not valid (check with ValidKeyName).
func FormatKeyFile(name string, k Key) []byte {
	if !ValidKeyName(name) {
		panic("auth: invalid key name " + fmt.Sprintf("%q", name))
	}
	return []byte(keyFilePrefix + name + " " + base64.RawURLEncoding.EncodeToString(k[:]) + "\n")
}

// ParseKeyFile parses a key file, with an error that says what is wrong
// (never the key itself).
func ParseKeyFile(b []byte) (name string, k Key, err error) {
	line := bytes.TrimSuffix(b, []byte("\n"))
	rest, ok := bytes.CutPrefix(line, []byte(keyFilePrefix))
	if !ok {
		return "", Key{}, fmt.Errorf("%w: does not start with %q", ErrKeyFile, keyFilePrefix)
	}
	n, enc, ok := bytes.Cut(rest, []byte(" "))
	if !ok || !ValidKeyName(string(n)) {
		return "", Key{}, fmt.Errorf("%w: the name must be 1 to %d characters of A-Z a-z 0-9 . _ -", ErrKeyFile, MaxKeyName)
	}
	if len(enc) != base64.RawURLEncoding.EncodedLen(KeyLen) {
		return "", Key{}, fmt.Errorf("%w: the key must be %d characters of unpadded base64url", ErrKeyFile, base64.RawURLEncoding.EncodedLen(KeyLen))
	}
	raw, err := base64.RawURLEncoding.DecodeString(string(enc))
	if err != nil || len(raw) != KeyLen {
		return "", Key{}, fmt.Errorf("%w: the key is not valid unpadded base64url", ErrKeyFile)
	}
	return string(n), Key(raw), nil
}
