package bench

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Comparison is one ratio of the report, with the target it is held to.
type Comparison struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`             // "x", "%", "B/token"
	Target string  `json:"target,omitempty"` // e.g. ">= 50x"; "" = for information
	Met    *bool   `json:"met,omitempty"`
	Detail string  `json:"detail"`
}

// find returns the first result that matches (variant "" matches any).
func find(rs []Result, workload, system string, clients int, variant string) *Result {
	for i := range rs {
		r := &rs[i]
		if r.Workload == workload && r.System == system && (clients == 0 || r.Clients == clients) &&
			(variant == "" || r.Variant == variant) && r.Count > 0 && r.Round <= 1 {
			return r
		}
	}
	return nil
}

func (r *Result) extra(name string) (float64, bool) {
	for _, m := range r.Extra {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

// compare computes the ratios the issue asks for from what was measured.
func compare(cfg *Config, rs []Result) []Comparison {
	var out []Comparison
	check := func(c Comparison, ok bool, rows ...*Result) {
		if c.Target != "" {
			c.Met = &ok
		}
		var noisy []string
		for _, r := range rows {
			if o, _ := r.extra("others_cpu"); o >= disturbed {
				noisy = append(noisy, fmt.Sprintf("%s: %.2f", strings.Join(strings.Fields(r.Workload+" "+r.Variant+" "+r.System), " "), o))
			}
		}
		if len(noisy) > 0 {
			c.Detail += "; DISTURBED, other processes' cores during " + strings.Join(noisy, ", ")
		}
		out = append(out, c)
	}
	C := cfg.Clients
	tu := find(rs, "uncontended", "tokend", C, "")
	tc := find(rs, "contended", "tokend", C, "release on revoke")
	for _, members := range cfg.EtcdMembers {
		sys := fmt.Sprintf("etcd-%d", members)
		target := ""
		if members == 3 {
			target = ">= 50x"
		}
		if eu := find(rs, "uncontended", sys, C, ""); tu != nil && eu != nil {
			v := tu.Rate / eu.Rate
			check(Comparison{Name: fmt.Sprintf("uncontended pairs/s, tokend / %s Mutex", sys), Value: v, Unit: "x", Target: target,
				Detail: fmt.Sprintf("%s vs %s pairs/s at C=%d", num(tu.Rate), num(eu.Rate), C)}, v >= 50, tu, eu)
		}
		if ec := find(rs, "contended", sys, C, ""); tc != nil && ec != nil {
			v := tc.Rate / ec.Rate
			check(Comparison{Name: fmt.Sprintf("contended handoffs/s, tokend / %s Mutex", sys), Value: v, Unit: "x", Target: target,
				Detail: fmt.Sprintf("%s vs %s handoffs/s at C=%d", num(tc.Rate), num(ec.Rate), C)}, v >= 50, tc, ec)
		}
	}
	for _, n := range dedupe(C, 1) {
		ru, rr := find(rs, "uncontended", sysTokend, n, ""), find(rs, "uncontended", sysRedis, n, "")
		if ru != nil && rr != nil {
			target := ""
			if n == C {
				target = ">= 3x"
			}
			v := ru.Rate / rr.Rate
			check(Comparison{Name: fmt.Sprintf("uncontended pairs/s, tokend / Redis, %s", clientsN(n)), Value: v, Unit: "x", Target: target,
				Detail: fmt.Sprintf("%s vs %s pairs/s (Redis: SET NX PX + Lua compare-and-delete, a connection per client)", num(ru.Rate), num(rr.Rate))}, v >= 3, ru, rr)
		}
	}
	if r := find(rs, "cached", sysTokend, 1, ""); r != nil {
		d, _ := r.extra("datagrams")
		check(Comparison{Name: "cached re-acquire+release pairs/s, 1 client", Value: r.Rate, Unit: "/s", Target: ">= 5,000,000/s",
			Detail: fmt.Sprintf("Go client's token cache, one goroutine; %.0f datagrams sent meanwhile (keepalives), none for the pairs", d)},
			r.Rate >= 5e6, r)
	}
	if rc, cr := find(rs, "contended", sysTokend, C, "release on revoke"), find(rs, "contended", sysRedis, C, ""); rc != nil {
		d := fmt.Sprintf("%s handoffs/s on one token, %d clients", num(rc.Rate), C)
		if cr != nil {
			d += fmt.Sprintf("; Redis retrying every 1 ms: %s/s (%.1fx)", num(cr.Rate), rc.Rate/cr.Rate)
		}
		check(Comparison{Name: "contended handoffs/s, tokend", Value: rc.Rate, Unit: "/s", Target: ">= 25,000/s", Detail: d}, rc.Rate >= 25000, rc)
	}
	for _, n := range dedupe(C, 1) {
		g, c := find(rs, "uncontended", sysTokend, n, ""), find(rs, "uncontended", sysTokendC, n, "")
		if g != nil && c != nil {
			d := fmt.Sprintf("%s vs %s pairs/s, a handle per thread", num(c.Rate), num(g.Rate))
			if c1 := find(rs, "uncontended", sysTokendC1, n, ""); c1 != nil {
				d += fmt.Sprintf("; one shared handle: %s (%.2fx)", num(c1.Rate), c1.Rate/g.Rate)
			}
			check(Comparison{Name: fmt.Sprintf("uncontended pairs/s, C client / Go client, %s", clientsN(n)), Value: c.Rate / g.Rate, Unit: "x", Detail: d}, true, g, c)
		}
	}
	if g, c := find(rs, "contended", sysTokend, C, "release on revoke"), find(rs, "contended", sysTokendC, C, ""); g != nil && c != nil {
		check(Comparison{Name: fmt.Sprintf("contended handoffs/s, C client / Go client, %d clients", C), Value: c.Rate / g.Rate, Unit: "x",
			Detail: fmt.Sprintf("%s vs %s handoffs/s", num(c.Rate), num(g.Rate))}, true, g, c)
	}
	for _, n := range dedupe(C, 1) {
		target := ""
		if n == C {
			target = ">= 90%"
		}
		tun := find(rs, "uncontended", "tokend", n, "")
		echo := find(rs, "echo", "udp-echo", n, "")
		if tun != nil && echo != nil {
			v := 100 * 2 * tun.Rate / echo.Rate
			d := fmt.Sprintf("%s requests/s (2 per pair) vs %s echo round trips/s (batched echo server process)", num(2*tun.Rate), num(echo.Rate))
			if g1 := find(rs, "uncontended", sysTokendG1, n, ""); g1 != nil {
				d += fmt.Sprintf("; one Go client shared by %d goroutines: %s requests/s (%.1f%%)", n, num(2*g1.Rate), 100*2*g1.Rate/echo.Rate)
			}
			check(Comparison{Name: fmt.Sprintf("uncontended requests/s as %% of UDP echo, %d in flight", n), Value: v, Unit: "%", Target: target,
				Detail: d}, v >= 90, tun, echo)
		}
	}
	if t1, e1 := find(rs, "uncontended", "tokend", 1, ""), find(rs, "echo", "udp-echo", 1, ""); t1 != nil && e1 != nil {
		ta, ea := t1.lat("acquire"), e1.lat("round trip")
		if ta != nil && ea != nil {
			v := ta.P50 / ea.P50
			check(Comparison{Name: "acquire p50 / echo p50, 1 in flight", Value: v, Unit: "x", Target: "<= 1.5x",
				Detail: fmt.Sprintf("%.1f µs vs %.1f µs (p99 %.1f vs %.1f µs)", ta.P50, ea.P50, ta.P99, ea.P99)}, v <= 1.5, t1, e1)
		}
	}
	var held []*Result
	for i := range rs {
		if rs[i].Workload == "held" && rs[i].Count > 0 {
			held = append(held, &rs[i])
		}
	}
	if len(held) > 0 {
		at := held[len(held)-1]
		for _, h := range held {
			if n, _ := h.extra("held"); n == 1_000_000 {
				at = h
			}
		}
		n, _ := at.extra("held")
		b, _ := at.extra("heap_per_token")
		name := fmt.Sprintf("worker heap per held token at %s", count(int64(n)))
		check(Comparison{Name: name, Value: b, Unit: "B/token", Target: "<= 200 B at 1M",
			Detail: "live Go heap after GC minus baseline, divided by tokens held (worker in-process; RSS is process-wide)"}, b <= 200)
	}
	if len(held) > 1 {
		base := held[0]
		var worst float64
		var parts []string
		for _, h := range held {
			d := h.Rate/base.Rate - 1
			if math.Abs(d) > math.Abs(worst) {
				worst = d
			}
			parts = append(parts, fmt.Sprintf("%s: %s", h.Variant, num(h.Rate)))
		}
		last, _ := held[len(held)-1].extra("held")
		detail := "pairs/s with " + strings.Join(parts, ", ")
		if last < 10_000_000 {
			detail += fmt.Sprintf(" (largest measured %s; the target names 10M)", count(int64(last)))
		}
		check(Comparison{Name: "uncontended pairs/s change from 1k held to largest", Value: 100 * worst, Unit: "%",
			Target: "within ±20%", Detail: detail}, math.Abs(worst) <= 0.20, held...)
		// Per CPU-second the neighbours matter less (not at all only if
		// they leave the caches alone): for information.
		b0, _ := base.extra("per_cpu_s")
		var worstCPU float64
		parts = parts[:0]
		for _, h := range held {
			v, _ := h.extra("per_cpu_s")
			if d := v/b0 - 1; b0 > 0 && math.Abs(d) > math.Abs(worstCPU) {
				worstCPU = d
			}
			parts = append(parts, fmt.Sprintf("%s: %s", h.Variant, num(v)))
		}
		if b0 > 0 {
			check(Comparison{Name: "ops per CPU-second change from 1k held to largest", Value: 100 * worstCPU, Unit: "%",
				Detail: "process-wide ops/CPU-s with " + strings.Join(parts, ", ")}, true)
		}
	}
	authChecks(C, rs, check)
	failoverChecks(cfg, rs, check)
	return out
}

// authChecks sets tokend with authentication (as users run it) against
// the same process started with --insecure, Go client: the cost of
// authentication, which the security issue bounds at 10 % of throughput
// (ratio >= 0.9). With several rounds (Config.AuthRounds, run AB BA AB
// ...) the value is the median of the rounds' ratios, and the detail
// lists every round.
func authChecks(C int, rs []Result, check func(Comparison, bool, ...*Result)) {
	compare := func(name, workload, variant, unit string, n int) {
		on, off := find(rs, workload, sysTokend, n, variant), find(rs, workload, sysNoAuth, n, variant)
		if on == nil || off == nil {
			return
		}
		ratios, rounds := authRounds(rs, workload, variant, n)
		value := on.Rate / off.Rate
		d := fmt.Sprintf("%s vs %s %s", num(on.Rate), num(off.Rate), unit)
		if len(ratios) > 1 {
			value = median(ratios)
			d = fmt.Sprintf("median of %d rounds (AB BA ...): %s; round 1: %s", len(ratios), strings.Join(rounds, ", "), d)
		}
		if a, b := on.lat("acquire"), off.lat("acquire"); a != nil && b != nil {
			d += fmt.Sprintf("; acquire p50 %.1f vs %.1f µs (%.2fx), p99 %.1f vs %.1f µs", a.P50, b.P50, a.P50/b.P50, a.P99, b.P99)
		}
		check(Comparison{Name: fmt.Sprintf("%s, auth on / off, %s", name, clientsN(n)), Value: value, Unit: "x",
			Target: ">= 0.9x", Detail: d}, value >= 0.9, on, off)
	}
	for _, n := range dedupe(1, C) {
		compare("uncontended pairs/s", "uncontended", "", "pairs/s", n)
	}
	compare("contended handoffs/s", "contended", "release on revoke", "handoffs/s", C)
}

// authRounds pairs the authenticated and --insecure rows of each round of
// one workload and client count: their ratios, and "on/off=ratio" for
// each round in order.
func authRounds(rs []Result, workload, variant string, n int) (ratios []float64, rounds []string) {
	rate := func(system string, round int) (float64, bool) {
		for i := range rs {
			r := &rs[i]
			if r.Workload == workload && r.System == system && r.Clients == n && r.Variant == variant &&
				max(r.Round, 1) == round && r.Count > 0 {
				return r.Rate, true
			}
		}
		return 0, false
	}
	for round := 1; ; round++ {
		on, ok1 := rate(sysTokend, round)
		off, ok2 := rate(sysNoAuth, round)
		if !ok1 || !ok2 {
			if round > 64 || !ok1 && !ok2 {
				return ratios, rounds
			}
			continue // a failed window: skip the round
		}
		ratios = append(ratios, on/off)
		rounds = append(rounds, fmt.Sprintf("%s/%s=%.2f", num(on), num(off), on/off))
	}
}

// median of xs (not empty); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// clientsN is "1 client" or "n clients".
func clientsN(n int) string {
	if n == 1 {
		return "1 client"
	}
	return fmt.Sprintf("%d clients", n)
}

// failoverChecks holds the failover rows to the bounds that
// recovery.TestWorkerKill asserts for every kill (the issue names no
// target): held tokens valid again within 2 worker TTLs, the first new
// grant within TTL + grace + 1.5 s, and on the other workers' shards no
// errors and no acquire slower than 1 s. It adds its comparisons with check.
func failoverChecks(cfg *Config, rs []Result, check func(Comparison, bool, ...*Result)) {
	var aff, oth *Result
	for i := range rs {
		r := &rs[i]
		if r.Workload == "failover" && r.System == "tokend" {
			if strings.HasSuffix(r.Variant, "its shards") {
				aff = r
			} else if strings.HasSuffix(r.Variant, "other shards") {
				oth = r
			}
		}
	}
	if aff == nil {
		return
	}
	kills, _ := aff.extra("kills")
	ttl, grace := cfg.FailoverTTL, cfg.FailoverGrace
	if l := aff.lat("kill→held valid"); l != nil {
		bound := 2 * ttl
		lost, _ := aff.extra("held_lost")
		late, _ := aff.extra("held_not_reclaimed")
		check(Comparison{Name: "failover: kill -> held tokens valid again, p99", Value: l.P99 / 1e6, Unit: "s",
			Target: fmt.Sprintf("<= 2×TTL = %v, none lost", bound),
			Detail: fmt.Sprintf("p50 %.2f s, max %.2f s over the %d of %.0f kills where all came back (worker TTL %v; recovery test bound); %.0f held tokens lost, %.0f not valid again in time",
				l.P50/1e6, l.Max/1e6, l.Count, kills, ttl, lost, late)},
			l.Max <= float64(bound.Microseconds()) && lost == 0 && late == 0 && float64(l.Count) == kills, aff)
	}
	if l := aff.lat("kill→first grant"); l != nil {
		bound := ttl + grace + 1500*time.Millisecond
		check(Comparison{Name: "failover: kill -> first new grant in its shards, p99", Value: l.P99 / 1e6, Unit: "s",
			Target: fmt.Sprintf("<= TTL+grace+1.5s = %v", bound),
			Detail: fmt.Sprintf("p50 %.2f s, max %.2f s over %.0f kills (grace %v; recovery test bound)", l.P50/1e6, l.Max/1e6, kills, grace)},
			l.Max <= float64(bound.Microseconds()), aff)
	}
	if l := aff.lat("kill→all serve"); l != nil {
		check(Comparison{Name: "failover: kill -> all its shards serve again, p99", Value: l.P99 / 1e6, Unit: "s",
			Detail: fmt.Sprintf("p50 %.2f s, max %.2f s", l.P50/1e6, l.Max/1e6)}, true, aff)
	}
	if oth != nil {
		slow, _ := oth.extra("slowest")
		check(Comparison{Name: "failover: other workers' shards, slowest acquire", Value: slow, Unit: "ms",
			Target: "<= 1s, no errors",
			Detail: fmt.Sprintf("%d errors there, %d in the killed workers' shards; acquire p99 %s µs", oth.Errors, aff.Errors, us(latP99(oth)))},
			slow <= 1000 && oth.Errors == 0, oth)
	}
}

func latP99(r *Result) float64 {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[0].P99
}

// disturbed is how much CPU (cores) other processes may use during a
// window before the comparisons that use it say so.
const disturbed = 0.25

// num prints a rate with thousands separators (3 significant digits
// below 100).
func num(v float64) string {
	if v < 100 {
		return fmt.Sprintf("%.3g", v)
	}
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func us(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 1e6: // failovers: seconds read better
		return fmt.Sprintf("%.2f s", v/1e6)
	case v < 10:
		return fmt.Sprintf("%.1f", v)
	}
	return num(v)
}

func metricString(m Metric) string {
	switch m.Unit {
	case "B":
		return fmt.Sprintf("%s=%s", m.Name, bytesString(m.Value))
	case "B/token":
		return fmt.Sprintf("%s=%.0f B", m.Name, m.Value)
	case "cores":
		return fmt.Sprintf("%s=%.2f cores", m.Name, m.Value)
	case "":
		return fmt.Sprintf("%s=%s", m.Name, num(m.Value))
	}
	return fmt.Sprintf("%s=%s %s", m.Name, num(m.Value), m.Unit)
}

func bytesString(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1<<30:
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case a >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case a >= 1<<10:
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

// sideBySide are the columns of the summary table: a system, and the
// variant of its contended row.
var sideBySide = []struct {
	title, system, contended string
}{
	{"tokend, Go client", sysTokend, "release on revoke"},
	{"tokend no auth, Go client", sysNoAuth, "release on revoke"},
	{"tokend, Go shared client", sysTokendG1, ""},
	{"tokend, C client", sysTokendC, "release on revoke"},
	{"tokend, C shared handle", sysTokendC1, "release on revoke"},
	{"Redis", sysRedis, ""},
	{"tokend in-process", sysInProcess, "release on revoke"},
	{"etcd-3 Mutex", "etcd-3", ""},
	{"UDP echo, batched*", "udp-echo", ""},
	{"UDP echo, plain*", "udp-echo-plain", ""},
}

// printSideBySide writes the summary: uncontended and contended figures of
// every system measured, one column each (columns with nothing measured
// are left out).
func (rep *Report) printSideBySide(w io.Writer) error {
	C := 0 // the larger client count of the uncontended rows
	for _, r := range rep.Results {
		if r.Workload == "uncontended" {
			C = max(C, r.Clients)
		}
	}
	type cell func(rs []Result, system, contended string) string
	pairs := func(n int) cell {
		return func(rs []Result, system, _ string) string {
			wl := "uncontended"
			if strings.HasPrefix(system, "udp-echo") {
				wl = "echo"
			}
			if r := find(rs, wl, system, n, ""); r != nil {
				return num(r.Rate)
			}
			return ""
		}
	}
	p50 := func(n int) cell {
		return func(rs []Result, system, _ string) string {
			wl := "uncontended"
			if strings.HasPrefix(system, "udp-echo") {
				wl = "echo"
			}
			if r := find(rs, wl, system, n, ""); r != nil && len(r.Latencies) > 0 {
				return us(r.Latencies[0].P50)
			}
			return ""
		}
	}
	handoffs := func(rs []Result, system, contended string) string {
		if r := find(rs, "contended", system, 0, contended); r != nil {
			return num(r.Rate)
		}
		return ""
	}
	lines := []struct {
		name string
		f    cell
	}{
		{fmt.Sprintf("uncontended pairs/s, %d clients", C), pairs(C)},
		{"uncontended pairs/s, 1 client", pairs(1)},
		{fmt.Sprintf("acquire p50 µs, %d clients", C), p50(C)},
		{"acquire p50 µs, 1 client", p50(1)},
		{fmt.Sprintf("contended handoffs/s, %d clients", C), handoffs},
	}
	var cols []int
	for i, col := range sideBySide {
		for _, l := range lines {
			if l.f(rep.Results, col.system, col.contended) != "" {
				cols = append(cols, i)
				break
			}
		}
	}
	if len(cols) == 0 {
		return nil
	}
	fmt.Fprintln(w, "side by side (every server in its own process on loopback, except \"in-process\"):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "\t")
	for _, i := range cols {
		fmt.Fprintf(tw, "%s\t", sideBySide[i].title)
	}
	fmt.Fprintln(tw)
	for _, l := range lines {
		fmt.Fprintf(tw, "%s\t", l.name)
		for _, i := range cols {
			v := l.f(rep.Results, sideBySide[i].system, sideBySide[i].contended)
			if v == "" {
				v = "-"
			}
			fmt.Fprintf(tw, "%s\t", v)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, i := range cols {
		if strings.HasPrefix(sideBySide[i].system, "udp-echo") {
			fmt.Fprintln(w, "* echo: round trips/s with 1 or C datagrams in flight, and their p50; the limit of the network path")
			break
		}
	}
	fmt.Fprintln(w)
	return nil
}

// PrintTable writes the human-readable report: machine, parameters, the
// side-by-side table, the comparisons against their targets, failures.
func (rep *Report) PrintTable(w io.Writer) error {
	m := rep.Machine
	fmt.Fprintf(w, "tokend-bench  %s  (%.0f s)\n", rep.Started.Format("2006-01-02 15:04:05 MST"), rep.ElapsedS)
	fmt.Fprintf(w, "machine: %d cores, GOMAXPROCS %d, %s %s/%s, CPU %q, memory %s\n",
		m.Cores, m.GOMAXPROCS, m.GoVersion, m.OS, m.Arch, m.CPUModel, m.MemTotal)
	fmt.Fprintf(w, "sharing: load average %s at start, %s at end; other processes used %.2f cores on average during the run\n",
		rep.LoadStart, rep.LoadEnd, rep.OtherCPU)
	var ps []string
	for _, p := range rep.Params {
		ps = append(ps, p.Name+"="+p.Value)
	}
	fmt.Fprintf(w, "params: %s\n", strings.Join(ps, "; "))
	fmt.Fprintln(w, "latency: the first named op of each row, µs, from HDR histograms; rates are per second over the window")
	fmt.Fprintln(w)
	if err := rep.printSideBySide(w); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tvariant\tsystem\tC\trate/s\tunit\tlatency of\tp50\tp99\tp99.9\tmax\terrors\tother")
	for _, r := range rep.Results {
		var l NamedLatency
		if len(r.Latencies) > 0 {
			l = r.Latencies[0]
		}
		var other []string
		for _, nl := range r.Latencies[min(1, len(r.Latencies)):] {
			other = append(other, fmt.Sprintf("%s p50/p99=%s/%s", nl.Of, us(nl.P50), us(nl.P99)))
		}
		for _, x := range r.Extra {
			other = append(other, metricString(x))
		}
		if r.LastError != "" {
			other = append(other, fmt.Sprintf("last error: %q", r.LastError))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n",
			r.Workload, r.label(), r.System, r.Clients, num(r.Rate), r.Unit, l.Of,
			us(l.P50), us(l.P99), us(l.P999), us(l.Max), r.Errors, strings.Join(other, "; "))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "against the targets:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range rep.Comparisons {
		verdict := "info"
		if c.Met != nil {
			verdict = "MISSED"
			if *c.Met {
				verdict = "met"
			}
		}
		val := fmt.Sprintf("%.1f%s", c.Value, c.Unit)
		switch c.Unit {
		case "x":
			val = fmt.Sprintf("%.2fx", c.Value)
			if c.Value >= 10 {
				val = fmt.Sprintf("%.0fx", c.Value)
			}
		case "B/token":
			val = fmt.Sprintf("%.0f B/token", c.Value)
		case "s":
			val = fmt.Sprintf("%.2f s", c.Value)
		case "ms":
			val = fmt.Sprintf("%.1f ms", c.Value)
		case "/s":
			val = num(c.Value) + "/s"
		case "%":
			val = fmt.Sprintf("%+.1f%%", c.Value)
			if strings.Contains(c.Name, "% of") {
				val = fmt.Sprintf("%.1f%%", c.Value)
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Name, val, c.Target, verdict, c.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.Kills) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "failover, kill by kill (seconds from the kill -9; 0 = not within the bound):")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  #\tworker\tshards\theld\tre-delegated\theld valid\tfirst grant\tall serve\tslowest other acquire\treplacement serving\theld lost")
		for i, k := range rep.Kills {
			fmt.Fprintf(tw, "  %d\t%s\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.1f ms (shard %d, %.2f s after)\t%.2f\t%d\n",
				i+1, k.Worker, k.Shards, k.Held, k.Redelegated, k.HeldValid, k.FirstGrant, k.AllServe,
				1e3*k.SlowestOther, k.SlowestOtherShard, k.SlowestOtherBegan, k.Replacement, k.Lost)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, f := range rep.Skipped {
		fmt.Fprintf(w, "skipped %s\n", f)
	}
	for _, f := range rep.Failures {
		fmt.Fprintf(w, "FAILED %s\n", f)
	}
	fmt.Fprintf(w, "\ngoroutines: %d before, %d after cleanup\n", rep.GoroutinesBefore, rep.GoroutinesAfter)
	return nil
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// svg layout
const (
	svgWidth = 1180
	svgLabel = 360 // label column
	svgRight = 230 // value column
	svgRow   = 20
	svgTop   = 70
	svgFont  = `font-family="Helvetica, Arial, sans-serif"`
)

// systemColor gives each system one color throughout the chart.
func systemColor(s string) string {
	switch s {
	case sysTokend:
		return "#2b6cb0"
	case sysNoAuth:
		return "#63b3ed"
	case "etcd-1":
		return "#dd6b20"
	case "etcd-3":
		return "#c53030"
	case "udp-echo", "udp-echo-plain":
		return "#718096"
	case sysTokendC, sysTokendC1:
		return "#553c9a"
	case sysInProcess:
		return "#90cdf4"
	case sysRedis:
		return "#b83280"
	}
	return "#38a169"
}

// logAxis maps values onto [x0, x1] on a log10 scale covering whole
// decades around [lo, hi].
type logAxis struct {
	d0, d1 int // decades
	x0, x1 float64
}

func newLogAxis(lo, hi, x0, x1 float64) logAxis {
	lo, hi = max(lo, 1e-3), max(hi, 1e-3)
	d0, d1 := int(math.Floor(math.Log10(lo))), int(math.Ceil(math.Log10(hi)))
	if d1 <= d0 {
		d1 = d0 + 1
	}
	return logAxis{d0, d1, x0, x1}
}

func (a logAxis) x(v float64) float64 {
	v = max(v, math.Pow(10, float64(a.d0)))
	f := (math.Log10(v) - float64(a.d0)) / float64(a.d1-a.d0)
	return a.x0 + f*(a.x1-a.x0)
}

func decadeLabel(d int) string {
	v := math.Pow(10, float64(d))
	switch {
	case d >= 9:
		return fmt.Sprintf("%gG", v/1e9)
	case d >= 6:
		return fmt.Sprintf("%gM", v/1e6)
	case d >= 3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}

// grid draws the decade grid lines and labels of axis a for rows
// [y0, y1], labels above y0.
func (a logAxis) grid(b *strings.Builder, y0, y1 float64) {
	for d := a.d0; d <= a.d1; d++ {
		x := a.x(math.Pow(10, float64(d)))
		fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e2e8f0"/>`+"\n", x, y0, x, y1)
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#4a5568" text-anchor="middle" %s>%s</text>`+"\n",
			x, y0-4, svgFont, decadeLabel(d))
	}
}

func rowLabel(r *Result) string {
	s := r.Workload
	if v := r.label(); v != "" {
		s += " · " + v
	}
	return fmt.Sprintf("%s · %s · C=%d", s, r.System, r.Clients)
}

// WriteSVG draws two panels: throughput of every row (bars, log scale),
// and its latency percentiles p50, p99 and p99.9 (a line from p50 to p99.9
// with a mark at each, log scale). Plain SVG, no scripts.
func (rep *Report) WriteSVG(w io.Writer) error {
	rows := make([]*Result, 0, len(rep.Results))
	for i := range rep.Results {
		if rep.Results[i].Count > 0 && rep.Results[i].Round <= 1 {
			rows = append(rows, &rep.Results[i])
		}
	}
	var b strings.Builder
	plotX0, plotX1 := float64(svgLabel), float64(svgWidth-svgRight)
	panelH := float64(len(rows)*svgRow) + 40
	height := svgTop + 2*panelH + 80
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%.0f" viewBox="0 0 %d %.0f">`+"\n",
		svgWidth, height, svgWidth, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	m := rep.Machine
	fmt.Fprintf(&b, `<text x="20" y="28" font-size="18" font-weight="bold" %s>tokend-bench: throughput and latency</text>`+"\n", svgFont)
	fmt.Fprintf(&b, `<text x="20" y="48" font-size="12" fill="#4a5568" %s>%s</text>`+"\n", svgFont,
		html.EscapeString(fmt.Sprintf("%s · %d cores (GOMAXPROCS %d) · %s · %s %s/%s · loopback, servers in their own processes",
			rep.Started.Format("2006-01-02 15:04"), m.Cores, m.GOMAXPROCS, m.CPUModel, m.GoVersion, m.OS, m.Arch)))

	// Panel 1: throughput.
	y := float64(svgTop) + 20
	fmt.Fprintf(&b, `<text x="20" y="%.1f" font-size="14" font-weight="bold" %s>Throughput (operations/s, log scale; the unit is per row)</text>`+"\n", y-14, svgFont)
	lo, hi := math.Inf(1), 0.0
	for _, r := range rows {
		lo, hi = min(lo, r.Rate), max(hi, r.Rate)
	}
	ax := newLogAxis(lo, hi, plotX0, plotX1)
	ax.grid(&b, y+12, y+12+float64(len(rows)*svgRow))
	for i, r := range rows {
		ry := y + 14 + float64(i*svgRow)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" %s>%s</text>`+"\n",
			svgLabel-8, ry+11, svgFont, html.EscapeString(rowLabel(r)))
		x := ax.x(r.Rate)
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s" rx="2"/>`+"\n",
			plotX0, ry+2, max(x-plotX0, 1), svgRow-6, systemColor(r.System))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" %s>%s %s/s</text>`+"\n",
			x+5, ry+11, svgFont, num(r.Rate), html.EscapeString(r.Unit))
	}

	// Panel 2: latency percentiles.
	y += panelH + 30
	fmt.Fprintf(&b, `<text x="20" y="%.1f" font-size="14" font-weight="bold" %s>Latency of the row's first operation (µs, log scale): ● p50  ◆ p99  ▲ p99.9</text>`+"\n", y-14, svgFont)
	lo, hi = math.Inf(1), 0.0
	for _, r := range rows {
		if len(r.Latencies) > 0 {
			l := r.Latencies[0]
			lo, hi = min(lo, l.P50), max(hi, l.P999)
		}
	}
	if hi == 0 {
		lo, hi = 1, 10
	}
	ax = newLogAxis(lo, hi, plotX0, plotX1)
	ax.grid(&b, y+12, y+12+float64(len(rows)*svgRow))
	for i, r := range rows {
		ry := y + 14 + float64(i*svgRow)
		cy := ry + svgRow/2
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" text-anchor="end" %s>%s</text>`+"\n",
			svgLabel-8, ry+11, svgFont, html.EscapeString(rowLabel(r)))
		if len(r.Latencies) == 0 {
			continue
		}
		l := r.Latencies[0]
		c := systemColor(r.System)
		x50, x99, x999 := ax.x(l.P50), ax.x(l.P99), ax.x(l.P999)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", x50, cy, x999, cy, c)
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`+"\n", x50, cy, c)
		fmt.Fprintf(&b, `<path d="M%.1f %.1f l4 4 l-4 4 l-4 -4 z" fill="%s"/>`+"\n", x99, cy-4, c)
		fmt.Fprintf(&b, `<path d="M%.1f %.1f l4 8 h-8 z" fill="%s"/>`+"\n", x999, cy-4, c)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" %s>%s: %s / %s / %s</text>`+"\n",
			max(x999, x50)+8, ry+11, svgFont, html.EscapeString(l.Of), us(l.P50), us(l.P99), us(l.P999))
	}

	// Legend.
	ly := height - 30
	lx := 20.0
	for _, s := range []string{sysTokend, sysNoAuth, sysTokendC, sysInProcess, sysRedis, "etcd-1", "etcd-3", "udp-echo"} {
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="12" height="12" fill="%s"/>`+"\n", lx, ly-10, systemColor(s))
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="12" %s>%s</text>`+"\n", lx+16, ly, svgFont, s)
		lx += 125
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="11" fill="#4a5568" %s>etcd-N: concurrency.Mutex, embedded etcd, N members; udp-echo: echo server process</text>`+"\n", 20.0, ly+18, svgFont)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}
