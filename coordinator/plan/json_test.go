package plan

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tokend/tokend/cluster/delegation"
)

// checkJSONRoundTrip checks that m survives MarshalJSON and UnmarshalJSON
// exactly, and that re-marshalling gives the same bytes: the planner's maps
// must be storable in etcd (package delegation tests the encoding itself).
func checkJSONRoundTrip(t *testing.T, m delegation.Map) []byte {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	var back delegation.Map
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("Unmarshal(%s): %v", b, err)
	}
	if !slices.Equal(slots(back, m.Shards()), slots(m, m.Shards())) || back.Version != m.Version || !slices.Equal(back.Workers, m.Workers) {
		t.Fatalf("round trip changed the map:\n%s", b)
	}
	if !back.Equal(m) {
		t.Fatalf("round trip changed the map's representation:\n%s", b)
	}
	b2, err := back.MarshalJSON()
	if err != nil || string(b2) != string(b) {
		t.Fatalf("re-marshal differs (%v):\n%s\n%s", err, b, b2)
	}
	return b
}

// TestJSONSize checks that the etcd value for 65,536 shards stays under etcd's
// default request limit (1.5 MiB) even in the worst case, and reports the
// sizes of a fresh map and one after heavy churn.
func TestJSONSize(t *testing.T) {
	const n, limit = 65536, 3 << 19
	live := benchWorkers(1000)
	fresh, _, err := Plan(live, n, delegation.Map{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := fresh.MarshalJSON()
	t.Logf("fresh plan, 1000 workers: %d bytes", len(b))

	// Worst case: every shard its own run, at the largest epoch.
	worst := delegation.Map{Version: 1 << 40, Workers: make([]delegation.Owner, 1000), Owner: make([]int32, n), Epoch: make([]uint32, n)}
	for i, w := range live {
		worst.Workers[i] = w.Owner()
		worst.Workers[i].Incarnation = 1<<64 - 1 - uint64(i)
	}
	for s := range n {
		worst.Owner[s], worst.Epoch[s] = int32(s%1000), delegation.MaxEpoch
	}
	b = checkJSONRoundTrip(t, worst)
	t.Logf("worst case: %d bytes (%.2f MiB)", len(b), float64(len(b))/(1<<20))
	if len(b) >= limit {
		t.Fatalf("worst case is %d bytes, over %d", len(b), limit)
	}

	// Churn: 500 rounds of random joins, crashes and restarts.
	if testing.Short() {
		return
	}
	rng := rand.New(rand.NewPCG(1, 2))
	m, inc := fresh, uint64(1)
	for range 500 {
		switch rng.IntN(3) {
		case 0:
			inc++
			live = append(live, Worker{ID: fmt.Sprintf("join-%d", inc), Incarnation: inc})
		case 1:
			i := rng.IntN(len(live))
			live = slices.Delete(live, i, i+1)
		case 2:
			inc++
			live[rng.IntN(len(live))].Incarnation = inc
		}
		if m, _, err = Plan(live, n, m); err != nil {
			t.Fatal(err)
		}
	}
	b = checkJSONRoundTrip(t, m)
	t.Logf("after 500 rounds of churn: %d workers, %d runs, %d bytes", len(m.Workers), len(delegation.Runs(m)), len(b))
	if len(b) >= 1<<20 {
		t.Fatalf("churned map is %d bytes", len(b))
	}
}
