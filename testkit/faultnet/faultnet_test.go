package faultnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/ipv4"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pair(t *testing.T, n *Network) (*Conn, *Conn) {
	t.Helper()
	a, err := n.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.Listen("127.0.0.2:7700")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// drain reads until nothing arrives for quiet.
func drain(c *Conn, quiet time.Duration) []string {
	var got []string
	buf := make([]byte, 64)
	for {
		c.SetReadDeadline(time.Now().Add(quiet))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return got
		}
		got = append(got, string(buf[:n]))
	}
}

func TestDeliverAndAddresses(t *testing.T) {
	n := New(1)
	a, b := pair(t, n)
	if _, err := a.WriteTo([]byte("hi"), b.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	k, from, err := b.ReadFrom(buf)
	if err != nil || string(buf[:k]) != "hi" || from.String() != a.LocalAddr().String() {
		t.Fatalf("got %q from %v, %v", buf[:k], from, err)
	}
	if _, err := n.Listen(b.LocalAddr().String()); !errors.Is(err, ErrAddrInUse) {
		t.Errorf("second Listen on one address: %v", err)
	}
}

func TestDropDuplicateAreSeededAndRoughlyRight(t *testing.T) {
	run := func(seed uint64) (Stats, []string) {
		n := New(seed)
		a, b := pair(t, n)
		n.SetDefault(Rule{Drop: 0.2, Duplicate: 0.05})
		for i := 0; i < 2000; i++ {
			a.WriteTo([]byte(fmt.Sprint(i)), b.LocalAddr())
		}
		return n.Stats(), drain(b, 20*time.Millisecond)
	}
	s1, got1 := run(7)
	s2, got2 := run(7)
	if s1 != s2 || fmt.Sprint(got1) != fmt.Sprint(got2) {
		t.Errorf("same seed, different runs: %+v vs %+v", s1, s2)
	}
	if s1.Dropped < 320 || s1.Dropped > 480 {
		t.Errorf("dropped %d of 2000 at 20%%", s1.Dropped)
	}
	if s1.Duplicated < 40 || s1.Duplicated > 130 {
		t.Errorf("duplicated %d of 2000 at 5%%", s1.Duplicated)
	}
	if uint64(len(got1)) != s1.Delivered {
		t.Errorf("read %d, delivered %d", len(got1), s1.Delivered)
	}
}

func TestDelayReorders(t *testing.T) {
	n := New(3)
	a, b := pair(t, n)
	n.SetLink(a.LocalAddr(), b.LocalAddr(), Rule{MaxDelay: 20 * time.Millisecond})
	for i := 0; i < 50; i++ {
		a.WriteTo([]byte(fmt.Sprintf("%02d", i)), b.LocalAddr())
	}
	got := drain(b, 100*time.Millisecond)
	if len(got) != 50 {
		t.Fatalf("got %d datagrams, want 50", len(got))
	}
	inOrder := true
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inOrder = false
		}
	}
	if inOrder {
		t.Error("50 datagrams with 0-20ms jitter arrived in order")
	}
}

func TestOneWayCutAndHeal(t *testing.T) {
	n := New(4)
	a, b := pair(t, n)
	n.SetLink(a.LocalAddr(), b.LocalAddr(), Rule{Cut: true})
	a.WriteTo([]byte("lost"), b.LocalAddr())
	b.WriteTo([]byte("back"), a.LocalAddr())
	if got := drain(b, 10*time.Millisecond); len(got) != 0 {
		t.Errorf("cut direction delivered %q", got)
	}
	if got := drain(a, 10*time.Millisecond); len(got) != 1 {
		t.Errorf("other direction delivered %q", got)
	}
	n.ClearRules()
	a.WriteTo([]byte("healed"), b.LocalAddr())
	if got := drain(b, 10*time.Millisecond); len(got) != 1 {
		t.Errorf("after heal: %q", got)
	}
}

func TestBatchesDeadlineClose(t *testing.T) {
	n := New(5)
	a, b := pair(t, n)
	out := make([]ipv4.Message, 3)
	for i := range out {
		out[i] = ipv4.Message{Buffers: [][]byte{[]byte(fmt.Sprint(i))}, Addr: b.LocalAddr()}
	}
	if k, err := a.WriteBatch(out, 0); k != 3 || err != nil {
		t.Fatalf("WriteBatch = %d, %v", k, err)
	}
	in := make([]ipv4.Message, 8)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 16)}
	}
	k, err := b.ReadBatch(in, 0)
	if k != 3 || err != nil || string(in[2].Buffers[0][:in[2].N]) != "2" {
		t.Fatalf("ReadBatch = %d, %v", k, err)
	}
	b.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := b.ReadBatch(in, 0); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("ReadBatch past deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	done := make(chan error)
	go func() { _, err := b.ReadBatch(in, 0); done <- err }()
	time.Sleep(5 * time.Millisecond)
	b.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadBatch after Close: %v", err)
	}
}
