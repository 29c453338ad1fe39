// Package plan is tokend's shard-assignment planner: a pure function from the
// live workers, the shard count and the current delegation map to the next
// delegation map and the list of shard moves between the two.
//
// It sits under coordinator/: the elected leader reads the worker registry
// (/tokend/workers/) and the current map from etcd, calls [Plan], writes the
// new map under /tokend/delegation/ in a txn fenced by its election key, and
// uses the returned [Move] list to know which shards changed hands and
// whether each change is a planned handoff or a recovery. The package has no
// etcd, no clock, no goroutines and no logging; besides the standard library
// it imports only cluster/delegation, which defines the map.
//
// # Workers and the map
//
// A worker is identified by its id and its incarnation (the etcd lease id it
// registered under): a worker that restarts comes back with a new incarnation
// and counts as a different worker, so the shards of its old incarnation move
// (get new epochs) even if they go back to the same id. Such a pair is a
// [delegation.Owner], and the map is a [delegation.Map]: its worker table,
// owner index and epoch per shard, and a version that increases by one each
// time [Plan] changes any shard. That package also has the map's runs and its
// JSON form (the etcd value).
//
// # What Plan promises
//
//   - Balanced: the eligible workers, which are the live workers that are not
//     draining (or all live workers if every one of them is draining), end
//     with shard counts that differ by at most one. Draining workers end with
//     no shards unless no other worker is live.
//   - Minimal and sticky: a shard moves only if its owner is gone (dead,
//     restarted, absent from the live list), is draining, or holds more than
//     its share. The number of moved shards is the lower bound
//     n - Σ min(kept_w, target_w) with the larger targets given to the most
//     loaded workers; no worker both loses and gains shards.
//   - Epochs: every shard whose owner changes, including from none to a
//     worker, gets epoch old+1; every other shard keeps its epoch. If a shard
//     that must move is already at MaxEpoch, Plan returns [ErrExhausted] and
//     no map.
//   - Deterministic: the result depends only on the set of live workers, the
//     shard count and the map's content, never on the order of the live list
//     or of the map's worker table. The new map's table lists the owning
//     workers sorted by id, then incarnation.
//   - No live workers: the map is left as it is (same version, no moves). The
//     shards keep their last owner and epoch instead of becoming unowned, so
//     that when a worker appears the move is classified as a [Recovery] (the
//     new owner waits out the grace period for the dead owner's grants,
//     invariant 6 of docs/ARCHITECTURE.md) and not as a fresh assignment. A shard that
//     never had an owner stays unowned with epoch 0.
//
// Donors give up their highest-numbered shards, and the freed shards are
// handed out in shard order to the workers that need them, in (id,
// incarnation) order, so a worker's shards stay in few contiguous runs.
package plan
