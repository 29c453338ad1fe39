package clientlib

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/tokend/tokend/wire"
)

// Batched socket I/O. Many goroutines of one Client send at once under
// load; each sendto is a system call, and on a small machine the system
// calls are most of a request's cost. So sends are combined: the goroutine
// that finds nobody sending writes its datagram at once and then, round
// after round, whatever the others queued meanwhile (flat combining: no
// goroutine waits for a timer, an idle client sends each datagram as
// before). In a round, the datagrams queued for one worker that takes
// bundles (wire/SPEC.md section 22) go in BUNDLEs, several to a UDP
// datagram, so that the network's per-datagram cost (on loopback, the
// receive path runs in the sender's system call) is paid once for them.
// On a *net.UDPConn a round is one sendmmsg (x/net wraps the file
// descriptor) and the receive loop reads up to recvBatch datagrams per
// recvmmsg; a borrowed net.PacketConn of another kind (Config.PacketConn:
// fault injection, tests) is written one datagram at a time, bundles
// included, and read one at a time.

const (
	sendQueueMax = 64 // datagrams queued behind a running send; more are sent directly
	recvBatch    = 16 // datagrams per recvmmsg
	// ackHold is how long a REVOKE_ACK or GRANT_ACK for a worker that takes
	// bundles may wait for a request to that worker to ride with (SPEC
	// §22): far below the worker's first retransmission (20 ms −25 %).
	ackHold = 2 * time.Millisecond
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

// sendQueue combines concurrent sends into bundles and sendmmsg calls.
type sendQueue struct {
	bc batchConn      // nil: pc is not a UDP socket, written one datagram at a time
	pc net.PacketConn // the socket, for that case
	// takes reports whether a destination takes BUNDLEs; nil: none does.
	// Called by the draining goroutine without mu.
	takes func(to net.Addr) bool

	mu    sync.Mutex
	busy  bool           // a goroutine is sending and will drain q
	q     []ipv4.Message // queued behind it; Buffers[0] is a copy (cap wire.MaxDatagram)
	spare []ipv4.Message // the other half of the double buffer (nil while flushing)
	// held are acknowledgements (REVOKE_ACK, GRANT_ACK) waiting up to
	// ackHold for the next datagram to their worker, to go ahead of it in
	// its BUNDLE (hold); heldT sends them when none comes (flushHeld).
	// Every datagram queued for a worker takes that worker's held
	// acknowledgements ahead of it, so none arrives after a datagram sent
	// later (whose ack may have passed its id, which would make it stale).
	held   []ipv4.Message
	spareH []ipv4.Message // held's double buffer
	heldT  *time.Timer
	holdD  time.Duration // how long one is held at most: ackHold, but for tests
	closed bool          // close ran: nothing is held any more
	fail   func(error)

	// Only the draining goroutine (busy) uses these: what a round sends,
	// the bundles it built (Buffers[0] of cap wire.MaxDatagram) and which
	// queued datagrams went into one.
	packed  []ipv4.Message
	bundles []ipv4.Message
	used    []bool

	calls      atomic.Uint64 // system calls made to send (sendto and sendmmsg)
	sentBundle atomic.Uint64 // BUNDLEs sent
	inBundles  atomic.Uint64 // datagrams sent inside them
	acksHeld   atomic.Uint64 // acknowledgements held (hold)
	acksAlone  atomic.Uint64 // of those, sent alone: by the timer, close, or ahead of a retransmission
}

// newSendQueue returns the send queue of socket pc (bc: its batch view,
// nil if it has none). takes says which destinations take BUNDLEs (nil:
// none, and no acknowledgement is held); fail gets the send errors; hold
// is how long an acknowledgement may wait (0: ackHold).
func newSendQueue(bc batchConn, pc net.PacketConn, takes func(net.Addr) bool, fail func(error), hold time.Duration) *sendQueue {
	if hold <= 0 {
		hold = ackHold
	}
	s := &sendQueue{bc: bc, pc: pc, takes: takes, fail: fail, holdD: hold}
	if takes != nil {
		s.heldT = time.AfterFunc(time.Hour, s.flushHeld)
		s.heldT.Stop()
	}
	return s
}

// enqueue outcomes.
const (
	sendNow    = iota // nobody is sending: send b, then drain
	sendQueued        // b is queued; the running sender sends it
	sendAlone         // the queue is full: send b, do not drain
	sendDrain         // b is queued behind acknowledgements held for to: drain
)

// enqueue decides what the caller does with datagram b for to. A caller
// that may not lead (the receive loop, which must not be kept sending
// other goroutines' datagrams) sends alone when nobody is sending.
// Acknowledgements held for to go into the queue first, ahead of b.
func (s *sendQueue) enqueue(b []byte, to net.Addr, mayLead bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.heldFor(to)
	if held {
		s.moveHeld(to)
	}
	switch {
	case !s.busy && !held:
		if !mayLead {
			return sendAlone
		}
		s.busy = true
		return sendNow
	case !s.busy:
		s.busy = true
		s.q = appendMsg(s.q, b, to)
		return sendDrain
	case !held && len(s.q) >= sendQueueMax:
		return sendAlone
	}
	s.q = appendMsg(s.q, b, to)
	return sendQueued
}

// appendMsg appends a copy of b for to to ms, reusing the buffer of a
// slot it had before.
func appendMsg(ms []ipv4.Message, b []byte, to net.Addr) []ipv4.Message {
	n := len(ms)
	if n < cap(ms) {
		ms = ms[:n+1]
	} else {
		ms = append(ms, ipv4.Message{})
	}
	m := &ms[n]
	if m.Buffers == nil {
		m.Buffers = [][]byte{make([]byte, 0, wire.MaxDatagram)}
	}
	m.Buffers[0] = append(m.Buffers[0][:0], b...)
	m.Addr = to
	return ms
}

// hold keeps acknowledgement b for to until the next datagram for to is
// sent, or ackHold at most, so that it rides in that datagram's BUNDLE
// instead of costing a system call and a datagram of its own on both
// sides (SPEC §22). It reports false when b is not held (to does not
// take bundles, too many are held, or the queue is closed): the caller
// sends it now. Called by the receive loop.
func (s *sendQueue) hold(b []byte, to net.Addr) bool {
	if s.heldT == nil || !s.takes(to) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.held) >= sendQueueMax {
		return false
	}
	s.held = appendMsg(s.held, b, to)
	if len(s.held) == 1 {
		s.heldT.Reset(s.holdD)
	}
	s.acksHeld.Add(1)
	return true
}

// heldFor reports whether an acknowledgement for to is held. Caller holds
// mu.
func (s *sendQueue) heldFor(to net.Addr) bool {
	for i := range s.held {
		if sameAddr(s.held[i].Addr, to) {
			return true
		}
	}
	return false
}

// moveHeld moves the acknowledgements held for to (every one if to is
// nil) to the end of the queue, in their order. Caller holds mu.
func (s *sendQueue) moveHeld(to net.Addr) {
	s.unhold(to, func(b []byte, to net.Addr) { s.q = appendMsg(s.q, b, to) })
}

// unhold ends the hold of the acknowledgements for to (every one if to is
// nil), giving each to take in their order; the others stay held. Caller
// holds mu.
func (s *sendQueue) unhold(to net.Addr, take func(b []byte, to net.Addr)) {
	kept := s.spareH[:0]
	for i := range s.held {
		m := &s.held[i]
		if to == nil || sameAddr(m.Addr, to) {
			take(m.Buffers[0], m.Addr)
		} else {
			kept = appendMsg(kept, m.Buffers[0], m.Addr)
		}
		m.Addr = nil
	}
	s.held, s.spareH = kept, s.held[:0]
	if len(s.held) == 0 {
		s.heldT.Stop()
	}
}

// flushHeld sends the acknowledgements still held when ackHold has
// passed: queued behind a running sender, or sent by this goroutine.
func (s *sendQueue) flushHeld() {
	s.mu.Lock()
	if len(s.held) == 0 {
		s.mu.Unlock()
		return
	}
	s.acksAlone.Add(uint64(len(s.held)))
	s.moveHeld(nil)
	if s.busy {
		s.mu.Unlock()
		return
	}
	s.busy = true
	s.mu.Unlock()
	s.drain(s.fail)
}

// takeHeld returns copies of the acknowledgements held for to, no longer
// held, for a caller that sends a datagram to to outside the queue
// (Client.writeAlone): it sends them first.
func (s *sendQueue) takeHeld(to net.Addr) []ipv4.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.heldFor(to) {
		return nil
	}
	var out []ipv4.Message
	s.unhold(to, func(b []byte, to net.Addr) {
		out = append(out, ipv4.Message{Buffers: [][]byte{append([]byte(nil), b...)}, Addr: to})
	})
	s.acksAlone.Add(uint64(len(out)))
	return out
}

// close sends what is held and holds nothing from now on. Called once the
// client stops, before its socket closes.
func (s *sendQueue) close() {
	if s.heldT == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.heldT.Stop()
	s.flushHeld()
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
		ms := s.pack(out)
		s.write(ms, fail)
		for i := range out {
			out[i].Addr = nil
		}
		for i := range ms {
			ms[i].Addr = nil
		}
		s.mu.Lock()
		s.spare = out[:0]
		s.mu.Unlock()
	}
}

// write sends ms: sendmmsg as many times as it takes, or one WriteTo each.
func (s *sendQueue) write(ms []ipv4.Message, fail func(error)) {
	if s.bc == nil {
		for i := range ms {
			s.calls.Add(1)
			if _, err := s.pc.WriteTo(ms[i].Buffers[0], ms[i].Addr); err != nil {
				fail(err)
			}
		}
		return
	}
	for rest := ms; len(rest) > 0; {
		s.calls.Add(1)
		n, err := s.bc.WriteBatch(rest, 0)
		if err != nil || n <= 0 {
			fail(err)
			break
		}
		rest = rest[n:]
	}
}

// pack returns what a round sends for the queued datagrams out: each
// alone, except that the datagrams for a destination that takes bundles
// go in BUNDLEs (SPEC §22), in their order, each bundle at most
// wire.MaxDatagram bytes and of one session; a datagram with nothing to
// bundle it with goes alone. A bundle's header names the session, the
// first datagram's request id and map version. It does not allocate once
// its buffers have grown to the queue's size.
func (s *sendQueue) pack(out []ipv4.Message) []ipv4.Message {
	if s.takes == nil || len(out) < 2 {
		return out
	}
	s.packed = s.packed[:0]
	if cap(s.used) < len(out) {
		s.used = make([]bool, len(out), max(len(out), sendQueueMax))
	} else {
		s.used = s.used[:len(out)]
		clear(s.used)
	}
	nb := 0
	for i := range out {
		if s.used[i] {
			continue
		}
		m := &out[i]
		d := m.Buffers[0]
		if !bundleable(d) || !s.takes(m.Addr) {
			s.packed = append(s.packed, *m)
			continue
		}
		var b []byte
		k := 0 // datagrams in b
		for j := i + 1; j < len(out); j++ {
			o := &out[j]
			if s.used[j] || !sameAddr(o.Addr, m.Addr) {
				continue
			}
			e := o.Buffers[0]
			if !bundleable(e) || sessionOf(e) != sessionOf(d) || !wire.BundleFits(max(len(b), wire.HeaderLen+wire.BundleEntryOverhead+len(d)), len(e)) {
				break // the next datagram for m.Addr starts another bundle or goes alone: order kept
			}
			if k == 0 {
				b = s.bundleBuf(nb)
				b = wire.AppendHeader(b, wire.Header{Type: wire.TypeBundle, Session: sessionOf(d),
					Request: binary.BigEndian.Uint64(d[16:]), MapVersion: binary.BigEndian.Uint64(d[40:])})
				b = wire.AppendBundled(b, d)
				k = 1
			}
			b = wire.AppendBundled(b, e)
			s.used[j] = true
			k++
		}
		if k == 0 {
			s.packed = append(s.packed, *m)
			continue
		}
		if wire.Seal(b) != nil { // cannot happen: BundleFits kept it in size
			s.packed = append(s.packed, *m)
			for j := i + 1; j < len(out); j++ {
				if s.used[j] && sameAddr(out[j].Addr, m.Addr) {
					s.packed = append(s.packed, out[j])
				}
			}
			continue
		}
		bm := &s.bundles[nb]
		nb++
		bm.Buffers[0], bm.Addr = b, m.Addr
		s.packed = append(s.packed, *bm)
		s.sentBundle.Add(1)
		s.inBundles.Add(uint64(k))
	}
	return s.packed
}

// bundleBuf returns the empty buffer of the round's i-th bundle.
func (s *sendQueue) bundleBuf(i int) []byte {
	for len(s.bundles) <= i {
		s.bundles = append(s.bundles, ipv4.Message{Buffers: [][]byte{make([]byte, 0, wire.MaxDatagram)}})
	}
	return s.bundles[i].Buffers[0][:0]
}

// bundleable reports whether datagram d, the client's own, may go in a
// BUNDLE: a request of a session other than SESSION_OPEN and MAP_REQUEST.
func bundleable(d []byte) bool {
	return len(d) >= wire.HeaderLen && wire.Bundles(wire.TypeBundle, wire.Type(d[3])) && sessionOf(d) != 0
}

func sessionOf(d []byte) uint64 { return binary.BigEndian.Uint64(d[8:]) }

// sameAddr reports whether a and b are the same UDP destination (the
// client's are the same *net.UDPAddr for the same address: udpAddrLocked).
func sameAddr(a, b net.Addr) bool {
	if a == b {
		return true
	}
	ua, ok1 := a.(*net.UDPAddr)
	ub, ok2 := b.(*net.UDPAddr)
	return ok1 && ok2 && ua.Port == ub.Port && ua.IP.Equal(ub.IP)
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
