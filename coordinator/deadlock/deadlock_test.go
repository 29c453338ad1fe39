package deadlock

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
)

// TestScenarios runs testdata/*.txt. Commands:
//
//	reset                 a fresh Detector
//	round                 one round; each input line is a wait:
//	                        W shard:epoch s=S req=R age=A -> s=H fence=F | req=Q
//	victims               Victims of the input lines, all taken as confirmed
//
// The output lists the victims: worker shard:epoch s= req= age= cycle=.
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		d := &Detector{}
		return func(t *testing.T, td *datadriven.TestData) string {
			switch td.Cmd {
			case "reset":
				d.Reset()
				return "ok\n"
			case "round", "victims":
				ws, err := parseWaits(td.Input)
				if err != nil {
					td.Fatalf(t, "%v", err)
				}
				var vs []Victim
				if td.Cmd == "round" {
					vs = d.Round(ws)
				} else {
					vs = Victims(ws)
				}
				return formatVictims(vs)
			}
			td.Fatalf(t, "unknown command %q", td.Cmd)
			return ""
		}
	})
}

func parseWaits(in string) ([]Wait, error) {
	var ws []Wait
	for _, line := range strings.Split(in, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 8 || f[5] != "->" {
			return nil, fmt.Errorf("bad wait %q: want W shard:epoch s=S req=R age=A -> s=H fence=F|req=Q", line)
		}
		w := Wait{Worker: f[0]}
		var err error
		num := func(s, prefix string) uint64 {
			if !strings.HasPrefix(s, prefix) {
				err = fmt.Errorf("%q: want %s", s, prefix)
			}
			n, perr := strconv.ParseUint(strings.TrimPrefix(s, prefix), 10, 64)
			if perr != nil && err == nil {
				err = perr
			}
			return n
		}
		se, ep, _ := strings.Cut(f[1], ":")
		w.Shard, w.Epoch = uint32(num(se, "")), uint32(num(ep, ""))
		w.Session, w.Req, w.Age = num(f[2], "s="), num(f[3], "req="), int64(num(f[4], "age="))
		w.Holder = num(f[6], "s=")
		if strings.HasPrefix(f[7], "fence=") {
			w.Fence = num(f[7], "fence=")
		} else {
			w.HolderReq = num(f[7], "req=")
		}
		if err != nil {
			return nil, fmt.Errorf("bad wait %q: %v", line, err)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func formatVictims(vs []Victim) string {
	if len(vs) == 0 {
		return "(no victims)\n"
	}
	var b strings.Builder
	for _, v := range vs {
		fmt.Fprintf(&b, "victim %s %d:%d s=%d req=%d age=%d cycle=%v\n", v.Worker, v.Shard, v.Epoch, v.Session, v.Req, v.Age, v.Cycle)
	}
	return b.String()
}

// TestRandomGraphs checks on random wait graphs that the victims leave no
// cycle behind, that no victim is chosen without one, and that the choice
// does not depend on the order of the waits.
func TestRandomGraphs(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 2000 {
		n := 2 + r.IntN(6)
		var ws []Wait
		for range r.IntN(12) {
			s := uint64(1 + r.IntN(n))
			ws = append(ws, Wait{Worker: fmt.Sprintf("w%d", r.IntN(2)), Shard: uint32(r.IntN(3)), Epoch: 1,
				Session: s, Req: uint64(1 + r.IntN(3)), Age: int64(r.IntN(5)), Holder: uint64(1 + r.IntN(n)),
				Fence: uint64(1 + r.IntN(9))})
		}
		vs := Victims(ws)
		var left []Wait
		for _, w := range ws {
			if !slices.ContainsFunc(vs, func(v Victim) bool {
				return v.Request == Request{w.Worker, w.Shard, w.Epoch, w.Session, w.Req}
			}) {
				left = append(left, w)
			}
		}
		if hasCycle(left) {
			t.Fatalf("iter %d: a cycle survives the victims %v\nwaits %v", iter, vs, ws)
		}
		if len(vs) > 0 && !hasCycle(ws) {
			t.Fatalf("iter %d: victims %v without a cycle", iter, vs)
		}
		shuffled := slices.Clone(ws)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		if a, b := formatVictims(vs), formatVictims(Victims(shuffled)); a != b {
			t.Fatalf("iter %d: order matters:\n%s\n%s", iter, a, b)
		}
	}
}

// hasCycle is a naive check: does any session reach itself through waits
// of other sessions (self waits do not count)?
func hasCycle(ws []Wait) bool {
	reach := map[[2]uint64]bool{}
	var nodes []uint64
	for _, w := range ws {
		if w.Session != w.Holder {
			reach[[2]uint64{w.Session, w.Holder}] = true
		}
		nodes = append(nodes, w.Session, w.Holder)
	}
	for _, k := range nodes {
		for _, i := range nodes {
			for _, j := range nodes {
				if reach[[2]uint64{i, k}] && reach[[2]uint64{k, j}] {
					reach[[2]uint64{i, j}] = true
				}
			}
		}
	}
	for _, s := range nodes {
		if reach[[2]uint64{s, s}] {
			return true
		}
	}
	return false
}
