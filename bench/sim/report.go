package sim

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Report is what a run found.
type Report struct {
	Config        ConfigSummary `json:"config"`
	ClientKVBytes int           `json:"client_kv_bytes"` // a session key + value in etcd
	WorkerKVBytes int           `json:"worker_kv_bytes"` // a registration key + value
	Initial       MapCost       `json:"initial_map"`     // the first balanced map
	Phases        []*Phase      `json:"phases"`
}

// ConfigSummary is the run's sizes and design, for the report.
type ConfigSummary struct {
	Workers, Shards, Sessions int
	Tokens                    int64
	SessionTTLms, WorkerTTLms int64
	GraceMs, TickMs           int64
	Seed                      uint64
	Design                    Design
	Costs                     Costs
	SessionBytes              int64 // measured worker heap per known session (0: not measured)
}

func summary(c Config) ConfigSummary {
	return ConfigSummary{
		Workers: c.Workers, Shards: c.Shards, Sessions: c.Sessions, Tokens: c.Tokens,
		SessionTTLms: c.SessionTTL / Millisecond, WorkerTTLms: c.WorkerTTL / Millisecond,
		GraceMs: c.Grace / Millisecond, TickMs: c.Tick / Millisecond, Seed: c.Seed,
		Design: c.Design, Costs: c.Costs, SessionBytes: c.SessionBytes,
	}
}

// Rate is a quantity per virtual second over a phase.
type Rate struct {
	Avg  float64 `json:"avg"`
	Peak float64 `json:"peak"` // the largest one-second value
	Sum  float64 `json:"sum"`
}

// Recovery is one killed worker's failover (virtual times, ns).
type Recovery struct {
	Worker    string
	Killed    int64
	LeaseGone int64 // etcd's lessor found its lease expired
	Mapped    int64 // the map without it is applied by the workers
	Grants    int64 // its shards grant anew (after the grace period)
	HeldValid int64 // model: its held tokens reclaimed (clients notice within W/4)
	Shards    int   // shards it owned
	Reclaims  int64 // held tokens reclaimed at the new owners
	Sessions  int64 // sessions that reclaim (model: tokens spread uniformly)
}

// Drained is one worker of a rolling drain.
type Drained struct {
	Worker  string
	Started int64
	Mapped  int64 // the map moving its shards is applied
	Stopped int64 // handoffs done, it stopped
	Shards  int
	Moved   int
}

// Phase is one scenario step's results.
type Phase struct {
	Name                      string
	Start, End                int64
	Rates                     map[string]Rate
	Plans                     []int64 // wall-clock ns of each plan.Plan call (0 if not measured)
	MovesPerPlan              []int
	Handoffs                  int64
	Recoveries                int64
	MapVersionsN              int
	Map                       MapCost // the last map written in this phase
	MaxMapBytes               int     // largest map value written
	MapFetchDgrams            int     // datagrams a client fetches after one change (largest)
	RangeDocs                 int     // Planned: per-range documents rewritten by one change (largest)
	ToDead                    int     // shards a plan gave to a worker already dead (its lease not expired yet)
	Unowned                   int     // shards without a registered owner right after a plan (largest)
	UnownedAtEnd              int     // ... at the end of the phase
	Kills                     []*Recovery
	Drains                    []*Drained
	LiveAtEnd                 int   // sessions live at the end
	OpenP50, OpenP99, OpenMax int64 // wait from deciding to open until opened, ns
	Opened                    int
	MaxRenewQueue             int   // renewals waiting for etcd (largest)
	RenewLateMax              int64 // longest wait of a renewal for etcd, ns
	MaxOpenQueue              int
	MaxPendingRevokes         float64 // expired leases waiting for the lessor's revoke (largest)
	LeaderCores               float64 // model: etcd leader cores for lease renewals, peak second
	WatchCores                float64 // model: etcd cores delivering watch events, peak second
	Notes                     []string

	maxPendingRevokes float64
	renewLate         int64
	maxRenewQ         int
	maxOpenQ          int
	openWait          []int64
}

func (p *Phase) note(f string, a ...any) { p.Notes = append(p.Notes, fmt.Sprintf(f, a...)) }

func (p *Phase) summarise(s *Sim, series [][nKinds]float64) {
	p.Rates = map[string]Rate{}
	for k := range nKinds {
		var r Rate
		for _, sec := range series {
			r.Sum += sec[k]
			r.Peak = max(r.Peak, sec[k])
		}
		if len(series) > 0 {
			r.Avg = r.Sum / float64(len(series))
		}
		p.Rates[k.String()] = r
	}
	cpu := s.c.RenewOnceCPU
	if s.d.KeepAliveStream {
		cpu = s.c.RenewStreamCPU
	}
	p.LeaderCores = p.Rates[Renewals.String()].Peak * float64(cpu) / 1e9
	p.WatchCores = p.Rates[WatchEvents.String()].Peak * float64(s.c.WatchEventCPU) / 1e9
	p.Opened = len(p.openWait)
	p.OpenP50, p.OpenP99, p.OpenMax = Percentile(p.openWait, 50), Percentile(p.openWait, 99), Percentile(p.openWait, 100)
	p.openWait = nil
	p.MaxRenewQueue, p.RenewLateMax, p.MaxOpenQueue, p.MaxPendingRevokes = s.phase.maxRenewQ, s.phase.renewLate, s.phase.maxOpenQ, s.phase.maxPendingRevokes
	for _, st := range s.st {
		if st == sLive || st == sQueued || st == sRetry {
			p.LiveAtEnd++
		}
	}
	p.UnownedAtEnd = s.unowned()
}

// Rate returns the phase's rate of k.
func (p *Phase) Rate(k Kind) Rate { return p.Rates[k.String()] }

func si(x float64) string {
	switch a := max(x, -x); {
	case a >= 1e9:
		return fmt.Sprintf("%.2fG", x/1e9)
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", x/1e3)
	case a == float64(int64(a)):
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

func secs(ns int64) string { return fmt.Sprintf("%.2fs", float64(ns)/1e9) }

func ms(ns int64) string { return fmt.Sprintf("%gms", float64(ns)/1e6) }

// Table writes the report as a table: one column per phase. Each row
// says whether it is measured code ("real"), counted by the simulation
// from real encodings ("real enc."), or from the cost model ("model").
func (r *Report) Table(w io.Writer) {
	c := r.Config
	fmt.Fprintf(w, "tokend-sim: %d workers, %d shards, %d sessions, %d tokens; S=%dms W=%dms G=%dms; design %q; tick %dms, seed %d\n",
		c.Workers, c.Shards, c.Sessions, c.Tokens, c.SessionTTLms, c.WorkerTTLms, c.GraceMs, c.Design.Name, c.TickMs, c.Seed)
	fmt.Fprintf(w, "map (real enc.): %d runs, JSON %d B, full fetch %d MAP_REPLY datagrams (%d B); session key+value %d B, registration %d B\n\n",
		r.Initial.Runs, r.Initial.JSONBytes, r.Initial.Datagrams, r.Initial.FetchBytes, r.ClientKVBytes, r.WorkerKVBytes)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	row := func(name, src string, f func(p *Phase) string) {
		fmt.Fprintf(tw, "%s\t%s\t", name, src)
		for _, p := range r.Phases {
			fmt.Fprintf(tw, "%s\t", f(p))
		}
		fmt.Fprintln(tw)
	}
	row("phase", "", func(p *Phase) string { return p.Name })
	avgPeak := func(k Kind) func(p *Phase) string {
		return func(p *Phase) string { x := p.Rate(k); return si(x.Avg) + " / " + si(x.Peak) }
	}
	sum := func(k Kind) func(p *Phase) string {
		return func(p *Phase) string { return si(p.Rate(k).Sum) }
	}
	fmt.Fprintln(tw, "per second: avg / peak\t\t")
	for _, k := range []Kind{Grants, Puts, Deletes, Revokes, Txns, Renewals, WorkerRenewals, Reads, ReadBytes, WatchEvents, WatchBytes, MapBytes, MapDatagrams, KeepaliveDgrams, HolderDgrams, OpenDgrams} {
		row(k.String(), "sim", avgPeak(k))
	}
	fmt.Fprintln(tw, "totals\t\t")
	for _, k := range []Kind{Opens, Lost, Rehomes, MapVersions, ShardsMoved, Reclaims, HandoffBytes} {
		row(k.String(), "sim", sum(k))
	}
	fmt.Fprintln(tw, "map and planner\t\t")
	row("plans", "real", func(p *Phase) string { return fmt.Sprint(len(p.Plans)) })
	row("planner time max", "measured", func(p *Phase) string {
		var m int64
		for _, t := range p.Plans {
			m = max(m, t)
		}
		return fmt.Sprintf("%.1fms", float64(m)/1e6)
	})
	row("shards moved per plan (max)", "real", func(p *Phase) string {
		m := 0
		for _, x := range p.MovesPerPlan {
			m = max(m, x)
		}
		return fmt.Sprint(m)
	})
	row("handoffs / recoveries", "real", func(p *Phase) string { return fmt.Sprintf("%d / %d", p.Handoffs, p.Recoveries) })
	row("map value max", "real enc.", func(p *Phase) string { return si(float64(p.MaxMapBytes)) + "B" })
	row("datagrams per map fetch", "real enc.", func(p *Phase) string { return fmt.Sprint(p.MapFetchDgrams) })
	row("shards given to a dead worker", "real", func(p *Phase) string { return fmt.Sprint(p.ToDead) })
	row("shards unowned after a plan", "real", func(p *Phase) string { return fmt.Sprint(p.Unowned) })
	row("shards unowned at end", "real", func(p *Phase) string { return fmt.Sprint(p.UnownedAtEnd) })
	fmt.Fprintln(tw, "failover (model times)\t\t")
	kills := func(f func(k *Recovery) int64) func(p *Phase) string {
		return func(p *Phase) string {
			if len(p.Kills) == 0 {
				return "-"
			}
			var lo, hi int64 = 1 << 62, 0
			for _, k := range p.Kills {
				if k.Mapped == 0 {
					return "not re-mapped"
				}
				lo, hi = min(lo, f(k)), max(hi, f(k))
			}
			return secs(lo) + ".." + secs(hi)
		}
	}
	row("kill → lease gone", "model", kills(func(k *Recovery) int64 { return k.LeaseGone - k.Killed }))
	row("kill → map applied", "model+real", kills(func(k *Recovery) int64 { return k.Mapped - k.Killed }))
	row("kill → held valid", "model", kills(func(k *Recovery) int64 { return k.HeldValid - k.Killed }))
	row("kill → new grants", "model", kills(func(k *Recovery) int64 { return k.Grants - k.Killed }))
	row("reclaims per killed worker", "sim", func(p *Phase) string {
		if len(p.Kills) == 0 {
			return "-"
		}
		var n int64
		for _, k := range p.Kills {
			n += k.Reclaims
		}
		return si(float64(n) / float64(len(p.Kills)))
	})
	row("sessions reclaiming / RECLAIMs each", "sim", func(p *Phase) string {
		var n, r int64
		for _, k := range p.Kills {
			n += k.Sessions
			r += k.Reclaims
		}
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%s / %.1f", si(float64(n)/float64(len(p.Kills))), float64(r)/float64(n))
	})
	row("drain: start → stopped (max)", "model", func(p *Phase) string {
		if len(p.Drains) == 0 {
			return "-"
		}
		var m int64
		for _, d := range p.Drains {
			if d.Stopped == 0 {
				return "not done"
			}
			m = max(m, d.Stopped-d.Started)
		}
		return secs(m)
	})
	fmt.Fprintln(tw, "sessions\t\t")
	row("live at end", "sim", func(p *Phase) string { return si(float64(p.LiveAtEnd)) })
	row("opened", "sim", func(p *Phase) string { return si(float64(p.Opened)) })
	row("open wait p50 / p99 / max", "model", func(p *Phase) string {
		if p.Opened == 0 {
			return "-"
		}
		return secs(p.OpenP50) + " / " + secs(p.OpenP99) + " / " + secs(p.OpenMax)
	})
	row("renewal wait for etcd max", "model", func(p *Phase) string { return secs(p.RenewLateMax) })
	row("dead sessions awaiting their end max", "model", func(p *Phase) string { return si(p.MaxPendingRevokes) })
	fmt.Fprintln(tw, "cost model\t\t")
	row("etcd leader cores, renewals (peak)", "model", func(p *Phase) string { return fmt.Sprintf("%.1f", p.LeaderCores) })
	row("etcd cores, watch delivery (peak)", "model", func(p *Phase) string { return fmt.Sprintf("%.1f", p.WatchCores) })
	if c.SessionBytes > 0 {
		row("worker heap for sessions", "measured×sim", func(p *Phase) string {
			n := int64(c.Sessions)
			if c.Design.WatchNoPut {
				n = p.knownPerWorker(c)
			}
			return si(float64(n*c.SessionBytes)) + "B"
		})
	}
	row("worker heap for tokens", "measured×sim", func(p *Phase) string {
		return si(float64(c.Tokens/int64(max(c.Workers, 1))*c.Costs.TokenBytes)) + "B"
	})
	tw.Flush()
	for _, p := range r.Phases {
		for _, n := range p.Notes {
			fmt.Fprintf(w, "note (%s): %s\n", p.Name, n)
		}
	}
	fmt.Fprintln(w, "\nsources: real = the planner, map and wire code ran; measured = wall clock on this machine; real enc. = sizes of real encodings;")
	fmt.Fprintln(w, "sim = counted by the simulation; model = from the named constants of sim.Costs:", costs(c.Costs))
}

// knownPerWorker: sessions a worker knows when it learns them on first
// use (WatchNoPut): those holding a token in one of its shards.
func (p *Phase) knownPerWorker(c ConfigSummary) int64 {
	if c.Sessions == 0 || c.Workers == 0 {
		return 0
	}
	per := float64(c.Tokens) / float64(c.Sessions) // tokens per session
	share := 1 / float64(c.Workers)                // of the shards
	miss := 1.0
	for range int(per) {
		miss *= 1 - share
	}
	return int64(float64(c.Sessions) * (1 - miss))
}

func costs(c Costs) string {
	var b strings.Builder
	fmt.Fprintf(&b, "etcd %.0f writes/s, leader %.0f cores, renewal %dµs (KeepAliveOnce) / %dµs (stream), etcd call %s, pool %d, revoke %.0f/s every %s, watch %s, settle %s, handoff %s, token %dB",
		c.EtcdWritesPerSec, c.EtcdLeaderCores, c.RenewOnceCPU/1000, c.RenewStreamCPU/1000, ms(c.EtcdCallLatency), c.PoolSize,
		c.LeaseRevokeRate, ms(c.LessorCheck), ms(c.WatchLatency), ms(c.Settle), ms(c.HandoffTime), c.TokenBytes)
	return b.String()
}
