package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/worker"
)

// The failover workload needs workers that die for real (kill -9), so they
// run as processes: the bench re-executes its own binary (os.Executable)
// with childEnv set, and WorkerChild, called first in main, turns that
// process into one worker. Nothing but the bench's own binary is needed.

// childEnv names the environment variable that makes this process a
// failover worker; its value is a childSpec in JSON.
const childEnv = "TOKEND_BENCH_WORKER"

// childSpec is what a worker process is told.
type childSpec struct {
	ID        string   `json:"id"`
	Endpoints []string `json:"etcd_endpoints"`
	UDPAddr   string   `json:"udp_addr"`
	TTLms     int64    `json:"ttl_ms"`
}

// childReady starts the line a worker process prints on its standard
// output once it has registered and serves its socket.
const childReady = "ready "

// WorkerChild runs this process as a failover worker, or as the echo
// server, and exits it, if the environment asks for one (the bench
// re-executes its own binary with TOKEND_BENCH_WORKER or TOKEND_BENCH_ECHO
// set); otherwise it returns at once. The worker runs
// until its standard input closes (the bench closed it or died) or it
// gets SIGTERM. Call it first thing in main, and in TestMain of tests that
// run the failover workload.
func WorkerChild() {
	if kind, ok := os.LookupEnv(echoChildEnv); ok { // an echo server process (echo.go)
		if err := runEchoChild(kind, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tokend-bench echo:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	spec, ok := os.LookupEnv(childEnv)
	if !ok {
		return
	}
	if err := runChild(spec, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tokend-bench worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// runChild runs one worker as spec says until stdin reaches EOF or the
// process is told to stop.
func runChild(spec string, stdin io.Reader, stdout, stderr io.Writer) error {
	var s childSpec
	if err := json.Unmarshal([]byte(spec), &s); err != nil {
		return fmt.Errorf("%s: %w", childEnv, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // ends with the process
		io.Copy(io.Discard, stdin)
		cancel()
	}()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	w, err := worker.New(worker.Config{
		Client: cli, ID: s.ID, UDPAddr: s.UDPAddr, TTL: time.Duration(s.TTLms) * time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Registry: prometheus.NewRegistry(),
	})
	if err != nil {
		return err
	}
	defer w.Close()
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	err = w.Start(sctx)
	scancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s%s pid %d\n", childReady, w.Addr(), os.Getpid())
	<-ctx.Done()
	return nil
}

// workerProc is one worker process the bench started (startProc).
type workerProc struct {
	*proc.Process
	spec childSpec
}

// startWorkerProc starts this binary as a worker process and waits (up to
// within) until it serves. On error nothing is left running.
func startWorkerProc(ctx context.Context, spec childSpec, within time.Duration) (*workerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: no executable to start workers from: %w", err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	// Its standard output: ready closes at the first line that starts
	// with childReady.
	ready := make(chan struct{})
	var once sync.Once
	lw := proc.NewLineWriter(func(l []byte) {
		if strings.HasPrefix(string(l), childReady) {
			once.Do(func() { close(ready) })
		}
	})
	p, err := startProc(proc.Spec{Name: "worker " + spec.ID, Path: exe, Env: []string{childEnv + "=" + string(js)}, Stdout: lw, StdinPipe: true})
	if err != nil {
		return nil, fmt.Errorf("bench: start worker %s: %w", spec.ID, err)
	}
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-ready:
		return &workerProc{Process: p, spec: spec}, nil
	case <-p.Done():
		err = fmt.Errorf("exited: %v", p.State())
	case <-t.C:
		err = fmt.Errorf("not ready within %v", within)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.Kill()
	return nil, fmt.Errorf("bench: worker %s (pid %d): %w; its output: %s", spec.ID, p.PID(), err, lastOutput(p, 1000))
}
