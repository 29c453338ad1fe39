// Command tokend-bench runs tokend's benchmarks and comparisons on
// loopback, every server in a process of its own: tokend (the real binary,
// built once per run from this module, or $TOKEND_BIN) with Go clients and
// with C clients (cload, built with cc from clientlib/c), Redis's lock
// recipe against redis-server where installed, etcd's concurrency.Mutex on
// embedded etcd with 1 and 3 members, and UDP echo servers (batched and
// plain). It prints a side-by-side table and can write JSON and an SVG
// chart. For the echo servers it re-executes itself (a hidden mode, see
// bench.EchoChild); the failover and sessions workloads run tokend server
// and worker processes. It kills only the processes it started.
//
//	go run ./bench/cmd/tokend-bench --quick --json bench.json --svg bench.svg
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/bench"
)

func main() {
	bench.EchoChild() // an echo server process: runs it and exits
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tokend-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		quick    = flag.Bool("quick", false, "short run: windows of 2s, held set up to 1M (under 2 minutes on 2 cores)")
		jsonPath = flag.String("json", "", "write the report as JSON to this file")
		svgPath  = flag.String("svg", "", "draw throughput and latency percentiles as SVG to this file")
		cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of the tokend uncontended workload (C clients) to this file")
		heldProf = flag.String("heldprofile", "", "write a CPU profile of the uncontended pairs at the largest held set to this file")
		contProf = flag.String("contendedprofile", "", "write a CPU profile of the tokend contended workload (release on revoke) to this file")
		srvProf  = flag.String("serverprofiles", "", "start tokend with --pprof and save CPU profiles of the contended windows (auth on and off) in this directory: the tokend process's and the Go clients'")
		only     = flag.String("only", "", "comma-separated workloads to run ("+strings.Join(bench.Workloads, ",")+"); default all")
		clients  = flag.Int("clients", 0, "concurrent clients C (default 16)")
		window   = flag.Duration("duration", 0, "measurement window per workload (default 2s quick, 5s full)")
		warmup   = flag.Duration("warmup", 0, "unmeasured warm-up before each window")
		shards   = flag.Int("shards", 0, "shards per tokend cluster (default 256)")
		held     = flag.String("held", "", "held-set sizes, comma-separated (default 1000,100000,1000000; full adds 10000000)")
		rounds   = flag.Int("authrounds", 0, "noauth: rounds of the auth on / off comparison, alternating which goes first (default 3 quick, 9 full)")
		kills    = flag.Int("kills", 0, "failover: how many times to kill -9 a worker process (default 2 quick, 10 full)")
		quiet    = flag.Bool("quiet", false, "no progress lines even on a terminal")
	)
	flag.Parse()
	cfg := bench.Config{Quick: *quick, Clients: *clients, Duration: *window, Warmup: *warmup, Shards: *shards,
		FailoverKills: *kills, AuthRounds: *rounds}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
		for _, o := range cfg.Only {
			if !slices.Contains(bench.Workloads, o) {
				return fmt.Errorf("--only: unknown workload %q", o)
			}
		}
	}
	if *held != "" {
		for _, s := range strings.Split(*held, ",") {
			var n int
			if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
				return fmt.Errorf("--held: bad size %q", s)
			}
			cfg.Held = append(cfg.Held, n)
		}
	}
	if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 && !*quiet {
		start := time.Now()
		cfg.Progress = func(msg string) {
			fmt.Fprintf(os.Stderr, "[%5.1fs] %s\n", time.Since(start).Seconds(), msg)
		}
	}
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.CPUProfile = f
	}
	if *heldProf != "" {
		f, err := os.Create(*heldProf)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.HeldProfile = f
	}
	if *contProf != "" {
		f, err := os.Create(*contProf)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.ContendedProfile = f
	}
	if *srvProf != "" {
		if err := os.MkdirAll(*srvProf, 0o755); err != nil {
			return err
		}
		cfg.ServerProfileDir = *srvProf
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := bench.Run(ctx, cfg)
	if rep == nil {
		return runErr
	}
	if err := rep.PrintTable(os.Stdout); err != nil {
		return err
	}
	if *jsonPath != "" {
		if err := writeFile(*jsonPath, rep.WriteJSON); err != nil {
			return err
		}
	}
	if *svgPath != "" {
		if err := writeFile(*svgPath, rep.WriteSVG); err != nil {
			return err
		}
	}
	if runErr != nil {
		return runErr
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d workload(s) failed", len(rep.Failures))
	}
	return nil
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
