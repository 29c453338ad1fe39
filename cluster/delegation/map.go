package delegation

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
)

const (
	// MaxEpoch is the largest shard epoch: epochs use 24 bits so they fit in
	// the high bits of a token's fence.
	MaxEpoch = 1<<24 - 1
	// MaxShards is the largest shard count a map may have.
	MaxShards = 1 << 20
	// NoOwner is the owner index of an unowned shard.
	NoOwner = -1
)

// Owner identifies one incarnation of a worker: its id and the etcd lease id
// it registered under. A restarted worker has a new incarnation and is a
// different owner.
type Owner struct {
	ID          string
	Incarnation uint64
}

// String returns "id/incarnation" with the incarnation in hex, as etcdctl
// prints lease ids.
func (o Owner) String() string {
	return o.ID + "/" + strconv.FormatUint(o.Incarnation, 16)
}

// Compare orders owners by id, then incarnation, as the worker table of a
// planned map is sorted.
func (o Owner) Compare(p Owner) int {
	if c := cmp.Compare(o.ID, p.ID); c != 0 {
		return c
	}
	return cmp.Compare(o.Incarnation, p.Incarnation)
}

// Map is the delegation map: which owner serves each shard, at which epoch.
//
// A valid map (see Validate) has len(Owner) == len(Epoch) == the shard count
// (at most MaxShards; zero means "no map yet"); each Owner[s] is NoOwner or an
// index into Workers; an unowned shard has epoch 0 and an owned one an epoch
// in 1..MaxEpoch; Workers has no empty id and no duplicate. Workers may list
// owners that own no shard. Maps made by the planner (coordinator/plan) list
// exactly the owners of at least one shard, sorted by id then incarnation.
type Map struct {
	Version uint64
	Workers []Owner  // the worker table
	Owner   []int32  // per shard: index into Workers, or NoOwner
	Epoch   []uint32 // per shard: 0 if unowned, else 1..MaxEpoch
}

// Shards returns the shard count (0 for the zero Map).
func (m Map) Shards() int { return len(m.Owner) }

// Lookup returns the owner and epoch of shard s; ok is false if s is out of
// range or unowned.
func (m Map) Lookup(s int) (o Owner, epoch uint32, ok bool) {
	if s < 0 || s >= len(m.Owner) || m.Owner[s] == NoOwner {
		return Owner{}, 0, false
	}
	return m.Workers[m.Owner[s]], m.Epoch[s], true
}

// Clone returns a copy of m that shares no memory with it.
func (m Map) Clone() Map {
	return Map{
		Version: m.Version,
		Workers: slices.Clone(m.Workers),
		Owner:   slices.Clone(m.Owner),
		Epoch:   slices.Clone(m.Epoch),
	}
}

// Equal reports whether m and o have the same version, the same worker table
// and the same owner and epoch for every shard. Nil and empty slices are
// equal.
func (m Map) Equal(o Map) bool {
	return m.Version == o.Version &&
		slices.Equal(m.Workers, o.Workers) &&
		slices.Equal(m.Owner, o.Owner) &&
		slices.Equal(m.Epoch, o.Epoch)
}

// Validate reports whether m follows the rules documented on Map; the error
// wraps ErrBadMap.
func (m Map) Validate() error {
	n := len(m.Owner)
	if len(m.Epoch) != n {
		return fmt.Errorf("%w: %d owners but %d epochs", ErrBadMap, n, len(m.Epoch))
	}
	if n > MaxShards {
		return fmt.Errorf("%w: %d shards (max %d)", ErrBadMap, n, MaxShards)
	}
	if err := checkTable(m.Workers); err != nil {
		return err
	}
	nw := int32(len(m.Workers))
	for s, o := range m.Owner {
		e := m.Epoch[s]
		switch {
		case o == NoOwner:
			if e != 0 {
				return fmt.Errorf("%w: unowned shard %d has epoch %d", ErrBadMap, s, e)
			}
		case o < 0 || o >= nw:
			return fmt.Errorf("%w: shard %d has owner index %d (table has %d)", ErrBadMap, s, o, nw)
		case e == 0 || e > MaxEpoch:
			return fmt.Errorf("%w: shard %d has epoch %d (want 1..%d)", ErrBadMap, s, e, MaxEpoch)
		}
	}
	return nil
}

// checkTable checks a worker table for empty ids and duplicates.
func checkTable(ws []Owner) error {
	sorted := true
	for i, w := range ws {
		if w.ID == "" {
			return fmt.Errorf("%w: worker %d has an empty id", ErrBadMap, i)
		}
		if i > 0 && ws[i-1].Compare(w) >= 0 {
			sorted = false
		}
	}
	if sorted {
		return nil
	}
	c := slices.Clone(ws)
	slices.SortFunc(c, Owner.Compare)
	for i := 1; i < len(c); i++ {
		if c[i-1] == c[i] {
			return fmt.Errorf("%w: worker %v listed twice", ErrBadMap, c[i])
		}
	}
	return nil
}

// Unowned returns a map of n shards that nobody owns (every owner NoOwner,
// every epoch 0), with the given version and an empty worker table.
func Unowned(version uint64, n int) Map {
	m := Map{Version: version, Owner: make([]int32, n), Epoch: make([]uint32, n)}
	for s := range m.Owner {
		m.Owner[s] = NoOwner
	}
	return m
}
