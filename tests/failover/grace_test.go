//go:build linux

package failover

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// graceMetrics sums a worker metric (with a label filter) over the given
// workers' /metrics.
func graceMetrics(ws []*workerProc, name, filter string) float64 {
	var sum float64
	for _, w := range ws {
		sum += metricSum(workerMetrics(loop(w.http)), name, filter)
	}
	return sum
}

// killOne kills the first worker under the load and returns the round and
// the workers left.
func killOne(t *testing.T, start time.Time, c *oneServer, l *load) (killRound, []*workerProc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	v, err := readView(ctx, c.cli)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	victim := c.workers[0]
	kr := killRound{victim: victim.id, affected: v.ShardsOf(victim.id)}
	kr.kill = time.Now()
	victim.p.Kill()
	logf(t, start, "SIGKILL %s, which served %d shards with %d held tokens", victim.id, len(kr.affected), len(l.heldIn(kr.affected)))
	waitView(t, c.cli, "the victim's shards re-delegated", 2*workerTTL+3*time.Second, func(v view) bool {
		for s := range kr.affected {
			o, _, ok := v.Map.Lookup(int(s))
			if !ok || o.ID == victim.id || !v.Live(o) {
				return false
			}
		}
		return true
	})
	return kr, c.workers[1:]
}

// TestEarlyGraceEnd kills -9 one of three workers while four Go clients,
// all live, hold tokens in every shard and cycle others (the load of
// TestWorkerKill). The cluster's grace period is 10 s, but every client
// reclaims what it held and tells the new owners DONE (SPEC §13, "Early end
// of grace"): the new owners end grace early for every recovered shard,
// with reason all_done (none at its deadline), held tokens stay valid with
// their fences, and every affected shard grants again.
func TestEarlyGraceEnd(t *testing.T) {
	skipShort(t)
	start := time.Now()
	const longGrace = 10 * time.Second
	c := startOneServer(t, testShards, 3, []string{"--session-ttl", sessionTTL.String(), "--grace", longGrace.String()}, workerFlags)
	// While the workers join, a handoff from a worker that is itself
	// still pulling the shard fails and falls back on a recovery with
	// TTL + grace: wait that out, so that the load starts on serving shards.
	for deadline := time.Now().Add(workerTTL + longGrace + 5*time.Second); graceMetrics(c.workers, "tokend_worker_grace_shards", "") > 0; {
		if time.Now().After(deadline) {
			t.Fatal("shards still in a grace period after the cluster started")
		}
		time.Sleep(50 * time.Millisecond)
	}
	l := startLoad(t, start, loadConfig{seeds: c.seeds(), keyFile: c.keyFile(), shards: testShards})
	time.Sleep(time.Second)
	// Counted from here: the kill's recoveries only.
	early0 := graceMetrics(c.workers[1:], "tokend_worker_grace_ended_early_total", `reason="all_done"`)
	late0 := graceMetrics(c.workers[1:], "tokend_worker_grace_duration_seconds_count", `end="deadline"`)
	kr, live := killOne(t, start, c, l)
	heldThere := l.heldIn(kr.affected)

	want := early0 + float64(len(kr.affected))
	deadline := kr.kill.Add(workerTTL + longGrace + 5*time.Second)
	var early float64
	for time.Now().Before(deadline) {
		if early = graceMetrics(live, "tokend_worker_grace_ended_early_total", `reason="all_done"`); early >= want {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if early != want {
		t.Fatalf("grace_ended_early_total{reason=all_done} = %v over the live workers, want %v (%v + the recovered shards)", early, want, early0)
	}
	if n := graceMetrics(live, "tokend_worker_grace_duration_seconds_count", `end="deadline"`); n != late0 {
		t.Errorf("%v grace periods ended at their deadline since the kill", n-late0)
	}
	logf(t, start, "grace ended early in all %d recovered shards", len(kr.affected))
	_, pending := waitReclaimed(heldThere, kr.kill.Add(workerTTL), 3*workerTTL)
	for _, h := range pending {
		t.Errorf("held token %s (client %d, shard %d) not valid again", h.name, h.client, h.shard)
	}
	for len(l.grantedIn(kr.kill, kr.affected)) < len(kr.affected) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.grantedIn(kr.kill, kr.affected); len(got) < len(kr.affected) {
		t.Errorf("only %d of the %d recovered shards granted anew", len(got), len(kr.affected))
	}
	if first, ok := l.firstGrant(kr.kill, kr.affected); ok {
		logf(t, start, "first new grant in a recovered shard %v after the kill", first.Sub(kr.kill).Round(time.Millisecond))
	}
	for _, h := range heldThere {
		if err := h.tok.Err(); err != nil {
			t.Errorf("held token %s lost: %v", h.name, err)
		}
	}
	l.stop()
	l.report(t)
	checkErrors(t, start, l, []killRound{kr})
}

// TestGraceSilentSession: as TestEarlyGraceEnd, with a grace period of
// 3 s and one more live session that never says DONE (its KEEPALIVEs with
// DONE are dropped on the way; it renews its session and holds a token in
// every shard). The new owners wait for it: every recovered shard keeps
// its full grace period, none ends early.
func TestGraceSilentSession(t *testing.T) {
	skipShort(t)
	start := time.Now()
	const g = 3 * time.Second
	c := startOneServer(t, testShards, 3, []string{"--session-ttl", sessionTTL.String(), "--grace", g.String()}, workerFlags)
	l := startLoad(t, start, loadConfig{seeds: c.seeds(), keyFile: c.keyFile(), shards: testShards})

	conn := newTapConn(t)
	conn.dropOut = func(b []byte) bool {
		return len(b) >= wire.HeaderLen && wire.Type(b[3]) == wire.TypeKeepalive && b[4]&wire.FlagDone != 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	silent, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.seeds(), KeyFile: c.keyFile(), PacketConn: conn})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	var toks []*clientlib.Token
	for s := range uint32(testShards) {
		tok, err := silent.Acquire(ctx, nameIn("silent", s, testShards), wire.EX)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	cancel()
	time.Sleep(time.Second)
	// Counted from here: the kill's recoveries only.
	early0 := graceMetrics(c.workers[1:], "tokend_worker_grace_ended_early_total", "")
	late0 := graceMetrics(c.workers[1:], "tokend_worker_grace_duration_seconds_count", `end="deadline"`)
	kr, live := killOne(t, start, c, l)

	deadline := kr.kill.Add(workerTTL + g + 10*time.Second)
	want := late0 + float64(len(kr.affected))
	for graceMetrics(live, "tokend_worker_grace_duration_seconds_count", `end="deadline"`) < want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := graceMetrics(live, "tokend_worker_grace_duration_seconds_count", `end="deadline"`); n != want {
		t.Fatalf("%v grace periods ended at their deadline since the kill, want %d (the recovered shards)", n-late0, len(kr.affected))
	}
	if n := graceMetrics(live, "tokend_worker_grace_ended_early_total", ""); n != early0 {
		t.Errorf("grace_ended_early_total went from %v to %v with a silent live session", early0, n)
	}
	for _, tok := range toks {
		if err := tok.Err(); err != nil {
			t.Errorf("the silent client lost %s: %v", tok.Name(), err)
		}
	}
	for len(l.grantedIn(kr.kill, kr.affected)) < len(kr.affected) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := l.grantedIn(kr.kill, kr.affected); len(got) < len(kr.affected) {
		t.Errorf("only %d of the %d recovered shards granted anew", len(got), len(kr.affected))
	}
	l.stop()
	checkErrors(t, start, l, []killRound{kr})
}
