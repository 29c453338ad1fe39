package table

import (
	"errors"
	"fmt"

	"github.com/tokend/tokend/wire"
)

// Limits of the protocol that the table enforces. They are the wire
// protocol's, named here for readers of this package.
const (
	MaxNameLen  = wire.MaxName  // token names are 1..MaxNameLen bytes
	MaxValueLen = wire.MaxValue // a value block holds at most MaxValueLen bytes

	// WholeStart and WholeEnd delimit the whole token: [0, 2^64-1).
	WholeStart uint64 = wire.WholeStart
	WholeEnd   uint64 = wire.WholeEnd

	// MaxEpoch is the largest shard epoch (epochs are < 2^24).
	MaxEpoch = wire.MaxEpoch
	// SeqBits is the width of the per-shard sequence in a fence.
	SeqBits = wire.SeqBits
	// MaxSeq is the last sequence number of an epoch; the table answers
	// StatusExhausted instead of wrapping.
	MaxSeq = wire.MaxSeq
)

// Fence composes a fence from an epoch and a sequence number:
// epoch<<40 | seq (wire.MakeFence, which the table never calls out of range).
func Fence(epoch uint32, seq uint64) uint64 { return wire.MakeFence(epoch, seq) }

// FenceEpoch returns the epoch part of a fence.
func FenceEpoch(f uint64) uint32 { return wire.FenceEpoch(f) }

// FenceSeq returns the sequence part of a fence.
func FenceSeq(f uint64) uint64 { return wire.FenceSeq(f) }

// Errors returned by this package (not by Step, which answers with a Status).
// Callers test them with errors.Is.
var (
	ErrBadEpoch    = errors.New("table: bad epoch")
	ErrInGrace     = errors.New("table: shard is in its grace period")
	ErrBadSnapshot = errors.New("table: bad snapshot")
	// ErrEnding: Export while a session is part-ended (EndSession in
	// steps). The shell finishes every pending end of a shard before it
	// exports it, so that a snapshot never carries a dead session's grants.
	ErrEnding = errors.New("table: a session is part-ended")
)

// Config holds the per-table limits. A zero limit means "no limit".
type Config struct {
	// MaxWaitersPerToken bounds the queued requests (acquires and
	// conversions) of one token; one more gets StatusLimit.
	MaxWaitersPerToken int
	// MaxGrantsPerSession bounds the grants plus queued acquires of one
	// session in this table; one more gets StatusLimit.
	MaxGrantsPerSession int
}

// DefaultConfig returns the limits a worker uses unless told otherwise.
func DefaultConfig() Config {
	return Config{MaxWaitersPerToken: 1024, MaxGrantsPerSession: 1 << 20}
}

// Op says which request an Input carries.
type Op uint8

// The operations. Each one except OpEndSession is a client request, answered
// by exactly one KindReply output.
const (
	// OpAcquire: Session, Req, Name, Mode, Start, End, Try, Deadline, Grow.
	OpAcquire Op = iota + 1
	// OpConvert: Session, Req, Name, Fence, Mode, Try, Deadline, and
	// SetValue/Value (downgrade from PW/EX only).
	OpConvert
	// OpRelease: Session, Req, Name, Fence, and SetValue/Value (PW/EX only);
	// with Partial, only [Start, End), a prefix or suffix of the grant.
	OpRelease
	// OpCancel: Session, Req (of the cancel itself), Target (the request
	// id of the queued acquire or convert).
	OpCancel
	// OpReclaim: Session, Req, Name, Mode, Start, End, Fence (the old one),
	// and SetValue/Value: the holder's copy of the value block, which
	// restores a value lost in a crash if the holder is PR, PW or EX.
	OpReclaim
	// OpEndSession: Session. The session's lease is gone: all its grants
	// and waiters go at once. No reply. Table.EndSession does the same in
	// bounded steps.
	OpEndSession
	// OpDeadlock: Session, Target. A deadlock detector chose the queued
	// acquire or conversion Target of Session as the victim of a wait-for
	// cycle across tokens: if it still waits, it ends with StatusDeadlock
	// (a KindAsync output) and leaves its queue; the session's grants stay.
	// If it no longer waits, nothing happens. No reply.
	OpDeadlock
)

var opNames = [...]string{"?", "acquire", "convert", "release", "cancel", "reclaim", "end-session", "deadlock"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Input is one request to the table, a tagged struct: Op says which fields
// matter (see the Op constants). The table does not retain Name or Value:
// it copies the name once when it creates a token and the value when it
// stores it, so both may point into a datagram buffer.
type Input struct {
	Op       Op
	Session  uint64    // session id, > 0
	Req      uint64    // request id (per session)
	Target   uint64    // OpCancel: request id to cancel
	Name     []byte    // token name, 1..MaxNameLen bytes
	Mode     wire.Mode // requested mode
	Start    uint64    // byte range [Start, End); the whole token is [WholeStart, WholeEnd)
	End      uint64
	Fence    uint64 // OpRelease, OpConvert: the grant; OpReclaim: its old fence
	Deadline int64  // absolute, same clock as now: a queued request times out when now >= Deadline
	Try      bool   // fail with StatusConflict instead of queueing
	Detect   bool   // OpAcquire, OpConvert: the wait takes part in cross-token deadlock detection (WaitEdges)
	Grow     bool   // OpAcquire: if no other session holds or waits on the token, grant the largest free range around [Start, End)
	Partial  bool   // OpRelease: give back only [Start, End), a prefix or suffix of the grant; the rest keeps its fence
	SetValue bool   // OpRelease, OpConvert: set the token's value block to Value; OpReclaim: the holder's copy
	Value    []byte // at most MaxValueLen bytes
}

// Status is the outcome of a request: the wire status code itself, so the
// shell sends it as it is. The table produces only the codes below, never
// those that only the shell knows (NOT_OWNER, STALE_EPOCH, UNKNOWN_SESSION,
// UNAVAILABLE, INTERNAL). SESSION_EXPIRED is the shell's answer to a
// session that ended; the table gives it only to a session it is ending in
// steps (Table.EndSession), which the shell has stopped forwarding anyway.
type Status = wire.Status

// The statuses the table produces.
const (
	StatusOK             = wire.StatusOK             // granted, released, converted, canceled
	StatusQueued         = wire.StatusQueued         // waiting; a KindAsync output ends the wait
	StatusConflict       = wire.StatusConflict       // a TRY request would have had to wait
	StatusTimeout        = wire.StatusTimeout        // the deadline passed while waiting
	StatusGrace          = wire.StatusGrace          // the shard is recovering: only reclaims now
	StatusBadRequest     = wire.StatusBadRequest     // malformed or not allowed in this state
	StatusNotHeld        = wire.StatusNotHeld        // no such grant (or request) for this session
	StatusLimit          = wire.StatusLimit          // too many waiters on the token or grants in the session
	StatusReclaimRefused = wire.StatusReclaimRefused // not in grace, or conflicts with reclaimed grants
	StatusCanceled       = wire.StatusCanceled       // a queued request was canceled or its grant released
	StatusExhausted      = wire.StatusExhausted      // no fence left in this epoch
	StatusDeadlock       = wire.StatusDeadlock       // the request would wait in a wait-for cycle: it was chosen to fail
	StatusSessionExpired = wire.StatusSessionExpired // the session is being ended (Table.EndSession): it may gain nothing
)

// Kind says what an Output is.
type Kind uint8

const (
	// KindReply answers the Input of this Step (Session, Req).
	KindReply Kind = iota + 1
	// KindAsync is the final outcome of a request that was answered
	// StatusQueued earlier (Session, Req): StatusOK with the grant (send
	// GRANT_ASYNC), StatusTimeout, StatusCanceled, StatusExhausted, or
	// StatusDeadlock (OpDeadlock). Every queued request gets exactly one, unless its session ends first.
	KindAsync
	// KindRevoke asks the holder Session to give back its grant Fence on
	// Name: keep at most Mode (NL: release) on [Start, End). It is emitted
	// once per (grant state, waiter) pair; the shell retransmits it.
	KindRevoke
)

func (k Kind) String() string {
	switch k {
	case KindReply:
		return "reply"
	case KindAsync:
		return "async"
	case KindRevoke:
		return "revoke"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ValueFlags describe a value block in a grant; the bits are those of the
// GRANT body's value flags.
type ValueFlags uint8

const (
	ValueValid ValueFlags = 1 << 0 // Value holds the token's value block
	ValueLost  ValueFlags = 1 << 1 // no value has been set since the shard was recovered from a crash
)

// Output is a reply or an effect of a Step or Tick.
//
// A grant (KindReply or KindAsync with StatusOK, from acquire, convert or
// reclaim) fills Fence, Mode, Start, End, Name, Value and VFlags. A
// KindReply with StatusQueued fills Position (1 = first in line). A cancel's
// StatusOK reply has Released set, and Fence, when a grant was released
// rather than a waiter removed. A partial release's StatusOK reply fills Fence,
// Mode, Start and End with what the grant keeps (a full release: Fence
// only). Name and Value are immutable strings owned
// by the table; they stay valid after the Step.
type Output struct {
	Kind     Kind
	Status   Status
	Mode     wire.Mode // granted mode, or the mode a revoke wants kept
	VFlags   ValueFlags
	Released bool   // cancel reply: the request had been granted; that grant was released
	Position uint32 // queued reply: place in the token's queue
	Session  uint64 // the requester, or the holder for a revoke
	Req      uint64 // the request answered (0 for a revoke)
	Fence    uint64
	Start    uint64
	End      uint64
	Name     string
	Value    string
	Entry    int // AcquireAll: the entry the reply is about (the granted one, or the one that failed)
}

// MaxBatch is the most entries one AcquireAll (one ACQUIRE_BATCH) carries.
const MaxBatch = wire.MaxBatch

// BatchEntry is one token of an AcquireAll: a name, a mode and a byte range
// [Start, End). Like Input, the table does not retain Name.
type BatchEntry struct {
	Name  []byte
	Mode  wire.Mode
	Start uint64
	End   uint64
}

// Edge is one wait of a queued request, as a deadlock detector across
// tokens and shards needs it: request (Session, Req), queued on token Name
// since Since (the now of the Step that queued it), cannot be granted before
// session Holder gives something up: its grant Fence (which overlaps and
// conflicts), or, with Fence 0, its request HolderReq queued ahead on the
// same token (FIFO: the waiter is granted only after it). Conv says the
// waiter is a conversion. Name is owned by the table, like Output.Name.
type Edge struct {
	Session, Req     uint64
	Since            int64
	Conv             bool
	Holder           uint64
	Fence, HolderReq uint64
	Name             string
}

// Stats counts what a table holds, for the shell's metrics.
type Stats struct {
	Tokens   int // tokens in memory (held, queued, or keeping a value)
	Grants   int
	Waiters  int
	Sessions int
	Seq      uint64 // fences issued in this epoch
}
