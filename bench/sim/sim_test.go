package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"testing"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/coordinator/plan"
	"github.com/tokend/tokend/wire"
)

// small is the short form: 20 workers, 1,024 shards, 20k sessions, 200k
// tokens, the daemon's TTLs, every kind of step.
func small(d Design) Config {
	c := Default()
	c.Workers, c.Shards, c.Sessions, c.Tokens = 20, 1024, 20000, 200000
	c.Design = d
	if d.EndRate > 0 {
		c.Design.EndRate = 5000 // binding: 20k ends take 4 s
	}
	c.Scenario = []Step{
		{Kind: Steady, For: 12 * Second},
		{Kind: Kill, N: 2, For: 15 * Second},
		{Kind: Join, N: 4, For: 5 * Second},
		{Kind: Drain, N: 3, For: 5 * Second},
		{Kind: Restart, For: 70 * Second},
	}
	return c
}

func run(t *testing.T, c Config) *Report {
	t.Helper()
	r, err := Run(c)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		var b bytes.Buffer
		r.Table(&b)
		t.Log("\n" + b.String())
	}
	return r
}

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol*want }

// TestConsistent checks the short scenario's outputs against what they
// must be, for both designs.
func TestConsistent(t *testing.T) {
	for _, d := range []Design{Current(), Planned()} {
		t.Run(d.Name, func(t *testing.T) {
			c := small(d)
			r := run(t, c)
			steady, kill, join, drain, restart := r.Phases[0], r.Phases[1], r.Phases[2], r.Phases[3], r.Phases[4]

			// Renewals: one per session every S/3 (today), one per group
			// every S/3 (Planned).
			want := float64(c.Sessions) * 3 / (float64(c.SessionTTL) / 1e9)
			if d.GroupSize > 1 {
				groups := c.Sessions/d.GroupSize + c.Workers
				if got := steady.Rate(Renewals).Avg; got > float64(groups)*3/10 || got == 0 {
					t.Errorf("group renewals %.1f/s, want (0, %d×3/S]", got, groups)
				}
				want = float64(c.Sessions) * 3 / 10 * 2 // KEEPALIVE and its reply
				if got := steady.Rate(KeepaliveDgrams).Avg; !near(got, want, 0.03) {
					t.Errorf("KEEPALIVE datagrams %.0f/s, want %.0f", got, want)
				}
			} else if got := steady.Rate(Renewals).Avg; !near(got, want, 0.03) {
				t.Errorf("renewals %.0f/s in steady state, want sessions×3/S = %.0f", got, want)
			}
			// Worker leases: every W/4.
			if got, want := steady.Rate(WorkerRenewals).Avg, float64(c.Workers)*4/5; !near(got, want, 0.01) {
				t.Errorf("worker renewals %.1f/s, want workers×4/W = %.1f", got, want)
			}

			for _, p := range r.Phases {
				if p.Unowned != 0 || p.UnownedAtEnd != 0 {
					t.Errorf("%s: %d shards without a registered owner after a plan, %d at the end", p.Name, p.Unowned, p.UnownedAtEnd)
				}
				if p.Rate(Lost).Sum != 0 {
					t.Errorf("%s: %.0f sessions lost", p.Name, p.Rate(Lost).Sum)
				}
			}

			// Kill: one map version per expired lease at most (the
			// leader's settle may join them), exactly the dead workers'
			// shards move, all as recoveries, and every held token in
			// them is reclaimed.
			if kill.MapVersionsN < 1 || kill.MapVersionsN > 2 {
				t.Errorf("kill 2: %d map versions", kill.MapVersionsN)
			}
			dead, reclaims := 0, int64(0)
			for _, k := range kill.Kills {
				dead += k.Shards
				reclaims += k.Reclaims
				if k.Mapped == 0 {
					t.Fatalf("killed %s never re-mapped", k.Worker)
				}
				detect := k.LeaseGone - k.Killed
				if detect < c.WorkerTTL*3/4 || detect > c.WorkerTTL+c.Costs.LessorCheck {
					t.Errorf("%s: lease gone %v after the kill, want in [3W/4, W + lessor check]", k.Worker, detect)
				}
				if k.Grants-k.Mapped != c.Grace {
					t.Errorf("%s: new grants %v after the map, want G", k.Worker, k.Grants-k.Mapped)
				}
			}
			// A shard given to the second victim before its lease ran out
			// is recovered twice.
			if moved := int(kill.Rate(ShardsMoved).Sum); moved != dead+kill.ToDead || kill.Recoveries != int64(moved) || kill.Handoffs != 0 {
				t.Errorf("kill: %d shards moved (%d recoveries, %d handoffs), the dead owned %d, %d given to the dead", moved, kill.Recoveries, kill.Handoffs, dead, kill.ToDead)
			}
			if got := int64(kill.Rate(Reclaims).Sum); got != reclaims || got == 0 {
				t.Errorf("kill: %d reclaims counted, %d in the dead workers' shards", got, reclaims)
			}
			// The sessions homed at the dead re-home; none is lost.
			if kill.Rate(Rehomes).Sum == 0 {
				t.Error("kill: no session re-homed")
			}

			// Join: 4 workers to 18 live: each new one takes its share by
			// handoffs, the lower bound of moves.
			if join.Recoveries != 0 || join.Handoffs == 0 || join.MapVersionsN != 1 {
				t.Errorf("join: %d handoffs, %d recoveries, %d versions", join.Handoffs, join.Recoveries, join.MapVersionsN)
			}
			if lo := int64(4 * (c.Shards / 22)); join.Handoffs < lo || join.Handoffs > lo+4 {
				t.Errorf("join: %d handoffs, want about %d", join.Handoffs, lo)
			}

			// Drain: each drained worker's shards go by handoff, one map
			// version each, and it stops.
			if len(drain.Drains) != 3 || drain.MapVersionsN != 3 || drain.Recoveries != 0 {
				t.Errorf("drain: %d drained, %d versions, %d recoveries", len(drain.Drains), drain.MapVersionsN, drain.Recoveries)
			}
			for _, dr := range drain.Drains {
				if dr.Stopped == 0 || dr.Moved != dr.Shards {
					t.Errorf("drain %s: stopped %v, moved %d of %d", dr.Worker, dr.Stopped, dr.Moved, dr.Shards)
				}
			}

			// Restart: every client opens again, and every session lives.
			if restart.Opened != c.Sessions || restart.LiveAtEnd != c.Sessions {
				t.Errorf("restart: %d opened, %d live at the end, want %d", restart.Opened, restart.LiveAtEnd, c.Sessions)
			}
			if d.ReconnectJitter > 0 && restart.Rate(Opens).Peak > 2*float64(c.Sessions)*float64(Second)/float64(d.ReconnectJitter) {
				t.Errorf("restart: %.0f opens in one second despite jitter", restart.Rate(Opens).Peak)
			}
			if e := c.Design.EndRate; e > 0 {
				if p := restart.Rate(Deletes).Peak; p > e*1.01 || restart.Rate(Deletes).Sum != float64(c.Sessions) {
					t.Errorf("restart: %.0f session ends in a second (rate %v), %.0f in all", p, e, restart.Rate(Deletes).Sum)
				}
			}
			// Holders: a KEEPALIVE and its reply every W/4 to each worker
			// holding one of their 10 tokens (at most 10 of 20 workers).
			on := 20 * (1 - math.Pow(19.0/20, 10))
			if got, want := steady.Rate(HolderDgrams).Avg, float64(c.Sessions)*on*2*4/5; !near(got, want, 0.01) {
				t.Errorf("holder KEEPALIVEs %.0f/s, want %.0f", got, want)
			}
			if d.GroupSize == 1 {
				// Today each abandoned lease is revoked by etcd's lessor, at
				// most LeaseRevokeRate per second.
				if p := restart.Rate(Revokes).Peak; p > c.Costs.LeaseRevokeRate*1.01 {
					t.Errorf("restart: %.0f revokes in a second, over the lessor's %v", p, c.Costs.LeaseRevokeRate)
				}
				if got := restart.Rate(Grants).Sum; got != float64(c.Sessions) {
					t.Errorf("restart: %.0f grants, want one per session", got)
				}
			}
		})
	}
}

// TestOverloadLosesSessions is the negative control: with the etcd leader
// too small for the renewals, sessions are lost and reopened, and the
// report says so.
func TestOverloadLosesSessions(t *testing.T) {
	c := small(Once())
	c.Costs = DefaultCosts()
	c.Costs.EtcdLeaderCores = 0.5 // 1,064 renewals/s by KeepAliveOnce: a round of 20k takes 19 s > S
	c.Scenario = []Step{{Kind: Steady, For: 30 * Second}}
	r := run(t, c)
	p := r.Phases[0]
	if p.Rate(Lost).Sum == 0 || p.RenewLateMax < c.SessionTTL/3 {
		t.Errorf("overloaded leader: %.0f sessions lost, renewals waited at most %v", p.Rate(Lost).Sum, p.RenewLateMax)
	}
	if got, max := p.Rate(Renewals).Peak, 1e9/float64(c.Costs.RenewOnceCPU)*1.01; got > max {
		t.Errorf("%.0f renewals in a second, over the capacity %.0f", got, max)
	}
}

// TestDeterministic: without a clock, the same seed gives the same report.
func TestDeterministic(t *testing.T) {
	c := small(Planned())
	c.Scenario = c.Scenario[:3]
	a, b := run(t, c), run(t, c)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Fatal("two runs with the same seed differ")
	}
	c.Seed++
	jc, _ := json.Marshal(run(t, c))
	if bytes.Equal(ja, jc) {
		t.Fatal("another seed gives the same report")
	}
}

// TestFetchRoundTrip: the MAP_REPLY pages the simulation counts decode
// (wire) and join (delegation.FromRuns) back into the map, after churn.
func TestFetchRoundTrip(t *testing.T) {
	var live []plan.Worker
	for i := range 300 {
		live = append(live, plan.Worker{ID: fmt.Sprintf("worker-%04d", i), Incarnation: uint64(1000 + i)})
	}
	m, _, err := plan.Plan(live, 65536, delegation.Map{})
	if err != nil {
		t.Fatal(err)
	}
	live = append(live[:7], live[9:]...) // two die
	live = append(live, plan.Worker{ID: "worker-new", Incarnation: 1})
	if m, _, err = plan.Plan(live, 65536, m); err != nil {
		t.Fatal(err)
	}
	addr := func(o delegation.Owner) string { return "10.0.0.1:" + fmt.Sprint(7000+o.Incarnation%1000) }
	var runs []delegation.Run
	n, size, err := fetch(m, delegation.Runs(m), addr, 5000, 0, uint32(m.Shards()), func(pkt []byte) {
		if len(pkt) > wire.MaxDatagram {
			t.Fatalf("datagram of %d bytes", len(pkt))
		}
		h, err := wire.ParseHeader(pkt)
		if err != nil {
			t.Fatal(err)
		}
		var r wire.MapReply
		if err := r.Decode(h, pkt); err != nil {
			t.Fatal(err)
		}
		for _, x := range r.Runs {
			runs = append(runs, delegation.Run{First: x.First, Count: x.Count, Owner: int(x.Worker), Epoch: x.Epoch})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := delegation.FromRuns(m.Version, m.Shards(), m.Workers, runs)
	if err != nil || !got.Equal(m) {
		t.Fatalf("the pages do not rebuild the map (err %v)", err)
	}
	c, err := mapCost(m, addr, 5000)
	if err != nil || c.Datagrams != n || c.FetchBytes != size || c.Runs != len(delegation.Runs(m)) {
		t.Fatalf("mapCost %+v, fetch %d datagrams %d bytes (err %v)", c, n, size, err)
	}
	// A lower bound: every run takes 14 bytes of a 1,136-byte body.
	if lo := c.Runs * 14 / (wire.MaxDatagram - wire.HeaderLen); n < lo {
		t.Fatalf("%d datagrams for %d runs", n, c.Runs)
	}
}
