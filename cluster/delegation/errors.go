package delegation

import "errors"

// Errors returned by this package. Callers test them with errors.Is; the
// returned errors wrap them with details.
var (
	// ErrBadMap: a map (validated, built from runs or decoded from JSON)
	// breaks the rules documented on Map.
	ErrBadMap = errors.New("delegation: bad map")
	// ErrShardCount: FromRuns was given a shard count outside 0..MaxShards.
	ErrShardCount = errors.New("delegation: bad shard count")
)
