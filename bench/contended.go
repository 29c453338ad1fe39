package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/wire"
)

// maxHoldWait bounds how long a contended holder waits for a revocation
// before it releases anyway (a revocation normally comes at once: every
// other client is queued).
const maxHoldWait = time.Second

// lateRevoke is when a revocation counts as late: the worker's first
// REVOKE retransmission comes after 20 ms (±25 %), so a revocation seen
// this late was most likely not handed over the first time.
const lateRevoke = 10 * time.Millisecond

// latRevoke is the histogram of the time from a grant to its revocation
// reaching the workload (OnRevoke), in the contended workload.
const latRevoke = 2

// runContended measures handoffs of one token among cfg.Clients clients.
// Each client loops: acquire EX (waiting in the token's FIFO queue), keep
// the token until the worker revokes it for the next waiter (OnRevoke),
// optionally hold it a little longer ("flush"), release. Every grant is a
// handoff: revoke -> release -> grant. The acquire latency is the time in
// the queue, C-1 handoffs on average. system names the rows.
func runContended(ctx context.Context, cfg *Config, tgt target, system string) ([]Result, error) {
	var out []Result
	for _, hold := range dedupeD(0, cfg.ContendedHold) {
		variant := "release on revoke"
		if hold > 0 {
			variant = fmt.Sprintf("hold %v after revoke", hold)
		}
		cfg.progress("%s contended: %d clients, %s", system, cfg.Clients, variant)
		cs, err := dialClients(ctx, tgt, cfg.Clients, revokeNotify)
		if err != nil {
			return out, err
		}
		name := fmt.Sprintf("bench/c/%v", hold)
		timers := make([]*time.Timer, len(cs))
		for i := range timers {
			timers[i] = time.NewTimer(time.Hour)
			timers[i].Stop()
		}
		profiling := false
		var clientProf *os.File
		if hold == 0 && cfg.ServerProfileDir != "" && tgt.pprof != "" {
			f, err := os.Create(filepath.Join(cfg.ServerProfileDir, "contended-"+fileSafe(system)+"-clients.pprof"))
			if err != nil {
				closeClients(cs)
				return out, fmt.Errorf("bench: cpu profile: %w", err)
			}
			clientProf = f
			defer f.Close()
		}
		if w := profileTo(cfg.ContendedProfile, clientProf, system); hold == 0 && w != nil {
			if err := pprof.StartCPUProfile(w); err != nil {
				closeClients(cs)
				return out, fmt.Errorf("bench: cpu profile: %w", err)
			}
			profiling = true
		}
		var serverProf chan error
		if hold == 0 && cfg.ServerProfileDir != "" && tgt.pprof != "" {
			serverProf = make(chan error, 1)
			go func() {
				serverProf <- fetchProfile(ctx, tgt.pprof, cfg.Warmup+cfg.Duration,
					filepath.Join(cfg.ServerProfileDir, "contended-"+fileSafe(system)+".pprof"))
			}()
		}
		// Every handoff, warm-up included, against what the clients sent
		// meanwhile: the datagrams a handoff costs the clients.
		var handoffs atomic.Int64
		sent0, udp0 := clientsSent(cs)
		l, err := measure(ctx, cfg, len(cs), func(ctx context.Context, i int, r *rec) error {
			c := cs[i]
			t0 := time.Now()
			tok, err := c.Acquire(ctx, name, wire.EX)
			if err != nil {
				return err
			}
			tGrant := time.Now()
			r.record(latAcquire, tGrant.Sub(t0))
			if c.waitRevoked(ctx, tok, r, timers[i], maxHoldWait) {
				d := time.Since(tGrant)
				r.record(latRevoke, d)
				r.event()
				if d >= lateRevoke {
					r.tallyAux()
				}
			}
			if hold > 0 {
				time.Sleep(hold)
			}
			t1 := time.Now()
			if err := release(ctx, tok); err != nil {
				return err
			}
			r.record(latRelease, time.Since(t1))
			handoffs.Add(1)
			return nil
		})
		sent, udp := clientsSent(cs)
		sent, udp = sent-sent0, udp-udp0
		if profiling {
			pprof.StopCPUProfile()
		}
		if serverProf != nil {
			if perr := <-serverProf; perr != nil {
				cfg.progress("%s contended: server profile: %v", system, perr)
			}
		}
		closeClients(cs)
		if err != nil {
			return out, err
		}
		res := Result{Workload: "contended", Variant: variant, System: system, Clients: cfg.Clients, Unit: "handoff",
			Note: "one token, EX, hold until revoked"}.with(&l, "acquire", "release", "grant→revoke seen")
		res.metric("revoked", 100*float64(l.events)/float64(max(l.ops, 1)), "% of grants")
		res.metric("revoke_late", 100*float64(l.aux)/float64(max(l.ops, 1)), "% of grants (seen >= 10ms after the grant)")
		if l.ops > 0 {
			res.metric("handoff", 1e6/l.rate(), "µs")
		}
		if n := handoffs.Load(); n > 0 {
			res.metric("client_datagrams", float64(sent)/float64(n), "per handoff, sent by the clients (warm-up and window, keepalives included)")
			res.metric("client_udp", float64(udp)/float64(n), "UDP datagrams per handoff, sent by the clients: the acknowledgements ride in the RELEASE's BUNDLE")
		}
		res.cpuMetrics(&l)
		out = append(out, res)
	}
	return out, nil
}

func dedupeD(ds ...time.Duration) []time.Duration {
	var out []time.Duration
	seen := map[time.Duration]bool{}
	for _, d := range ds {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// fetchProfile saves a CPU profile of d (whole seconds, at least 1) from
// the tokend process whose --pprof handlers listen at hostport.
func fetchProfile(ctx context.Context, hostport string, d time.Duration, path string) error {
	secs := max(int((d+time.Second-1)/time.Second), 1)
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", hostport, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// profileTo picks where the bench process's CPU profile of a contended
// window goes: the per-system file of Config.ServerProfileDir, else
// Config.ContendedProfile for the authenticated tokend process.
func profileTo(contended io.Writer, perSystem *os.File, system string) io.Writer {
	if perSystem != nil {
		return perSystem
	}
	if contended != nil && system == sysTokend {
		return contended
	}
	return nil
}

// fileSafe turns a system's label ("tokend (no auth)") into a file name part.
func fileSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, s)
}

// clientsSent is how many datagrams the clients cs have sent, and in how
// many UDP datagrams (those in a BUNDLE share one).
func clientsSent(cs []*client) (sent, udp uint64) {
	for _, c := range cs {
		st := c.Stats()
		sent += st.Sent
		udp += st.Sent - st.BundledSent + st.BundlesSent
	}
	return sent, udp
}
