package table

import (
	"math"
	"testing"

	"github.com/tokend/tokend/wire"
)

// TestDecodeWait: TRY and wait 0 fail at once, WaitForever never times
// out, and a wait in ms becomes a deadline in the table's nanoseconds.
func TestDecodeWait(t *testing.T) {
	const now = 1_000
	for _, tc := range []struct {
		m        wire.Acquire
		try      bool
		deadline int64
	}{
		{wire.Acquire{Try: true, WaitMs: 500}, true, now},
		{wire.Acquire{WaitMs: 0}, true, now},
		{wire.Acquire{WaitMs: wire.WaitForever}, false, math.MaxInt64},
		{wire.Acquire{WaitMs: 250}, false, now + 250_000_000},
	} {
		tc.m.Mode, tc.m.Name = wire.EX, []byte("n")
		h := wire.Header{Session: 1, Request: 1, Ack: 1, Shard: wire.Shard([]byte("n"), 16), Epoch: 1}
		pkt, err := tc.m.Append(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		ph, err := wire.ParseHeader(pkt)
		if err != nil {
			t.Fatal(err)
		}
		in, name, err := Decode(ph, pkt, now)
		if err != nil || string(name) != "n" || in.Op != OpAcquire || in.Try != tc.try || in.Deadline != tc.deadline {
			t.Errorf("%+v: op %v try %v deadline %d name %q err %v; want try %v deadline %d",
				tc.m, in.Op, in.Try, in.Deadline, name, err, tc.try, tc.deadline)
		}
	}
}

// TestDecodeGrowAndRange: ACQUIRE's GROW becomes Input.Grow, RELEASE's RANGE
// becomes a Partial release of [Start, End).
func TestDecodeGrowAndRange(t *testing.T) {
	name := []byte("n")
	h := wire.Header{Session: 1, Request: 1, Ack: 1, Shard: wire.Shard(name, 16), Epoch: 1}
	decode := func(m interface {
		Append([]byte, wire.Header) ([]byte, error)
	}) Input {
		pkt, err := m.Append(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		ph, err := wire.ParseHeader(pkt)
		if err != nil {
			t.Fatal(err)
		}
		in, _, err := Decode(ph, pkt, 0)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	if in := decode(wire.Acquire{Grow: true, Mode: wire.PW, WaitMs: 10, Start: 0, End: 4096, Name: name}); !in.Grow || in.Start != 0 || in.End != 4096 {
		t.Errorf("acquire grow: %+v", in)
	}
	if in := decode(wire.Acquire{Mode: wire.PW, WaitMs: 10, Start: 0, End: 4096, Name: name}); in.Grow {
		t.Errorf("acquire without grow: %+v", in)
	}
	f := wire.MakeFence(1, 1)
	if in := decode(wire.Release{Fence: f, Name: name, HasRange: true, Start: 8192, End: wire.WholeEnd}); !in.Partial || in.Start != 8192 || in.End != wire.WholeEnd {
		t.Errorf("release range: %+v", in)
	}
	if in := decode(wire.Release{Fence: f, Name: name}); in.Partial {
		t.Errorf("release without range: %+v", in)
	}
}
