package guard

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
)

// TestScenarios runs the scripts in testdata/*.txt: the open defences of a
// worker as its shell drives them. `go test ./worker/guard -run
// TestScenarios -rewrite` regenerates the expectations, to be reviewed as
// a diff.
//
// Times are nanoseconds, or numbers with the unit ms or s; now=T on any
// command moves the clock (never back). Commands:
//
//	buckets rate=R burst=B max=N         new per-source limits
//	allow src=S [n=N]                    N opens from source S (default 1): the verdicts
//	sweep                                forget the buckets that refilled
//	recent max=N                         a new table of recent opens
//	put key=K [for=D]                    remember open K for D (default 10s)
//	get key=K                            a retransmission of open K
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		var (
			now int64
			bs  *Buckets[string]
			rt  *Recent[string, string]
		)
		return func(t *testing.T, d *datadriven.TestData) string {
			a := script.ArgsOf(d)
			num := func(k string, def float64) float64 { return a.Float(t, d, k, def) }
			dur := func(k string, def int64) int64 { return a.Nanos(t, d, k, def) }
			if _, ok := a["now"]; ok {
				n := dur("now", 0)
				if n < now {
					d.Fatalf(t, "now=%s goes back", a["now"])
				}
				now = n
			}
			switch d.Cmd {
			case "buckets":
				bs = &Buckets[string]{Rate: num("rate", 1), Burst: num("burst", 1), Max: int(num("max", 1))}
				return "ok\n"
			case "allow":
				var out []string
				for range int(num("n", 1)) {
					out = append(out, [...]string{Allowed: "allowed", Limited: "limited", Full: "full"}[bs.Allow(a["src"], now)])
				}
				return fmt.Sprintf("%s (%d buckets)\n", strings.Join(out, " "), bs.Len())
			case "sweep":
				bs.Sweep(now)
				return fmt.Sprintf("%d buckets\n", bs.Len())
			case "recent":
				rt = &Recent[string, string]{Max: int(num("max", 1))}
				return "ok\n"
			case "put":
				if !rt.Put(a["key"], "reply "+a["key"], now, now+dur("for", 10*int64(time.Second))) {
					return fmt.Sprintf("full (%d entries)\n", rt.Len())
				}
				return fmt.Sprintf("kept (%d entries)\n", rt.Len())
			case "get":
				if v, ok := rt.Get(a["key"], now); ok {
					return v + "\n"
				}
				return "not found\n"
			}
			d.Fatalf(t, "unknown command %q", d.Cmd)
			return ""
		}
	})
}
