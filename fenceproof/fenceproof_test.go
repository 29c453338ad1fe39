package fenceproof

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/tokend/tokend/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.txt")

// vCluster is the vectors' cluster key: bytes 0x00..0x1f, as in
// wire/auth/testdata/vectors.txt.
var vCluster = func() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

func vClaims() []Claims {
	maxName := make([]byte, wire.MaxName)
	for i := range maxName {
		maxName[i] = byte(i)
	}
	return []Claims{
		{Name: []byte("file/7/page/3"), Fence: wire.MakeFence(3, 1001), Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd,
			Shard: 2083, Epoch: 3, WorkerID: []byte("w-a"), IssuedAtMs: 1796300000000},
		{Name: []byte("inode:42"), Fence: wire.MakeFence(5, 7), Mode: wire.PR, Start: 4096, End: 8192,
			Shard: 3252, Epoch: 6, WorkerID: []byte("worker-2.example:7700"), IssuedAtMs: 1796300000123},
		{Name: maxName, Fence: wire.MakeFence(wire.MaxEpoch, wire.MaxSeq), Mode: wire.CW, Start: 1, End: wire.WholeEnd,
			Shard: 3128, Epoch: wire.MaxEpoch, WorkerID: bytes.Repeat([]byte("w"), MaxWorkerID), IssuedAtMs: 0},
	}
}

func TestRoundTrip(t *testing.T) {
	priv, pub := PrivateKey(vCluster), PublicKey(vCluster)
	for _, c := range vClaims() {
		b, err := Sign(priv, c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Verify(pub, b)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(c) {
			t.Errorf("claims %+v, want %+v", got, c)
		}
		p, err := Parse(b)
		if err != nil || !bytes.Equal(p.Marshal(), b) {
			t.Errorf("Parse/Marshal: %v", err)
		}
		p.raw = nil // Marshal from the claims alone
		if !bytes.Equal(p.Marshal(), b) {
			t.Error("Marshal from claims differs")
		}
	}
}

// TestEveryClaimSigned: changing any claim field (re-encoded, same
// signature) or any single byte of a proof makes Verify refuse it.
func TestEveryClaimSigned(t *testing.T) {
	priv, pub := PrivateKey(vCluster), PublicKey(vCluster)
	c := vClaims()[1]
	b, err := Sign(priv, c)
	if err != nil {
		t.Fatal(err)
	}
	tamper := map[string]func(*Claims){
		"name":      func(c *Claims) { c.Name = []byte("inode:43") },
		"fence":     func(c *Claims) { c.Fence++ },
		"fence-big": func(c *Claims) { c.Fence = 1<<63 | 1 },
		"mode":      func(c *Claims) { c.Mode = wire.EX },
		"start":     func(c *Claims) { c.Start = 0 },
		"end":       func(c *Claims) { c.End = wire.WholeEnd },
		"shard":     func(c *Claims) { c.Shard++ },
		"epoch":     func(c *Claims) { c.Epoch++ },
		"worker":    func(c *Claims) { c.WorkerID = []byte("worker-3.example:7700") },
		"issued-at": func(c *Claims) { c.IssuedAtMs++ },
	}
	for name, f := range tamper {
		p, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		cc := c
		f(&cc)
		p.Claims, p.raw = cc, nil
		forged := p.Marshal()
		if _, err := Verify(pub, forged); !errors.Is(err, ErrSignature) {
			t.Errorf("%s tampered: Verify = %v, want ErrSignature", name, err)
		}
	}
	for i := range b {
		x := bytes.Clone(b)
		x[i] ^= 0x01
		if _, err := Verify(pub, x); err == nil {
			t.Fatalf("byte %d flipped: verified", i)
		}
	}
}

func TestWrongKeyRefused(t *testing.T) {
	b, err := Sign(PrivateKey(vCluster), vClaims()[0])
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(vCluster)
	other[0] ^= 1
	if _, err := Verify(PublicKey(other), b); !errors.Is(err, ErrSignature) {
		t.Errorf("other cluster's key: %v, want ErrSignature", err)
	}
	if _, err := Verify(nil, b); !errors.Is(err, ErrSignature) {
		t.Errorf("nil key: %v, want ErrSignature", err)
	}
}

func TestMalformed(t *testing.T) {
	good, err := Sign(PrivateKey(vCluster), vClaims()[0])
	if err != nil {
		t.Fatal(err)
	}
	pub := PublicKey(vCluster)
	cases := map[string][]byte{
		"empty":     nil,
		"sig only":  good[:SigLen],
		"truncated": good[:len(good)-1],
		"trailing":  append(bytes.Clone(good), 0),
		"too long":  make([]byte, MaxLen+1),
		"zero name": func() []byte { x := bytes.Clone(good); x[SigLen] = 0; return x }(),
		"long name": func() []byte { x := bytes.Clone(good); x[SigLen] = 200; return x }(),
	}
	for name, b := range cases {
		if _, err := Verify(pub, b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	for i := range len(good) + 1 {
		Verify(pub, good[:i]) // never panics
	}
}

func TestSignRefusesBadClaims(t *testing.T) {
	priv := PrivateKey(vCluster)
	base := vClaims()[0]
	bad := map[string]func(*Claims){
		"no name":     func(c *Claims) { c.Name = nil },
		"fence zero":  func(c *Claims) { c.Fence = 0 },
		"fence 2^63":  func(c *Claims) { c.Fence = 1 << 63 },
		"bad mode":    func(c *Claims) { c.Mode = 6 },
		"empty range": func(c *Claims) { c.Start, c.End = 5, 5 },
		"epoch zero":  func(c *Claims) { c.Epoch = 0 },
		"no worker":   func(c *Claims) { c.WorkerID = nil },
	}
	for name, f := range bad {
		c := base
		f(&c)
		if _, err := Sign(priv, c); !errors.Is(err, ErrClaims) {
			t.Errorf("%s: %v, want ErrClaims", name, err)
		}
	}
	if _, err := Sign(priv[:10], base); !errors.Is(err, ErrClaims) {
		t.Errorf("short key: %v", err)
	}
}

const vectorsPath = "testdata/vectors.txt"

func renderVectors(t *testing.T) string {
	var sb strings.Builder
	sb.WriteString(`# tokend fence proof vectors (fenceproof package doc; docs/SECURITY.md §4).
# Generated by "go test ./fenceproof -run TestVectors -update"; do not edit by hand.
# "name value" lines; values are lowercase hex unless said otherwise.
# cluster-key: the cluster key; seed = HKDF-SHA256(cluster-key, no salt,
# "tokend v2 fence signing", 32); public-key: Ed25519 public key of that seed.
# Each "proof" record lists the claims (integers decimal), then "message"
# (what the signature covers: "tokend v2 fence proof" || claims bytes) and
# "proof" (signature || claims bytes). Ed25519 signatures are deterministic.
# "bad" lines are proofs every verifier must refuse.
`)
	priv := PrivateKey(vCluster)
	fmt.Fprintf(&sb, "cluster-key %x\nseed %x\npublic-key %x\n", vCluster, priv.Seed(), priv.Public())
	var first []byte
	for _, c := range vClaims() {
		b, err := Sign(priv, c)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = b
		}
		fmt.Fprintf(&sb, "\nname %x\nfence %d\nmode %d\nstart %d\nend %d\nshard %d\nepoch %d\nworker-id %x\nissued-at-ms %d\nmessage %x\nproof %x\n",
			c.Name, c.Fence, c.Mode, c.Start, c.End, c.Shard, c.Epoch, c.WorkerID, c.IssuedAtMs, Message(b[SigLen:]), b)
	}
	sb.WriteString("\n")
	flip := func(i int) []byte { x := bytes.Clone(first); x[i] ^= 1; return x }
	fence := SigLen + 1 + len(vClaims()[0].Name) + 7 // last byte of the fence
	fmt.Fprintf(&sb, "bad %x # signature changed\n", flip(0))
	fmt.Fprintf(&sb, "bad %x # fence changed\n", flip(fence))
	fmt.Fprintf(&sb, "bad %x # issued-at changed\n", flip(len(first)-1))
	fmt.Fprintf(&sb, "bad %x # truncated\n", first[:len(first)-1])
	return sb.String()
}

// TestVectors checks testdata/vectors.txt against this code (-update
// rewrites it) and verifies every proof in it with the file's public key.
func TestVectors(t *testing.T) {
	got := renderVectors(t)
	if *update {
		if err := os.WriteFile(vectorsPath, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Fatalf("%s drifted from the code (run go test ./fenceproof -run TestVectors -update and review the diff)", vectorsPath)
	}
	var pub ed25519.PublicKey
	var proofs, bads int
	sc := bufio.NewScanner(bytes.NewReader(want))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), " # ")
		k, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		b, _ := hex.DecodeString(v)
		switch k {
		case "cluster-key":
			if !bytes.Equal(b, vCluster) {
				t.Fatal("cluster-key")
			}
		case "public-key":
			pub = b
			if !bytes.Equal(pub, PublicKey(vCluster)) {
				t.Fatal("public-key is not derived from cluster-key")
			}
		case "proof":
			if _, err := Verify(pub, b); err != nil {
				t.Errorf("proof %x: %v", b[:8], err)
			}
			proofs++
		case "bad":
			if _, err := Verify(pub, b); err == nil {
				t.Errorf("bad proof %x verified", b[:8])
			}
			bads++
		}
	}
	if proofs != len(vClaims()) || bads != 4 {
		t.Errorf("%d proofs and %d bad lines read", proofs, bads)
	}
}

func TestPublicKeyText(t *testing.T) {
	pub := PublicKey(vCluster)
	s := FormatPublicKey(pub)
	if s != "5e87b2830fd92470c490b489a6784d7a273a56cfdecfebc443382993a102c28f" { // testdata/vectors.txt
		t.Fatalf("FormatPublicKey = %s", s)
	}
	got, err := ParsePublicKey(" " + s + "\n")
	if err != nil || !bytes.Equal(got, pub) {
		t.Fatalf("ParsePublicKey: %x, %v", got, err)
	}
	for _, bad := range []string{"", s[:62], s + "00", "zz" + s[2:]} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
}
