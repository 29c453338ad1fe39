package clientlib_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// sameShardNames returns n names of one shard of a devcluster (64 shards).
func sameShardNames(prefix string, n int) []string {
	first := prefix + "0"
	names := []string{first}
	for i := 1; len(names) < n; i++ {
		if name := fmt.Sprintf("%s%d", prefix, i); wire.Shard([]byte(name), 64) == wire.Shard([]byte(first), 64) {
			names = append(names, name)
		}
	}
	return names
}

// TestAcquireBatch: a batch of one shard is granted by one ACQUIRE_BATCH,
// the Tokens come back in the caller's order; tokens of several shards
// too; a batch that conflicts falls back to waiting, and with Try fails
// and releases what it had got.
func TestAcquireBatch(t *testing.T) {
	c := startCluster(t, nil, 1)
	a := dial(t, c, nil, 0, clientlib.Config{OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	b := dial(t, c, nil, 0, clientlib.Config{})
	ctx := ctxFor(t, 20*time.Second)
	n := sameShardNames("bt/", 3)
	reqs := []clientlib.BatchRequest{{Name: n[2], Mode: wire.EX}, {Name: n[0], Mode: wire.PR},
		{Name: n[1], Mode: wire.EX, Start: 0, End: 100}}
	toks, err := a.AcquireBatch(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, tk := range toks {
		if tk.Name() != reqs[i].Name || tk.Mode() != reqs[i].Mode {
			t.Fatalf("token %d is %s %v, want %s %v", i, tk.Name(), tk.Mode(), reqs[i].Name, reqs[i].Mode)
		}
	}
	if s, e := toks[2].Range(); s != 0 || e != 100 {
		t.Fatalf("range [%d, %d)", s, e)
	}
	if st := a.Stats(); st.BatchGranted != 3 || st.BatchFallbacks != 0 {
		t.Fatalf("stats %+v", st)
	}

	// b wants n[0] (shared: fine), a token of another shard, and n[2]
	// (held EX by a) with Try: fails, and gives back what it got.
	other := "bt/other"
	for i := 0; wire.Shard([]byte(other), 64) == wire.Shard([]byte(n[0]), 64); i++ {
		other = fmt.Sprintf("bt/other%d", i)
	}
	_, err = b.AcquireBatch(ctx, []clientlib.BatchRequest{{Name: n[0], Mode: wire.PR}, {Name: other, Mode: wire.EX},
		{Name: n[2], Mode: wire.EX}}, clientlib.Try())
	if !errors.Is(err, clientlib.ErrConflict) {
		t.Fatalf("batch against a held EX with Try: %v, want ErrConflict", err)
	}
	if _, err := a.Acquire(ctx, other, wire.EX, clientlib.Try()); err != nil {
		t.Fatalf("b kept %s after its batch failed: %v", other, err)
	}

	// Without Try, b's batch waits for a's release (the fallback) and
	// then holds everything.
	done := make(chan error, 1)
	go func() {
		_, err := b.AcquireBatch(ctx, []clientlib.BatchRequest{{Name: n[0], Mode: wire.PR}, {Name: n[2], Mode: wire.EX}})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	if err := toks[0].Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.BatchFallbacks == 0 {
		t.Fatalf("b's batch did not fall back: %+v", st)
	}
}

// TestAcquireBatchNoDeadlock: two clients batch overlapping sets of
// exclusive tokens over several shards, listed in opposite orders, many
// times; the fixed global order means neither waits for the other
// forever, and the holders of each round never overlap.
func TestAcquireBatchNoDeadlock(t *testing.T) {
	c := startCluster(t, nil, 1)
	names := []string{"dl/a", "dl/b", "dl/c", "dl/d", "dl/e", "dl/f"}
	var (
		mu   sync.Mutex
		held = map[string]int{}
	)
	run := func(id int, order []string) error {
		cl := dial(t, c, nil, id, clientlib.Config{OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
		for round := 0; round < 20; round++ {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			reqs := make([]clientlib.BatchRequest, len(order))
			for i, n := range order {
				reqs[i] = clientlib.BatchRequest{Name: n, Mode: wire.EX}
			}
			toks, err := cl.AcquireBatch(ctx, reqs)
			if err != nil {
				cancel()
				return fmt.Errorf("client %d round %d: %w", id, round, err)
			}
			mu.Lock()
			for _, n := range order {
				if held[n] != 0 {
					mu.Unlock()
					cancel()
					return fmt.Errorf("%s held by %d and %d", n, held[n], id)
				}
				held[n] = id
			}
			mu.Unlock()
			mu.Lock()
			for _, n := range order {
				delete(held, n)
			}
			mu.Unlock()
			for _, tk := range toks {
				if err := tk.Release(ctx); err != nil {
					cancel()
					return err
				}
			}
			cancel()
		}
		return nil
	}
	errs := make(chan error, 2)
	go func() { errs <- run(1, names[:5]) }()
	go func() { errs <- run(2, []string{names[5], names[4], names[3], names[2], names[1]}) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
