package bench

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/wire"
)

func TestMain(m *testing.M) {
	EchoChild() // the echo workload re-executes this binary as echo servers
	etcdtest.VerifyTestMain(m)
}

// TestFailover runs a tiny failover workload: a tokend server and two
// tokend worker processes, one kill -9. The killed worker's held tokens
// must be valid again, its shards must grant again, and nothing may fail
// on the other worker's shards.
func TestFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tokend server and worker processes")
	}
	start := time.Now()
	cfg := Config{Quick: true, Clients: 2, Shards: 16, Warmup: 100 * time.Millisecond,
		FailoverWorkers: 2, FailoverKills: 1}.Defaults()
	cfg.Progress = func(msg string) { t.Logf("[%5.2fs] %s", time.Since(start).Seconds(), msg) }
	rs, kills, err := runFailover(context.Background(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(kills) != 1 || kills[0].AllServe <= 0 || kills[0].HeldValid <= 0 {
		t.Errorf("kills: %+v, want one that completed", kills)
	}
	if len(rs) != 2 {
		t.Fatalf("got %d rows, want 2: %+v", len(rs), rs)
	}
	aff, oth := &rs[0], &rs[1]
	for _, of := range []string{"kill→first grant", "kill→held valid", "kill→all serve"} {
		l := aff.lat(of)
		if l == nil || l.Count != 1 {
			t.Errorf("%s: %+v, want one value", of, l)
			continue
		}
		// Bounded by the workload's own deadline: TTL + grace + 10 s.
		if l.Max <= 0 || l.Max > float64((cfg.FailoverTTL+cfg.FailoverGrace+10*time.Second).Microseconds()) {
			t.Errorf("%s = %v µs", of, l.Max)
		}
	}
	for _, m := range []string{"held_lost", "held_not_reclaimed", "shards_not_serving"} {
		if v, ok := aff.extra(m); !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0", m, v, ok)
		}
	}
	if oth.Errors != 0 || aff.Errors != 0 {
		t.Errorf("errors: %d on the other worker's shards (last %q), %d on the killed one's (last %q)",
			oth.Errors, oth.LastError, aff.Errors, aff.LastError)
	}
	if oth.Count == 0 {
		t.Errorf("no pairs on the other worker's shards during the failover")
	}
	var tb strings.Builder
	rep := &Report{Machine: ThisMachine(), Params: cfg.Params(), Results: rs, Comparisons: compare(&cfg, rs), Kills: kills}
	if err := rep.PrintTable(&tb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tb.String(), "failover: kill -> first new grant") || !strings.Contains(tb.String(), "kill by kill") {
		t.Errorf("no failover comparison in the table:\n%s", tb.String())
	}
	t.Logf("\n%s", tb.String())
}

// BenchmarkAcquireRelease measures acquire+release pairs (EX, whole token,
// each client on its own token) through clientlib over loopback UDP
// against an in-process devcluster with one worker, with 1 and 16 clients.
// It reports pairs/s and the acquire latency's p50 and p99 in µs.
//
//	go test ./bench -run '^$' -bench AcquireRelease -benchtime 2s
func BenchmarkAcquireRelease(b *testing.B) {
	if testing.Short() {
		b.Skip("starts etcd and a worker")
	}
	ctx := context.Background()
	cfg := QuickConfig()
	cl, err := startTokend(ctx, &cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cl.Close() })
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			cs, err := dialClients(ctx, devTarget(cl), n, revokeNotify)
			if err != nil {
				b.Fatal(err)
			}
			defer closeClients(cs)
			hs := make([]*hist, n)
			for i := range hs {
				hs[i] = newHist()
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i, c := range cs {
				k := b.N / n
				if i < b.N%n {
					k++
				}
				name := fmt.Sprintf("bench/test/%d/%d", n, i)
				wg.Go(func() {
					octx, cancel := context.WithTimeout(ctx, time.Minute)
					defer cancel()
					for range k {
						t0 := time.Now()
						tok, err := c.Acquire(octx, name, wire.EX)
						if err != nil {
							errs[i] = err
							return
						}
						hs[i].record(time.Since(t0))
						if err := tok.Release(octx); err != nil {
							errs[i] = err
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			for _, h := range hs[1:] {
				hs[0].merge(h)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
			if s := hs[0].summary(); s != nil {
				b.ReportMetric(s.P50, "acquire-p50-µs")
				b.ReportMetric(s.P99, "acquire-p99-µs")
			}
		})
	}
}

// TestReportRendering checks that a report with every kind of row renders
// as a table, JSON and SVG, and that the comparisons find their rows.
func TestReportRendering(t *testing.T) {
	lat := func(p50 float64) []NamedLatency {
		return []NamedLatency{{Of: "acquire", Latency: Latency{Count: 10, P50: p50, P99: 2 * p50, P999: 3 * p50, Max: 4 * p50}}}
	}
	cfg := QuickConfig()
	rs := []Result{
		{Workload: "echo", System: "udp-echo", Clients: 1, Count: 1, Rate: 40000, Latencies: []NamedLatency{{Of: "round trip", Latency: Latency{P50: 20, P99: 40, P999: 60}}}},
		{Workload: "echo", System: "udp-echo", Clients: 16, Count: 1, Rate: 64000, Latencies: lat(100)},
		{Workload: "uncontended", System: sysTokendC, Clients: 16, Count: 1, Rate: 27000, Latencies: lat(300)},
		{Workload: "uncontended", System: sysRedis, Clients: 16, Count: 1, Rate: 12000, Latencies: lat(400)},
		{Workload: "contended", Variant: "retry every 1ms", System: sysRedis, Clients: 16, Count: 1, Rate: 900, Latencies: lat(9000)},
		{Workload: "uncontended", System: "tokend", Clients: 1, Count: 1, Rate: 10000, Latencies: lat(28)},
		{Workload: "uncontended", System: "tokend", Clients: 16, Count: 1, Rate: 30000, Latencies: lat(250)},
		{Workload: "uncontended", System: "etcd-3", Clients: 16, Count: 1, Rate: 500, Latencies: lat(9000)},
		{Workload: "contended", Variant: "release on revoke", System: "tokend", Clients: 16, Count: 1, Rate: 1500, Latencies: lat(3000)},
		{Workload: "uncontended", System: sysNoAuth, Clients: 1, Count: 1, Rate: 12500, Latencies: lat(25)},
		{Workload: "uncontended", System: sysNoAuth, Clients: 16, Count: 1, Rate: 33000, Latencies: lat(230)},
		{Workload: "contended", Variant: "release on revoke", System: sysNoAuth, Clients: 16, Count: 1, Rate: 1600, Latencies: lat(2900)},
		// Later rounds of the auth on / off comparison: its value is the
		// median of the rounds' ratios (0.9375, 0.95, 0.99), not round 1's.
		{Workload: "contended", Variant: "release on revoke", System: sysNoAuth, Clients: 16, Round: 2, Count: 1, Rate: 1600, Latencies: lat(2900)},
		{Workload: "contended", Variant: "release on revoke", System: "tokend", Clients: 16, Round: 2, Count: 1, Rate: 1520, Latencies: lat(3000)},
		{Workload: "contended", Variant: "release on revoke", System: "tokend", Clients: 16, Round: 3, Count: 1, Rate: 1584, Latencies: lat(3000)},
		{Workload: "contended", Variant: "release on revoke", System: sysNoAuth, Clients: 16, Round: 3, Count: 1, Rate: 1600, Latencies: lat(2900)},
		{Workload: "contended", System: "etcd-3", Clients: 16, Count: 1, Rate: 150, Latencies: lat(100000)},
		{Workload: "held", Variant: "1k held", System: "tokend", Clients: 16, Count: 1, Rate: 30000, Extra: []Metric{{"held", 1000, "tokens"}, {"heap_per_token", 900, "B/token"}}},
		{Workload: "held", Variant: "1M held", System: "tokend", Clients: 16, Count: 1, Rate: 27000, Extra: []Metric{{"held", 1e6, "tokens"}, {"heap_per_token", 170, "B/token"}}},
	}
	rep := &Report{Machine: ThisMachine(), Params: cfg.Params(), Results: rs, Comparisons: compare(&cfg, rs)}
	want := map[string]bool{ // comparison -> met
		"uncontended pairs/s, tokend / etcd-3 Mutex":            true,  // 60x
		"contended handoffs/s, tokend / etcd-3 Mutex":           false, // 10x < 50x
		"uncontended requests/s as % of UDP echo, 16 in flight": true,  // 94%
		"uncontended pairs/s, tokend / Redis, 16 clients":       false, // 2.5x < 3x
		"contended handoffs/s, tokend":                          false, // 1,500 < 25,000
		"uncontended pairs/s, C client / Go client, 16 clients": true,  // info only
		"acquire p50 / echo p50, 1 in flight":                   true,  // 1.4x
		"worker heap per held token at 1M":                      true,  // 170 B
		"uncontended pairs/s change from 1k held to largest":    true,  // -10%
		"uncontended requests/s as % of UDP echo, 1 in flight":  false, // info only
		"uncontended pairs/s, auth on / off, 1 client":          false, // 0.8x < 0.9x
		"uncontended pairs/s, auth on / off, 16 clients":        true,  // 0.91x
		"contended handoffs/s, auth on / off, 16 clients":       true,  // median 0.95x
	}
	got := map[string]*bool{}
	for _, c := range rep.Comparisons {
		got[c.Name] = c.Met
	}
	for name, met := range want {
		m, ok := got[name]
		switch {
		case !ok:
			t.Errorf("comparison %q missing; have %v", name, rep.Comparisons)
		case name == "uncontended requests/s as % of UDP echo, 1 in flight" || strings.Contains(name, "C client / Go client"):
			if m != nil {
				t.Errorf("%q should be for information", name)
			}
		case m == nil || *m != met:
			t.Errorf("%q: met = %v, want %v", name, m, met)
		}
	}
	var tb, js, svg strings.Builder
	if err := rep.PrintTable(&tb); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteSVG(&svg); err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Comparisons {
		if c.Name == "uncontended pairs/s, auth on / off, 1 client" && math.Abs(c.Value-0.8) > 1e-9 {
			t.Errorf("%s = %v, want 0.8 (10,000 / 12,500)", c.Name, c.Value)
		}
		if c.Name == "contended handoffs/s, auth on / off, 16 clients" &&
			(math.Abs(c.Value-0.95) > 1e-9 || !strings.Contains(c.Detail, "median of 3 rounds")) {
			t.Errorf("%s = %v (%s), want the median of 3 rounds, 0.95", c.Name, c.Value, c.Detail)
		}
	}
	for _, s := range []string{"etcd-3", "MISSED", "met", "side by side", "tokend, C client", "tokend no auth, Go client", "Redis", "release on revoke, round 3"} {
		if !strings.Contains(tb.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, tb.String())
		}
	}
	if !strings.Contains(svg.String(), "<svg") || !strings.Contains(svg.String(), "</svg>") {
		t.Errorf("not an SVG: %s", svg.String())
	}
}

// TestCacheMissCheck: a cached row survives a few late-keepalive misses
// and fails once more than 1 % of its pairs went to the worker.
func TestCacheMissCheck(t *testing.T) {
	for _, c := range []struct {
		misses, pairs int64
		fail          bool
	}{{0, 0, false}, {0, 1000, false}, {10, 1000, false}, {11, 1000, true}, {1, 0, true}, {-1, 10, false}} {
		if err := cacheMissCheck("cached", c.misses, c.pairs); (err != nil) != c.fail {
			t.Errorf("%d misses of %d pairs: %v, want fail %v", c.misses, c.pairs, err, c.fail)
		}
	}
}

// TestHeldWorkload runs a small held set: two sizes, two holders of up to
// 6,000 tokens each (more than a worker ends at once, so their closes at
// the end are ended a slice at a time), and the teardown that closes them.
func TestHeldWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and a worker")
	}
	start := time.Now()
	cfg := Config{Quick: true, Clients: 2, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond,
		Held: []int{1_000, 12_000}, Holders: 2}.Defaults()
	cfg.Progress = func(msg string) { t.Logf("[%5.2fs] %s", time.Since(start).Seconds(), msg) }
	rs, err := runHeld(context.Background(), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 {
		t.Fatalf("got %d rows, want 2: %+v", len(rs), rs)
	}
	for i, want := range cfg.Held {
		if v, ok := rs[i].extra("held"); !ok || v != float64(want) {
			t.Errorf("row %d: held %v, want %d", i, v, want)
		}
		if v, _ := rs[i].extra("refused"); v != 0 {
			t.Errorf("row %d: %v acquires refused", i, v)
		}
	}
}
