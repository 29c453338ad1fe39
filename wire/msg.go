package wire

// Message bodies. For each body struct X:
//
//   - X.Append(dst, h) appends a whole datagram (header h, then the body) to
//     dst, sealed (length and checksum written), and returns the extended
//     slice. It fills in h.Flags from the body, and h.Type where only one type
//     carries X; for bodies several types share (Grant, Queued, ErrorBody,
//     NotOwner, Empty) h.Type, and for ErrorBody and NotOwner h.Status, are
//     the caller's. It checks h and every field with the same rules the
//     decoder applies, so whatever it encodes decodes; on error dst comes
//     back unchanged. With enough capacity in dst it does not allocate.
//
//   - (*X).Decode(h, b) decodes the body of datagram b, whose header h was
//     returned by a successful ParseHeader(b). It returns ErrKind unless
//     h.Kind() names X. Byte-slice fields (names, values, texts) alias b: copy
//     them before reusing b. Slice-of-struct fields reuse the capacity of the
//     receiver's slices, so decoding into a reused struct does not allocate.
//     On error the struct's contents are unspecified.
//
// Ranges: a decoder returns the whole token as WholeStart, WholeEnd; an
// encoder accepts 0,0 or WholeStart,WholeEnd for it and writes 0,0.

// Empty is the body of SESSION_CLOSE and of the status-OK replies to
// SESSION_CLOSE, RELEASE and CANCEL: no bytes.
type Empty struct{}

// Append appends a datagram with an empty body. h.Type is the caller's.
func (Empty) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	start, dst, err := begin(dst, &h, KindEmpty)
	if err != nil {
		return dst, err
	}
	return finish(dst, start)
}

// Decode checks that the body is empty.
func (*Empty) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindEmpty)
	if err != nil {
		return err
	}
	return r.done()
}

// SessionOpen (SESSION_OPEN request) asks for a new session. Its header has
// session 0 and a random non-zero request id (the nonce the reply echoes).
// The first one of an authenticated open carries no cookie and is answered
// COOKIE; the second carries that cookie and a MAC under the client key
// (SPEC.md section 20).
type SessionOpen struct {
	TTLMs   uint32         // requested session TTL in ms; 0 = the worker's default
	Lib     []byte         // client library and version, e.g. "go/0.1.0": 0..255 bytes UTF-8
	Nonce   [NonceLen]byte // the client's random nonce (all zero without authentication)
	KeyName []byte         // the client key's name: 0..64 bytes UTF-8 (empty without authentication)
	Cookie  []byte         // empty, or the CookieLen bytes of a COOKIE reply
	// Bundle (header flag BUNDLE) says the client sends and takes BUNDLE
	// datagrams on this session if the worker says so too (SPEC §22).
	Bundle bool
}

// Append appends a SESSION_OPEN datagram.
func (m SessionOpen) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeSessionOpen, 0
	if m.Bundle {
		h.Flags = FlagBundle
	}
	if err := checkText(m.Lib); err != nil {
		return dst, err
	}
	if len(m.KeyName) > MaxKeyName || checkText(m.KeyName) != nil {
		return dst, errKeyName
	}
	if len(m.Cookie) != 0 && len(m.Cookie) != CookieLen {
		return dst, errCookieLen
	}
	start, dst, err := begin(dst, &h, KindSessionOpen)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.TTLMs)
	dst = appendBytes8(dst, m.Lib)
	dst = append(dst, m.Nonce[:]...)
	dst = appendBytes8(dst, m.KeyName)
	dst = appendBytes8(dst, m.Cookie)
	return finish(dst, start)
}

// Decode decodes a SESSION_OPEN body.
func (m *SessionOpen) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindSessionOpen)
	if err != nil {
		return err
	}
	m.Bundle = h.Flags&FlagBundle != 0
	m.TTLMs = r.u32()
	m.Lib = r.text()
	copy(m.Nonce[:], r.take(NonceLen))
	m.KeyName = r.text()
	if r.err == nil && len(m.KeyName) > MaxKeyName {
		r.fail(errKeyName)
	}
	m.Cookie = r.take(int(r.u8()))
	if r.err == nil && len(m.Cookie) != 0 && len(m.Cookie) != CookieLen {
		r.fail(errCookieLen)
	}
	return r.done()
}

// Cookie is the body of a SESSION_OPEN reply with status COOKIE: the client
// sends its SESSION_OPEN again, with this cookie and a MAC.
type Cookie struct {
	Cookie [CookieLen]byte
}

// Append appends a COOKIE reply datagram (h.Status is set to COOKIE).
func (m Cookie) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags, h.Status = TypeSessionOpenReply, 0, StatusCookie
	start, dst, err := begin(dst, &h, KindCookie)
	if err != nil {
		return dst, err
	}
	dst = appendBytes8(dst, m.Cookie[:])
	return finish(dst, start)
}

// Decode decodes a COOKIE reply body.
func (m *Cookie) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindCookie)
	if err != nil {
		return err
	}
	n := r.u8()
	if r.err == nil && n != CookieLen {
		r.fail(errCookieLen)
	}
	copy(m.Cookie[:], r.take(int(n)))
	return r.done()
}

// SessionReply is the body of a status-OK SESSION_OPEN reply. The new
// session id is in the reply header.
type SessionReply struct {
	TTLMs       uint32 // session TTL S granted, ms, counted from the client's send (> 0)
	ShardCount  uint32 // the cluster's fixed shard count (> 0)
	GraceMs     uint32 // grace period G of a recovering shard, ms
	WorkerTTLMs uint32 // workers' etcd lease TTL W, ms (> 0)
	// WorkerNonce is the worker's random nonce, from which with the
	// client's the session key is derived (all zero without authentication).
	WorkerNonce [NonceLen]byte
	// Bundle (header flag BUNDLE, only in answer to a SESSION_OPEN with
	// it) says the worker sends and takes BUNDLE datagrams on this
	// session (SPEC §22).
	Bundle bool
}

// Append appends a SESSION_OPEN reply datagram.
func (m SessionReply) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeSessionOpenReply, 0
	if m.Bundle {
		h.Flags = FlagBundle
	}
	if m.TTLMs == 0 || m.ShardCount == 0 || m.WorkerTTLMs == 0 {
		return dst, errZero
	}
	start, dst, err := begin(dst, &h, KindSessionReply)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.TTLMs)
	dst = appendU32(dst, m.ShardCount)
	dst = appendU32(dst, m.GraceMs)
	dst = appendU32(dst, m.WorkerTTLMs)
	dst = append(dst, m.WorkerNonce[:]...)
	return finish(dst, start)
}

// Decode decodes a SESSION_OPEN reply body.
func (m *SessionReply) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindSessionReply)
	if err != nil {
		return err
	}
	m.Bundle = h.Flags&FlagBundle != 0
	m.TTLMs = r.nonzero32()
	m.ShardCount = r.nonzero32()
	m.GraceMs = r.u32()
	m.WorkerTTLMs = r.nonzero32()
	copy(m.WorkerNonce[:], r.take(NonceLen))
	return r.done()
}

// ShardEpoch names a shard at an epoch: a KEEPALIVE entry.
type ShardEpoch struct {
	Shard uint32
	Epoch uint32 // 1..MaxEpoch
}

// Keepalive (KEEPALIVE request) renews the session (with Renew) and asks
// the worker to vouch for the listed shards at the listed epochs.
type Keepalive struct {
	Renew   bool         // flag RENEW: renew the session's etcd lease
	Entries []ShardEpoch // 0..MaxKeepaliveEntries (shard, epoch) pairs
	// Done, if not 0, sets flag DONE: the session has finished its
	// reclaims at this worker as of map version Done (SPEC §13, "Early end
	// of grace"). It follows the entries as a u64.
	Done uint64
}

// Append appends a KEEPALIVE datagram.
func (m Keepalive) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeKeepalive, 0
	if m.Renew {
		h.Flags = FlagRenew
	}
	if m.Done != 0 {
		h.Flags |= FlagDone
	}
	if len(m.Entries) > MaxKeepaliveEntries {
		return dst, errEntries
	}
	if m.Done != 0 && len(m.Entries) > MaxKeepaliveEntries-1 {
		return dst, errEntries // 2 + 141·8 + 8 bytes do not fit
	}
	for _, e := range m.Entries {
		if err := checkEpoch(e.Epoch); err != nil {
			return dst, err
		}
	}
	start, dst, err := begin(dst, &h, KindKeepalive)
	if err != nil {
		return dst, err
	}
	dst = appendU16(dst, uint16(len(m.Entries)))
	for _, e := range m.Entries {
		dst = appendU32(dst, e.Shard)
		dst = appendU32(dst, e.Epoch)
	}
	if m.Done != 0 {
		dst = appendU64(dst, m.Done)
	}
	return finish(dst, start)
}

// Decode decodes a KEEPALIVE body into m, reusing m.Entries' capacity.
func (m *Keepalive) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindKeepalive)
	if err != nil {
		return err
	}
	m.Renew = h.Flags&FlagRenew != 0
	n := int(r.u16())
	if n > MaxKeepaliveEntries {
		r.fail(errEntries)
	}
	m.Entries = m.Entries[:0]
	for i := 0; i < n && r.err == nil; i++ {
		e := ShardEpoch{Shard: r.u32(), Epoch: r.u32()}
		if r.err == nil {
			r.fail(checkEpoch(e.Epoch))
		}
		m.Entries = append(m.Entries, e)
	}
	m.Done = 0
	if h.Flags&FlagDone != 0 {
		m.Done = r.u64()
		if r.err == nil && m.Done == 0 {
			r.fail(errZero)
		}
	}
	return r.done()
}

// KeepaliveReply is the body of a status-OK KEEPALIVE reply.
type KeepaliveReply struct {
	SessionTTLMs uint32   // session lease renewed for this long (ms, from the client's send); 0 if not renewed
	ValidityMs   uint32   // the worker vouches for its shards this long (ms, from the client's first send); 0 = cannot vouch
	Statuses     []Status // one per request entry, in order: OK, NOT_OWNER or STALE_EPOCH
}

// Append appends a KEEPALIVE reply datagram.
func (m KeepaliveReply) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeKeepaliveReply, 0
	if len(m.Statuses) > MaxKeepaliveEntries {
		return dst, errEntries
	}
	for _, s := range m.Statuses {
		if !entryStatus(s) {
			return dst, errEntryStatus
		}
	}
	start, dst, err := begin(dst, &h, KindKeepaliveReply)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.SessionTTLMs)
	dst = appendU32(dst, m.ValidityMs)
	dst = appendU16(dst, uint16(len(m.Statuses)))
	for _, s := range m.Statuses {
		dst = append(dst, byte(s))
	}
	return finish(dst, start)
}

func entryStatus(s Status) bool {
	return s == StatusOK || s == StatusNotOwner || s == StatusStaleEpoch
}

// Decode decodes a KEEPALIVE reply body, reusing m.Statuses' capacity.
func (m *KeepaliveReply) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindKeepaliveReply)
	if err != nil {
		return err
	}
	m.SessionTTLMs, m.ValidityMs = r.u32(), r.u32()
	n := int(r.u16())
	if n > MaxKeepaliveEntries {
		r.fail(errEntries)
	}
	m.Statuses = m.Statuses[:0]
	for i := 0; i < n && r.err == nil; i++ {
		s := Status(r.u8())
		if r.err == nil && !entryStatus(s) {
			r.fail(errEntryStatus)
		}
		m.Statuses = append(m.Statuses, s)
	}
	return r.done()
}

// Acquire (ACQUIRE request) asks for a token in a mode over a byte range.
type Acquire struct {
	Try    bool   // flag TRY: answer CONFLICT at once instead of queueing
	Detect bool   // flag DETECT: the session holds its grants until this request ends (SPEC §19)
	Grow   bool   // flag GROW: may be granted a larger range, up to the whole token, if nobody else is there (SPEC §10)
	Mode   Mode   // requested mode
	WaitMs uint32 // longest time to stay queued (ignored with Try); WaitForever = no limit
	Start  uint64 // range [Start, End); whole token = WholeStart, WholeEnd
	End    uint64
	Name   []byte // token name, 1..255 bytes
}

// Append appends an ACQUIRE datagram.
func (m Acquire) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeAcquire, 0
	if m.Try {
		h.Flags = FlagTry
	}
	if m.Detect {
		h.Flags |= FlagAcquireDetect
	}
	if m.Grow {
		h.Flags |= FlagAcquireGrow
	}
	s, e, err := wireRange(m.Start, m.End)
	if err = first(err, checkMode(m.Mode), checkName(m.Name)); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindAcquire)
	if err != nil {
		return dst, err
	}
	dst = append(dst, byte(m.Mode))
	dst = appendU32(dst, m.WaitMs)
	dst = appendU64(dst, s)
	dst = appendU64(dst, e)
	dst = appendBytes8(dst, m.Name)
	return finish(dst, start)
}

// Decode decodes an ACQUIRE body. m.Name aliases b.
func (m *Acquire) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindAcquire)
	if err != nil {
		return err
	}
	m.Try = h.Flags&FlagTry != 0
	m.Detect = h.Flags&FlagAcquireDetect != 0
	m.Grow = h.Flags&FlagAcquireGrow != 0
	m.Mode = r.mode()
	m.WaitMs = r.u32()
	m.Start, m.End = r.rng()
	m.Name = r.name()
	return r.done()
}

// Release (RELEASE request) gives a grant back, optionally setting the
// token's value block (holders in PW or EX only; the worker checks). With
// HasRange it gives back only [Start, End), a prefix or suffix of the
// grant's range, and keeps the rest under the same fence (SPEC §10).
type Release struct {
	Fence    uint64 // the grant's fence
	Name     []byte // token name, 1..255 bytes
	HasRange bool   // flag RANGE: release only [Start, End)
	Start    uint64 // only with HasRange; whole token = WholeStart, WholeEnd
	End      uint64
	HasValue bool   // flag VALUE: set the value block to Value
	Value    []byte // 0..64 bytes; only with HasValue
}

// Append appends a RELEASE datagram. Value is ignored unless HasValue,
// Start and End unless HasRange.
func (m Release) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeRelease, 0
	if m.HasValue {
		h.Flags = FlagReleaseValue
	}
	var s, e uint64
	var rerr error
	if m.HasRange {
		h.Flags |= FlagReleaseRange
		s, e, rerr = wireRange(m.Start, m.End)
	}
	if err := first(rerr, checkFence(m.Fence), checkName(m.Name), checkValue(m.Value)); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindRelease)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Fence)
	dst = appendBytes8(dst, m.Name)
	if m.HasRange {
		dst = appendU64(dst, s)
		dst = appendU64(dst, e)
	}
	if m.HasValue {
		dst = appendBytes8(dst, m.Value)
	}
	return finish(dst, start)
}

// Decode decodes a RELEASE body. m.Name and m.Value alias b.
func (m *Release) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindRelease)
	if err != nil {
		return err
	}
	m.Fence = r.fence()
	m.Name = r.name()
	m.HasRange = h.Flags&FlagReleaseRange != 0
	m.Start, m.End = 0, 0
	if m.HasRange {
		m.Start, m.End = r.rng()
	}
	m.HasValue = h.Flags&FlagReleaseValue != 0
	m.Value = nil
	if m.HasValue {
		m.Value = r.value()
	}
	return r.done()
}

// Convert (CONVERT request) changes the mode of a held grant: an upgrade
// may queue and gets a new fence; a downgrade is immediate and keeps its
// fence, and may set the value block.
type Convert struct {
	Try      bool   // flag TRY: answer CONFLICT at once instead of queueing
	Detect   bool   // flag DETECT: the session holds its grants until this request ends (SPEC §19)
	Fence    uint64 // the grant's current fence
	Mode     Mode   // the new mode
	WaitMs   uint32 // as in Acquire
	Name     []byte // token name, 1..255 bytes
	HasValue bool   // flag VALUE: set the value block to Value
	Value    []byte // 0..64 bytes; only with HasValue
}

// Append appends a CONVERT datagram. Value is ignored unless HasValue.
func (m Convert) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeConvert, 0
	if m.Try {
		h.Flags |= FlagTry
	}
	if m.HasValue {
		h.Flags |= FlagConvertValue
	}
	if m.Detect {
		h.Flags |= FlagConvertDetect
	}
	if err := first(checkFence(m.Fence), checkMode(m.Mode), checkName(m.Name), checkValue(m.Value)); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindConvert)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Fence)
	dst = append(dst, byte(m.Mode))
	dst = appendU32(dst, m.WaitMs)
	dst = appendBytes8(dst, m.Name)
	if m.HasValue {
		dst = appendBytes8(dst, m.Value)
	}
	return finish(dst, start)
}

// Decode decodes a CONVERT body. m.Name and m.Value alias b.
func (m *Convert) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindConvert)
	if err != nil {
		return err
	}
	m.Try = h.Flags&FlagTry != 0
	m.Detect = h.Flags&FlagConvertDetect != 0
	m.Fence = r.fence()
	m.Mode = r.mode()
	m.WaitMs = r.u32()
	m.Name = r.name()
	m.HasValue = h.Flags&FlagConvertValue != 0
	m.Value = nil
	if m.HasValue {
		m.Value = r.value()
	}
	return r.done()
}

// Cancel (CANCEL request) withdraws a queued ACQUIRE or CONVERT of the same
// session; if it was granted meanwhile, the grant is released.
type Cancel struct {
	Target uint64 // request id of the ACQUIRE/CONVERT: 0 < Target < header Request
}

// check: the target is an earlier request of the session (earlier).
func (m Cancel) check(h *Header) error { return earlier(m.Target, h) }

// earlier checks the target of a CANCEL or GRANT_ACK: an earlier request
// of the session, 0 < target < the header's request id. It may lie below
// the ack: a request answered QUEUED does not hold the ack back (SPEC §11).
func earlier(target uint64, h *Header) error {
	if target == 0 || target >= h.Request {
		return errTarget
	}
	return nil
}

// Append appends a CANCEL datagram.
func (m Cancel) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeCancel, 0
	if err := m.check(&h); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindCancel)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Target)
	return finish(dst, start)
}

// Decode decodes a CANCEL body.
func (m *Cancel) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindCancel)
	if err != nil {
		return err
	}
	m.Target = r.u64()
	if r.err == nil {
		r.fail(m.check(&h))
	}
	return r.done()
}

// Reclaim (RECLAIM request) asks the new owner of a recovering shard to
// reinstate a grant the client held from the previous owner, with its old
// fence.
type Reclaim struct {
	Fence    uint64 // the grant's fence (issued in an earlier epoch)
	Mode     Mode   // the mode held
	Start    uint64 // the range held
	End      uint64
	Name     []byte // token name, 1..255 bytes
	HasValue bool   // flag VALUE: Value is the holder's copy of the token's value block
	Value    []byte // 0..64 bytes; only with HasValue
}

// Append appends a RECLAIM datagram. Value is ignored unless HasValue.
func (m Reclaim) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeReclaim, 0
	if m.HasValue {
		h.Flags = FlagReclaimValue
	}
	return appendGrantRef(dst, h, KindReclaim, m.Fence, m.Mode, m.Start, m.End, m.Name, m.HasValue, m.Value)
}

// Decode decodes a RECLAIM body. m.Name and m.Value alias b.
func (m *Reclaim) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindReclaim)
	if err != nil {
		return err
	}
	m.Fence = r.fence()
	m.Mode = r.mode()
	m.Start, m.End = r.rng()
	m.Name = r.name()
	m.HasValue = h.Flags&FlagReclaimValue != 0
	m.Value = nil
	if m.HasValue {
		m.Value = r.value()
	}
	return r.done()
}

// RevokeAck (REVOKE_ACK, one-way) tells the worker the client has received
// a REVOKE and handed it to the application.
type RevokeAck struct {
	Target uint64 // the REVOKE's request id (the worker's sequence), non-zero
}

// Append appends a REVOKE_ACK datagram.
func (m RevokeAck) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeRevokeAck, 0
	if m.Target == 0 {
		return dst, errZero
	}
	start, dst, err := begin(dst, &h, KindRevokeAck)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Target)
	return finish(dst, start)
}

// Decode decodes a REVOKE_ACK body.
func (m *RevokeAck) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindRevokeAck)
	if err != nil {
		return err
	}
	m.Target = r.u64()
	if r.err == nil && m.Target == 0 {
		r.fail(errZero)
	}
	return r.done()
}

// GrantAck (GRANT_ACK, one-way) tells the worker the client has the
// outcome of a request answered QUEUED: a GRANT_ASYNC, or the final reply
// to a re-poll. The worker stops retransmitting the GRANT_ASYNC and may
// forget the request's reply (SPEC §11, §12).
type GrantAck struct {
	Target uint64 // request id of the ACQUIRE/CONVERT: 0 < Target < header Request
}

func (m GrantAck) check(h *Header) error { return earlier(m.Target, h) }

// Append appends a GRANT_ACK datagram.
func (m GrantAck) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeGrantAck, 0
	if err := m.check(&h); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindGrantAck)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Target)
	return finish(dst, start)
}

// Decode decodes a GRANT_ACK body.
func (m *GrantAck) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindGrantAck)
	if err != nil {
		return err
	}
	m.Target = r.u64()
	if r.err == nil {
		r.fail(m.check(&h))
	}
	return r.done()
}

// MapRequest (MAP_REQUEST) asks for the delegation map from a shard on.
type MapRequest struct {
	FirstShard uint32
}

// Append appends a MAP_REQUEST datagram.
func (m MapRequest) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeMapRequest, 0
	start, dst, err := begin(dst, &h, KindMapRequest)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.FirstShard)
	return finish(dst, start)
}

// Decode decodes a MAP_REQUEST body.
func (m *MapRequest) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindMapRequest)
	if err != nil {
		return err
	}
	m.FirstShard = r.u32()
	return r.done()
}

// MapWorker is a worker listed in a MAP reply.
type MapWorker struct {
	Index uint16 // the worker's index in this map version (not NoWorker)
	Addr  []byte // UDP address "host:port", 1..255 bytes UTF-8
	ID    []byte // worker id, 1..255 bytes UTF-8
}

// MapRun says that Count shards from First on are served by one worker at
// one epoch.
type MapRun struct {
	First  uint32
	Count  uint32 // >= 1
	Worker uint16 // a listed MapWorker.Index, or NoWorker
	Epoch  uint32 // 1..MaxEpoch (0..MaxEpoch with NoWorker)
}

// MapReply is the body of a status-OK MAP_REQUEST reply (and of map
// announcements on the multicast group).
type MapReply struct {
	MapVersion uint64 // must equal the header's map version
	ShardCount uint32 // > 0
	GraceMs    uint32
	Workers    []MapWorker // strictly increasing Index
	Runs       []MapRun    // contiguous, within [0, ShardCount)
}

// Len returns the datagram length m encodes to, so that a worker can add
// runs while Len() <= MaxDatagram.
func (m *MapReply) Len() int {
	n := HeaderLen + 8 + 4 + 4 + 2 + 2 + 14*len(m.Runs)
	for _, w := range m.Workers {
		n += 2 + 1 + len(w.Addr) + 1 + len(w.ID)
	}
	return n
}

func (m *MapReply) checkWorker(prev int, w *MapWorker) error {
	switch {
	case int(w.Index) <= prev || w.Index == NoWorker:
		return errWorkerOrder
	case len(w.Addr) == 0 || len(w.ID) == 0:
		return errAddrLen
	}
	return first(checkText(w.Addr), checkText(w.ID))
}

// checkRun checks run i against the previous run, the shard count and the
// workers (sorted by Index).
func (m *MapReply) checkRun(i int) error {
	run := &m.Runs[i]
	if run.Count == 0 || uint64(run.First)+uint64(run.Count) > uint64(m.ShardCount) {
		return errRunGap
	}
	if i > 0 {
		if p := &m.Runs[i-1]; p.First+p.Count != run.First {
			return errRunGap
		}
	}
	if run.Worker == NoWorker {
		if run.Epoch > MaxEpoch {
			return errEpoch
		}
		return nil
	}
	if !m.hasWorker(run.Worker) {
		return errWorkerRef
	}
	return checkEpoch(run.Epoch)
}

func (m *MapReply) hasWorker(idx uint16) bool {
	lo, hi := 0, len(m.Workers)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if m.Workers[mid].Index < idx {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo < len(m.Workers) && m.Workers[lo].Index == idx
}

// Append appends a MAP reply datagram; ErrTooLarge if it does not fit.
func (m MapReply) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeMapReply, 0
	if m.MapVersion != h.MapVersion {
		return dst, errMapVersion
	}
	if m.ShardCount == 0 {
		return dst, errZero
	}
	if len(m.Workers) > 0xFFFF || len(m.Runs) > 0xFFFF || m.Len() > MaxDatagram {
		return dst, ErrTooLarge
	}
	prev := -1
	for i := range m.Workers {
		if err := m.checkWorker(prev, &m.Workers[i]); err != nil {
			return dst, err
		}
		prev = int(m.Workers[i].Index)
	}
	for i := range m.Runs {
		if err := m.checkRun(i); err != nil {
			return dst, err
		}
	}
	start, dst, err := begin(dst, &h, KindMapReply)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.MapVersion)
	dst = appendU32(dst, m.ShardCount)
	dst = appendU32(dst, m.GraceMs)
	dst = appendU16(dst, uint16(len(m.Workers)))
	for _, w := range m.Workers {
		dst = appendU16(dst, w.Index)
		dst = appendBytes8(dst, w.Addr)
		dst = appendBytes8(dst, w.ID)
	}
	dst = appendU16(dst, uint16(len(m.Runs)))
	for _, run := range m.Runs {
		dst = appendU32(dst, run.First)
		dst = appendU32(dst, run.Count)
		dst = appendU16(dst, run.Worker)
		dst = appendU32(dst, run.Epoch)
	}
	return finish(dst, start)
}

// Decode decodes a MAP reply body, reusing the capacity of m.Workers and
// m.Runs. Addresses and ids alias b.
func (m *MapReply) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindMapReply)
	if err != nil {
		return err
	}
	m.MapVersion = r.u64()
	if r.err == nil && m.MapVersion != h.MapVersion {
		r.fail(errMapVersion)
	}
	m.ShardCount = r.nonzero32()
	m.GraceMs = r.u32()
	m.Workers = m.Workers[:0]
	n := int(r.u16())
	prev := -1
	for i := 0; i < n && r.err == nil; i++ {
		w := MapWorker{Index: r.u16()}
		if r.err == nil && (int(w.Index) <= prev || w.Index == NoWorker) {
			r.fail(errWorkerOrder)
		}
		prev = int(w.Index)
		w.Addr = r.label()
		w.ID = r.label()
		m.Workers = append(m.Workers, w)
	}
	m.Runs = m.Runs[:0]
	n = int(r.u16())
	for i := 0; i < n && r.err == nil; i++ {
		m.Runs = append(m.Runs, MapRun{First: r.u32(), Count: r.u32(), Worker: r.u16(), Epoch: r.u32()})
		if r.err == nil {
			r.fail(m.checkRun(i))
		}
	}
	return r.done()
}

// Revoke (REVOKE, worker -> client) asks a holder to give back or
// downgrade a grant because another request conflicts with it.
type Revoke struct {
	Fence uint64 // the holder's grant
	Mode  Mode   // highest mode the holder may keep; NL means release
	Start uint64 // the range the conflicting request wants
	End   uint64
	Name  []byte // token name, 1..255 bytes
}

// Append appends a REVOKE datagram.
func (m Revoke) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeRevoke, 0
	return appendGrantRef(dst, h, KindRevoke, m.Fence, m.Mode, m.Start, m.End, m.Name, false, nil)
}

// Decode decodes a REVOKE body. m.Name aliases b.
func (m *Revoke) Decode(h Header, b []byte) error {
	return decodeGrantRef(h, b, KindRevoke, &m.Fence, &m.Mode, &m.Start, &m.End, &m.Name)
}

// GRANT value flags.
const (
	ValueValid uint8 = 0x01 // the value block that follows is valid
	ValueLost  uint8 = 0x02 // the value block was lost in a crash (no value follows)
)

// Grant is the body of a status-OK reply to ACQUIRE, CONVERT and RECLAIM,
// and of GRANT_ASYNC.
type Grant struct {
	Fence      uint64 // the grant's fence
	Mode       Mode   // the granted mode
	ValidityMs uint32 // ms the worker vouches for, from the client's first send of the request id
	Start      uint64 // the granted range
	End        uint64
	ValueFlags uint8  // 0, ValueValid or ValueLost
	Value      []byte // the token's value block, 0..64 bytes; empty unless ValueValid
}

func (m *Grant) check() error {
	if m.ValueFlags&^(ValueValid|ValueLost) != 0 || m.ValueFlags == ValueValid|ValueLost {
		return ErrBadFlags
	}
	if len(m.Value) > MaxValue {
		return ErrValueLength
	}
	if m.ValueFlags&ValueValid == 0 && len(m.Value) != 0 {
		return errValueFlags
	}
	return nil
}

// Append appends a datagram with a GRANT body. h.Type is the caller's:
// TypeAcquireReply, TypeConvertReply, TypeReclaimReply (h.Status OK) or
// TypeGrantAsync.
func (m Grant) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	s, e, err := wireRange(m.Start, m.End)
	if err = first(checkFence(m.Fence), checkMode(m.Mode), err, m.check()); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindGrant)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Fence)
	dst = append(dst, byte(m.Mode))
	dst = appendU32(dst, m.ValidityMs)
	dst = appendU64(dst, s)
	dst = appendU64(dst, e)
	dst = append(dst, m.ValueFlags)
	dst = appendBytes8(dst, m.Value)
	return finish(dst, start)
}

// Decode decodes a GRANT body. m.Value aliases b.
func (m *Grant) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindGrant)
	if err != nil {
		return err
	}
	m.Fence = r.fence()
	m.Mode = r.mode()
	m.ValidityMs = r.u32()
	m.Start, m.End = r.rng()
	m.ValueFlags = r.u8()
	if r.err == nil && (m.ValueFlags&^(ValueValid|ValueLost) != 0 || m.ValueFlags == ValueValid|ValueLost) {
		r.fail(ErrBadFlags)
	}
	m.Value = r.value()
	if r.err == nil && m.ValueFlags&ValueValid == 0 && len(m.Value) != 0 {
		r.fail(errValueFlags)
	}
	return r.done()
}

// Queued is the body of a QUEUED reply to ACQUIRE or CONVERT.
type Queued struct {
	Position uint32 // requests ahead of this one in the token's queue (0 = next)
}

// Append appends a QUEUED reply datagram. h.Type (TypeAcquireReply or
// TypeConvertReply) and h.Status (StatusQueued) are the caller's.
func (m Queued) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	start, dst, err := begin(dst, &h, KindQueued)
	if err != nil {
		return dst, err
	}
	dst = appendU32(dst, m.Position)
	return finish(dst, start)
}

// Decode decodes a QUEUED body.
func (m *Queued) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindQueued)
	if err != nil {
		return err
	}
	m.Position = r.u32()
	return r.done()
}

// ErrorBody is the body of every reply whose status is neither OK, QUEUED,
// NOT_OWNER nor STALE_EPOCH.
type ErrorBody struct {
	Message []byte // human-readable detail, 0..255 bytes UTF-8
}

// Append appends an error reply datagram. h.Type and h.Status are the
// caller's.
func (m ErrorBody) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	if err := checkText(m.Message); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindError)
	if err != nil {
		return dst, err
	}
	dst = appendBytes8(dst, m.Message)
	return finish(dst, start)
}

// Decode decodes an ERROR body. m.Message aliases b.
func (m *ErrorBody) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindError)
	if err != nil {
		return err
	}
	m.Message = r.text()
	return r.done()
}

// NotOwner is the body of a NOT_OWNER or STALE_EPOCH reply: an error
// message and a hint where the shard is served now.
type NotOwner struct {
	Message []byte // 0..255 bytes UTF-8
	Addr    []byte // the owner's "host:port" as this worker knows it; empty if unknown
	Epoch   uint32 // the shard's current epoch as this worker knows it; 0 if unknown
}

// Append appends a NOT_OWNER or STALE_EPOCH reply datagram. h.Type and
// h.Status are the caller's.
func (m NotOwner) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	if err := first(checkText(m.Message), checkText(m.Addr)); err != nil {
		return dst, err
	}
	if m.Epoch > MaxEpoch {
		return dst, errEpoch
	}
	start, dst, err := begin(dst, &h, KindNotOwner)
	if err != nil {
		return dst, err
	}
	dst = appendBytes8(dst, m.Message)
	dst = appendBytes8(dst, m.Addr)
	dst = appendU32(dst, m.Epoch)
	return finish(dst, start)
}

// Decode decodes a NOT_OWNER body. m.Message and m.Addr alias b.
func (m *NotOwner) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindNotOwner)
	if err != nil {
		return err
	}
	m.Message = r.text()
	m.Addr = r.text()
	m.Epoch = r.u32()
	if r.err == nil && m.Epoch > MaxEpoch {
		r.fail(errEpoch)
	}
	return r.done()
}

// appendGrantRef and decodeGrantRef encode the body that RECLAIM and REVOKE
// share: a grant's fence, a mode, a range and the token name.
func appendGrantRef(dst []byte, h Header, k Kind, fence uint64, mode Mode, start, end uint64, name []byte,
	hasValue bool, value []byte) ([]byte, error) {
	s, e, err := wireRange(start, end)
	if err = first(checkFence(fence), checkMode(mode), err, checkName(name), checkValue(value)); err != nil {
		return dst, err
	}
	begun, dst, err := begin(dst, &h, k)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, fence)
	dst = append(dst, byte(mode))
	dst = appendU64(dst, s)
	dst = appendU64(dst, e)
	dst = appendBytes8(dst, name)
	if hasValue {
		dst = appendBytes8(dst, value)
	}
	return finish(dst, begun)
}

func decodeGrantRef(h Header, b []byte, k Kind, fence *uint64, mode *Mode, start, end *uint64, name *[]byte) error {
	r, err := body(&h, b, k)
	if err != nil {
		return err
	}
	*fence = r.fence()
	*mode = r.mode()
	*start, *end = r.rng()
	*name = r.name()
	return r.done()
}

// FenceProof (FENCE_PROOF request) asks for a signed proof of a grant this
// session holds: its fence, range and token name (package fenceproof,
// SPEC.md §5). It is read-only: the worker changes nothing.
type FenceProof struct {
	Fence      uint64 // the grant's fence
	Start, End uint64 // the grant's range; the whole token is WholeStart, WholeEnd
	Name       []byte // token name, 1..255 bytes
}

// Append appends a FENCE_PROOF datagram.
func (m FenceProof) Append(dst []byte, h Header) ([]byte, error) {
	h.Type, h.Flags = TypeFenceProof, 0
	s, e, err := wireRange(m.Start, m.End)
	if err = first(checkFence(m.Fence), err, checkName(m.Name)); err != nil {
		return dst, err
	}
	start, dst, err := begin(dst, &h, KindFenceProof)
	if err != nil {
		return dst, err
	}
	dst = appendU64(dst, m.Fence)
	dst = appendU64(dst, s)
	dst = appendU64(dst, e)
	dst = appendBytes8(dst, m.Name)
	return finish(dst, start)
}

// Decode decodes a FENCE_PROOF body. m.Name aliases b.
func (m *FenceProof) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindFenceProof)
	if err != nil {
		return err
	}
	m.Fence = r.fence()
	m.Start, m.End = r.rng()
	m.Name = r.name()
	return r.done()
}

// Proof (status-OK reply to FENCE_PROOF) carries a signed fence proof. The
// codec treats it as opaque bytes; package fenceproof parses and verifies it.
type Proof struct {
	Proof []byte // 1..MaxProof bytes
}

// Append appends a FENCE_PROOF reply with status OK.
func (m Proof) Append(dst []byte, h Header) ([]byte, error) {
	h.Flags = 0
	if len(m.Proof) == 0 || len(m.Proof) > MaxProof {
		return dst, errProofLen
	}
	start, dst, err := begin(dst, &h, KindProof)
	if err != nil {
		return dst, err
	}
	dst = appendU16(dst, uint16(len(m.Proof)))
	dst = append(dst, m.Proof...)
	return finish(dst, start)
}

// Decode decodes a PROOF body. m.Proof aliases b.
func (m *Proof) Decode(h Header, b []byte) error {
	r, err := body(&h, b, KindProof)
	if err != nil {
		return err
	}
	n := r.u16()
	if r.err == nil && (n == 0 || int(n) > MaxProof) {
		r.fail(errProofLen)
	}
	m.Proof = r.take(int(n))
	return r.done()
}
