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
	seq, err := runSequential(ctx, cfg, tgt, system)
	return append(out, seq...), err
}

// seqPages is how many pages of cfg.RangeSize bytes a sequential writer
// writes per file.
const seqPages = 64

// runSequential measures a sequential writer: one client writes file after
// file, each page by page (PW on the page's range, released at once). With
// Grow and the token cache the first page's ACQUIRE is granted the whole
// file and the other pages are cache hits: one ACQUIRE per file. Without
// (the cache off), every page is an ACQUIRE and a RELEASE at the worker.
// The unit is the file; each row reports the worker ACQUIREs per file.
func runSequential(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	var out []Result
	size := cfg.RangeSize
	for _, grow := range []bool{false, true} {
		variant, note := "sequential-per-page", "no Grow, cache off: one ACQUIRE and RELEASE per page"
		if grow {
			variant, note = "sequential-grow", "Grow and the token cache: the first page is granted the whole file"
		}
		cfg.progress("tokend byte ranges: 1 sequential writer, %s", variant)
		c, err := dialClientCache(ctx, tgt, revokeRelease, grow)
		if err != nil {
			return out, err
		}
		prefix := fmt.Sprintf("bench/ranges/%s/%d/", variant, time.Now().UnixNano())
		files := 0
		before := c.Stats()
		l, err := measure(ctx, cfg, 1, func(ctx context.Context, _ int, r *rec) error {
			name := fmt.Sprintf("%s%d", prefix, files)
			files++
			opts := []clientlib.Option{nil, nil}
			for p := uint64(0); p < seqPages; p++ {
				opts = append(opts[:0], clientlib.Range(p*size, (p+1)*size))
				if grow {
					opts = append(opts, clientlib.Grow())
				}
				t0 := time.Now()
				tok, err := c.Acquire(ctx, name, wire.PW, opts...)
				if err != nil {
					return err
				}
				r.record(latAcquire, time.Since(t0))
				if err := tok.Release(ctx); err != nil {
					return err
				}
			}
			return nil
		})
		after := c.Stats()
		closeClients([]*client{c})
		if err != nil {
			return out, err
		}
		res := Result{Workload: "ranges", Variant: variant, System: system, Clients: 1, Unit: "file",
			Note: fmt.Sprintf("%s; %d pages of %d bytes per file", note, seqPages, size)}.with(&l, "acquire")
		acquires := float64(seqPages * files)
		if grow {
			acquires = float64(after.CacheMisses - before.CacheMisses)
		}
		if files > 0 {
			res.metric("acquires_per_file", acquires/float64(files), "ACQUIREs sent to the worker per file")
		}
		out = append(out, res)
	}
	return out, nil
}
