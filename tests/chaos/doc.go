// Package chaos is tokend's fault-injection safety suite: Jepsen-style
// scenarios that run clients against a cluster while the network and the
// processes fail in the ways of the failure model (seed 000: datagrams
// dropped, duplicated and reordered, links that fail and recover, one way or
// both, crash-stop and hanging clients and servers that later send stale
// messages), and check what the clients saw with the checkers of package
// chaos/check: a porcupine linearizability model of the tokens (invariants
// 1 and 2 of docs/ARCHITECTURE.md) and a fenced register with Jepsen's lock-set
// workload (no acknowledged update lost, no stale fence accepted).
//
// The package has no code of its own outside its tests.
//
// Every scenario whose clients run a workload runs half of them (the even
// ones) with the client token cache on (clientlib.Config.TokenCache), so
// re-acquires served from a cache, and revokes of cached grants answered
// by the library, are part of every checked history (check.Input.Cached).
// Scenario 1 and the real-process scenarios also take a quarter of their
// grants in batches of 2-3 tokens (clientlib.Client.AcquireBatch,
// load.Config.Batch), whose grants the reordering network must not let a
// REVOKE overtake unnoticed.
//
// # Scenarios
//
// In process (devcluster on a seeded faultnet network):
//
//	TestScenario1UDPChaos              20 % drop, 5 % duplicate, 0-50 ms jitter on every link
//	TestScenario2ClientPauses          lock set under client pauses of 0-2 TTL
//	TestScenario8Replay                captured datagrams re-sent seconds later, from their senders and forged
//	TestScenario9OnlyMonotonicTime     no wall-clock arithmetic on the lease path (static)
//	TestScenario9ClockSkew             client clocks offset, drifting, jumping
//	TestScenario9SlowClockIsCaught     negative control: an out-of-model clock is caught
//	TestScenario10ReadersWriterRanges  all modes, byte ranges (half of them with Grow: grown grants are checked on the range granted), converts: the model check
//
// With real processes (tokend binaries built once per run, Linux only; the
// UDP fault proxy of faultnet/proxy between clients and workers, TCP relays
// between workers and etcd where a scenario cuts them):
//
//	TestScenario3ClientStop      a client process SIGSTOPped for 1.5-3 TTL while holding
//	TestScenario4WorkerPause     a worker SIGSTOPped 1-3 s (soak 1-10 s) under lossy load
//	TestScenario5WorkerKill      workers SIGKILLed and restarted under load; held tokens survive
//	TestScenario6EtcdFaults      the etcd leader killed, then paused
//	TestScenario7CutsAndFlaps    one-way cuts and flapping links, client-worker and worker-etcd
//	TestBadInputLiveWorker       malformed, truncated, oversized, random datagrams at a worker
//	TestScenario6EtcdMemberCutOff the workers' links to one etcd member go silent for 9 s (regression)
//
// # Seeds, soaking and regressions
//
// Every scenario runs once per pinned seed in the short form (seconds each,
// what CI runs). A failure prints its seed and the command that repeats it:
//
//	go test ./tests/chaos -run 'TestScenario2ClientPauses/seed=2' -seed 2 -v
//
// -soak D (or TOKEND_SOAK=D) runs each selected scenario again and again
// with random seeds and its long sizes until D is over, for example:
//
//	go test ./tests/chaos -run 'Scenario(1|2|8|9C|10)' -soak 10m -timeout 2h -v
//
// A seed that ever failed is added to its scenario's pinned list (the
// slice passed to run) and stays there as a regression case. In-process
// scenarios are reproducible from their seed up to goroutine scheduling;
// real-process ones reproduce the fault mix, not the exact interleaving.
//
// Nothing here needs root: network faults are made by faultnet and the
// proxy, not by netns, tc or iptables.
package chaos
