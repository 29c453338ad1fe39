package plan

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/tokend/tokend/cluster/delegation"
)

// Worker is a live worker as the registry shows it.
type Worker struct {
	ID          string
	Incarnation uint64 // the etcd lease id it registered under
	Draining    bool   // it is being removed: move its shards elsewhere
}

// Owner returns the worker's identity in a Map.
func (w Worker) Owner() delegation.Owner {
	return delegation.Owner{ID: w.ID, Incarnation: w.Incarnation}
}

// MoveKind says what the new owner of a moved shard has to do.
type MoveKind uint8

const (
	// Assign: the shard had no owner; nothing to hand off or recover.
	Assign MoveKind = iota + 1
	// Handoff: the old owner is live (possibly draining); it transfers the
	// shard's state to the new owner, no grace period.
	Handoff
	// Recovery: the old owner is gone (its lease expired, or it restarted
	// under a new incarnation); the new owner rebuilds the shard from client
	// reclaims and grants nothing new until the grace period is over.
	Recovery
)

func (k MoveKind) String() string {
	switch k {
	case Assign:
		return "assign"
	case Handoff:
		return "handoff"
	case Recovery:
		return "recovery"
	}
	return fmt.Sprintf("MoveKind(%d)", uint8(k))
}

// Move is one shard changing owner.
type Move struct {
	Shard uint32
	From  delegation.Owner // the zero Owner if Kind is Assign
	To    delegation.Owner // the new owner
	Epoch uint32           // the new epoch: the old one plus one
	Kind  MoveKind
}

// wstate is the planner's view of one live worker.
type wstate struct {
	kept   int32 // shards it owns in the current map and may keep
	target int32 // shards it ends with
	keep   int32 // how many of those it keeps; counts down in the pass
	need   int32 // shards it still has to receive
	out    int32 // its index in the new map's table, or -1
	elig   bool  // it may own shards
}

// Plan returns the delegation map that follows cur given the live workers
// and the shard count, and the moves that lead from cur to it, in shard
// order. The package comment lists what the result promises (balance,
// minimal sticky moves, epochs, determinism, no live workers).
//
// cur may be the zero Map when there is no map yet; otherwise its shard count
// must equal shards. Plan does not modify live or cur, and the returned map
// shares no memory with cur. If nothing changes, the returned map equals cur
// (same version) and there are no moves; otherwise its version is
// cur.Version+1.
func Plan(live []Worker, shards int, cur delegation.Map) (delegation.Map, []Move, error) {
	if shards < 1 || shards > delegation.MaxShards {
		return delegation.Map{}, nil, fmt.Errorf("%w: %d (want 1..%d)", ErrShardCount, shards, delegation.MaxShards)
	}
	if err := cur.Validate(); err != nil {
		return delegation.Map{}, nil, err
	}
	fresh := cur.Shards() == 0
	if !fresh && cur.Shards() != shards {
		return delegation.Map{}, nil, fmt.Errorf("%w: %d, but the current map has %d shards", ErrShardCount, shards, cur.Shards())
	}
	ws, err := sortWorkers(live)
	if err != nil {
		return delegation.Map{}, nil, err
	}
	if len(ws) == 0 {
		if fresh {
			return delegation.Unowned(cur.Version, shards), nil, nil
		}
		return cur.Clone(), nil, nil
	}

	// The eligible workers: those not draining, or all if all are.
	st := make([]wstate, len(ws))
	order := make([]int32, 0, len(ws))
	for i := range ws {
		if !ws[i].Draining {
			st[i].elig = true
			order = append(order, int32(i))
		}
	}
	if len(order) == 0 {
		for i := range ws {
			st[i].elig = true
			order = append(order, int32(i))
		}
	}

	// tab maps the current table to live workers (-1: gone).
	tab := make([]int32, len(cur.Workers))
	for i, o := range cur.Workers {
		j, ok := slices.BinarySearchFunc(ws, o, func(w Worker, o delegation.Owner) int { return w.Owner().Compare(o) })
		tab[i] = -1
		if ok {
			tab[i] = int32(j)
		}
	}
	if !fresh {
		for _, o := range cur.Owner {
			if o != delegation.NoOwner {
				if w := tab[o]; w >= 0 && st[w].elig {
					st[w].kept++
				}
			}
		}
	}

	// Targets: q or q+1 each; the q+1 go to the workers that hold the most
	// (then in id order), which keeps the most shards in place. A worker
	// keeps up to its target of the shards it holds, the lowest-numbered
	// ones, and every other shard moves.
	slices.SortStableFunc(order, func(a, b int32) int { return cmp.Compare(st[b].kept, st[a].kept) })
	k := len(order)
	q, r := int32(shards/k), shards%k
	moves := shards
	for i, w := range order {
		s := &st[w]
		s.target = q
		if i < r {
			s.target++
		}
		s.keep = min(s.kept, s.target)
		s.need = s.target - s.keep
		moves -= int(s.keep)
	}
	if moves == 0 {
		return cur.Clone(), nil, nil
	}
	if cur.Version == math.MaxUint64 {
		return delegation.Map{}, nil, fmt.Errorf("%w: map version %d", ErrExhausted, cur.Version)
	}

	// The new table: the eligible workers with a nonzero target, in
	// (id, incarnation) order.
	nt := 0
	for i := range st {
		if st[i].elig && st[i].target > 0 {
			nt++
		}
	}
	next := delegation.Map{
		Version: cur.Version + 1,
		Workers: make([]delegation.Owner, 0, nt),
		Owner:   make([]int32, shards),
		Epoch:   make([]uint32, shards),
	}
	for i := range st {
		st[i].out = -1
		if st[i].elig && st[i].target > 0 {
			st[i].out = int32(len(next.Workers))
			next.Workers = append(next.Workers, ws[i].Owner())
		}
	}

	// One pass in shard order. The shards that move go, in shard order, to
	// the workers that need shards, in table order, filling one before the
	// next, so that a worker's new shards are contiguous where possible.
	mv := make([]Move, 0, moves)
	rw := 0 // the worker receiving now
	for s := range shards {
		var (
			old  uint32
			from delegation.Owner
			kind = Assign
		)
		if !fresh {
			if o := cur.Owner[s]; o != delegation.NoOwner {
				if w := tab[o]; w >= 0 && st[w].elig && st[w].keep > 0 {
					st[w].keep--
					next.Owner[s], next.Epoch[s] = st[w].out, cur.Epoch[s]
					continue
				}
				from, kind = cur.Workers[o], Recovery
				if tab[o] >= 0 {
					kind = Handoff
				}
			}
			old = cur.Epoch[s]
		}
		if old >= delegation.MaxEpoch {
			return delegation.Map{}, nil, fmt.Errorf("%w: shard %d must move but is at epoch %d", ErrExhausted, s, old)
		}
		for !st[rw].elig || st[rw].need == 0 {
			rw++
		}
		st[rw].need--
		next.Owner[s], next.Epoch[s] = st[rw].out, old+1
		mv = append(mv, Move{Shard: uint32(s), From: from, To: next.Workers[st[rw].out], Epoch: old + 1, Kind: kind})
	}
	return next, mv, nil
}

// sortWorkers returns the live workers sorted by (id, incarnation), checking
// for empty ids and duplicates.
func sortWorkers(live []Worker) ([]Worker, error) {
	ws := slices.Clone(live)
	slices.SortFunc(ws, func(a, b Worker) int { return a.Owner().Compare(b.Owner()) })
	for i, w := range ws {
		if w.ID == "" {
			return nil, fmt.Errorf("%w: empty id (incarnation %x)", ErrBadWorker, w.Incarnation)
		}
		if i > 0 && ws[i-1].Owner() == w.Owner() {
			return nil, fmt.Errorf("%w: %v listed twice", ErrBadWorker, w.Owner())
		}
	}
	return ws, nil
}
