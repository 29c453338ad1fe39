package announce

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/tokend/tokend/wire/auth"
)

// signingInfo is the HKDF info that derives the announce signing key's seed
// from the cluster key (SPEC.md, "Signature").
const signingInfo = "tokend v2 announce signing"

// SigningKey is the cluster's announce signing key, derived from the
// cluster key: an Ed25519 key whose seed is HKDF-SHA256(cluster key, no
// salt, "tokend v2 announce signing"). Every worker of a cluster derives the
// same one and signs its announcements with it; clients, which do not hold
// the cluster key, verify with its public half (PublicKey).
func SigningKey(cluster auth.Key) ed25519.PrivateKey {
	seed, err := hkdf.Key(sha256.New, cluster[:], nil, signingInfo, ed25519.SeedSize)
	if err != nil { // only for a length beyond 255 hash blocks
		panic("announce: hkdf: " + err.Error())
	}
	return ed25519.NewKeyFromSeed(seed)
}

// PublicKey is the public half of the cluster's announce signing key: what
// clients verify announcements with.
func PublicKey(cluster auth.Key) ed25519.PublicKey {
	return SigningKey(cluster).Public().(ed25519.PublicKey)
}

// FormatPublicKey writes pub as `tokenctl announce-key` prints it and
// ParsePublicKey reads it: unpadded base64url, 43 characters.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(pub)
}

// ParsePublicKey reads an announce public key as FormatPublicKey writes it
// (surrounding spaces ignored). It returns an error wrapping ErrMalformed
// for anything else.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: an announce key is %d bytes in unpadded base64url (as tokenctl announce-key prints it)", ErrMalformed, ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}
