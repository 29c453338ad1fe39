package bench

import (
	"context"
	"fmt"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// batchedTokens is how many tokens one batched operation takes.
const batchedTokens = 4

// runBatched measures AcquireBatch: one client, one goroutine, each
// operation an all-or-nothing acquire of batchedTokens EX tokens of one
// shard (one ACQUIRE_BATCH datagram, SPEC §21) and their releases (one
// RELEASE each), uncontended, against the tokend process tgt. The row
// reports tokens/s and the datagrams sent per batch.
func runBatched(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	cfg.progress("%s batched: 1 client, %d tokens per batch", system, batchedTokens)
	cs, err := dialClients(ctx, tgt, 1, revokeNotify)
	if err != nil {
		return nil, err
	}
	defer closeClients(cs)
	c := cs[0]
	shards := uint32(max(cfg.Shards, 1))
	reqs := []clientlib.BatchRequest{{Name: "bench/batched/0", Mode: wire.EX}}
	first := wire.Shard([]byte(reqs[0].Name), shards)
	for i := 1; len(reqs) < batchedTokens; i++ {
		if name := fmt.Sprintf("bench/batched/%d", i); wire.Shard([]byte(name), shards) == first {
			reqs = append(reqs, clientlib.BatchRequest{Name: name, Mode: wire.EX})
		}
	}
	before := c.Stats()
	l, err := measure(ctx, cfg, 1, func(ctx context.Context, _ int, r *rec) error {
		var toks []*clientlib.Token
		return r.pair(func() (err error) {
			toks, err = c.AcquireBatch(ctx, reqs)
			return err
		}, func() error {
			for _, t := range toks {
				if err := t.Release(ctx); err != nil {
					return err
				}
			}
			return nil
		})
	})
	after := c.Stats()
	if err != nil {
		return nil, err
	}
	if fb := after.BatchFallbacks - before.BatchFallbacks; fb > 0 {
		return nil, fmt.Errorf("bench: batched: %d batches fell back to single acquires (uncontended: none should)", fb)
	}
	res := Result{Workload: "batched", System: system, Clients: 1, Unit: "batch",
		Note: fmt.Sprintf("%d EX tokens of one shard by one ACQUIRE_BATCH, then %d RELEASEs", batchedTokens, batchedTokens)}.with(&l, "acquire", "release", "pair")
	res.metric("tokens", batchedTokens*l.rate(), "tokens acquired+released/s")
	if b := after.BatchGranted - before.BatchGranted; b > 0 {
		res.metric("datagrams_per_batch", float64(after.Sent-before.Sent)/float64(b/batchedTokens), "sent, retransmissions and keepalives included")
	}
	res.cpuMetrics(&l)
	return []Result{res}, nil
}
