package plan

import "errors"

// Errors returned by this package. Callers test them with errors.Is; the
// returned errors wrap them with details. A current map that breaks the rules
// of delegation.Map is refused with an error that wraps
// delegation.ErrBadMap.
var (
	// ErrBadWorker: a live worker has an empty id, or the live list names the
	// same (id, incarnation) twice.
	ErrBadWorker = errors.New("plan: bad worker")
	// ErrShardCount: the shard count is outside 1..delegation.MaxShards or
	// differs from the current map's.
	ErrShardCount = errors.New("plan: bad shard count")
	// ErrExhausted: a shard that must move is already at
	// delegation.MaxEpoch, or the map version cannot grow any more.
	ErrExhausted = errors.New("plan: epoch or version exhausted")
)
