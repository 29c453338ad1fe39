package ownership

import (
	"github.com/tokend/tokend/cluster/delegation"
)

// Held is what the worker holds of one shard.
type Held struct {
	Epoch uint32 // the epoch it serves the shard at; 0: not held
	Table bool   // it has the shard's table (false while pulling its state)
	Grace bool   // the table is in its recovery grace period
}

// Input is everything Apply decides from.
type Input struct {
	Me   delegation.Owner // this incarnation; zero while unregistered (serves nothing)
	Held []Held           // by shard: the cluster's shard count
	Prev delegation.Map   // the map applied until now (zero: none)
	// Older, if not nil, is a map older than Next read from etcd's
	// history, to find previous owners when Prev is not Next's predecessor.
	Older *delegation.Map
	Next  delegation.Map // the map to apply
	// Safe: the worker's lease is safe now. A worker that cannot vouch for
	// its lease may have lost it, and the leader may have treated the move
	// as a recovery: it hands off nothing.
	Safe bool
	// CanPull reports whether owner o is registered under that
	// incarnation with a handoff address (nil: nobody is).
	CanPull func(o delegation.Owner) bool
}

// Kind is what to do with a shard.
type Kind uint8

const (
	// Drop: stop serving the shard; nothing is kept.
	Drop Kind = iota + 1
	// HandOff: stop serving the shard and keep its final state (table and
	// final replies) for To to pull at Epoch.
	HandOff
	// Pull: serve the shard at Epoch once From's state arrives; until then
	// token requests are answered UNAVAILABLE.
	Pull
	// Recover: serve the shard at Epoch with a new table in its grace
	// period: the previous owner's grants may still be valid (invariant 6).
	Recover
	// Fresh: serve the shard at epoch 1 with a new table: nobody served it
	// before.
	Fresh
)

var kindNames = [...]string{Drop: "drop", HandOff: "handoff", Pull: "pull", Recover: "recover", Fresh: "fresh"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "?"
}

// Action is one decision about one shard.
type Action struct {
	Kind  Kind
	Shard uint32
	Epoch uint32           // Drop, HandOff: the epoch given up; the others: the epoch served from now on
	To    delegation.Owner // HandOff: the new owner, at Epoch+1
	// From: Pull: the previous owner; Recover: the owner of Epoch-1 if a
	// map known here names one (zero: unknown). The worker ends a
	// recovery's grace early only after an owner it knows is gone
	// (worker/grace).
	From delegation.Owner
}

// Outcome is what Apply decided.
type Outcome struct {
	// BadMap: Next has another shard count than the cluster. It is
	// applied as a map that gives this worker nothing.
	BadMap  bool
	Actions []Action // by shard; a shard's loss comes before its gain
}

// Apply decides how the worker's shards follow in.Next. A shard is served
// afterwards iff Next gives it to in.Me, at Next's epoch; every shard held
// at another epoch is given up first. Actions are appended to out.
func Apply(in Input, out []Action) Outcome {
	next := in.Next
	o := Outcome{}
	if next.Shards() != 0 && next.Shards() != len(in.Held) {
		o.BadMap, next = true, delegation.Map{}
	}
	for s, cur := range in.Held {
		shard := uint32(s)
		want := wanted(in.Me, next, s)
		if cur.Epoch == want {
			continue
		}
		if cur.Epoch != 0 {
			out = append(out, giveUp(in, next, shard, cur))
		}
		if want == 0 {
			continue
		}
		if want == 1 {
			out = append(out, Action{Kind: Fresh, Shard: shard, Epoch: want})
		} else if from, ok := predecessor(in, shard, want); ok {
			out = append(out, Action{Kind: Pull, Shard: shard, Epoch: want, From: from})
		} else {
			out = append(out, Action{Kind: Recover, Shard: shard, Epoch: want, From: from})
		}
	}
	o.Actions = out
	return o
}

// wanted is the epoch at which m gives shard s to me, 0 if it does not.
func wanted(me delegation.Owner, m delegation.Map, s int) uint32 {
	if me == (delegation.Owner{}) {
		return 0
	}
	if o, e, ok := m.Lookup(s); ok && o == me {
		return e
	}
	return 0
}

// giveUp decides between Drop and HandOff for a shard held as cur that
// next takes away. The state is kept for a planned handoff only if this
// incarnation is registered, its lease is safe, it has a table out of its
// grace period, and next moves the shard to another owner at the very
// next epoch.
func giveUp(in Input, next delegation.Map, shard uint32, cur Held) Action {
	drop := Action{Kind: Drop, Shard: shard, Epoch: cur.Epoch}
	if !cur.Table || cur.Grace || !in.Safe || in.Me == (delegation.Owner{}) {
		return drop
	}
	to, e, ok := next.Lookup(int(shard))
	if !ok || to == in.Me || e != cur.Epoch+1 {
		return drop
	}
	return Action{Kind: HandOff, Shard: shard, Epoch: cur.Epoch, To: to}
}

// predecessor returns the owner that served shard at epoch-1 by the first
// of Prev and Older that knows one, if it is another worker, and whether
// it can be pulled from.
func predecessor(in Input, shard, epoch uint32) (delegation.Owner, bool) {
	for _, m := range []*delegation.Map{&in.Prev, in.Older} {
		if m == nil {
			continue
		}
		o, e, ok := m.Lookup(int(shard))
		if !ok || e != epoch-1 || o == in.Me {
			continue
		}
		return o, in.CanPull != nil && in.CanPull(o)
	}
	return delegation.Owner{}, false
}

// GraceEnd is when the grace period of a shard recovered at now ends:
// grace after now. The previous owner vouched for its grants no longer
// than its lease, which etcd has expired or revoked by the time the map
// gives the shard away without a handoff.
func GraceEnd(now, grace int64) int64 { return now + grace }

// FallbackGraceEnd is when the grace period of a shard whose planned
// handoff failed ends. The old owner stopped vouching for the shard when
// it applied the map, at the latest now; its grants last at most its lease
// TTL beyond that, and their holders get the grace period after that to
// reclaim. If its registration is gone (gone), its vouching is over
// already: the grace period alone, as after a crash.
func FallbackGraceEnd(now, oldTTL, grace int64, gone bool) int64 {
	if gone {
		return now + grace
	}
	return now + oldTTL + grace
}
