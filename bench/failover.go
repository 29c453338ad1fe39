package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/freeport"
	"github.com/tokend/tokend/wire"
)

// runFailover kills -9 worker processes under load and measures how long
// their shards take to serve again. The cluster, as users run it: one
// "tokend server" process (etcd member and coordinator) and
// cfg.FailoverWorkers "tokend worker" processes with a worker TTL of
// cfg.FailoverTTL and a grace period of cfg.FailoverGrace, etcd over TLS. The load:
// cfg.Clients clientlib clients that hold cfg.FailoverHeld EX tokens in
// every shard for the whole run, and one cycler per shard (on client
// shard mod C) doing EX acquire+release pairs with cfg.FailoverPause
// between them, so that a shard whose worker died stalls only its own
// cycler.
//
// Then cfg.FailoverKills times, one worker after the other: SIGKILL the
// worker's process (by PID) and measure, from the kill,
//
//   - "held valid": until every token held in the worker's shards is
//     vouched for beyond the kill + worker TTL (ValidUntil), that is
//     reclaimed at the new owner (the dead worker's promises ended within
//     one TTL of the kill);
//   - "first grant": until the first new grant in one of its shards (a
//     fence of a newer epoch; grants wait for the grace period);
//   - "all serve": until every one of its shards has granted anew;
//   - on the other workers' shards, from the kill until all serve: the
//     acquire latencies, the slowest, and errors.
//
// After each kill but the last a replacement process (same id and port,
// a new incarnation) starts, the coordinator rebalances shards onto it
// (planned handoffs) and the bench waits until those serve before the
// next kill.
func runFailover(ctx context.Context, cfg *Config) (out []Result, ks []Kill, err error) {
	budget := 60*time.Second + time.Duration(cfg.FailoverKills)*(3*cfg.FailoverTTL+2*cfg.FailoverGrace+30*time.Second)
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	cfg.progress("failover: starting a tokend server and %d tokend worker processes (worker TTL %v, grace %v)",
		cfg.FailoverWorkers, cfg.FailoverTTL, cfg.FailoverGrace)
	fc, err := startFailoverCluster(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if cerr := fc.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	// Client i lists the workers from worker i mod n on, so that the
	// clients' sessions (opened at their first seed) are spread.
	cs := make([]*client, cfg.Clients)
	for i := range cs {
		seeds := fc.seeds()
		seeds = append(seeds[i%len(seeds):], seeds[:i%len(seeds)]...)
		c, err := dialClients(ctx, target{seeds: seeds, keyFile: filepath.Join(fc.certs, pki.DefaultClientKeyFile)}, 1, revokeNotify)
		if err != nil {
			closeClients(cs)
			return nil, nil, err
		}
		cs[i] = c[0]
	}
	defer closeClients(cs)
	l, err := startFailoverLoad(ctx, cfg, cs)
	if err != nil {
		return nil, nil, err
	}
	defer l.stop()
	cfg.progress("failover: %d clients hold %d tokens; %d cyclers running", len(cs), len(l.held), cfg.Shards)
	select { // warm up
	case <-time.After(cfg.Warmup + 500*time.Millisecond):
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}

	phase0, cpu0, busy0, kids0 := time.Now(), cpuTime(), machineBusy(), fc.childCPU()
	l.count(true)
	var kills []killStat
	for r := range cfg.FailoverKills {
		if ctx.Err() != nil {
			break
		}
		k, err := fc.killOne(ctx, cfg, l, r)
		kills = append(kills, k)
		if err != nil {
			return nil, exportKills(kills), err
		}
	}
	phase := time.Since(phase0)
	l.count(false)
	cpu, kids := cpuTime()-cpu0, fc.childCPU()-kids0
	others := max(machineBusy()-busy0-cpu-kids, 0)
	l.stop()
	if ctx.Err() != nil {
		return nil, exportKills(kills), fmt.Errorf("bench: failover: %w", ctx.Err())
	}
	return failoverResults(cfg, l, kills, phase, cpu+kids, others, busy0 > 0), exportKills(kills), nil
}

// killStat is what one kill measured.
type killStat struct {
	victim      string
	pid         int
	shards      int
	held        int           // held tokens in its shards (not lost before)
	mapped      time.Duration // kill -> its shards re-delegated to live workers
	reclaimed   time.Duration // kill -> every held token valid again; 0 if not within the bound
	first       time.Duration // kill -> first new grant in one of its shards; 0 if none
	all         time.Duration // kill -> every one of its shards granted anew; 0 if not within the bound
	unreclaimed int           // held tokens not valid again within the bound
	silent      int           // its shards that granted nothing new within the bound
	slowest     time.Duration // slowest acquire in another worker's shard, kill -> all
	slowAt      time.Duration // when it began, after the kill
	slowIn      uint32        // its shard
	lost        int           // held tokens lost (anywhere) during the round
	lostErr     string        // the error of one of them
	restart     time.Duration // replacement started -> the shards moved to it serve; 0 after the last kill
}

// Kill is one kill -9 of the failover workload. Durations are seconds from
// the kill; 0 means it did not happen within the bound (TTL + grace + 10 s).
type Kill struct {
	Worker       string  `json:"worker"`
	PID          int     `json:"pid"`
	Shards       int     `json:"shards"`
	Held         int     `json:"held_tokens"`
	Redelegated  float64 `json:"redelegated_s"` // its shards mapped to live workers
	HeldValid    float64 `json:"held_valid_s"`  // every held token of its shards valid again
	FirstGrant   float64 `json:"first_grant_s"` // first new grant in one of its shards
	AllServe     float64 `json:"all_serve_s"`   // every one of its shards granted anew
	NotReclaimed int     `json:"held_not_reclaimed"`
	NotServing   int     `json:"shards_not_serving"`
	Lost         int     `json:"held_lost"`                 // held tokens lost (Lost closed)
	LostError    string  `json:"held_lost_error,omitempty"` // one of their errors
	// The slowest acquire in another worker's shard, from the kill until
	// all serve: how long, when it began (after the kill), in which shard.
	SlowestOther      float64 `json:"slowest_other_acquire_s"`
	SlowestOtherBegan float64 `json:"slowest_other_began_s"`
	SlowestOtherShard uint32  `json:"slowest_other_shard"`
	// Replacement: from starting the new process until the shards moved to
	// it grant; 0 after the last kill (no replacement).
	Replacement float64 `json:"replacement_serving_s"`
}

func exportKills(ks []killStat) []Kill {
	var out []Kill
	for _, k := range ks {
		out = append(out, Kill{Worker: k.victim, PID: k.pid, Shards: k.shards, Held: k.held,
			Redelegated: k.mapped.Seconds(), HeldValid: k.reclaimed.Seconds(), FirstGrant: k.first.Seconds(), AllServe: k.all.Seconds(),
			NotReclaimed: k.unreclaimed, NotServing: k.silent, Lost: k.lost, LostError: k.lostErr,
			SlowestOther: k.slowest.Seconds(), SlowestOtherBegan: k.slowAt.Seconds(), SlowestOtherShard: k.slowIn,
			Replacement: k.restart.Seconds()})
	}
	return out
}

// failoverResults makes the two report rows of the failover workload.
func failoverResults(cfg *Config, l *failoverLoad, kills []killStat, phase, cpu, others time.Duration, haveCPU bool) []Result {
	first, reclaim, all := newHist(), newHist(), newHist()
	var mapped, restart []time.Duration
	var unreclaimed, silent int
	var slowest time.Duration
	for _, k := range kills {
		if k.first > 0 {
			first.record(k.first)
		}
		if k.reclaimed > 0 {
			reclaim.record(k.reclaimed)
		}
		if k.all > 0 {
			all.record(k.all)
		}
		if k.mapped > 0 {
			mapped = append(mapped, k.mapped)
		}
		if k.restart > 0 {
			restart = append(restart, k.restart)
		}
		unreclaimed += k.unreclaimed
		silent += k.silent
		slowest = max(slowest, k.slowest)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	variant := fmt.Sprintf("kill -9, %d workers", cfg.FailoverWorkers)
	aff := Result{Workload: "failover", Variant: variant + ": its shards", System: "tokend", Clients: cfg.Clients,
		WindowS: phase.Seconds(), Count: l.pairs, Unit: "pair", Rate: float64(l.pairs) / phase.Seconds(), Errors: l.errsIn,
		Note: "rate: every shard's pairs over the kill phase; latencies: one value per kill, from the kill"}
	if l.lastErrIn != nil {
		aff.LastError = l.lastErrIn.Error()
	}
	for _, nl := range []struct {
		of string
		h  *hist
	}{{"kill→first grant", first}, {"kill→held valid", reclaim}, {"kill→all serve", all}} {
		if s := nl.h.summary(); s != nil {
			aff.Latencies = append(aff.Latencies, NamedLatency{Of: nl.of, Latency: *s})
		}
	}
	aff.metric("kills", float64(len(kills)), "")
	aff.metric("worker_ttl", cfg.FailoverTTL.Seconds(), "s")
	aff.metric("grace", cfg.FailoverGrace.Seconds(), "s")
	if len(mapped) > 0 {
		aff.metric("kill→re-delegated_p50", percentile(mapped, 50).Seconds()*1e3, "ms")
	}
	if len(restart) > 0 {
		aff.metric("replacement→serving_p50", percentile(restart, 50).Seconds()*1e3, "ms")
	}
	aff.metric("held", float64(len(l.held)), "tokens")
	aff.metric("held_lost", float64(l.lost), "tokens")
	aff.metric("held_not_reclaimed", float64(unreclaimed), "tokens")
	aff.metric("shards_not_serving", float64(silent), "")
	if haveCPU && phase > 0 {
		aff.metric("others_cpu", others.Seconds()/phase.Seconds(), "cores")
		aff.metric("cpu", cpu.Seconds()/phase.Seconds(), "cores")
	}

	oth := Result{Workload: "failover", Variant: variant + ": other shards", System: "tokend", Clients: cfg.Clients,
		WindowS: l.window.Seconds(), Count: l.otherPairs, Unit: "pair", Errors: l.errsOut,
		Note: "the live workers' shards, from each kill until its shards all serve again"}
	if l.window > 0 {
		oth.Rate = float64(l.otherPairs) / l.window.Seconds()
	}
	if l.lastErrOut != nil {
		oth.LastError = l.lastErrOut.Error()
	}
	if s := l.otherLat.summary(); s != nil {
		oth.Latencies = []NamedLatency{{Of: "acquire", Latency: *s}}
	}
	oth.metric("slowest", slowest.Seconds()*1e3, "ms")
	if haveCPU && phase > 0 {
		oth.metric("others_cpu", others.Seconds()/phase.Seconds(), "cores")
	}
	return []Result{aff, oth}
}

// percentile returns the p-th percentile (0..100) of ds, nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	h := newHist()
	for _, d := range ds {
		h.record(d)
	}
	return time.Duration(h.h.ValueAtQuantile(p))
}

// failoverCluster is tokend as users run it on one machine: a "tokend
// server" process (etcd member and coordinator) and "tokend worker"
// processes, etcd over TLS with authentication and certificates that
// "tokend certs" made, all in a temporary directory removed by close.
type failoverCluster struct {
	bin    string
	dir    string
	certs  string
	etcd   string // the server's etcd client endpoint
	server *tokendProc
	cli    *clientv3.Client
	specs  []failoverWorker
	procs  []*tokendProc // the current process of each spec
	dead   []*tokendProc // killed ones (reaped)
}

// failoverWorker is one worker of the failover cluster: every process
// started for it has the same id and UDP address (a replacement is a new
// incarnation).
type failoverWorker struct {
	ID      string
	UDPAddr string
	args    []string
}

func startFailoverCluster(ctx context.Context, cfg *Config) (fc *failoverCluster, err error) {
	fc = &failoverCluster{}
	defer func() {
		if err != nil {
			fc.close()
		}
	}()
	if fc.bin, err = tokendBinary(ctx); err != nil {
		return nil, err
	}
	if fc.dir, err = os.MkdirTemp("", "tokend-bench-failover"); err != nil {
		return nil, err
	}
	client, peer := freeTCPPort(), freeTCPPort()
	if client == 0 || peer == 0 {
		return nil, errors.New("bench: no free TCP port for etcd")
	}
	fc.etcd = fmt.Sprintf("127.0.0.1:%d", client)
	fc.certs = filepath.Join(fc.dir, "certs")
	if err := makeCerts(ctx, fc.bin, fc.certs, "s1=127.0.0.1"); err != nil {
		return nil, err
	}
	fc.server, err = startTokendProc(ctx, fc.bin, "s1", []string{"server", "--name", "s1",
		"--data-dir", filepath.Join(fc.dir, "s1"), "--certs-dir", fc.certs,
		"--client-urls", "https://" + fc.etcd, "--peer-urls", fmt.Sprintf("https://127.0.0.1:%d", peer),
		"--http-addr", "127.0.0.1:0", "--log-level", "warn",
		"--shards", strconv.Itoa(cfg.Shards), "--session-ttl", cfg.FailoverSession.String(), "--grace", cfg.FailoverGrace.String()})
	if err != nil {
		return nil, err
	}
	if fc.cli, err = dialEtcd(fc.certs, fc.etcd); err != nil {
		return nil, err
	}
	for i := range cfg.FailoverWorkers {
		port, err := freeUDPPort()
		if err != nil {
			return nil, err
		}
		w := failoverWorker{ID: fmt.Sprintf("f%d", i+1), UDPAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
		w.args = []string{"worker", "--worker-id", w.ID, "--etcd-endpoints", fc.etcd, "--certs-dir", fc.certs,
			"--udp-addr", w.UDPAddr, "--http-addr", "127.0.0.1:0", "--worker-ttl", cfg.FailoverTTL.String(), "--log-level", "warn"}
		fc.specs = append(fc.specs, w)
	}
	fc.procs = make([]*tokendProc, len(fc.specs))
	errs := make([]error, len(fc.specs))
	var wg sync.WaitGroup
	for i, w := range fc.specs {
		wg.Go(func() { fc.procs[i], errs[i] = startTokendProc(ctx, fc.bin, w.ID, w.args) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if _, err := waitView(ctx, fc.cli, "every worker owns shards", 30*time.Second, func(v proc.View) bool { return v.Balanced(fc.ids()...) }); err != nil {
		return nil, err
	}
	return fc, nil
}

func freeUDPPort() (int, error) { return freeport.Port() }

func (fc *failoverCluster) ids() []string {
	var out []string
	for _, s := range fc.specs {
		out = append(out, s.ID)
	}
	return out
}

func (fc *failoverCluster) seeds() []string {
	var out []string
	for _, s := range fc.specs {
		out = append(out, s.UDPAddr)
	}
	return out
}

// childCPU is the CPU time the cluster's processes used so far: the
// reaped ones (getrusage) and the live ones (/proc).
func (fc *failoverCluster) childCPU() time.Duration {
	d := childrenCPU()
	for _, p := range append([]*tokendProc{fc.server}, fc.procs...) {
		if p != nil {
			d += cpuOf(p.Process)
		}
	}
	return d
}

// close kills every worker process still running (by PID), then stops
// the server (SIGINT, killed if it does not exit within 5 s) and removes
// the directory.
func (fc *failoverCluster) close() error {
	var errs []error
	for _, p := range fc.procs {
		if p != nil {
			errs = append(errs, p.Kill())
		}
	}
	if fc.cli != nil {
		fc.cli.Close()
	}
	if fc.server != nil {
		errs = append(errs, fc.server.Stop(syscall.SIGINT, 5*time.Second))
	}
	if fc.dir != "" {
		os.RemoveAll(fc.dir)
	}
	return errors.Join(errs...)
}

// killOne is round r: it kills worker r mod n, measures its failover, and
// (but after the last round) starts its replacement and waits until the
// shards moved to it serve.
func (fc *failoverCluster) killOne(ctx context.Context, cfg *Config, l *failoverLoad, r int) (killStat, error) {
	i := r % len(fc.procs)
	victim := fc.procs[i]
	v, err := fc.view(ctx)
	if err != nil {
		return killStat{}, err
	}
	affected := v.ShardsOf(victim.id)
	held := l.heldIn(affected)
	ks := killStat{victim: victim.id, pid: victim.PID(), shards: len(affected), held: len(held)}
	if len(affected) == 0 {
		return ks, fmt.Errorf("bench: failover: %s serves no shards", victim.id)
	}
	rd := l.open(affected, true)
	kill := rd.since
	if err := victim.Kill(); err != nil {
		return ks, err
	}
	fc.dead = append(fc.dead, victim)
	cfg.progress("failover: kill %d/%d: SIGKILL %s (pid %d), which served %d shards with %d held tokens",
		r+1, cfg.FailoverKills, ks.victim, ks.pid, ks.shards, ks.held)

	// Watch the three things at once, until all happened or the bound.
	deadline := kill.Add(cfg.FailoverTTL + cfg.FailoverGrace + 10*time.Second)
	validAfter := kill.Add(cfg.FailoverTTL)
	nextMap := time.Now()
	pending := held
	for {
		now := time.Now()
		if ks.reclaimed == 0 {
			pending = stillInvalid(pending, validAfter)
			if len(pending) == 0 {
				ks.reclaimed = now.Sub(kill)
			}
		}
		if ks.mapped == 0 && !now.Before(nextMap) {
			nextMap = now.Add(50 * time.Millisecond)
			if v, err := fc.view(ctx); err == nil && movedOff(v, affected, victim.id) {
				ks.mapped = time.Since(kill)
			}
		}
		first, served := l.served(rd)
		if ks.first == 0 && !first.IsZero() {
			ks.first = first.Sub(kill)
		}
		if served == len(affected) && ks.all == 0 {
			ks.all = l.lastFirst(rd).Sub(kill)
		}
		if ks.reclaimed > 0 && ks.all > 0 && ks.mapped > 0 {
			break
		}
		if now.After(deadline) {
			ks.unreclaimed = len(pending)
			ks.silent = len(affected) - served
			break
		}
		select {
		case <-ctx.Done():
			return ks, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	l.close(rd) // rd is ours again
	ks.slowest, ks.slowAt, ks.slowIn = rd.slowest, rd.slowAt, rd.slowIn
	if n, example := l.checkLost(); n > 0 {
		ks.lost, ks.lostErr = n, example.Error()
		cfg.progress("failover: kill %d: %d held tokens LOST, e.g. %v", r+1, n, example)
	}
	cfg.progress("failover: kill %d: re-delegated after %v, held tokens valid again after %v, first new grant after %v, all %d shards after %v; slowest acquire in another worker's shard %v (shard %d, begun %v after the kill)",
		r+1, ks.mapped.Round(time.Millisecond), ks.reclaimed.Round(time.Millisecond), ks.first.Round(time.Millisecond),
		ks.shards, ks.all.Round(time.Millisecond), ks.slowest.Round(time.Millisecond), ks.slowIn, ks.slowAt.Round(time.Millisecond))
	if r == cfg.FailoverKills-1 {
		return ks, nil
	}

	// The replacement: a new process with the same id and port.
	started := time.Now()
	p, err := startTokendProc(ctx, fc.bin, fc.specs[i].ID, fc.specs[i].args)
	if err != nil {
		return ks, err
	}
	fc.procs[i] = p
	v, err = waitView(ctx, fc.cli, "rebalanced onto the replacement", 20*time.Second, func(v proc.View) bool { return v.Balanced(fc.ids()...) })
	if err != nil {
		return ks, err
	}
	moved := map[uint32]uint32{}
	for s, e := range v.ShardsOf(victim.id) {
		moved[s] = e - 1 // a grant of the new owner's epoch
	}
	rd = l.open(moved, false)
	deadline = time.Now().Add(cfg.FailoverGrace + 10*time.Second)
	for {
		if _, served := l.served(rd); served == len(moved) {
			ks.restart = time.Since(started)
			break
		}
		if time.Now().After(deadline) {
			l.close(rd)
			return ks, fmt.Errorf("bench: failover: the shards moved to the replacement of %s do not all serve within %v", victim.id, time.Since(started))
		}
		select {
		case <-ctx.Done():
			return ks, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	l.close(rd)
	cfg.progress("failover: %s replaced (pid %d); %d shards moved to it serve after %v", victim.id, p.PID(), len(moved), ks.restart.Round(time.Millisecond))
	return ks, nil
}

// view reads the map and the registered workers, in at most 2 s.
func (fc *failoverCluster) view(ctx context.Context) (proc.View, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return proc.ReadView(ctx, fc.cli)
}

// waitView polls etcd until cond holds, or within passes.
func waitView(ctx context.Context, cli *clientv3.Client, what string, within time.Duration, cond func(proc.View) bool) (proc.View, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	v, err := proc.WaitView(ctx, cli, cond)
	if err != nil {
		return v, fmt.Errorf("bench: %s: not within %v: %w", what, within, err)
	}
	return v, nil
}

// movedOff reports whether every one of shards is owned by a live worker
// other than id.
func movedOff(v proc.View, shards map[uint32]uint32, id string) bool {
	for s := range shards {
		o, _, ok := v.Map.Lookup(int(s))
		if !ok || o.ID == id || !v.Live(o) {
			return false
		}
	}
	return true
}

// heldTok is a token held for the whole workload.
type heldTok struct {
	client int
	shard  uint32
	tok    *clientlib.Token
	lost   bool // seen lost (Lost closed); guarded by failoverLoad.mu
}

// stillInvalid returns the tokens of hs not vouched for beyond after.
func stillInvalid(hs []*heldTok, after time.Time) []*heldTok {
	var out []*heldTok
	for _, h := range hs {
		if !h.tok.ValidUntil().After(after) {
			out = append(out, h)
		}
	}
	return out
}

// failoverRound is one stretch being watched: the shards of a killed
// worker (or those moved to its replacement), with the epochs a new grant
// must exceed.
type failoverRound struct {
	since    time.Time
	affected map[uint32]uint32
	first    map[uint32]time.Time // affected shard -> its first grant at a newer epoch
	kill     bool                 // a kill: measure the other shards meanwhile
	slowest  time.Duration        // slowest acquire in another shard, begun since
	slowAt   time.Duration        // when it began, from since
	slowIn   uint32               // its shard
}

// failoverLoad is the clients' held tokens and the per-shard cyclers.
type failoverLoad struct {
	cfg    *Config
	held   []*heldTok
	cancel context.CancelFunc
	wg     sync.WaitGroup
	stopMu sync.Once

	mu         sync.Mutex // guards the fields below and the rounds'
	round      *failoverRound
	counting   bool          // inside the kill phase: count pairs and errors
	pairs      int64         // pairs completed in the kill phase, any shard
	otherPairs int64         // pairs completed in other shards during kill rounds
	window     time.Duration // total time of the kill rounds
	otherLat   *hist         // acquires in other shards during kill rounds
	errsIn     int64         // failed operations in a killed worker's shards during its round
	errsOut    int64         // failed operations anywhere else in the kill phase
	lastErrIn  error
	lastErrOut error
	lost       int // held tokens lost
}

// nameIn returns a token name starting with prefix that hashes to shard.
func nameIn(prefix string, shard, shards uint32) string {
	for i := 0; ; i++ {
		n := prefix + strconv.Itoa(i)
		if wire.Shard([]byte(n), shards) == shard {
			return n
		}
	}
}

// startFailoverLoad makes the clients hold their tokens and starts the
// cyclers.
func startFailoverLoad(ctx context.Context, cfg *Config, cs []*client) (*failoverLoad, error) {
	l := &failoverLoad{cfg: cfg, otherLat: newHist()}
	shards := uint32(cfg.Shards)
	var mu sync.Mutex // guards l.held while the clients acquire
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for ci, c := range cs {
		wg.Go(func() {
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			for s := range shards {
				for k := range cfg.FailoverHeld {
					if (int(s)+k)%len(cs) != ci {
						continue
					}
					tok, err := c.Acquire(actx, nameIn(fmt.Sprintf("bench/failover/held/%d/", k), s, shards), wire.EX)
					if err != nil {
						errs[ci] = fmt.Errorf("bench: failover: hold a token in shard %d: %w", s, err)
						return
					}
					mu.Lock()
					l.held = append(l.held, &heldTok{client: ci, shard: s, tok: tok})
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	ctx, l.cancel = context.WithCancel(ctx)
	for s := range shards {
		c := cs[int(s)%len(cs)]
		name := nameIn("bench/failover/cycle/", s, shards)
		rng := rand.New(rand.NewPCG(uint64(s), 7))
		l.wg.Go(func() { l.cycle(ctx, c, s, name, rng) })
	}
	return l, nil
}

// cycle does acquire+release pairs of name (in shard s) until ctx ends.
func (l *failoverLoad) cycle(ctx context.Context, c *client, s uint32, name string, rng *rand.Rand) {
	opTimeout := l.cfg.FailoverTTL + l.cfg.FailoverGrace + 10*time.Second
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	// Spread the cyclers' phases.
	if !pause(time.Duration(rng.Int64N(int64(l.cfg.FailoverPause) + 1))) {
		return
	}
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, opTimeout)
		began := time.Now()
		tok, err := c.Acquire(actx, name, wire.EX)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.failed(s, fmt.Errorf("acquire: %w", err))
			pause(50 * time.Millisecond)
			continue
		}
		l.granted(s, began, time.Since(began), tok.Fence())
		rctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		err = release(rctx, tok)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			l.failed(s, fmt.Errorf("release: %w", err))
		} else {
			l.paired(s)
		}
		// The pause varies by ±50 % so that the cyclers do not march in step.
		p := l.cfg.FailoverPause
		if !pause(p/2 + time.Duration(rng.Int64N(int64(p)+1))) {
			return
		}
	}
}

// granted records a grant in shard s of an acquire begun at began.
func (l *failoverLoad) granted(s uint32, began time.Time, took time.Duration, fence uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	rd := l.round
	if rd == nil {
		return
	}
	if e, ok := rd.affected[s]; ok {
		if _, seen := rd.first[s]; !seen && wire.FenceEpoch(fence) > e {
			rd.first[s] = began.Add(took)
		}
		return
	}
	if rd.kill && !began.Before(rd.since) {
		l.otherLat.record(took)
		if took > rd.slowest {
			rd.slowest, rd.slowAt, rd.slowIn = took, began.Sub(rd.since), s
		}
	}
}

// paired counts a completed pair in shard s.
func (l *failoverLoad) paired(s uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.counting {
		return
	}
	l.pairs++
	if rd := l.round; rd != nil && rd.kill {
		if _, ok := rd.affected[s]; !ok {
			l.otherPairs++
		}
	}
}

// failed counts a failed operation in shard s.
func (l *failoverLoad) failed(s uint32, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.counting {
		return
	}
	if rd := l.round; rd != nil && rd.kill {
		if _, ok := rd.affected[s]; ok {
			l.errsIn++
			l.lastErrIn = fmt.Errorf("shard %d: %w", s, err)
			return
		}
	}
	l.errsOut++
	l.lastErrOut = fmt.Errorf("shard %d: %w", s, err)
}

// count starts or ends the kill phase's counting.
func (l *failoverLoad) count(on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counting = on
}

// open starts watching affected (a kill if kill) from now and returns
// the round.
func (l *failoverLoad) open(affected map[uint32]uint32, kill bool) *failoverRound {
	rd := &failoverRound{since: time.Now(), affected: affected, first: map[uint32]time.Time{}, kill: kill}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.round = rd
	return rd
}

// close stops watching rd; its fields are the caller's to read after.
func (l *failoverLoad) close(rd *failoverRound) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.round == rd {
		l.round = nil
		if rd.kill {
			l.window += time.Since(rd.since)
		}
	}
}

// served returns the first new grant in rd's shards (zero if none yet)
// and how many of them have granted anew.
func (l *failoverLoad) served(rd *failoverRound) (time.Time, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, t := range rd.first {
		if first.IsZero() || t.Before(first) {
			first = t
		}
	}
	return first, len(rd.first)
}

// lastFirst returns the latest of rd's shards' first new grants.
func (l *failoverLoad) lastFirst(rd *failoverRound) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var last time.Time
	for _, t := range rd.first {
		if t.After(last) {
			last = t
		}
	}
	return last
}

// heldIn returns the held tokens in shards that are not lost.
func (l *failoverLoad) heldIn(shards map[uint32]uint32) []*heldTok {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*heldTok
	for _, h := range l.held {
		if _, ok := shards[h.shard]; ok && !h.lost {
			out = append(out, h)
		}
	}
	return out
}

// checkLost counts the held tokens lost since the last call and returns
// how many, and the error of one of them.
func (l *failoverLoad) checkLost() (n int, example error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.held {
		if h.lost {
			continue
		}
		select {
		case <-h.tok.Lost():
			h.lost = true
			l.lost++
			n++
			if example == nil {
				example = fmt.Errorf("%s (client %d, shard %d): %w", h.tok.Name(), h.client, h.shard, h.tok.Err())
			}
		default:
		}
	}
	return n, example
}

// stop ends the cyclers; safe to call twice. The clients release the held
// tokens when they close.
func (l *failoverLoad) stop() {
	l.stopMu.Do(func() {
		if l.cancel != nil {
			l.cancel()
		}
		l.wg.Wait()
	})
}
