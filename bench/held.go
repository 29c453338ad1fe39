package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// runHeld grows a held set through the sizes of cfg.Held on a cluster of
// its own (one worker). Raw sessions (holder.go; cfg.Holders, or more so
// that none holds more than holderNames, the worker's limit) acquire the
// tokens and keep them; at each size it reports
//
//   - how fast the held set was acquired (pipelined ACQUIREs, tokens/s),
//   - the uncontended pair rate of cfg.Clients clientlib clients with that
//     many tokens held (the table's rate: the median of heldRepeats
//     windows), and
//   - worker memory per held token: the live Go heap after a full GC minus
//     the same before the first token. The worker runs in this process, so
//     this is its heap growth, plus whatever else grew meanwhile (etcd's
//     heap, which is small and not per token). RSS is reported too but it
//     is process-wide and includes memory the runtime has not returned.
func runHeld(ctx context.Context, cfg *Config) (out []Result, err error) {
	cfg.progress("held set: starting a cluster")
	cl, err := startTokend(ctx, cfg, 1)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	cs, err := dialClients(ctx, devTarget(cl), cfg.Clients, revokeNotify)
	if err != nil {
		return nil, err
	}
	defer closeClients(cs)
	hs := make([]*holder, cfg.Holders, max(cfg.Holders, cfg.Held[len(cfg.Held)-1]/holderNames+1))
	defer func() {
		if cerr := closeHolders(hs); cerr != nil && err == nil {
			err = cerr
		}
	}()
	for i := range hs {
		if hs[i], err = dialHolder(ctx, devTarget(cl), fmt.Sprintf("bench/held/%d/", i)); err != nil {
			return nil, err
		}
	}
	// One short round first, so that first-use allocations (histograms,
	// client buffers) are in the baseline.
	warm := *cfg
	warm.Warmup, warm.Duration = 0, 200*time.Millisecond
	if _, err := uncontended(ctx, &warm, cs, "held", nil); err != nil {
		return nil, err
	}
	heap0, rss0 := heapBytes(), rssBytes()
	var held int64
	for _, size := range cfg.Held {
		add := int64(size) - held
		if add <= 0 {
			continue
		}
		// A session holds at most holderNames tokens: more sessions as
		// the set grows, cfg.Holders of them acquiring at a time.
		for nh := max(cfg.Holders, (size+holderNames-1)/holderNames); len(hs) < nh; {
			h, err := dialHolder(ctx, devTarget(cl), fmt.Sprintf("bench/held/%d/", len(hs)))
			if err != nil {
				return out, err
			}
			hs = append(hs, h)
		}
		cfg.progress("held set: acquiring %d more tokens (to %d, %d sessions)", add, size, len(hs))
		stopRenew := renewIdle(ctx, hs)
		t0 := time.Now()
		errs := make([]error, len(hs))
		sem := make(chan struct{}, cfg.Holders)
		var wg sync.WaitGroup
		for i, h := range hs {
			want := int64(size / len(hs))
			if i < size%len(hs) {
				want++
			}
			if want <= h.held {
				continue
			}
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				errs[i] = h.acquire(ctx, want-h.held)
			})
		}
		wg.Wait()
		acqTime := time.Since(t0)
		if err := errors.Join(append(errs, stopRenew())...); err != nil {
			return out, err
		}
		held = int64(size)
		heap, rss := heapBytes(), rssBytes()
		cfg.progress("held set: %d held, measuring", size)
		var prof io.Writer
		if size == cfg.Held[len(cfg.Held)-1] {
			prof = cfg.HeldProfile
		}
		// The median of heldRepeats windows: one window on a shared
		// machine moves by ±20 % with the neighbours' load.
		var ls []loopResult
		for k := range heldRepeats {
			stopRenew := renewIdle(ctx, hs)
			l, err := uncontended(ctx, cfg, cs, "held", prof)
			if rerr := stopRenew(); err == nil {
				err = rerr
			}
			if err != nil {
				return out, err
			}
			if k == 0 {
				prof = nil
			}
			ls = append(ls, l)
		}
		slices.SortFunc(ls, func(a, b loopResult) int { return cmp.Compare(a.rate(), b.rate()) })
		l := ls[len(ls)/2]
		res := Result{Workload: "held", Variant: fmt.Sprintf("%s held", count(int64(size))), System: sysInProcess,
			Clients: cfg.Clients, Unit: "pair",
			Note: "uncontended pairs while the set is held"}.with(&l, "acquire", "release", "pair")
		res.metric("held", float64(size), "tokens")
		res.metric("windows", float64(len(ls)), "")
		res.metric("slowest", ls[0].rate(), "pairs/s")
		res.metric("fastest", ls[len(ls)-1].rate(), "pairs/s")
		res.cpuMetrics(&l)
		res.metric("fill_rate", float64(add)/acqTime.Seconds(), "acquires/s")
		res.metric("heap_delta", float64(int64(heap)-int64(heap0)), "B")
		res.metric("heap_per_token", float64(int64(heap)-int64(heap0))/float64(size), "B/token")
		res.metric("rss_delta_process", float64(rss-rss0), "B")
		var refused int64
		for _, h := range hs {
			refused += h.errs
		}
		res.metric("refused", float64(refused), "")
		out = append(out, res)
	}
	return out, nil
}

// closeHolders closes the held sessions (the worker gives their tokens
// back), closeParallel at a time, each within closeTimeout: at 10M held
// there are a thousand of them, which one after the other, under one
// deadline, took minutes or ran out of time. It returns the first error and
// how many failed.
func closeHolders(hs []*holder) error {
	const (
		closeParallel = 16
		closeTimeout  = 10 * time.Second
	)
	errs := make([]error, len(hs))
	sem := make(chan struct{}, closeParallel)
	var wg sync.WaitGroup
	for i, h := range hs {
		if h == nil {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
			defer cancel()
			errs[i] = h.close(ctx)
		})
	}
	wg.Wait()
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			if failed == 0 {
				first = err
			}
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("bench: close held sessions: %d of %d failed, first: %w", failed, len(hs), first)
	}
	return nil
}

// renewIdle keeps the sessions of the holders that are not acquiring
// renewed (acquire renews its own) until the returned function is called;
// that function returns the first renewal error.
func renewIdle(ctx context.Context, hs []*holder) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			for _, h := range hs {
				if !h.mu.TryLock() {
					continue // acquiring
				}
				err := h.renewIfDue(ctx)
				h.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					done <- err
					return
				}
			}
			select {
			case <-ctx.Done():
				done <- nil
				return
			case <-t.C:
			}
		}
	}()
	return func() error {
		cancel()
		return <-done
	}
}

// heldRepeats is how many windows each held-set size is measured for; the
// median is reported.
const heldRepeats = 3

// count prints n with a k/M suffix when it is a round number.
func count(n int64) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1_000 && n%1_000 == 0:
		return fmt.Sprintf("%dk", n/1_000)
	}
	return fmt.Sprint(n)
}
