// Package faultnet is an in-memory datagram network for tests that injects
// the faults tokend must survive: per-link drop, duplication, delay (which
// reorders), one-way cuts and blackholes, all drawn from one seeded random
// source so that a failing run can be repeated from its seed.
//
// A Conn behaves like a UDP socket: ReadFrom/WriteTo as a net.PacketConn, and
// ReadBatch/WriteBatch with the same signature as golang.org/x/net/ipv4's
// PacketConn, so the worker's batched receive loop runs unchanged over it.
// Like a real socket, a full receive queue drops what arrives.
package faultnet

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// Errors returned by this package.
var (
	ErrAddrInUse = errors.New("faultnet: address already in use")
	ErrTooLarge  = errors.New("faultnet: datagram larger than 65507 bytes")
)

// Rule is the fault model of one direction of a link.
type Rule struct {
	Drop      float64       // probability a datagram is lost
	Duplicate float64       // probability a datagram is delivered twice
	MinDelay  time.Duration // each copy is delayed uniformly in [MinDelay, MaxDelay]:
	MaxDelay  time.Duration // a spread larger than the sending interval reorders
	Cut       bool          // drop everything (a blackhole, or one half of a partition)
}

// Stats counts what the network did.
type Stats struct {
	Sent, Delivered, Dropped, Duplicated, Overflowed uint64
}

type link struct{ from, to netip.AddrPort }

// Network connects the Conns made by its Listen.
type Network struct {
	mu       sync.Mutex // guards the fields below
	rng      *rand.Rand
	conns    map[netip.AddrPort]*Conn
	def      Rule
	links    map[link]Rule
	hosts    map[[2]netip.Addr]Rule // host-to-host rules, below link rules
	nextPort uint16
	stats    Stats
}

// New returns a network whose faults are drawn from seed.
func New(seed uint64) *Network {
	return &Network{
		rng:      rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		conns:    map[netip.AddrPort]*Conn{},
		links:    map[link]Rule{},
		hosts:    map[[2]netip.Addr]Rule{},
		nextPort: 40000,
	}
}

// SetDefault sets the rule for every link without a rule of its own.
func (n *Network) SetDefault(r Rule) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.def = r
}

// SetLink sets the rule for datagrams from one address to another (one way).
func (n *Network) SetLink(from, to net.Addr, r Rule) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.links[link{addrPort(from), addrPort(to)}] = r
}

// SetHosts sets the rule for datagrams from any port of host a to any port
// of host b (one way). Link rules take precedence.
func (n *Network) SetHosts(a, b netip.Addr, r Rule) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hosts[[2]netip.Addr{a, b}] = r
}

// ClearRules removes every link and host rule and the default rule: a healed network.
func (n *Network) ClearRules() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.def = Rule{}
	clear(n.links)
	clear(n.hosts)
}

// Stats returns the counts so far.
func (n *Network) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Listen opens a Conn on addr ("127.0.0.1:7700"; port 0 picks one).
func (n *Network) Listen(addr string) (*Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if ap.Port() == 0 {
		for {
			n.nextPort++
			if n.nextPort == 0 {
				n.nextPort = 40000
			}
			cand := netip.AddrPortFrom(ap.Addr(), n.nextPort)
			if _, taken := n.conns[cand]; !taken {
				ap = cand
				break
			}
		}
	}
	if _, taken := n.conns[ap]; taken {
		return nil, fmt.Errorf("%w: %s", ErrAddrInUse, ap)
	}
	c := &Conn{
		net:    n,
		addr:   net.UDPAddrFromAddrPort(ap),
		ap:     ap,
		in:     make(chan packet, queueLen),
		closed: make(chan struct{}),
	}
	n.conns[ap] = c
	return c, nil
}

// queueLen is a Conn's receive queue, in datagrams (a socket buffer).
const queueLen = 4096

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case nil:
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

func (n *Network) ruleLocked(from, to netip.AddrPort) Rule {
	if r, ok := n.links[link{from, to}]; ok {
		return r
	}
	if r, ok := n.hosts[[2]netip.Addr{from.Addr(), to.Addr()}]; ok {
		return r
	}
	return n.def
}

// send applies the rule of the link and schedules the copies.
func (n *Network) send(from netip.AddrPort, to netip.AddrPort, b []byte) {
	n.mu.Lock()
	n.stats.Sent++
	r := n.ruleLocked(from, to)
	dst := n.conns[to]
	copies := 1
	if r.Cut || dst == nil || n.rng.Float64() < r.Drop {
		copies = 0
	} else if r.Duplicate > 0 && n.rng.Float64() < r.Duplicate {
		copies = 2
		n.stats.Duplicated++
	}
	if copies == 0 {
		n.stats.Dropped++
	}
	delays := [2]time.Duration{}
	for i := 0; i < copies; i++ {
		delays[i] = r.MinDelay
		if spread := r.MaxDelay - r.MinDelay; spread > 0 {
			delays[i] += time.Duration(n.rng.Int64N(int64(spread) + 1))
		}
	}
	n.mu.Unlock()
	for i := 0; i < copies; i++ {
		p := packet{from: from, data: append([]byte(nil), b...)}
		if delays[i] <= 0 {
			n.deliver(dst, p)
			continue
		}
		time.AfterFunc(delays[i], func() { n.deliver(dst, p) })
	}
}

func (n *Network) deliver(dst *Conn, p packet) {
	select {
	case <-dst.closed:
		return
	default:
	}
	select {
	case dst.in <- p:
		n.mu.Lock()
		n.stats.Delivered++
		n.mu.Unlock()
	default:
		n.mu.Lock()
		n.stats.Overflowed++
		n.mu.Unlock()
	}
}

type packet struct {
	from netip.AddrPort
	data []byte
}

// Conn is one endpoint on a Network.
type Conn struct {
	net  *Network
	addr *net.UDPAddr
	ap   netip.AddrPort
	in   chan packet

	closeOnce sync.Once
	closed    chan struct{}

	mu           sync.Mutex // guards the deadline
	readDeadline time.Time
}

var _ net.PacketConn = (*Conn)(nil)

// LocalAddr returns the Conn's address (a *net.UDPAddr).
func (c *Conn) LocalAddr() net.Addr { return c.addr }

// Close closes the Conn; blocked reads return net.ErrClosed.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.net.mu.Lock()
		delete(c.net.conns, c.ap)
		c.net.mu.Unlock()
	})
	return nil
}

// SetDeadline sets the read deadline (writes never block).
func (c *Conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline makes reads after t fail with os.ErrDeadlineExceeded.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDeadline = t
	return nil
}

// SetWriteDeadline is accepted and ignored: writes never block.
func (c *Conn) SetWriteDeadline(time.Time) error { return nil }

func (c *Conn) recv(block bool) (packet, error) {
	select {
	case <-c.closed:
		return packet{}, net.ErrClosed
	default:
	}
	if !block {
		select {
		case p := <-c.in:
			return p, nil
		default:
			return packet{}, errWouldBlock
		}
	}
	c.mu.Lock()
	dl := c.readDeadline
	c.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return packet{}, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case p := <-c.in:
		return p, nil
	case <-c.closed:
		return packet{}, net.ErrClosed
	case <-timeout:
		return packet{}, os.ErrDeadlineExceeded
	}
}

var errWouldBlock = errors.New("faultnet: would block")

// ReadFrom reads one datagram; a datagram longer than p is truncated, as on
// a UDP socket.
func (c *Conn) ReadFrom(p []byte) (int, net.Addr, error) {
	pk, err := c.recv(true)
	if err != nil {
		return 0, nil, err
	}
	return copy(p, pk.data), net.UDPAddrFromAddrPort(pk.from), nil
}

// WriteTo sends one datagram to addr.
func (c *Conn) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	if len(p) > 65507 {
		return 0, ErrTooLarge
	}
	c.net.send(c.ap, addrPort(addr), p)
	return len(p), nil
}

// ReadBatch blocks for one datagram, then takes whatever else is queued, up
// to len(ms): the contract of ipv4.PacketConn.ReadBatch on Linux. Each
// message's first buffer receives a datagram.
func (c *Conn) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	n := 0
	for n < len(ms) {
		pk, err := c.recv(n == 0)
		if errors.Is(err, errWouldBlock) {
			break
		}
		if err != nil {
			if n > 0 {
				break
			}
			return 0, err
		}
		m := &ms[n]
		m.N = copy(m.Buffers[0], pk.data)
		m.Addr = net.UDPAddrFromAddrPort(pk.from)
		m.NN, m.Flags = 0, 0
		n++
	}
	return n, nil
}

// WriteBatch sends every message (the concatenation of its buffers) to its Addr.
func (c *Conn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	for i := range ms {
		m := &ms[i]
		var b []byte
		if len(m.Buffers) == 1 {
			b = m.Buffers[0]
		} else {
			for _, part := range m.Buffers {
				b = append(b, part...)
			}
		}
		n, err := c.WriteTo(b, m.Addr)
		if err != nil {
			return i, err
		}
		m.N = n
	}
	return len(ms), nil
}
