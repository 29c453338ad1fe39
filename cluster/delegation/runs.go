package delegation

import "fmt"

// Run is a maximal stretch of consecutive shards with the same owner and
// epoch: shards First..First+Count-1 are owned by Workers[Owner] (or by
// nobody if Owner is NoOwner, with Epoch 0) at Epoch.
type Run struct {
	First, Count uint32
	Owner        int
	Epoch        uint32
}

// Runs splits a valid map into maximal runs, in shard order, covering every
// shard (unowned stretches included). It returns nil for a map with no
// shards.
func Runs(m Map) []Run {
	n := len(m.Owner)
	if n == 0 {
		return nil
	}
	c := 1
	for s := 1; s < n; s++ {
		if m.Owner[s] != m.Owner[s-1] || m.Epoch[s] != m.Epoch[s-1] {
			c++
		}
	}
	runs := make([]Run, 0, c)
	first := 0
	for s := 1; s <= n; s++ {
		if s == n || m.Owner[s] != m.Owner[first] || m.Epoch[s] != m.Epoch[first] {
			runs = append(runs, Run{First: uint32(first), Count: uint32(s - first), Owner: int(m.Owner[first]), Epoch: m.Epoch[first]})
			first = s
		}
	}
	return runs
}

// FromRuns is the inverse of Runs: it builds the map with the given version,
// shard count and worker table (copied) from runs in ascending shard order
// that do not overlap. Shards in no run are unowned; runs need not be
// maximal. The error wraps ErrBadMap or ErrShardCount.
func FromRuns(version uint64, shards int, workers []Owner, runs []Run) (Map, error) {
	if shards < 0 || shards > MaxShards {
		return Map{}, fmt.Errorf("%w: %d (want 0..%d)", ErrShardCount, shards, MaxShards)
	}
	m := Unowned(version, shards)
	if len(workers) > 0 {
		m.Workers = append([]Owner(nil), workers...)
	}
	if shards == 0 {
		m.Owner, m.Epoch = nil, nil
	}
	end := uint64(0)
	for i, r := range runs {
		first, last := uint64(r.First), uint64(r.First)+uint64(r.Count)
		switch {
		case r.Count == 0:
			return Map{}, fmt.Errorf("%w: run %d is empty", ErrBadMap, i)
		case first < end:
			return Map{}, fmt.Errorf("%w: run %d starts at shard %d, before the end of the previous one (%d)", ErrBadMap, i, first, end)
		case last > uint64(shards):
			return Map{}, fmt.Errorf("%w: run %d ends at shard %d, past the %d shards", ErrBadMap, i, last-1, shards)
		case r.Owner == NoOwner:
			if r.Epoch != 0 {
				return Map{}, fmt.Errorf("%w: unowned run %d has epoch %d", ErrBadMap, i, r.Epoch)
			}
		case r.Owner < 0 || r.Owner >= len(workers):
			return Map{}, fmt.Errorf("%w: run %d has owner index %d (table has %d)", ErrBadMap, i, r.Owner, len(workers))
		default:
			for s := first; s < last; s++ {
				m.Owner[s], m.Epoch[s] = int32(r.Owner), r.Epoch
			}
		}
		end = last
	}
	if err := m.Validate(); err != nil {
		return Map{}, err
	}
	return m, nil
}
