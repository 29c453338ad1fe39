// Package proctest holds what the real-process tests (recovery/ and chaos/)
// share: a TestMain that checks for leaked goroutines, one tokend binary
// built per run, and fresh loopback ports. Only tests import it.
package proctest

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
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
		goTool, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("no go command to build tokend with: %w", err)
			return
		}
		start := time.Now()
		binPath = filepath.Join(binDir, "tokend")
		out, err := exec.Command(goTool, "build", "-o", binPath, "github.com/tokend/tokend/cmd/tokend").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build cmd/tokend: %v\n%s", err, out)
		}
		binBuild = time.Since(start)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// BuildTime is how long building tokend took (0 before Tokend).
func BuildTime() time.Duration { return binBuild }

var (
	portsMu sync.Mutex // guards ports
	ports   = map[int]bool{}
)

// FreePort returns a loopback port ("tcp" or "udp") not handed out before
// in this run.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	for range 100 {
		var port int
		if network == "tcp" {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port = l.Addr().(*net.TCPAddr).Port
			l.Close()
		} else {
			c, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port = c.LocalAddr().(*net.UDPAddr).Port
			c.Close()
		}
		portsMu.Lock()
		fresh := !ports[port]
		ports[port] = true
		portsMu.Unlock()
		if fresh {
			return port
		}
	}
	t.Fatal("no fresh port")
	return 0
}

// Loop is 127.0.0.1:port.
func Loop(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
