package wire

import "fmt"

var (
	errBatchCount = fmt.Errorf("%w: batch count not 1..MaxBatch", ErrBadBody)
	errBatchEntry = fmt.Errorf("%w: batch entry index beyond MaxBatch", ErrBadBody)
)

// BatchEntry is one token of an ACQUIRE_BATCH: a mode over a byte range.
type BatchEntry struct {
	Mode  Mode
	Start uint64 // range [Start, End); whole token = WholeStart, WholeEnd
	End   uint64
	Name  []byte // token name, 1..255 bytes
}

// AcquireBatch (ACQUIRE_BATCH request, SPEC §21) asks for 1..MaxBatch
// tokens of the header's shard, all or none, without queueing. The reply is
// GRANT_BATCH (status OK), BATCH_CONFLICT (status CONFLICT) or another
// final or retryable status.
type AcquireBatch struct {
	Entries []BatchEntry
}

// Append appends an ACQUIRE_BATCH datagram.
func (m AcquireBatch) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeAcquireBatch, 0
	if len(m.Entries) == 0 || len(m.Entries) > MaxBatch {
		return dst, errBatchCount
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		_, _, err := wireRange(e.Start, e.End)
		if err = first(err, checkMode(e.Mode), checkName(e.Name)); err != nil {
			return dst, err
		}
	}
	start, dst, err := begin(dst, &h, KindAcquireBatch)
	if err != nil {
		return dst, err
	}
	dst = append(dst, byte(len(m.Entries)))
	for i := range m.Entries {
		e := &m.Entries[i]
		s, end, _ := wireRange(e.Start, e.End)
		dst = append(dst, byte(e.Mode))
		dst = appendU64(dst, s)
		dst = appendU64(dst, end)
		dst = appendBytes8(dst, e.Name)
	}
	return finish(dst, start)
}

// Decode decodes an ACQUIRE_BATCH body. The names alias b; m.Entries is
// reused.
func (m *AcquireBatch) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindAcquireBatch)
	if err != nil {
		return err
	}
	n := int(r.u8())
	if r.err == nil && (n == 0 || n > MaxBatch) {
		r.fail(errBatchCount)
	}
	m.Entries = m.Entries[:0]
	for i := 0; i < n && r.err == nil; i++ {
		var e BatchEntry
		e.Mode = r.mode()
		e.Start, e.End = r.rng()
		e.Name = r.name()
		m.Entries = append(m.Entries, e)
	}
	return r.done()
}

// BatchGrant is one grant of a GRANT_BATCH, for the entry of the same index.
type BatchGrant struct {
	Fence      uint64
	Mode       Mode
	Start      uint64
	End        uint64
	ValueFlags uint8  // 0, ValueValid or ValueLost
	Value      []byte // 0..64 bytes; empty unless ValueValid
}

// GrantBatch is the body of a status-OK reply to ACQUIRE_BATCH: one grant
// per entry, in entry order, all valid for ValidityMs.
type GrantBatch struct {
	ValidityMs uint32
	Grants     []BatchGrant
}

// Append appends an ACQUIRE_BATCH reply with status OK.
func (m GrantBatch) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags, h.Status = TypeAcquireBatchReply, 0, StatusOK
	if len(m.Grants) == 0 || len(m.Grants) > MaxBatch {
		return dst, errBatchCount
	}
	for i := range m.Grants {
		g := &m.Grants[i]
		gr := Grant{ValueFlags: g.ValueFlags, Value: g.Value}
		_, _, err := wireRange(g.Start, g.End)
		if err = first(checkFence(g.Fence), checkMode(g.Mode), err, gr.check()); err != nil {
			return dst, err
		}
	}
	start, dst, err := begin(dst, &h, KindGrantBatch)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.ValidityMs)
	dst = append(dst, byte(len(m.Grants)))
	for i := range m.Grants {
		g := &m.Grants[i]
		s, e, _ := wireRange(g.Start, g.End)
		dst = appendU64(dst, g.Fence)
		dst = append(dst, byte(g.Mode))
		dst = appendU64(dst, s)
		dst = appendU64(dst, e)
		dst = append(dst, g.ValueFlags)
		dst = appendBytes8(dst, g.Value)
	}
	return finish(dst, start)
}

// Decode decodes a GRANT_BATCH body. The values alias b; m.Grants is reused.
func (m *GrantBatch) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindGrantBatch)
	if err != nil {
		return err
	}
	m.ValidityMs = r.u32()
	n := int(r.u8())
	if r.err == nil && (n == 0 || n > MaxBatch) {
		r.fail(errBatchCount)
	}
	m.Grants = m.Grants[:0]
	for i := 0; i < n && r.err == nil; i++ {
		var g BatchGrant
		g.Fence = r.fence()
		g.Mode = r.mode()
		g.Start, g.End = r.rng()
		g.ValueFlags = r.u8()
		if r.err == nil && (g.ValueFlags&^(ValueValid|ValueLost) != 0 || g.ValueFlags == ValueValid|ValueLost) {
			r.fail(ErrBadFlags)
		}
		g.Value = r.value()
		if r.err == nil && g.ValueFlags&ValueValid == 0 && len(g.Value) != 0 {
			r.fail(errValueFlags)
		}
		m.Grants = append(m.Grants, g)
	}
	return r.done()
}

// BatchConflict is the body of an ACQUIRE_BATCH reply with status CONFLICT:
// the index of the entry that conflicted, and a message.
type BatchConflict struct {
	Entry   uint8  // 0..MaxBatch-1
	Message []byte // text, 0..255 bytes
}

// Append appends an ACQUIRE_BATCH reply with status CONFLICT.
func (m BatchConflict) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags, h.Status = TypeAcquireBatchReply, 0, StatusConflict
	if m.Entry >= MaxBatch {
		return dst, errBatchEntry
	}
	if err := checkText(m.Message); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindBatchConflict)
	if err != nil {
		return dst, err
	}
	dst = append(dst, m.Entry)
	dst = appendBytes8(dst, m.Message)
	return finish(dst, start)
}

// Decode decodes a BATCH_CONFLICT body. m.Message aliases b.
func (m *BatchConflict) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindBatchConflict)
	if err != nil {
		return err
	}
	m.Entry = r.u8()
	if r.err == nil && m.Entry >= MaxBatch {
		r.fail(errBatchEntry)
	}
	m.Message = r.text()
	return r.done()
}
