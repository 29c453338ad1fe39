package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// echo is a fake worker: it answers every datagram with "echo:" + datagram,
// and remembers the sender addresses it saw.
type echo struct {
	c    *net.UDPConn
	seen chan netip.AddrPort
}

func newEcho(t *testing.T) *echo {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{c: c, seen: make(chan netip.AddrPort, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case e.seen <- from:
			default:
			}
			c.WriteToUDPAddrPort(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return e
}

func (e *echo) addr() string { return e.c.LocalAddr().String() }

func newProxy(t *testing.T, cfg Config) *Proxy {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func client(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func frontend(t *testing.T, p *Proxy, upstream string) *net.UDPAddr {
	t.Helper()
	f, err := p.Frontend(upstream)
	if err != nil {
		t.Fatal(err)
	}
	return net.UDPAddrFromAddrPort(netip.MustParseAddrPort(f))
}

// roundTrips sends n numbered datagrams and counts the echoes that come
// back within wait.
func roundTrips(t *testing.T, c *net.UDPConn, to *net.UDPAddr, n int, wait time.Duration) (got int, from map[string]int) {
	t.Helper()
	from = map[string]int{}
	buf := make([]byte, 2048)
	// read counts echoes until none has come for quiet.
	read := func(quiet time.Duration) {
		for {
			c.SetReadDeadline(time.Now().Add(quiet))
			k, a, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if bytes.HasPrefix(buf[:k], []byte("echo:")) {
				got++
				from[a.String()]++
			}
		}
	}
	// Send in windows of 25 so that no socket buffer on the way overflows
	// on a loaded machine: only the proxy's rules may lose a datagram.
	for i := range n {
		if _, err := c.WriteToUDP([]byte(fmt.Sprint(i)), to); err != nil {
			t.Fatal(err)
		}
		if i%25 == 24 {
			read(20 * time.Millisecond)
		}
	}
	read(wait)
	return got, from
}

func TestForwardStableClientAddress(t *testing.T) {
	w1, w2 := newEcho(t), newEcho(t)
	p := newProxy(t, Config{Upstreams: []string{w1.addr(), w2.addr()}})
	c := client(t)
	f1, f2 := frontend(t, p, w1.addr()), frontend(t, p, w2.addr())
	got, from := roundTrips(t, c, f1, 5, 200*time.Millisecond)
	if got != 5 || from[f1.String()] != 5 {
		t.Fatalf("via %v: %d echoes from %v", f1, got, from)
	}
	roundTrips(t, c, f2, 1, 200*time.Millisecond)
	a1, a2 := <-w1.seen, <-w2.seen
	if a1 != a2 {
		t.Fatalf("workers see the client at %v and %v; want one stable address", a1, a2)
	}
	if p.Clients()[c.LocalAddr().String()] != a1.String() {
		t.Fatalf("Clients() = %v, workers saw %v", p.Clients(), a1)
	}
	// A worker sending to the client's upstream address (a REVOKE to the
	// session address) reaches the client from that worker's frontend.
	if _, err := w2.c.WriteToUDPAddrPort([]byte("echo:revoke"), a1); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, a, err := c.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "echo:revoke" || a.String() != f2.String() {
		t.Fatalf("unsolicited datagram: %q from %v (%v), want from %v", buf[:n], a, err, f2)
	}
}

func TestDropDuplicateCut(t *testing.T) {
	w := newEcho(t)
	p := newProxy(t, Config{Upstreams: []string{w.addr()}, Seed: 3})
	c := client(t)
	f := frontend(t, p, w.addr())
	// Drop half one way: about half come back.
	p.SetRule("", "", Up, Rule{Drop: 0.5})
	got, _ := roundTrips(t, c, f, 400, 300*time.Millisecond)
	if got < 120 || got > 280 {
		t.Fatalf("50%% drop: %d of 400 came back", got)
	}
	// Duplicate everything downwards, for this client only.
	p.Clear()
	p.SetRule(c.LocalAddr().String(), w.addr(), Down, Rule{Duplicate: 1})
	if got, _ := roundTrips(t, c, f, 50, 300*time.Millisecond); got != 100 {
		t.Fatalf("duplicate all: %d of 100", got)
	}
	// One-way cut downwards: the worker still hears the client.
	p.Clear()
	p.SetRule("", w.addr(), Down, Rule{Cut: true})
	for len(w.seen) > 0 {
		<-w.seen
	}
	if got, _ := roundTrips(t, c, f, 10, 200*time.Millisecond); got != 0 {
		t.Fatalf("cut down: %d came back", got)
	}
	if len(w.seen) != 10 {
		t.Fatalf("cut down: worker heard %d of 10", len(w.seen))
	}
	p.Clear()
	if got, _ := roundTrips(t, c, f, 10, 200*time.Millisecond); got != 10 {
		t.Fatalf("healed: %d of 10", got)
	}
	st := p.Stats()
	if st.Dropped == 0 || st.Duplicated == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestDelayReorders(t *testing.T) {
	w := newEcho(t)
	p := newProxy(t, Config{Upstreams: []string{w.addr()}, Seed: 5})
	c := client(t)
	f := frontend(t, p, w.addr())
	p.SetRule("", "", Up, Rule{MinDelay: 20 * time.Millisecond, MaxDelay: 60 * time.Millisecond})
	start := time.Now()
	for i := range 30 {
		c.WriteToUDP([]byte(fmt.Sprint(i)), f)
	}
	buf := make([]byte, 100)
	var order []string
	for range 30 {
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, string(buf[5:n]))
	}
	if time.Since(start) < 20*time.Millisecond {
		t.Fatal("not delayed")
	}
	inOrder := true
	for i := range order {
		if order[i] != fmt.Sprint(i) {
			inOrder = false
		}
	}
	if inOrder {
		t.Fatalf("30 datagrams with 20-60 ms jitter arrived in order: %v", order)
	}
}

func TestFlap(t *testing.T) {
	w := newEcho(t)
	p := newProxy(t, Config{Upstreams: []string{w.addr()}})
	c := client(t)
	f := frontend(t, p, w.addr())
	p.SetRule("", "", Both, Rule{FlapUp: 100 * time.Millisecond, FlapDown: 100 * time.Millisecond})
	ok, lost := 0, 0
	buf := make([]byte, 100)
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
		c.WriteToUDP([]byte("x"), f)
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, _, err := c.ReadFromUDP(buf); err == nil {
			ok++
			time.Sleep(5 * time.Millisecond)
		} else {
			lost++
		}
	}
	if ok == 0 || lost == 0 {
		t.Fatalf("flapping link: %d through, %d lost; want both", ok, lost)
	}
}

// TestRewrite: worker addresses in a MAP reply and a NOT_OWNER hint
// become frontends, and the datagram still decodes.
func TestRewrite(t *testing.T) {
	// A fake worker that answers with a MAP reply naming itself and another
	// address, or a NOT_OWNER hint.
	other := "127.0.0.1:1"
	wc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	self := wc.LocalAddr().String()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := wc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			h := wire.Header{Type: wire.TypeMapReply, Request: 1, MapVersion: 7}
			var out []byte
			if string(buf[:n]) == "map" {
				out, _ = wire.MapReply{MapVersion: 7, ShardCount: 4, Workers: []wire.MapWorker{
					{Index: 0, Addr: []byte(self), ID: []byte("w1")}, {Index: 1, Addr: []byte(other), ID: []byte("w2")}},
					Runs: []wire.MapRun{{First: 0, Count: 2, Worker: 0, Epoch: 1}, {First: 2, Count: 2, Worker: 1, Epoch: 1}}}.Append(nil, h)
			} else {
				h = wire.Header{Type: wire.TypeAcquire | 0x80, Status: wire.StatusNotOwner, Session: 5, Request: 2, Shard: 1, Epoch: 1}
				out, _ = wire.NotOwner{Addr: []byte(other), Epoch: 2}.Append(nil, h)
			}
			wc.WriteToUDPAddrPort(out, from)
		}
	}()
	p := newProxy(t, Config{Upstreams: []string{self}})
	c := client(t)
	f := frontend(t, p, self)
	read := func(req string) []byte {
		c.WriteToUDP([]byte(req), f)
		buf := make([]byte, 2048)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	b := read("map")
	h, err := wire.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	var m wire.MapReply
	if err := m.Decode(h, b); err != nil {
		t.Fatal(err)
	}
	fo, _ := p.Frontend(other)
	if string(m.Workers[0].Addr) != f.String() || string(m.Workers[1].Addr) != fo {
		t.Fatalf("rewritten map workers %q %q, want %v %v", m.Workers[0].Addr, m.Workers[1].Addr, f, fo)
	}
	b = read("acquire")
	h, err = wire.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	var no wire.NotOwner
	if err := no.Decode(h, b); err != nil || string(no.Addr) != fo || no.Epoch != 2 {
		t.Fatalf("hint %q epoch %d (%v), want %v", no.Addr, no.Epoch, err, fo)
	}
	if p.Stats().Rewritten != 2 {
		t.Fatalf("stats %+v", p.Stats())
	}
}

func TestTCPStall(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	tp, err := NewTCP("127.0.0.1:0", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	c, err := net.Dial("tcp", tp.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 10)
	echo := func(within time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(within))
		_, err := io.ReadFull(c, buf[:2])
		return err == nil
	}
	c.Write([]byte("hi"))
	if !echo(time.Second) {
		t.Fatal("no echo through the relay")
	}
	tp.SetCut(Down)
	c.Write([]byte("hi"))
	if echo(200 * time.Millisecond) {
		t.Fatal("echo through a stalled direction")
	}
	tp.SetCut(0)
	if !echo(time.Second) {
		t.Fatal("held bytes not delivered after healing")
	}
	tp.SetCut(Up)
	tp.Reset()
	c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Fatal("connection survived Reset")
	}
}
