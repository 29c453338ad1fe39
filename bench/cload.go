package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tokend/tokend/internal/proc"
)

// The C client's figures come from cload (bench/cload/cload.c), a small
// load program built with the system C compiler from the C client's
// sources (clientlib/c), as clientlib/ctest builds its tests. The bench
// starts it against the tokend process, and it prints one JSON object.

// cSourceEnv names an environment variable that points at another copy of
// the C client's sources to build cload from (to compare two versions of
// the library in the same conditions); by default clientlib/c.
const cSourceEnv = "TOKEND_BENCH_CLIENT_C"

// ErrNoCC: there is no C compiler; the C client's rows are skipped.
var ErrNoCC = fmt.Errorf("%w: no C compiler (cc), the C client is not measured", ErrSkipped)

// cFlags are the C client's build flags: its own warnings policy, and
// optimised as a user would build it (its Makefile uses -O2).
var cFlags = []string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-pthread"}

// findCC returns the C compiler: $CC, cc, gcc or clang.
func findCC() (string, error) {
	for _, name := range []string{os.Getenv("CC"), "cc", "gcc", "clang"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrNoCC
}

// moduleDir returns the root of this module (where go.mod is), from the
// working directory.
func moduleDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("bench: go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("bench: not inside the tokend module: cannot find clientlib/c and bench/cload")
	}
	return filepath.Dir(mod), nil
}

// cloadBinary builds cload once per run and returns its path.
func cloadBinary(ctx context.Context) (string, error) {
	cc, err := findCC()
	if err != nil {
		return "", err
	}
	root, err := moduleDir(ctx)
	if err != nil {
		return "", err
	}
	src := filepath.Join(root, "clientlib", "c")
	if d := os.Getenv(cSourceEnv); d != "" {
		src = d
	}
	return built("cload", func(dir string) (string, error) {
		// The library is every .c file of the folder but the tokend-lock
		// command, as the Makefile's LIB_SRC lists them.
		all, err := filepath.Glob(filepath.Join(src, "*.c"))
		if err != nil {
			return "", err
		}
		var lib []string
		for _, f := range all {
			if f := filepath.Base(f); f != "tokend-lock.c" {
				lib = append(lib, f)
			}
		}
		flags := append([]string{}, cFlags...)
		var libs []string
		if slices.Contains(lib, "auth.c") {
			// Authentication (wire/SPEC.md section 20) with OpenSSL's
			// libcrypto; sources from before it have no auth.c.
			cf, l := libcrypto(ctx)
			flags, libs = append(flags, cf...), l
		}
		objs := make([]string, len(lib))
		errs := make([]error, len(lib))
		var wg sync.WaitGroup
		for i, f := range lib {
			objs[i] = filepath.Join(dir, strings.TrimSuffix(f, ".c")+".o")
			wg.Go(func() {
				args := append(append([]string{}, flags...), "-I", src, "-c", filepath.Join(src, f), "-o", objs[i])
				if b, err := exec.CommandContext(ctx, cc, args...).CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("cc %s: %v\n%s", f, err, b)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return "", fmt.Errorf("bench: build the C client: %w", err)
		}
		out := filepath.Join(dir, "cload")
		args := append(append([]string{}, flags...), "-I", src, filepath.Join(root, "bench", "cload", "cload.c"))
		args = append(append(append(args, objs...), libs...), "-o", out)
		if b, err := exec.CommandContext(ctx, cc, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("bench: build cload: %v\n%s", err, b)
		}
		return out, nil
	})
}

// libcrypto returns the compiler and linker flags of OpenSSL's libcrypto,
// which the C client's authentication needs: from pkg-config when it knows
// them, else plain -lcrypto.
func libcrypto(ctx context.Context) (cflags, libs []string) {
	libs = []string{"-lcrypto"}
	if out, err := exec.CommandContext(ctx, "pkg-config", "--cflags", "libcrypto").Output(); err == nil {
		cflags = strings.Fields(string(out))
	}
	if out, err := exec.CommandContext(ctx, "pkg-config", "--libs", "libcrypto").Output(); err == nil && len(strings.Fields(string(out))) > 0 {
		libs = strings.Fields(string(out))
	}
	return cflags, libs
}

// cloadResult is what cload prints.
type cloadResult struct {
	Threads   int     `json:"threads"`
	Mode      string  `json:"mode"`
	Handles   string  `json:"handles"`
	WindowS   float64 `json:"window_s"`
	Ops       int64   `json:"ops"`
	Rate      float64 `json:"rate_per_s"`
	Errors    int64   `json:"errors"`
	Revoked   int64   `json:"revoked"`
	Hits      int64   `json:"cache_hits"`
	Misses    int64   `json:"cache_misses"`
	LastError string  `json:"last_error"`
	Acquire   Latency `json:"acquire"`
	Release   Latency `json:"release"`
	Pair      Latency `json:"pair"`
	Revoke    Latency `json:"revoke_seen"`
}

// cloadRun is one run of cload.
type cloadRun struct {
	mode    string // uncontended, contended
	handles string // thread, shared
	threads int
	prefix  string // token names
	cache   int    // --cache: the handles' token cache (0: off)
}

// runCload runs cload against the cluster tgt and returns its result, with the CPU
// it used and what other processes used meanwhile (server processes of
// cfg.serverCPU excluded) over the whole run, connects and warm-up
// included.
func runCload(ctx context.Context, cfg *Config, tgt target, r cloadRun) (*cloadResult, loopResult, error) {
	bin, err := cloadBinary(ctx)
	if err != nil {
		return nil, loopResult{}, err
	}
	args := []string{"--seeds", strings.Join(tgt.seeds, ","), "--threads", fmt.Sprint(r.threads), "--mode", r.mode,
		"--handles", r.handles, "--warmup-ms", fmt.Sprint(cfg.Warmup.Milliseconds()),
		"--duration-ms", fmt.Sprint(cfg.Duration.Milliseconds()), "--max-ops", fmt.Sprint(cfg.MaxOps), "--prefix", r.prefix}
	if r.cache > 0 {
		args = append(args, "--cache", fmt.Sprint(r.cache))
	}
	if tgt.insecure() {
		args = append(args, "--insecure")
	} else {
		args = append(args, "--key-file", tgt.keyFile)
	}
	var stdout bytes.Buffer
	busy0, own0, srv0 := machineBusy(), cpuTime(), time.Duration(0)
	if cfg.serverCPU != nil {
		srv0 = cfg.serverCPU()
	}
	t0 := time.Now()
	p, err := startProc(proc.Spec{Name: "cload", Path: bin, Args: args, Stdout: &stdout})
	if err != nil {
		return nil, loopResult{}, err
	}
	// Connects take milliseconds; the loops end with the window, and a
	// queued acquire or a wait for a revocation within a second of it.
	limit := cfg.Warmup + cfg.Duration + 30*time.Second
	select {
	case <-p.Done():
	case <-time.After(limit):
		p.Kill()
		return nil, loopResult{}, fmt.Errorf("bench: cload did not end within %v; its output: %s", limit, lastOutput(p, 1000))
	case <-ctx.Done():
		p.Kill()
		return nil, loopResult{}, ctx.Err()
	}
	elapsed := time.Since(t0)
	st := p.State()
	if !st.Success() {
		return nil, loopResult{}, fmt.Errorf("bench: cload %s: %v; its output: %s", strings.Join(args, " "), st, lastOutput(p, 1000))
	}
	var res cloadResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return nil, loopResult{}, fmt.Errorf("bench: cload output %q: %w", stdout.String(), err)
	}
	l := loopResult{window: elapsed}
	l.cpu = st.UserTime() + st.SystemTime()
	if cfg.serverCPU != nil {
		l.server = max(cfg.serverCPU()-srv0, 0)
	}
	if busy0 > 0 {
		l.others = max(machineBusy()-busy0-(cpuTime()-own0)-l.cpu-l.server, 0)
	}
	return &res, l, nil
}

// runC measures workload ("uncontended" or "contended") with the C client
// on the cluster tgt: uncontended with 1 and cfg.Clients threads,
// contended with cfg.Clients, each with a handle per thread, and at
// cfg.Clients also with one handle shared by every thread.
func runC(ctx context.Context, cfg *Config, tgt target, workload string) ([]Result, error) {
	var runs []cloadRun
	for _, n := range dedupe(1, cfg.Clients) {
		if workload == "contended" && n != cfg.Clients {
			continue
		}
		runs = append(runs, cloadRun{mode: workload, handles: "thread", threads: n})
		if n > 1 {
			runs = append(runs, cloadRun{mode: workload, handles: "shared", threads: n})
		}
	}
	var out []Result
	for i, r := range runs {
		sys := sysTokendC
		if r.handles == "shared" {
			sys = sysTokendC1
		}
		cfg.progress("%s %s: %d threads", sys, workload, r.threads)
		r.prefix = fmt.Sprintf("bench/cload/%s/%d/%d", workload, i, time.Now().UnixNano())
		c, l, err := runCload(ctx, cfg, tgt, r)
		if err != nil {
			return out, err
		}
		res := Result{Workload: workload, System: sys, Clients: r.threads, WindowS: c.WindowS, Count: c.Ops,
			Rate: c.Rate, Errors: c.Errors, LastError: c.LastError}
		if workload == "contended" {
			res.Variant, res.Unit, res.Note = "release on revoke", "handoff", "C client (cload), one token, EX, hold until revoked"
			res.Latencies = []NamedLatency{{"acquire", c.Acquire}, {"release", c.Release}, {"grant→revoke seen", c.Revoke}}
			res.metric("revoked", 100*float64(c.Revoked)/float64(max(c.Ops, 1)), "% of grants")
			if c.Rate > 0 {
				res.metric("handoff", 1e6/c.Rate, "µs")
			}
		} else {
			res.Unit, res.Note = "pair", "C client (cload), own token per thread, EX, acquire+release"
			res.Latencies = []NamedLatency{{"acquire", c.Acquire}, {"release", c.Release}, {"pair", c.Pair}}
			res.metric("ops", 2*c.Rate, "requests/s")
		}
		res.Latencies = slicesNonEmpty(res.Latencies)
		if l.window > 0 {
			res.metric("cload_cpu", l.cpu.Seconds()/l.window.Seconds(), "cores")
			if l.server > 0 {
				res.metric("server_cpu", l.server.Seconds()/l.window.Seconds(), "cores")
			}
			if l.others > 0 {
				res.metric("others_cpu", l.others.Seconds()/l.window.Seconds(), "cores")
			}
		}
		out = append(out, res)
	}
	return out, nil
}

// slicesNonEmpty drops latencies with no sample.
func slicesNonEmpty(ls []NamedLatency) []NamedLatency {
	var out []NamedLatency
	for _, l := range ls {
		if l.Count > 0 {
			out = append(out, l)
		}
	}
	return out
}
