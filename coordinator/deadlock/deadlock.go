// Package deadlock finds cycles of waits between client sessions across
// tokens, shards and workers, and chooses which waiting request to fail so
// that each cycle breaks. It is the pure core of the coordinator leader's
// deadlock detector (wire/SPEC.md section 19): no sockets, goroutines, clock
// or logging. The shell gathers the waits every worker reports in one round
// (worker/table.WaitEdges, sent as cluster.WaitEdge), calls
//
//	victims := d.Round(waits)
//
// and tells each victim's worker to answer that request DEADLOCK.
//
// # Rules
//
// A wait says: request (Worker, Shard, Epoch, Session, Req) cannot be granted
// before session Holder gives up its grant Fence, or, with Fence 0, before
// Holder's request HolderReq queued ahead of it on the same token is granted.
// The graph has one node per session and an edge from the waiting session to
// the holder; a session is taken to keep what it holds until what it waits
// for is granted (the DLM's assumption). A session waiting for itself is not
// a cycle: it may give the grant back on its own (its revoke handler can).
//
// Only waits reported identically (same request, same holder, same fence or
// request ahead) in two consecutive rounds count. A request that leaves a
// queue never comes back under the same id, a fence names one grant whose
// mode only goes down (an upgrade gets a new fence), so a wait seen in both
// rounds held all the time in between; when round k+1 starts after round k
// has ended, every confirmed wait held at one common instant, and a cycle of
// confirmed waits was a real cycle at that instant, not an artefact of
// snapshots taken at different times on different workers.
//
// Victims: while the confirmed graph has a cycle, the youngest request
// (smallest age; ties by worker, shard, session, request) among those whose
// wait lies on a cycle (inside a strongly connected component) is chosen and
// its waits are removed; this repeats until no cycle is left. A cycle of two
// sessions therefore loses exactly one request, the younger one.
package deadlock

import (
	"cmp"
	"slices"
)

// Wait is one wait-for edge as a worker reports it.
type Wait struct {
	Worker       string // the worker that reported it (id and incarnation, as the shell names it)
	Shard, Epoch uint32
	Session, Req uint64 // the waiting request
	Age          int64  // how long it had waited when reported (any unit, the same for all)
	Holder       uint64 // the session it waits for
	Fence        uint64 // the holder's grant that blocks it, or 0 ...
	HolderReq    uint64 // ... the holder's request queued ahead of it
}

// Request names one waiting request.
type Request struct {
	Worker       string
	Shard, Epoch uint32
	Session, Req uint64
}

// Victim is a request chosen to fail with DEADLOCK, and the sessions of
// the cycle it breaks (in the order of the waits, starting with its own).
type Victim struct {
	Request
	Age   int64
	Cycle []uint64
}

type key struct {
	Request
	holder, fence, holderReq uint64
}

// Detector keeps the waits of the previous round. The zero value is ready.
type Detector struct {
	prev map[key]int64 // waits of the last round -> age
}

// Reset forgets the previous round (e.g. when leadership changes hands).
func (d *Detector) Reset() { d.prev = nil }

// Round takes every wait reported in one round and returns the victims,
// ordered by (worker, shard, session, request). Waits of a session for
// itself are ignored.
func (d *Detector) Round(waits []Wait) []Victim {
	cur := make(map[key]int64, len(waits))
	var confirmed []Wait
	for _, w := range waits {
		if w.Holder == w.Session {
			continue
		}
		k := key{Request{w.Worker, w.Shard, w.Epoch, w.Session, w.Req}, w.Holder, w.Fence, w.HolderReq}
		if _, dup := cur[k]; dup {
			continue
		}
		cur[k] = w.Age
		if _, ok := d.prev[k]; ok {
			confirmed = append(confirmed, w)
		}
	}
	d.prev = cur
	return Victims(confirmed)
}

// Victims returns the victims of the cycles among waits, taking every wait
// as confirmed (Round filters them first).
func Victims(waits []Wait) []Victim {
	g := newGraph(waits)
	var out []Victim
	for {
		comp := g.components()
		best := -1
		for i, w := range g.waits {
			if !g.dead[i] && w.Holder != w.Session && comp[w.Session] == comp[w.Holder] {
				if best < 0 || younger(w, g.waits[best]) {
					best = i
				}
			}
		}
		if best < 0 {
			break
		}
		v := g.waits[best]
		r := Request{v.Worker, v.Shard, v.Epoch, v.Session, v.Req}
		out = append(out, Victim{Request: r, Age: v.Age, Cycle: g.cycle(best, comp)})
		for i, w := range g.waits {
			if w.Worker == r.Worker && w.Shard == r.Shard && w.Epoch == r.Epoch && w.Session == r.Session && w.Req == r.Req {
				g.dead[i] = true
			}
		}
	}
	slices.SortFunc(out, func(a, b Victim) int { return compareReq(a.Request, b.Request) })
	return out
}

// younger orders waits by age, then by request, so that the choice is the
// same whatever order the waits came in.
func younger(a, b Wait) bool {
	if a.Age != b.Age {
		return a.Age < b.Age
	}
	return cmp.Or(compareReq(Request{a.Worker, a.Shard, a.Epoch, a.Session, a.Req},
		Request{b.Worker, b.Shard, b.Epoch, b.Session, b.Req}),
		cmp.Compare(a.Holder, b.Holder), cmp.Compare(a.Fence, b.Fence), cmp.Compare(a.HolderReq, b.HolderReq)) < 0
}

// younger3 is younger as a comparison (-1, 0, 1).
func younger3(a, b Wait) int {
	switch {
	case younger(a, b):
		return -1
	case younger(b, a):
		return 1
	}
	return 0
}

func compareReq(a, b Request) int {
	return cmp.Or(cmp.Compare(a.Worker, b.Worker), cmp.Compare(a.Shard, b.Shard), cmp.Compare(a.Epoch, b.Epoch),
		cmp.Compare(a.Session, b.Session), cmp.Compare(a.Req, b.Req))
}

// graph is the session wait-for graph; dead marks waits removed with
// their victims.
type graph struct {
	waits []Wait
	dead  []bool
	nodes []uint64         // sessions, sorted
	index map[uint64]int   // session -> node
	out   map[uint64][]int // session -> its waits
}

func newGraph(waits []Wait) *graph {
	g := &graph{waits: waits, dead: make([]bool, len(waits)), index: map[uint64]int{}, out: map[uint64][]int{}}
	for i, w := range waits {
		for _, s := range [2]uint64{w.Session, w.Holder} {
			if _, ok := g.index[s]; !ok {
				g.index[s] = 0
				g.nodes = append(g.nodes, s)
			}
		}
		g.out[w.Session] = append(g.out[w.Session], i)
	}
	slices.Sort(g.nodes)
	for i, s := range g.nodes {
		g.index[s] = i
	}
	// Walk the waits in an order that does not depend on the input's, so
	// that the cycles reported are the same whatever order waits came in.
	for _, es := range g.out {
		slices.SortFunc(es, func(i, j int) int {
			a, b := waits[i], waits[j]
			return cmp.Or(cmp.Compare(a.Holder, b.Holder), younger3(a, b))
		})
	}
	return g
}

// components labels each session with its strongly connected component
// over the live waits (Tarjan's algorithm, iterative).
func (g *graph) components() map[uint64]int {
	n := len(g.nodes)
	idx, low := make([]int, n), make([]int, n)
	on := make([]bool, n)
	for i := range idx {
		idx[i] = -1
	}
	comp := make(map[uint64]int, n)
	var stack []int
	next, label := 0, 0
	type frame struct{ v, e int }
	for root := range n {
		if idx[root] >= 0 {
			continue
		}
		call := []frame{{root, 0}}
		idx[root], low[root] = next, next
		next++
		stack = append(stack, root)
		on[root] = true
		for len(call) > 0 {
			f := &call[len(call)-1]
			edges := g.out[g.nodes[f.v]]
			if f.e < len(edges) {
				wi := edges[f.e]
				f.e++
				if g.dead[wi] {
					continue
				}
				u := g.index[g.waits[wi].Holder]
				if idx[u] < 0 {
					idx[u], low[u] = next, next
					next++
					stack = append(stack, u)
					on[u] = true
					call = append(call, frame{u, 0})
				} else if on[u] {
					low[f.v] = min(low[f.v], idx[u])
				}
				continue
			}
			v := f.v
			call = call[:len(call)-1]
			if len(call) > 0 {
				p := call[len(call)-1].v
				low[p] = min(low[p], low[v])
			}
			if low[v] == idx[v] {
				for {
					u := stack[len(stack)-1]
					stack = stack[:len(stack)-1]
					on[u] = false
					comp[g.nodes[u]] = label
					if u == v {
						break
					}
				}
				label++
			}
		}
	}
	return comp
}

// cycle returns the sessions of a shortest cycle through wait wi inside its
// component: the waiter, then the holders around back to it.
func (g *graph) cycle(wi int, comp map[uint64]int) []uint64 {
	start, first := g.waits[wi].Session, g.waits[wi].Holder
	c := comp[start]
	prev := map[uint64]uint64{first: start}
	queue := []uint64{first}
	for len(queue) > 0 && prev[start] == 0 {
		s := queue[0]
		queue = queue[1:]
		for _, i := range g.out[s] {
			h := g.waits[i].Holder
			if g.dead[i] || comp[h] != c {
				continue
			}
			if _, seen := prev[h]; !seen || h == start {
				if h == start {
					prev[start] = s
					break
				}
				prev[h] = s
				queue = append(queue, h)
			}
		}
	}
	var rev []uint64
	for s := prev[start]; s != start && s != 0; s = prev[s] {
		rev = append(rev, s)
	}
	out := []uint64{start}
	for i := len(rev) - 1; i >= 0; i-- {
		out = append(out, rev[i])
	}
	return out
}
