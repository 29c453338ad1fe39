// Package grace decides when a worker may end the grace period of shards
// it recovered from a crashed owner before its deadline: as soon as every
// session that may still reclaim a grant in them has reclaimed or said it
// holds nothing there (wire/SPEC.md section 13, "Early end of grace";
// docs/ARCHITECTURE.md section 6). A session that says nothing is waited
// for until the deadline, which the table keeps (worker/table).
//
// The rule. The shell starts a recovery (Start) for each shard it takes
// over without a handoff, at the version of the map that gave it the
// shard, and only when the previous owner is known and gone (its
// registration is absent from etcd at the read below). It then reads the
// live sessions from etcd (Live), at a revision after it applied that map:
// a session created later cannot hold a grant of the dead owner, whose
// grants were all made to sessions that already existed. Those sessions
// are awaited. A session stops being awaited when
//
//   - it ends (End): its grants are gone with it, or
//   - it says Done with a map version v such that the recovery's version
//     ≤ v ≤ the version this worker has applied (Map). v ≥ the recovery's
//     version means the session's map gives it the shard at the recovery's
//     epoch (epochs grow on every move, and this worker still serves the
//     shard at that epoch up to its own version); v ≤ it, that this
//     worker can tell. A Done for a version it has not applied yet is kept
//     and counts once it has. A client sends Done only after every RECLAIM
//     it sent there was answered, so a Done never overtakes its reclaims.
//
// When a recovery awaits nobody, its shards still in grace end it early.
// Recoveries started by one map share one set of awaited sessions.
//
// Like worker/table it reads no clock, does no I/O and starts no
// goroutine; the worker carries the decisions out.
package grace

import "sort"

// Reason says why grace ended early.
type Reason uint8

const (
	// AllDone: every awaited session said Done (or ended).
	AllDone Reason = iota + 1
	// NoSessions: no live session was awaited at all.
	NoSessions
)

func (r Reason) String() string {
	switch r {
	case AllDone:
		return "all_done"
	case NoSessions:
		return "no_sessions"
	}
	return "?"
}

// Ended is a shard whose grace period may end now.
type Ended struct {
	Shard, Epoch uint32
	Reason       Reason
}

// Tracker follows the recoveries of one worker incarnation. Not safe for
// concurrent use: the worker's mutex guards it.
type Tracker struct {
	version uint64            // the map version the worker has applied
	done    map[uint64]uint64 // session -> highest map version it said Done for
	groups  []*group
	gen     uint64 // groups created so far
}

// group is the recoveries started by one map: its shards still in grace and
// the sessions they wait for.
type group struct {
	version uint64            // the map that started them
	gen     uint64            // its creation number: a Live read tagged gen covers it
	shards  map[uint32]uint32 // shard -> epoch, still in grace here
	live    bool              // await is known
	empty   bool              // no session was awaited from the start
	await   map[uint64]struct{}
}

// New returns a tracker with nothing to follow.
func New() *Tracker { return &Tracker{done: map[uint64]uint64{}} }

// Map records that the worker applied the map of version v, and returns
// the shards whose grace may end now (Done messages for versions up to v
// count from now on). Versions never go back.
func (t *Tracker) Map(v uint64, out []Ended) []Ended {
	if v > t.version {
		t.version = v
	}
	return t.settle(out)
}

// Start begins a recovery of shard at epoch, given by the map of version v
// (the version applied, as passed to Map). It waits for a Live read made
// after it.
func (t *Tracker) Start(shard, epoch uint32, v uint64) {
	t.Drop(shard)
	var g *group
	if n := len(t.groups); n > 0 && t.groups[n-1].version == v && !t.groups[n-1].live {
		g = t.groups[n-1]
	} else {
		t.gen++
		g = &group{version: v, gen: t.gen, shards: map[uint32]uint32{}}
		t.groups = append(t.groups, g)
	}
	g.shards[shard] = epoch
}

// Drop forgets the recovery of shard: it left this worker, or its grace
// period ended anyway.
func (t *Tracker) Drop(shard uint32) {
	for i := 0; i < len(t.groups); i++ {
		g := t.groups[i]
		if _, ok := g.shards[shard]; !ok {
			continue
		}
		delete(g.shards, shard)
		if len(g.shards) == 0 {
			t.groups = append(t.groups[:i], t.groups[i+1:]...)
		}
		return
	}
}

// NeedLive returns the tag for a read of the live sessions if a recovery
// waits for one: the shell reads them from etcd (after the map that
// started it was applied) and passes them to Live with this tag.
func (t *Tracker) NeedLive() (gen uint64, ok bool) {
	for _, g := range t.groups {
		if !g.live {
			return t.gen, true
		}
	}
	return 0, false
}

// Live gives the sessions alive in etcd as read by a read tagged gen,
// minus those this worker has seen end. Every recovery started before that
// tag awaits them, except those that said Done already.
func (t *Tracker) Live(gen uint64, sessions []uint64, out []Ended) []Ended {
	for _, g := range t.groups {
		if g.live || g.gen > gen {
			continue
		}
		g.live, g.await = true, make(map[uint64]struct{}, len(sessions))
		for _, s := range sessions {
			g.await[s] = struct{}{}
		}
		g.empty = len(g.await) == 0
	}
	return t.settle(out)
}

// Done records that session said Done for map version v. It costs one
// lookup per recovery group, whatever the number of sessions awaited.
func (t *Tracker) Done(session, v uint64, out []Ended) []Ended {
	if v > t.done[session] {
		t.done[session] = v
	}
	for _, g := range t.groups {
		if _, ok := g.await[session]; ok && t.counts(g, session) {
			delete(g.await, session)
		}
	}
	return t.finish(out)
}

// End records that session ended: it is awaited no more.
func (t *Tracker) End(session uint64, out []Ended) []Ended {
	delete(t.done, session)
	for _, g := range t.groups {
		delete(g.await, session)
	}
	return t.finish(out)
}

// Awaited returns how many sessions the recovery of shard still waits for,
// and whether it is tracked and its live sessions known.
func (t *Tracker) Awaited(shard uint32) (n int, known bool) {
	for _, g := range t.groups {
		if _, ok := g.shards[shard]; ok {
			if !g.live {
				return 0, false
			}
			for s := range g.await {
				if !t.counts(g, s) {
					n++
				}
			}
			return n, true
		}
	}
	return 0, false
}

// counts reports whether session's Done counts for g.
func (t *Tracker) counts(g *group, session uint64) bool {
	v, ok := t.done[session]
	return ok && v >= g.version && v <= t.version
}

// settle stops awaiting every session whose Done counts now (after the
// applied version or the live sessions changed), then ends what awaits
// nobody.
func (t *Tracker) settle(out []Ended) []Ended {
	for _, g := range t.groups {
		if g.live {
			for s := range g.await {
				if t.counts(g, s) {
					delete(g.await, s)
				}
			}
		}
	}
	return t.finish(out)
}

// finish ends every group that awaits nobody, appending its shards (in
// shard order) to out.
func (t *Tracker) finish(out []Ended) []Ended {
	kept := t.groups[:0]
	for _, g := range t.groups {
		if !g.live || len(g.await) > 0 {
			kept = append(kept, g)
			continue
		}
		r := AllDone
		if g.empty {
			r = NoSessions
		}
		start := len(out)
		for s, e := range g.shards {
			out = append(out, Ended{Shard: s, Epoch: e, Reason: r})
		}
		sort.Slice(out[start:], func(i, j int) bool { return out[start+i].Shard < out[start+j].Shard })
	}
	clear(t.groups[len(kept):])
	t.groups = kept
	return out
}
