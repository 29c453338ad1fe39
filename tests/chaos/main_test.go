package chaos

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/proctest"
)

var (
	soakFlag = flag.Duration("soak", 0, "run every selected scenario again and again with random seeds for this long (also TOKEND_SOAK)")
	seedFlag = flag.Uint64("seed", 0, "run the selected scenarios once with this seed (also TOKEND_CHAOS_SEED)")
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(proctest.Main(m, "tokend-chaos-", 10*time.Second))
}

// soak returns how long to soak, 0 for the short CI form.
func soak() time.Duration {
	if *soakFlag > 0 {
		return *soakFlag
	}
	if d, err := time.ParseDuration(os.Getenv("TOKEND_SOAK")); err == nil {
		return d
	}
	return 0
}

func fixedSeed() uint64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	s, _ := strconv.ParseUint(os.Getenv("TOKEND_CHAOS_SEED"), 10, 64)
	return s
}

// run is how every scenario runs: with the pinned seeds (the short CI
// form: each seed that ever failed is added to its scenario's list), with
// -seed N once, or with -soak D with random seeds until D is over, long
// set. A failing run names its seed and the command that repeats it.
func run(t *testing.T, pinned []uint64, fn func(t *testing.T, seed uint64, long bool)) {
	one := func(seed uint64, long bool) bool {
		return t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Cleanup(func() {
				if t.Failed() {
					// A soak run is the long form: the repeat must be too.
					extra := ""
					if long {
						extra = " -soak 1s"
					}
					t.Logf("FAILED with seed %d; repeat with: go test ./tests/chaos -run '%s' -seed %d%s -v", seed, t.Name(), seed, extra)
				}
			})
			fn(t, seed, long)
		})
	}
	switch d := soak(); {
	case fixedSeed() != 0:
		one(fixedSeed(), d > 0)
	case d > 0:
		end := time.Now().Add(d)
		for i := 0; time.Now().Before(end) && i < 1_000_000; i++ {
			if !one(rand.Uint64N(1<<32)+1, true) {
				return
			}
		}
	default:
		for _, s := range pinned {
			one(s, false)
		}
	}
}

// skipShort skips scenarios that start etcd under -short.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a cluster")
	}
}

// envInt returns the integer in environment variable k, or def.
func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}
