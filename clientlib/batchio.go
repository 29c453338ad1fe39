package clientlib

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/tokend/tokend/wire"
)

// Batched socket I/O. Many goroutines of one Client send at once under
// load; each sendto is a system call, and on a small machine the system
// calls are most of a request's cost. So sends are combined: the goroutine
// that finds nobody sending writes its datagram at once and then, with one
// sendmmsg per round, whatever the others queued meanwhile (flat
// combining: no goroutine waits for a timer, an idle client sends each
// datagram as before). The receive loop reads up to recvBatch datagrams
// per recvmmsg. Both need a *net.UDPConn (x/net wraps its file
// descriptor); a borrowed net.PacketConn of another kind (Config.PacketConn:
// fault injection, tests) keeps one system call per datagram.

const (
	sendQueueMax = 64 // datagrams queued behind a running send; more are sent directly
	recvBatch    = 16 // datagrams per recvmmsg
)

// batchConn is the part of x/net's ipv4 and ipv6 PacketConn the client
// uses; ipv4.Message and ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchConn wraps pc for batched I/O, or returns nil when it is not a
// UDP socket. A socket bound to an IPv4 address is IPv4 only; any other
// (the client's own, dual-stack on "[::]:0") is wrapped as IPv6, whose
// sendmmsg on Linux also takes IPv4 destinations.
func newBatchConn(pc net.PacketConn) batchConn {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil
	}
	if la, ok := uc.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() != nil {
		return ipv4.NewPacketConn(uc)
	}
	return ipv6.NewPacketConn(uc)
}

// sendQueue combines concurrent sends into sendmmsg calls.
type sendQueue struct {
	bc batchConn

	mu    sync.Mutex
	busy  bool           // a goroutine is sending and will drain q
	q     []ipv4.Message // queued behind it; Buffers[0] is a copy (cap wire.MaxDatagram)
	spare []ipv4.Message // the other half of the double buffer (nil while flushing)

	calls atomic.Uint64 // system calls made to send (sendto and sendmmsg)
}

// enqueue outcomes.
const (
	sendNow    = iota // nobody is sending: send b, then drain
	sendQueued        // b is queued; the running sender sends it
	sendAlone         // the queue is full: send b, do not drain
)

// enqueue decides what the caller does with datagram b for to. A caller
// that may not lead (the receive loop, which must not be kept sending
// other goroutines' datagrams) sends alone when nobody is sending.
func (s *sendQueue) enqueue(b []byte, to net.Addr, mayLead bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.busy {
		if !mayLead {
			return sendAlone
		}
		s.busy = true
		return sendNow
	}
	n := len(s.q)
	if n == sendQueueMax {
		return sendAlone
	}
	if n < cap(s.q) {
		s.q = s.q[:n+1]
	} else {
		s.q = append(s.q, ipv4.Message{})
	}
	m := &s.q[n]
	if m.Buffers == nil {
		m.Buffers = [][]byte{make([]byte, 0, wire.MaxDatagram)}
	}
	m.Buffers[0] = append(m.Buffers[0][:0], b...)
	m.Addr = to
	return sendQueued
}

// drain sends what was queued while the caller sent, round after round,
// until the queue is empty, and then lets the next sender in. Errors are
// reported to fail per datagram lost; the retransmission covers them.
func (s *sendQueue) drain(fail func(error)) {
	for {
		s.mu.Lock()
		out := s.q
		if len(out) == 0 {
			s.busy = false
			s.mu.Unlock()
			return
		}
		s.q, s.spare = s.spare[:0], nil
		s.mu.Unlock()
		for rest := out; len(rest) > 0; {
			s.calls.Add(1)
			n, err := s.bc.WriteBatch(rest, 0)
			if err != nil || n <= 0 {
				fail(err)
				break
			}
			rest = rest[n:]
		}
		for i := range out {
			out[i].Addr = nil
		}
		s.mu.Lock()
		s.spare = out[:0]
		s.mu.Unlock()
	}
}

// batchReader reads datagrams for the receive loop, several per system
// call: read fills the buffers, datagram(i) returns the i-th datagram and
// its source until the next read.
type batchReader interface {
	read() (int, error)
	datagram(i int) ([]byte, netip.AddrPort)
}

// xnetReader is the batchReader on x/net's ReadBatch (recvmmsg where the
// system has it), which allocates each source address.
type xnetReader struct {
	bc   batchConn
	msgs []ipv4.Message
}

func newXnetReader(bc batchConn) *xnetReader {
	r := &xnetReader{bc: bc, msgs: make([]ipv4.Message, recvBatch)}
	for i := range r.msgs {
		// +1: an oversized datagram is seen, not cut.
		r.msgs[i].Buffers = [][]byte{make([]byte, wire.MaxDatagram+1)}
	}
	return r
}

func (r *xnetReader) read() (int, error) { return r.bc.ReadBatch(r.msgs, 0) }

func (r *xnetReader) datagram(i int) ([]byte, netip.AddrPort) {
	m := &r.msgs[i]
	var from netip.AddrPort
	if ua, ok := m.Addr.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		from = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return m.Buffers[0][:m.N], from
}
