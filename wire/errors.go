package wire

import (
	"errors"
	"fmt"
)

// Errors returned by this package. Callers test them with errors.Is; every
// error a decoder or encoder returns is one of these or wraps exactly one of
// them. SPEC.md ("Validation order") says which check yields which error, and
// the invalid vectors in testdata/vectors.txt name them.
var (
	// ErrBadMode: a mode byte is not one of NL..EX (also returned by ParseMode).
	ErrBadMode = errors.New("wire: bad mode")

	// ErrShort: the datagram is shorter than the 64-byte header, or a body
	// field runs past the end of the body.
	ErrShort = errors.New("wire: datagram too short")
	// ErrTooLarge: the datagram (or a datagram being encoded) exceeds
	// MaxDatagram bytes, or a count exceeds its bound.
	ErrTooLarge = errors.New("wire: datagram too large")
	// ErrBadMagic: the first two bytes are not "TK".
	ErrBadMagic = errors.New("wire: bad magic")
	// ErrVersion: the version byte is not Version.
	ErrVersion = errors.New("wire: unsupported version")
	// ErrLength: the body length field differs from the datagram length - 64.
	ErrLength = errors.New("wire: body length mismatch")
	// ErrChecksum: the CRC32C field does not match the datagram.
	ErrChecksum = errors.New("wire: checksum mismatch")
	// ErrUnknownType: the type byte is not a v1 message type.
	ErrUnknownType = errors.New("wire: unknown message type")
	// ErrBadFlags: a flag bit undefined for the message type is set (also
	// used for the GRANT value flags).
	ErrBadFlags = errors.New("wire: bad flags")
	// ErrBadStatus: a request carries a non-zero status, a reply an undefined
	// status, or a status appears where it is not allowed.
	ErrBadStatus = errors.New("wire: bad status")
	// ErrBadHeader: a header field breaks a rule of SPEC.md (session id,
	// request id, ack or epoch).
	ErrBadHeader = errors.New("wire: bad header field")
	// ErrNameLength: a token name is empty (names are 1..255 bytes).
	ErrNameLength = errors.New("wire: bad name length")
	// ErrValueLength: a value block is longer than MaxValue bytes.
	ErrValueLength = errors.New("wire: bad value length")
	// ErrBadRange: a byte range has start >= end, or spells the whole range
	// other than as 0,0.
	ErrBadRange = errors.New("wire: bad range")
	// ErrBadBody: a body is otherwise malformed (trailing bytes, bad fence,
	// bad UTF-8, zero or inconsistent counts, a map that does not add up).
	ErrBadBody = errors.New("wire: bad body")
	// ErrKind: a body decoder or encoder was used with a header whose type
	// and status call for a different body. A programming error, not bad
	// input: use Header.Kind to pick the decoder.
	ErrKind = errors.New("wire: body does not match header")
)

// Detailed errors, allocated once so that rejecting a datagram never
// allocates (a flood of garbage must stay cheap, invariant 7).
var (
	errTrailing       = fmt.Errorf("%w: trailing bytes", ErrBadBody)
	errFence          = fmt.Errorf("%w: fence with zero epoch or zero seq", ErrBadBody)
	errUTF8           = fmt.Errorf("%w: message is not UTF-8", ErrBadBody)
	errZero           = fmt.Errorf("%w: field must not be zero", ErrBadBody)
	errEpoch          = fmt.Errorf("%w: epoch zero or above MaxEpoch", ErrBadBody)
	errTarget         = fmt.Errorf("%w: target request id not in [1, request id)", ErrBadBody)
	errValueFlags     = fmt.Errorf("%w: value bytes without VALID", ErrBadBody)
	errMapVersion     = fmt.Errorf("%w: body map version differs from header", ErrBadBody)
	errWorkerOrder    = fmt.Errorf("%w: worker indexes not strictly increasing", ErrBadBody)
	errWorkerRef      = fmt.Errorf("%w: run names an unlisted worker", ErrBadBody)
	errRunGap         = fmt.Errorf("%w: runs not contiguous or past shard count", ErrBadBody)
	errAddrLen        = fmt.Errorf("%w: empty worker address or id", ErrBadBody)
	errRangeWhole     = fmt.Errorf("%w: whole range must be sent as 0,0", ErrBadRange)
	errRangeEmpty     = fmt.Errorf("%w: start >= end", ErrBadRange)
	errSessionTop     = fmt.Errorf("%w: session id has the top bit set", ErrBadHeader)
	errSessionZero    = fmt.Errorf("%w: session id must not be zero", ErrBadHeader)
	errSessionNonzero = fmt.Errorf("%w: session id must be zero", ErrBadHeader)
	errRequestZero    = fmt.Errorf("%w: request id is zero", ErrBadHeader)
	errAck            = fmt.Errorf("%w: ack not allowed here or greater than request id", ErrBadHeader)
	errHeaderEpoch    = fmt.Errorf("%w: epoch zero or above MaxEpoch", ErrBadHeader)
	errEntryStatus    = fmt.Errorf("%w: keepalive entry status not OK, NOT_OWNER or STALE_EPOCH", ErrBadStatus)
	errQueued         = fmt.Errorf("%w: QUEUED only answers ACQUIRE or CONVERT", ErrBadStatus)
	errCookieStatus   = fmt.Errorf("%w: COOKIE only answers SESSION_OPEN", ErrBadStatus)
	errBundleStatus   = fmt.Errorf("%w: BUNDLE_REPLY status must be OK", ErrBadStatus)
	errBundleEmpty    = fmt.Errorf("%w: bundle without datagrams", ErrBadBody)
	errBundleEntry    = fmt.Errorf("%w: bundled datagram shorter than a header", ErrBadBody)
	errBundleType     = fmt.Errorf("%w: bundled datagram of a type a bundle cannot carry", ErrBadBody)
	errBundleSession  = fmt.Errorf("%w: bundled datagram of another session", ErrBadBody)
	errKeyName        = fmt.Errorf("%w: key name longer than 64 bytes or not UTF-8", ErrBadBody)
	errCookieLen      = fmt.Errorf("%w: cookie neither empty nor 20 bytes", ErrBadBody)
	errProofLen       = fmt.Errorf("%w: proof not 1..MaxProof bytes", ErrBadBody)
	errEntries        = fmt.Errorf("%w: more than MaxKeepaliveEntries entries", ErrTooLarge)
)

// reasons maps each sentinel to a short label, in the order Reason tries them.
var reasons = [...]struct {
	err   error
	label string
}{
	{ErrShort, "short"},
	{ErrTooLarge, "too_large"},
	{ErrBadMagic, "bad_magic"},
	{ErrVersion, "version"},
	{ErrLength, "length"},
	{ErrChecksum, "checksum"},
	{ErrUnknownType, "unknown_type"},
	{ErrBadFlags, "bad_flags"},
	{ErrBadStatus, "bad_status"},
	{ErrBadHeader, "bad_header"},
	{ErrNameLength, "name_length"},
	{ErrValueLength, "value_length"},
	{ErrBadMode, "bad_mode"},
	{ErrBadRange, "bad_range"},
	{ErrBadBody, "bad_body"},
	{ErrKind, "kind"},
}

// Reason returns a short, stable label for the sentinel err wraps ("checksum",
// "short", "bad_body", ...), for a "dropped datagrams by reason" metric. It
// returns "" for nil and "other" for errors not from this package.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}
