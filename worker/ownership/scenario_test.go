package ownership

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/testkit/script"
)

// TestScenarios runs the scripts in testdata/*.txt. Each applies maps to a
// worker the way its shell does and shows the actions Apply decides and
// what the worker holds afterwards; `go test ./worker/ownership -run
// TestScenarios -rewrite` regenerates the expectations, to be reviewed as
// a diff.
//
// Owners are written id/incarnation (hex), a shard of a map as
// owner@epoch or - (unowned). Commands:
//
//	me ID/INC | me none                 this worker's incarnation (none: unregistered)
//	shards n=N                          the cluster's shard count; forgets everything held
//	registry                            the owners that can be pulled from, one input line
//	apply v=V [safe=false] [older=V']   apply the map on the input line (one entry per
//	                                    shard) as version V; older: a map applied or
//	                                    written earlier, as read from etcd's history.
//	                                    Shows the actions and the shards held after them.
//	written v=V                         a map etcd holds (input line) that this worker
//	                                    never saw applied: its watch skipped it
//	pulled shard=N                      the pull of shard N ended with the old owner's state
//	grace-over shard=N                  shard N's grace period ended
//	grace-end now=T grace=G             ownership.GraceEnd
//	fallback now=T ttl=W grace=G [gone] ownership.FallbackGraceEnd
//
// Times are nanoseconds, or numbers with the unit ms or s.
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		h := &harness{maps: map[uint64]delegation.Map{}, canPull: map[delegation.Owner]bool{}}
		return h.run
	})
}

type harness struct {
	me      delegation.Owner
	held    []Held
	prev    delegation.Map
	maps    map[uint64]delegation.Map // applied, by version
	canPull map[delegation.Owner]bool
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	a := script.ArgsOf(d)
	num := func(k string) uint64 {
		n, err := strconv.ParseUint(a[k], 10, 64)
		if err != nil {
			d.Fatalf(t, "%s=%q: %v", k, a[k], err)
		}
		return n
	}
	dur := func(k string) int64 {
		if _, ok := a[k]; !ok {
			d.Fatalf(t, "%s= is required", k)
		}
		return a.Nanos(t, d, k, 0)
	}
	var out []string
	switch d.Cmd {
	case "me":
		if len(d.CmdArgs) != 1 {
			d.Fatalf(t, "me takes one owner")
		}
		if d.CmdArgs[0].Key == "none" {
			h.me = delegation.Owner{}
			return "unregistered\n"
		}
		o, err := parseOwner(d.CmdArgs[0].Key)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		h.me = o
		return "me " + o.String() + "\n"
	case "shards":
		h.held = make([]Held, num("n"))
		h.prev = delegation.Map{}
		return fmt.Sprintf("%d shards, none held\n", len(h.held))
	case "registry":
		clear(h.canPull)
		for _, f := range strings.Fields(d.Input) {
			o, err := parseOwner(f)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			h.canPull[o] = true
		}
		return fmt.Sprintf("%d can be pulled from\n", len(h.canPull))
	case "apply":
		m, err := parseMap(num("v"), d.Input)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		in := Input{Me: h.me, Held: h.held, Prev: h.prev, Next: m, Safe: a["safe"] != "false",
			CanPull: func(o delegation.Owner) bool { return h.canPull[o] }}
		if _, ok := a["older"]; ok {
			om, ok := h.maps[num("older")]
			if !ok {
				d.Fatalf(t, "no map %s applied", a["older"])
			}
			in.Older = &om
		}
		res := Apply(in, nil)
		if res.BadMap {
			out = append(out, "bad map: another shard count; serving nothing from it")
		}
		for _, ac := range res.Actions {
			out = append(out, ac.describe())
			h.do(ac)
		}
		h.prev = m
		h.maps[m.Version] = m
		out = append(out, h.dump())
	case "written":
		m, err := parseMap(num("v"), d.Input)
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		h.maps[m.Version] = m
		return fmt.Sprintf("map %d written\n", m.Version)
	case "pulled", "grace-over":
		s := num("shard")
		if s >= uint64(len(h.held)) || h.held[s].Epoch == 0 {
			d.Fatalf(t, "shard %d is not held", s)
		}
		if d.Cmd == "pulled" {
			h.held[s].Table = true
		} else {
			h.held[s].Grace = false
		}
		out = append(out, h.dump())
	case "grace-end":
		out = append(out, "grace ends at "+ms(GraceEnd(dur("now"), dur("grace"))))
	case "fallback":
		_, gone := a["gone"]
		out = append(out, "grace ends at "+ms(FallbackGraceEnd(dur("now"), dur("ttl"), dur("grace"), gone)))
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	return strings.Join(out, "\n") + "\n"
}

// do carries an action out on what the harness holds, as the shell does.
func (h *harness) do(ac Action) {
	switch ac.Kind {
	case Drop, HandOff:
		h.held[ac.Shard] = Held{}
	case Pull:
		h.held[ac.Shard] = Held{Epoch: ac.Epoch}
	case Recover:
		h.held[ac.Shard] = Held{Epoch: ac.Epoch, Table: true, Grace: true}
	case Fresh:
		h.held[ac.Shard] = Held{Epoch: ac.Epoch, Table: true}
	}
}

func (h *harness) dump() string {
	var b strings.Builder
	b.WriteString("held:")
	for s, x := range h.held {
		fmt.Fprintf(&b, " %d:", s)
		switch {
		case x.Epoch == 0:
			b.WriteString("-")
		case !x.Table:
			fmt.Fprintf(&b, "@%d(pulling)", x.Epoch)
		case x.Grace:
			fmt.Fprintf(&b, "@%d(grace)", x.Epoch)
		default:
			fmt.Fprintf(&b, "@%d", x.Epoch)
		}
	}
	return b.String()
}

func (ac Action) describe() string {
	switch ac.Kind {
	case HandOff:
		return fmt.Sprintf("shard %d: handoff epoch %d to %s", ac.Shard, ac.Epoch, ac.To)
	case Pull:
		return fmt.Sprintf("shard %d: pull epoch %d from %s", ac.Shard, ac.Epoch, ac.From)
	case Recover:
		if ac.From != (delegation.Owner{}) {
			return fmt.Sprintf("shard %d: recover epoch %d after %s", ac.Shard, ac.Epoch, ac.From)
		}
		return fmt.Sprintf("shard %d: recover epoch %d", ac.Shard, ac.Epoch)
	default:
		return fmt.Sprintf("shard %d: %s epoch %d", ac.Shard, ac.Kind, ac.Epoch)
	}
}

func parseOwner(s string) (delegation.Owner, error) {
	id, inc, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(inc, 16, 64)
	if !ok || id == "" || err != nil {
		return delegation.Owner{}, fmt.Errorf("owner %q: want id/incarnation (hex)", s)
	}
	return delegation.Owner{ID: id, Incarnation: n}, nil
}

// parseMap reads one entry per shard: owner@epoch or -.
func parseMap(version uint64, line string) (delegation.Map, error) {
	m := delegation.Map{Version: version}
	idx := map[delegation.Owner]int32{}
	for _, f := range strings.Fields(line) {
		if f == "-" {
			m.Owner, m.Epoch = append(m.Owner, delegation.NoOwner), append(m.Epoch, 0)
			continue
		}
		os, es, ok := strings.Cut(f, "@")
		e, err := strconv.ParseUint(es, 10, 32)
		if !ok || err != nil {
			return m, fmt.Errorf("map entry %q: want owner@epoch or -", f)
		}
		o, err := parseOwner(os)
		if err != nil {
			return m, err
		}
		i, ok := idx[o]
		if !ok {
			i = int32(len(m.Workers))
			idx[o] = i
			m.Workers = append(m.Workers, o)
		}
		m.Owner, m.Epoch = append(m.Owner, i), append(m.Epoch, uint32(e))
	}
	return m, m.Validate()
}

func ms(ns int64) string { return strconv.FormatFloat(float64(ns)/1e6, 'f', -1, 64) + "ms" }
