package grace

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
)

// TestScenarios runs the scripts in testdata/*.txt against one Tracker;
// `go test ./worker/grace -run TestScenarios -rewrite` regenerates the
// expectations, to be reviewed as a diff. Commands:
//
//	map v=V                     the worker applied map version V
//	start v=V                   recoveries started by map V; input: shard@epoch ...
//	need-live                   the tag of the live-sessions read a recovery waits for
//	live tag=G                  the sessions read (input: ids), minus those seen to end
//	done session=S v=V          KEEPALIVE with DONE for map version V from session S
//	end session=S               session S ended (its key left etcd)
//	drop shard=N                shard N left, or its grace ended by its deadline
//	awaited shard=N             how many sessions shard N still waits for
//
// Every command that can end grace prints the shards that end it, or
// "nothing ends".
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		tr := New()
		return func(t *testing.T, d *datadriven.TestData) string { return run(t, d, tr) }
	})
}

func run(t *testing.T, d *datadriven.TestData, tr *Tracker) string {
	num := func(k string) uint64 {
		var s string
		d.ScanArgs(t, k, &s)
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			d.Fatalf(t, "%s=%q: %v", k, s, err)
		}
		return n
	}
	var ended []Ended
	switch d.Cmd {
	case "map":
		ended = tr.Map(num("v"), nil)
	case "start":
		v := num("v")
		var b strings.Builder
		for _, f := range strings.Fields(d.Input) {
			var s, e uint32
			if _, err := fmt.Sscanf(f, "%d@%d", &s, &e); err != nil {
				d.Fatalf(t, "%q: want shard@epoch", f)
			}
			tr.Start(s, e, v)
			fmt.Fprintf(&b, "shard %d recovering at epoch %d\n", s, e)
		}
		return b.String()
	case "need-live":
		if g, ok := tr.NeedLive(); ok {
			return fmt.Sprintf("read live sessions, tag %d\n", g)
		}
		return "no read needed\n"
	case "live":
		var ss []uint64
		for _, f := range strings.Fields(d.Input) {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			ss = append(ss, n)
		}
		ended = tr.Live(num("tag"), ss, nil)
	case "done":
		ended = tr.Done(num("session"), num("v"), nil)
	case "end":
		ended = tr.End(num("session"), nil)
	case "drop":
		tr.Drop(uint32(num("shard")))
		return "dropped\n"
	case "awaited":
		n, known := tr.Awaited(uint32(num("shard")))
		if !known {
			return "not tracked, or its live sessions not read yet\n"
		}
		return fmt.Sprintf("%d awaited\n", n)
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	if len(ended) == 0 {
		return "nothing ends\n"
	}
	var b strings.Builder
	for _, e := range ended {
		fmt.Fprintf(&b, "shard %d epoch %d: grace ends early (%s)\n", e.Shard, e.Epoch, e.Reason)
	}
	return b.String()
}
