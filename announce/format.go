package announce

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"strconv"
	"time"
	"unicode/utf8"
)

// Format constants (SPEC.md in this folder).
const (
	// Version is the announcement format version this package speaks.
	Version = 2
	// HeaderLen is the fixed part of a datagram, before the text fields.
	HeaderLen = 48
	// SignatureLen is the length of the Ed25519 signature that ends a
	// signed datagram.
	SignatureLen = ed25519.SignatureSize
	// MaxDatagram bounds a datagram; a receiver reads with a buffer one byte
	// larger so that an oversized datagram is seen and rejected.
	MaxDatagram = 1200
	// MaxCluster is the longest cluster name, in bytes.
	MaxCluster = 64
	// MaxText is the longest worker address or worker id, in bytes.
	MaxText = 255
	// MaxInterval is the longest heartbeat interval a datagram may carry.
	MaxInterval = time.Hour

	magic0, magic1 = 'T', 'A'
	flagBye        = 0x01
	flagSigned     = 0x02
	offLen         = 4
	offCRC         = 8
)

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	zeroCRC    [4]byte
)

// Announcement is one announcement datagram, decoded.
type Announcement struct {
	// Cluster names the cluster the sender belongs to; listeners drop
	// announcements of other clusters. 1..64 bytes of UTF-8.
	Cluster string
	// Addr is the sender's worker UDP address, "host:port", where clients
	// send requests (and MAP_REQUEST). An unspecified host (0.0.0.0) means
	// "the source address of this datagram".
	Addr string
	// WorkerID is the worker's id, for logs; may be empty.
	WorkerID string
	// MapVersion is the delegation map version the sender has applied
	// (0: none yet).
	MapVersion uint64
	// Interval is the sender's heartbeat period: a listener considers the
	// sender gone after missing three of them. 1 ms .. 1 h, whole ms.
	Interval time.Duration
	// Sender is a random non-zero number chosen by each Sender instance
	// (a restarted worker gets a new one); Seq counts that sender's
	// datagrams from 1. Together they let a listener drop duplicates and
	// datagrams overtaken by newer ones.
	Sender, Seq uint64
	// SentAt is the sender's clock when it sent the datagram, in
	// milliseconds since the Unix epoch; non-zero. A listener that verifies
	// signatures drops a datagram whose SentAt is more than MaxSkew away
	// from its own clock, so that a recorded announcement cannot be
	// replayed later.
	SentAt uint64
	// Bye marks the last datagram of a sender that is closing.
	Bye bool
	// Signed is set by Decode when the datagram carries a signature (which
	// Decode does not verify: DecodeVerify does). Append ignores it.
	Signed bool
}

// Append encodes a, unsigned, onto dst and returns the extended slice. It
// returns an error wrapping ErrMalformed, and dst unchanged, if a breaks a
// rule of SPEC.md.
func (a *Announcement) Append(dst []byte) ([]byte, error) {
	return a.appendDatagram(dst, nil)
}

// AppendSigned encodes a onto dst signed with key (see SigningKey) and
// returns the extended slice. It returns an error wrapping ErrMalformed, and
// dst unchanged, if a breaks a rule of SPEC.md or key is not an Ed25519
// private key.
func (a *Announcement) AppendSigned(dst []byte, key ed25519.PrivateKey) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return dst, fmt.Errorf("%w: signing key of %d bytes, want %d", ErrMalformed, len(key), ed25519.PrivateKeySize)
	}
	return a.appendDatagram(dst, key)
}

// appendDatagram encodes a onto dst, signed with key unless key is nil.
func (a *Announcement) appendDatagram(dst []byte, key ed25519.PrivateKey) ([]byte, error) {
	if err := a.check(); err != nil {
		return dst, err
	}
	start := len(dst)
	var flags byte
	if a.Bye {
		flags |= flagBye
	}
	if key != nil {
		flags |= flagSigned
	}
	dst = append(dst, magic0, magic1, Version, flags, 0, 0, 0, 0, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(a.Interval/time.Millisecond))
	dst = binary.BigEndian.AppendUint64(dst, a.Sender)
	dst = binary.BigEndian.AppendUint64(dst, a.Seq)
	dst = binary.BigEndian.AppendUint64(dst, a.MapVersion)
	dst = binary.BigEndian.AppendUint64(dst, a.SentAt)
	for _, s := range []string{a.Cluster, a.Addr, a.WorkerID} {
		dst = append(dst, byte(len(s)))
		dst = append(dst, s...)
	}
	b := dst[start:]
	n := len(b)
	if key != nil {
		n += SignatureLen
	}
	binary.BigEndian.PutUint16(b[offLen:], uint16(n))
	binary.BigEndian.PutUint32(b[offCRC:], checksum(b))
	if key != nil {
		dst = append(dst, ed25519.Sign(key, b)...)
	}
	return dst, nil
}

// check applies the field rules of SPEC.md.
func (a Announcement) check() error {
	switch {
	case a.Sender == 0:
		return fmt.Errorf("%w: sender is 0", ErrMalformed)
	case a.Seq == 0:
		return fmt.Errorf("%w: seq is 0", ErrMalformed)
	case a.SentAt == 0:
		return fmt.Errorf("%w: sent_at is 0", ErrMalformed)
	case a.Interval < time.Millisecond || a.Interval > MaxInterval || a.Interval%time.Millisecond != 0:
		return fmt.Errorf("%w: interval %v not a whole number of ms in [1ms, 1h]", ErrMalformed, a.Interval)
	}
	if err := checkCluster(a.Cluster); err != nil {
		return err
	}
	if err := checkAddr(a.Addr); err != nil {
		return err
	}
	if len(a.WorkerID) > MaxText || !utf8.ValidString(a.WorkerID) {
		return fmt.Errorf("%w: worker id is not 0..%d bytes of UTF-8", ErrMalformed, MaxText)
	}
	return nil
}

func checkCluster(s string) error {
	if len(s) == 0 || len(s) > MaxCluster || !utf8.ValidString(s) {
		return fmt.Errorf("%w: cluster name is not 1..%d bytes of UTF-8", ErrMalformed, MaxCluster)
	}
	return nil
}

// checkAddr accepts "host:port" with a non-empty host and a port 1..65535.
func checkAddr(s string) error {
	if len(s) == 0 || len(s) > MaxText || !utf8.ValidString(s) {
		return fmt.Errorf("%w: address is not 1..%d bytes of UTF-8", ErrMalformed, MaxText)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("%w: address %q is not host:port", ErrMalformed, s)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%w: address %q has no port in 1..65535", ErrMalformed, s)
	}
	return nil
}

// checksum is the CRC32C of datagram b (without its signature) with its
// checksum field taken as zero, the convention of wire/SPEC.md at another offset (wire.Checksum is
// tied to the wire header's offset 60, so it is not reused).
func checksum(b []byte) uint32 {
	if len(b) < offCRC+4 {
		return crc32.Checksum(b, castagnoli)
	}
	c := crc32.Update(0, castagnoli, b[:offCRC])
	c = crc32.Update(c, castagnoli, zeroCRC[:])
	return crc32.Update(c, castagnoli, b[offCRC+4:])
}

// Decode validates datagram b and returns the announcement it carries. The
// checks run in the order of SPEC.md: size (ErrShort, ErrTooLarge), magic
// (ErrBadMagic), version (ErrVersion), length (ErrLength), checksum
// (ErrChecksum), then the fields (ErrMalformed). A signature, if there is
// one, is not verified (DecodeVerify does). Decode never panics; the strings
// it returns do not alias b.
func Decode(b []byte) (Announcement, error) {
	if len(b) < HeaderLen {
		return Announcement{}, ErrShort
	}
	if len(b) > MaxDatagram {
		return Announcement{}, ErrTooLarge
	}
	if b[0] != magic0 || b[1] != magic1 {
		return Announcement{}, ErrBadMagic
	}
	if b[2] != Version {
		return Announcement{}, ErrVersion
	}
	if int(binary.BigEndian.Uint16(b[offLen:])) != len(b) {
		return Announcement{}, ErrLength
	}
	signed := b[3]&flagSigned != 0
	body := b
	if signed {
		if len(b) < HeaderLen+SignatureLen {
			return Announcement{}, ErrShort
		}
		body = b[:len(b)-SignatureLen]
	}
	if binary.BigEndian.Uint32(body[offCRC:]) != checksum(body) {
		return Announcement{}, ErrChecksum
	}
	if b[3]&^(flagBye|flagSigned) != 0 {
		return Announcement{}, fmt.Errorf("%w: unknown flags %#02x", ErrMalformed, b[3])
	}
	if b[6] != 0 || b[7] != 0 {
		return Announcement{}, fmt.Errorf("%w: reserved bytes not zero", ErrMalformed)
	}
	a := Announcement{
		Bye:        b[3]&flagBye != 0,
		Signed:     signed,
		Interval:   time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Millisecond,
		Sender:     binary.BigEndian.Uint64(b[16:]),
		Seq:        binary.BigEndian.Uint64(b[24:]),
		MapVersion: binary.BigEndian.Uint64(b[32:]),
		SentAt:     binary.BigEndian.Uint64(b[40:]),
	}
	// The three text fields, bytes8 each, with nothing after them but the
	// signature; one string holds them all.
	var bounds [4]int
	off := HeaderLen
	for i := range 3 {
		if off >= len(body) || off+1+int(body[off]) > len(body) {
			return Announcement{}, fmt.Errorf("%w: text field %d truncated", ErrMalformed, i)
		}
		bounds[i] = off + 1
		off += 1 + int(body[off])
	}
	if off != len(body) {
		return Announcement{}, fmt.Errorf("%w: %d bytes after the last field", ErrMalformed, len(body)-off)
	}
	bounds[3] = len(body) + 1
	texts := string(body[HeaderLen:])
	text := func(i int) string { return texts[bounds[i]-HeaderLen : bounds[i+1]-1-HeaderLen] }
	a.Cluster, a.Addr, a.WorkerID = text(0), text(1), text(2)
	if err := a.check(); err != nil {
		return Announcement{}, err
	}
	return a, nil
}

// DecodeVerify is Decode followed, when pub is not nil, by the signature
// check: a datagram without a signature fails with ErrUnsigned, one whose
// signature does not verify under pub with ErrSignature. With pub nil it is
// Decode. It never panics.
func DecodeVerify(b []byte, pub ed25519.PublicKey) (Announcement, error) {
	a, err := Decode(b)
	if err != nil || pub == nil {
		return a, err
	}
	if err := verify(b, &a, pub); err != nil {
		return Announcement{}, err
	}
	return a, nil
}

// verify checks the signature of datagram b, which Decode turned into a.
func verify(b []byte, a *Announcement, pub ed25519.PublicKey) error {
	if !a.Signed {
		return ErrUnsigned
	}
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key of %d bytes", ErrSignature, len(pub))
	}
	n := len(b) - SignatureLen
	if !ed25519.Verify(pub, b[:n], b[n:]) {
		return ErrSignature
	}
	return nil
}

// Reason names the class of err for a dropped-datagram metric label:
// "short", "too_large", "magic", "version", "length", "checksum",
// "malformed", "unsigned", "signature", or "other".
func Reason(err error) string {
	for _, r := range []struct {
		err   error
		label string
	}{
		{ErrShort, "short"}, {ErrTooLarge, "too_large"}, {ErrBadMagic, "magic"},
		{ErrVersion, "version"}, {ErrLength, "length"}, {ErrChecksum, "checksum"},
		{ErrMalformed, "malformed"}, {ErrUnsigned, "unsigned"}, {ErrSignature, "signature"},
	} {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}
