package wire

import (
	"errors"
	"fmt"
	"testing"
)

func TestHashKnownValues(t *testing.T) {
	// Published FNV-1a 64 test values.
	for in, want := range map[string]uint64{
		"":       0xcbf29ce484222325,
		"a":      0xaf63dc4c8601ec8c,
		"foobar": 0x85944171f73967e8,
	} {
		if got := Hash([]byte(in)); got != want {
			t.Errorf("Hash(%q) = %#x, want %#x", in, got, want)
		}
	}
	if Shard([]byte("a"), 4096) != uint32(0xaf63dc4c8601ec8c%4096) || Shard([]byte("a"), 0) != 0 || Shard([]byte("a"), 1) != 0 {
		t.Error("Shard")
	}
}

func TestChecksumCheckValue(t *testing.T) {
	// The CRC-32C check value (CRC catalogue: CRC-32/ISCSI).
	if got := Checksum([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("CRC32C check value %#x", got)
	}
}

func TestFence(t *testing.T) {
	f := MakeFence(MaxEpoch, MaxSeq)
	if f != 1<<64-1 || FenceEpoch(f) != MaxEpoch || FenceSeq(f) != MaxSeq {
		t.Fatalf("%#x", f)
	}
	f = MakeFence(3, 1001)
	if f != 3<<40|1001 || FenceEpoch(f) != 3 || FenceSeq(f) != 1001 || !ValidFence(f) {
		t.Fatalf("%#x", f)
	}
	// Fences of a later epoch are larger than any of an earlier one.
	if MakeFence(4, 1) <= MakeFence(3, MaxSeq) {
		t.Fatal("fences do not grow across epochs")
	}
	if ValidFence(0) || ValidFence(MakeFence(0, 5)) || ValidFence(MakeFence(5, 0)) {
		t.Fatal("ValidFence")
	}
	for _, tc := range [][2]uint64{{MaxEpoch + 1, 1}, {1, MaxSeq + 1}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("MakeFence(%d, %d) did not panic", tc[0], tc[1])
				}
			}()
			MakeFence(uint32(tc[0]), tc[1])
		}()
	}
}

func TestLimits(t *testing.T) {
	if MaxKeepaliveEntries != 141 || 2+8*MaxKeepaliveEntries > MaxBody || 2+8*(MaxKeepaliveEntries+1) <= MaxBody {
		t.Fatalf("MaxKeepaliveEntries %d does not just fit", MaxKeepaliveEntries)
	}
	if !IsWhole(0, 0) || !IsWhole(WholeStart, WholeEnd) || IsWhole(0, 5) || IsWhole(1, WholeEnd) {
		t.Fatal("IsWhole")
	}
}

func TestTypeAndStatusNames(t *testing.T) {
	n := 0
	for i := 0; i < 256; i++ {
		ty := Type(i)
		if !ty.Valid() {
			if ty.String() != fmt.Sprintf("Type(0x%02x)", i) {
				t.Errorf("%q", ty.String())
			}
			continue
		}
		n++
		classes := 0
		for _, b := range []bool{ty.IsRequest(), ty.IsReply(), ty.IsServer()} {
			if b {
				classes++
			}
		}
		if classes != 1 {
			t.Errorf("%v is in %d classes", ty, classes)
		}
		if r := ty.Reply(); r != 0 && (r.Request() != ty || r != ty|0x80) {
			t.Errorf("%v reply %v", ty, r)
		}
	}
	if n != 28 || TypeRevokeAck.Reply() != 0 || TypeGrantAck.Reply() != 0 || TypeAcquireReply.Reply() != 0 || TypeRevoke.Request() != 0 {
		t.Errorf("%d types", n)
	}
	if TypeMapReply.String() != "MAP_REPLY" || TypeAcquireReply.String() != "ACQUIRE_REPLY" {
		t.Error(TypeMapReply.String())
	}
	n = 0
	for i := 0; i < 256; i++ {
		s := Status(i)
		if s.Valid() {
			n++
			if s.String() == "" || s.Text() == "" {
				t.Errorf("status %d unnamed", i)
			}
		} else if s.String() != fmt.Sprintf("Status(%d)", i) || s.Retryable() {
			t.Errorf("invalid status %d: %q", i, s.String())
		}
	}
	if n != 20 {
		t.Errorf("%d statuses, want 20", n)
	}
	retry := map[Status]bool{StatusNotOwner: true, StatusStaleEpoch: true, StatusGrace: true,
		StatusUnavailable: true, StatusLimit: true, StatusExhausted: true, StatusCookie: true}
	for i := 0; i < 256; i++ {
		if Status(i).Retryable() != retry[Status(i)] {
			t.Errorf("%v retryable = %v", Status(i), Status(i).Retryable())
		}
	}
}

func TestReason(t *testing.T) {
	if Reason(nil) != "" || Reason(errors.New("x")) != "other" || Reason(ErrChecksum) != "checksum" ||
		Reason(fmt.Errorf("ctx: %w", errTrailing)) != "bad_body" {
		t.Fatal("Reason")
	}
	seen := map[string]bool{}
	for _, r := range reasons {
		if seen[r.label] || Reason(r.err) != r.label {
			t.Errorf("label %q", r.label)
		}
		seen[r.label] = true
	}
}

func TestSeal(t *testing.T) {
	if Seal(make([]byte, HeaderLen-1)) != ErrShort || Seal(make([]byte, MaxDatagram+1)) != ErrTooLarge {
		t.Fatal("Seal bounds")
	}
	b := AppendHeader(nil, Header{Type: TypeMapRequest, Request: 1})
	b = append(b, 0, 0, 0, 9)
	if err := Seal(b); err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeader(b)
	var m MapRequest
	if err != nil || m.Decode(h, b) != nil || m.FirstShard != 9 {
		t.Fatalf("%v %+v", err, m)
	}
}

func TestHeaderReply(t *testing.T) {
	h := Header{Type: TypeAcquire, Flags: FlagTry, Session: 5, Request: 9, Ack: 7, Shard: 3, Epoch: 2, MapVersion: 11}
	r := h.Reply()
	want := Header{Type: TypeAcquireReply, Session: 5, Request: 9, Shard: 3, Epoch: 2, MapVersion: 11}
	if r != want {
		t.Fatalf("%+v", r)
	}
	if err := r.Check(); err != nil {
		t.Fatal(err)
	}
}
