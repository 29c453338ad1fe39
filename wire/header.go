package wire

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Sizes and limits of v2 (SPEC.md "Limits").
const (
	Version             = 2                       // protocol version byte
	HeaderLen           = 64                      // bytes of header before every body
	MaxDatagram         = 1200                    // largest datagram, header included
	MaxBody             = MaxDatagram - HeaderLen // largest body (1136)
	MaxName             = 255                     // token names are 1..MaxName bytes
	MaxValue            = 64                      // value blocks are 0..MaxValue bytes
	MaxText             = 255                     // error text, library, address, worker id
	MaxKeepaliveEntries = (MaxBody - 2) / 8       // KEEPALIVE entries per datagram (141)
	MaxKeyName          = 64                      // client key names are 0..MaxKeyName bytes
	MaxProof            = 1024                    // FENCE_PROOF replies carry proofs of 1..MaxProof bytes
	MaxBatch            = 8                       // ACQUIRE_BATCH entries (and GRANT_BATCH grants), 1..MaxBatch
	NonceLen            = 16                      // SESSION_OPEN client and worker nonces
	CookieLen           = 20                      // SESSION_OPEN cookies
	AuthOffset          = 48                      // the header's 12-byte auth tag
	AuthLen             = 12

	// WaitForever as ACQUIRE/CONVERT wait_ms: no worker-side limit (the
	// client cancels when its own deadline passes).
	WaitForever = uint32(0xFFFFFFFF)
	// NoWorker as a MAP run's worker index: nobody owns those shards now.
	NoWorker = uint16(0xFFFF)
)

// Header offsets (SPEC.md "Header").
const (
	magic0    = 'T' // 0x54
	magic1    = 'K' // 0x4B
	replyBit  = 0x80
	offFlags  = 4
	offStatus = 5
	offLen    = 6
	offAuth   = 48
	offCRC    = 60
	authLen   = offCRC - offAuth // 12
)

// Type is the message type byte. Requests are below 0x40, server-initiated
// messages 0x40..0x7F, and the reply to request t is t|0x80.
type Type uint8

// Message types of v1.
const (
	TypeSessionOpen  Type = 0x01
	TypeKeepalive    Type = 0x02
	TypeSessionClose Type = 0x03
	TypeAcquire      Type = 0x04
	TypeRelease      Type = 0x05
	TypeConvert      Type = 0x06
	TypeCancel       Type = 0x07
	TypeReclaim      Type = 0x08
	TypeRevokeAck    Type = 0x09 // one-way: there is no reply type 0x89
	TypeMapRequest   Type = 0x0A
	TypeFenceProof   Type = 0x0B // read-only: a signed proof of a held grant's fence
	TypeGrantAck     Type = 0x0C // one-way: the outcome of a QUEUED request arrived; there is no reply type 0x8C
	TypeAcquireBatch Type = 0x0D // all-or-none acquire of up to MaxBatch tokens of one shard, never queued
	TypeBundle       Type = 0x0E // several whole requests of one session in one datagram (SPEC §22)

	TypeRevoke     Type = 0x41 // worker -> client
	TypeGrantAsync Type = 0x42 // worker -> client

	TypeSessionOpenReply  = TypeSessionOpen | replyBit
	TypeKeepaliveReply    = TypeKeepalive | replyBit
	TypeSessionCloseReply = TypeSessionClose | replyBit
	TypeAcquireReply      = TypeAcquire | replyBit
	TypeReleaseReply      = TypeRelease | replyBit
	TypeConvertReply      = TypeConvert | replyBit
	TypeCancelReply       = TypeCancel | replyBit
	TypeReclaimReply      = TypeReclaim | replyBit
	TypeMapReply          = TypeMapRequest | replyBit
	TypeFenceProofReply   = TypeFenceProof | replyBit
	TypeAcquireBatchReply = TypeAcquireBatch | replyBit
	TypeBundleReply       = TypeBundle | replyBit // several whole replies and server messages of one session
)

// Flag bits, per type. Bits not listed for a type must be zero.
const (
	FlagRenew         uint8 = 0x01 // KEEPALIVE: renew the session's etcd lease
	FlagDone          uint8 = 0x02 // KEEPALIVE: reclaims done as of the map version that follows the entries (SPEC §13)
	FlagTry           uint8 = 0x01 // ACQUIRE, CONVERT: fail at once on conflict
	FlagReleaseValue  uint8 = 0x01 // RELEASE: a value block follows the name
	FlagConvertValue  uint8 = 0x02 // CONVERT: a value block follows the name
	FlagReclaimValue  uint8 = 0x01 // RECLAIM: the holder's copy of the value block follows the name
	FlagAcquireDetect uint8 = 0x02 // ACQUIRE: take part in cross-token deadlock detection (SPEC §19)
	FlagConvertDetect uint8 = 0x04 // CONVERT: take part in cross-token deadlock detection (SPEC §19)
	FlagAcquireGrow   uint8 = 0x04 // ACQUIRE: the worker may grant a larger range when nobody else is there (SPEC §10)
	FlagReleaseRange  uint8 = 0x02 // RELEASE: a range follows the name: give back only that prefix or suffix (SPEC §10)
	FlagBundle        uint8 = 0x01 // SESSION_OPEN: the client sends and takes BUNDLEs; its OK reply: so does the worker (SPEC §22)
)

// Kind names the body layout a datagram carries. It follows from the type
// and, for replies, the status (Header.Kind); each Kind has one body struct.
type Kind uint8

// Body kinds.
const (
	KindInvalid        Kind = iota // no valid body: unknown type or status
	KindEmpty                      // Empty: no bytes
	KindSessionOpen                // SessionOpen
	KindSessionReply               // SessionReply
	KindKeepalive                  // Keepalive
	KindKeepaliveReply             // KeepaliveReply
	KindAcquire                    // Acquire
	KindRelease                    // Release
	KindConvert                    // Convert
	KindCancel                     // Cancel
	KindReclaim                    // Reclaim
	KindRevokeAck                  // RevokeAck
	KindMapRequest                 // MapRequest
	KindMapReply                   // MapReply
	KindRevoke                     // Revoke
	KindGrant                      // Grant
	KindQueued                     // Queued
	KindError                      // ErrorBody
	KindNotOwner                   // NotOwner
	KindCookie                     // Cookie
	KindFenceProof                 // FenceProof
	KindProof                      // Proof
	KindGrantAck                   // GrantAck
	KindAcquireBatch               // AcquireBatch
	KindGrantBatch                 // GrantBatch
	KindBatchConflict              // BatchConflict
	KindBundle                     // Bundle
	numKinds
)

var kindNames = [numKinds]string{"INVALID", "EMPTY", "SESSION_OPEN", "SESSION_REPLY",
	"KEEPALIVE", "KEEPALIVE_REPLY", "ACQUIRE", "RELEASE", "CONVERT", "CANCEL", "RECLAIM",
	"REVOKE_ACK", "MAP_REQUEST", "MAP_REPLY", "REVOKE", "GRANT", "QUEUED", "ERROR", "NOT_OWNER", "COOKIE",
	"FENCE_PROOF", "PROOF", "GRANT_ACK", "ACQUIRE_BATCH", "GRANT_BATCH", "BATCH_CONFLICT",
	"BUNDLE"}

// String returns the body layout's name as used in SPEC.md and the vectors.
func (k Kind) String() string {
	if k >= numKinds {
		return fmt.Sprintf("Kind(%d)", uint8(k))
	}
	return kindNames[k]
}

// class of a type.
const (
	classNone    = iota
	classRequest // client -> worker
	classReply   // worker -> client, answers a request
	classServer  // worker -> client, server-initiated
)

// session id rule of a type.
const (
	sessNonzero = iota // an established session
	sessZero           // SESSION_OPEN: none yet
	sessAny            // MAP_REQUEST: 0 or a session
)

type typeInfo struct {
	name   string
	class  uint8
	flags  uint8 // allowed flag bits
	sess   uint8 // session rule (replies: as their request, see check)
	epoch  bool  // header epoch must be non-zero
	kind   Kind  // request body, or the body of the status-OK reply
	queued bool  // reply may carry QUEUED
}

var types = func() (t [256]typeInfo) {
	req := func(ty Type, name string, flags uint8, sess uint8, epoch bool, kind, replyKind Kind) {
		t[ty] = typeInfo{name: name, class: classRequest, flags: flags, sess: sess, epoch: epoch, kind: kind}
		if replyKind != KindInvalid {
			t[ty|replyBit] = typeInfo{name: name + "_REPLY", class: classReply, sess: sess, epoch: epoch, kind: replyKind,
				queued: ty == TypeAcquire || ty == TypeConvert}
		}
	}
	req(TypeSessionOpen, "SESSION_OPEN", FlagBundle, sessZero, false, KindSessionOpen, KindSessionReply)
	t[TypeSessionOpenReply].flags = FlagBundle // only with status OK (check)
	req(TypeKeepalive, "KEEPALIVE", FlagRenew|FlagDone, sessNonzero, false, KindKeepalive, KindKeepaliveReply)
	req(TypeSessionClose, "SESSION_CLOSE", 0, sessNonzero, false, KindEmpty, KindEmpty)
	req(TypeAcquire, "ACQUIRE", FlagTry|FlagAcquireDetect|FlagAcquireGrow, sessNonzero, true, KindAcquire, KindGrant)
	req(TypeRelease, "RELEASE", FlagReleaseValue|FlagReleaseRange, sessNonzero, true, KindRelease, KindEmpty)
	req(TypeConvert, "CONVERT", FlagTry|FlagConvertValue|FlagConvertDetect, sessNonzero, true, KindConvert, KindGrant)
	req(TypeCancel, "CANCEL", 0, sessNonzero, true, KindCancel, KindEmpty)
	req(TypeReclaim, "RECLAIM", FlagReclaimValue, sessNonzero, true, KindReclaim, KindGrant)
	req(TypeRevokeAck, "REVOKE_ACK", 0, sessNonzero, true, KindRevokeAck, KindInvalid)
	req(TypeMapRequest, "MAP_REQUEST", 0, sessAny, false, KindMapRequest, KindMapReply)
	req(TypeFenceProof, "FENCE_PROOF", 0, sessNonzero, true, KindFenceProof, KindProof)
	req(TypeGrantAck, "GRANT_ACK", 0, sessNonzero, true, KindGrantAck, KindInvalid)
	req(TypeAcquireBatch, "ACQUIRE_BATCH", 0, sessNonzero, true, KindAcquireBatch, KindGrantBatch)
	req(TypeBundle, "BUNDLE", 0, sessNonzero, false, KindBundle, KindBundle)
	t[TypeMapReply].name = "MAP_REPLY"
	t[TypeRevoke] = typeInfo{name: "REVOKE", class: classServer, sess: sessNonzero, epoch: true, kind: KindRevoke}
	t[TypeGrantAsync] = typeInfo{name: "GRANT_ASYNC", class: classServer, sess: sessNonzero, epoch: true, kind: KindGrant}
	return t
}()

// Valid reports whether t is a v1 message type.
func (t Type) Valid() bool { return types[t].class != classNone }

// IsRequest reports whether t is a client-to-worker request type.
func (t Type) IsRequest() bool { return types[t].class == classRequest }

// IsReply reports whether t is the reply to a request type.
func (t Type) IsReply() bool { return types[t].class == classReply }

// IsServer reports whether t is a server-initiated type (REVOKE, GRANT_ASYNC).
func (t Type) IsServer() bool { return types[t].class == classServer }

// Reply returns the reply type of request type t, or 0 if t has no reply
// (REVOKE_ACK, server-initiated and reply types).
func (t Type) Reply() Type {
	if t.IsRequest() && types[t|replyBit].class == classReply {
		return t | replyBit
	}
	return 0
}

// Request returns the request type a reply type answers, or 0.
func (t Type) Request() Type {
	if t.IsReply() {
		return t &^ replyBit
	}
	return 0
}

// String returns the type's name as in SPEC.md ("ACQUIRE", "ACQUIRE_REPLY").
func (t Type) String() string {
	if !t.Valid() {
		return fmt.Sprintf("Type(0x%02x)", uint8(t))
	}
	return types[t].name
}

// Header is the fixed 64-byte header of every datagram, minus the fields
// the codec owns: magic, version, body length, auth tag and checksum.
type Header struct {
	Type       Type
	Flags      uint8  // bits per type (Flag*); Append derives them from the body
	Status     Status // 0 (OK) in requests and server-initiated messages
	Session    uint64 // session id (etcd lease id, 1..2^63-1); 0 only where SPEC.md allows
	Request    uint64 // request id, never 0
	Ack        uint64 // client requests: all request ids < Ack are finished; 0 elsewhere
	Shard      uint32 // shard the message concerns (0 where none)
	Epoch      uint32 // shard epoch the sender believes; 0 = unknown where allowed
	MapVersion uint64 // sender's delegation map version
}

// Reply returns the header of the reply to request header h: the reply
// type, and h's session, request id, shard, epoch and map version; ack,
// flags and status zero. The worker sets its own map version (and status,
// and for SESSION_OPEN the new session id) before encoding.
func (h Header) Reply() Header {
	return Header{
		Type:       h.Type.Reply(),
		Session:    h.Session,
		Request:    h.Request,
		Shard:      h.Shard,
		Epoch:      h.Epoch,
		MapVersion: h.MapVersion,
	}
}

// Kind returns the body layout that h calls for: by type for requests and
// server-initiated messages; for replies, the type's own body when the status
// is OK, Queued for QUEUED, NotOwner for NOT_OWNER and STALE_EPOCH, and
// ErrorBody for every other status.
func (h Header) Kind() Kind {
	ti := &types[h.Type]
	switch ti.class {
	case classRequest, classServer:
		return ti.kind
	case classReply:
		switch {
		case h.Status == StatusOK:
			return ti.kind
		case h.Status == StatusQueued:
			if ti.queued {
				return KindQueued
			}
		case h.Status == StatusNotOwner, h.Status == StatusStaleEpoch:
			return KindNotOwner
		case h.Status == StatusCookie:
			if h.Type == TypeSessionOpenReply {
				return KindCookie
			}
		case h.Status == StatusConflict && h.Type == TypeAcquireBatchReply:
			return KindBatchConflict
		case h.Status.Valid():
			return KindError
		}
	}
	return KindInvalid
}

// check validates the header fields against SPEC.md, in the documented order
// (type, flags, status, session, request id, ack, epoch).
func (h *Header) check() error {
	ti := &types[h.Type]
	if ti.class == classNone {
		return ErrUnknownType
	}
	if h.Flags&^ti.flags != 0 || (h.Flags != 0 && h.Type == TypeSessionOpenReply && h.Status != StatusOK) {
		return ErrBadFlags
	}
	if ti.class == classReply {
		if !h.Status.Valid() {
			return ErrBadStatus
		}
		if h.Status == StatusQueued && !ti.queued {
			return errQueued
		}
		if h.Status == StatusCookie && h.Type != TypeSessionOpenReply {
			return errCookieStatus
		}
		if h.Status != StatusOK && h.Type == TypeBundleReply {
			return errBundleStatus
		}
	} else if h.Status != StatusOK {
		return ErrBadStatus
	}
	if h.Session>>63 != 0 {
		return errSessionTop
	}
	sess := ti.sess
	if h.Type == TypeSessionOpenReply && h.Status == StatusOK {
		sess = sessNonzero // the new session
	}
	switch {
	case sess == sessNonzero && h.Session == 0:
		return errSessionZero
	case sess == sessZero && h.Session != 0:
		return errSessionNonzero
	}
	if h.Request == 0 {
		return errRequestZero
	}
	if h.Ack != 0 && (ti.class != classRequest || h.Session == 0 || h.Ack > h.Request || h.Type == TypeBundle) {
		return errAck
	}
	if h.Epoch > MaxEpoch || (ti.epoch && h.Epoch == 0) {
		return errHeaderEpoch
	}
	return nil
}

// Check reports whether h obeys the header rules of SPEC.md (what ParseHeader
// checks after the checksum), returning an error wrapping ErrUnknownType,
// ErrBadFlags, ErrBadStatus or ErrBadHeader.
func (h Header) Check() error { return h.check() }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var zeroCRC [4]byte

// Checksum returns the CRC32C (Castagnoli) of datagram b with its checksum
// field (bytes 60..63) taken as zero. For len(b) < HeaderLen it returns the
// CRC32C of b as it is.
func Checksum(b []byte) uint32 {
	if len(b) < HeaderLen {
		return crc32.Checksum(b, castagnoli)
	}
	c := crc32.Update(0, castagnoli, b[:offCRC])
	c = crc32.Update(c, castagnoli, zeroCRC[:])
	return crc32.Update(c, castagnoli, b[HeaderLen:])
}

// AppendHeader appends the 64-byte header h to dst with body length,
// auth tag and checksum zero. Append the body, then call Seal on the
// datagram. It does not check h (the message encoders do).
func AppendHeader(dst []byte, h Header) []byte {
	dst = append(dst, magic0, magic1, Version, byte(h.Type), h.Flags, byte(h.Status), 0, 0)
	dst = binary.BigEndian.AppendUint64(dst, h.Session)
	dst = binary.BigEndian.AppendUint64(dst, h.Request)
	dst = binary.BigEndian.AppendUint64(dst, h.Ack)
	dst = binary.BigEndian.AppendUint32(dst, h.Shard)
	dst = binary.BigEndian.AppendUint32(dst, h.Epoch)
	dst = binary.BigEndian.AppendUint64(dst, h.MapVersion)
	var tail [authLen + 4]byte
	return append(dst, tail[:]...)
}

// Seal finishes datagram b (header followed by body, b[0] being the 'T' of
// the magic): it writes the body length and then the checksum. It returns
// ErrShort if b is shorter than a header and ErrTooLarge if it is longer
// than MaxDatagram, leaving b unchanged.
func Seal(b []byte) error {
	if len(b) < HeaderLen {
		return ErrShort
	}
	if len(b) > MaxDatagram {
		return ErrTooLarge
	}
	binary.BigEndian.PutUint16(b[offLen:], uint16(len(b)-HeaderLen))
	binary.BigEndian.PutUint32(b[offCRC:], Checksum(b))
	return nil
}

// ParseHeader validates datagram b and returns its header. The checks run in
// the order of SPEC.md: size (ErrShort, ErrTooLarge), magic (ErrBadMagic),
// version (ErrVersion), body length (ErrLength), checksum (ErrChecksum),
// then the header rules (ErrUnknownType, ErrBadFlags,
// ErrBadStatus, ErrBadHeader). On an error from the header rules the returned
// Header holds the raw fields (useful for logs); before that it is zero.
// Decode the body with the body struct that h.Kind() names. ParseHeader
// does not allocate and never panics.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrShort
	}
	if len(b) > MaxDatagram {
		return Header{}, ErrTooLarge
	}
	if b[0] != magic0 || b[1] != magic1 {
		return Header{}, ErrBadMagic
	}
	if b[2] != Version {
		return Header{}, ErrVersion
	}
	if int(binary.BigEndian.Uint16(b[offLen:])) != len(b)-HeaderLen {
		return Header{}, ErrLength
	}
	if binary.BigEndian.Uint32(b[offCRC:]) != Checksum(b) {
		return Header{}, ErrChecksum
	}
	// The auth tag (bytes 48..59) is the business of package wire/auth.
	h := Header{
		Type:       Type(b[3]),
		Flags:      b[offFlags],
		Status:     Status(b[offStatus]),
		Session:    binary.BigEndian.Uint64(b[8:]),
		Request:    binary.BigEndian.Uint64(b[16:]),
		Ack:        binary.BigEndian.Uint64(b[24:]),
		Shard:      binary.BigEndian.Uint32(b[32:]),
		Epoch:      binary.BigEndian.Uint32(b[36:]),
		MapVersion: binary.BigEndian.Uint64(b[40:]),
	}
	return h, h.check()
}
