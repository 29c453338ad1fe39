package table

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"
)

var (
	seedFlag  = flag.Uint64("table.seed", 0, "run TestRandomAgainstModel once with this seed")
	itersFlag = flag.Int("table.iters", 0, "TestRandomAgainstModel: number of seeds (default 300, 40 with -short)")
)

type rngSource struct{ r *rand.Rand }

func (s rngSource) intn(n int) int { return s.r.IntN(n) }

// byteSource turns fuzzer bytes into choices; when they run out it yields 0
// and reports done.
type byteSource struct {
	data []byte
	i    int
}

func (s *byteSource) intn(n int) int {
	if s.i >= len(s.data) {
		s.i++
		return 0
	}
	v := int(s.data[s.i]) % n
	s.i++
	return v
}

func (s *byteSource) done() bool { return s.i >= len(s.data) }

// setup draws a configuration: limits, epoch, recovery mode with a grace
// period, and sometimes a fence sequence close to exhaustion.
func setup(src source) (*pair, *gen) {
	var cfg Config
	if src.intn(3) == 0 {
		cfg.MaxWaitersPerToken = 1 + src.intn(3)
	}
	if src.intn(3) == 0 {
		cfg.MaxGrantsPerSession = 1 + src.intn(4)
	}
	epoch := uint32(2 + src.intn(3))
	var tab *Table
	var mod *model
	var err error
	if src.intn(3) == 0 {
		graceEnd := int64(src.intn(40))
		tab, err = NewRecovering(epoch, graceEnd, cfg)
		mod = newRecoveringModel(epoch, graceEnd, cfg)
	} else {
		tab, err = New(epoch, cfg)
		mod = newModel(epoch, cfg)
	}
	if err != nil {
		panic(err)
	}
	if src.intn(8) == 0 {
		tab.seq = MaxSeq - uint64(src.intn(15))
		tab.maxFence = Fence(epoch, tab.seq)
		mod.seq = tab.seq
	}
	return newPair(tab, mod), &gen{src: src, reqs: map[uint64]uint64{}}
}

// TestRandomAgainstModel drives random sequences of acquire, try, convert,
// release, cancel, end-session (whole, and in steps of EndSession), tick,
// reclaim and handoff through the Table
// and the naive model, and after every step checks invariant 1, invariant 2,
// FIFO fairness (the model is the specification of who gets what, in which
// order) and the Table's internal consistency.
func TestRandomAgainstModel(t *testing.T) {
	iters, steps := 300, 400
	if testing.Short() {
		iters = 40
	}
	if *itersFlag > 0 {
		iters = *itersFlag
	}
	base := uint64(time.Now().UnixNano())
	if *seedFlag != 0 {
		base, iters = *seedFlag, 1
	}
	for i := range iters {
		seed := base + uint64(i)
		if err := runRandom(seed, steps); err != nil {
			t.Fatalf("seed %d (replay with: go test ./worker/table -run TestRandomAgainstModel -table.seed=%d)\n%v", seed, seed, err)
		}
	}
}

// TestRandomCollisions is TestRandomAgainstModel with a hash under which
// all test names collide, so that the hash chains are exercised.
func TestRandomCollisions(t *testing.T) {
	weakHash = true
	defer func() { weakHash = false }()
	base := uint64(time.Now().UnixNano())
	for i := range 50 {
		seed := base + uint64(i)
		if err := runRandom(seed, 400); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

func runRandom(seed uint64, steps int) error {
	src := rngSource{rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	p, g := setup(src)
	for range steps {
		if err := g.next(p); err != nil {
			return err
		}
	}
	return nil
}

// FuzzStep decodes the fuzzer's bytes into a configuration and a sequence
// of inputs and runs them through the Table and the model with the same
// checks as TestRandomAgainstModel.
func FuzzStep(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &byteSource{data: data}
		p, g := setup(src)
		for !src.done() && p.steps < 2000 {
			if err := g.next(p); err != nil {
				t.Fatal(err)
			}
		}
	})
}
