package worker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/embedded/etcdtest"
)

// TestRenewerStream renews many leases concurrently over one stream, gets
// lease-not-found for a revoked lease, survives a reset, and leaves no
// goroutine behind when its context ends.
func TestRenewerStream(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	r := newRenewer(ctx, cli, &wg)
	var ids []clientv3.LeaseID
	for range 20 {
		g, err := cli.Grant(context.Background(), 5)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, g.ID)
	}
	var rw sync.WaitGroup
	for round := range 3 {
		for _, id := range ids {
			rw.Go(func() {
				rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer rcancel()
				ttl, err := r.renew(rctx, id)
				if err != nil || ttl != 5 {
					t.Errorf("round %d: renew %x: ttl %d, %v; want 5", round, id, ttl, err)
				}
			})
		}
		rw.Wait()
		if round == 1 {
			r.reset()
		}
	}
	if _, err := cli.Revoke(context.Background(), ids[0]); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	if _, err := r.renew(rctx, ids[0]); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("renew of a revoked lease: %v, want %v", err, rpctypes.ErrLeaseNotFound)
	}
	cancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's reader did not stop with its context")
	}
	if _, err := r.renew(context.Background(), ids[1]); !errors.Is(err, context.Canceled) {
		t.Errorf("renew after the worker stopped: %v, want %v", err, context.Canceled)
	}
}

// BenchmarkSessionRenewal compares one KeepAliveOnce per renewal (a gRPC
// stream opened and closed each time) with renewals over one stream, 16
// at a time, against a one-member etcd in this process.
func BenchmarkSessionRenewal(b *testing.B) {
	_, cli := etcdtest.StartOne(b)
	var ids []clientv3.LeaseID
	for range 64 {
		g, err := cli.Grant(context.Background(), 60)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, g.ID)
	}
	run := func(b *testing.B, renew func(context.Context, clientv3.LeaseID) error) {
		b.SetParallelism(8) // 16 goroutines on 2 cores
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if err := renew(context.Background(), ids[i%len(ids)]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	}
	b.Run("KeepAliveOnce", func(b *testing.B) {
		run(b, func(ctx context.Context, id clientv3.LeaseID) error {
			_, err := cli.KeepAliveOnce(ctx, id)
			return err
		})
	})
	b.Run("stream", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var wg sync.WaitGroup
		r := newRenewer(ctx, cli, &wg)
		run(b, func(ctx context.Context, id clientv3.LeaseID) error {
			_, err := r.renew(ctx, id)
			return err
		})
		cancel()
		wg.Wait()
	})
}
