package devcluster

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/internal/pki"
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

// TestAuthByDefault: a cluster authenticates by default: it makes the
// cluster key and the client key "default" (0600), registers the client
// key in etcd (sealed under the cluster key) and gives its workers both;
// Options.Insecure makes no key and gives the workers none.
func TestAuthByDefault(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name, k, err := pki.ReadKeyFile(c.KeyFile())
	if err != nil || name != "default" {
		t.Fatalf("KeyFile %s: %q, %v", c.KeyFile(), name, err)
	}
	if n, _, err := pki.ReadKeyFile(c.ClusterKeyFile()); err != nil || n != "cluster" {
		t.Fatalf("ClusterKeyFile %s: %q, %v", c.ClusterKeyFile(), n, err)
	}
	if list, err := keys.List(ctx, c.Client); err != nil || len(list) != 1 || list[0].Name != "default" {
		t.Errorf("keys in etcd: %v, %v", list, err)
	}
	a := c.Auth()
	if a == nil {
		t.Fatal("no worker authentication")
	}
	if got, ok := a.Keys.ClientKey("default"); !ok || got != k {
		t.Error("the workers' key store does not have the client key")
	}
	c.Close()

	ci, err := Start(ctx, Options{Shards: 4, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Close()
	if ci.KeyFile() != "" || ci.ClusterKeyFile() != "" || ci.Auth() != nil {
		t.Errorf("insecure: key file %q, cluster key file %q, auth %v", ci.KeyFile(), ci.ClusterKeyFile(), ci.Auth())
	}
	if list, err := keys.List(ctx, ci.Client); err != nil || len(list) != 0 {
		t.Errorf("insecure: keys in etcd: %v, %v", list, err)
	}
}
