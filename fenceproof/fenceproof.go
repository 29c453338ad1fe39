// Package fenceproof is the signed form of a fence: a proof, issued by a
// worker to the session that holds a grant, that storage checks with the
// cluster's public fence key alone, without calling tokend (docs/SECURITY.md
// §4, wire/SPEC.md §5 FENCE_PROOF).
//
// The cluster has one Ed25519 key pair, derived from the cluster key: seed =
// HKDF-SHA256(cluster key, no salt, "tokend v2 fence signing", 32 bytes).
// Every worker holds the cluster key and signs with the private half;
// servers publish the public half in etcd at /tokend/fence-key and
// `tokenctl fence-key` prints it.
//
// A proof is the 64-byte Ed25519 signature followed by the claims:
//
//	u8 name length (1..255), name
//	u64 fence, u8 mode, u64 start, u64 end (the range, whole = 0, 2^64-1)
//	u32 shard, u32 epoch (the shard's epoch when the proof was issued)
//	u8 worker id length (1..255), worker id
//	u64 issued-at, Unix milliseconds of the issuing worker's clock
//
// all integers big-endian. The signature covers "tokend v2 fence proof"
// followed by the claims bytes.
//
// The package is pure: standard library and wire only, no clock, no I/O.
package fenceproof

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/tokend/tokend/wire"
)

// Context is the fixed prefix of every signed message.
const Context = "tokend v2 fence proof"

// seedInfo is the HKDF info of the signing key's seed.
const seedInfo = "tokend v2 fence signing"

// Sizes.
const (
	SigLen      = ed25519.SignatureSize // 64
	MinLen      = SigLen + 1 + 1 + 8 + 1 + 8 + 8 + 4 + 4 + 1 + 1 + 8
	MaxWorkerID = 255
	MaxLen      = SigLen + 1 + wire.MaxName + 8 + 1 + 8 + 8 + 4 + 4 + 1 + MaxWorkerID + 8
)

// Errors. Verify and Parse wrap one of them.
var (
	// ErrMalformed: the proof does not have the layout above.
	ErrMalformed = errors.New("fenceproof: malformed proof")
	// ErrSignature: the signature does not verify under the given key.
	ErrSignature = errors.New("fenceproof: signature does not verify")
	// ErrClaims: Sign was given claims that cannot be encoded.
	ErrClaims = errors.New("fenceproof: invalid claims")
)

// Claims are what a proof states: the session holding it was granted Fence
// on token Name over [Start, End) in Mode, by worker WorkerID serving Shard
// at Epoch, at IssuedAtMs (Unix milliseconds, the worker's clock).
type Claims struct {
	Name       []byte
	Fence      uint64
	Mode       wire.Mode
	Start, End uint64 // the whole token is 0, wire.WholeEnd
	Shard      uint32
	Epoch      uint32
	WorkerID   []byte
	IssuedAtMs uint64
}

// Proof is a parsed proof: the signature and the claims bytes it covers.
type Proof struct {
	Sig    [SigLen]byte
	Claims Claims
	raw    []byte // the claims bytes as received
}

// PrivateKey returns the cluster's fence signing key, derived from the
// cluster key.
func PrivateKey(clusterKey []byte) ed25519.PrivateKey {
	seed, err := hkdf.Key(sha256.New, clusterKey, nil, seedInfo, ed25519.SeedSize)
	if err != nil {
		panic("fenceproof: hkdf: " + err.Error()) // only for lengths above 255·32
	}
	return ed25519.NewKeyFromSeed(seed)
}

// PublicKey returns the cluster's public fence key: what storage verifies
// proofs with.
func PublicKey(clusterKey []byte) ed25519.PublicKey {
	return PrivateKey(clusterKey).Public().(ed25519.PublicKey)
}

func (c *Claims) check() error {
	switch {
	case len(c.Name) == 0 || len(c.Name) > wire.MaxName:
		return fmt.Errorf("%w: name of %d bytes (want 1..%d)", ErrClaims, len(c.Name), wire.MaxName)
	case !wire.ValidFence(c.Fence):
		return fmt.Errorf("%w: fence %d", ErrClaims, c.Fence)
	case !c.Mode.Valid():
		return fmt.Errorf("%w: mode %d", ErrClaims, c.Mode)
	case c.Start >= c.End:
		return fmt.Errorf("%w: empty range [%d, %d)", ErrClaims, c.Start, c.End)
	case c.Epoch == 0 || c.Epoch > wire.MaxEpoch:
		return fmt.Errorf("%w: epoch %d", ErrClaims, c.Epoch)
	case len(c.WorkerID) == 0 || len(c.WorkerID) > MaxWorkerID:
		return fmt.Errorf("%w: worker id of %d bytes (want 1..%d)", ErrClaims, len(c.WorkerID), MaxWorkerID)
	}
	return nil
}

// appendClaims appends the claims bytes (c is checked).
func appendClaims(dst []byte, c *Claims) []byte {
	dst = append(dst, byte(len(c.Name)))
	dst = append(dst, c.Name...)
	dst = binary.BigEndian.AppendUint64(dst, c.Fence)
	dst = append(dst, byte(c.Mode))
	dst = binary.BigEndian.AppendUint64(dst, c.Start)
	dst = binary.BigEndian.AppendUint64(dst, c.End)
	dst = binary.BigEndian.AppendUint32(dst, c.Shard)
	dst = binary.BigEndian.AppendUint32(dst, c.Epoch)
	dst = append(dst, byte(len(c.WorkerID)))
	dst = append(dst, c.WorkerID...)
	return binary.BigEndian.AppendUint64(dst, c.IssuedAtMs)
}

// Message returns the bytes a proof's signature covers: Context followed by
// the claims bytes.
func Message(claims []byte) []byte {
	return append([]byte(Context), claims...)
}

// Sign returns the proof of c signed with priv. It fails with ErrClaims if
// a field is out of range (empty name or worker id, invalid fence, mode or
// epoch, empty range).
func Sign(priv ed25519.PrivateKey, c Claims) ([]byte, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: private key of %d bytes", ErrClaims, len(priv))
	}
	claims := appendClaims(nil, &c)
	sig := ed25519.Sign(priv, Message(claims))
	return append(sig, claims...), nil
}

// Parse splits a proof into its signature and claims without verifying the
// signature (use Verify). Byte-slice fields of the claims alias b.
func Parse(b []byte) (Proof, error) {
	var p Proof
	if len(b) < MinLen || len(b) > MaxLen {
		return p, fmt.Errorf("%w: %d bytes (want %d..%d)", ErrMalformed, len(b), MinLen, MaxLen)
	}
	copy(p.Sig[:], b)
	p.raw = b[SigLen:]
	r := p.raw
	c := &p.Claims
	take := func(n int) []byte {
		if n > len(r) {
			r = nil
			return nil
		}
		v := r[:n:n]
		r = r[n:]
		return v
	}
	u8 := func() int {
		if v := take(1); v != nil {
			return int(v[0])
		}
		return -1
	}
	u32 := func() uint32 {
		if v := take(4); v != nil {
			return binary.BigEndian.Uint32(v)
		}
		return 0
	}
	u64 := func() uint64 {
		if v := take(8); v != nil {
			return binary.BigEndian.Uint64(v)
		}
		return 0
	}
	n := u8()
	if n <= 0 || n > len(r) {
		return p, fmt.Errorf("%w: name length", ErrMalformed)
	}
	c.Name = take(n)
	c.Fence = u64()
	c.Mode = wire.Mode(u8())
	c.Start, c.End = u64(), u64()
	c.Shard, c.Epoch = u32(), u32()
	n = u8()
	if n <= 0 || n > len(r) {
		return p, fmt.Errorf("%w: worker id length", ErrMalformed)
	}
	c.WorkerID = take(n)
	if len(r) != 8 {
		return p, fmt.Errorf("%w: %d bytes after the worker id (want 8)", ErrMalformed, len(r))
	}
	c.IssuedAtMs = u64()
	if err := c.check(); err != nil {
		return p, fmt.Errorf("%w (%v)", ErrMalformed, err)
	}
	return p, nil
}

// Marshal returns the proof's bytes: those Parse was given, or, for a
// Proof built from Sig and Claims, the signature followed by the claims
// encoded afresh.
func (p Proof) Marshal() []byte {
	raw := p.raw
	if raw == nil {
		raw = appendClaims(nil, &p.Claims)
	}
	return append(p.Sig[:len(p.Sig):len(p.Sig)], raw...)
}

// Verify checks proof b against the cluster's public fence key and returns
// its claims, whose byte-slice fields alias b. It fails with ErrMalformed
// or ErrSignature. A verified proof
// says the fence was granted to someone; storage still compares fences
// (docs/SECURITY.md §4).
func Verify(pub ed25519.PublicKey, b []byte) (Claims, error) {
	p, err := Parse(b)
	if err != nil {
		return Claims{}, err
	}
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, Message(p.raw), p.Sig[:]) {
		return Claims{}, ErrSignature
	}
	return p.Claims, nil
}

// FormatPublicKey returns pub as lowercase hex (64 characters), as
// `tokenctl fence-key` prints it and /tokend/fence-key in etcd holds it.
func FormatPublicKey(pub ed25519.PublicKey) string { return hex.EncodeToString(pub) }

// ParsePublicKey reads a public fence key written by FormatPublicKey
// (surrounding white space is ignored).
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("fenceproof: a public fence key is %d hex characters", 2*ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}
