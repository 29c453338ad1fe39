package plan

import (
	"slices"

	"github.com/tokend/tokend/cluster/delegation"
)

// This file holds the test oracle: a naive planner that is slow but
// obviously correct, and the lower bound on moves, computed independently of
// the planner's choice of targets.

// slot is one shard's assignment, independent of any worker table.
type slot struct {
	owner delegation.Owner
	has   bool
	epoch uint32
}

// slots returns m's assignment per shard, or n unowned slots if m has none.
func slots(m delegation.Map, n int) []slot {
	if m.Shards() == 0 {
		return make([]slot, n)
	}
	out := make([]slot, m.Shards())
	for s, o := range m.Owner {
		if o != delegation.NoOwner {
			out[s] = slot{owner: m.Workers[o], has: true, epoch: m.Epoch[s]}
		}
	}
	return out
}

// eligible returns the workers that may own shards: the non-draining ones,
// or all if every live worker is draining.
func eligible(live []Worker) map[delegation.Owner]bool {
	e := map[delegation.Owner]bool{}
	for _, w := range live {
		if !w.Draining {
			e[w.Owner()] = true
		}
	}
	if len(e) == 0 {
		for _, w := range live {
			e[w.Owner()] = true
		}
	}
	return e
}

// naivePlan is the oracle: release every shard whose owner may not own
// shards, give released shards one by one to the least loaded worker, then
// move shards one by one from the most loaded to the least loaded until they
// are within one. Ties go to the smallest (id, incarnation). Epochs bump on
// every shard whose final owner differs from its first.
func naivePlan(live []Worker, n int, cur []slot) []slot {
	out := slices.Clone(cur)
	elig := eligible(live)
	if len(elig) == 0 {
		return out
	}
	var keys []delegation.Owner
	for o := range elig {
		keys = append(keys, o)
	}
	slices.SortFunc(keys, delegation.Owner.Compare)
	load := map[delegation.Owner]int{}
	var pool []int
	for s := range out {
		if out[s].has && elig[out[s].owner] {
			load[out[s].owner]++
		} else {
			pool = append(pool, s)
		}
	}
	for {
		least, most := keys[0], keys[0]
		for _, k := range keys {
			if load[k] < load[least] {
				least = k
			}
			if load[k] > load[most] {
				most = k
			}
		}
		if len(pool) > 0 {
			out[pool[0]].owner, out[pool[0]].has = least, true
			pool = pool[1:]
			load[least]++
			continue
		}
		if load[most]-load[least] <= 1 {
			break
		}
		for s := n - 1; s >= 0; s-- {
			if out[s].has && out[s].owner == most {
				out[s].owner = least
				break
			}
		}
		load[most]--
		load[least]++
	}
	for s := range out {
		if out[s].has != cur[s].has || out[s].owner != cur[s].owner {
			out[s].epoch = cur[s].epoch + 1
		}
	}
	return out
}

// lowerBound is the fewest shards any balanced plan must move: n minus the
// most shards the eligible workers can keep. With targets q or q+1 (r of the
// latter), a worker keeps min(c, q), plus one more for up to r workers that
// hold more than q.
func lowerBound(live []Worker, n int, cur []slot) int {
	elig := eligible(live)
	if len(elig) == 0 {
		return 0
	}
	c := map[delegation.Owner]int{}
	for _, sl := range cur {
		if sl.has && elig[sl.owner] {
			c[sl.owner]++
		}
	}
	q, r := n/len(elig), n%len(elig)
	keep, over := 0, 0
	for o := range elig {
		keep += min(c[o], q)
		if c[o] > q {
			over++
		}
	}
	return n - keep - min(r, over)
}

// moved counts the shards whose owner differs between a and b.
func moved(a, b []slot) int {
	c := 0
	for s := range a {
		if a[s].has != b[s].has || a[s].owner != b[s].owner {
			c++
		}
	}
	return c
}

// loads returns the shard count of each owner in ss.
func loads(ss []slot) map[delegation.Owner]int {
	l := map[delegation.Owner]int{}
	for _, sl := range ss {
		if sl.has {
			l[sl.owner]++
		}
	}
	return l
}
