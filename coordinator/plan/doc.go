// Package plan is tokend's shard-assignment planner: a pure function from the
// live workers, the shard count and the current delegation map to the next
// delegation map and the list of shard moves between the two.
//
// It sits under coordinator/: the elected leader reads the worker registry
// (/tokend/workers/) and the current map from etcd, calls [Plan], writes the
// new map under /tokend/delegation/ in a txn fenced by its election key, and
// uses the returned [Move] list to know which shards changed hands and
// whether each change is a planned handoff or a recovery. The package has no
// etcd, no clock, no goroutines and no logging; it imports only the standard
// library.
//
// # Workers and the map
//
// A worker is identified by its id and its incarnation (the etcd lease id it
// registered under): a worker that restarts comes back with a new incarnation
// and counts as a different worker, so the shards of its old incarnation move
// (get new epochs) even if they go back to the same id. Such a pair is an
// [Owner].
//
// A [Map] is compact: a worker table (Workers) plus two slices indexed by
// shard, Owner (an index into Workers, or [NoOwner]) and Epoch. An unowned
// shard has epoch 0; an owned shard has an epoch in 1..[MaxEpoch] (2^24-1, so
// that the epoch fits in the high bits of a token's fence). Version increases
// by one each time [Plan] changes any shard.
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
//
// # Runs
//
// [Runs] splits a map into maximal runs of consecutive shards with the same
// owner and epoch (unowned runs included, so the runs cover every shard);
// [FromRuns] is its inverse. The wire protocol sends the map as runs.
//
// # JSON form (the etcd value)
//
// [Map.MarshalJSON] writes one line of JSON, readable with etcdctl get:
//
//		{"version":7,"shards":8,"workers":[{"id":"w1","incarnation":"694d5765fc71500b","ranges":[[0,3,1],[6,1,2]]},{"id":"w2","incarnation":"1b","ranges":[[3,3,1],[7,1,2]]}]}
//
//	  - version: the map version, a decimal number.
//	  - shards: the shard count.
//	  - workers: the worker table, in table order (index i in Map.Workers is the
//	    i-th entry). id is the worker id; incarnation is the lease id in
//	    lowercase hexadecimal without leading zeros, as etcdctl prints lease ids,
//	    and a string because JSON numbers above 2^53 are not exact in jq or
//	    JavaScript.
//	  - ranges: the worker's shards as [first, count, epoch] triples: shards
//	    first..first+count-1 all at that epoch. Marshal writes maximal runs in
//	    ascending order. A shard in no range is unowned (epoch 0).
//
// Unmarshal accepts ranges in any order and adjacent ranges that could have
// been merged, ignores unknown fields, and rejects overlapping or
// out-of-range ranges, epochs outside 1..MaxEpoch, counts of zero, empty or
// duplicate workers, and bad incarnations (all wrap [ErrBadMap]). A map
// round-trips exactly: unmarshalling what Marshal wrote gives an equal map,
// and marshalling it again gives the same bytes.
//
// Size: a range costs at most 20 bytes ("[65535,1,16777215],"), so even the
// worst case of 65,536 shards each in its own run at the largest epoch, with
// 1,000 workers, is about 1.3 MB, under etcd's default 1.5 MiB request limit;
// a freshly balanced map is about 80 kB and one after 500 rounds of random
// joins, crashes and restarts about 200 kB (see TestJSONSize).
package plan
