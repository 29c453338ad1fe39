package check

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/tokend/tokend/wire"
)

// f makes a fence of epoch 1.
func f(seq uint64) uint64 { return wire.MakeFence(1, seq) }

type hist []porcupine.Operation

func (h *hist) acq(c int, tok string, m wire.Mode, start, end, fence uint64, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: OpAcquire, Client: c, Token: tok, Mode: m, Start: start, End: end},
		Output: Output{Fence: fence}, Call: call, Return: ret})
}

// hit records a cached re-acquire (clientlib's token cache) of fence in
// mode m over the whole token.
func (h *hist) hit(c int, tok string, m wire.Mode, fence uint64, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: OpAcquire, Client: c, Token: tok, Mode: m, Cached: true},
		Output: Output{Fence: fence}, Call: call, Return: ret})
}

// hitRange records a cached re-acquire of fence over [start, end): a
// grown grant the cache split, keeping that range.
func (h *hist) hitRange(c int, tok string, m wire.Mode, start, end, fence uint64, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: OpAcquire, Client: c, Token: tok, Mode: m, Start: start, End: end, Cached: true},
		Output: Output{Fence: fence}, Call: call, Return: ret})
}

func (h *hist) rel(c int, tok string, fence uint64, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: OpRelease, Client: c, Token: tok, Fence: fence},
		Call: call, Return: ret})
}

func (h *hist) conv(c int, tok string, fence uint64, m wire.Mode, nf uint64, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: OpConvert, Client: c, Token: tok, Fence: fence, Mode: m},
		Output: Output{Fence: nf}, Call: call, Return: ret})
}

// fail records an acquire (fence 0) or a convert of fence that ended with
// status st.
func (h *hist) fail(c int, kind OpKind, tok string, fence uint64, m wire.Mode, st wire.Status, call, ret int64) {
	*h = append(*h, porcupine.Operation{ClientId: c, Input: Input{Kind: kind, Client: c, Token: tok, Fence: fence, Mode: m},
		Output: Output{Status: st}, Call: call, Return: ret})
}

func TestTokenModelHandMade(t *testing.T) {
	cases := []struct {
		name  string
		legal bool
		build func(h *hist)
	}{
		{"sequential EX", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 25, 40)
		}},
		{"overlapping EX holders", false, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 20, 30)
			h.rel(0, "a", f(1), 40, 50)
		}},
		{"release with unknown end lets a later grant in", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, Forever)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 30, 40)
		}},
		{"grant returned before the holder stopped relying", false, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 11, 19)
			h.rel(0, "a", f(1), 20, Forever)
		}},
		{"shared holders together", true, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 5, 15)
			h.rel(0, "a", f(1), 20, 30)
			h.rel(1, "a", f(2), 20, 30)
			h.acq(2, "a", wire.EX, 0, 0, f(3), 25, 40)
		}},
		{"writer while a reader holds", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 20, 30)
			h.rel(0, "a", f(1), 40, 50)
		}},
		{"fence not increasing", false, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(5), 0, 10)
			h.rel(0, "a", f(5), 20, 30)
			h.acq(1, "a", wire.EX, 0, 0, f(4), 40, 50)
		}},
		{"equal fences for two shared grants", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(5), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(5), 20, 30)
		}},
		{"concurrent acquires may take either order", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(2), 0, 100)
			h.acq(1, "a", wire.EX, 0, 0, f(1), 10, 20)
			h.rel(1, "a", f(1), 30, 40)
		}},
		{"disjoint ranges exclusive together", true, func(h *hist) {
			h.acq(0, "r", wire.EX, 0, 4096, f(1), 0, 10)
			h.acq(1, "r", wire.EX, 4096, 8192, f(2), 20, 30)
		}},
		{"overlapping ranges exclusive together", false, func(h *hist) {
			h.acq(0, "r", wire.EX, 0, 4096, f(1), 0, 10)
			h.acq(1, "r", wire.EX, 4095, 8192, f(2), 20, 30)
		}},
		{"range against the whole token", false, func(h *hist) {
			h.acq(0, "r", wire.PW, 100, 200, f(1), 0, 10)
			h.acq(1, "r", wire.PR, 0, 0, f(2), 20, 30)
		}},
		{"tokens are independent", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.acq(1, "b", wire.EX, 0, 0, f(1), 20, 30)
		}},
		{"downgrade keeps the fence, then a reader joins", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.conv(0, "a", f(1), wire.PR, f(1), 20, 30)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 40, 50)
		}},
		{"downgrade that changes the fence", false, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.conv(0, "a", f(1), wire.PR, f(2), 20, 30)
		}},
		{"upgrade while another reader holds", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 0, 10)
			h.conv(0, "a", f(1), wire.EX, f(3), 20, 30)
		}},
		{"upgrade after the other reader left", true, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 0, 10)
			h.rel(1, "a", f(2), 12, 15)
			h.conv(0, "a", f(1), wire.EX, f(3), 20, 30)
		}},
		{"release of a grant never made", false, func(h *hist) {
			h.rel(0, "a", f(1), 0, 10)
		}},
		{"conversion deadlock: the victim keeps its PR, the other upgrades after it releases", true, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 0, 10)
			h.fail(1, OpConvert, "a", f(2), wire.EX, wire.StatusDeadlock, 30, 31)
			h.rel(1, "a", f(2), 40, 45)
			h.conv(0, "a", f(1), wire.EX, f(3), 20, 50)
		}},
		{"a deadlock victim's acquire changes nothing", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.fail(1, OpAcquire, "a", 0, wire.EX, wire.StatusDeadlock, 20, 30)
			h.rel(0, "a", f(1), 40, 50)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 45, 60)
		}},
		{"a deadlock victim still holds what it converted", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 0, 10)
			h.fail(1, OpConvert, "a", f(2), wire.EX, wire.StatusDeadlock, 30, 31)
			h.conv(0, "a", f(1), wire.EX, f(3), 20, 35) // granted while the victim's PR is held
			h.rel(1, "a", f(2), 40, 45)
		}},
		{"DEADLOCK for a convert of a grant not held", false, func(h *hist) {
			h.fail(1, OpConvert, "a", f(2), wire.EX, wire.StatusDeadlock, 30, 31)
		}},
		{"no failure but DEADLOCK is a record", false, func(h *hist) {
			h.fail(1, OpAcquire, "a", 0, wire.EX, wire.StatusTimeout, 30, 31)
		}},
		{"cached re-acquire of a released grant", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.hit(0, "a", wire.EX, f(1), 40, 50)
			h.rel(0, "a", f(1), 60, 70)
			h.acq(1, "a", wire.EX, 0, 0, f(2), 65, 80)
		}},
		{"cached re-acquire after a conflicting grant", false, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 40, 50)
			h.rel(1, "a", f(2), 60, 70)
			h.hit(0, "a", wire.EX, f(1), 80, 90)
		}},
		{"cached reader after another reader", true, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 40, 50)
			h.hit(0, "a", wire.PR, f(1), 60, 70)
		}},
		{"cached reader after a writer's range", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.PW, 8192, 9000, f(2), 40, 50)
			h.rel(1, "a", f(2), 60, 70)
			h.hit(0, "a", wire.PR, f(1), 80, 90)
		}},
		{"cached split grant beside the part given back", true, func(h *hist) {
			h.acq(0, "a", wire.PW, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.PW, 1<<20, wire.WholeEnd, f(2), 40, 50)
			h.hitRange(0, "a", wire.PW, 0, 1<<20, f(1), 60, 70)
		}},
		{"cached split grant over the part given back", false, func(h *hist) {
			h.acq(0, "a", wire.PW, 0, 0, f(1), 0, 10)
			h.rel(0, "a", f(1), 20, 30)
			h.acq(1, "a", wire.PW, 1<<20, 1<<21, f(2), 40, 50)
			h.rel(1, "a", f(2), 55, 58)
			h.hitRange(0, "a", wire.PW, 0, 1<<21, f(1), 60, 70)
		}},
		{"cached re-acquire of a grant still held", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.hit(0, "a", wire.PR, f(1), 20, 30)
		}},
		{"cached re-acquire of a grant never made", false, func(h *hist) {
			h.acq(0, "a", wire.PR, 0, 0, f(1), 0, 10)
			h.hit(1, "a", wire.PR, f(2), 20, 30)
		}},
		{"cached after a downgrade, beside a reader", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, f(1), 0, 10)
			h.conv(0, "a", f(1), wire.PR, f(1), 20, 30)
			h.rel(0, "a", f(1), 40, 50)
			h.acq(1, "a", wire.PR, 0, 0, f(2), 60, 70)
			h.hit(0, "a", wire.PR, f(1), 80, 90)
		}},
		{"new epoch fences above the old", true, func(h *hist) {
			h.acq(0, "a", wire.EX, 0, 0, wire.MakeFence(1, 900), 0, 10)
			h.rel(0, "a", wire.MakeFence(1, 900), 20, Forever)
			h.acq(1, "a", wire.EX, 0, 0, wire.MakeFence(2, 1), 30, 40)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h hist
			tc.build(&h)
			res := CheckOps(h, 5*time.Second)
			if res.OK() != tc.legal {
				t.Fatalf("legal %v, checker says %v: %v", tc.legal, res.OK(), res.Illegal)
			}
			if len(res.Unknown) > 0 {
				t.Fatalf("unknown: %v", res.Unknown)
			}
		})
	}
}

// simulate runs a correct lock table in one goroutine's order and records
// the history with random call/return slack, then, if corrupt, makes one
// random grant break the rules. The checker must accept every clean
// history and reject every corrupted one.
func simulate(seed uint64, ops int, corrupt bool) hist {
	rng := rand.New(rand.NewPCG(seed, 99))
	type g struct {
		c          int
		fence      uint64
		mode       wire.Mode
		start, end uint64
		granted    int64
	}
	held := map[string][]g{}
	last := map[string]uint64{}
	var h hist
	now := int64(0)
	corruptAt := -1
	if corrupt {
		corruptAt = ops/2 + rng.IntN(ops/2)
	}
	for i := 0; i < ops; i++ {
		now += 10
		tok := fmt.Sprintf("t%d", rng.IntN(3))
		hs := held[tok]
		if len(hs) > 0 && rng.IntN(2) == 0 {
			k := rng.IntN(len(hs))
			x := hs[k]
			held[tok] = slices.Delete(hs, k, k+1)
			h.rel(x.c, tok, x.fence, now, now+1+int64(rng.IntN(5)))
			continue
		}
		mode := []wire.Mode{wire.PR, wire.EX, wire.PW, wire.CR}[rng.IntN(4)]
		var start, end uint64
		if rng.IntN(2) == 0 {
			start = uint64(rng.IntN(4)) * 100
			end = start + 100 + uint64(rng.IntN(2))*100
		}
		n := holder{mode: mode}
		n.start, n.end = norm(start, end)
		ok := true
		for _, x := range hs {
			o := holder{mode: x.mode}
			o.start, o.end = norm(x.start, x.end)
			if overlaps(o, n) && !wire.Compatible(o.mode, n.mode) {
				ok = false
			}
		}
		if !ok && (corruptAt < 0 || i < corruptAt) {
			continue
		}
		last[tok]++
		fence := f(last[tok])
		if !ok || i == corruptAt {
			if ok {
				// Corrupt by reusing an old fence instead.
				fence = f(max(1, last[tok]-1))
			}
			corruptAt = -2
		}
		c := rng.IntN(8)
		h.acq(c, tok, mode, start, end, fence, now-int64(rng.IntN(8)), now+int64(rng.IntN(3)))
		held[tok] = append(held[tok], g{c, fence, mode, start, end, now})
		if corruptAt == -2 {
			// Keep the corrupted grant and the one it conflicts with
			// visibly overlapping: no more ops on this token.
			break
		}
	}
	return h
}

func TestTokenModelRandomHistories(t *testing.T) {
	for seed := uint64(1); seed <= 40; seed++ {
		clean := CheckOps(simulate(seed, 400, false), 10*time.Second)
		if !clean.OK() || len(clean.Unknown) > 0 {
			t.Fatalf("seed %d: a correct history judged illegal: %v %v", seed, clean.Illegal, clean.Unknown)
		}
		bad := CheckOps(simulate(seed, 400, true), 10*time.Second)
		if bad.OK() {
			t.Fatalf("seed %d: a corrupted history judged legal", seed)
		}
	}
}

func TestHistoryRecorder(t *testing.T) {
	h := NewHistory()
	c := h.Now()
	h.Add(Input{Kind: OpAcquire, Client: 1, Token: "x", Mode: wire.EX}, Output{Fence: f(1)}, c, h.Now())
	c = h.Now()
	h.Add(Input{Kind: OpAcquire, Client: 2, Token: "x", Mode: wire.EX}, Output{Fence: f(2)}, c, h.Now())
	if h.Len() != 2 {
		t.Fatal(h.Len())
	}
	res := h.Check(time.Second)
	if res.OK() {
		t.Fatal("two EX grants never released judged legal")
	}
	t.Log(res, res.Illegal)
}

func TestRegister(t *testing.T) {
	var r Register
	if _, err := r.Read(f(2)); err != nil {
		t.Fatal(err)
	}
	if err := r.Write(f(1), []int64{1}); !errors.Is(err, ErrStaleFence) {
		t.Fatalf("write below a read's fence: %v", err)
	}
	if err := r.Write(f(2), []int64{2}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(f(1)); !errors.Is(err, ErrStaleFence) {
		t.Fatalf("stale read: %v", err)
	}
	// Readers do not refuse each other: a read below another read's
	// fence is fine as long as no newer write landed.
	var r2 Register
	r2.Read(f(5))
	if _, err := r2.Read(f(4)); err != nil {
		t.Fatalf("read below a read: %v", err)
	}
	if err := r2.Write(f(4), nil); !errors.Is(err, ErrStaleFence) {
		t.Fatalf("write below a read: %v", err)
	}
	if got := r.Value(); !slices.Equal(got, []int64{2}) {
		t.Fatal(got)
	}
	if a := AuditLog(r.Log()); len(a) > 0 {
		t.Fatal(a)
	}
}

func TestAuditLogCatchesBadRegisters(t *testing.T) {
	if a := AuditLog([]Access{{Write: true, Fence: 5, Accepted: true}, {Fence: 4, Accepted: true}}); len(a) != 1 {
		t.Fatalf("stale read accepted not caught: %v", a)
	}
	if a := AuditLog([]Access{{Fence: 5, Accepted: true}, {Write: true, Fence: 4, Accepted: true}}); len(a) != 1 {
		t.Fatalf("stale write accepted not caught: %v", a)
	}
	if a := AuditLog([]Access{{Fence: 5, Accepted: true}, {Write: true, Fence: 6}}); len(a) != 1 {
		t.Fatalf("good write refused not caught: %v", a)
	}
	if a := AuditLog([]Access{{Write: true, Fence: 5, Accepted: true}, {Fence: 4}, {Fence: 6, Accepted: true}, {Fence: 5, Accepted: true}, {Write: true, Fence: 6, Accepted: true}}); len(a) != 0 {
		t.Fatalf("a correct log flagged: %v", a)
	}
}

func TestLostUpdates(t *testing.T) {
	lost, dup := LostUpdates([]int64{1, 2, 3}, []int64{1, 3, 3})
	if !slices.Equal(lost, []int64{2}) || !slices.Equal(dup, []int64{3}) {
		t.Fatalf("lost %v dup %v", lost, dup)
	}
	lost, dup = LostUpdates([]int64{1, 2}, []int64{1, 2, 7}) // 7: a write accepted but not acknowledged
	if len(lost)+len(dup) != 0 {
		t.Fatalf("lost %v dup %v", lost, dup)
	}
}

// TestLockSetCatchesDoubleGrants: two holders given the same fence (a
// double grant) lose an update in the read-modify-write; the same two in
// sequence, or with ordered fences, do not.
func TestLockSetCatchesDoubleGrants(t *testing.T) {
	run := func(fa, fb uint64) LockSetResult {
		ls := NewLockSet()
		bRead := make(chan struct{})
		aWrote := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			ls.Update("k", fb, func() { close(bRead); <-aWrote })
		}()
		<-bRead
		ls.Update("k", fa, nil)
		close(aWrote)
		<-done
		return ls.Check()
	}
	if r := run(f(3), f(3)); len(r.Lost) != 1 {
		t.Fatalf("same fence twice: %v", r)
	}
	if r := run(f(3), f(4)); !r.OK() || r.Refused != 1 {
		t.Fatalf("ordered fences, overlapping sections: %v", r)
	}
	if r := run(f(4), f(3)); !r.OK() || r.Refused != 1 {
		t.Fatalf("ordered fences, overlapping sections: %v", r)
	}
}
