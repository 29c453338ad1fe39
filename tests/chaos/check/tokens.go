package check

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tokend/tokend/wire"
)

// Forever is the Return time of an operation whose effect may come at any
// later time, or never: a release that failed or was not answered (the grant
// then ends with the session or a revocation, at a time nobody saw).
const Forever int64 = math.MaxInt64

// OpKind says what an operation did.
type OpKind uint8

// The operations of the token model.
const (
	OpAcquire OpKind = iota + 1 // a new grant: Output is its fence
	OpRelease                   // the end of a grant, by Release or by the holder giving it up
	OpConvert                   // a mode change of a held grant: Output is the new fence
)

func (k OpKind) String() string {
	switch k {
	case OpAcquire:
		return "acquire"
	case OpRelease:
		return "release"
	case OpConvert:
		return "convert"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Input is what an operation asked for.
type Input struct {
	Kind       OpKind
	Client     int
	Token      string
	Mode       wire.Mode // acquire: mode asked; convert: new mode
	Start, End uint64    // acquire: range; wire.IsWhole spellings are the whole token
	Fence      uint64    // release, convert: the fence of the grant operated on
	// Cached: an acquire the client served from its token cache
	// (clientlib's "Token cache"): Output.Fence is that of a grant the
	// client released earlier and kept, Mode and Start/End are the grant's
	// as held (they may cover more than was asked).
	Cached bool
	// Batch: an acquire of several tokens at once (clientlib's
	// AcquireBatch), each recorded as its own acquire over the call's
	// whole span: the grant came somewhere within it, maybe long before
	// the return (the batch's later shards may have made it wait).
	Batch bool
}

// Output is what an operation returned: the fence granted (acquire,
// convert); 0 for release. Status is the final status of an acquire or
// convert that failed, or 0 (OK). Of the failures only DEADLOCK may be
// recorded (wire/SPEC.md section 19): the request got nothing and changed
// nothing, and a convert's grant stays held as it was.
type Output struct {
	Fence  uint64
	Status wire.Status
}

// holder is one grant in the model's state.
type holder struct {
	client     int
	fence      uint64
	mode       wire.Mode
	start, end uint64 // normalised: the whole token is [0, MaxUint64)
}

// tokState is the model state of one token: the highest fence granted,
// the highest granted over the whole token in each mode, the highest
// granted for each (mode, byte range) of the others (ranged: one entry per
// mode and range, sorted; the workloads draw ranges from small sets, so
// it stays small), and the grants held, sorted by fence. It is never
// modified once built.
type tokState struct {
	last   uint64
	byMode [wire.EX + 1]uint64
	ranged []holder // client unused
	hs     []holder
}

func norm(start, end uint64) (uint64, uint64) {
	if wire.IsWhole(start, end) {
		return 0, math.MaxUint64
	}
	return start, end
}

func overlaps(a, b holder) bool { return a.start < b.end && b.start < a.end }

// compatibleWith reports whether g may be held together with every holder
// of s except the one with fence skip (invariant 1).
func (s tokState) compatibleWith(g holder, skip uint64) bool {
	for _, h := range s.hs {
		if h.fence != skip && overlaps(h, g) && !wire.Compatible(h.mode, g.mode) {
			return false
		}
	}
	return true
}

func (s tokState) find(client int, fence uint64) int {
	for i, h := range s.hs {
		if h.client == client && h.fence == fence {
			return i
		}
	}
	return -1
}

func (s tokState) with(g holder, last uint64, drop int) tokState {
	hs := make([]holder, 0, len(s.hs)+1)
	for i, h := range s.hs {
		if i != drop {
			hs = append(hs, h)
		}
	}
	byMode, ranged := s.byMode, s.ranged
	if g.fence != 0 {
		hs = append(hs, g)
		slices.SortFunc(hs, func(a, b holder) int { return cmp.Compare(a.fence, b.fence) })
		if g.start == 0 && g.end == math.MaxUint64 {
			byMode[g.mode] = max(byMode[g.mode], g.fence)
		} else {
			ranged = withRanged(ranged, holder{fence: g.fence, mode: g.mode, start: g.start, end: g.end})
		}
	}
	return tokState{last: last, byMode: byMode, ranged: ranged, hs: hs}
}

// withRanged returns rs with r's fence recorded for r's mode and range
// (the higher of the two if one is there), rs itself unchanged.
func withRanged(rs []holder, r holder) []holder {
	key := func(a, b holder) int {
		return cmp.Or(cmp.Compare(a.mode, b.mode), cmp.Compare(a.start, b.start), cmp.Compare(a.end, b.end))
	}
	i, found := slices.BinarySearchFunc(rs, r, key)
	if found {
		if rs[i].fence >= r.fence {
			return rs
		}
		out := slices.Clone(rs)
		out[i].fence = r.fence
		return out
	}
	return slices.Insert(slices.Clone(rs), i, r)
}

// reusable reports whether a grant of fence f in mode m, released by its
// holder into its client's cache, may be handed out again (a cached
// re-acquire over g's range): it was granted (f <= last), nobody holds it
// now, and no grant that conflicts with m on a range overlapping g's was
// made after it (a cached grant grown to the whole token may have given
// back a part another client then got: the client splits it). A cached
// grant is still
// held at the worker, so any such grant means the worker took it away
// (revoked, expired) and the client's cache should have forgotten it.
func (s tokState) reusable(f uint64, m wire.Mode, g holder) bool {
	if f == 0 || f > s.last {
		return false
	}
	for _, h := range s.hs {
		if h.fence == f {
			return false
		}
	}
	for o := range s.byMode {
		if !wire.Compatible(wire.Mode(o), m) && s.byMode[o] > f {
			return false
		}
	}
	for _, r := range s.ranged {
		if r.fence > f && !wire.Compatible(r.mode, m) && overlaps(r, g) {
			return false
		}
	}
	return true
}

// step is the sequential specification of one token.
func step(s tokState, in Input, out Output) (bool, tokState) {
	if out.Status != wire.StatusOK {
		// A deadlock victim gets nothing and keeps what it held; a convert
		// answered DEADLOCK is one of a grant still held (the victim keeps
		// it). No other failure is a legal record.
		switch {
		case out.Status != wire.StatusDeadlock || out.Fence != 0:
			return false, s
		case in.Kind == OpAcquire:
			return true, s
		case in.Kind == OpConvert && s.find(in.Client, in.Fence) >= 0:
			return true, s
		}
		return false, s
	}
	switch in.Kind {
	case OpAcquire:
		st, en := norm(in.Start, in.End)
		g := holder{client: in.Client, fence: out.Fence, mode: in.Mode, start: st, end: en}
		if in.Cached {
			// Invariant 2 for a cached re-acquire: the same grant, which
			// the worker held all along, so nothing conflicting came
			// after it; invariant 1 as for any grant.
			if !s.reusable(out.Fence, in.Mode, g) || !s.compatibleWith(g, 0) {
				return false, s
			}
			return true, s.with(g, s.last, -1)
		}
		// Invariant 2: every grant's fence is above every earlier one;
		// invariant 1: compatible with everything held.
		if out.Fence <= s.last || !s.compatibleWith(g, 0) {
			return false, s
		}
		return true, s.with(g, out.Fence, -1)
	case OpRelease:
		i := s.find(in.Client, in.Fence)
		if i < 0 {
			return false, s
		}
		return true, s.with(holder{}, s.last, i)
	case OpConvert:
		i := s.find(in.Client, in.Fence)
		if i < 0 {
			return false, s
		}
		g := s.hs[i]
		g.mode = in.Mode
		if wire.Covers(s.hs[i].mode, in.Mode) {
			// A downgrade keeps the fence and cannot conflict.
			if out.Fence != in.Fence {
				return false, s
			}
			return true, s.with(g, s.last, i)
		}
		g.fence = out.Fence
		if out.Fence <= s.last || !s.compatibleWith(g, in.Fence) {
			return false, s
		}
		return true, s.with(g, out.Fence, i)
	}
	return false, s
}

// TokenModel is the porcupine model of one token (histories are split per
// token before checking; see History.Check).
var TokenModel = porcupine.Model{
	Init: func() any { return tokState{} },
	Step: func(state, input, output any) (bool, any) {
		out, _ := output.(Output) // nil for a release
		return step(state.(tokState), input.(Input), out)
	},
	Equal: func(a, b any) bool {
		x, y := a.(tokState), b.(tokState)
		return x.last == y.last && x.byMode == y.byMode && slices.Equal(x.ranged, y.ranged) && slices.Equal(x.hs, y.hs)
	},
	Hash: func(state any) uint64 {
		s := state.(tokState)
		h := fnv.New64a()
		fmt.Fprint(h, s.last, s.byMode, s.ranged, s.hs)
		return h.Sum64()
	},
	DescribeOperation: func(input, output any) string {
		in := input.(Input)
		out, _ := output.(Output)
		res := fmt.Sprintf("%#x", out.Fence)
		if out.Status != wire.StatusOK {
			res = out.Status.String()
		}
		switch in.Kind {
		case OpAcquire:
			cached := ""
			if in.Cached {
				cached = " (cached)"
			}
			return fmt.Sprintf("c%d acquire %s %v [%d,%d) -> %s%s", in.Client, in.Token, in.Mode, in.Start, in.End, res, cached)
		case OpRelease:
			return fmt.Sprintf("c%d release %s %#x", in.Client, in.Token, in.Fence)
		default:
			return fmt.Sprintf("c%d convert %s %#x to %v -> %s", in.Client, in.Token, in.Fence, in.Mode, res)
		}
	},
	DescribeState: func(state any) string { return fmt.Sprint(state.(tokState)) },
}

// History records token operations as clients see them, with times on
// one monotonic clock. Its methods are safe for concurrent use.
//
// What to record, so that the check never blames the service for the
// test's own uncertainty:
//   - an acquire (or convert) only when it returned a grant, or DEADLOCK
//     (Output.Status; it changed nothing): Call just before the request,
//     Return just after;
//   - the end of every recorded grant: Call just before the holder stops
//     relying on it (before Release; for a grant given up as lost or not
//     Valid, the time just before its last successful Valid check), Return
//     just after Release returned nil, or Forever when it did not.
type History struct {
	start time.Time
	mu    sync.Mutex // guards ops
	ops   []porcupine.Operation
}

// NewHistory starts an empty history; its clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns the history's clock: nanoseconds since NewHistory, monotonic.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Add records one operation.
func (h *History) Add(in Input, out Output, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: in.Client, Input: in, Output: out, Call: call, Return: ret})
}

// Each calls fn for every operation recorded so far, in recording order.
func (h *History) Each(fn func(in Input, out Output, call, ret int64)) {
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	for _, op := range ops {
		out, _ := op.Output.(Output)
		fn(op.Input.(Input), out, op.Call, op.Return)
	}
}

// Len returns the number of operations recorded.
func (h *History) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ops)
}

// Result is the verdict of a check.
type Result struct {
	Ops      int
	Tokens   int
	Illegal  []string // one description per token whose history is not linearizable
	Unknown  []string // tokens the checker gave up on within its time limit
	Duration time.Duration
}

// OK reports whether no history was found illegal.
func (r Result) OK() bool { return len(r.Illegal) == 0 }

func (r Result) String() string {
	return fmt.Sprintf("%d ops on %d tokens checked in %v: %d illegal, %d unknown", r.Ops, r.Tokens,
		r.Duration.Round(time.Millisecond), len(r.Illegal), len(r.Unknown))
}

// Check checks the history of every token against TokenModel with
// porcupine, each token within perToken (0: no limit).
func (h *History) Check(perToken time.Duration) Result {
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	return CheckOps(ops, perToken)
}

// CheckOps checks a history given as porcupine operations whose Input is
// an Input and Output an Output.
func CheckOps(ops []porcupine.Operation, perToken time.Duration) Result {
	began := time.Now()
	byTok := map[string][]porcupine.Operation{}
	for _, op := range ops {
		tok := op.Input.(Input).Token
		byTok[tok] = append(byTok[tok], op)
	}
	names := make([]string, 0, len(byTok))
	for n := range byTok {
		names = append(names, n)
	}
	slices.Sort(names)
	res := Result{Ops: len(ops), Tokens: len(names)}
	var mu sync.Mutex // guards res
	var wg sync.WaitGroup
	work := make(chan string)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				part := byTok[name]
				r := porcupine.CheckOperationsTimeout(TokenModel, part, perToken) // 0: no limit
				mu.Lock()
				switch r {
				case porcupine.Illegal:
					res.Illegal = append(res.Illegal, describe(name, part))
				case porcupine.Unknown:
					res.Unknown = append(res.Unknown, name)
				}
				mu.Unlock()
			}
		}()
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	slices.Sort(res.Illegal)
	res.Duration = time.Since(began)
	return res
}

// describe shows why a token's history is illegal: it finds the shortest
// prefix of the operations, in call order, that is not linearizable (the
// model is prefix-closed: dropping every operation called after some time
// keeps a legal history legal), and lists the last operation of that
// prefix, the culprit, with every operation overlapping the time since the
// culprit's token was last idle, up to 60 of them.
func describe(name string, ops []porcupine.Operation) string {
	ops = slices.Clone(ops)
	slices.SortStableFunc(ops, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
	lo, hi := 1, len(ops) // ops[:hi] is illegal; find the smallest such hi
	for lo < hi {
		mid := (lo + hi) / 2
		if porcupine.CheckOperationsTimeout(TokenModel, ops[:mid], 10*time.Second) == porcupine.Illegal {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	culprit := ops[hi-1]
	// Show what overlaps the culprit, and the operations just before it.
	from := hi - 1
	for from > 0 && hi-from < 40 {
		from--
	}
	var b strings.Builder
	fmt.Fprintf(&b, "token %q: %d operations not linearizable; the first %d are, the culprit is the last one shown:", name, len(ops), hi)
	for _, op := range ops[from:hi] {
		fmt.Fprintf(&b, "\n  %s", describeOp(op))
	}
	fmt.Fprintf(&b, "\n  culprit: %s", describeOp(culprit))
	return b.String()
}

func describeOp(op porcupine.Operation) string {
	ret := "∞"
	if op.Return != Forever {
		ret = fmt.Sprintf("%.3fms", float64(op.Return)/1e6)
	}
	return fmt.Sprintf("[%.3fms, %s] %s", float64(op.Call)/1e6, ret, TokenModel.DescribeOperation(op.Input, op.Output))
}
