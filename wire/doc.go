// Package wire is tokend's datagram protocol: the header and message
// encodings, status codes, token modes, fences and the token-name -> shard
// hash, as specified byte for byte in SPEC.md. The worker and the Go client
// both use it; the C client in clientlib/c is written from SPEC.md alone and
// checked against the golden vectors in testdata/vectors.txt.
//
// The package is pure: no I/O, no clock, no logging, standard library only.
//
// # Receiving
//
//	h, err := wire.ParseHeader(pkt) // magic, version, length, CRC32C, header rules
//	if err != nil {
//		drops.WithLabelValues(wire.Reason(err)).Inc()
//		return
//	}
//	switch h.Kind() { // the body layout follows from type and status
//	case wire.KindAcquire:
//		var m wire.Acquire
//		if err := m.Decode(h, pkt); err != nil { ... }
//		// m.Name aliases pkt: copy it before pkt is reused.
//	...
//	}
//
// Decoding never panics and does not allocate; every error wraps one of the
// sentinels in errors.go (use errors.Is, or Reason for a metric label).
//
// # Sending
//
//	buf, err = wire.Grant{Fence: f, Mode: wire.EX, ValidityMs: v}.Append(buf[:0], h.Reply())
//
// Append writes header and body and seals the datagram (body length and
// checksum); it checks everything the decoder checks, so what it encodes
// decodes, and it does not allocate when buf has room for MaxDatagram bytes.
// AppendHeader and Seal are the low-level pieces.
package wire
