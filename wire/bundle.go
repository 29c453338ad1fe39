package wire

import "encoding/binary"

// BundleEntryOverhead is what each datagram adds to a bundle besides its
// own bytes: its u16 length.
const BundleEntryOverhead = 2

// Bundle is the body of BUNDLE (client to worker) and BUNDLE_REPLY (worker
// to client), SPEC §22: whole datagrams of one session, each exactly as it
// would be sent alone (its own header, auth tag and checksum), so that a
// receiver handles each as if it had arrived by itself. A bundle is only
// framing: it is not authenticated itself, and its request id names none
// of the requests inside.
type Bundle struct {
	Datagrams [][]byte
}

// Append appends a BUNDLE or BUNDLE_REPLY datagram; h.Type (TypeBundle or
// TypeBundleReply) is the caller's. It checks the datagrams as the decoder
// does. The hot paths build bundles with AppendHeader, AppendBundled and
// Seal instead, without the slice of slices.
func (m Bundle) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	if len(m.Datagrams) == 0 {
		return dst, errBundleEmpty
	}
	for _, d := range m.Datagrams {
		if err := checkBundled(h, d); err != nil {
			return dst, err
		}
	}
	start, dst, err := begin(dst, &h, KindBundle)
	if err != nil {
		return dst, err
	}
	for _, d := range m.Datagrams {
		dst = AppendBundled(dst, d)
	}
	return finish(dst, start)
}

// Decode decodes a BUNDLE or BUNDLE_REPLY body. The datagrams alias b and
// have passed only the bundle's checks (CheckBundle): parse each with
// ParseHeader before using it. m.Datagrams is reused.
func (m *Bundle) Decode(h Header, b []byte) error {
	if err := CheckBundle(h, b); err != nil {
		return err
	}
	m.Datagrams = m.Datagrams[:0]
	for e := b[HeaderLen:]; len(e) > 0; {
		var d []byte
		d, e = NextBundled(e)
		m.Datagrams = append(m.Datagrams, d)
	}
	return nil
}

// CheckBundle checks the body of BUNDLE or BUNDLE_REPLY datagram b, whose
// header h ParseHeader returned: one or more entries, each a u16 length n
// ≥ HeaderLen and n bytes; each of a type the bundle may carry and of h's
// session. The datagrams inside are not validated further: a receiver
// parses each as if it had arrived alone, and drops only the bad ones. It
// does not allocate.
func CheckBundle(h Header, b []byte) error {
	if h.Kind() != KindBundle {
		return ErrKind
	}
	if len(b) < HeaderLen {
		return ErrShort
	}
	e := b[HeaderLen:]
	if len(e) == 0 {
		return errBundleEmpty
	}
	for len(e) > 0 {
		if len(e) < BundleEntryOverhead {
			return ErrShort
		}
		n := int(binary.BigEndian.Uint16(e))
		if n < HeaderLen {
			return errBundleEntry
		}
		if n > len(e)-BundleEntryOverhead {
			return ErrShort
		}
		if err := checkBundled(h, e[BundleEntryOverhead:BundleEntryOverhead+n]); err != nil {
			return err
		}
		e = e[BundleEntryOverhead+n:]
	}
	return nil
}

// checkBundled checks one datagram d for a bundle with header h: at least
// a header long, of a type the bundle may carry, of the bundle's session.
func checkBundled(h Header, d []byte) error {
	if len(d) < HeaderLen {
		return errBundleEntry
	}
	if len(d) > MaxBody-BundleEntryOverhead {
		return ErrTooLarge
	}
	if !Bundles(h.Type, Type(d[3])) {
		return errBundleType
	}
	if binary.BigEndian.Uint64(d[8:]) != h.Session {
		return errBundleSession
	}
	return nil
}

// Bundles reports whether a bundle of type outer (TypeBundle or
// TypeBundleReply) may carry a datagram of type inner: a BUNDLE carries
// requests other than SESSION_OPEN, MAP_REQUEST and BUNDLE; a BUNDLE_REPLY
// carries replies and server-initiated messages other than the replies to
// those.
func Bundles(outer, inner Type) bool {
	switch outer {
	case TypeBundle:
		return inner.IsRequest() && inner != TypeSessionOpen && inner != TypeMapRequest && inner != TypeBundle
	case TypeBundleReply:
		return (inner.IsReply() || inner.IsServer()) &&
			inner != TypeSessionOpenReply && inner != TypeMapReply && inner != TypeBundleReply
	}
	return false
}

// BundleFits reports whether a bundle now n bytes long (header included)
// has room for one more datagram of m bytes.
func BundleFits(n, m int) bool { return n+BundleEntryOverhead+m <= MaxDatagram }

// AppendBundled appends datagram d as the next entry of the bundle being
// built at the end of dst (begun with AppendHeader, finished with Seal).
// The caller checks room with BundleFits and the type with Bundles.
func AppendBundled(dst, d []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(d)))
	return append(dst, d...)
}

// NextBundled returns the first datagram of entries e (the body of a
// bundle CheckBundle accepted, or what NextBundled left of it) and the
// entries after it:
//
//	for e := b[wire.HeaderLen:]; len(e) > 0; {
//		var d []byte
//		d, e = wire.NextBundled(e)
//		...
//	}
func NextBundled(e []byte) (d, rest []byte) {
	n := BundleEntryOverhead + int(binary.BigEndian.Uint16(e))
	return e[BundleEntryOverhead:n:n], e[n:]
}
