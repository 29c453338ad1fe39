// Package bench is tokend's load generator and its side-by-side
// comparisons. Everything runs on loopback, and in one process except the
// failover workload's workers: a devcluster (embedded etcd, coordinator,
// workers) for tokend, embedded etcd with one and three members for etcd's
// own concurrency.Mutex, and a raw UDP echo pair with the worker's batching
// for "the limit" of the network path.
//
// Workloads (one file each):
//
//   - uncontended.go: C clients, each on its own token: acquire+release pairs.
//   - contended.go: C clients on one token, holding it until revoked:
//     handoffs (revoke -> release -> grant).
//   - shared.go: many PR readers, an occasional EX writer that revokes them.
//   - ranges.go: EX writers on disjoint and on overlapping byte ranges of
//     one token.
//   - held.go: a large held set (1k .. 10M tokens, by a raw-datagram holder
//     that keeps no per-token state) and its cost in heap bytes per token.
//   - workers.go: 1, 2, 4 workers: ops/s and ops per CPU-second.
//   - failover.go: kill -9 worker processes under load, repeatedly: time
//     until held tokens are valid again and until the shards grant again,
//     and what the other workers' shards saw meanwhile. The workers are
//     this binary re-executed (child.go, WorkerChild).
//   - etcdmutex.go: the same uncontended and contended loops with
//     go.etcd.io/etcd/client/v3/concurrency.Mutex.
//   - echo.go: the UDP echo limit at the same concurrency.
//
// Every loop is bounded in time and in count; latency percentiles come from
// HDR histograms; Run returns a Report that report.go prints as a table,
// JSON and an SVG chart. The command is cmd/tokend-bench; bench_test.go has
// a quick go test -bench over loopback.
package bench
