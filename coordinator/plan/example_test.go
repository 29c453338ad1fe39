package plan_test

import (
	"fmt"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/coordinator/plan"
)

func ExamplePlan() {
	live := []plan.Worker{{ID: "w1", Incarnation: 0x10}, {ID: "w2", Incarnation: 0x20}}
	m, _, _ := plan.Plan(live, 6, delegation.Map{})

	// w3 joins and w1 is draining: w1's shards go to the others.
	live = append(live, plan.Worker{ID: "w3", Incarnation: 0x30})
	live[0].Draining = true
	m, moves, err := plan.Plan(live, 6, m)
	if err != nil {
		panic(err)
	}
	for _, mv := range moves {
		fmt.Printf("shard %d: %v -> %v epoch %d (%v)\n", mv.Shard, mv.From, mv.To, mv.Epoch, mv.Kind)
	}
	b, _ := m.MarshalJSON()
	fmt.Println(string(b))
	// Output:
	// shard 0: w1/10 -> w3/30 epoch 2 (handoff)
	// shard 1: w1/10 -> w3/30 epoch 2 (handoff)
	// shard 2: w1/10 -> w3/30 epoch 2 (handoff)
	// {"version":2,"shards":6,"workers":[{"id":"w2","incarnation":"20","ranges":[[3,3,1]]},{"id":"w3","incarnation":"30","ranges":[[0,3,2]]}]}
}
