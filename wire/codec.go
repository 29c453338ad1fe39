package wire

import (
	"encoding/binary"
	"unicode/utf8"
)

// reader decodes a body field by field. The first failure sticks: later
// reads return zero values and later checks do not overwrite it, so the
// error reported is that of the first bad field (SPEC.md "Validation order").
type reader struct {
	b   []byte
	err error
}

// body returns a reader over the body of datagram b after checking that
// header h calls for body kind k.
func body(h *Header, b []byte, k Kind) (reader, error) {
	if h.Kind() != k {
		return reader{}, ErrKind
	}
	if len(b) < HeaderLen {
		return reader{}, ErrShort
	}
	return reader{b: b[HeaderLen:]}, nil
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// take returns the next n bytes, capped so that appending to the result
// can never overwrite the rest of the datagram.
func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = ErrShort
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if p := r.take(1); len(p) == 1 {
		return p[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if p := r.take(2); len(p) == 2 {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if p := r.take(4); len(p) == 4 {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if p := r.take(8); len(p) == 8 {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

// nonzero32 reads a u32 that must not be zero.
func (r *reader) nonzero32() uint32 {
	v := r.u32()
	if r.err == nil && v == 0 {
		r.err = errZero
	}
	return v
}

// name reads a token name: length byte 1..255, then the bytes.
func (r *reader) name() []byte {
	n := r.u8()
	if r.err == nil && n == 0 {
		r.err = ErrNameLength
	}
	return r.take(int(n))
}

// value reads a value block: length byte 0..64, then the bytes.
func (r *reader) value() []byte {
	n := r.u8()
	if r.err == nil && n > MaxValue {
		r.err = ErrValueLength
	}
	return r.take(int(n))
}

// text reads a length byte and that many bytes of UTF-8.
func (r *reader) text() []byte {
	p := r.take(int(r.u8()))
	if r.err == nil && !utf8.Valid(p) {
		r.err = errUTF8
	}
	return p
}

// label reads a length byte 1..255 and that many bytes of UTF-8 (a
// worker's address or id).
func (r *reader) label() []byte {
	n := r.u8()
	if r.err == nil && n == 0 {
		r.err = errAddrLen
	}
	p := r.take(int(n))
	if r.err == nil && !utf8.Valid(p) {
		r.err = errUTF8
	}
	return p
}

func (r *reader) mode() Mode {
	m := Mode(r.u8())
	if r.err == nil && !m.Valid() {
		r.err = ErrBadMode
	}
	return m
}

func (r *reader) fence() uint64 {
	f := r.u64()
	if r.err == nil && !ValidFence(f) {
		r.err = errFence
	}
	return f
}

// rng reads start and end and returns the range as decoded: 0,0 becomes
// WholeStart, WholeEnd.
func (r *reader) rng() (start, end uint64) {
	start, end = r.u64(), r.u64()
	if r.err != nil {
		return 0, 0
	}
	switch {
	case start == 0 && end == 0:
		return WholeStart, WholeEnd
	case start == 0 && end == WholeEnd:
		r.err = errRangeWhole
	case start >= end:
		r.err = errRangeEmpty
	}
	return start, end
}

// done reports the first error, or errTrailing if bytes are left over.
func (r *reader) done() error {
	if r.err == nil && len(r.b) != 0 {
		r.err = errTrailing
	}
	return r.err
}

// Encoding side. Each encoder checks every field first, then begins the
// datagram, so on error nothing has been appended.

// begin checks header h against body kind k and appends it to dst.
func begin(dst []byte, h *Header, k Kind) (int, []byte, error) {
	if err := h.check(); err != nil {
		return 0, dst, err
	}
	if h.Kind() != k {
		return 0, dst, ErrKind
	}
	return len(dst), AppendHeader(dst, *h), nil
}

// finish seals the datagram that starts at dst[start].
func finish(dst []byte, start int) ([]byte, error) {
	if err := Seal(dst[start:]); err != nil {
		return dst[:start], err
	}
	return dst, nil
}

func checkName(name []byte) error {
	if len(name) == 0 || len(name) > MaxName {
		return ErrNameLength
	}
	return nil
}

func checkValue(v []byte) error {
	if len(v) > MaxValue {
		return ErrValueLength
	}
	return nil
}

func checkText(p []byte) error {
	if len(p) > MaxText {
		return ErrTooLarge
	}
	if !utf8.Valid(p) {
		return errUTF8
	}
	return nil
}

func checkMode(m Mode) error {
	if !m.Valid() {
		return ErrBadMode
	}
	return nil
}

func checkFence(f uint64) error {
	if !ValidFence(f) {
		return errFence
	}
	return nil
}

func checkEpoch(e uint32) error {
	if e == 0 || e > MaxEpoch {
		return errEpoch
	}
	return nil
}

// wireRange returns the on-the-wire spelling of [start, end).
func wireRange(start, end uint64) (uint64, uint64, error) {
	if IsWhole(start, end) {
		return 0, 0, nil
	}
	if start >= end {
		return 0, 0, errRangeEmpty
	}
	return start, end, nil
}

// first returns the first non-nil error.
func first(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func appendU16(dst []byte, v uint16) []byte { return binary.BigEndian.AppendUint16(dst, v) }
func appendU32(dst []byte, v uint32) []byte { return binary.BigEndian.AppendUint32(dst, v) }
func appendU64(dst []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(dst, v) }

// appendBytes8 appends a length byte and p (len(p) <= 255, checked before).
func appendBytes8(dst []byte, p []byte) []byte {
	dst = append(dst, byte(len(p)))
	return append(dst, p...)
}
