package table

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
	"github.com/tokend/tokend/wire"
)

// TestDescribe runs testdata/describe/*.txt: the scenario commands of
// TestScenarios plus
//
//	describe name=N [limit=L]   Describe's view of token N (limit default 10)
//
// `go test ./worker/table -run TestDescribe -rewrite` regenerates them.
func TestDescribe(t *testing.T) {
	script.Run(t, "testdata/describe/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		h := &harness{reqs: map[uint64]uint64{}}
		return func(t *testing.T, d *datadriven.TestData) string {
			if d.Cmd != "describe" {
				return h.run(t, d)
			}
			var name string
			limit := 10
			for _, a := range d.CmdArgs {
				switch {
				case a.Key == "name" && len(a.Vals) == 1:
					name = a.Vals[0]
				case a.Key == "limit" && len(a.Vals) == 1:
					limit, _ = strconv.Atoi(a.Vals[0])
				default:
					d.Fatalf(t, "describe: unknown argument %s", a.Key)
				}
			}
			if h.tab == nil {
				h.tab, _ = New(1, Config{})
			}
			before := h.dump()
			v, ok := h.tab.Describe([]byte(name), limit)
			if after := h.dump(); after != before {
				d.Fatalf(t, "Describe changed the table:\n%s\n----\n%s", before, after)
			}
			if !ok {
				return "unknown\n"
			}
			return formatView(v) + "\n"
		}
	})
}

func formatView(v TokenView) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s grants=%d waiters=%d value=%v", v.Name, v.NGrants, v.NWaiters, v.ValueValid)
	for _, g := range v.Grants {
		fmt.Fprintf(&b, "\n  grant s=%d fence=%s %v %s req=%d since=%d", g.Session, fenceStr(g.Fence), g.Mode, rangeStr(g.Start, g.End), g.Req, g.Since)
		if g.Converting {
			b.WriteString(" converting")
		}
	}
	for _, w := range v.Waiters {
		fmt.Fprintf(&b, "\n  %d: s=%d req=%d %v %s since=%d", w.Position, w.Session, w.Req, w.Mode, rangeStr(w.Start, w.End), w.Since)
		if w.Deadline == math.MaxInt64 {
			b.WriteString(" deadline=never")
		} else {
			fmt.Fprintf(&b, " deadline=%d", w.Deadline)
		}
		if w.Fence != 0 {
			fmt.Fprintf(&b, " converts=%s", fenceStr(w.Fence))
		}
	}
	return b.String()
}

// Describe of a token with many waiters copies limit of them and counts
// the rest (the worker shell asks with a small limit, so a token with 100k
// waiters costs it limit steps), and of many holders keeps the oldest.
func TestDescribeBounded(t *testing.T) {
	tab, _ := New(1, Config{})
	const n = 5000 // queueing is O(position): more only slows the test
	in := Input{Op: OpAcquire, Name: []byte("hot"), Mode: wire.EX, Start: WholeStart, End: WholeEnd, Deadline: math.MaxInt64}
	for s := uint64(1); s <= n; s++ {
		in.Session, in.Req = s, 1
		tab.Step(in, int64(s), nil)
	}
	v, ok := tab.Describe([]byte("hot"), 50)
	if !ok || v.NGrants != 1 || v.NWaiters != n-1 || len(v.Waiters) != 50 || v.Waiters[0].Session != 2 || v.Waiters[49].Position != 50 {
		t.Fatalf("describe: ok %v, %d grants, %d waiters, %d copied, first %+v", ok, v.NGrants, v.NWaiters, len(v.Waiters), v.Waiters[0])
	}
	tab, _ = New(1, Config{})
	in.Mode = wire.PR
	for s := uint64(1); s <= 1000; s++ {
		in.Session = s
		tab.Step(in, int64(s), nil)
	}
	v, _ = tab.Describe([]byte("hot"), 3)
	if v.NGrants != 1000 || len(v.Grants) != 3 || v.Grants[0].Session != 1 || v.Grants[2].Session != 3 || v.Grants[0].Fence >= v.Grants[1].Fence {
		t.Fatalf("describe of 1000 holders, limit 3: %d grants, %+v", v.NGrants, v.Grants)
	}
}
