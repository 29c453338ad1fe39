package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Report is everything one run measured.
type Report struct {
	Started     time.Time    `json:"started"`
	ElapsedS    float64      `json:"elapsed_s"`
	Machine     Machine      `json:"machine"`
	Params      []Param      `json:"params"`
	Results     []Result     `json:"results"`
	Comparisons []Comparison `json:"comparisons"`
	Failures    []string     `json:"failures,omitempty"` // workloads that failed, and why
	Skipped     []string     `json:"skipped,omitempty"`  // workloads that could not run here, and why
	// Kills are the failover workload's kills, one by one.
	Kills []Kill `json:"failover_kills,omitempty"`
	// Goroutines before the run and after everything was closed.
	GoroutinesBefore int `json:"goroutines_before"`
	GoroutinesAfter  int `json:"goroutines_after"`
	// The machine is shared: load averages at the start and the end, and
	// the CPU other processes used during the run (cores, on average).
	LoadStart string  `json:"load_avg_start"`
	LoadEnd   string  `json:"load_avg_end"`
	OtherCPU  float64 `json:"other_processes_cores"`
}

// Param is one parameter of the run, printed.
type Param struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Params lists the parameters of c as printed in every report.
func (c Config) Params() []Param {
	ints := func(ns []int) string {
		var s []string
		for _, n := range ns {
			s = append(s, fmt.Sprint(n))
		}
		return strings.Join(s, ",")
	}
	mode := "full"
	if c.Quick {
		mode = "quick"
	}
	ps := []Param{
		{"mode", mode},
		{"clients (C)", fmt.Sprint(c.Clients)},
		{"window", c.Duration.String()},
		{"warmup", c.Warmup.String()},
		{"max ops per window", fmt.Sprint(c.MaxOps)},
		{"shards", fmt.Sprint(c.Shards)},
		{"tokend leases", fmt.Sprintf("worker %v, session %v, grace %v", c.WorkerTTL, c.SessionTTL, c.WorkerTTL)},
		{"echo payload", fmt.Sprintf("%d B", c.Payload)},
		{"contended hold variant", c.ContendedHold.String()},
		{"shared-heavy", fmt.Sprintf("%d PR readers holding %v, %d EX writers every %v", c.Readers, c.ReadHold, c.Writers, c.WriteEvery)},
		{"byte ranges", fmt.Sprintf("%d writers, %d-byte ranges", c.RangeWriter, c.RangeSize)},
		{"held sizes", ints(c.Held)},
		{"held sessions", fmt.Sprint(c.Holders)},
		{"worker counts", ints(c.WorkerSets)},
		{"etcd members", ints(c.EtcdMembers)},
		{"sessions", fmt.Sprintf("levels %s, hold %v each, session TTL %v", ints(c.SessionLevels), c.SessionHold, c.SessionTTL)},
		{"auth on / off", fmt.Sprintf("%d rounds of the uncontended and contended loops against each, alternating which goes first", c.AuthRounds)},
		{"failover", fmt.Sprintf("%d worker processes, %d kills -9; worker TTL %v, grace %v, session %v; %d held tokens and 1 cycler per shard, pause %v",
			c.FailoverWorkers, c.FailoverKills, c.FailoverTTL, c.FailoverGrace, c.FailoverSession, c.FailoverHeld, c.FailoverPause)},
	}
	if len(c.Only) > 0 {
		ps = append(ps, Param{"only", strings.Join(c.Only, ",")})
	}
	if d := os.Getenv(cSourceEnv); d != "" {
		ps = append(ps, Param{"C client built from", d})
	}
	if b := os.Getenv(tokendBinEnv); b != "" {
		ps = append(ps, Param{"tokend binary", b})
	}
	return ps
}

// Workloads are the names Config.Only accepts, in the order Run runs them.
var Workloads = []string{"echo", "uncontended", "contended", "shared", "ranges", "cached", "batched", "noauth", "redis", "inprocess", "held", "workers", "failover", "sessions", "etcd"}

// Systems of the report's rows.
const (
	sysTokend    = "tokend"           // tokend in its own process, Go client
	sysNoAuth    = "tokend (no auth)" // the same, tokend and clients started with --insecure / Insecure
	sysTokendG1  = "tokend-shared"    // tokend in its own process, one Go client shared by all goroutines
	sysTokendC   = "tokend-c"         // tokend in its own process, C client (one handle per thread)
	sysTokendC1  = "tokend-c-shared"  // tokend in its own process, C client (one handle shared by all threads)
	sysInProcess = "tokend-inprocess" // tokend in the bench's process (devcluster), Go client
	sysRedis     = "redis"            // redis-server in its own process, SET NX PX + Lua compare-and-delete
)

// Run runs every workload cfg selects, in the order of Workloads, and
// returns the report. A workload that fails is recorded in
// Report.Failures and the others still run; Run returns an error only when
// ctx ends. Everything it starts is stopped before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.Defaults()
	rep := &Report{Started: time.Now(), Machine: ThisMachine(), Params: cfg.Params(),
		GoroutinesBefore: runtime.NumGoroutine(), LoadStart: loadAvg()}
	// Our own CPU: this process and the processes it started and reaped
	// (tokend, cload, redis-server, echo servers, failover workers).
	own := func() time.Duration { return cpuTime() + childrenCPU() }
	busy0, own0 := machineBusy(), own()
	add := func(name string, rs []Result, err error) {
		rep.Results = append(rep.Results, rs...)
		if errors.Is(err, ErrSkipped) {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%s: %v", name, err))
			cfg.progress("%s skipped: %v", name, err)
		} else if err != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s: %v", name, err))
			cfg.progress("%s FAILED: %v", name, err)
		}
	}
	if cfg.runs("echo") && ctx.Err() == nil {
		rs, err := runEcho(ctx, &cfg)
		add("echo", rs, err)
	}
	tokendOnes := []struct {
		name string
		run  func(context.Context, *Config, target, string) ([]Result, error)
	}{
		{"uncontended", runUncontended},
		{"contended", runContended},
		{"shared", runShared},
		{"ranges", runRanges},
		{"cached", runCached},
		{"batched", runBatched},
	}
	var need bool
	for _, w := range tokendOnes {
		need = need || cfg.runs(w.name)
	}
	if need && ctx.Err() == nil {
		cfg.progress("tokend: starting its own process (all-in-one, %d shards)", cfg.Shards)
		pc, err := startProcCluster(ctx, &cfg, 1, false)
		if err != nil {
			add("tokend", nil, err)
		} else {
			// Authentication off: the uncontended and contended loops of
			// the Go client also run against a second tokend process
			// started with --insecure (clients without keys), each right
			// after the same loop against the first, so that the two are
			// measured under the same neighbours and the report can set
			// them side by side (compare: "auth on / off"). Idle, the
			// other process costs little (it shows in others_cpu).
			var npc *procCluster
			if (cfg.runs("uncontended") || cfg.runs("contended")) && cfg.runs("noauth") {
				cfg.progress("tokend --insecure: starting its own process (all-in-one, %d shards)", cfg.Shards)
				if npc, err = startProcCluster(ctx, &cfg, 1, true); err != nil {
					add("tokend (no auth)", nil, err)
					npc = nil
				}
			}
			for i, w := range tokendOnes {
				if !cfg.runs(w.name) || ctx.Err() != nil {
					continue
				}
				cfg.serverCPU = pc.cpu
				rs, err := w.run(ctx, &cfg, pc.target(), sysTokend)
				add(w.name, rs, err)
				if npc == nil || i >= 2 {
					continue
				}
				// Rounds: AB, then BA, AB, ... (A authenticated, B not);
				// the rows of rounds after the first are labelled with
				// their round, and only release on revoke is repeated.
				for r := 1; r <= cfg.AuthRounds && ctx.Err() == nil; r++ {
					on, off := cfg, cfg
					on.ContendedHold, off.ContendedHold = 0, 0
					off.serverCPU = npc.cpu
					runs := []struct {
						c    *Config
						t    target
						sys  string
						name string
					}{{&off, npc.target(), sysNoAuth, " (no auth)"}, {&on, pc.target(), sysTokend, ""}}
					if r%2 == 0 {
						runs[0], runs[1] = runs[1], runs[0]
					}
					for _, x := range runs {
						if r == 1 && x.sys == sysTokend || ctx.Err() != nil {
							continue // round 1's authenticated run is the one above
						}
						rs, err := w.run(ctx, x.c, x.t, x.sys)
						if r > 1 {
							for j := range rs {
								rs[j].Round = r
							}
						}
						add(fmt.Sprintf("%s%s, round %d", w.name, x.name, r), rs, err)
					}
				}
			}
			if npc != nil {
				if err := npc.close(); err != nil {
					add("tokend (no auth)", nil, err)
				}
			}
			cfg.serverCPU = pc.cpu
			for _, w := range tokendOnes[:2] {
				if cfg.runs(w.name) && ctx.Err() == nil {
					rs, err := runC(ctx, &cfg, pc.target(), w.name)
					add(w.name+" (C client)", rs, err)
				}
			}
			cfg.serverCPU = nil
			if err := pc.close(); err != nil {
				add("tokend", nil, err)
			}
		}
	}
	if cfg.runs("redis") && ctx.Err() == nil {
		rs, err := runRedis(ctx, &cfg)
		add("redis", rs, err)
	}
	// The same two workloads with tokend in this process (devcluster), for
	// comparison with earlier runs: a request then crosses goroutines, not
	// processes.
	if (cfg.runs("uncontended") || cfg.runs("contended")) && cfg.runs("inprocess") && ctx.Err() == nil {
		cfg.progress("tokend in-process: starting a cluster (1 worker, %d shards)", cfg.Shards)
		cl, err := startTokend(ctx, &cfg, 1)
		if err != nil {
			add("tokend in-process", nil, err)
		} else {
			for _, w := range tokendOnes[:2] {
				if cfg.runs(w.name) && ctx.Err() == nil {
					rs, err := w.run(ctx, &cfg, devTarget(cl), sysInProcess)
					add(w.name+" (in-process)", rs, err)
				}
			}
			cl.Close()
		}
	}
	if cfg.runs("held") && ctx.Err() == nil {
		rs, err := runHeld(ctx, &cfg)
		add("held", rs, err)
	}
	if cfg.runs("workers") && ctx.Err() == nil {
		rs, err := runWorkers(ctx, &cfg)
		add("workers", rs, err)
	}
	if cfg.runs("failover") && ctx.Err() == nil {
		rs, ks, err := runFailover(ctx, &cfg)
		rep.Kills = ks
		add("failover", rs, err)
	}
	if cfg.runs("sessions") && ctx.Err() == nil {
		rs, err := runSessions(ctx, &cfg)
		add("sessions", rs, err)
	}
	if cfg.runs("etcd") && ctx.Err() == nil {
		rs, err := runEtcdMutex(ctx, &cfg)
		add("etcd", rs, err)
	}
	rep.Comparisons = compare(&cfg, rep.Results)
	cfg.progress("cleaning up")
	cleanupBuilds()
	// A closed etcd member's peer connection can outlive it by up to 5 s
	// (see embedded/etcdtest); wait for that, not longer.
	rep.GoroutinesAfter = settle(rep.GoroutinesBefore, 8*time.Second)
	rep.ElapsedS = time.Since(rep.Started).Seconds()
	rep.LoadEnd = loadAvg()
	if busy0 > 0 {
		other := (machineBusy() - busy0) - (own() - own0)
		rep.OtherCPU = max(other.Seconds(), 0) / rep.ElapsedS
	}
	return rep, ctx.Err()
}
