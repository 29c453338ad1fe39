package bench

import (
	"context"
	"fmt"
)

// runWorkers measures the uncontended pairs of cfg.Clients clients on
// clusters of each size in cfg.WorkerSets, started one after the other:
// an all-in-one tokend process and n-1 "tokend worker" processes. Tokens
// spread over the shards, hence over the workers. Ops per CPU-second
// divide by the CPU time of the bench (the clients) plus every tokend
// process (workers, coordinator, etcd).
func runWorkers(ctx context.Context, cfg *Config) ([]Result, error) {
	var out []Result
	for _, n := range cfg.WorkerSets {
		cfg.progress("workers: %d, %d clients", n, cfg.Clients)
		pc, err := startProcCluster(ctx, cfg, n, false)
		if err != nil {
			return out, err
		}
		cfg.serverCPU = pc.cpu
		l, err := func() (loopResult, error) {
			cs, err := dialClients(ctx, pc.target(), cfg.Clients, revokeNotify)
			if err != nil {
				return loopResult{}, err
			}
			defer closeClients(cs)
			return uncontended(ctx, cfg, cs, fmt.Sprintf("w%d", n), nil)
		}()
		cfg.serverCPU = nil
		pc.close()
		if err != nil {
			return out, err
		}
		variant := fmt.Sprintf("%d workers", n)
		if n == 1 {
			variant = "1 worker"
		}
		res := Result{Workload: "workers", Variant: variant, System: sysTokend,
			Clients: cfg.Clients, Unit: "pair", Note: "uncontended; CPU is the bench's clients plus the tokend processes"}.with(&l, "acquire", "release", "pair")
		res.metric("ops", 2*l.rate(), "requests/s")
		res.cpuMetrics(&l)
		out = append(out, res)
	}
	return out, nil
}
