package chaos

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/tests/chaos/check"
	"github.com/tokend/tokend/tests/chaos/load"
	"github.com/tokend/tokend/wire"
)

// Scenario 9 is in three parts. What is and is not covered:
//
//   - Covered statically (TestScenario9OnlyMonotonicTime): the packages
//     on the lease path (worker, worker/table, worker/ownership,
//     worker/vouch, clientlib, wire, coordinator, cluster) contain no
//     wall-clock arithmetic; every time they compare
//     comes from time.Now/time.Since/Sub with Go's monotonic reading (the
//     worker's tables get int64 nanoseconds from Worker.mono, a Sub from a
//     base time.Now). A wall-clock step of the host (settimeofday, NTP
//     step) is invisible to such code, so injecting one into a process
//     cannot change its decisions; the test fails when a new wall-clock use
//     appears, so that someone judges it.
//   - Covered dynamically (TestScenario9ClockSkew): clients whose clocks
//     (clientlib.Config.Now) are offset by hours, drift within the
//     tolerated rate, or jump forward, run the lock-set workload with
//     pauses: 0 violations.
//   - Shown out of the model (TestScenario9SlowClockIsCaught): a client
//     clock running 40 % slow, far beyond Config.Drift, does make a cut-off
//     holder believe in its token after it was given to another client, and
//     the history checker catches it, so the dynamic test could fail.
//   - Not covered here: a worker's clock is injectable (worker.Config.Clock;
//     the worker's own tests move a fake clock through its leases and
//     timers), but the worker processes of these scenarios read the host's
//     clock, so neither skew nor drift of a worker's monotonic clock is
//     injected into them; stepping the real wall clock of a worker process
//     would need root (clock_settime) or libfaketime, and by the static
//     check would not be seen anyway. A monotonic clock that goes backwards is outside the
//     failure model (it cannot happen on Linux).

// wallClockUses lists the calls in dir's non-test Go files that read or
// convert wall-clock time.
func wallClockUses(t *testing.T, dir string) []string {
	t.Helper()
	fset := token.NewFileSet()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	wallMethods := map[string]bool{"Unix": true, "UnixNano": true, "UnixMilli": true, "UnixMicro": true,
		"UTC": true, "Local": true, "In": true, "Date": true, "Clock": true, "YearDay": true, "Weekday": true,
		"AddDate": true, "Round": true, "Truncate": true, "Parse": true, "ParseInLocation": true}
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, n), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(node ast.Node) bool {
			call, ok := node.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || !wallMethods[sel.Sel.Name] {
				return true
			}
			// Round and Truncate are wall-clock only on a time.Time with
			// argument 0 or a duration; on durations (d.Round(ms), common
			// in logs) they are harmless. Flag them only with literal 0.
			if (sel.Sel.Name == "Round" || sel.Sel.Name == "Truncate") && !(len(call.Args) == 1 && isZero(call.Args[0])) {
				return true
			}
			pos := fset.Position(call.Pos())
			out = append(out, filepath.ToSlash(filepath.Join(dir, filepath.Base(pos.Filename)))+": "+exprString(sel))
			return true
		})
	}
	return out
}

func isZero(e ast.Expr) bool {
	l, ok := e.(*ast.BasicLit)
	return ok && l.Value == "0"
}

func exprString(sel *ast.SelectorExpr) string {
	if id, ok := sel.X.(*ast.Ident); ok {
		return id.Name + "." + sel.Sel.Name
	}
	return "…." + sel.Sel.Name
}

// TestScenario9OnlyMonotonicTime is the static half of scenario 9.
func TestScenario9OnlyMonotonicTime(t *testing.T) {
	// Reviewed uses that take no decision on wall-clock time.
	allowed := map[string]string{
		"clientlib/client.go: time.Unix":    "SetReadDeadline(time.Unix(1, 0)): a deadline in the past to wake the reader at Close",
		"cluster/cluster.go: t.UTC":         "cluster.Now: the human-readable 'since' of etcd documents, never read back for a decision",
		"cluster/member.go: url.Parse":      "MemberAnswers parses an etcd member's URL, not a time",
		"cluster/dial.go: url.Parse":        "Dial parses an etcd endpoint to check its scheme (http or https), not a time",
		"worker/describe.go: stamp.UTC":     "GET /v1/token shows operators wall-clock times (as of, since, deadline): display only, never read back",
		"worker/describe.go: ….UTC":         "the same display of since and deadline times",
		"worker/fenceproof.go: ….UnixMilli": "a fence proof's issued-at claim, for storage and people to read; no lease or grant decision reads it back",
	}
	seen := map[string]bool{}
	for _, dir := range []string{"worker", "worker/table", "worker/ownership", "worker/vouch", "clientlib", "wire", "coordinator", "coordinator/plan", "cluster", "cluster/delegation"} {
		for _, use := range wallClockUses(t, filepath.Join("..", "..", dir)) {
			use = strings.TrimPrefix(use, "../../")
			if _, ok := allowed[use]; ok {
				seen[use] = true
				continue
			}
			t.Errorf("wall-clock use on the lease path: %s (judge it, then allow it here with the reason)", use)
		}
	}
	for use, why := range allowed {
		if !seen[use] {
			t.Logf("allowed use no longer present: %s (%s)", use, why)
		}
	}
}

// skewedClock is a client clock: offset from real time, running at rate,
// and jumping forward by the jumps added so far. It keeps Go's monotonic
// reading (Add shifts both readings), as clientlib requires.
type skewedClock struct {
	base   time.Time
	offset time.Duration
	rate   float64
	mu     sync.Mutex // guards jumped
	jumped time.Duration
}

func (c *skewedClock) now() time.Time {
	el := time.Since(c.base)
	c.mu.Lock()
	j := c.jumped
	c.mu.Unlock()
	return c.base.Add(c.offset + time.Duration(float64(el)*c.rate) + j)
}

func (c *skewedClock) jump(d time.Duration) {
	c.mu.Lock()
	c.jumped += d
	c.mu.Unlock()
}

// TestScenario9ClockSkew: eight clients whose clocks are offset by -24 h
// .. +24 h, drift by up to ±0.5 % (within the tolerated 1 %), and (half of
// them) jump forward by up to 3 s now and then, run the lock-set workload
// with pauses of up to 2 TTL: 0 illegal histories, 0 lost updates.
func TestScenario9ClockSkew(t *testing.T) {
	run(t, []uint64{9}, func(t *testing.T, seed uint64, long bool) {
		const ttl = 2 * time.Second
		e := startInproc(t, seed, 2, devcluster.Options{Shards: 16, SessionTTL: ttl})
		rng := rand.New(rand.NewPCG(seed, 9))
		const clients = 8
		sections := 30
		if long {
			sections = 1000
		}
		w := load.New()
		clocks := make([]*skewedClock, clients)
		for i := range clocks {
			clocks[i] = &skewedClock{base: time.Now(),
				offset: time.Duration(rng.Int64N(int64(48*time.Hour))) - 24*time.Hour,
				rate:   1 + (rng.Float64()-0.5)*0.01}
			t.Logf("client %d: clock offset %v, rate %.4f, jumps %v", i, clocks[i].offset.Round(time.Second), clocks[i].rate, i%2 == 0)
		}
		load.RunClients(clients, func(i int) {
			cfg := clientlib.Config{Now: clocks[i].now, TokenCache: evenCache(i)}
			cl, _ := e.dial(i, cfg)
			ops := load.Config{Tokens: load.TokenNames("s9", 4), Ops: sections, OpTimeout: 10 * time.Second,
				Think: 3 * time.Millisecond, Register: true,
				Pause: func(rng *rand.Rand) bool {
					if i%2 == 0 && rng.IntN(6) == 0 {
						clocks[i].jump(time.Duration(rng.Int64N(int64(3 * time.Second))))
					}
					if rng.IntN(15) != 0 {
						return false
					}
					e.cutClient(i, true)
					time.Sleep(time.Duration(rng.Int64N(int64(2 * ttl))))
					e.cutClient(i, false)
					return true
				},
				Redial: func() *clientlib.Client { c, _ := e.dial(i, cfg); return c },
			}
			w.RunClient(context.Background(), i, cl, rand.New(rand.NewPCG(seed, uint64(i))), ops)
		})
		w.Verify(t, 30*time.Second)
	})
}

// TestScenario9SlowClockIsCaught is the negative control: a holder whose
// clock runs at 60 % speed (far outside Config.Drift) is cut off; it keeps
// checking Valid while another client waits for the token. Its slow clock
// stretches its belief past the lease the worker counts, the other client
// is granted the token meanwhile, and the history checker must call that
// illegal. If tokend ever stopped handing the token over after the lease
// (say, waiting forever), this would fail too, which is why it asserts a
// grant.
func TestScenario9SlowClockIsCaught(t *testing.T) {
	const ttl = 2 * time.Second
	e := startInproc(t, 99, 1, devcluster.Options{Shards: 8, SessionTTL: ttl, Grace: ttl})
	slow := &skewedClock{base: time.Now(), rate: 0.6}
	a, _ := e.dial(0, clientlib.Config{Now: slow.now})
	b, _ := e.dial(1, clientlib.Config{})
	w := load.New()
	hist := w.Hist
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := hist.Now()
	ta, err := a.Acquire(ctx, "s9/slow", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	hold := w.Hold(0, ta, "s9/slow", wire.EX, call, hist.Now())
	e.cutClient(0, true)
	granted := make(chan struct{})
	go func() {
		defer close(granted)
		call := hist.Now()
		tb, err := b.Acquire(ctx, "s9/slow", wire.EX)
		if err != nil {
			t.Error(err)
			return
		}
		hist.Add(check.Input{Kind: check.OpAcquire, Client: 1, Token: "s9/slow", Mode: wire.EX}, check.Output{Fence: tb.Fence()}, call, hist.Now())
	}()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && hold.Valid(); {
		time.Sleep(5 * time.Millisecond)
	}
	<-granted
	hold.End(context.Canceled)
	res := hist.Check(10 * time.Second)
	t.Logf("%v", res)
	if res.OK() {
		t.Fatal("a holder with a 40 % slow clock overlapped nobody: the checker (or the scenario) cannot fail")
	}
}
