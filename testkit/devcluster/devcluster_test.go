package devcluster

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/embedded/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

// TestStartServeClose: a two-worker cluster comes up with every shard served
// by a live worker, a third worker joins and the map rebalances, and Close
// leaves no goroutine behind (TestMain checks).
func TestStartServeClose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Workers: 2, Shards: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := len(c.Seeds()); got != 2 {
		t.Fatalf("%d seeds, want 2", got)
	}
	if _, err := c.AddWorker(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		total, each := 0, true
		for _, w := range c.Workers() {
			n := w.Shards()
			total += n
			each = each && n == 10
		}
		if total == 30 && each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shards not balanced 10/10/10 over three workers")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
