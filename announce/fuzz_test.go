package announce

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"testing"
	"time"
)

// reencode encodes a as Decode returned it from b: signed with the
// vector's key if it was signed, with b's signature bytes in place of the
// new signature (the fuzzer cannot sign), so that a canonical b comes back
// byte for byte.
func reencode(a Announcement, b []byte) ([]byte, error) {
	if !a.Signed {
		return a.Append(nil)
	}
	again, err := a.AppendSigned(nil, SigningKey(vectorClusterKey))
	if err == nil && len(again) == len(b) {
		copy(again[len(again)-SignatureLen:], b[len(b)-SignatureLen:])
	}
	return again, err
}

// FuzzDecode checks that Decode and DecodeVerify never panic, that whatever
// Decode accepts is the canonical encoding of what it returns, and that
// DecodeVerify accepts nothing but the signed vector. The seed corpus is in
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	good, _ := hex.DecodeString(golden)
	signed, _ := hex.DecodeString(goldenSigned)
	f.Add(good)
	f.Add(signed)
	pub := PublicKey(vectorClusterKey)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := DecodeVerify(b, pub); err == nil && !bytes.Equal(b, signed) {
			t.Fatalf("verified %x", b)
		}
		a, err := Decode(b)
		if err != nil {
			return
		}
		again, err := reencode(a, b)
		if err != nil {
			t.Fatalf("accepted %x but cannot encode %+v: %v", b, a, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("not canonical:\n  in %x\n out %x", b, again)
		}
	})
}

// FuzzDecodeSealed fixes the length and checksum of the input before
// decoding, so that the fuzzer reaches the field rules behind the checksum.
// It shares FuzzDecode's properties.
func FuzzDecodeSealed(f *testing.F) {
	good, _ := hex.DecodeString(golden)
	f.Add(good)
	f.Add(good[:HeaderLen])
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= HeaderLen && len(b) <= 0xFFFF {
			b = reseal(bytes.Clone(b))
		}
		a, err := Decode(b)
		if err != nil {
			return
		}
		again, err := reencode(a, b)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x as %+v; re-encoded %x, %v", b, a, again, err)
		}
	})
}

// TestDecodeMutations is a deterministic stand-in for the fuzzer (which
// stalls on some machines): it decodes many random mutations of valid
// datagrams, resealed half of the time so that the field rules are reached,
// with FuzzDecode's properties.
func TestDecodeMutations(t *testing.T) {
	good, _ := hex.DecodeString(golden)
	signed, _ := hex.DecodeString(goldenSigned)
	bye := Announcement{Cluster: "c", Addr: "[::]:1", Interval: time.Millisecond, Sender: 1, Seq: 2, SentAt: 3, Bye: true}
	bb, _ := bye.Append(nil)
	pub := PublicKey(vectorClusterKey)
	rng := rand.New(rand.NewPCG(1, 2))
	n := 200000
	if testing.Short() {
		n = 20000
	}
	accepted := 0
	for i := range n {
		b := bytes.Clone([][]byte{good, bb, signed}[i%3])
		for range 1 + rng.IntN(4) {
			switch rng.IntN(4) {
			case 0: // flip a byte
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			case 1: // cut
				b = b[:rng.IntN(len(b)+1)]
			case 2: // insert
				at := rng.IntN(len(b) + 1)
				b = append(b[:at], append([]byte{byte(rng.Uint32())}, b[at:]...)...)
			case 3: // a length byte of a text field
				if len(b) > HeaderLen {
					b[HeaderLen+rng.IntN(len(b)-HeaderLen)] = byte(rng.IntN(8))
				}
			}
			if len(b) == 0 {
				break
			}
		}
		if i%4 < 2 && len(b) >= HeaderLen {
			reseal(b)
		}
		if _, err := DecodeVerify(b, pub); err == nil && !bytes.Equal(b, signed) {
			t.Fatalf("verified %x", b)
		}
		a, err := Decode(b)
		if err != nil {
			continue
		}
		accepted++
		if again, err := reencode(a, b); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x as %+v; re-encoded %x, %v", b, a, again, err)
		}
	}
	t.Logf("%d of %d mutations accepted", accepted, n)
}
