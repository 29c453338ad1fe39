//go:build linux

package failover

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/wire"
)

// lockRun is one run of a lock command: its exit status and stderr.
type lockRun struct {
	loop   int
	long   bool
	code   int
	stderr string
	said   time.Time // when it first wrote to stderr
	ended  time.Time
}

// stampedBuffer is a bytes.Buffer that remembers when it was first written.
// Only exec's copying goroutine writes; the test reads after Wait.
// (Not embedded: io.Copy would use bytes.Buffer's ReadFrom and skip Write.)
type stampedBuffer struct {
	b     bytes.Buffer
	first time.Time
}

func (b *stampedBuffer) Write(p []byte) (int, error) {
	if b.first.IsZero() {
		b.first = time.Now()
	}
	return b.b.Write(p)
}

func (b *stampedBuffer) String() string { return b.b.String() }

// TestLockCommandWorkerKill is issue 11's acceptance test for running a
// command under a token (tokend-lock, and tokenctl acquire NAME -- cmd):
// 8 loops append "start FENCE" / "end FENCE" to one file under one token
// while the worker owning the token's shard is killed with kill -9. One run
// is long (10 s) and is running when the worker dies: its grant's validity
// runs out and the command must be stopped (exit 4) before anyone else is
// granted the token. The file must alternate start/end (the only start
// without its end is a stopped run's), fences strictly increase, and every
// run that did not exit 0 says why on stderr.
func TestLockCommandWorkerKill(t *testing.T) {
	skipShort(t)
	ctl := proctest.Tokenctl(t)
	const shards = 64
	c := startOneServer(t, shards, 3,
		[]string{"--session-ttl", "5s", "--grace", "2s"},
		[]string{"--worker-ttl", "2s", "--shutdown-timeout", "3s"})
	killed := map[string]bool{}
	for _, tool := range []string{"tokend-lock", "tokenctl"} {
		t.Run(tool, func(t *testing.T) {
			var bin string
			if tool == "tokend-lock" {
				bin = proctest.TokendLock(t)
			} else {
				bin = ctl
			}
			lockWorkerKill(t, c, killed, tool, func(name string, seeds []string, script string) *exec.Cmd {
				var cmd *exec.Cmd
				if tool == "tokend-lock" {
					args := []string{"-w", "15000"}
					for _, s := range seeds {
						args = append(args, "-s", s)
					}
					cmd = exec.Command(bin, append(args, name, "sh", "-c", script)...)
				} else {
					cmd = exec.Command(bin, "acquire", "--seeds", strings.Join(seeds, ","), "--wait", "15s", name, "--", "sh", "-c", script)
				}
				cmd.Env = append(os.Environ(), "TOKEND_KEY_FILE="+c.keyFile()) // both tools read it
				return cmd
			})
		})
	}
}

func lockWorkerKill(t *testing.T, c *oneServer, killed map[string]bool, tool string,
	command func(name string, seeds []string, script string) *exec.Cmd) {
	name := "lock-" + tool
	file := filepath.Join(t.TempDir(), "F")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, w := range c.workers {
		if !killed[w.id] {
			live = append(live, w.addr())
		}
	}
	v := waitView(t, c.cli, "a map", 10*time.Second, func(v view) bool { return v.Balanced() })
	owner, _, _ := v.Map.Lookup(int(wire.Shard([]byte(name), shards(v))))
	var victim *workerProc
	for _, w := range c.workers {
		if w.id == owner.ID {
			victim = w
		}
	}
	if victim == nil || killed[victim.id] {
		t.Fatalf("token %s: shard owner %q is not a live worker of the test", name, owner.ID)
	}
	var seeds []string // the live workers, the victim last
	for _, a := range live {
		if a != victim.addr() {
			seeds = append(seeds, a)
		}
	}
	seeds = append(seeds, victim.addr())

	short := `echo "start $TOKEND_FENCE" >>` + file + `; sleep 0.005; echo "end $TOKEND_FENCE" >>` + file
	long := `echo "start $TOKEND_FENCE long" >>` + file + `; sleep 10; echo "end $TOKEND_FENCE long" >>` + file

	start := time.Now()
	var stopAt time.Time // set when the victim is killed
	var mu sync.Mutex    // guards stopAt, runs and seeds after the kill
	var runs []lockRun
	var wg sync.WaitGroup
	const loops, maxRuns = 8, 150
	longStarted := make(chan struct{})
	for l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range maxRuns {
				mu.Lock()
				done := !stopAt.IsZero() && time.Now().After(stopAt)
				sd := seeds
				mu.Unlock()
				if done || time.Since(start) > 40*time.Second {
					return
				}
				isLong := l == 0 && i == 3
				script := short
				if isLong {
					script = long
				}
				cmd := command(name, sd, script)
				var errb stampedBuffer
				cmd.Stderr = &errb
				if isLong {
					if err := cmd.Start(); err != nil {
						t.Error(err)
						return
					}
					go func() {
						// Tell the test once the long command has written its start.
						for time.Since(start) < 30*time.Second {
							if b, _ := os.ReadFile(file); bytes.Contains(b, []byte(" long\n")) {
								close(longStarted)
								return
							}
							time.Sleep(20 * time.Millisecond)
						}
					}()
				}
				var err error
				if isLong {
					err = cmd.Wait()
				} else {
					err = cmd.Run()
				}
				code := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					code = ee.ExitCode()
				} else if err != nil {
					t.Errorf("%s: %v", tool, err)
					return
				}
				mu.Lock()
				runs = append(runs, lockRun{loop: l, long: isLong, code: code, stderr: errb.String(), said: errb.first, ended: time.Now()})
				mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() { // the loops end, and stop testing, before the test does
		mu.Lock()
		if stopAt.IsZero() || time.Now().Before(stopAt) {
			stopAt = time.Now()
		}
		mu.Unlock()
		wg.Wait()
	})
	select {
	case <-longStarted:
	case <-time.After(30 * time.Second):
		t.Fatal("the long command never started")
	}
	logf(t, start, "the long command runs; kill -9 %s (owner of %s's shard)", victim.id, name)
	victim.p.Kill()
	killedAt := time.Now()
	killed[victim.id] = true
	mu.Lock()
	stopAt = time.Now().Add(12 * time.Second) // worker TTL 2 s + grace 2 s, then some runs
	seeds = seeds[:len(seeds)-1]
	mu.Unlock()
	wg.Wait()
	logf(t, start, "loops done")

	// Every run that did not exit 0 said why; count them.
	codes := map[int]int{}
	stopped := map[uint64]bool{} // fences of runs that exited 4
	fenceRE := regexp.MustCompile(`\(fence (\d+)\)`)
	for _, r := range runs {
		codes[r.code]++
		if r.code == 0 {
			continue
		}
		if !strings.Contains(r.stderr, tool+":") {
			t.Errorf("%s run (loop %d) exited %d without saying why; stderr %q", tool, r.loop, r.code, r.stderr)
		}
		if r.code == 4 {
			if m := fenceRE.FindStringSubmatch(r.stderr); m != nil {
				f, _ := strconv.ParseUint(m[1], 10, 64)
				stopped[f] = true
			}
		}
		if r.long {
			t.Logf("the long run reported its command stopped %v after the kill, exited %v after it", r.said.Sub(killedAt).Round(time.Millisecond),
				r.ended.Sub(killedAt).Round(time.Millisecond))
		}
		if r.long && r.code != 4 {
			t.Errorf("the long run exited %d, want 4 (stopped when its worker died); stderr %q", r.code, r.stderr)
		}
	}
	t.Logf("%s: %d runs, exit codes %v", tool, len(runs), codes)
	for _, r := range runs {
		if r.code != 0 {
			t.Logf("loop %d (long %v): exit %d: %s", r.loop, r.long, r.code, strings.TrimSpace(r.stderr))
		}
	}

	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkAlternation(string(b), stopped); err != nil {
		t.Errorf("%s: %v\n%s", file, err, b)
	}
	// Some runs were granted by the shard's new owner (a higher epoch).
	epochs := map[uint32]int{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "start" {
			fence, _ := strconv.ParseUint(f[1], 10, 64)
			epochs[wire.FenceEpoch(fence)]++
		}
	}
	t.Logf("commands started per shard epoch: %v", epochs)
	if len(epochs) < 2 {
		t.Errorf("no command ran after the failover: starts per epoch %v", epochs)
	}
	if codes[0] < loops {
		t.Errorf("only %d runs exited 0", codes[0])
	}
}

// shards is the shard count of the map.
func shards(v view) uint32 { return uint32(v.Map.Shards()) }

// checkAlternation checks that lines are "start F" then "end F" pairs with
// strictly increasing fences; a start may lack its end only if its fence is
// in stopped (the run was stopped, exit 4), and nothing of a stopped run
// may come after the next start.
func checkAlternation(text string, stopped map[uint64]bool) error {
	var open uint64 // fence of the start without an end yet; 0 = none
	var last uint64
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return fmt.Errorf("line %d: %q", i+1, line)
		}
		fence, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return fmt.Errorf("line %d: %q: %v", i+1, line, err)
		}
		switch f[0] {
		case "start":
			if open != 0 && !stopped[open] {
				return fmt.Errorf("line %d: %q while fence %d (not stopped) had no end: overlapping holders", i+1, line, open)
			}
			if fence <= last {
				return fmt.Errorf("line %d: fence %d after fence %d: fences went backwards", i+1, fence, last)
			}
			open, last = fence, fence
		case "end":
			if fence != open {
				return fmt.Errorf("line %d: %q but the open start is fence %d: overlapping holders", i+1, line, open)
			}
			open = 0
		default:
			return fmt.Errorf("line %d: %q", i+1, line)
		}
	}
	return nil
}

// TestCheckAlternation: the lock test's checker finds overlapping holders
// and fences that go backwards, and lets only a stopped run lack its end.
func TestCheckAlternation(t *testing.T) {
	for _, tt := range []struct {
		text    string
		stopped map[uint64]bool
		ok      bool
	}{
		{"start 1\nend 1\nstart 2\nend 2\n", nil, true},
		{"start 1\nstart 2\nend 2\n", map[uint64]bool{1: true}, true},
		{"start 1\nstart 2\nend 2\n", nil, false},                             // 1 ran on, not stopped
		{"start 1\nstart 2\nend 1\nend 2\n", map[uint64]bool{1: true}, false}, // a stopped run wrote after the next start
		{"start 2\nend 2\nstart 1\nend 1\n", nil, false},                      // fence went backwards
		{"start 1\nend 2\n", nil, false},
		{"end 1\n", nil, false},
	} {
		if err := checkAlternation(tt.text, tt.stopped); (err == nil) != tt.ok {
			t.Errorf("checkAlternation(%q, %v) = %v, want ok %v", tt.text, tt.stopped, err, tt.ok)
		}
	}
}
