package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The tokend workloads run against tokend as users run it: the real tokend
// binary in processes of its own (an all-in-one process, plus "tokend
// worker" processes for the scaling workload), clients in the bench. The
// binary is built once per run (go build into a temporary directory) unless
// TOKEND_BIN names one.

// tokendBinEnv names an environment variable that points at a tokend binary
// to use instead of building one.
const tokendBinEnv = "TOKEND_BIN"

// buildDir holds what the bench builds (the tokend binary, the C load
// program); removed by cleanupBuilds at the end of Run.
var (
	buildMu  sync.Mutex // guards the fields below
	buildTmp string
	builtBin = map[string]string{} // what -> path
)

// buildTemp returns the run's build directory, creating it.
func buildTemp() (string, error) {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildTmp == "" {
		d, err := os.MkdirTemp("", "tokend-bench-build")
		if err != nil {
			return "", err
		}
		buildTmp = d
	}
	return buildTmp, nil
}

// cleanupBuilds removes everything the run built.
func cleanupBuilds() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildTmp != "" {
		os.RemoveAll(buildTmp)
	}
	buildTmp = ""
	builtBin = map[string]string{}
}

// built returns the cached result of build for key, running it once.
func built(key string, build func(dir string) (string, error)) (string, error) {
	buildMu.Lock()
	p, ok := builtBin[key]
	buildMu.Unlock()
	if ok {
		return p, nil
	}
	dir, err := buildTemp()
	if err != nil {
		return "", err
	}
	p, err = build(dir)
	if err != nil {
		return "", err
	}
	buildMu.Lock()
	builtBin[key] = p
	buildMu.Unlock()
	return p, nil
}

// tokendBinary returns the path of a tokend binary: $TOKEND_BIN, or one
// built from this module (the working directory must be inside it).
func tokendBinary(ctx context.Context) (string, error) {
	if p := os.Getenv(tokendBinEnv); p != "" {
		return p, nil
	}
	return built("tokend", func(dir string) (string, error) {
		out := filepath.Join(dir, "tokend")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/tokend/tokend/cmd/tokend")
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("bench: go build tokend (run inside the module, or set %s): %v\n%s", tokendBinEnv, err, b)
		}
		return out, nil
	})
}

// proc is a process the bench started: in a process group of its own,
// killed by the kernel should the bench die (childAttr), stopped only by
// its PID, and reaped.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer   // standard error, the last 16 KiB
	done chan struct{} // closed once reaped
}

// startProc starts cmd as a proc. Its standard output goes to stdout (nil:
// discarded).
func startProc(name string, cmd *exec.Cmd, stdout io.Writer) (*proc, error) {
	p := &proc{name: name, cmd: cmd, out: &tailBuffer{max: 16 << 10}, done: make(chan struct{})}
	cmd.SysProcAttr = childAttr()
	cmd.Stdout = stdout
	cmd.Stderr = p.out
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cpu is the CPU time the process used so far (0 once reaped).
func (p *proc) cpu() time.Duration {
	if p.exited() {
		return 0
	}
	return procCPU(p.pid())
}

// stop sends sig to the process, waits up to grace for it to exit, then
// kills its process group; it returns once the process is reaped (or 10 s
// after the kill).
func (p *proc) stop(sig os.Signal, grace time.Duration) error {
	if p.exited() {
		return nil
	}
	if sig != nil {
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
			return nil
		case <-time.After(grace):
		}
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL) // its group: the process and anything it started
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("bench: %s (pid %d) not reaped 10s after SIGKILL", p.name, p.pid())
	}
}

// lineWatcher is a process's standard output: it hands every line to
// lines (dropping them once nobody reads, or once full).
type lineWatcher struct {
	mu    sync.Mutex // guards buf
	buf   []byte
	lines chan string // buffered: see Write
}

func newLineWatcher() *lineWatcher { return &lineWatcher{lines: make(chan string, 64)} } // 64: a banner's lines

func (w *lineWatcher) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		line := string(w.buf[:i])
		w.buf = w.buf[i+1:]
		select {
		case w.lines <- line:
		default:
		}
	}
	return len(b), nil
}

// tokendProc is one tokend process: all-in-one or a worker.
type tokendProc struct {
	*proc
	id   string
	udp  string // the worker's UDP address
	http string // host:port of /metrics, /readyz
}

// procCluster is tokend in processes of its own on loopback: one
// all-in-one process (etcd member, coordinator, a worker) and n-1 worker
// processes, with a temporary data directory removed by close.
type procCluster struct {
	dir   string
	etcd  string // client endpoint of the all-in-one's etcd member
	cli   *clientv3.Client
	procs []*tokendProc
}

// startProcCluster starts tokend with the given number of workers (the
// first inside the all-in-one process) and waits until every shard is
// served and every worker owns some. On error nothing is left running.
func startProcCluster(ctx context.Context, cfg *Config, workers int) (pc *procCluster, err error) {
	bin, err := tokendBinary(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	pc = &procCluster{}
	defer func() {
		if err != nil {
			pc.close()
			pc = nil
		}
	}()
	if pc.dir, err = os.MkdirTemp("", "tokend-bench-data"); err != nil {
		return nil, err
	}
	client, peer := freeTCPPort(), freeTCPPort()
	if client == 0 || peer == 0 {
		return nil, errors.New("bench: no free TCP port for etcd")
	}
	pc.etcd = fmt.Sprintf("127.0.0.1:%d", client)
	common := []string{
		"--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0", "--log-level", "warn",
		"--worker-ttl", cfg.WorkerTTL.String(),
	}
	all := append([]string{
		"--data-dir", filepath.Join(pc.dir, "all"), "--worker-id", "w1",
		"--client-urls", "http://" + pc.etcd, "--peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peer),
		"--shards", strconv.Itoa(cfg.Shards), "--session-ttl", cfg.SessionTTL.String(), "--grace", cfg.WorkerTTL.String(),
	}, common...)
	p, err := startTokendProc(ctx, bin, "w1", all)
	if err != nil {
		return nil, err
	}
	pc.procs = append(pc.procs, p)
	for i := 2; i <= workers; i++ {
		id := fmt.Sprintf("w%d", i)
		args := append([]string{"worker", "--worker-id", id, "--etcd-endpoints", pc.etcd}, common...)
		p, err := startTokendProc(ctx, bin, id, args)
		if err != nil {
			return nil, err
		}
		pc.procs = append(pc.procs, p)
	}
	pc.cli, err = clientv3.New(clientv3.Config{Endpoints: []string{pc.etcd}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, p := range pc.procs {
		ids = append(ids, p.id)
	}
	// failoverCluster's view of etcd (the map and the registered workers).
	fc := &failoverCluster{cli: pc.cli}
	if _, err := fc.waitView(ctx, "every worker owns shards", 50*time.Second, func(v failoverView) bool { return v.balanced(ids...) }); err != nil {
		return nil, err
	}
	return pc, nil
}

// startTokendProc starts bin with args and waits until it printed its
// banner (worker and HTTP addresses) and its /readyz answers 200.
func startTokendProc(ctx context.Context, bin, id string, args []string) (*tokendProc, error) {
	lw := newLineWatcher()
	cmd := exec.Command(bin, args...)
	p, err := startProc("tokend "+id, cmd, lw)
	if err != nil {
		return nil, err
	}
	tp := &tokendProc{proc: p, id: id}
	fail := func(err error) (*tokendProc, error) {
		p.stop(nil, 0)
		return nil, fmt.Errorf("bench: tokend %s (pid %d): %w; its output: %s", id, p.pid(), err, p.out.last(1000))
	}
	for tp.udp == "" || tp.http == "" {
		select {
		case line := <-lw.lines:
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[0] == "worker" && strings.HasPrefix(f[2], "udp://"):
				tp.udp = strings.TrimPrefix(f[2], "udp://")
			case len(f) >= 2 && f[0] == "http" && strings.HasPrefix(f[1], "http://"):
				tp.http = strings.TrimSuffix(strings.TrimPrefix(f[1], "http://"), "/metrics")
			}
		case <-p.done:
			return fail(fmt.Errorf("exited: %v", p.cmd.ProcessState))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + tp.http + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return tp, nil
			}
		}
		select {
		case <-p.done:
			return fail(fmt.Errorf("exited: %v", p.cmd.ProcessState))
		case <-ctx.Done():
			return fail(fmt.Errorf("not ready: %w", ctx.Err()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Seeds are the workers' UDP addresses.
func (pc *procCluster) Seeds() []string {
	var out []string
	for _, p := range pc.procs {
		out = append(out, p.udp)
	}
	return out
}

// cpu is the CPU time the cluster's processes used so far.
func (pc *procCluster) cpu() time.Duration {
	var d time.Duration
	for _, p := range pc.procs {
		d += p.cpu()
	}
	return d
}

// rss is the resident set size of the cluster's processes, summed.
func (pc *procCluster) rss() int64 {
	var n int64
	for _, p := range pc.procs {
		v := procField("/proc/"+strconv.Itoa(p.pid())+"/status", "VmRSS")
		k, _ := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64)
		n += k << 10
	}
	return n
}

// close stops the workers, then the all-in-one process (SIGINT: at once,
// no drain), killing any that do not exit within 5 s, and removes the data
// directory.
func (pc *procCluster) close() error {
	if pc == nil {
		return nil
	}
	if pc.cli != nil {
		pc.cli.Close()
	}
	var errs []error
	for i := len(pc.procs) - 1; i >= 0; i-- {
		errs = append(errs, pc.procs[i].stop(os.Interrupt, 5*time.Second))
	}
	if pc.dir != "" {
		os.RemoveAll(pc.dir)
	}
	return errors.Join(errs...)
}

// freeTCPPort returns a loopback TCP port that was free a moment ago, or 0.
func freeTCPPort() int {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
