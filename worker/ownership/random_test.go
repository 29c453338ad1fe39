package ownership

import (
	"math/rand/v2"
	"testing"

	"github.com/tokend/tokend/cluster/delegation"
)

// TestRandomAgainstRules applies random map sequences (owners change, epochs
// grow as the planner makes them, maps skip versions, leases flicker,
// registrations come and go) and checks every outcome against the rules
// stated naively: what is served afterwards (invariant 5), when a state is
// handed off, and that no shard above epoch 1 starts without either the
// previous owner's state or a grace period (invariant 6).
func TestRandomAgainstRules(t *testing.T) {
	me := delegation.Owner{ID: "a", Incarnation: 1}
	owners := []delegation.Owner{me, {ID: "a", Incarnation: 2}, {ID: "b", Incarnation: 3}, {ID: "c", Incarnation: 4}}
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		n := 1 + rng.IntN(8)
		cur := delegation.Map{Owner: make([]int32, n), Epoch: make([]uint32, n), Workers: owners}
		for s := range n {
			cur.Owner[s] = delegation.NoOwner
		}
		held := make([]Held, n)
		var prev delegation.Map
		for step := range 40 {
			// The maps etcd has next: some shards move to a random owner
			// at the next epoch. The watch may miss one (skip), and then
			// the map before the new one is read from etcd's history.
			skip := rng.IntN(3) == 0
			var before delegation.Map
			for range 1 + btoi(skip) {
				before = cur
				cur = cur.Clone()
				cur.Version++
				for s := range n {
					if rng.IntN(3) == 0 {
						cur.Owner[s] = int32(rng.IntN(len(owners)))
						cur.Epoch[s]++
					}
				}
			}
			in := Input{Me: me, Held: append([]Held(nil), held...), Prev: prev, Next: cur, Safe: rng.IntN(4) > 0}
			if skip {
				in.Older = &before
			}
			if rng.IntN(10) == 0 {
				in.Me = delegation.Owner{}
			}
			pullable := map[delegation.Owner]bool{}
			for _, o := range owners {
				pullable[o] = rng.IntN(2) == 0
			}
			in.CanPull = func(o delegation.Owner) bool { return pullable[o] }
			res := Apply(in, nil)
			lastShard, lastGain := -1, false
			for _, a := range res.Actions {
				s := int(a.Shard)
				if s < lastShard || (s == lastShard && (lastGain || a.Kind == Drop || a.Kind == HandOff)) {
					t.Fatalf("seed %d step %d: actions out of order at %+v", seed, step, a)
				}
				lastShard, lastGain = s, a.Kind != Drop && a.Kind != HandOff
				h := held[s]
				switch a.Kind {
				case Drop, HandOff:
					if h.Epoch == 0 || a.Epoch != h.Epoch {
						t.Fatalf("seed %d step %d: %v of shard %d held at %d", seed, step, a.Kind, s, h.Epoch)
					}
					to, e, ok := cur.Lookup(s)
					canHand := in.Safe && h.Table && !h.Grace && in.Me != (delegation.Owner{}) && ok && to != in.Me && e == h.Epoch+1
					if (a.Kind == HandOff) != canHand {
						t.Fatalf("seed %d step %d: shard %d %v, want handoff=%v", seed, step, s, a.Kind, canHand)
					}
					if a.Kind == HandOff && a.To != to {
						t.Fatalf("seed %d step %d: shard %d handed to %v, map says %v", seed, step, s, a.To, to)
					}
					held[s] = Held{}
				case Fresh:
					if a.Epoch != 1 {
						t.Fatalf("seed %d step %d: shard %d started fresh at epoch %d (invariant 6)", seed, step, s, a.Epoch)
					}
					held[s] = Held{Epoch: 1, Table: true}
				case Pull:
					if !pullable[a.From] || a.From == in.Me || !servedBefore(a.From, s, a.Epoch-1, in.Prev, in.Older) {
						t.Fatalf("seed %d step %d: shard %d pulled from %v", seed, step, s, a.From)
					}
					held[s] = Held{Epoch: a.Epoch}
				case Recover:
					if a.Epoch < 2 {
						t.Fatalf("seed %d step %d: shard %d recovered at epoch %d", seed, step, s, a.Epoch)
					}
					held[s] = Held{Epoch: a.Epoch, Table: true, Grace: true}
				}
			}
			for s := range n {
				var want uint32
				if o, e, ok := cur.Lookup(s); ok && o == in.Me && in.Me != (delegation.Owner{}) {
					want = e
				}
				if held[s].Epoch != want {
					t.Fatalf("seed %d step %d: shard %d held at %d, map gives it at %d (invariant 5)", seed, step, s, held[s].Epoch, want)
				}
				// Time passes: pulls end, grace periods end.
				if held[s].Epoch != 0 && rng.IntN(2) == 0 {
					held[s].Table, held[s].Grace = true, false
				}
			}
			prev = cur
		}
	}
}

func servedBefore(o delegation.Owner, s int, epoch uint32, maps ...any) bool {
	for _, x := range maps {
		var m *delegation.Map
		switch v := x.(type) {
		case delegation.Map:
			m = &v
		case *delegation.Map:
			m = v
		}
		if m == nil {
			continue
		}
		if p, e, ok := m.Lookup(s); ok && p == o && e == epoch {
			return true
		}
	}
	return false
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
