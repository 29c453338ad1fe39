package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestRoundTrip: every message encodes, decodes to the same fields, and
// re-encodes to the same bytes; Append appends after existing bytes.
func TestRoundTrip(t *testing.T) {
	for _, v := range validVectors() {
		t.Run(v.name, func(t *testing.T) {
			b, err := encodeVector(v)
			if err != nil {
				t.Fatal(err)
			}
			h, err := ParseHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			if h.Kind() != kindOf(v.m) {
				t.Fatalf("kind %v, want %v", h.Kind(), kindOf(v.m))
			}
			m := newBody(h.Kind())
			if err := m.Decode(h, b); err != nil {
				t.Fatal(err)
			}
			if got, want := bodyFields(m), bodyFields(v.m); got != want {
				t.Fatalf("decoded\n%s\nwant\n%s", got, want)
			}
			again, err := m.Append(nil, h)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatalf("re-encode: %v\n%x\n%x", err, again, b)
			}
			// Append after a prefix, into a buffer with spare capacity.
			prefix := make([]byte, 3, 2048)
			copy(prefix, "xyz")
			out, err := v.m.Append(prefix, v.h)
			if err != nil || string(out[:3]) != "xyz" || !bytes.Equal(out[3:], b) {
				t.Fatalf("append after prefix: %v %x", err, out)
			}
			// Every header field survives (the codec-owned ones aside).
			want := v.h
			if want.Type == 0 {
				want.Type = h.Type
			}
			want.Flags = h.Flags
			if h != want {
				t.Fatalf("header %+v, want %+v", h, want)
			}
		})
	}
}

// TestMalformed: every class of bad input is rejected with its sentinel,
// by the full decode, and ParseHeader's partial header is zero before the
// header rules run.
func TestMalformed(t *testing.T) {
	for _, v := range badVectors() {
		t.Run(v.name, func(t *testing.T) {
			_, _, err := decode(v.b)
			if !errors.Is(err, v.want) {
				t.Fatalf("got %v, want %v", err, v.want)
			}
			if Reason(err) == "other" || !strings.HasPrefix(err.Error(), "wire: ") {
				t.Fatalf("error %q is not a wire sentinel", err)
			}
		})
	}
}

// TestTruncationsAndBitFlips: every prefix of every valid datagram and
// every single-bit flip is rejected (CRC32C detects all 1-bit errors).
func TestTruncationsAndBitFlips(t *testing.T) {
	for _, v := range validVectors() {
		b := mustEncode(v)
		for n := 0; n < len(b); n++ {
			if _, _, err := decode(b[:n]); err == nil {
				t.Fatalf("%s: prefix of %d bytes decoded", v.name, n)
			}
		}
		c := append([]byte(nil), b...)
		for i := 0; i < len(c)*8; i++ {
			c[i/8] ^= 1 << (i % 8)
			_, _, err := decode(c)
			if err == nil {
				t.Fatalf("%s: flip of bit %d decoded", v.name, i)
			}
			c[i/8] ^= 1 << (i % 8)
		}
	}
}

// TestKindMismatch: a decoder or encoder handed the wrong header says so.
func TestKindMismatch(t *testing.T) {
	b := mustEncode(validVectors()[0]) // SESSION_OPEN
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	var g Grant
	if err := g.Decode(h, b); !errors.Is(err, ErrKind) {
		t.Fatalf("Grant.Decode of SESSION_OPEN: %v", err)
	}
	var a Acquire
	if err := a.Decode(Header{}, b); !errors.Is(err, ErrKind) {
		t.Fatalf("Decode with zero header: %v", err)
	}
	if err := a.Decode(Header{Type: TypeAcquire, Session: 1, Request: 1, Epoch: 1}, b[:10]); !errors.Is(err, ErrShort) {
		t.Fatalf("Decode of 10 bytes: %v", err)
	}
}

// TestEncodeErrors: encoders refuse what decoders would refuse, and leave
// dst unchanged.
func TestEncodeErrors(t *testing.T) {
	req := vhdr(10, 9, vToken)
	reply := vreply(TypeAcquire, StatusOK, 10, vToken)
	f := MakeFence(3, 9)
	tooManyRuns := MapReply{MapVersion: 1, ShardCount: 100000, Workers: []MapWorker{{Index: 0, Addr: []byte("a:1"), ID: []byte("w")}}}
	for i := 0; i < 90; i++ {
		tooManyRuns.Runs = append(tooManyRuns.Runs, MapRun{First: uint32(i), Count: 1, Worker: 0, Epoch: 1})
	}
	for _, tc := range []struct {
		name string
		h    Header
		m    message
		want error
	}{
		{"acquire bad mode", req, &Acquire{Mode: 6, Name: vToken}, ErrBadMode},
		{"acquire empty name", req, &Acquire{Mode: EX}, ErrNameLength},
		{"acquire long name", req, &Acquire{Mode: EX, Name: make([]byte, 256)}, ErrNameLength},
		{"acquire empty range", req, &Acquire{Mode: EX, Start: 5, End: 5, Name: vToken}, ErrBadRange},
		{"acquire no session", Header{Request: 1, Epoch: 1}, &Acquire{Mode: EX, Name: vToken}, ErrBadHeader},
		{"acquire no epoch", Header{Session: 1, Request: 1}, &Acquire{Mode: EX, Name: vToken}, ErrBadHeader},
		{"acquire status", Header{Session: 1, Request: 1, Epoch: 1, Status: StatusQueued}, &Acquire{Mode: EX, Name: vToken}, ErrBadStatus},
		{"release bad fence", req, &Release{Fence: 5, Name: vToken}, ErrBadBody},
		{"release long value", req, &Release{Fence: f, Name: vToken, HasValue: true, Value: make([]byte, 65)}, ErrValueLength},
		{"convert bad mode", req, &Convert{Fence: f, Mode: 9, Name: vToken}, ErrBadMode},
		{"cancel later id", req, &Cancel{Target: 10}, ErrBadBody},
		{"cancel zero", req, &Cancel{}, ErrBadBody},
		{"grant-ack zero", req, &GrantAck{}, ErrBadBody},
		{"grant-ack later id", req, &GrantAck{Target: 10}, ErrBadBody},
		{"revoke-ack zero", req, &RevokeAck{}, ErrBadBody},
		{"keepalive too many", Header{Session: 1, Request: 1}, &Keepalive{Entries: make([]ShardEpoch, MaxKeepaliveEntries+1)}, ErrTooLarge},
		{"keepalive epoch zero", Header{Session: 1, Request: 1}, &Keepalive{Entries: []ShardEpoch{{1, 0}}}, ErrBadBody},
		{"keepalive reply status", Header{Type: TypeKeepaliveReply, Session: 1, Request: 1}, &KeepaliveReply{Statuses: []Status{StatusGrace}}, ErrBadStatus},
		{"session open long lib", Header{Request: 1}, &SessionOpen{Lib: make([]byte, 256)}, ErrTooLarge},
		{"session open with session", Header{Session: 1, Request: 1}, &SessionOpen{}, ErrBadHeader},
		{"session reply zero shards", Header{Session: 1, Request: 1}, &SessionReply{TTLMs: 1, WorkerTTLMs: 1}, ErrBadBody},
		{"grant as request", req, &Grant{Fence: f, Mode: EX}, ErrUnknownType},
		{"grant in acquire type", Header{Type: TypeAcquire, Session: 1, Request: 1, Epoch: 1}, &Grant{Fence: f, Mode: EX}, ErrKind},
		{"grant with error status", func() Header { h := reply; h.Status = StatusConflict; return h }(), &Grant{Fence: f, Mode: EX}, ErrKind},
		{"grant value flags", reply, &Grant{Fence: f, Mode: EX, ValueFlags: 3}, ErrBadFlags},
		{"grant value without valid", reply, &Grant{Fence: f, Mode: EX, Value: []byte("v")}, ErrBadBody},
		{"queued without status", reply, &Queued{}, ErrKind},
		{"queued for release", func() Header { h := reply; h.Type, h.Status = TypeReleaseReply, StatusQueued; return h }(), &Queued{}, ErrBadStatus},
		{"error with OK", reply, &ErrorBody{}, ErrKind},
		{"error bad utf8", func() Header { h := reply; h.Status = StatusLimit; return h }(), &ErrorBody{Message: []byte{0xff}}, ErrBadBody},
		{"error with NOT_OWNER", func() Header { h := reply; h.Status = StatusNotOwner; return h }(), &ErrorBody{}, ErrKind},
		{"not-owner epoch", func() Header { h := reply; h.Status = StatusNotOwner; return h }(), &NotOwner{Epoch: MaxEpoch + 1}, ErrBadBody},
		{"empty with status", func() Header { h := reply; h.Type, h.Status = TypeReleaseReply, StatusNotHeld; return h }(), &Empty{}, ErrKind},
		{"map reply version", Header{Type: TypeMapReply, Request: 1, MapVersion: 2}, &MapReply{MapVersion: 1, ShardCount: 1}, ErrBadBody},
		{"map reply too large", Header{Type: TypeMapReply, Request: 1, MapVersion: 1}, &tooManyRuns, ErrTooLarge},
		{"map reply no shards", Header{Type: TypeMapReply, Request: 1}, &MapReply{}, ErrBadBody},
		{"revoke ack reply", Header{Type: TypeRevokeAck | 0x80, Session: 1, Request: 1, Epoch: 1}, &Empty{}, ErrUnknownType},
		{"grant ack reply", Header{Type: TypeGrantAck | 0x80, Session: 1, Request: 1, Epoch: 1}, &Empty{}, ErrUnknownType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("prefix")
			out, err := tc.m.Append(dst, tc.h)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if string(out) != "prefix" {
				t.Fatalf("dst changed on error: %q", out)
			}
		})
	}
	// As many runs as fit (79) encode, and Len is exact.
	tooManyRuns.Runs = tooManyRuns.Runs[:(MaxDatagram-(HeaderLen+20+8))/14]
	b, err := tooManyRuns.Append(nil, Header{Type: TypeMapReply, Request: 1, MapVersion: 1})
	if err != nil || len(b) != tooManyRuns.Len() || len(b) > MaxDatagram {
		t.Fatalf("map reply of Len %d: %v, %d bytes", tooManyRuns.Len(), err, len(b))
	}
}

// TestValueIgnoredWithoutFlag: Release/Convert encode Value only with HasValue.
func TestValueIgnoredWithoutFlag(t *testing.T) {
	b, err := Release{Fence: MakeFence(1, 1), Name: vToken, Value: []byte("ignored")}.Append(nil, vhdr(1, 0, vToken))
	if err != nil {
		t.Fatal(err)
	}
	h, m, err := decode(b)
	if err != nil || h.Flags != 0 || m.(*Release).HasValue || len(m.(*Release).Value) != 0 {
		t.Fatalf("%v %+v %+v", err, h, m)
	}
}

// TestDecodeAliasing: byte fields alias the datagram but are capped, so
// appending to one cannot overwrite the rest of the datagram.
func TestDecodeAliasing(t *testing.T) {
	b := mustEncode(vector{"", vhdr(21, 0, vToken), &Release{Fence: MakeFence(3, 1), Name: vToken, HasValue: true, Value: []byte("val")}})
	h, _ := ParseHeader(b)
	var r Release
	if err := r.Decode(h, b); err != nil {
		t.Fatal(err)
	}
	if &r.Name[0] != &b[HeaderLen+9] {
		t.Fatal("name does not alias the datagram")
	}
	if cap(r.Name) != len(r.Name) {
		t.Fatalf("name cap %d > len %d", cap(r.Name), len(r.Name))
	}
	_ = append(r.Name, "XXXX"...)
	if string(r.Value) != "val" {
		t.Fatal("append to name clobbered the value")
	}
}

// TestDecodeReuse: decoding into a reused struct reuses its slices.
func TestDecodeReuse(t *testing.T) {
	b := mustEncode(vector{"", Header{Session: 1, Request: 1}, &Keepalive{Entries: []ShardEpoch{{1, 1}, {2, 2}}}})
	h, _ := ParseHeader(b)
	k := Keepalive{Entries: make([]ShardEpoch, 0, 8)}
	p := &k.Entries[:1][0]
	if err := k.Decode(h, b); err != nil || len(k.Entries) != 2 || &k.Entries[0] != p {
		t.Fatalf("%v %+v", err, k)
	}
}

// typesOf lists, per body kind, the types whose datagrams may carry it.
var typesOf = func() map[Kind][]Type {
	m := map[Kind][]Type{}
	for t := 0; t < 256; t++ {
		for s := 0; s < 256; s++ {
			if k := (Header{Type: Type(t), Status: Status(s)}).Kind(); k != KindInvalid {
				if l := m[k]; len(l) == 0 || l[len(l)-1] != Type(t) {
					m[k] = append(l, Type(t))
				}
			}
		}
	}
	return m
}()

// TestRandomMessages: random messages, valid or not: whatever an encoder
// accepts decodes to the same fields (the encoder is never more lenient
// than the decoder).
func TestRandomMessages(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	u32 := func() uint32 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return uint32(rng.IntN(8))
		case 2:
			return MaxEpoch + uint32(rng.IntN(3)) - 1
		}
		return rng.Uint32()
	}
	u64 := func() uint64 {
		switch rng.IntN(5) {
		case 0:
			return 0
		case 1:
			return uint64(rng.IntN(8))
		case 2:
			return WholeEnd - uint64(rng.IntN(2))
		case 3:
			return MakeFence(uint32(rng.IntN(3)), uint64(rng.IntN(3)))
		}
		return rng.Uint64()
	}
	bs := func(max int) []byte {
		n := rng.IntN(max + 2)
		if rng.IntN(3) == 0 {
			n = rng.IntN(4)
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
			if rng.IntN(2) == 0 {
				b[i] = 'a' + byte(rng.IntN(26))
			}
		}
		return b
	}
	mode := func() Mode { return Mode(rng.IntN(7)) }
	flag := func() bool { return rng.IntN(2) == 0 }
	value := func() (bool, []byte) {
		if flag() {
			return true, bs(MaxValue)
		}
		return false, nil
	}
	accepted := map[Kind]int{}
	for i := 0; i < 200000; i++ {
		k := Kind(1 + rng.IntN(int(numKinds)-1))
		h := Header{Type: Type(rng.IntN(256)), Status: Status(rng.IntN(17)), Session: u64() >> uint(rng.IntN(2)),
			Request: u64(), Ack: u64(), Shard: u32(), Epoch: u32(), MapVersion: u64()}
		if rng.IntN(4) > 0 { // mostly a type that may carry k
			h.Type = typesOf[k][rng.IntN(len(typesOf[k]))]
		}
		if rng.IntN(3) > 0 {
			h.Ack = 0
		}
		if rng.IntN(2) == 0 {
			h.Status = 0
		}
		if k == KindQueued && rng.IntN(2) == 0 {
			h.Status = StatusQueued
		}
		if k == KindNotOwner && rng.IntN(2) == 0 {
			h.Status = StatusNotOwner
		}
		if rng.IntN(2) == 0 {
			h.Epoch = 1 + uint32(rng.IntN(MaxEpoch))
		}
		var m message
		switch k {
		case KindEmpty:
			m = &Empty{}
		case KindSessionOpen:
			so := &SessionOpen{TTLMs: u32(), Lib: bs(MaxText), KeyName: bs(MaxKeyName)}
			copy(so.Nonce[:], bs(NonceLen))
			if flag() {
				so.Cookie = append(make([]byte, 0, CookieLen), bs(CookieLen)...)
			}
			m = so
		case KindSessionReply:
			sr := &SessionReply{TTLMs: u32(), ShardCount: u32(), GraceMs: u32(), WorkerTTLMs: u32()}
			copy(sr.WorkerNonce[:], bs(NonceLen))
			m = sr
		case KindCookie:
			c := &Cookie{}
			copy(c.Cookie[:], bs(CookieLen))
			m = c
		case KindKeepalive:
			e := make([]ShardEpoch, rng.IntN(4))
			for i := range e {
				e[i] = ShardEpoch{u32(), u32()}
			}
			ka := &Keepalive{Renew: flag(), Entries: e}
			if flag() {
				ka.Done = u64() | 1
			}
			m = ka
		case KindKeepaliveReply:
			s := make([]Status, rng.IntN(4))
			for i := range s {
				s[i] = Status(rng.IntN(8))
			}
			m = &KeepaliveReply{u32(), u32(), s}
		case KindAcquire:
			m = &Acquire{Try: flag(), Detect: flag(), Mode: mode(), WaitMs: u32(), Start: u64(), End: u64(), Name: bs(MaxName)}
		case KindRelease:
			r := &Release{Fence: u64(), Name: bs(MaxName)}
			r.HasValue, r.Value = value()
			m = r
		case KindConvert:
			c := &Convert{Try: flag(), Detect: flag(), Fence: u64(), Mode: mode(), WaitMs: u32(), Name: bs(MaxName)}
			c.HasValue, c.Value = value()
			m = c
		case KindCancel:
			m = &Cancel{u64()}
		case KindReclaim:
			rc := &Reclaim{Fence: u64(), Mode: mode(), Start: u64(), End: u64(), Name: bs(MaxName)}
			rc.HasValue, rc.Value = value()
			m = rc
		case KindRevokeAck:
			m = &RevokeAck{u64()}
		case KindGrantAck:
			m = &GrantAck{u64()}
		case KindMapRequest:
			m = &MapRequest{u32()}
		case KindMapReply:
			mr := &MapReply{MapVersion: h.MapVersion, ShardCount: u32(), GraceMs: u32()}
			for i := 0; i < rng.IntN(3); i++ {
				mr.Workers = append(mr.Workers, MapWorker{uint16(rng.IntN(4)), bs(8), bs(4)})
			}
			first := u32()
			for i := 0; i < rng.IntN(4); i++ {
				c := u32()
				mr.Runs = append(mr.Runs, MapRun{first, c, uint16(rng.IntN(4)), u32()})
				first += c
			}
			m = mr
		case KindRevoke:
			m = &Revoke{u64(), mode(), u64(), u64(), bs(MaxName)}
		case KindGrant:
			m = &Grant{u64(), mode(), u32(), u64(), u64(), uint8(rng.IntN(4)), bs(MaxValue)}
		case KindQueued:
			m = &Queued{u32()}
		case KindError:
			m = &ErrorBody{bs(MaxText)}
		case KindNotOwner:
			m = &NotOwner{bs(MaxText), bs(20), u32()}
		case KindFenceProof:
			m = &FenceProof{u64(), u64(), u64(), bs(MaxName)}
		case KindProof:
			m = &Proof{bs(MaxProof)}
		case KindAcquireBatch:
			ab := &AcquireBatch{}
			for i := 0; i < rng.IntN(MaxBatch+1); i++ {
				ab.Entries = append(ab.Entries, BatchEntry{mode(), u64(), u64(), bs(8)})
			}
			m = ab
		case KindGrantBatch:
			gb := &GrantBatch{ValidityMs: u32()}
			for i := 0; i < rng.IntN(MaxBatch+1); i++ {
				gb.Grants = append(gb.Grants, BatchGrant{u64(), mode(), u64(), u64(), uint8(rng.IntN(4)), bs(MaxValue)})
			}
			m = gb
		case KindBatchConflict:
			m = &BatchConflict{uint8(rng.IntN(MaxBatch + 1)), bs(MaxText)}
		case KindBundle:
			bu := &Bundle{}
			for i := 0; i < rng.IntN(4); i++ {
				d := AppendHeader(nil, Header{Type: Type(rng.IntN(256)), Session: h.Session, Request: 1})
				if flag() {
					d[15] ^= 1 // another session
				}
				bu.Datagrams = append(bu.Datagrams, append(d, bs(40)...))
			}
			m = bu
		}
		b, err := m.Append(nil, h)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("encoder error %v is not a sentinel", err)
			}
			continue
		}
		accepted[kindOf(m)]++
		h2, m2, err := decode(b)
		if err != nil {
			t.Fatalf("encoded %T %+v with %+v but decode failed: %v", m, m, h, err)
		}
		if bodyFields(m2) != bodyFields(m) || h2.Session != h.Session || h2.Request != h.Request {
			t.Fatalf("round trip changed %T:\n%s\n%s", m, bodyFields(m), bodyFields(m2))
		}
	}
	t.Logf("accepted per kind: %v", accepted)
	for k := KindEmpty; k < numKinds; k++ {
		if accepted[k] == 0 {
			t.Errorf("no random %v was ever accepted", k)
		}
	}
}
