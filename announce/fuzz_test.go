package announce

import (
	"bytes"
	"encoding/hex"
	"math/rand/v2"
	"testing"
	"time"
)

// FuzzDecode checks that Decode never panics and that whatever it accepts
// is the canonical encoding of what it returns. The seed corpus is in
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	good, _ := hex.DecodeString(golden)
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Decode(b)
		if err != nil {
			return
		}
		again, err := a.Append(nil)
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
		again, err := a.Append(nil)
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
	bye := Announcement{Cluster: "c", Addr: "[::]:1", Interval: time.Millisecond, Sender: 1, Seq: 2, Bye: true}
	bb, _ := bye.Append(nil)
	rng := rand.New(rand.NewPCG(1, 2))
	n := 200000
	if testing.Short() {
		n = 20000
	}
	accepted := 0
	for i := range n {
		b := bytes.Clone([][]byte{good, bb}[i%2])
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
		a, err := Decode(b)
		if err != nil {
			continue
		}
		accepted++
		if again, err := a.Append(nil); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x as %+v; re-encoded %x, %v", b, a, again, err)
		}
	}
	t.Logf("%d of %d mutations accepted", accepted, n)
}
