package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

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

// workerProc is one worker process the bench started. It is killed only
// by its PID, and reaped.
type workerProc struct {
	spec  childSpec
	cmd   *exec.Cmd
	stdin io.Closer
	out   *tailBuffer   // its standard error (the worker's warnings)
	ready chan struct{} // closed when it printed childReady
	done  chan struct{} // closed when it has been reaped
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
	p := &workerProc{spec: spec, out: &tailBuffer{max: 16 << 10}, ready: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command(exe)
	p.cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	p.cmd.SysProcAttr = childAttr()
	p.cmd.Stdout = &readyWriter{ready: p.ready}
	p.cmd.Stderr = p.out
	p.cmd.WaitDelay = 2 * time.Second // the pipes' copiers, should the process hang on to them
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	p.stdin = stdin
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker %s: %w", spec.ID, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-p.ready:
		return p, nil
	case <-p.done:
		err = fmt.Errorf("exited: %v", p.cmd.ProcessState)
	case <-t.C:
		err = fmt.Errorf("not ready within %v", within)
	case <-ctx.Done():
		err = ctx.Err()
	}
	p.kill()
	return nil, fmt.Errorf("bench: worker %s (pid %d): %w; its output: %s", spec.ID, p.pid(), err, p.out.last(1000))
}

func (p *workerProc) pid() int { return p.cmd.Process.Pid }

func (p *workerProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the process (by its PID) and waits until it has
// been reaped, up to 10 s.
func (p *workerProc) kill() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("bench: kill worker %s (pid %d): %w", p.spec.ID, p.pid(), err)
	}
	select {
	case <-p.done:
		p.stdin.Close()
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("bench: worker %s (pid %d) not reaped 10s after SIGKILL", p.spec.ID, p.pid())
	}
}

// readyWriter is a worker process's standard output: it closes ready at
// the first line that starts with childReady, and discards everything.
type readyWriter struct {
	ready chan struct{}
	buf   []byte
	seen  bool
}

func (w *readyWriter) Write(b []byte) (int, error) {
	if w.seen {
		return len(b), nil
	}
	w.buf = append(w.buf, b...)
	for {
		line, rest, ok := bytes.Cut(w.buf, []byte("\n"))
		if !ok {
			break
		}
		w.buf = rest
		if strings.HasPrefix(string(line), childReady) {
			w.seen, w.buf = true, nil
			close(w.ready)
			break
		}
	}
	return len(b), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex // guards b
	b   []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// last returns up to n of the last bytes written, or "(none)".
func (t *tailBuffer) last(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.b[max(len(t.b)-n, 0):]
	if len(b) == 0 {
		return "(none)"
	}
	return strings.TrimSpace(string(b))
}
