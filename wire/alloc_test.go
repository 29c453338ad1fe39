package wire

import "testing"

var (
	benchAcquire = Acquire{Mode: EX, WaitMs: 1000, Start: WholeStart, End: WholeEnd, Name: []byte("file/7/page/3")}
	benchGrant   = Grant{Fence: MakeFence(3, 1001), Mode: EX, ValidityMs: 4800, Start: WholeStart, End: WholeEnd,
		ValueFlags: ValueValid, Value: []byte("value block")}
	benchRelease = Release{Fence: MakeFence(3, 1001), Name: []byte("file/7/page/3"), HasValue: true, Value: []byte("v")}
)

// TestZeroAllocs: the hot path, encoding into a reused buffer and decoding
// ACQUIRE, GRANT and RELEASE, does not allocate.
func TestZeroAllocs(t *testing.T) {
	req := vhdr(10, 9, benchAcquire.Name)
	req.Type = TypeAcquire
	reply := req.Reply()
	buf := make([]byte, 0, MaxDatagram)
	acq, _ := benchAcquire.Append(nil, req)
	grant, _ := benchGrant.Append(nil, reply)
	rel, _ := benchRelease.Append(nil, req)
	bundle, err := Bundle{Datagrams: [][]byte{acq, rel}}.Append(nil, Header{Type: TypeBundle, Session: req.Session, Request: req.Request})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"encode ACQUIRE", func() { buf, _ = benchAcquire.Append(buf[:0], req) }},
		{"encode GRANT", func() { buf, _ = benchGrant.Append(buf[:0], reply) }},
		{"encode RELEASE", func() { buf, _ = benchRelease.Append(buf[:0], req) }},
		{"decode ACQUIRE", func() {
			h, err := ParseHeader(acq)
			var m Acquire
			if err != nil || m.Decode(h, acq) != nil {
				t.Fatal("decode failed")
			}
		}},
		{"decode GRANT", func() {
			h, err := ParseHeader(grant)
			var m Grant
			if err != nil || m.Decode(h, grant) != nil {
				t.Fatal("decode failed")
			}
		}},
		{"decode RELEASE", func() {
			h, err := ParseHeader(rel)
			var m Release
			if err != nil || m.Decode(h, rel) != nil {
				t.Fatal("decode failed")
			}
		}},
		{"build BUNDLE", func() {
			bh := Header{Type: TypeBundle, Session: req.Session, Request: req.Request}
			buf = AppendHeader(buf[:0], bh)
			for _, d := range [][]byte{acq, rel} {
				if BundleFits(len(buf), len(d)) {
					buf = AppendBundled(buf, d)
				}
			}
			if Seal(buf) != nil {
				t.Fatal("seal failed")
			}
		}},
		{"split BUNDLE", func() {
			h, err := ParseHeader(bundle)
			if err != nil || CheckBundle(h, bundle) != nil {
				t.Fatal("bundle rejected")
			}
			n := 0
			for e := bundle[HeaderLen:]; len(e) > 0; n++ {
				var d []byte
				d, e = NextBundled(e)
				if _, err := ParseHeader(d); err != nil {
					t.Fatal(err)
				}
			}
			if n != 2 {
				t.Fatal(n)
			}
		}},
		{"reject garbage", func() {
			if _, err := ParseHeader(grant[:HeaderLen+3]); err == nil {
				t.Fatal("accepted")
			}
		}},
		{"reject bad body", func() {
			b := append(buf[:0], acq...)
			b[HeaderLen] = 9 // mode
			_ = Seal(b)
			h, _ := ParseHeader(b)
			var m Acquire
			if m.Decode(h, b) == nil {
				t.Fatal("accepted")
			}
		}},
	} {
		if n := testing.AllocsPerRun(1000, tc.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", tc.name, n)
		}
	}
}

// BenchmarkAcquire encodes an ACQUIRE into a reused buffer and decodes it.
func BenchmarkAcquire(b *testing.B) {
	h := vhdr(10, 9, benchAcquire.Name)
	buf := make([]byte, 0, MaxDatagram)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = benchAcquire.Append(buf[:0], h)
		h2, err := ParseHeader(buf)
		var m Acquire
		if err != nil || m.Decode(h2, buf) != nil {
			b.Fatal("decode failed")
		}
	}
}

// BenchmarkGrant encodes a GRANT reply into a reused buffer and decodes it.
func BenchmarkGrant(b *testing.B) {
	h := vreply(TypeAcquire, StatusOK, 10, benchAcquire.Name)
	buf := make([]byte, 0, MaxDatagram)
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = benchGrant.Append(buf[:0], h)
		h2, err := ParseHeader(buf)
		var m Grant
		if err != nil || m.Decode(h2, buf) != nil {
			b.Fatal("decode failed")
		}
	}
}

// BenchmarkParseHeader is the cost of rejecting or accepting a datagram
// (dominated by the CRC32C).
func BenchmarkParseHeader(b *testing.B) {
	d, _ := benchGrant.Append(nil, vreply(TypeAcquire, StatusOK, 10, benchAcquire.Name))
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		if _, err := ParseHeader(d); err != nil {
			b.Fatal(err)
		}
	}
}
