// Package ownership decides which shards a worker serves when its
// delegation map changes: the pure core of the worker's applyMap.
//
// Given the worker's identity, the map it served by, the new map (and,
// optionally, an older one read from etcd's history) and what it holds of
// each shard, Apply returns one action per change: stop serving a shard
// (Drop), stop and keep its final state for the new owner to pull
// (HandOff), or start serving one: from the previous owner's state (Pull),
// in a grace period after an owner that cannot hand over (Recover,
// invariant 6), or afresh at epoch 1 (Fresh). A shard is served only if the
// new map gives it to this incarnation, at the map's epoch (invariant 5).
//
// Like worker/table it reads no clock, does no I/O and starts no goroutine:
// times are nanoseconds on the caller's monotonic clock. The worker (its
// shell) carries the actions out: tables, handoff connections, logs.
package ownership
