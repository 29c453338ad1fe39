package worker

import (
	"encoding/binary"
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/wire"
)

// Bundles (wire/SPEC.md section 22). A BUNDLE is taken from any session
// the worker knows: each datagram inside is handled as if it had arrived
// alone from the bundle's source (handleBundle). The worker sends
// BUNDLE_REPLYs only to sessions whose document says they take them: at
// flush, the datagrams of one batch for such a session at one address are
// packed into as few BUNDLE_REPLYs as fit (pack).

// handleBundle handles a BUNDLE whose header h ParseHeader accepted: a
// malformed one is dropped whole ("bad_bundle"); otherwise each datagram
// inside goes through the whole receive path (header, tag, session, body)
// in bundle order, and only the bad ones are dropped. Caller holds mu.
func (w *Worker) handleBundle(ob *outbox, h wire.Header, pkt []byte, from *net.UDPAddr) {
	if err := wire.CheckBundle(h, pkt); err != nil {
		w.met.drop("bad_bundle")
		return
	}
	n := 0
	for e := pkt[wire.HeaderLen:]; len(e) > 0; n++ {
		var d []byte
		d, e = wire.NextBundled(e)
		ih, err := wire.ParseHeader(d)
		if err != nil {
			w.met.drop(wire.Reason(err))
			continue
		}
		w.handleParsed(ob, ih, d, from)
	}
	w.met.bundlesIn.Inc()
	w.met.bundledIn.Add(float64(n))
}

// packer is the scratch with which an outbox packs its datagrams into
// bundles. Everything in it is reused from flush to flush, so that a
// flush allocates nothing once it has seen a batch as large.
type packer struct {
	grp  []bundleGroup
	next []int32                  // per message: the next message of its group, -1 at the end
	open map[netip.AddrPort]int32 // destination -> its group still taking datagrams
	out  []ipv4.Message           // what is sent when something was bundled
	bufs [][]byte                 // bundle datagrams, cap MaxDatagram each
	vecs [][][]byte               // per bundle: the one-buffer vector out points at
}

// bundleGroup is datagrams of msgs sent to one address in one datagram:
// one alone, or several in a BUNDLE_REPLY.
type bundleGroup struct {
	head, tail int32  // first and last message
	count      int32  // messages
	size       int    // bytes of the bundle they would make
	session    uint64 // of a group that may grow; 0 for a datagram alone
}

// pack returns the datagrams to send for o.msgs, in the order of the
// first datagram of each group: o.msgs itself when nothing is bundled.
// Consecutive datagrams (in o.msgs order) for one destination that may go
// in a BUNDLE_REPLY (o.take) and are of one session are packed into
// BUNDLE_REPLYs of at most MaxDatagram bytes; a datagram that may not
// closes its destination's bundle, so that what one destination receives
// keeps o.msgs's order. A group of one is sent alone. It also returns how
// many bundles it made and how many datagrams they carry.
func (o *outbox) pack() (ms []ipv4.Message, bundles, bundled int) {
	if o.takes < 2 {
		return o.msgs, 0, 0 // nothing to bundle with
	}
	p := &o.pk
	p.grp, p.next = p.grp[:0], p.next[:0]
	if p.open == nil {
		p.open = map[netip.AddrPort]int32{}
	}
	clear(p.open)
	grew := false
	for i := range o.msgs {
		m := &o.msgs[i]
		pkt := m.Buffers[0]
		p.next = append(p.next, -1)
		if !o.take[i] || !wire.BundleFits(wire.HeaderLen, len(pkt)) {
			if len(p.open) > 0 {
				delete(p.open, destination(m.Addr))
			}
			p.grp = append(p.grp, bundleGroup{head: int32(i), tail: int32(i), count: 1})
			continue
		}
		dst, sess := destination(m.Addr), binary.BigEndian.Uint64(pkt[8:])
		if g, ok := p.open[dst]; ok {
			gr := &p.grp[g]
			if gr.session == sess && wire.BundleFits(gr.size, len(pkt)) {
				p.next[gr.tail] = int32(i)
				gr.tail = int32(i)
				gr.count++
				gr.size += wire.BundleEntryOverhead + len(pkt)
				grew = true
				continue
			}
		}
		p.open[dst] = int32(len(p.grp))
		p.grp = append(p.grp, bundleGroup{head: int32(i), tail: int32(i), count: 1, session: sess,
			size: wire.HeaderLen + wire.BundleEntryOverhead + len(pkt)})
	}
	if !grew {
		return o.msgs, 0, 0
	}
	p.out = p.out[:0]
	for _, g := range p.grp {
		first := &o.msgs[g.head]
		if g.count == 1 {
			p.out = append(p.out, ipv4.Message{Buffers: first.Buffers, Addr: first.Addr})
			continue
		}
		if bundles == len(p.bufs) {
			p.bufs = append(p.bufs, make([]byte, 0, wire.MaxDatagram))
			p.vecs = append(p.vecs, make([][]byte, 1))
		}
		b := p.bufs[bundles]
		h := wire.Header{Type: wire.TypeBundleReply, Session: g.session,
			Request: binary.BigEndian.Uint64(first.Buffers[0][16:])}
		for i := g.head; i >= 0; i = p.next[i] {
			h.MapVersion = max(h.MapVersion, binary.BigEndian.Uint64(o.msgs[i].Buffers[0][40:]))
		}
		b = wire.AppendHeader(b[:0], h)
		for i := g.head; i >= 0; i = p.next[i] {
			b = wire.AppendBundled(b, o.msgs[i].Buffers[0])
		}
		if wire.Seal(b) != nil {
			// Cannot happen: the group was sized to fit. Send its
			// datagrams alone rather than lose them.
			for i := g.head; i >= 0; i = p.next[i] {
				p.out = append(p.out, ipv4.Message{Buffers: o.msgs[i].Buffers, Addr: o.msgs[i].Addr})
			}
			continue
		}
		p.bufs[bundles] = b
		v := p.vecs[bundles]
		v[0] = b
		p.out = append(p.out, ipv4.Message{Buffers: v, Addr: first.Addr})
		bundles++
		bundled += int(g.count)
	}
	return p.out, bundles, bundled
}

// destination is the address a datagram goes to, as a map key.
func destination(a net.Addr) netip.AddrPort {
	u, _ := a.(*net.UDPAddr)
	if u == nil {
		return netip.AddrPort{}
	}
	ap := u.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// release lets the datagrams o sent be collected, keeping the buffers.
func (o *outbox) release() {
	for i := range o.msgs {
		o.msgs[i].Buffers[0] = nil
		o.msgs[i].Addr = nil
	}
	for i := range o.pk.out {
		o.pk.out[i] = ipv4.Message{}
	}
	o.pk.out = o.pk.out[:0]
}
