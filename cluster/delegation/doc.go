// Package delegation is tokend's delegation map: which worker serves each
// shard, at which epoch. It is the value the elected coordinator writes under
// /tokend/delegation/map (see package cluster for the key layout) and that
// workers and operators read back; the coordinator's planner
// (coordinator/plan) computes it, workers serve by it and send it to clients
// as runs. The package is pure: standard library only, no clock, no I/O, no
// goroutines, so that worker and coordinator share the type without
// importing each other.
//
// # Owners and the map
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
// by one each time the planner changes any shard.
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
// joins, crashes and restarts about 200 kB (see TestJSONSize in coordinator/plan).
package delegation
