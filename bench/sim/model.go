package sim

import "fmt"

// Durations are virtual nanoseconds.
const (
	Millisecond int64 = 1e6
	Second      int64 = 1e9
)

// Costs are the modelled constants: what the simulation does not run.
// Each field says where its default comes from.
type Costs struct {
	// EtcdWritesPerSec: raft writes (grant, put, delete, txn, revoke) the
	// etcd cluster commits per second. Default 25,000: etcd's op-guide
	// (performance.md), 3 members of 8 vCPUs, 256-byte puts, 1,000
	// clients, leader only.
	EtcdWritesPerSec float64
	// EtcdLeaderCores: cores of the etcd leader available to lease
	// renewals (they are served by the leader alone). Default 16.
	EtcdLeaderCores float64
	// RenewOnceCPU: CPU per session renewal done as tokend did before
	// 2026-12-03 (design "once"), one KeepAliveOnce (a new gRPC stream) per
	// renewal. Default 470 µs: measured by tokend-bench's sessions
	// workload, 0.14 cores per 1,000 sessions (300 renewals/s), the whole
	// tokend process (etcd member, coordinator, worker), all of it charged
	// to the leader.
	RenewOnceCPU int64
	// RenewStreamCPU: CPU per renewal on the worker's long-lived
	// LeaseKeepAlive stream (worker/renew.go, the current design). Default
	// 150 µs: measured the same way, 0.74 cores for 4,868 renewals/s at
	// 16,000 sessions (bench/results/2026-12-03-sessions-after), the whole
	// process again, so it overstates the leader's own share.
	RenewStreamCPU int64
	// EtcdCallLatency: one etcd round trip from a worker. Default 2 ms:
	// the sessions bench opened ~1,000 sessions/s through the worker's
	// pool of 4 goroutines doing Grant then Put, i.e. 4 / (2 × 2 ms).
	EtcdCallLatency int64
	// PoolSize: goroutines of a worker opening sessions in etcd
	// (worker/etcd.go openPoolSize; 4, shared with renewals, before
	// 2026-12-03).
	PoolSize int
	// LeaseRevokeRate: leases etcd's lessor revokes per second at most
	// once expired (server/lease/lessor.go defaultLeaseRevokeRate).
	LeaseRevokeRate float64
	// LessorCheck: how often etcd's lessor looks for expired leases (500 ms).
	LessorCheck int64
	// WatchLatency: from an etcd commit to a watcher applying the event.
	// Default 5 ms (LAN, model).
	WatchLatency int64
	// Settle: the coordinator waits this long after a registry change for
	// more (coordinator/delegate.go settle, 20 ms).
	Settle int64
	// HandoffTime: a planned handoff, from the map write until the new
	// owner has pulled the state (SPEC §18). Default 50 ms (model; the
	// handoff times out at 2 s).
	HandoffTime int64
	// RTOMin: the client's first retransmission timeout (SPEC §12, 20 ms).
	RTOMin int64
	// TokenBytes: worker heap per held token. Default 173 B: measured by
	// tokend-bench's held workload at 1M tokens (bench/results).
	TokenBytes int64
	// HandoffTokenBytes: bytes of one held token in a handoff snapshot
	// (model: name ~32 B, fence, mode, range, session, value ~16 B).
	HandoffTokenBytes int64
	// WatchEventCPU: etcd CPU to deliver one event to one watcher
	// (model, 2 µs), for the fan-out's cores.
	WatchEventCPU int64
	// MaxTxnOps: operations etcd accepts in one txn (--max-txn-ops, 128),
	// for batched writes in the Planned design.
	MaxTxnOps int
}

// DefaultCosts returns the constants documented on Costs.
func DefaultCosts() Costs {
	return Costs{
		EtcdWritesPerSec:  25000,
		EtcdLeaderCores:   16,
		RenewOnceCPU:      470_000,
		RenewStreamCPU:    150_000,
		EtcdCallLatency:   2 * Millisecond,
		PoolSize:          32,
		LeaseRevokeRate:   1000,
		LessorCheck:       500 * Millisecond,
		WatchLatency:      5 * Millisecond,
		Settle:            20 * Millisecond,
		HandoffTime:       50 * Millisecond,
		RTOMin:            20 * Millisecond,
		TokenBytes:        173,
		HandoffTokenBytes: 96,
		WatchEventCPU:     2_000,
		MaxTxnOps:         128,
	}
}

// Design is what the control plane does; Current is the code as it is.
type Design struct {
	Name string
	// KeepAliveStream: workers renew leases on one LeaseKeepAlive stream
	// each (RenewStreamCPU) instead of one KeepAliveOnce per renewal
	// (RenewOnceCPU).
	KeepAliveStream bool
	// GroupSize: sessions per etcd lease. 1 is a lease per session (today).
	// Above 1, a worker keeps its sessions in groups of up to GroupSize
	// under one lease it renews every S/3; an open is one put on the
	// group's lease, a session that ends is one delete by its worker, and
	// a session whose worker died is adopted by the worker it renews at
	// (one txn moving its key to that worker's group), see docs/SCALE.md.
	GroupSize int
	// ReconnectJitter: clients that must open a session again (a restart,
	// a lost session) wait a uniform random time in [0, ReconnectJitter).
	ReconnectJitter int64
	// OpenRate: opens per second a worker accepts (0: as fast as its etcd
	// pool goes); the rest are answered "busy" and retried.
	OpenRate float64
	// WatchNoPut: workers watch session keys for deletes only (etcd's
	// server-side NOPUT filter) and look new sessions up on first use.
	WatchNoPut bool
	// RangeShards: the map is split into documents of this many shards
	// each, fetched by range; 0 is one document (today).
	RangeShards int
	// EndRate: with groups, sessions whose deadline passed are ended by
	// their workers at most this many per second cluster-wide (each end
	// reaches every worker); 0: at once.
	EndRate float64
}

// Current is tokend as built: a lease per session, renewed over one
// LeaseKeepAlive stream per worker.
func Current() Design { return Design{Name: "current", GroupSize: 1, KeepAliveStream: true} }

// Once is tokend before 2026-12-03: one KeepAliveOnce per renewal. It is
// kept to show what the stream moved.
func Once() Design { return Design{Name: "once", GroupSize: 1} }

// Planned is the design docs/SCALE.md proposes for 1M clients.
func Planned() Design {
	return Design{
		Name:            "planned",
		KeepAliveStream: true,
		GroupSize:       1024,
		ReconnectJitter: 60 * Second,
		OpenRate:        100,
		WatchNoPut:      true,
		RangeShards:     1024,
		EndRate:         50000,
	}
}

// DesignByName returns Current or Planned.
func DesignByName(name string) (Design, error) {
	switch name {
	case "current":
		return Current(), nil
	case "planned":
		return Planned(), nil
	case "once":
		return Once(), nil
	}
	return Design{}, fmt.Errorf("sim: unknown design %q (current, once, planned)", name)
}

// StepKind is what a scenario step does at its start.
type StepKind uint8

const (
	Steady  StepKind = iota // nothing: run for the step's duration
	Kill                    // kill -9 N live workers at once
	Join                    // N new workers join at once
	Drain                   // drain N workers one after the other, then stop each
	Restart                 // every client restarts: sessions abandoned, reopened
)

var stepNames = [...]string{Steady: "run", Kill: "kill", Join: "join", Drain: "drain", Restart: "restart"}

func (k StepKind) String() string {
	if int(k) < len(stepNames) {
		return stepNames[k]
	}
	return fmt.Sprintf("StepKind(%d)", uint8(k))
}

// Step is one phase of a scenario: its action at the start, then For of
// virtual time.
type Step struct {
	Kind StepKind
	N    int
	For  int64
}

func (s Step) String() string {
	if s.Kind == Steady {
		return fmt.Sprintf("run %ds", s.For/Second)
	}
	return fmt.Sprintf("%s %d, %ds", s.Kind, s.N, s.For/Second)
}

// DefaultScenario is steady state, 10 workers killed, 100 joining, a
// rolling drain of 10, then every client restarting. scale stretches the
// phases (1 = the full length).
func DefaultScenario(scale float64) []Step {
	d := func(s float64) int64 { return int64(s * scale * float64(Second)) }
	return []Step{
		{Kind: Steady, For: d(20)},
		{Kind: Kill, N: 10, For: d(30)},
		{Kind: Join, N: 100, For: d(20)},
		{Kind: Drain, N: 10, For: d(20)},
		{Kind: Restart, For: d(90)},
	}
}

// Config is one simulation.
type Config struct {
	Workers  int   // workers at the start
	Shards   int   // shard count
	Sessions int   // client sessions (one per client)
	Tokens   int64 // held tokens, spread uniformly over shards and sessions

	SessionTTL int64 // S
	WorkerTTL  int64 // W
	Grace      int64 // G

	Tick     int64 // virtual time step; default 10 ms
	Seed     uint64
	Scenario []Step
	Design   Design
	Costs    Costs

	// Clock reads a wall clock in nanoseconds to time the planner; nil:
	// planner times are not measured (reported as 0).
	Clock func() int64
	// SessionBytes is the worker heap per known session, measured by the
	// caller with the real worker/session core (see MeasureSessionBytes);
	// 0 leaves the memory rows out.
	SessionBytes int64
}

// Default returns the 1M-client plan: 1,000 workers, 65,536 shards, 1M
// sessions, 100M tokens, S = 10 s, W = 5 s, G = 5 s, the current design
// and the default scenario.
func Default() Config {
	return Config{
		Workers: 1000, Shards: 65536, Sessions: 1_000_000, Tokens: 100_000_000,
		SessionTTL: 10 * Second, WorkerTTL: 5 * Second, Grace: 5 * Second,
		Tick: 10 * Millisecond, Seed: 1,
		Scenario: DefaultScenario(1),
		Design:   Current(),
		Costs:    DefaultCosts(),
	}
}
