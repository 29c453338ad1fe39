package session

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
// command is one input to a Session, made the way the worker's shell makes
// it, and its expected output; `go test ./worker/session -run TestScenarios
// -rewrite` regenerates the expectations, to be reviewed as a diff.
//
// Commands (time is the harness clock "now", moved by now=T on any command;
// T is nanoseconds, or a number with the unit ms or s):
//
//	new [cap=N] [hard=N] [seed=N]        a new session (default cap 1024, hard 2048, seed 0)
//	request type=T req=R [ack=A] [status=S] [shard=N] [fence=F] [released=F] [target=R]
//	    a request as the shell handles it: Decide; then (if applied) Ack,
//	    OverLimit, and Applied with the table's status S (default OK). A
//	    CANCEL that succeeds settles its target CANCELED; a REVOKE_ACK acks
//	    REVOKE target, a GRANT_ACK the outcome of request target; a
//	    request resent from the cache is a re-poll (Repolled). The reply
//	    datagram is shown as type#req:STATUS.
//	async req=R status=S [nopkt]         the later outcome of a QUEUED request (Settle)
//	grant req=R shard=N fence=F          the GRANT_ASYNC of queued request R is sent (GrantAsync)
//	fill from=R to=R [type=T] [shard=N]  requests R..R applied OK, output: the cache size
//	revoke shard=N fence=F mode=M [range=A-B]   the table asks for a REVOKE
//	tick                                 the timer loop runs at now: retransmissions due
//	next-deadline | state | end
//	drop-shards shards=N,N               the map took those shards away
//	adopt req=R type=T [shard=N]         a final reply handed over with a shard (if not Known)
//	unmark req=R                         a KEEPALIVE, SESSION_CLOSE, REVOKE_ACK or GRANT_ACK R failed without effect
//	jitter [seeds=N] [tries=N]           the jitter factor over seeds × request ids × tries
//
// After every command the harness lists the REVOKEs and GRANT_ASYNCs that
// stopped being retransmitted.
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		h := &harness{}
		return h.run
	})
}

type harness struct {
	s   *Session
	now int64
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	a := script.ArgsOf(d)
	has := func(k string) bool { _, ok := a[k]; return ok }
	num := func(k string, def uint64) uint64 {
		v, ok := a[k]
		if !ok {
			return def
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			d.Fatalf(t, "%s=%q: %v", k, v, err)
		}
		return n
	}
	if has("now") {
		n := a.Nanos(t, d, "now", 0)
		if n < h.now {
			d.Fatalf(t, "now=%s goes back from %s", a["now"], ms(h.now))
		}
		h.now = n
	}
	if h.s == nil && d.Cmd != "new" {
		h.s = New(Config{Cap: 1024, Hard: 2048})
	}
	before := h.revokeSeqs()
	var out []string
	switch d.Cmd {
	case "new":
		cfg := Config{Cap: int(num("cap", 1024)), Hard: int(num("hard", 2048)), Seed: num("seed", 0)}
		h.s, h.now = New(cfg), 0
		out = append(out, fmt.Sprintf("cap=%d hard=%d seed=%d", h.s.cfg.Cap, h.s.cfg.Hard, h.s.cfg.Seed))
		before = nil
	case "request":
		out = h.request(t, d, a, num)
	case "async":
		id := num("req", 0)
		st := parseStatus(t, d, a["status"])
		e, ok := h.s.Entry(id)
		var pkt []byte
		if ok && !has("nopkt") {
			pkt = reply(e.Type, id, st)
		}
		h.s.Settle(id, st, pkt, h.now)
		switch e2, ok2 := h.s.Entry(id); {
		case !ok:
			out = append(out, "not cached: ignored")
		case !ok2:
			out = append(out, "forgotten (not applied): a retry is applied afresh")
		default:
			out = append(out, fmt.Sprintf("cached %s", e2.Pkt))
		}
	case "fill":
		typ := parseType(t, d, a["type"], wire.TypeAcquire)
		for id := num("from", 1); id <= num("to", 0); id++ {
			h.s.Applied(Outcome{Req: id, Type: typ, Shard: uint32(num("shard", 0)), Status: wire.StatusOK, Pkt: reply(typ, id, wire.StatusOK)})
		}
		out = append(out, fmt.Sprintf("cached %d", h.s.Len()))
	case "revoke":
		k := RevokeKey{Shard: uint32(num("shard", 0)), Fence: num("fence", 0), Start: 0, End: 1<<64 - 1}
		mode, err := wire.ParseMode(a["mode"])
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		k.Mode = mode
		if r, ok := a["range"]; ok {
			lo, hi, _ := strings.Cut(r, "-")
			k.Start, _ = strconv.ParseUint(lo, 10, 64)
			k.End, _ = strconv.ParseUint(hi, 10, 64)
		}
		pkt, next, err := h.s.Revoke(k, h.now, func(seq uint64) ([]byte, error) {
			return []byte(fmt.Sprintf("REVOKE#%d", seq)), nil
		})
		switch {
		case err != nil:
			out = append(out, "error: "+err.Error())
		case pkt == nil:
			out = append(out, "outstanding already: nothing sent")
		default:
			out = append(out, fmt.Sprintf("send %s, again at %s", pkt, ms(next)))
		}
	case "grant":
		id := num("req", 0)
		pkt := []byte(fmt.Sprintf("GRANT_ASYNC#%d", id))
		next := h.s.GrantAsync(id, uint32(num("shard", 0)), num("fence", 0), pkt, h.now)
		out = append(out, fmt.Sprintf("send %s, again at %s", pkt, ms(next)))
	case "tick":
		for _, d := range h.s.Tick(h.now, nil) {
			m, prefix := h.s.rev.m, "REVOKE#"
			if d.Grant {
				m, prefix = h.s.rev.g, "GRANT_ASYNC#"
			}
			id, _ := strconv.ParseUint(strings.TrimPrefix(string(d.Pkt), prefix), 10, 64)
			r := m[id]
			if r == nil {
				out = append(out, fmt.Sprintf("resend %s (try %d): the last", d.Pkt, GrantTries))
				continue
			}
			out = append(out, fmt.Sprintf("resend %s (try %d), again at %s = +%s (interval %s x %.3f)",
				d.Pkt, r.tries, ms(r.next), ms(r.next-h.now), ms(r.rto), float64(r.next-h.now)/float64(r.rto)))
		}
	case "next-deadline":
		if dl, ok := h.s.NextDeadline(); ok {
			out = append(out, "next deadline "+ms(dl))
		} else {
			out = append(out, "no deadline")
		}
	case "state":
		out = h.dump()
	case "end":
		h.s.Drop()
		out = append(out, fmt.Sprintf("cached %d, revoking %v", h.s.Len(), h.s.Revoking()))
	case "drop-shards":
		lost := map[uint32]bool{}
		for _, f := range strings.Split(a["shards"], ",") {
			n, err := strconv.ParseUint(f, 10, 32)
			if err != nil {
				d.Fatalf(t, "shards=%q: %v", a["shards"], err)
			}
			lost[uint32(n)] = true
		}
		n := h.s.Len()
		finals := h.s.DropShards(func(s uint32) bool { return lost[s] }, nil)
		for _, r := range finals {
			out = append(out, fmt.Sprintf("hand over %s (shard %d)", r.Pkt, r.Shard))
		}
		out = append(out, fmt.Sprintf("forgot %d queued", n-h.s.Len()))
	case "adopt":
		id := num("req", 0)
		typ := parseType(t, d, a["type"], wire.TypeAcquire)
		if h.s.Known(id) {
			out = append(out, "known: kept as is")
		} else {
			h.s.Adopt(id, Entry{Type: typ, Shard: uint32(num("shard", 0)), Pkt: reply(typ, id, wire.StatusOK)})
			out = append(out, "adopted")
		}
	case "unmark":
		h.s.Unmark(num("req", 0))
		out = append(out, "unmarked")
	case "jitter":
		out = jitterStats(num("seeds", 100), num("tries", 10))
	default:
		d.Fatalf(t, "unknown command %q", d.Cmd)
	}
	after := h.revokeSeqs()
	for _, seq := range before {
		if !slices.Contains(after, seq) {
			out = append(out, fmt.Sprintf("%s stopped", seqName(seq)))
		}
	}
	if len(out) == 0 {
		return "(no output)\n"
	}
	return strings.Join(out, "\n") + "\n"
}

// request handles one request the way worker.handle and handleToken do.
func (h *harness) request(t *testing.T, d *datadriven.TestData, a map[string]string, num func(string, uint64) uint64) []string {
	hd := wire.Header{Type: parseType(t, d, a["type"], 0), Request: num("req", 0), Ack: num("ack", 0), Shard: uint32(num("shard", 0))}
	v, pkt := h.s.Decide(hd)
	switch v {
	case Stale:
		return []string{fmt.Sprintf("drop: stale (id %d below the ack %d)", hd.Request, h.s.ack)}
	case Unknown:
		return []string{fmt.Sprintf("UNKNOWN_REQUEST (id %d below the ack %d, not cached); not cached", hd.Request, h.s.ack)}
	case Resend:
		h.s.Repolled(hd.Request)
		return []string{fmt.Sprintf("resend %s", pkt)}
	case Reused:
		return []string{"BAD_REQUEST: id reused for another type"}
	case Replay:
		return []string{fmt.Sprintf("drop: replay (id %d applied before or below the window, newest %d)", hd.Request, h.s.win.hi)}
	}
	h.s.Ack(hd.Ack, h.now)
	switch hd.Type {
	case wire.TypeKeepalive, wire.TypeSessionClose:
		h.s.Mark(hd.Request)
		return []string{"apply; not cached"}
	case wire.TypeRevokeAck:
		h.s.Mark(hd.Request)
		h.s.AckRevoke(num("target", 0))
		return []string{"apply; not cached"}
	case wire.TypeGrantAck:
		h.s.Mark(hd.Request)
		h.s.AckOutcome(num("target", 0))
		return []string{"apply; not cached"}
	}
	if h.s.OverLimit(hd) {
		return []string{fmt.Sprintf("LIMIT (%d cached); not cached", h.s.Len())}
	}
	st := wire.StatusOK
	if s, ok := a["status"]; ok {
		st = parseStatus(t, d, s)
	}
	o := Outcome{Req: hd.Request, Type: hd.Type, Shard: hd.Shard, Fence: num("fence", 0), Released: num("released", 0),
		Status: st, Pkt: reply(hd.Type, hd.Request, st)}
	h.s.Applied(o)
	out := fmt.Sprintf("apply: %s; ", o.Pkt)
	if _, ok := h.s.Entry(hd.Request); ok {
		out += "cached"
	} else {
		out += "not cached"
	}
	lines := []string{out}
	if st == wire.StatusOK && hd.Type == wire.TypeCancel {
		tgt := num("target", 0)
		if typ, ok := h.s.CancelTarget(tgt); ok {
			h.s.Settle(tgt, wire.StatusCanceled, reply(typ, tgt, wire.StatusCanceled), h.now)
			e, _ := h.s.Entry(tgt)
			lines = append(lines, fmt.Sprintf("target cached %s", e.Pkt))
		}
	}
	return lines
}

func (h *harness) dump() []string {
	out := []string{fmt.Sprintf("ack=%d top=%d cached=%d", h.s.ack, h.s.top, len(h.s.cache))}
	ids := make([]uint64, 0, len(h.s.cache))
	for id := range h.s.cache {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e := h.s.cache[id]
		line := fmt.Sprintf("  %d: %s shard=%d", id, e.Pkt, e.Shard)
		if e.Fence != 0 {
			line += fmt.Sprintf(" fence=%d", e.Fence)
		}
		if e.Pending {
			line += " pending"
		}
		if e.Exempt {
			line += " exempt"
		}
		if e.Expire != 0 {
			line += " expires " + ms(e.Expire)
		}
		out = append(out, line)
	}
	for _, seq := range h.revokeSeqs() {
		if seq&grantBit != 0 {
			r := h.s.rev.g[seq&^grantBit]
			out = append(out, fmt.Sprintf("  %s shard=%d fence=%d try %d, again at %s",
				seqName(seq), r.key.Shard, r.key.Fence, r.tries, ms(r.next)))
			continue
		}
		r := h.s.rev.m[seq]
		out = append(out, fmt.Sprintf("  REVOKE#%d shard=%d fence=%d keep=%s [%d,%d) try %d, again at %s",
			seq, r.key.Shard, r.key.Fence, r.key.Mode, r.key.Start, r.key.End, r.tries, ms(r.next)))
	}
	return out
}

// grantBit marks GRANT_ASYNCs among revokeSeqs.
const grantBit = 1 << 63

func seqName(seq uint64) string {
	if seq&grantBit != 0 {
		return fmt.Sprintf("GRANT_ASYNC#%d", seq&^grantBit)
	}
	return fmt.Sprintf("REVOKE#%d", seq)
}

func (h *harness) revokeSeqs() []uint64 {
	if h.s == nil {
		return nil
	}
	var seqs []uint64
	for seq := range h.s.rev.m {
		seqs = append(seqs, seq)
	}
	for id := range h.s.rev.g {
		seqs = append(seqs, id|grantBit)
	}
	slices.Sort(seqs)
	return seqs
}

// jitterStats checks Jitter's factor over every (seed, request id, try):
// its bounds, its mean and how evenly it fills its range.
func jitterStats(seeds, tries uint64) []string {
	const d = RevokeRTOMax
	lo, hi, sum, n := 2.0, 0.0, 0.0, 0
	var quarters [4]int
	for seed := range seeds {
		for seq := uint64(1); seq <= 10; seq++ {
			for try := uint64(1); try <= tries; try++ {
				f := float64(Jitter(seed, seq, try, d)) / float64(d)
				lo, hi, sum, n = min(lo, f), max(hi, f), sum+f, n+1
				quarters[min(3, max(0, int((f-0.75)*8)))]++
			}
		}
	}
	even := true
	for _, q := range quarters {
		even = even && q*100 >= n*22 && q*100 <= n*28
	}
	return []string{
		fmt.Sprintf("%d samples: factor in [0.75, 1.25]: %v; mean %.2f", n, lo >= 0.75 && hi <= 1.25, sum/float64(n)),
		fmt.Sprintf("min %.2f, max %.2f; each quarter of the range holds 22-28%% of them: %v", lo, hi, even),
		fmt.Sprintf("same inputs, same factor: %v", Jitter(7, 3, 2, d) == Jitter(7, 3, 2, d)),
	}
}

// reply is the harness's stand-in for a reply datagram.
func reply(t wire.Type, id uint64, st wire.Status) []byte {
	return []byte(fmt.Sprintf("%s#%d:%s", strings.ToLower(t.String()), id, st))
}

func parseType(t *testing.T, d *datadriven.TestData, s string, def wire.Type) wire.Type {
	if s == "" && def != 0 {
		return def
	}
	for ty := wire.Type(1); ty < 0x40; ty++ {
		if ty.IsRequest() && strings.EqualFold(strings.ReplaceAll(ty.String(), "_", "-"), s) {
			return ty
		}
	}
	d.Fatalf(t, "type=%q: no such request type", s)
	return 0
}

func parseStatus(t *testing.T, d *datadriven.TestData, s string) wire.Status {
	for st := 0; st < 256; st++ {
		if wire.Status(st).Valid() && strings.EqualFold(wire.Status(st).String(), s) {
			return wire.Status(st)
		}
	}
	d.Fatalf(t, "status=%q: no such status", s)
	return 0
}

// ms formats nanoseconds as milliseconds.
func ms(ns int64) string { return strconv.FormatFloat(float64(ns)/1e6, 'f', 3, 64) + "ms" }
