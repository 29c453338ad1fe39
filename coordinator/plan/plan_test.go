package plan

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tokend/tokend/cluster/delegation"
)

// checkPlan runs Plan and checks every promise of the package comment
// against the oracle. It returns the new map.
func checkPlan(t *testing.T, rng *rand.Rand, live []Worker, n int, cur delegation.Map) (delegation.Map, []Move) {
	t.Helper()
	liveCopy, curCopy := slices.Clone(live), cur.Clone()
	next, moves, err := Plan(live, n, cur)
	if err != nil {
		t.Fatalf("Plan: %v", err)
	}
	if !slices.Equal(live, liveCopy) || !cur.Equal(curCopy) {
		t.Fatal("Plan modified its input")
	}
	if err := next.Validate(); err != nil {
		t.Fatalf("Plan returned an invalid map: %v", err)
	}
	if next.Shards() != n {
		t.Fatalf("Plan returned %d shards, want %d", next.Shards(), n)
	}
	before, after := slots(cur, n), slots(next, n)

	// Version: +1 iff anything changed.
	changed := !slices.Equal(before, after)
	switch {
	case changed && next.Version != cur.Version+1:
		t.Fatalf("map changed but version %d -> %d", cur.Version, next.Version)
	case !changed && next.Version != cur.Version:
		t.Fatalf("map unchanged but version %d -> %d", cur.Version, next.Version)
	case changed != (len(moves) > 0):
		t.Fatalf("map changed=%v with %d moves", changed, len(moves))
	}

	// Epochs bump exactly on moved shards, and the moves list says so.
	liveSet := map[delegation.Owner]bool{}
	for _, w := range live {
		liveSet[w.Owner()] = true
	}
	mi := 0
	for s := range n {
		b, a := before[s], after[s]
		if b.has == a.has && b.owner == a.owner {
			if a.epoch != b.epoch {
				t.Fatalf("shard %d kept its owner but epoch %d -> %d", s, b.epoch, a.epoch)
			}
			continue
		}
		if a.epoch != b.epoch+1 {
			t.Fatalf("shard %d moved %v -> %v but epoch %d -> %d", s, b.owner, a.owner, b.epoch, a.epoch)
		}
		if mi >= len(moves) || moves[mi].Shard != uint32(s) {
			t.Fatalf("shard %d moved but is not the next move in %v", s, moves)
		}
		m := moves[mi]
		mi++
		kind := Assign
		if b.has {
			kind = Recovery
			if liveSet[b.owner] {
				kind = Handoff
			}
		}
		want := Move{Shard: uint32(s), From: b.owner, To: a.owner, Epoch: a.epoch, Kind: kind}
		if m != want {
			t.Fatalf("move = %+v, want %+v", m, want)
		}
	}
	if mi != len(moves) {
		t.Fatalf("%d moves listed, %d shards moved", len(moves), mi)
	}

	// Balanced within one among the eligible workers; nobody else owns a
	// shard (unless nobody is live, when nothing changes).
	elig := eligible(live)
	if len(elig) == 0 {
		if changed {
			t.Fatal("no live workers, but the map changed")
		}
	} else {
		checkBalanced(t, "Plan", elig, after)
	}

	// Minimal: exactly the lower bound, and never more than the oracle.
	lb := lowerBound(live, n, before)
	if len(moves) != lb {
		t.Fatalf("Plan moved %d shards, lower bound is %d", len(moves), lb)
	}
	naive := naivePlan(live, n, before)
	if len(elig) > 0 {
		checkBalanced(t, "naive", elig, naive)
	}
	if nm := moved(before, naive); nm < lb || len(moves) > nm {
		t.Fatalf("Plan moved %d, naive %d, lower bound %d", len(moves), nm, lb)
	}

	// Sticky: no eligible worker both loses and gains shards.
	lost, gained := map[delegation.Owner]int{}, map[delegation.Owner]int{}
	for s := range n {
		b, a := before[s], after[s]
		if b.has == a.has && b.owner == a.owner {
			continue
		}
		if b.has {
			lost[b.owner]++
		}
		gained[a.owner]++
	}
	for o := range elig {
		if lost[o] > 0 && gained[o] > 0 {
			t.Fatalf("%v lost %d shards and gained %d", o, lost[o], gained[o])
		}
	}

	// Deterministic: the order of the live list and of the map's table do
	// not matter.
	if rng != nil {
		shuffled := slices.Clone(live)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		next2, moves2, err := Plan(shuffled, n, permuteTable(cur, rng))
		if err != nil {
			t.Fatalf("Plan (shuffled): %v", err)
		}
		if !slices.Equal(slots(next2, n), after) || next2.Version != next.Version || !slices.Equal(moves2, moves) {
			t.Fatal("shuffling the inputs changed the plan")
		}
		if changed && !next2.Equal(next) {
			t.Fatal("shuffling the inputs changed the new map's table")
		}
	}

	// The encodings round-trip.
	r, err := delegation.FromRuns(next.Version, n, next.Workers, delegation.Runs(next))
	if err != nil || !r.Equal(next) {
		t.Fatalf("FromRuns(Runs(m)) = %v, want m", err)
	}
	checkJSONRoundTrip(t, next)
	return next, moves
}

// checkBalanced checks that only eligible workers own shards, every shard is
// owned, and eligible loads differ by at most one.
func checkBalanced(t *testing.T, who string, elig map[delegation.Owner]bool, ss []slot) {
	t.Helper()
	for s, sl := range ss {
		if !sl.has || !elig[sl.owner] {
			t.Fatalf("%s: shard %d owned by %+v, not an eligible worker", who, s, sl)
		}
	}
	l := loads(ss)
	lo, hi := len(ss), 0
	for o := range elig {
		lo, hi = min(lo, l[o]), max(hi, l[o])
	}
	if hi-lo > 1 {
		t.Fatalf("%s: loads range from %d to %d", who, lo, hi)
	}
}

// permuteTable returns m with its worker table shuffled and, sometimes, an
// owner of no shard added: the same assignment under another table.
func permuteTable(m delegation.Map, rng *rand.Rand) delegation.Map {
	out := m.Clone()
	if rng.IntN(3) == 0 {
		out.Workers = append(out.Workers, delegation.Owner{ID: "ghost", Incarnation: rng.Uint64()})
	}
	perm := rng.Perm(len(out.Workers))
	ws := make([]delegation.Owner, len(out.Workers))
	for i, w := range out.Workers {
		ws[perm[i]] = w
	}
	out.Workers = ws
	for s, o := range out.Owner {
		if o != delegation.NoOwner {
			out.Owner[s] = int32(perm[o])
		}
	}
	return out
}

// oracleHistory plays one seeded random history and checks every plan; it
// returns the number of moves.
func oracleHistory(t *testing.T, seed uint64, rounds int) int {
	rng := rand.New(rand.NewPCG(seed, 0x706c616e))
	n := 1 + rng.IntN(200)
	if seed%5 == 0 {
		n = 1 + rng.IntN(8) // often fewer shards than workers
	}
	var (
		live    []Worker
		cur     delegation.Map
		nextID  int
		nextInc = uint64(0x694d000000000000) + seed<<20
		where   string
		total   int
	)
	defer func() {
		if t.Failed() {
			t.Logf("%d shards, %s", n, where)
		}
	}()
	newInc := func() uint64 { nextInc++; return nextInc }
	for round := range rounds {
		for range 1 + rng.IntN(3) {
			switch op := rng.IntN(10); {
			case op < 3 || len(live) == 0: // join
				nextID++
				live = append(live, Worker{ID: fmt.Sprintf("w%d", nextID), Incarnation: newInc()})
			case op < 5: // leave (crash or clean exit)
				i := rng.IntN(len(live))
				live = slices.Delete(live, i, i+1)
			case op < 6: // restart: a new lease, the old one gone
				live[rng.IntN(len(live))].Incarnation = newInc()
			case op < 7: // restart while the old lease is still alive
				w := live[rng.IntN(len(live))]
				live = append(live, Worker{ID: w.ID, Incarnation: newInc()})
			case op < 9: // drain
				live[rng.IntN(len(live))].Draining = true
			default: // undrain
				live[rng.IntN(len(live))].Draining = false
			}
		}
		if rng.IntN(20) == 0 {
			live = nil // everybody gone
		}
		where = fmt.Sprintf("round %d, live %v", round, live)
		var moves []Move
		cur, moves = checkPlan(t, rng, live, n, cur)
		total += len(moves)
		// Planning again with the same inputs changes nothing.
		again, m2, err := Plan(live, n, cur)
		if err != nil || len(m2) != 0 || !again.Equal(cur) {
			t.Fatalf("replanning moved %d shards (%v)", len(m2), err)
		}
	}
	return total
}

// TestPlanAgainstOracle drives Plan through many seeded random histories of
// joins, leaves, restarts (with and without the old lease still alive),
// drains and undrains, checking every round against the oracle.
func TestPlanAgainstOracle(t *testing.T) {
	seeds, rounds := 300, 60
	if testing.Short() {
		seeds = 50
	}
	totalMoves := 0
	for seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			totalMoves += oracleHistory(t, uint64(seed), rounds)
		})
	}
	t.Logf("%d moves checked", totalMoves)
}

func TestPlanNoWorkers(t *testing.T) {
	// No map yet: all shards unowned at epoch 0, version 0, no moves.
	m, moves, err := Plan(nil, 8, delegation.Map{})
	if err != nil || len(moves) != 0 || m.Version != 0 || m.Shards() != 8 {
		t.Fatalf("Plan(nil, 8, {}) = %+v, %v, %v", m, moves, err)
	}
	for s := range 8 {
		if _, _, ok := m.Lookup(s); ok || m.Epoch[s] != 0 {
			t.Fatalf("shard %d owned or at epoch %d", s, m.Epoch[s])
		}
	}

	// Everybody gone: the map stays as it is, last owners included.
	w1 := Worker{ID: "w1", Incarnation: 1}
	m, _, err = Plan([]Worker{w1}, 8, m)
	if err != nil {
		t.Fatal(err)
	}
	gone, moves, err := Plan(nil, 8, m)
	if err != nil || len(moves) != 0 || !gone.Equal(m) {
		t.Fatalf("Plan(nil) = %v moves, %v; want the map unchanged", len(moves), err)
	}

	// The next worker recovers every shard from the dead owner.
	w2 := Worker{ID: "w2", Incarnation: 2}
	back, moves := checkPlan(t, nil, []Worker{w2}, 8, gone)
	if len(moves) != 8 || back.Version != m.Version+1 {
		t.Fatalf("%d moves, version %d", len(moves), back.Version)
	}
	for _, mv := range moves {
		if mv.Kind != Recovery || mv.From != w1.Owner() || mv.Epoch != 2 {
			t.Fatalf("move %+v, want a recovery from w1 to epoch 2", mv)
		}
	}
}

func TestPlanOneWorker(t *testing.T) {
	w := Worker{ID: "solo", Incarnation: 0xabc}
	m, moves := checkPlan(t, nil, []Worker{w}, 16, delegation.Map{})
	if len(moves) != 16 || m.Version != 1 || len(m.Workers) != 1 {
		t.Fatalf("%d moves, version %d, table %v", len(moves), m.Version, m.Workers)
	}
	for _, mv := range moves {
		if mv.Kind != Assign || mv.Epoch != 1 || mv.From != (delegation.Owner{}) {
			t.Fatalf("move %+v, want an assignment at epoch 1", mv)
		}
	}
	if got := delegation.Runs(m); !slices.Equal(got, []delegation.Run{{First: 0, Count: 16, Owner: 0, Epoch: 1}}) {
		t.Fatalf("Runs = %v", got)
	}
	// Draining the only worker moves nothing: nobody else can take over.
	w.Draining = true
	if _, moves, err := Plan([]Worker{w}, 16, m); err != nil || len(moves) != 0 {
		t.Fatalf("draining the only worker: %d moves, %v", len(moves), err)
	}
}

func TestPlanMoreWorkersThanShards(t *testing.T) {
	var live []Worker
	for i := range 10 {
		live = append(live, Worker{ID: fmt.Sprintf("w%02d", i), Incarnation: uint64(i + 1)})
	}
	m, _ := checkPlan(t, nil, live, 3, delegation.Map{})
	want := []delegation.Owner{live[0].Owner(), live[1].Owner(), live[2].Owner()}
	if !slices.Equal(m.Workers, want) || !slices.Equal(m.Owner, []int32{0, 1, 2}) {
		t.Fatalf("table %v owners %v, want w00 w01 w02 one shard each", m.Workers, m.Owner)
	}
	// w01 leaves: only its shard moves, to the first idle worker.
	live = slices.Delete(live, 1, 2)
	m2, moves := checkPlan(t, nil, live, 3, m)
	if len(moves) != 1 || moves[0] != (Move{Shard: 1, From: want[1], To: live[2].Owner(), Epoch: 2, Kind: Recovery}) {
		t.Fatalf("moves %+v", moves)
	}
	// A new worker changes nothing.
	live = append(live, Worker{ID: "w99", Incarnation: 99})
	if _, moves := checkPlan(t, nil, live, 3, m2); len(moves) != 0 {
		t.Fatalf("a joiner moved %d shards", len(moves))
	}
}

func TestPlanAllDraining(t *testing.T) {
	live := []Worker{{ID: "a", Incarnation: 1}, {ID: "b", Incarnation: 2}, {ID: "c", Incarnation: 3}}
	m, _ := checkPlan(t, nil, live, 10, delegation.Map{})
	// Everyone draining at once: nobody else to go to, so nothing moves.
	for i := range live {
		live[i].Draining = true
	}
	if _, moves := checkPlan(t, nil, live, 10, m); len(moves) != 0 {
		t.Fatalf("all draining moved %d shards", len(moves))
	}
	// One of them leaves: the draining survivors still share its shards.
	m2, moves := checkPlan(t, nil, live[1:], 10, m)
	if len(moves) != 4 {
		t.Fatalf("%d moves, want a's 4 shards", len(moves))
	}
	// A fresh worker arrives: every shard is handed off to it.
	live = append(live[1:], Worker{ID: "d", Incarnation: 4})
	m3, moves := checkPlan(t, nil, live, 10, m2)
	if len(moves) != 10 || len(m3.Workers) != 1 || m3.Workers[0].ID != "d" {
		t.Fatalf("%d moves, table %v", len(moves), m3.Workers)
	}
	for _, mv := range moves {
		if mv.Kind != Handoff {
			t.Fatalf("move %+v, want a handoff", mv)
		}
	}
}

func TestPlanRestartMovesShards(t *testing.T) {
	live := []Worker{{ID: "a", Incarnation: 1}, {ID: "b", Incarnation: 2}, {ID: "c", Incarnation: 3}}
	m, _ := checkPlan(t, nil, live, 12, delegation.Map{})
	live[1].Incarnation = 20 // b restarted
	m2, moves := checkPlan(t, nil, live, 12, m)
	if len(moves) != 4 {
		t.Fatalf("%d moves, want b's 4 shards", len(moves))
	}
	for _, mv := range moves {
		if mv.Kind != Recovery || mv.From != (delegation.Owner{ID: "b", Incarnation: 2}) || mv.To != (delegation.Owner{ID: "b", Incarnation: 20}) || mv.Epoch != 2 {
			t.Fatalf("move %+v, want a recovery from b/2 to b/14 at epoch 2", mv)
		}
	}
	if !slices.Equal(m2.Owner, m.Owner) {
		t.Fatalf("owners %v, want the same layout %v", m2.Owner, m.Owner)
	}
}

// TestPlanLarge checks joins and leaves at full scale: 1,000 workers and
// 65,536 shards.
func TestPlanLarge(t *testing.T) {
	const n = 65536
	live := benchWorkers(1000)
	m, moves, err := Plan(live, n, delegation.Map{})
	if err != nil || len(moves) != n {
		t.Fatalf("initial plan: %d moves, %v", len(moves), err)
	}
	// 65536 = 65*1000 + 536: 536 workers hold 66, 464 hold 65. A joiner
	// gets 65 shards (65536 = 65*1001 + 471), one from each of 65 of the
	// workers holding 66.
	joined := append(slices.Clone(live), Worker{ID: "zz-new", Incarnation: 1})
	mj, moves := checkPlan(t, nil, joined, n, m)
	donors := map[delegation.Owner]bool{}
	for _, mv := range moves {
		if mv.Kind != Handoff || mv.To.ID != "zz-new" || donors[mv.From] {
			t.Fatalf("move %+v", mv)
		}
		donors[mv.From] = true
	}
	if len(moves) != 65 {
		t.Fatalf("join moved %d shards, want 65", len(moves))
	}
	// A worker holding 66 crashes: its 66 shards go one each to 66 workers.
	var victim delegation.Owner
	for o, c := range loads(slots(mj, n)) {
		if c == 66 && (victim.ID == "" || o.Compare(victim) < 0) {
			victim = o
		}
	}
	left := slices.DeleteFunc(slices.Clone(joined), func(w Worker) bool { return w.Owner() == victim })
	_, moves = checkPlan(t, nil, left, n, mj)
	if len(moves) != 66 {
		t.Fatalf("leave moved %d shards, want 66", len(moves))
	}
	for _, mv := range moves {
		if mv.Kind != Recovery || mv.From != victim {
			t.Fatalf("move %+v", mv)
		}
	}
}

func TestPlanEpochExhausted(t *testing.T) {
	m, err := delegation.FromRuns(5, 4, []delegation.Owner{{ID: "a", Incarnation: 1}}, []delegation.Run{{First: 0, Count: 4, Owner: 0, Epoch: delegation.MaxEpoch}})
	if err != nil {
		t.Fatal(err)
	}
	// The owner is live: nothing moves, all is well.
	if _, moves, err := Plan([]Worker{{ID: "a", Incarnation: 1}}, 4, m); err != nil || len(moves) != 0 {
		t.Fatalf("%d moves, %v", len(moves), err)
	}
	// The owner is gone: the shards cannot move.
	if _, _, err := Plan([]Worker{{ID: "b", Incarnation: 1}}, 4, m); !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	// One below the maximum is fine, and lands on MaxEpoch.
	m.Epoch[0] = delegation.MaxEpoch - 1
	m.Owner[1], m.Epoch[1] = delegation.NoOwner, 0
	m.Owner[2], m.Owner[3] = delegation.NoOwner, delegation.NoOwner
	m.Epoch[2], m.Epoch[3] = 0, 0
	m2, moves, err := Plan([]Worker{{ID: "b", Incarnation: 1}}, 4, m)
	if err != nil || len(moves) != 4 || m2.Epoch[0] != delegation.MaxEpoch {
		t.Fatalf("%d moves, epoch %d, %v", len(moves), m2.Epoch[0], err)
	}
}

func TestPlanErrors(t *testing.T) {
	good := []Worker{{ID: "a", Incarnation: 1}}
	m, _, _ := Plan(good, 4, delegation.Map{})
	for _, tc := range []struct {
		name   string
		live   []Worker
		shards int
		cur    delegation.Map
		want   error
	}{
		{"zero shards", good, 0, delegation.Map{}, ErrShardCount},
		{"too many shards", good, delegation.MaxShards + 1, delegation.Map{}, ErrShardCount},
		{"shard count mismatch", good, 5, m, ErrShardCount},
		{"empty id", []Worker{{ID: "", Incarnation: 1}}, 4, m, ErrBadWorker},
		{"duplicate worker", []Worker{{ID: "a", Incarnation: 1}, {ID: "a", Incarnation: 1, Draining: true}}, 4, m, ErrBadWorker},
		{"epochs length", good, 4, delegation.Map{Owner: []int32{-1}, Epoch: nil}, delegation.ErrBadMap},
		{"owner index", good, 1, delegation.Map{Owner: []int32{3}, Epoch: []uint32{1}}, delegation.ErrBadMap},
		{"negative owner", good, 1, delegation.Map{Workers: []delegation.Owner{{ID: "a", Incarnation: 1}}, Owner: []int32{-2}, Epoch: []uint32{1}}, delegation.ErrBadMap},
		{"unowned with epoch", good, 1, delegation.Map{Owner: []int32{-1}, Epoch: []uint32{1}}, delegation.ErrBadMap},
		{"owned at epoch 0", good, 1, delegation.Map{Workers: []delegation.Owner{{ID: "a", Incarnation: 1}}, Owner: []int32{0}, Epoch: []uint32{0}}, delegation.ErrBadMap},
		{"epoch too big", good, 1, delegation.Map{Workers: []delegation.Owner{{ID: "a", Incarnation: 1}}, Owner: []int32{0}, Epoch: []uint32{delegation.MaxEpoch + 1}}, delegation.ErrBadMap},
		{"duplicate table entry", good, 1, delegation.Map{Workers: []delegation.Owner{{ID: "b", Incarnation: 1}, {ID: "a", Incarnation: 1}, {ID: "b", Incarnation: 1}}, Owner: []int32{0}, Epoch: []uint32{1}}, delegation.ErrBadMap},
		{"empty table id", good, 1, delegation.Map{Workers: []delegation.Owner{{ID: "", Incarnation: 1}}, Owner: []int32{0}, Epoch: []uint32{1}}, delegation.ErrBadMap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := Plan(tc.live, tc.shards, tc.cur); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}
