package wire

import "fmt"

// Fence layout: fence = epoch<<SeqBits | seq (SPEC.md "Fences").
const (
	EpochBits = 24
	SeqBits   = 40
	// MaxEpoch is the largest shard epoch (2^24-1). Epoch 0 means "unknown"
	// and never appears in a fence.
	MaxEpoch = 1<<EpochBits - 1
	// MaxSeq is the largest per-epoch sequence number (2^40-1). Sequence
	// numbers start at 1 in each epoch.
	MaxSeq = 1<<SeqBits - 1
)

// MakeFence returns the fence of grant number seq in shard epoch epoch.
// Fences of one token strictly increase as long as epochs only grow and seq
// only grows within an epoch (invariant 2). MakeFence panics if epoch >
// MaxEpoch or seq > MaxSeq: a wrapped fence would break that invariant, so
// the caller must refuse first (status EXHAUSTED).
func MakeFence(epoch uint32, seq uint64) uint64 {
	if epoch > MaxEpoch || seq > MaxSeq {
		panic(fmt.Sprintf("wire: MakeFence(%d, %d) out of range", epoch, seq))
	}
	return uint64(epoch)<<SeqBits | seq
}

// FenceEpoch returns the shard epoch a fence was issued in.
func FenceEpoch(f uint64) uint32 { return uint32(f >> SeqBits) }

// FenceSeq returns the per-epoch sequence number of a fence.
func FenceSeq(f uint64) uint64 { return f & MaxSeq }

// ValidFence reports whether f could have been issued: its epoch and its
// sequence number are both non-zero.
func ValidFence(f uint64) bool { return FenceEpoch(f) != 0 && FenceSeq(f) != 0 }

// Byte ranges [start, end) of a token. The whole token is [WholeStart,
// WholeEnd); on the wire it is written as start = end = 0, and decoders
// return it as WholeStart, WholeEnd.
const (
	WholeStart uint64 = 0
	WholeEnd   uint64 = 1<<64 - 1
)

// IsWhole reports whether [start, end) is the whole token, in either
// spelling: 0,0 or WholeStart,WholeEnd.
func IsWhole(start, end uint64) bool {
	return start == 0 && (end == 0 || end == WholeEnd)
}
