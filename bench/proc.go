package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/internal/proc"
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

// startProc starts a process of the bench (internal/proc): on Linux in a
// process group of its own (a Ctrl-C on the terminal reaches the bench,
// which stops it in order) and killed by the kernel should the bench die;
// stopped only by its PID or group, and reaped. The last 16 KiB of its
// output are kept (lastOutput).
func startProc(s proc.Spec) (*proc.Process, error) {
	s.Setpgid = runtime.GOOS == "linux"
	s.Pdeathsig = syscall.SIGKILL
	s.Keep = 16 << 10
	s.WaitDelay = 2 * time.Second // the pipes' copiers, should the process hang on to them
	p, err := proc.Start(s)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return p, nil
}

// lastOutput returns up to the last n bytes p wrote, or "(none)".
func lastOutput(p *proc.Process, n int) string {
	if b := strings.TrimSpace(p.Out.Tail(n)); b != "" {
		return b
	}
	return "(none)"
}

// cpuOf is the CPU time the process used so far (0 once reaped).
func cpuOf(p *proc.Process) time.Duration {
	if p.Exited() {
		return 0
	}
	return procCPU(p.PID())
}

// lineChan returns a writer for a process's standard output that hands
// every line to the channel (dropping them once nobody reads, or once
// full: 64 holds a banner's lines).
func lineChan() (*proc.LineWriter, <-chan string) {
	lines := make(chan string, 64)
	return proc.NewLineWriter(func(l []byte) {
		select {
		case lines <- string(l):
		default:
		}
	}), lines
}

// tokendProc is one tokend process: all-in-one or a worker.
type tokendProc struct {
	*proc.Process
	id   string
	udp  string // the worker's UDP address
	http string // host:port of /metrics, /readyz
}

// procCluster is tokend in processes of its own on loopback: one
// all-in-one process (etcd member, coordinator, a worker) and n-1 worker
// processes, with a temporary data directory removed by close.
type procCluster struct {
	dir      string
	certs    string // the all-in-one's certificates and keys (<data-dir>/pki)
	insecure bool   // started with --insecure
	pprof    bool   // started with --pprof
	etcd     string // client endpoint of the all-in-one's etcd member
	cli      *clientv3.Client
	procs    []*tokendProc
}

// startProcCluster starts tokend with the given number of workers (the
// first inside the all-in-one process) and waits until every shard is
// served and every worker owns some. As users run it, etcd runs over TLS
// with authentication and the workers authenticate their clients (the
// client key file the all-in-one's first start writes, procCluster.target);
// insecure starts every process with --insecure instead: etcd without TLS,
// and clients without keys. On error nothing is left running.
func startProcCluster(ctx context.Context, cfg *Config, workers int, insecure bool) (pc *procCluster, err error) {
	bin, err := tokendBinary(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	pc = &procCluster{insecure: insecure}
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
	// etcd over TLS with authentication, as users run tokend: the
	// all-in-one makes its CA, certificates and keys (cluster.key,
	// client.key) in <data-dir>/pki on its first start; the workers, the
	// bench's etcd client and the clients use them.
	dataDir := filepath.Join(pc.dir, "all")
	pc.certs = filepath.Join(dataDir, "pki")
	scheme := "https://"
	if insecure {
		scheme = "http://"
		common = append(common, "--insecure")
	}
	if cfg.ServerProfileDir != "" {
		common = append(common, "--pprof")
		pc.pprof = true
	}
	all := append([]string{
		"--data-dir", dataDir, "--worker-id", "w1",
		"--client-urls", scheme + pc.etcd, "--peer-urls", fmt.Sprintf("%s127.0.0.1:%d", scheme, peer),
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
		if !insecure {
			args = append(args, "--certs-dir", pc.certs)
		}
		p, err := startTokendProc(ctx, bin, id, args)
		if err != nil {
			return nil, err
		}
		pc.procs = append(pc.procs, p)
	}
	if insecure {
		pc.cli, err = cluster.Dial(cluster.DialConfig{Endpoints: []string{pc.etcd}})
	} else {
		pc.cli, err = dialEtcd(pc.certs, pc.etcd)
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, p := range pc.procs {
		ids = append(ids, p.id)
	}
	if _, err := waitView(ctx, pc.cli, "every worker owns shards", 50*time.Second, func(v proc.View) bool { return v.Balanced(ids...) }); err != nil {
		return nil, err
	}
	return pc, nil
}

// startTokendProc starts bin with args and waits until it printed its
// banner (its worker's and its HTTP address) and its /readyz answers 200.
func startTokendProc(ctx context.Context, bin, id string, args []string) (*tokendProc, error) {
	lw, lines := lineChan()
	p, err := startProc(proc.Spec{Name: "tokend " + id, Path: bin, Args: args, Stdout: lw})
	if err != nil {
		return nil, err
	}
	tp := &tokendProc{Process: p, id: id}
	fail := func(err error) (*tokendProc, error) {
		p.Kill()
		return nil, fmt.Errorf("bench: tokend %s (pid %d): %w; its output: %s", id, p.PID(), err, lastOutput(p, 1000))
	}
	// The banner comes in one write; its worker line (none for a server)
	// comes before its http line.
	for tp.http == "" {
		select {
		case line := <-lines:
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[0] == "worker" && strings.HasPrefix(f[2], "udp://"):
				tp.udp = strings.TrimPrefix(f[2], "udp://")
			case len(f) >= 2 && f[0] == "http" && strings.HasPrefix(f[1], "http://"):
				tp.http = strings.TrimSuffix(strings.TrimPrefix(f[1], "http://"), "/metrics")
			}
		case <-p.Done():
			return fail(fmt.Errorf("exited: %v", p.State()))
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	if err := p.WaitReady(ctx, tp.http); err != nil {
		return fail(err)
	}
	return tp, nil
}

// Seeds are the workers' UDP addresses.
func (pc *procCluster) Seeds() []string {
	var out []string
	for _, p := range pc.procs {
		out = append(out, p.udp)
	}
	return out
}

// target is the cluster for its clients: the workers' addresses and the
// client key file the all-in-one wrote (none with --insecure).
func (pc *procCluster) target() target {
	t := target{seeds: pc.Seeds()}
	if !pc.insecure {
		t.keyFile = filepath.Join(pc.certs, pki.DefaultClientKeyFile)
	}
	if pc.pprof {
		t.pprof = pc.procs[0].http
	}
	return t
}

// cpu is the CPU time the cluster's processes used so far.
func (pc *procCluster) cpu() time.Duration {
	var d time.Duration
	for _, p := range pc.procs {
		d += cpuOf(p.Process)
	}
	return d
}

// rss is the resident set size of the cluster's processes, summed.
func (pc *procCluster) rss() int64 {
	var n int64
	for _, p := range pc.procs {
		v := procField("/proc/"+strconv.Itoa(p.PID())+"/status", "VmRSS")
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
		errs = append(errs, pc.procs[i].Stop(syscall.SIGINT, 5*time.Second))
	}
	if pc.dir != "" {
		os.RemoveAll(pc.dir)
	}
	return errors.Join(errs...)
}

// makeCerts runs "tokend certs --dir dir --server NAME=HOST ..." for
// servers, as an operator would before starting a cluster of "tokend
// server" processes.
func makeCerts(ctx context.Context, bin, dir string, servers ...string) error {
	args := []string{"certs", "--dir", dir}
	for _, s := range servers {
		args = append(args, "--server", s)
	}
	p, err := startProc(proc.Spec{Name: "tokend certs", Path: bin, Args: args})
	if err != nil {
		return err
	}
	if err := p.Wait(ctx); err != nil {
		p.Kill()
		return fmt.Errorf("bench: tokend certs: %w", err)
	}
	if err := p.Err(); err != nil {
		return fmt.Errorf("bench: tokend certs: %v; its output: %s", err, lastOutput(p, 1000))
	}
	return nil
}

// dialEtcd returns an etcd client of endpoints acting as the etcd user
// root (the operator) with the certificates in certsDir, made by "tokend
// certs" or by the all-in-one's first start.
func dialEtcd(certsDir string, endpoints ...string) (*clientv3.Client, error) {
	return cluster.Dial(cluster.DialConfig{Endpoints: endpoints, TLS: &cluster.ClientTLS{
		CAFile:   filepath.Join(certsDir, pki.CACertFile),
		CertFile: filepath.Join(certsDir, pki.ClientCertFile(pki.UserRoot)),
		KeyFile:  filepath.Join(certsDir, pki.ClientKeyFile(pki.UserRoot)),
	}})
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
