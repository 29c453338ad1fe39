// Command tokend-sim simulates a tokend cluster at scale in virtual time
// (package bench/sim): the real planner, delegation map and MAP_REPLY
// encoding over a virtual cluster of workers, sessions and held tokens,
// with etcd and the network as a cost model. It prints, per scenario
// phase, etcd operations per second by kind, watch fan-out, map versions,
// sizes and datagrams per fetch, planner time, shards moved, failover
// times and session losses, for each design asked for.
//
//	go run ./bench/cmd/tokend-sim                          # the 1M-client plan, both designs
//	go run ./bench/cmd/tokend-sim -sessions 20000 -workers 20 -shards 1024 -tokens 200000
//	go run ./bench/cmd/tokend-sim -scenario run:20s,kill:10:30s -design planned -json out.json
//
// The planner's time is measured on this machine (the one wall-clock
// measurement); so is the worker heap per known session, with the real
// worker/session core. Everything else is virtual.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/bench/sim"
	"github.com/tokend/tokend/worker/session"
)

func main() {
	def := sim.Default()
	var (
		workers  = flag.Int("workers", def.Workers, "workers at the start")
		shards   = flag.Int("shards", def.Shards, "shard count")
		sessions = flag.Int("sessions", def.Sessions, "client sessions")
		tokens   = flag.Int64("tokens", def.Tokens, "held tokens")
		sttl     = flag.Duration("S", time.Duration(def.SessionTTL), "session TTL")
		wttl     = flag.Duration("W", time.Duration(def.WorkerTTL), "worker TTL")
		grace    = flag.Duration("G", time.Duration(def.Grace), "grace period")
		tick     = flag.Duration("tick", time.Duration(def.Tick), "virtual time step")
		seed     = flag.Uint64("seed", def.Seed, "seed of the simulation's randomness")
		designs  = flag.String("design", "current,planned", "designs to run, comma-separated: current, once (before the renewal stream), planned")
		scenario = flag.String("scenario", "run:20s,kill:10:30s,join:100:20s,drain:10:20s,restart:90s",
			"phases, comma-separated: run:DUR, kill:N:DUR, join:N:DUR, drain:N:DUR, restart:DUR")
		jsonOut = flag.String("json", "", "also write the reports as JSON to this file")
		measure = flag.Int("measure-sessions", 100000, "sessions to allocate with the real worker/session core to measure heap per session (0: skip)")
	)
	flag.Parse()
	steps, err := parseScenario(*scenario)
	if err != nil {
		fail(err)
	}
	var perSession int64
	if *measure > 0 {
		perSession = measureSessionBytes(*measure)
	}
	out := map[string]*sim.Report{}
	for _, name := range strings.Split(*designs, ",") {
		d, err := sim.DesignByName(strings.TrimSpace(name))
		if err != nil {
			fail(err)
		}
		cfg := def
		cfg.Workers, cfg.Shards, cfg.Sessions, cfg.Tokens = *workers, *shards, *sessions, *tokens
		cfg.SessionTTL, cfg.WorkerTTL, cfg.Grace = int64(*sttl), int64(*wttl), int64(*grace)
		cfg.Tick, cfg.Seed, cfg.Scenario, cfg.Design = int64(*tick), *seed, steps, d
		cfg.SessionBytes = perSession
		cfg.Clock = func() int64 { return time.Now().UnixNano() }
		began := time.Now()
		r, err := sim.Run(cfg)
		if err != nil {
			fail(err)
		}
		r.Table(os.Stdout)
		fmt.Printf("(simulated in %.1fs of wall-clock time", time.Since(began).Seconds())
		if perSession > 0 {
			fmt.Printf("; worker heap per known session measured at %d B with worker/session", perSession)
		}
		fmt.Print(")\n\n")
		out[d.Name] = r
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(out, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
		}
		if err != nil {
			fail(err)
		}
	}
}

// parseScenario reads "run:20s,kill:10:30s,...".
func parseScenario(s string) ([]sim.Step, error) {
	var steps []sim.Step
	for _, part := range strings.Split(s, ",") {
		f := strings.Split(strings.TrimSpace(part), ":")
		kinds := map[string]sim.StepKind{"run": sim.Steady, "kill": sim.Kill, "join": sim.Join, "drain": sim.Drain, "restart": sim.Restart}
		k, ok := kinds[f[0]]
		if !ok {
			return nil, fmt.Errorf("scenario: unknown phase %q", f[0])
		}
		st := sim.Step{Kind: k}
		durAt := 1
		if k == sim.Kill || k == sim.Join || k == sim.Drain {
			if len(f) != 3 {
				return nil, fmt.Errorf("scenario: %q: want %s:N:DURATION", part, f[0])
			}
			n, err := strconv.Atoi(f[1])
			if err != nil || n < 1 {
				return nil, fmt.Errorf("scenario: %q: bad count", part)
			}
			st.N, durAt = n, 2
		} else if len(f) != 2 {
			return nil, fmt.Errorf("scenario: %q: want %s:DURATION", part, f[0])
		}
		d, err := time.ParseDuration(f[durAt])
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("scenario: %q: bad duration", part)
		}
		st.For = int64(d)
		steps = append(steps, st)
	}
	return steps, nil
}

// workerSession has the shape of the worker's per-session record
// (worker/state.go session), around the real worker/session core.
type workerSession struct {
	id       uint64
	addr     *net.UDPAddr
	core     *session.Session
	shards   map[uint32]struct{}
	renewing uint64
	closing  bool
}

// measureSessionBytes returns the live heap per session of n sessions as
// a worker keeps them: a map from session id to a record holding the real
// session core, an address and a shard set.
func measureSessionBytes(n int) int64 {
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	m := map[uint64]*workerSession{}
	for i := range n {
		id := 0x694d5765fc710000 + uint64(i)
		m[id] = &workerSession{
			id:     id,
			addr:   &net.UDPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).To4(), Port: 40000 + i%20000},
			core:   session.New(session.Config{Cap: 16384, Hard: 32768, Seed: id}),
			shards: map[uint32]struct{}{},
		}
	}
	after := heap()
	runtime.KeepAlive(m)
	return int64(after-before) / int64(n)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tokend-sim:", err)
	os.Exit(1)
}
