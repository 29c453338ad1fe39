//go:build linux

package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/wire"
)

// registerServer serves a lock set's registers over HTTP to client
// processes: GET /read and POST /write with name and fence; 409 is the
// register's refusal (stale fence).
func registerServer(t *testing.T, ls *check.LockSet) string {
	t.Helper()
	mux := http.NewServeMux()
	fence := func(r *http.Request) uint64 {
		f, _ := strconv.ParseUint(r.FormValue("fence"), 10, 64)
		return f
	}
	mux.HandleFunc("GET /read", func(w http.ResponseWriter, r *http.Request) {
		if _, err := ls.Register(r.FormValue("name")).Read(fence(r)); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	mux.HandleFunc("POST /write", func(w http.ResponseWriter, r *http.Request) {
		reg := ls.Register(r.FormValue("name"))
		if err := reg.Write(fence(r), append(reg.Value(), -1)); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// child is a client process (the test binary in childMain mode).
type child struct {
	p     *proctest.Proc
	in    io.WriteCloser
	lines chan string // its standard output's lines; closed once it has exited
}

func startChild(t *testing.T, env ...string) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{lines: make(chan string, 1024)}
	lines := proc.NewLineWriter(func(l []byte) {
		select {
		case c.lines <- string(l):
		default: // the test stopped listening to "valid" lines
		}
	})
	c.p = proctest.Start(t, proc.Spec{Name: "client", Path: self, Env: append(env, childEnv+"=client"),
		Stdout: lines, StdinPipe: true, Keep: 32 << 10})
	c.in = c.p.Stdin()
	go func() { // ends when the process has been reaped (at the latest by cleanup)
		<-c.p.Done()
		lines.Flush()
		close(c.lines)
	}()
	return c
}

// next returns the next line starting with prefix, or fails.
func (c *child) next(t *testing.T, prefix string, within time.Duration) (string, time.Time) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("client process ended waiting for %q", prefix)
			}
			if strings.HasPrefix(l, "error") {
				t.Fatalf("client process: %s", l)
			}
			if strings.HasPrefix(l, prefix) {
				return l, time.Now()
			}
		case <-deadline:
			t.Fatalf("no %q from the client process within %v", prefix, within)
		}
	}
}

// TestScenario3ClientStop: a client process holds a token EX and has read
// the fenced register under it; a second client (in the test) waits for the
// token. The process is stopped (SIGSTOP) for 1.5-3 session TTLs, then
// continued, and writes the register with its old fence. Checks: the token
// is not granted to the waiter before the stopped holder's lease (as it last
// reported it before the stop) ran out; the waiter gets it within TTL + 1 s
// of the stop; the waiter's read-modify-write lands; the late write of the
// woken process is refused.
func TestScenario3ClientStop(t *testing.T) {
	run(t, []uint64{3}, func(t *testing.T, seed uint64, long bool) {
		c := startReal(t, seed, rclusterOpts{servers: 1, workers: 2})
		rng := rand.New(rand.NewPCG(seed, 3))
		ls := check.NewLockSet()
		reg := registerServer(t, ls)
		rounds := 1
		if long {
			rounds = 5
		}
		for r := range rounds {
			name := fmt.Sprintf("s3/%d/%d", seed, r)
			ch := startChild(t, "TOKEND_CHAOS_SEEDS="+strings.Join(c.seeds, ","), "TOKEND_CHAOS_TOKEN="+name, "TOKEND_CHAOS_REGISTER="+reg,
				"TOKEND_KEY_FILE="+proctest.KeyFile(c.certs))
			line, _ := ch.next(t, "read ", 20*time.Second)
			var fenceA uint64
			var rem int64
			fmt.Sscanf(line, "read %d %d", &fenceA, &rem)
			waiter, _ := c.dial(clientlib.Config{})
			type res struct {
				tok *clientlib.Token
				err error
				at  time.Time
			}
			got := make(chan res, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				tok, err := waiter.Acquire(ctx, name, wire.EX)
				got <- res{tok, err, time.Now()}
			}()
			time.Sleep(200 * time.Millisecond) // the waiter is queued
			// The holder's last word on its validity before the stop.
			var deadline time.Time
			for drained := false; !drained; {
				select {
				case l := <-ch.lines:
					if strings.HasPrefix(l, "valid ") {
						ms, _ := strconv.ParseInt(strings.TrimPrefix(l, "valid "), 10, 64)
						deadline = time.Now().Add(time.Duration(ms)*time.Millisecond - 20*time.Millisecond)
					}
				default:
					drained = true
				}
			}
			stopFor := time.Duration(float64(rSessionTTL) * (1.5 + 1.5*rng.Float64()))
			stopped := time.Now()
			ch.p.Signal(syscall.SIGSTOP)
			t.Logf("round %d: SIGSTOP client process holding %s (fence %#x, valid %v more) for %v", r, name, fenceA,
				time.Until(deadline).Round(time.Millisecond), stopFor.Round(time.Millisecond))
			var g res
			select {
			case g = <-got:
			case <-time.After(stopFor):
				t.Fatalf("the waiter got nothing while the holder was stopped for %v", stopFor)
			}
			if g.err != nil {
				t.Fatalf("waiter: %v", g.err)
			}
			waited := g.at.Sub(stopped)
			t.Logf("waiter granted %v after the stop (fence %#x)", waited.Round(time.Millisecond), g.tok.Fence())
			if g.at.Before(deadline) {
				t.Errorf("token re-granted %v before the stopped holder's lease ran out", deadline.Sub(g.at))
			}
			if waited > rSessionTTL+time.Second {
				t.Errorf("waiter got the token %v after the holder stopped; want within TTL + 1 s = %v", waited, rSessionTTL+time.Second)
			}
			if g.tok.Fence() <= fenceA {
				t.Errorf("waiter's fence %#x not above the stopped holder's %#x", g.tok.Fence(), fenceA)
			}
			if _, err := ls.Update(name, g.tok.Fence(), nil); err != nil {
				t.Errorf("the waiter's update was refused: %v", err)
			}
			time.Sleep(time.Until(stopped.Add(stopFor)))
			ch.p.Signal(syscall.SIGCONT)
			fmt.Fprintln(ch.in, "write")
			l, _ := ch.next(t, "wrote ", 10*time.Second)
			if l != fmt.Sprintf("wrote %d", http.StatusConflict) {
				t.Errorf("the woken holder's late write with fence %#x: %q, want refused (409)", fenceA, l)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			g.tok.Release(ctx)
			cancel()
			ch.in.Close()
		}
		res := ls.Check()
		t.Logf("lock set: %v", res)
		if len(res.Lost)+len(res.Dup)+len(res.Audit) > 0 {
			t.Errorf("lock set: %v %v %v", res.Lost, res.Dup, res.Audit)
		}
	})
}
