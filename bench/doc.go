// Package bench is tokend's load generator and its side-by-side
// comparisons. Every server it measures runs in a process of its own on
// loopback, as users run it: the real tokend binary (proc.go: built once
// per run, started all-in-one, plus "tokend worker" processes for the
// scaling workload; a "tokend server" and "tokend worker" processes for
// failover; etcd over TLS with authentication, as tokend runs by default),
// redis-server (redis.go, where installed) and the UDP echo servers (this
// binary re-executed, child.go). Clients stay in the bench process,
// except the C client's, which run in cload (bench/cload/cload.c, built
// with cc from clientlib/c). Still in the bench's process: the held-set
// workload (its figure is the worker's Go heap per token), tokend's
// uncontended and contended loops once more as an "in-process" column,
// and embedded etcd for etcd's own concurrency.Mutex.
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
//     "tokend worker" processes of a "tokend server".
//   - etcdmutex.go: the same uncontended and contended loops with
//     go.etcd.io/etcd/client/v3/concurrency.Mutex.
//   - echo.go: the UDP echo limit at the same concurrency, against an echo
//     server process that batches (recvmmsg/sendmmsg) and one that does not.
//   - redis.go: Redis's lock recipe (SET NX PX + Lua compare-and-delete),
//     uncontended and contended, with a minimal RESP client.
//   - cload.go: the uncontended and contended loops with the C client.
//
// Every loop is bounded in time and in count; latency percentiles come from
// HDR histograms; Run returns a Report that report.go prints as a table,
// JSON and an SVG chart. The command is cmd/tokend-bench; bench_test.go has
// a quick go test -bench over loopback.
package bench
