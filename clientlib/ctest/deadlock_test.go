package ctest

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
)

func init() { programs["tokend-deadlock"] = "tests/deadlock.c" }

// startDevCluster starts an in-process cluster with the given number of
// workers on loopback (the leader's deadlock detector included).
func startDevCluster(t *testing.T, workers int) *devcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// namesServedBy returns one token name per worker, each in a shard that
// worker serves, waiting for the leader to give every worker shards.
func namesServedBy(t *testing.T, c *devcluster.Cluster, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ws := c.Workers()
	for {
		m, _, err := coordinator.ReadMap(ctx, c.Client)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(ws))
		found := 0
		for n := 0; n < 4096 && found < len(ws); n++ {
			name := fmt.Sprintf("%s-%d", prefix, n)
			o, _, ok := m.Lookup(int(wire.Shard([]byte(name), uint32(m.Shards()))))
			for i, w := range ws {
				if ok && o.ID == w.ID() && out[i] == "" {
					out[i] = name
					found++
					break
				}
			}
		}
		if found == len(ws) {
			return out
		}
		select {
		case <-ctx.Done():
			t.Fatal("the map does not give every worker shards")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var deadlockRE = regexp.MustCompile(`deadlock after (\d+) ms`)

func runDeadlock(t *testing.T, c *devcluster.Cluster, bin string, args ...string) {
	t.Helper()
	out, err := run(t, 60*time.Second, target{keyFile: c.KeyFile()}.env(), bin, args...)
	if err != nil || !strings.Contains(out, "ok "+args[0]) {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	if m := deadlockRE.FindStringSubmatch(out); m != nil {
		t.Logf("%s: DEADLOCK after %s ms", args[0], m[1])
	}
}

// TestDeadlockC: the C client sees a conversion deadlock and a 2-token
// cycle (on one worker, and across two) answered TOKEND_EDEADLK to exactly
// one party within 1 s (the program checks the bound, and that the other
// party goes on once the victim releases).
func TestDeadlockC(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	bin := filepath.Join(buildC(t, false, "tokend-deadlock"), "tokend-deadlock")
	t.Run("one-worker", func(t *testing.T) {
		c := startDevCluster(t, 1)
		seeds := c.Seeds()
		runDeadlock(t, c, bin, append([]string{"conv", "c-conv"}, seeds...)...)
		x, y := "c-x", "c-y"
		if wire.Shard([]byte(x), 64) == wire.Shard([]byte(y), 64) {
			y += "'"
		}
		runDeadlock(t, c, bin, append([]string{"cycle", x, y}, seeds...)...)
	})
	t.Run("two-workers", func(t *testing.T) {
		c := startDevCluster(t, 2)
		n := namesServedBy(t, c, "c-cyc")
		runDeadlock(t, c, bin, append([]string{"cycle", n[0], n[1]}, c.Seeds()...)...)
	})
}
