package table

import (
	"math"

	"github.com/tokend/tokend/wire"
)

// Decode decodes a token request (the whole datagram pkt, its header h)
// into a table input. name is the token name the header's shard must match
// (nil for CANCEL). Names and values alias pkt; the table copies what it
// keeps. The worker and testkit/fakeworker both decode with it.
func Decode(h wire.Header, pkt []byte, now int64) (in Input, name []byte, err error) {
	switch h.Type {
	case wire.TypeAcquire:
		var m wire.Acquire
		if err = m.Decode(h, pkt); err != nil {
			return in, nil, err
		}
		in = Input{Op: OpAcquire, Name: m.Name, Mode: m.Mode, Start: m.Start, End: m.End, Detect: m.Detect, Grow: m.Grow}
		in.Try, in.Deadline = waitDeadline(m.Try, m.WaitMs, now)
		return in, m.Name, nil
	case wire.TypeConvert:
		var m wire.Convert
		if err = m.Decode(h, pkt); err != nil {
			return in, nil, err
		}
		in = Input{Op: OpConvert, Name: m.Name, Mode: m.Mode, Fence: m.Fence, SetValue: m.HasValue, Value: m.Value, Detect: m.Detect}
		in.Try, in.Deadline = waitDeadline(m.Try, m.WaitMs, now)
		return in, m.Name, nil
	case wire.TypeRelease:
		var m wire.Release
		if err = m.Decode(h, pkt); err != nil {
			return in, nil, err
		}
		return Input{Op: OpRelease, Name: m.Name, Fence: m.Fence, SetValue: m.HasValue, Value: m.Value,
			Partial: m.HasRange, Start: m.Start, End: m.End}, m.Name, nil
	case wire.TypeCancel:
		var m wire.Cancel
		if err = m.Decode(h, pkt); err != nil {
			return in, nil, err
		}
		return Input{Op: OpCancel, Target: m.Target}, nil, nil
	case wire.TypeReclaim:
		var m wire.Reclaim
		if err = m.Decode(h, pkt); err != nil {
			return in, nil, err
		}
		return Input{Op: OpReclaim, Name: m.Name, Mode: m.Mode, Fence: m.Fence, Start: m.Start, End: m.End,
			SetValue: m.HasValue, Value: m.Value}, m.Name, nil
	}
	return in, nil, wire.ErrKind
}

// waitDeadline turns wait_ms into the table's Try and Deadline: TRY (or
// wait 0, SPEC §17.5) fails at once, WaitForever never times out.
func waitDeadline(try bool, waitMs uint32, now int64) (bool, int64) {
	switch {
	case try || waitMs == 0:
		return true, now
	case waitMs == wire.WaitForever:
		return false, math.MaxInt64
	}
	return false, now + int64(waitMs)*1e6 // ms to the table's ns
}
