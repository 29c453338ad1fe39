package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokend/tokend/wire"
)

// cachedBatch is how many pairs one operation of the cached loop makes:
// a served pair takes a few hundred nanoseconds, so the loop's per-operation
// clock reads and counters are paid once per batch.
const cachedBatch = 256

// runCached measures re-acquire+release pairs served by the Go client's
// token cache: one client, one goroutine, one token (EX, whole), with the
// cache on, against the tokend process tgt. Its first acquire goes to the
// worker; every pair after it should be served locally: the row reports
// the datagrams the client sent meanwhile (its keepalives only) and fails
// if a pair was not a cache hit.
func runCached(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	cfg.progress("%s cached: 1 client", system)
	c, err := dialClientCache(ctx, tgt, revokeNotify, true)
	if err != nil {
		return nil, fmt.Errorf("bench: dial tokend: %w", err)
	}
	defer closeClients([]*client{c})
	const name = "bench/cached"
	tok, err := c.Acquire(ctx, name, wire.EX)
	if err != nil {
		return nil, err
	}
	if err := tok.Release(ctx); err != nil {
		return nil, err
	}
	before := c.Stats()
	l, err := measure(ctx, cfg, 1, func(ctx context.Context, _ int, _ *rec) error {
		for range cachedBatch {
			tok, err := c.Acquire(ctx, name, wire.EX)
			if err != nil {
				return err
			}
			if err := tok.Release(ctx); err != nil {
				return err
			}
		}
		return nil
	})
	after := c.Stats()
	if err != nil {
		return nil, err
	}
	l.ops *= cachedBatch // operations were batches; the unit is the pair
	misses := after.CacheMisses - before.CacheMisses
	if err := cacheMissCheck("cached", int64(misses), int64(l.ops)); err != nil {
		return nil, fmt.Errorf("%w (revoked %d, evicted %d)", err,
			after.CacheRevoked-before.CacheRevoked, after.CacheEvictions-before.CacheEvictions)
	}
	res := Result{Workload: "cached", System: system, Clients: 1, Unit: "pair",
		Note: "one token re-acquired (EX) from the Go client's token cache and released into it"}.with(&l)
	res.metric("datagrams", float64(after.Sent-before.Sent), "sent during warm-up and window (keepalives)")
	res.metric("cache_hits", float64(after.CacheHits-before.CacheHits), "")
	res.metric("cache_misses", float64(misses), "re-acquires that went to the worker (a grant whose validity ran out between keepalives on a busy machine)")
	res.cpuMetrics(&l)
	out := []Result{res}
	if system == sysTokend {
		rc, err := runCachedC(ctx, cfg, tgt)
		if errors.Is(err, ErrNoCC) {
			return out, nil // no C compiler: the Go row only
		}
		if err != nil {
			return out, err
		}
		out = append(out, rc)
	}
	return out, nil
}

// runCachedC is the same loop with the C client (cload --cache): one
// thread, one handle, one token; every pair after the first should be a
// hit of the library's token cache.
func runCachedC(ctx context.Context, cfg *Config, tgt target) (Result, error) {
	cfg.progress("%s cached: 1 thread", sysTokendC)
	r := cloadRun{mode: "uncontended", handles: "thread", threads: 1, cache: 1024,
		prefix: fmt.Sprintf("bench/cload/cached/%d", time.Now().UnixNano())}
	c, l, err := runCload(ctx, cfg, tgt, r)
	if err != nil {
		return Result{}, err
	}
	if err := cacheMissCheck("cached (C)", c.Misses-1, c.Ops); err != nil { // the first acquire always goes
		return Result{}, err
	}
	res := Result{Workload: "cached", System: sysTokendC, Clients: 1, Unit: "pair", WindowS: c.WindowS, Count: c.Ops,
		Rate: c.Rate, Errors: c.Errors, LastError: c.LastError,
		Note: "one token re-acquired (EX) from the C client's token cache (cload --cache) and released into it"}
	res.Latencies = slicesNonEmpty([]NamedLatency{{"acquire", c.Acquire}, {"release", c.Release}, {"pair", c.Pair}})
	res.metric("cache_hits", float64(c.Hits), "")
	res.metric("cache_misses", float64(max(c.Misses-1, 0)), "acquires after the first that went to the worker")
	if l.window > 0 {
		res.metric("cload_cpu", l.cpu.Seconds()/l.window.Seconds(), "cores")
	}
	return res, nil
}

// cacheMissCheck fails a cached row when more than 1 % of its pairs went
// to the worker: then the row no longer measures the cache. A few misses
// are legitimate: a cached grant whose validity ran out because a
// keepalive came late (a busy machine) is not served from the cache, and
// the row reports them.
func cacheMissCheck(row string, misses, pairs int64) error {
	if misses > 0 && misses*100 > pairs {
		return fmt.Errorf("bench: %s: %d of %d re-acquires went to the worker", row, misses, pairs)
	}
	return nil
}
