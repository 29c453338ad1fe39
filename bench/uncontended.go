package bench

import (
	"context"
	"fmt"
	"io"
	"runtime/pprof"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// Histogram slots of the pair workloads.
const (
	latAcquire = 0
	latRelease = 1
	latPair    = 2
)

// uncontended measures acquire+release pairs: each of the clients loops on
// its own token (EX, whole range), so nothing ever waits or is revoked.
// prof, if not nil, receives a CPU profile of the measurement.
func uncontended(ctx context.Context, cfg *Config, cs []*client, tag string, prof io.Writer) (loopResult, error) {
	names := make([]string, len(cs))
	for i := range names {
		names[i] = fmt.Sprintf("bench/u/%s/%d", tag, i)
	}
	if prof != nil {
		if err := pprof.StartCPUProfile(prof); err != nil {
			return loopResult{}, fmt.Errorf("bench: cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	return measure(ctx, cfg, len(cs), func(ctx context.Context, i int, r *rec) error {
		var tok *clientlib.Token
		return r.pair(func() (err error) {
			tok, err = cs[i].Acquire(ctx, names[i], wire.EX)
			return err
		}, func() error { return tok.Release(ctx) })
	})
}

// runUncontended measures the uncontended pairs with 1 and with
// cfg.Clients clients on the cluster tgt; system names it in the rows.
func runUncontended(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	var out []Result
	for _, n := range dedupe(1, cfg.Clients) {
		cfg.progress("%s uncontended: %d clients", system, n)
		cs, err := dialClients(ctx, tgt, n, revokeNotify)
		if err != nil {
			return out, err
		}
		var prof io.Writer
		if n == cfg.Clients && system == sysTokend {
			prof = cfg.CPUProfile
		}
		l, err := uncontended(ctx, cfg, cs, fmt.Sprint(n), prof)
		closeClients(cs)
		if err != nil {
			return out, err
		}
		res := Result{Workload: "uncontended", System: system, Clients: n, Unit: "pair",
			Note: "own token per client, EX, acquire+release"}.with(&l, "acquire", "release", "pair")
		res.metric("ops", 2*l.rate(), "requests/s")
		res.cpuMetrics(&l)
		out = append(out, res)
	}
	if system != sysTokend || cfg.Clients < 2 {
		return out, nil
	}
	// One Client shared by cfg.Clients goroutines: one socket with that many
	// requests in flight, as the batched echo has, so the client's combined
	// sends and batched reads show.
	cfg.progress("%s uncontended: 1 client, %d goroutines", system, cfg.Clients)
	c, err := dialClient(ctx, tgt, revokeNotify)
	if err != nil {
		return out, err
	}
	cs := make([]*client, cfg.Clients)
	for i := range cs {
		cs[i] = c
	}
	l, err := uncontended(ctx, cfg, cs, "shared", nil)
	st := c.Stats()
	closeClients(cs[:1])
	if err != nil {
		return out, err
	}
	res := Result{Workload: "uncontended", System: sysTokendG1, Clients: cfg.Clients, Unit: "pair",
		Note: "own token per goroutine, one Client for all, EX, acquire+release"}.with(&l, "acquire", "release", "pair")
	res.metric("ops", 2*l.rate(), "requests/s")
	res.cpuMetrics(&l)
	if st.Sent > 0 {
		// Bundles (wire/SPEC.md §22): how many of the client's datagrams
		// went in BUNDLEs, and how many UDP datagrams it sent per request.
		res.metric("bundled_sent", float64(st.BundledSent)/float64(st.Sent), "of the requests, in BUNDLEs (warm-up included)")
		res.metric("bundled_received", float64(st.BundledReceived), "replies taken from BUNDLE_REPLYs (warm-up included)")
		res.metric("udp_per_request", float64(st.Sent-st.BundledSent+st.BundlesSent)/float64(st.Sent), "UDP datagrams the client sent per request")
	}
	return append(out, res), nil
}
