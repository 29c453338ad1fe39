// Package proctest holds what the real-process tests (tests/failover,
// tests/chaos, tests/multihost, tests/tour, cmd/tokend) share beyond the
// process harness internal/proc: a TestMain that checks for leaked
// goroutines, the tokend and tokenctl binaries and the C client's
// tokend-lock built once per run, fresh loopback ports, certificates made
// by "tokend certs" and an etcd client that uses them, and Start, which
// ties a process to a test (killed at cleanup, its output logged on
// failure). Only tests import it.
package proctest

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokend/tokend/testkit/freeport"
)

var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binErr   error
	binBuild time.Duration
)

// Main runs the package's tests with a temporary directory for built
// binaries, removes it, and, if the tests passed, fails the run when
// goroutines are still alive leakWait later (every cluster, client, proxy
// and process watcher must be gone; an etcd peer connection may take a few
// seconds to end). It returns the exit code for os.Exit.
func Main(m *testing.M, prefix string, leakWait time.Duration) int {
	flag.Parse()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code != 0 {
		return code
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		err := goleak.Find()
		if err == nil {
			return 0
		}
		if time.Since(start) > leakWait {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
}

// Tokend builds cmd/tokend once per run (the first test that needs it pays)
// and returns its path.
func Tokend(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		start := time.Now()
		binPath, binErr = goBuild("tokend")
		binBuild = time.Since(start)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

var (
	ctlOnce sync.Once
	ctlPath string
	ctlErr  error
)

// Tokenctl builds cmd/tokenctl once per run and returns its path.
func Tokenctl(t testing.TB) string {
	t.Helper()
	ctlOnce.Do(func() { ctlPath, ctlErr = goBuild("tokenctl") })
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlPath
}

func goBuild(cmd string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("no go command to build %s with: %w", cmd, err)
	}
	path := filepath.Join(binDir, cmd)
	out, err := exec.Command(goTool, "build", "-o", path, "github.com/tokend/tokend/cmd/"+cmd).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build cmd/%s: %v\n%s", cmd, err, out)
	}
	return path, nil
}

// SourceDir is the repository's root directory (the one with go.mod).
func SourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	cOnce sync.Once
	cDir  string
	cErr  error
	cSkip string
)

// CBuild builds the C client (make -C clientlib/c, into a directory of
// this run) once per run and returns that directory, which holds
// libtokend.a, libtokend.so, tokend.pc and tokend-lock. It skips the test
// when there is no C compiler or make.
func CBuild(t testing.TB) string {
	t.Helper()
	cOnce.Do(func() {
		for _, tool := range []string{"cc", "make"} {
			if _, err := exec.LookPath(tool); err != nil {
				cSkip = "no " + tool + " to build the C client with"
				return
			}
		}
		cDir = filepath.Join(binDir, "c")
		out, err := exec.Command("make", "-s", "-C", filepath.Join(SourceDir(), "clientlib", "c"), "B="+cDir, "all").CombinedOutput()
		if err != nil {
			cErr = fmt.Errorf("make -C clientlib/c: %v\n%s", err, out)
		}
	})
	if cSkip != "" {
		t.Skip(cSkip)
	}
	if cErr != nil {
		t.Fatal(cErr)
	}
	return cDir
}

// TokendLock returns the path of tokend-lock built by CBuild (skipping
// without a C toolchain).
func TokendLock(t testing.TB) string {
	t.Helper()
	return filepath.Join(CBuild(t), "tokend-lock")
}

// BuildTime is how long building tokend took (0 before Tokend).
func BuildTime() time.Duration { return binBuild }

// FreePort returns a loopback port free for both TCP and UDP that no other
// test of this run holds (see package freeport); network is kept for the
// callers' readability.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// FreeRange returns the first of n consecutive such ports.
func FreeRange(t testing.TB, n int) int {
	t.Helper()
	p, err := freeport.Range(n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Loop is 127.0.0.1:port.
func Loop(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
