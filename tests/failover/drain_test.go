//go:build linux

package failover

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster"
)

// evenly reports whether every shard is owned by a live incarnation, only
// the workers in ids own shards, and their counts differ by at most one.
func evenly(v view, ids ...string) bool {
	if !v.Balanced(ids...) {
		return false
	}
	owns := map[string]int{}
	for s := range v.Map.Shards() {
		o, _, _ := v.Map.Lookup(s)
		owns[o.ID]++
	}
	lo, hi := v.Map.Shards(), 0
	for id, n := range owns {
		found := false
		for _, want := range ids {
			found = found || id == want
		}
		if !found {
			return false
		}
		lo, hi = min(lo, n), max(hi, n)
	}
	return hi-lo <= 1
}

// metricSum sums the samples of a metric (with the label filter, e.g.
// `result="recovered"`, or "") in a /metrics text.
func metricSum(text, name, filter string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.e+-]+)$`)
	var sum float64
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		if filter != "" && !strings.Contains(m[1], filter) {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

// TestDrain moves shards between live worker processes by planned handoffs
// while four clients hold tokens in every shard and cycle EX and PR grants
// of others (checked by the fenced register of load_test.go):
//
//  1. a third worker joins: the leader moves a third of the shards to it;
//  2. an operator drains a worker (the /tokend/drain/<id> mark that
//     "tokenctl drain" writes): all its shards go to the other two;
//  3. the mark is withdrawn ("tokenctl undrain"): the worker gets shards back;
//  4. a worker gets SIGTERM: it drains itself, then exits.
//
// After every step the shards are balanced within one among the workers
// that should have them. Throughout: zero failed operations, no shard
// recovered with a grace period (every move is a handoff), no acquire
// slower than othersMax, every long-held token kept with its fence, fences
// only grow and no two conflicting holders are Valid at once.
func TestDrain(t *testing.T) {
	skipShort(t)
	start := time.Now()
	c := startOneServer(t, testShards, 2, clusterFlags, workerFlags)
	l := startLoad(t, start, loadConfig{seeds: c.seeds(), keyFile: c.keyFile(), shards: testShards})
	defer l.stop()
	time.Sleep(time.Second)

	step := func(what string, within time.Duration, ids ...string) time.Duration {
		t.Helper()
		t0 := time.Now()
		waitView(t, c.cli, what, within, func(v view) bool { return evenly(v, ids...) })
		// The new owners pull the state within milliseconds; give the
		// clients a moment to follow and reclaim before the next move.
		time.Sleep(500 * time.Millisecond)
		took := time.Since(t0)
		slow, shard := l.slowest(t0, time.Now(), nil)
		logf(t, start, "%s: balanced among %v; slowest acquire begun since %v (shard %d)", what, ids, slow.Round(time.Millisecond), shard)
		if slow > othersMax {
			t.Errorf("%s: an acquire in shard %d took %v; a planned move must not make anyone wait", what, shard, slow)
		}
		return took
	}

	// 1. A worker joins.
	w3 := newWorker(t, "w3", c.srv.certs, []string{c.srv.endpoint()}, workerFlags...)
	w3.start()
	c.workers = append(c.workers, w3)
	w3.p.WaitReady(loop(w3.http), 30*time.Second)
	step("w3 joined", 15*time.Second, "w1", "w2", "w3")

	// 2. tokenctl drain w1.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	doc, _ := json.Marshal(cluster.Drain{ID: "w1", Since: cluster.Now(time.Now()), By: "TestDrain"})
	if _, err := c.cli.Put(ctx, cluster.DrainKey("w1"), string(doc)); err != nil {
		t.Fatal(err)
	}
	step("w1 drained by an operator", 15*time.Second, "w2", "w3")

	// 3. tokenctl undrain w1.
	if _, err := c.cli.Delete(ctx, cluster.DrainKey("w1")); err != nil {
		t.Fatal(err)
	}
	step("w1 undrained", 15*time.Second, "w1", "w2", "w3")

	// 4. SIGTERM w2: it drains itself, then exits.
	w2 := c.workers[1]
	t0 := time.Now()
	w2.p.Stop(syscall.SIGTERM, 20*time.Second)
	logf(t, start, "w2 exited %v after SIGTERM", time.Since(t0).Round(time.Millisecond))
	if !strings.Contains(w2.p.Out.String(), "drained: every shard handed to other workers") {
		t.Errorf("w2 did not report a complete drain; its log:\n%s", w2.p.Out.String())
	}
	step("w2 stopped by SIGTERM", 15*time.Second, "w1", "w3")

	l.stop()
	l.report(t)
	if errs := l.allErrors(); len(errs) > 0 {
		t.Errorf("%d operation errors during planned moves, want 0:%s", len(errs), describeErrs(start, errs))
	}
	var handed, recovered float64
	for _, w := range []*workerProc{c.workers[0], c.workers[2]} {
		m := workerMetrics(loop(w.http))
		handed += metricSum(m, "tokend_worker_handoffs_in_total", `result="imported"`)
		recovered += metricSum(m, "tokend_worker_handoffs_in_total", `result="recovered"`) +
			metricSum(m, "tokend_worker_recoveries_total", "")
	}
	t.Logf("handoffs imported by w1 and w3: %v shards; recovered with a grace period: %v", handed, recovered)
	if recovered != 0 {
		t.Errorf("%v shards recovered with a grace period during planned moves, want 0", recovered)
	}
	if handed == 0 {
		t.Errorf("no handoff imported")
	}
}
