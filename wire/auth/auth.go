// Package auth holds the cryptography of the datagram layer, built only from
// the Go standard library: 256-bit keys and their files, the derivation of
// per-session keys, the per-direction MAC carried in the header's 12-byte
// auth field, the stateless cookies a worker hands out before it spends
// anything on a SESSION_OPEN, and the sealing of keys under the cluster key
// for storage in etcd. docs/SECURITY.md §3 is the design; the decisions
// about when to check what (replay windows, caps, rate limits) belong to
// the session core, not here.
//
// Algorithms: HKDF-SHA256 (RFC 5869) for every derived key, HMAC-SHA256
// truncated to 96 bits for datagrams and to 128 bits for cookies, and
// AES-256-GCM with a random nonce for sealed keys.
package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"github.com/tokend/tokend/wire"
)

// KeyLen is the length of every key, in bytes.
const KeyLen = 32

// NonceLen is the length of the client's and the worker's session nonces.
const NonceLen = wire.NonceLen

// TagLen is the length of a datagram's MAC: the header's auth field.
const TagLen = wire.AuthLen

// Key is a 256-bit secret: a client key, the cluster key, a session key or
// a cookie secret.
type Key [KeyLen]byte

// NewKey returns a fresh random key.
func NewKey() (Key, error) {
	var k Key
	_, err := rand.Read(k[:])
	return k, err
}

// Nonce is a session nonce.
type Nonce [NonceLen]byte

// NewNonce returns a fresh random nonce.
func NewNonce() (Nonce, error) {
	var n Nonce
	_, err := rand.Read(n[:])
	return n, err
}

// NewSessionID returns a random session id: 63 bits from crypto/rand, never
// 0, top bit 0 as the wire requires.
func NewSessionID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if id := binary.BigEndian.Uint64(b[:]) >> 1; id != 0 {
			return id, nil
		}
	}
}

func derive(secret []byte, salt []byte, info string) Key {
	b, err := hkdf.Key(sha256.New, secret, salt, info, KeyLen)
	if err != nil {
		panic("auth: hkdf: " + err.Error()) // only for lengths above 255·32
	}
	return Key(b)
}

// SessionKey derives a session's key from the client key, both nonces and
// the session id the worker chose:
//
//	HKDF-SHA256(secret = client key, salt = client nonce || worker nonce,
//	            info = "tokend v2 session " || session id as 8 bytes big-endian)
func SessionKey(client Key, clientNonce, workerNonce Nonce, session uint64) Key {
	salt := make([]byte, 0, 2*NonceLen)
	salt = append(append(salt, clientNonce[:]...), workerNonce[:]...)
	var id [8]byte
	binary.BigEndian.PutUint64(id[:], session)
	return derive(client[:], salt, "tokend v2 session "+string(id[:]))
}

// Direction says who sends a datagram; each direction has its own MAC key,
// so a datagram reflected back to its sender does not verify.
type Direction uint8

const (
	ClientToWorker Direction = iota + 1
	WorkerToClient
)

func (d Direction) info() string {
	switch d {
	case ClientToWorker:
		return "tokend v2 mac client to worker"
	case WorkerToClient:
		return "tokend v2 mac worker to client"
	}
	panic("auth: bad direction")
}

// OpenKey is the key that MACs a SESSION_OPEN under a client key (before
// there is a session key): HKDF-SHA256(client key, no salt, "tokend v2 open").
func OpenKey(client Key) Key { return derive(client[:], nil, "tokend v2 open") }

// MAC signs and checks the datagrams of one direction of one session. It
// keeps hash state: use one per goroutine (it does not allocate per
// datagram).
type MAC struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// NewMAC returns the MAC of direction d under key k (a session key, or
// OpenKey's result for a SESSION_OPEN and its reply). The MAC key is
// HKDF-SHA256(k, no salt, "tokend v2 mac client to worker" or
// "... worker to client").
func NewMAC(k Key, d Direction) *MAC {
	mk := derive(k[:], nil, d.info())
	return &MAC{h: hmac.New(sha256.New, mk[:])}
}

const (
	offLen  = 6
	offAuth = 48
)

var zeroTail [wire.HeaderLen - offAuth]byte

// tag computes the HMAC-SHA256 of datagram b with its auth field and
// checksum taken as zero.
func (m *MAC) tag(b []byte) []byte {
	m.h.Reset()
	m.h.Write(b[:offAuth])
	m.h.Write(zeroTail[:])
	m.h.Write(b[wire.HeaderLen:])
	return m.h.Sum(m.sum[:0])[:TagLen]
}

// Seal finishes datagram b (header with auth field and checksum zero,
// then the body): it writes the body length, the MAC over the whole
// datagram with auth field and checksum taken as zero, and then the
// checksum over the result. Errors are wire.Seal's.
func (m *MAC) Seal(b []byte) error {
	if len(b) < wire.HeaderLen {
		return wire.ErrShort
	}
	if len(b) > wire.MaxDatagram {
		return wire.ErrTooLarge
	}
	binary.BigEndian.PutUint16(b[offLen:], uint16(len(b)-wire.HeaderLen))
	copy(b[offAuth:offAuth+TagLen], m.tag(b))
	return wire.Seal(b)
}

// Verify reports whether datagram b carries a valid MAC. It compares in
// constant time and does not modify b. Check the checksum first (it is
// cheaper and tells corruption from forgery).
func (m *MAC) Verify(b []byte) bool {
	if len(b) < wire.HeaderLen {
		return false
	}
	return hmac.Equal(m.tag(b), b[offAuth:offAuth+TagLen])
}

// SealKey encrypts key k under the cluster key for storage (in etcd),
// bound to label (e.g. "session 1234" or "client alice"): AES-256-GCM with
// a random 12-byte nonce, the label as additional data. The result is
// nonce || ciphertext || tag (60 bytes).
func SealKey(cluster Key, label string, k Key) ([]byte, error) {
	g, err := gcm(cluster)
	if err != nil {
		return nil, err
	}
	out := make([]byte, g.NonceSize(), g.NonceSize()+KeyLen+g.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, err
	}
	return g.Seal(out, out, k[:], []byte(label)), nil
}

// UnsealKey reverses SealKey; it fails with ErrSealed if sealed was not
// made by SealKey under this cluster key and label.
func UnsealKey(cluster Key, label string, sealed []byte) (Key, error) {
	g, err := gcm(cluster)
	if err != nil {
		return Key{}, err
	}
	if len(sealed) != g.NonceSize()+KeyLen+g.Overhead() {
		return Key{}, ErrSealed
	}
	var k Key
	plain, err := g.Open(k[:0], sealed[:g.NonceSize()], sealed[g.NonceSize():], []byte(label))
	if err != nil || len(plain) != KeyLen {
		return Key{}, ErrSealed
	}
	return k, nil
}

func gcm(k Key) (cipher.AEAD, error) {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
