package etcdtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/embedded/etcdtest"
)

func TestMain(m *testing.M) {
	etcdtest.VerifyTestMain(m)
}

func TestStartOne(t *testing.T) {
	m, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if m.Name() != "s1" || !m.IsLeader() {
		t.Errorf("member %q leader %v", m.Name(), m.IsLeader())
	}
}

func TestStartCluster(t *testing.T) {
	ms, cli := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 || len(resp.Members) != 3 {
		t.Fatalf("%d members started, %d in the cluster", len(ms), len(resp.Members))
	}
	ms[0].Close() // early Close, then again at cleanup
}
