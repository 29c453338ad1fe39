package plan

import "errors"

// Errors returned by this package. Callers test them with errors.Is; the
// returned errors wrap them with details.
var (
	// ErrBadWorker: a live worker has an empty id, or the live list names the
	// same (id, incarnation) twice.
	ErrBadWorker = errors.New("plan: bad worker")
	// ErrShardCount: the shard count is outside 1..MaxShards or differs from
	// the current map's.
	ErrShardCount = errors.New("plan: bad shard count")
	// ErrBadMap: a map (given to Plan, built from runs or decoded from JSON)
	// breaks the rules documented on Map.
	ErrBadMap = errors.New("plan: bad map")
	// ErrExhausted: a shard that must move is already at MaxEpoch, or the map
	// version cannot grow any more.
	ErrExhausted = errors.New("plan: epoch or version exhausted")
)
