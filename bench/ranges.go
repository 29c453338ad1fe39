package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// runRanges measures EX writers on byte ranges of one token. Writer i
// takes [i·S, (i+1)·S) when disjoint (no conflicts: as fast as separate
// tokens) and [i·S, (i+2)·S) when overlapping (each range overlaps both
// neighbours: waits and revocations). A writer acquires (waiting), releases
// at once, and releases at once when revoked.
func runRanges(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	var out []Result
	n, size := cfg.RangeWriter, cfg.RangeSize
	for _, overlap := range []bool{false, true} {
		variant, span := "disjoint", size
		if overlap {
			variant, span = "overlapping", 2*size
		}
		cfg.progress("tokend byte ranges: %d writers, %s", n, variant)
		cs, err := dialClients(ctx, tgt, n, revokeRelease)
		if err != nil {
			return out, err
		}
		name := "bench/ranges/" + variant
		l, err := measure(ctx, cfg, n, func(ctx context.Context, i int, r *rec) error {
			start := uint64(i) * size
			t0 := time.Now()
			tok, err := cs[i].Acquire(ctx, name, wire.EX, clientlib.Range(start, start+span))
			if err != nil {
				return err
			}
			t1 := time.Now()
			if err := release(ctx, tok); err != nil {
				return err
			}
			r.record(latAcquire, t1.Sub(t0))
			r.record(latRelease, time.Since(t1))
			return nil
		})
		closeClients(cs)
		if err != nil {
			return out, err
		}
		res := Result{Workload: "ranges", Variant: variant, System: system, Clients: n, Unit: "pair",
			Note: fmt.Sprintf("one token, EX on %d-byte ranges", span)}.with(&l, "acquire", "release")
		out = append(out, res)
	}
	return out, nil
}
