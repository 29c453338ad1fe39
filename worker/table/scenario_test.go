package table

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
	"github.com/tokend/tokend/wire"
)

// TestScenarios runs the scripts in testdata/*.txt, one per topic. Each
// command is one input to the table (or a tick, state dump, export/import)
// and its expected output; `go test ./worker/table -run TestScenarios
// -rewrite` regenerates the expectations, to be reviewed as a diff. After
// every command the table's internal consistency and invariant 1 are
// checked.
//
// Commands (time is the harness clock "now", moved by now=N on any command):
//
//	new [epoch=1] [max-waiters=N] [max-grants=N] [grace=T]   fresh table (recovering until T with grace)
//	acquire s=S [req=R] name=N mode=M [range=A-B|whole] [try] [detect] [grow] [wait=D|deadline=T]
//	convert s=S [req=R] name=N fence=E:Q mode=M [try] [detect] [wait=D] [value=V]
//	release s=S [req=R] name=N fence=E:Q [range=A-B] [value=V]   range: a partial release
//	cancel  s=S [req=R] target=R
//	reclaim s=S [req=R] name=N mode=M fence=E:Q [range=A-B]
//	acquire-all s=S [req=R] e=(N:M[:A-B], ...)   AcquireAll of the entries (names, modes, ranges)
//	end-session s=S [max=N]   OpEndSession; with max, one step of EndSession (then: done or footprint left)
//	deadlock s=S target=R    a detector's victim (OpDeadlock)
//	edges [queued-by=T]      WaitEdges of requests queued at or before T (default now)
//	tick now=T | next-deadline | state | stats | set-seq seq=Q
//	end-grace                end the grace period early (EndGrace)
//	export | import epoch=E
//	matrix          for every (held, requested) pair of modes: granted together?
//	wanted-matrix   for every conflicting pair: the mode the revoke asks to keep
//
// Request ids default to the session's previous one plus 1; the wait
// defaults to 1000; the range to the whole token. value= with nothing after
// it sets an empty value; big-value sets a 65-byte one; name-len=N uses a
// name of N bytes.
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		h := &harness{reqs: map[uint64]uint64{}}
		return h.run
	})
}

type harness struct {
	tab  *Table
	cfg  Config
	now  int64
	reqs map[uint64]uint64
	snap *Snapshot
}

type args map[string]string

func (a args) has(k string) bool { _, ok := a[k]; return ok }

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	a := args(script.ArgsOf(d))
	num := func(k string, def int64) int64 {
		v, ok := a[k]
		if !ok {
			return def
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			d.Fatalf(t, "%s=%q: %v", k, v, err)
		}
		return n
	}
	if a.has("now") {
		n := num("now", 0)
		if n < h.now {
			d.Fatalf(t, "now=%d goes back from %d", n, h.now)
		}
		h.now = n
	}
	if h.tab == nil && d.Cmd != "new" {
		h.tab, _ = New(1, Config{})
	}
	var out string
	switch d.Cmd {
	case "new":
		h.cfg = Config{MaxWaitersPerToken: int(num("max-waiters", 0)), MaxGrantsPerSession: int(num("max-grants", 0))}
		epoch := uint32(num("epoch", 1))
		var err error
		if a.has("grace") {
			h.tab, err = NewRecovering(epoch, num("grace", 0), h.cfg)
		} else {
			h.tab, err = New(epoch, h.cfg)
		}
		if err != nil {
			return err.Error()
		}
		h.now, h.reqs, h.snap = 0, map[uint64]uint64{}, nil
		out = fmt.Sprintf("epoch=%d", epoch)
	case "end-session":
		if !a.has("max") {
			out = formatOutputs(h.tab.Step(h.input(t, d, a, num), h.now, nil))
			break
		}
		s := uint64(num("s", 0))
		outs, done := h.tab.EndSession(s, int(num("max", 0)), h.now, nil)
		out = formatOutputs(outs)
		if done {
			out += "\ndone"
		} else {
			out += fmt.Sprintf("\nending: footprint=%d", h.tab.Footprint(s))
		}
	case "acquire", "convert", "release", "cancel", "reclaim", "deadlock":
		in := h.input(t, d, a, num)
		out = formatOutputs(h.tab.Step(in, h.now, nil))
	case "acquire-all":
		out = h.acquireAll(t, d, a, num)
	case "tick":
		out = formatOutputs(h.tab.Tick(h.now, nil))
	case "end-grace":
		out = fmt.Sprintf("was in grace: %v", h.tab.EndGrace())
	case "next-deadline":
		if dl, ok := h.tab.NextDeadline(); ok {
			out = fmt.Sprintf("next deadline %d", dl)
		} else {
			out = "no deadline"
		}
	case "matrix", "wanted-matrix":
		out = h.matrix(d.Cmd == "wanted-matrix")
	case "state":
		out = h.dump()
	case "edges":
		out = formatEdges(h.tab.WaitEdges(num("queued-by", h.now), nil))
	case "stats":
		out = fmt.Sprintf("%+v", h.tab.Stats())
	case "set-seq":
		h.tab.seq = uint64(num("seq", 0))
		h.tab.maxFence = Fence(h.tab.epoch, h.tab.seq)
		out = fmt.Sprintf("seq=%d", h.tab.seq)
	case "export":
		snap, err := h.tab.Export()
		if err != nil {
			return "error: " + err.Error()
		}
		if a.has("v1") { // an old owner that does not move queued requests (handoff protocol 1)
			snap.Waiters = nil
		}
		h.snap = snap
		out = formatSnapshot(snap)
	case "import":
		tab, err := Import(h.snap, uint32(num("epoch", 0)), h.cfg)
		if err != nil {
			return "error: " + err.Error()
		}
		h.tab = tab
		out = h.dump()
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	if err := h.tab.check(); err != nil {
		d.Fatalf(t, "%v", err)
	}
	return out + "\n"
}

func (h *harness) input(t *testing.T, d *datadriven.TestData, a args, num func(string, int64) int64) Input {
	ops := map[string]Op{"acquire": OpAcquire, "convert": OpConvert, "release": OpRelease,
		"cancel": OpCancel, "reclaim": OpReclaim, "end-session": OpEndSession, "deadlock": OpDeadlock}
	in := Input{Op: ops[d.Cmd], Session: uint64(num("s", 0)), Target: uint64(num("target", 0)),
		Name: []byte(a["name"]), Start: WholeStart, End: WholeEnd, Try: a.has("try"), Detect: a.has("detect"),
		Grow: a.has("grow"), Partial: d.Cmd == "release" && a.has("range")}
	if d.Cmd != "end-session" && d.Cmd != "deadlock" {
		if a.has("req") {
			h.reqs[in.Session] = uint64(num("req", 0))
		} else {
			h.reqs[in.Session]++
		}
		in.Req = h.reqs[in.Session]
	}
	if n := num("name-len", -1); n >= 0 {
		in.Name = []byte(strings.Repeat("x", int(n)))
	}
	if m, ok := a["mode"]; ok {
		mode, err := wire.ParseMode(m)
		if err != nil {
			n, err2 := strconv.Atoi(m)
			if err2 != nil {
				d.Fatalf(t, "%v", err)
			}
			mode = wire.Mode(n)
		}
		in.Mode = mode
	}
	if r, ok := a["range"]; ok && r != "whole" {
		lo, hi, found := strings.Cut(r, "-")
		if !found {
			d.Fatalf(t, "range=%q: want A-B", r)
		}
		in.Start = parseBound(t, d, lo)
		in.End = parseBound(t, d, hi)
	}
	if f, ok := a["fence"]; ok {
		in.Fence = parseFence(t, d, f)
	}
	in.Deadline = h.now + num("wait", 1000)
	if a.has("deadline") {
		in.Deadline = num("deadline", 0)
	}
	if v, ok := a["value"]; ok {
		in.SetValue, in.Value = true, []byte(v)
	}
	if a.has("big-value") {
		in.SetValue, in.Value = true, make([]byte, MaxValueLen+1)
	}
	return in
}

func parseBound(t *testing.T, d *datadriven.TestData, s string) uint64 {
	if s == "max" {
		return WholeEnd
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		d.Fatalf(t, "bound %q: %v", s, err)
	}
	return n
}

func parseFence(t *testing.T, d *datadriven.TestData, s string) uint64 {
	e, q, ok := strings.Cut(s, ":")
	if !ok {
		n, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			d.Fatalf(t, "fence %q: want E:S", s)
		}
		return n
	}
	ep, err1 := strconv.ParseUint(e, 10, 32)
	sq, err2 := strconv.ParseUint(q, 10, 64)
	if err1 != nil || err2 != nil {
		d.Fatalf(t, "fence %q: want E:S", s)
	}
	return Fence(uint32(ep), sq)
}

func fenceStr(f uint64) string { return fmt.Sprintf("%d:%d", FenceEpoch(f), FenceSeq(f)) }

func rangeStr(s, e uint64) string {
	if s == WholeStart && e == WholeEnd {
		return "whole"
	}
	if e == WholeEnd {
		return fmt.Sprintf("[%d,max)", s)
	}
	return fmt.Sprintf("[%d,%d)", s, e)
}

func valueStr(v string, f ValueFlags) string {
	switch {
	case f&ValueValid != 0:
		return fmt.Sprintf("value=%q", v)
	case f&ValueLost != 0:
		return "value=lost"
	}
	return "value=none"
}

func formatOutputs(outs []Output) string {
	if len(outs) == 0 {
		return "(no output)"
	}
	var lines []string
	for _, o := range outs {
		lines = append(lines, formatOutput(o))
	}
	return strings.Join(lines, "\n")
}

func formatOutput(o Output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v s=%d", o.Kind, o.Session)
	if o.Kind == KindRevoke {
		fmt.Fprintf(&b, " %s fence=%s want=%v %s", o.Name, fenceStr(o.Fence), o.Mode, rangeStr(o.Start, o.End))
		return b.String()
	}
	fmt.Fprintf(&b, " req=%d %v", o.Req, o.Status)
	switch {
	case o.Status == StatusOK && o.End != 0: // a grant
		fmt.Fprintf(&b, " %s %v %s fence=%s %s", o.Name, o.Mode, rangeStr(o.Start, o.End), fenceStr(o.Fence), valueStr(o.Value, o.VFlags))
	case o.Released:
		fmt.Fprintf(&b, " %s released fence=%s", o.Name, fenceStr(o.Fence))
	case o.Status == StatusQueued:
		fmt.Fprintf(&b, " %s %v %s pos=%d", o.Name, o.Mode, rangeStr(o.Start, o.End), o.Position)
	case o.Name != "":
		fmt.Fprintf(&b, " %s", o.Name)
	}
	return b.String()
}

// matrix tries every pair of modes on a fresh token through Step: session
// 1000 acquires the held mode, session 1001 requests the other. It prints
// "ok" where both are granted together, or (wanted) the mode the revoke to
// the holder asks it to keep; then both sessions end.
func (h *harness) matrix(wanted bool) string {
	var b strings.Builder
	b.WriteString("held\\req")
	for m := wire.NL; m <= wire.EX; m++ {
		fmt.Fprintf(&b, " %3v", m)
	}
	for held := wire.NL; held <= wire.EX; held++ {
		fmt.Fprintf(&b, "\n%-8v", held)
		for req := wire.NL; req <= wire.EX; req++ {
			name := []byte("matrix-" + held.String() + "-" + req.String())
			h.reqs[1000]++
			h.tab.Step(Input{Op: OpAcquire, Session: 1000, Req: h.reqs[1000], Name: name, Mode: held,
				Start: WholeStart, End: WholeEnd}, h.now, nil)
			h.reqs[1001]++
			in := Input{Op: OpAcquire, Session: 1001, Req: h.reqs[1001], Name: name, Mode: req,
				Start: WholeStart, End: WholeEnd, Try: !wanted, Deadline: h.now + 1}
			cell := "?"
			for _, o := range h.tab.Step(in, h.now, nil) {
				switch {
				case o.Kind == KindReply && o.Status == StatusOK:
					cell = "ok"
				case o.Kind == KindReply && o.Status == StatusConflict:
					cell = "--"
				case o.Kind == KindRevoke:
					cell = o.Mode.String()
				}
			}
			fmt.Fprintf(&b, " %3s", cell)
			h.tab.Step(Input{Op: OpEndSession, Session: 1000}, h.now, nil)
			h.tab.Step(Input{Op: OpEndSession, Session: 1001}, h.now, nil)
		}
	}
	return b.String()
}

// dump prints the table: tokens by name, their grants by fence and their
// waiters in queue order, then the sessions.
func (h *harness) dump() string {
	t := h.tab
	var b strings.Builder
	grace := "off"
	if t.grace {
		grace = fmt.Sprintf("until %d", t.graceEnd)
	}
	fmt.Fprintf(&b, "epoch=%d seq=%d grace=%s", t.epoch, t.seq, grace)
	var tis []uint32
	t.forTokens(func(ti uint32, _ *token) { tis = append(tis, ti) })
	slices.SortFunc(tis, func(x, y uint32) int { return strings.Compare(t.toks.at(x).name, t.toks.at(y).name) })
	for _, ti := range tis {
		tok := t.toks.at(ti)
		fmt.Fprintf(&b, "\n%s %s", tok.name, valueStr(t.valueOf(tok)))
		var gis []uint32
		for gi := tok.grants; gi != 0; gi = t.grs.at(gi).tnext {
			gis = append(gis, gi)
		}
		slices.SortFunc(gis, func(x, y uint32) int { return cmpU64(t.grs.at(x).fence, t.grs.at(y).fence) })
		for _, gi := range gis {
			g := t.grs.at(gi)
			fmt.Fprintf(&b, "\n  grant s=%d fence=%s %v %s req=%d", t.sess.at(g.sess).id, fenceStr(g.fence), g.mode, rangeStr(g.start, g.end), g.req)
			if g.flags&grantAsync != 0 {
				b.WriteString(" async")
			}
		}
		for _, wi := range t.queueOrder(tok) {
			w := t.wts.at(wi)
			if w.grant != 0 {
				g := t.grs.at(w.grant)
				fmt.Fprintf(&b, "\n  conv  s=%d req=%d fence=%s %v->%v %s deadline=%d", t.sess.at(w.sess).id, w.req,
					fenceStr(g.fence), g.mode, w.mode, rangeStr(w.start, w.end), w.deadline)
			} else {
				fmt.Fprintf(&b, "\n  wait  s=%d req=%d %v %s deadline=%d", t.sess.at(w.sess).id, w.req, w.mode, rangeStr(w.start, w.end), w.deadline)
			}
		}
	}
	var ids []uint64
	for id := range t.sessions {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if len(ids) > 0 {
		b.WriteString("\nsessions:")
		for _, id := range ids {
			s := t.sess.at(t.sessions[id])
			fmt.Fprintf(&b, " s=%d(n=%d", id, s.n)
			if s.ending {
				b.WriteString(" ending")
			}
			b.WriteString(")")
		}
	}
	return b.String()
}

func formatSnapshot(s *Snapshot) string {
	var b strings.Builder
	fmt.Fprintf(&b, "snapshot epoch=%d seq=%d maxfence=%s valueslost=%v", s.Epoch, s.Seq, fenceStr(s.MaxFence), s.ValuesLost)
	for _, ts := range s.Tokens {
		v := "value=none"
		if ts.ValueValid {
			v = fmt.Sprintf("value=%q", ts.Value)
		}
		fmt.Fprintf(&b, "\n%s %s", ts.Name, v)
		for _, g := range ts.Grants {
			fmt.Fprintf(&b, "\n  grant s=%d fence=%s %v %s req=%d", g.Session, fenceStr(g.Fence), g.Mode, rangeStr(g.Start, g.End), g.Req)
			if g.Async {
				b.WriteString(" async")
			}
		}
	}
	for _, w := range s.Waiters {
		if w.Conv != 0 {
			fmt.Fprintf(&b, "\nconv  s=%d req=%d %s fence=%s ->%v %s deadline=%d", w.Session, w.Req, w.Name, fenceStr(w.Conv), w.Mode, rangeStr(w.Start, w.End), w.Deadline)
		} else {
			fmt.Fprintf(&b, "\nwait  s=%d req=%d %s %v %s deadline=%d", w.Session, w.Req, w.Name, w.Mode, rangeStr(w.Start, w.End), w.Deadline)
		}
	}
	return b.String()
}

func formatEdges(es []Edge) string {
	if len(es) == 0 {
		return "(no edges)"
	}
	lines := make([]string, 0, len(es))
	for _, e := range es {
		kind := "wait"
		if e.Conv {
			kind = "conv"
		}
		l := fmt.Sprintf("%s s=%d req=%d since=%d %s -> s=%d", kind, e.Session, e.Req, e.Since, e.Name, e.Holder)
		if e.Fence != 0 {
			l += " fence=" + fenceStr(e.Fence)
		} else {
			l += fmt.Sprintf(" req=%d (ahead)", e.HolderReq)
		}
		lines = append(lines, l)
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// acquireAll runs an AcquireAll; every line of its output names the entry.
func (h *harness) acquireAll(t *testing.T, d *datadriven.TestData, a args, num func(string, int64) int64) string {
	sess := uint64(num("s", 0))
	if a.has("req") {
		h.reqs[sess] = uint64(num("req", 0))
	} else {
		h.reqs[sess]++
	}
	var entries []BatchEntry
	for _, ca := range d.CmdArgs {
		if ca.Key != "e" {
			continue
		}
		for _, v := range ca.Vals {
			parts := strings.Split(v, ":")
			if len(parts) < 2 {
				d.Fatalf(t, "e=%q: want NAME:MODE[:A-B]", v)
			}
			mode, err := wire.ParseMode(parts[1])
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			e := BatchEntry{Name: []byte(parts[0]), Mode: mode, Start: WholeStart, End: WholeEnd}
			if len(parts) > 2 {
				lo, hi, _ := strings.Cut(parts[2], "-")
				e.Start, e.End = parseBound(t, d, lo), parseBound(t, d, hi)
			}
			entries = append(entries, e)
		}
	}
	outs := h.tab.AcquireAll(sess, h.reqs[sess], entries, h.now, nil)
	var lines []string
	for _, o := range outs {
		line := formatOutput(o)
		if o.Kind == KindReply {
			line += fmt.Sprintf(" entry=%d", o.Entry)
		}
		lines = append(lines, line)
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return strings.Join(lines, "\n")
}
