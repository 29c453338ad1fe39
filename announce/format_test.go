package announce

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/wire/auth"
)

func sample() Announcement {
	return Announcement{Cluster: "prod", Addr: "10.0.0.7:7700", WorkerID: "w7", MapVersion: 17,
		Interval: time.Second, Sender: 0x0102030405060708, Seq: 9, SentAt: 1767225600000}
}

// golden is sample() encoded, unsigned, byte for byte as SPEC.md's example
// shows.
const golden = "5441" + "02" + "00" + "0046" + "0000" + "b4262bc6" + "000003e8" +
	"0102030405060708" + "0000000000000009" + "0000000000000011" + "0000019b76daa800" +
	"0470726f64" + "0d31302e302e302e373a37373030" + "027737"

// vectorClusterKey is the cluster key 00 01 02 … 1f of SPEC.md's signed
// example; goldenPublic is its announce public key and goldenSigned is
// sample() signed with its announce signing key. Both were checked against
// an independent implementation (Python's hmac for HKDF, OpenSSL's
// Ed25519).
var vectorClusterKey = func() (k auth.Key) {
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

const (
	goldenPublic = "6ce6b967ac35d587fd36f20e554ce59a840719774d37ae3fb0d7d5f33903a354"
	goldenSeed   = "854ba46d5ba88447eaff5ecc55ca9ecabf741b71adfa4eb65dadf8a80a351edf"
	goldenSigned = "5441" + "02" + "02" + "0086" + "0000" + "efb6ac47" + "000003e8" +
		"0102030405060708" + "0000000000000009" + "0000000000000011" + "0000019b76daa800" +
		"0470726f64" + "0d31302e302e302e373a37373030" + "027737" +
		"7c56ebf13a5b0a0da28263552a8ff4e12f561aa3314256d324cd99b597a7cb9a" +
		"cff3d3a9c5a1d3112e6ed7c433204b2b24d56e5bf26c1cac2401c974804b9509"
)

func TestGolden(t *testing.T) {
	a := sample()
	b, err := a.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != golden {
		t.Fatalf("encoding changed:\n got %s\nwant %s", got, golden)
	}
	want, _ := hex.DecodeString(golden)
	d, err := Decode(want)
	if err != nil || d != a {
		t.Fatalf("Decode(golden) = %+v, %v; want %+v", d, err, a)
	}
}

func TestGoldenSigned(t *testing.T) {
	priv := SigningKey(vectorClusterKey)
	if got := hex.EncodeToString(priv.Seed()); got != goldenSeed {
		t.Fatalf("signing seed %s, want %s", got, goldenSeed)
	}
	if got := hex.EncodeToString(PublicKey(vectorClusterKey)); got != goldenPublic {
		t.Fatalf("public key %s, want %s", got, goldenPublic)
	}
	a := sample()
	b, err := a.AppendSigned(nil, priv)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != goldenSigned {
		t.Fatalf("signed encoding changed:\n got %s\nwant %s", got, goldenSigned)
	}
	d, err := DecodeVerify(b, PublicKey(vectorClusterKey))
	want := a
	want.Signed = true
	if err != nil || d != want {
		t.Fatalf("DecodeVerify(goldenSigned) = %+v, %v; want %+v", d, err, want)
	}
	// Without a key, the signature is carried but not checked.
	if d, err := DecodeVerify(b, nil); err != nil || d != want {
		t.Fatalf("DecodeVerify(goldenSigned, nil) = %+v, %v", d, err)
	}
}

// TestVerifyRejects: only a datagram signed with the listener's key, and
// unchanged since, verifies; every other one fails with the error that
// names why.
func TestVerifyRejects(t *testing.T) {
	pub := PublicKey(vectorClusterKey)
	signed, _ := hex.DecodeString(goldenSigned)
	unsigned, _ := hex.DecodeString(golden)
	other, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	a := sample()
	forged, _ := a.AppendSigned(nil, SigningKey(other))
	body := len(signed) - SignatureLen
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(signed)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"unsigned", unsigned, ErrUnsigned},
		{"other cluster key", forged, ErrSignature},
		{"signature byte", mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrSignature},
		{"map version, checksum fixed", mod(func(b []byte) []byte {
			b[39] ^= 1
			binary.BigEndian.PutUint32(b[offCRC:], checksum(b[:body]))
			return b
		}), ErrSignature},
		{"sent_at, checksum fixed", mod(func(b []byte) []byte {
			b[47] ^= 1
			binary.BigEndian.PutUint32(b[offCRC:], checksum(b[:body]))
			return b
		}), ErrSignature},
		{"signed flag dropped", mod(func(b []byte) []byte {
			b = b[:body]
			b[3] &^= flagSigned
			return reseal(b)
		}), ErrUnsigned},
		{"text changed", mod(func(b []byte) []byte {
			b[HeaderLen+1] = 'q' // "qrod"
			binary.BigEndian.PutUint32(b[offCRC:], checksum(b[:body]))
			return b
		}), ErrSignature},
		{"version 1", mod(func(b []byte) []byte { b[2] = 1; return b }), ErrVersion},
	} {
		d, err := DecodeVerify(tc.b, pub)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && d != (Announcement{}) {
			t.Errorf("%s: non-zero announcement with an error", tc.name)
		}
	}
	if _, err := DecodeVerify(signed, pub[:31]); !errors.Is(err, ErrSignature) {
		t.Errorf("short public key: %v", err)
	}
	if _, err := a.AppendSigned(nil, SigningKey(other)[:10]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short signing key: %v", err)
	}
}

func TestSigningKeyPerCluster(t *testing.T) {
	k2 := vectorClusterKey
	k2[31] ^= 1
	if bytes.Equal(PublicKey(vectorClusterKey), PublicKey(k2)) {
		t.Fatal("two cluster keys, one announce key")
	}
	if !bytes.Equal(PublicKey(vectorClusterKey), PublicKey(vectorClusterKey)) {
		t.Fatal("the derivation is not deterministic")
	}
}

func TestPublicKeyText(t *testing.T) {
	pub := PublicKey(vectorClusterKey)
	s := FormatPublicKey(pub)
	if s != "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q" {
		t.Fatalf("FormatPublicKey = %q", s)
	}
	got, err := ParsePublicKey(" " + s + "\n")
	if err != nil || !bytes.Equal(got, pub) {
		t.Fatalf("ParsePublicKey = %x, %v", got, err)
	}
	for _, bad := range []string{"", s[:42], s + "A", s + "=", "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64/sNfV8zkDo1Q", hex.EncodeToString(pub)} {
		if _, err := ParsePublicKey(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParsePublicKey(%q) = %v", bad, err)
		}
	}
}

// crc32cBitwise is CRC32C computed bit by bit from its definition
// (reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF), as an
// oracle independent of hash/crc32.
func crc32cBitwise(b []byte) uint32 {
	c := ^uint32(0)
	for _, x := range b {
		c ^= uint32(x)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ 0x82F63B78
			} else {
				c >>= 1
			}
		}
	}
	return ^c
}

func TestChecksum(t *testing.T) {
	// The CRC32C check value of SPEC.md (and wire/SPEC.md).
	if c := checksum([]byte("123456789")); c != 0xE3069283 || crc32cBitwise([]byte("123456789")) != 0xE3069283 {
		t.Fatalf("crc32c(123456789) = %#x", c)
	}
	g, _ := hex.DecodeString(golden)
	stored := binary.BigEndian.Uint32(g[offCRC:])
	clear(g[offCRC : offCRC+4])
	if want := crc32cBitwise(g); stored != want {
		t.Fatalf("golden checksum %#x, want %#x", stored, want)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, a := range []Announcement{
		sample(),
		{Cluster: strings.Repeat("c", MaxCluster), Addr: "[fd00::1]:1", WorkerID: strings.Repeat("é", 127),
			MapVersion: 1<<64 - 1, Interval: MaxInterval, Sender: 1<<64 - 1, Seq: 1<<64 - 1, SentAt: 1<<64 - 1, Bye: true},
		{Cluster: "x", Addr: "h:65535", Interval: time.Millisecond, Sender: 1, Seq: 1, SentAt: 1},
		{Cluster: "x", Addr: strings.Repeat("h", MaxText-6) + ":65535", Interval: time.Millisecond, Sender: 1, Seq: 1, SentAt: 1},
	} {
		b, err := a.Append([]byte("prefix"))
		if err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
		if string(b[:6]) != "prefix" {
			t.Fatal("Append clobbered dst")
		}
		d, err := Decode(b[6:])
		if err != nil || d != a {
			t.Fatalf("round trip of %+v: %+v, %v", a, d, err)
		}
	}
}

func TestAppendRejects(t *testing.T) {
	for name, mod := range map[string]func(*Announcement){
		"sender 0":         func(a *Announcement) { a.Sender = 0 },
		"seq 0":            func(a *Announcement) { a.Seq = 0 },
		"sent_at 0":        func(a *Announcement) { a.SentAt = 0 },
		"interval 0":       func(a *Announcement) { a.Interval = 0 },
		"interval sub-ms":  func(a *Announcement) { a.Interval = 1500 * time.Microsecond },
		"interval > 1h":    func(a *Announcement) { a.Interval = MaxInterval + time.Millisecond },
		"empty cluster":    func(a *Announcement) { a.Cluster = "" },
		"long cluster":     func(a *Announcement) { a.Cluster = strings.Repeat("c", MaxCluster+1) },
		"bad utf8 cluster": func(a *Announcement) { a.Cluster = "\xff" },
		"empty addr":       func(a *Announcement) { a.Addr = "" },
		"no port":          func(a *Announcement) { a.Addr = "10.0.0.1" },
		"port 0":           func(a *Announcement) { a.Addr = "10.0.0.1:0" },
		"port too big":     func(a *Announcement) { a.Addr = "10.0.0.1:65536" },
		"named port":       func(a *Announcement) { a.Addr = "10.0.0.1:http" },
		"no host":          func(a *Announcement) { a.Addr = ":7700" },
		"long addr":        func(a *Announcement) { a.Addr = strings.Repeat("h", MaxText) + ":1" },
		"long id":          func(a *Announcement) { a.WorkerID = strings.Repeat("i", MaxText+1) },
		"bad utf8 id":      func(a *Announcement) { a.WorkerID = "\xc3" },
	} {
		a := sample()
		mod(&a)
		if b, err := a.Append(nil); !errors.Is(err, ErrMalformed) || len(b) != 0 {
			t.Errorf("%s: Append = %x, %v; want ErrMalformed", name, b, err)
		}
	}
}

// reseal fixes the length and checksum of a modified datagram (the
// checksum stops before the signature when the signed flag is set).
func reseal(b []byte) []byte {
	binary.BigEndian.PutUint16(b[offLen:], uint16(len(b)))
	body := b
	if b[3]&flagSigned != 0 && len(b) >= HeaderLen+SignatureLen {
		body = b[:len(b)-SignatureLen]
	}
	binary.BigEndian.PutUint32(b[offCRC:], checksum(body))
	return b
}

func TestDecodeRejects(t *testing.T) {
	good, _ := hex.DecodeString(golden)
	mod := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header only minus one", good[:HeaderLen-1], ErrShort},
		{"too large", reseal(append(bytes.Clone(good), make([]byte, MaxDatagram)...)), ErrTooLarge},
		{"magic", mod(func(b []byte) []byte { b[0] = 'X'; return reseal(b) }), ErrBadMagic},
		{"wire datagram", mod(func(b []byte) []byte { b[1] = 'K'; return reseal(b) }), ErrBadMagic},
		{"version 1", mod(func(b []byte) []byte { b[2] = 1; return reseal(b) }), ErrVersion},
		{"version 3", mod(func(b []byte) []byte { b[2] = 3; return reseal(b) }), ErrVersion},
		{"truncated", good[:len(good)-1], ErrLength},
		{"trailing byte", append(bytes.Clone(good), 0), ErrLength},
		{"checksum", mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrChecksum},
		{"unknown flag", mod(func(b []byte) []byte { b[3] = 4; return reseal(b) }), ErrMalformed},
		{"signed flag, too short for a signature", mod(func(b []byte) []byte { b[3] = flagSigned; return reseal(b) }), ErrShort},
		{"reserved", mod(func(b []byte) []byte { b[7] = 1; return reseal(b) }), ErrMalformed},
		{"interval 0", mod(func(b []byte) []byte { clear(b[12:16]); return reseal(b) }), ErrMalformed},
		{"sender 0", mod(func(b []byte) []byte { clear(b[16:24]); return reseal(b) }), ErrMalformed},
		{"seq 0", mod(func(b []byte) []byte { clear(b[24:32]); return reseal(b) }), ErrMalformed},
		{"sent_at 0", mod(func(b []byte) []byte { clear(b[40:48]); return reseal(b) }), ErrMalformed},
		{"text overruns", mod(func(b []byte) []byte { b[len(b)-3] = 200; return reseal(b) }), ErrMalformed},
		{"text missing", reseal(bytes.Clone(good[:len(good)-3])), ErrMalformed},
		{"extra byte after fields", reseal(append(bytes.Clone(good), 0)), ErrMalformed},
		{"empty cluster", reseal(append(append(bytes.Clone(good[:HeaderLen]), 0), good[HeaderLen+5:]...)), ErrMalformed},
	} {
		a, err := Decode(tc.b)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if err != nil && a != (Announcement{}) {
			t.Errorf("%s: non-zero announcement with an error", tc.name)
		}
	}
}

func TestReason(t *testing.T) {
	for err, want := range map[error]string{
		ErrShort: "short", ErrTooLarge: "too_large", ErrBadMagic: "magic", ErrVersion: "version",
		ErrLength: "length", ErrChecksum: "checksum", ErrMalformed: "malformed", ErrUnsigned: "unsigned",
		ErrSignature: "signature", ErrClosed: "other",
	} {
		if got := Reason(errors.Join(errors.New("x"), err)); got != want {
			t.Errorf("Reason(%v) = %q, want %q", err, got, want)
		}
	}
}

func TestDecodeAllocs(t *testing.T) {
	good, _ := hex.DecodeString(golden)
	// One string; the error path allocates nothing.
	if n := testing.AllocsPerRun(100, func() { Decode(good) }); n > 1 {
		t.Errorf("Decode allocates %v times", n)
	}
	bad := good[:len(good)-1]
	if n := testing.AllocsPerRun(100, func() { Decode(bad) }); n != 0 {
		t.Errorf("Decode of a bad datagram allocates %v times", n)
	}
}

func BenchmarkAppendSigned(b *testing.B) {
	a, key := sample(), SigningKey(vectorClusterKey)
	buf := make([]byte, 0, MaxDatagram)
	for b.Loop() {
		a.AppendSigned(buf[:0], key)
	}
}

func BenchmarkDecodeVerify(b *testing.B) {
	signed, _ := hex.DecodeString(goldenSigned)
	pub := PublicKey(vectorClusterKey)
	for b.Loop() {
		if _, err := DecodeVerify(signed, pub); err != nil {
			b.Fatal(err)
		}
	}
}
