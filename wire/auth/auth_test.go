package auth

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.txt")

// Fixed inputs of the vectors: patterns, so that a C implementation can
// rebuild them without a random source.
var (
	vClient = func() (k Key) {
		for i := range k {
			k[i] = byte(i)
		}
		return k
	}()
	vClientNonce = Nonce{0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf}
	vWorkerNonce = Nonce{0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf}
	vSession     = uint64(0x3a5f0c9e71d24b86)
	vCookieKey   = Key{31: 1}
	vAddr        = netip.MustParseAddrPort("192.0.2.7:40001")
)

// acquire returns an unsealed ACQUIRE datagram for session id s.
func acquire(t testing.TB, s uint64) []byte {
	h := wire.Header{Session: s, Request: 10, Ack: 10, Shard: wire.Shard([]byte("file/7/page/3"), wire.DefaultShardCount), Epoch: 3, MapVersion: 17}
	b, err := wire.Acquire{Try: true, Mode: wire.EX, Name: []byte("file/7/page/3")}.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMACSealsAndDetectsEveryChange(t *testing.T) {
	sk := SessionKey(vClient, vClientNonce, vWorkerNonce, vSession)
	c2w, w2c := NewMAC(sk, ClientToWorker), NewMAC(sk, WorkerToClient)
	b := acquire(t, vSession)
	if err := c2w.Seal(b); err != nil {
		t.Fatal(err)
	}
	if got := wire.Checksum(b); got != uint32(b[60])<<24|uint32(b[61])<<16|uint32(b[62])<<8|uint32(b[63]) {
		t.Fatal("Seal left a wrong checksum")
	}
	if bytes.Equal(b[48:60], make([]byte, 12)) {
		t.Fatal("Seal wrote no tag")
	}
	if !c2w.Verify(b) {
		t.Fatal("a sealed datagram does not verify")
	}
	if w2c.Verify(b) {
		t.Fatal("a datagram verifies in the other direction: reflection would work")
	}
	other := SessionKey(vClient, vClientNonce, vWorkerNonce, vSession+1)
	if NewMAC(other, ClientToWorker).Verify(b) {
		t.Fatal("a datagram verifies under another session's key")
	}
	// Every bit outside the checksum is covered.
	for i := 0; i < len(b); i++ {
		if i >= 60 && i < 64 {
			continue
		}
		for bit := 0; bit < 8; bit++ {
			b[i] ^= 1 << bit
			if c2w.Verify(b) {
				t.Fatalf("flipping bit %d of byte %d went unnoticed", bit, i)
			}
			b[i] ^= 1 << bit
		}
	}
	if !c2w.Verify(b) || c2w.Verify(b[:len(b)-1]) || c2w.Verify(append(bytes.Clone(b), 0)) || c2w.Verify(b[:10]) {
		t.Fatal("truncation or extension went unnoticed, or Verify modified b")
	}
}

func TestMACDoesNotAllocate(t *testing.T) {
	m := NewMAC(vClient, ClientToWorker)
	b := acquire(t, vSession)
	if n := testing.AllocsPerRun(100, func() {
		if err := m.Seal(b); err != nil || !m.Verify(b) {
			t.Fatal("seal/verify failed")
		}
	}); n != 0 {
		t.Fatalf("Seal+Verify allocate %v times per datagram", n)
	}
}

func TestSessionKeyDependsOnEveryInput(t *testing.T) {
	base := SessionKey(vClient, vClientNonce, vWorkerNonce, vSession)
	k2 := vClient
	k2[0] ^= 1
	n2 := vClientNonce
	n2[15] ^= 1
	w2 := vWorkerNonce
	w2[0] ^= 1
	for name, k := range map[string]Key{
		"client key":     SessionKey(k2, vClientNonce, vWorkerNonce, vSession),
		"client nonce":   SessionKey(vClient, n2, vWorkerNonce, vSession),
		"worker nonce":   SessionKey(vClient, vClientNonce, w2, vSession),
		"session id":     SessionKey(vClient, vClientNonce, vWorkerNonce, vSession^1<<62),
		"nonces swapped": SessionKey(vClient, vWorkerNonce, vClientNonce, vSession),
		"open key":       OpenKey(vClient),
	} {
		if k == base {
			t.Errorf("changing the %s does not change the session key", name)
		}
	}
	if SessionKey(vClient, vClientNonce, vWorkerNonce, vSession) != base {
		t.Error("the derivation is not deterministic")
	}
}

func TestNewSessionID(t *testing.T) {
	seen := map[uint64]bool{}
	var or uint64
	for range 1000 {
		id, err := NewSessionID()
		if err != nil {
			t.Fatal(err)
		}
		if id == 0 || id>>63 != 0 || seen[id] {
			t.Fatalf("bad or repeated session id %#x", id)
		}
		seen[id] = true
		or |= id
	}
	if or != 1<<63-1 {
		t.Fatalf("1000 ids never set some of the low 63 bits: %#x", or)
	}
}

func TestCookies(t *testing.T) {
	c := NewCookies(vCookieKey, 10)
	ck := c.Mint(100, vAddr, vClientNonce, "cluster")
	if err := c.Check(100, vAddr, vClientNonce, "cluster", ck[:]); err != nil {
		t.Fatalf("a fresh cookie: %v", err)
	}
	if err := c.Check(110, vAddr, vClientNonce, "cluster", ck[:]); err != nil {
		t.Fatalf("a cookie at the end of its lifetime: %v", err)
	}
	for name, tc := range map[string]struct {
		now   uint32
		addr  netip.AddrPort
		nonce Nonce
		key   string
		ck    []byte
		want  error
	}{
		"expired":       {111, vAddr, vClientNonce, "cluster", ck[:], ErrCookieExpired},
		"from future":   {99, vAddr, vClientNonce, "cluster", ck[:], ErrCookieExpired},
		"other port":    {100, netip.AddrPortFrom(vAddr.Addr(), 40002), vClientNonce, "cluster", ck[:], ErrCookieForged},
		"other host":    {100, netip.MustParseAddrPort("192.0.2.8:40001"), vClientNonce, "cluster", ck[:], ErrCookieForged},
		"other nonce":   {100, vAddr, vWorkerNonce, "cluster", ck[:], ErrCookieForged},
		"other key":     {100, vAddr, vClientNonce, "alice", ck[:], ErrCookieForged},
		"short":         {100, vAddr, vClientNonce, "cluster", ck[:19], ErrCookieLength},
		"moved in time": {101, vAddr, vClientNonce, "cluster", append([]byte{0, 0, 0, 101}, ck[4:]...), ErrCookieForged},
	} {
		if err := c.Check(tc.now, tc.addr, tc.nonce, tc.key, tc.ck); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	c.Rotate(Key{31: 2})
	if err := c.Check(105, vAddr, vClientNonce, "cluster", ck[:]); err != nil {
		t.Fatalf("a cookie of the previous secret: %v", err)
	}
	c.Rotate(Key{31: 3})
	if err := c.Check(105, vAddr, vClientNonce, "cluster", ck[:]); !errors.Is(err, ErrCookieForged) {
		t.Fatalf("a cookie two secrets old: %v, want %v", err, ErrCookieForged)
	}
}

func TestSealKey(t *testing.T) {
	cluster, _ := NewKey()
	k, _ := NewKey()
	s, err := SealKey(cluster, "session 42", k)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 60 || bytes.Contains(s, k[:8]) {
		t.Fatalf("sealed key is %d bytes or shows the key", len(s))
	}
	if got, err := UnsealKey(cluster, "session 42", s); err != nil || got != k {
		t.Fatalf("unseal: %v", err)
	}
	s2, _ := SealKey(cluster, "session 42", k)
	if bytes.Equal(s, s2) {
		t.Fatal("two seals of one key are equal: the nonce is not random")
	}
	other, _ := NewKey()
	tampered := bytes.Clone(s)
	tampered[20] ^= 1
	for name, f := range map[string]func() (Key, error){
		"other label":   func() (Key, error) { return UnsealKey(cluster, "session 43", s) },
		"other cluster": func() (Key, error) { return UnsealKey(other, "session 42", s) },
		"tampered":      func() (Key, error) { return UnsealKey(cluster, "session 42", tampered) },
		"short":         func() (Key, error) { return UnsealKey(cluster, "session 42", s[:59]) },
	} {
		if _, err := f(); !errors.Is(err, ErrSealed) {
			t.Errorf("%s: %v, want %v", name, err, ErrSealed)
		}
	}
}

func TestKeyFile(t *testing.T) {
	b := FormatKeyFile("alice-1", vClient)
	name, k, err := ParseKeyFile(b)
	if err != nil || name != "alice-1" || k != vClient {
		t.Fatalf("round trip: %q %v %v", name, k == vClient, err)
	}
	secret := strings.TrimSpace(string(b[len("tokend-key v1 alice-1 "):]))
	for _, bad := range []string{
		"", "tokend-key v2 a " + secret, "tokend-key v1 " + secret, "tokend-key v1 a/b " + secret,
		"tokend-key v1 a " + secret[:42], "tokend-key v1 a " + secret + "=", "tokend-key v1 a " + secret + "\n\n",
		"tokend-key v1 " + strings.Repeat("a", 65) + " " + secret, "tokend-key v1 a " + strings.Repeat("!", 43),
	} {
		_, _, err := ParseKeyFile([]byte(bad))
		if !errors.Is(err, ErrKeyFile) {
			t.Errorf("%q: %v, want %v", bad, err, ErrKeyFile)
		}
		if err != nil && strings.Contains(err.Error(), secret[:10]) {
			t.Errorf("the error shows the key: %v", err)
		}
	}
}

// TestVectors pins the derivations and MACs to testdata/vectors.txt, which
// a C (or any other) implementation checks itself against. -update
// rewrites it.
func TestVectors(t *testing.T) {
	sk := SessionKey(vClient, vClientNonce, vWorkerNonce, vSession)
	sealed := func(k Key, d Direction, b []byte) []byte {
		if err := NewMAC(k, d).Seal(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	ck := NewCookies(vCookieKey, 10).Mint(100, vAddr, vClientNonce, "cluster")
	vectors := []struct{ name, value string }{
		{"client-key", hex.EncodeToString(vClient[:])},
		{"client-nonce", hex.EncodeToString(vClientNonce[:])},
		{"worker-nonce", hex.EncodeToString(vWorkerNonce[:])},
		{"session-id", fmt.Sprintf("%016x", vSession)},
		{"open-key", hex.EncodeToString(func() []byte { k := OpenKey(vClient); return k[:] }())},
		{"session-key", hex.EncodeToString(sk[:])},
		{"acquire-c2w", hex.EncodeToString(sealed(sk, ClientToWorker, acquire(t, vSession)))},
		{"acquire-w2c", hex.EncodeToString(sealed(sk, WorkerToClient, acquire(t, vSession)))},
		{"acquire-open-key-c2w", hex.EncodeToString(sealed(OpenKey(vClient), ClientToWorker, acquire(t, vSession)))},
		{"cookie-key", hex.EncodeToString(vCookieKey[:])},
		{"cookie-at-100-from-192.0.2.7:40001-cluster", hex.EncodeToString(ck[:])},
		{"key-file", strings.TrimSpace(string(FormatKeyFile("cluster", vClient)))},
	}
	var out bytes.Buffer
	out.WriteString("# tokend wire v2 authentication vectors: name, then value (hex unless a key file).\n")
	out.WriteString("# Datagrams are SPEC vector acquire-try-ex with session id = session-id, sealed.\n")
	for _, v := range vectors {
		fmt.Fprintf(&out, "%s %s\n", v.name, v.value)
	}
	path := filepath.Join("testdata", "vectors.txt")
	if *update {
		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v (run go test -update once)", err)
	}
	defer f.Close()
	want := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); line != "" && line[0] != '#' {
			name, value, _ := strings.Cut(line, " ")
			want[name] = value
		}
	}
	for _, v := range vectors {
		if want[v.name] != v.value {
			t.Errorf("vector %s = %s, file has %s", v.name, v.value, want[v.name])
		}
	}
	if len(want) != len(vectors) {
		t.Errorf("the file has %d vectors, the test %d", len(want), len(vectors))
	}
}

func BenchmarkSeal(b *testing.B) {
	m := NewMAC(vClient, ClientToWorker)
	d := acquire(b, vSession)
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		m.Seal(d)
	}
}

func BenchmarkVerify(b *testing.B) {
	m := NewMAC(vClient, ClientToWorker)
	d := acquire(b, vSession)
	m.Seal(d)
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		if !m.Verify(d) {
			b.Fatal("verify")
		}
	}
}
