package sim

import (
	"container/heap"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/coordinator/plan"
)

// Kind is a counted quantity; the report gives each per second.
type Kind uint8

const (
	Grants          Kind = iota // etcd lease grants
	Puts                        // etcd puts (session keys, registrations, drain marks)
	Deletes                     // keys deleted (lease revoked or expired, explicit deletes)
	Revokes                     // lease revokes (expired leases, clean stops, closes)
	Txns                        // txns (map writes, registrations, adoptions)
	Renewals                    // lease renewals of sessions (or of session groups)
	WorkerRenewals              // lease renewals of workers (every W/4)
	Reads                       // linearizable reads and range reads
	ReadBytes                   // their bytes
	WatchEvents                 // events delivered: events × watchers
	WatchBytes                  // their bytes
	MapVersions                 // map versions written
	MapBytes                    // bytes of map values written
	MapDatagrams                // MAP_REPLY datagrams clients fetch after map changes
	KeepaliveDgrams             // client KEEPALIVE RENEW datagrams and replies
	HolderDgrams                // token holders' KEEPALIVEs (every W/4 to each worker they hold grants on) and replies
	Opens                       // sessions opened
	OpenDgrams                  // SESSION_OPEN datagrams incl. retransmissions
	Lost                        // sessions lost (lease expired while the client lived)
	Rehomes                     // sessions renewed at another worker than before
	Reclaims                    // RECLAIMs of held tokens in moved shards
	ShardsMoved                 // shards moved by plans
	HandoffBytes                // bytes of planned handoffs
	nKinds
)

var kindNames = [nKinds]string{
	"etcd lease grants", "etcd puts", "etcd key deletes", "etcd lease revokes", "etcd txns",
	"etcd session lease renewals", "etcd worker lease renewals", "etcd reads", "etcd read bytes",
	"watch events delivered", "watch bytes delivered", "map versions", "map bytes written",
	"MAP_REPLY datagrams", "KEEPALIVE RENEW datagrams", "holder KEEPALIVE datagrams", "sessions opened", "SESSION_OPEN datagrams",
	"sessions lost", "sessions re-homed", "RECLAIMs", "shards moved", "handoff bytes",
}

func (k Kind) String() string { return kindNames[k] }

// session states
const (
	sLive    uint8 = iota // renewing at its home
	sRetry                // its home did not answer: try another worker
	sWait                 // waiting (jitter) to open a session again
	sOpening              // in the open queue
	sQueued               // a renewal waits for etcd
)

// worker is the simulation's view of one worker.
type worker struct {
	id       string
	inc      uint64
	addr     string
	alive    bool  // its process answers
	reg      bool  // its registration key exists in etcd
	draining bool  // a drain mark or its own flag
	killedAt int64 // -1 if not killed
	groupExp int64 // Planned: when the group leases of a killed worker expire
	homed    int   // sessions homed here
}

type event struct {
	at   int64
	kind uint8
	arg  int
}

const (
	evExpire  uint8 = iota // a killed worker's lease is found expired
	evPlan                 // the leader replans
	evHandoff              // a drained worker's handoffs are done: it stops
	evDrain                // start draining the next worker
)

type events []event

func (e events) Len() int           { return len(e) }
func (e events) Less(i, j int) bool { return e[i].at < e[j].at }
func (e events) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *events) Push(x any)        { *e = append(*e, x.(event)) }
func (e *events) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

type renewal struct {
	s    int32
	sent int64
}

// Sim is one simulation run. Use Run.
type Sim struct {
	cfg Config
	d   Design
	c   Costs
	rng *rand.Rand
	now int64

	workers []worker
	byID    map[string]int
	aliveIx []int32 // alive workers, for random picks; rebuilt when dirty
	dirty   bool
	nextInc uint64
	m       delegation.Map
	tokens  []int64 // held tokens per shard

	// sessions
	home []int32
	exp  []int64
	st   []uint8
	wait []int64 // sOpening: when it asked
	live int     // sessions live (renewing, or retrying at another worker)

	wheel  [][]int32
	expire []int64   // per wheel slot: abandoned leases expiring then
	spread []float64 // per wheel slot: MAP_REPLY datagrams due then
	slots  int64

	renewQ   []renewal
	renewBud float64
	openQ    []int32
	openBud  float64
	writeBud float64
	revReady float64
	adopts   int

	planAt  int64 // a plan is scheduled (-1: none)
	evs     events
	drainQ  []int // workers still to drain
	drainW  int   // the worker being drained (-1)
	dirtyMv []bool

	clientKV, workerKV int // bytes of a session key + value, a registration
	graceMs            uint32

	sec    [nKinds]float64 // counts in the current virtual second
	series [][nKinds]float64
	frac   float64 // fractional worker renewals

	rep   *Report
	phase *Phase
}

// Run runs cfg's scenario and returns the report.
func Run(cfg Config) (*Report, error) {
	s, err := newSim(cfg)
	if err != nil {
		return nil, err
	}
	for _, st := range cfg.Scenario {
		if err := s.step(st); err != nil {
			return s.rep, err
		}
	}
	return s.rep, nil
}

func newSim(cfg Config) (*Sim, error) {
	if cfg.Tick <= 0 {
		cfg.Tick = 10 * Millisecond
	}
	if cfg.Design.GroupSize < 1 {
		cfg.Design.GroupSize = 1
	}
	if cfg.Costs == (Costs{}) {
		cfg.Costs = DefaultCosts()
	}
	switch {
	case cfg.Workers < 1, cfg.Shards < 1, cfg.Shards > delegation.MaxShards, cfg.Sessions < 0, cfg.Tokens < 0:
		return nil, fmt.Errorf("sim: bad sizes: %d workers, %d shards, %d sessions, %d tokens", cfg.Workers, cfg.Shards, cfg.Sessions, cfg.Tokens)
	case cfg.SessionTTL < Second, cfg.WorkerTTL < Second, cfg.Grace < 0:
		return nil, fmt.Errorf("sim: bad TTLs: S %d, W %d, G %d", cfg.SessionTTL, cfg.WorkerTTL, cfg.Grace)
	}
	s := &Sim{
		cfg: cfg, d: cfg.Design, c: cfg.Costs,
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		byID:    map[string]int{},
		nextInc: 0x694d5765fc710000,
		planAt:  -1,
		drainW:  -1,
		graceMs: uint32(cfg.Grace / Millisecond),
		rep:     &Report{Config: summary(cfg)},
	}
	// Bytes of the keys as the worker writes them (cluster's documents).
	doc, _ := json.Marshal(cluster.Client{Session: cluster.SessionString(0x694d5765fc71aaaa), Addr: "10.20.30.40:51234",
		Since: "2026-12-03T14:00:00.123456789Z", Library: "tokend-go/1", Worker: "worker-0001"})
	s.clientKV = len(cluster.ClientKey(0x694d5765fc71aaaa)) + len(doc)
	wdoc, _ := json.Marshal(cluster.Worker{ID: "worker-0001", Incarnation: "694d5765fc710000", UDP: "10.0.0.1:7946",
		HTTP: "10.0.0.1:7947", Version: "1.0.0", Started: "2026-12-03T14:00:00.123456789Z", TTLms: 5000, Handoff: "10.0.0.1:7948"})
	s.workerKV = len(cluster.WorkerKey("worker-0001")) + len(wdoc)
	s.rep.ClientKVBytes, s.rep.WorkerKVBytes = s.clientKV, s.workerKV

	// Tokens: uniform over shards (multinomial by chunks).
	s.tokens = make([]int64, cfg.Shards)
	base := cfg.Tokens / int64(cfg.Shards)
	for i := range s.tokens {
		s.tokens[i] = base
	}
	for r := cfg.Tokens - base*int64(cfg.Shards); r > 0; r-- {
		s.tokens[s.rng.IntN(cfg.Shards)]++
	}

	maxDelay := max(cfg.SessionTTL, s.d.ReconnectJitter) + 10*Second
	s.slots = maxDelay/cfg.Tick + 2
	s.wheel = make([][]int32, s.slots)
	s.expire = make([]int64, s.slots)
	s.spread = make([]float64, s.slots)

	for range cfg.Workers {
		s.addWorker()
	}
	live := s.liveWorkers()
	m, _, err := plan.Plan(live, cfg.Shards, delegation.Map{})
	if err != nil {
		return nil, err
	}
	s.m = m
	s.dirtyMv = make([]bool, cfg.Shards)
	c, err := mapCost(m, s.addrOf, s.graceMs)
	if err != nil {
		return nil, err
	}
	s.rep.Initial = c

	n := cfg.Sessions
	s.home = make([]int32, n)
	s.exp = make([]int64, n)
	s.st = make([]uint8, n)
	s.wait = make([]int64, n)
	s.refreshAlive()
	period := cfg.SessionTTL / 3
	s.live = n
	for i := range n {
		h := s.aliveIx[s.rng.IntN(len(s.aliveIx))]
		s.home[i] = h
		s.workers[h].homed++
		// Steady state: the last renewal was up to S/3 ago.
		next := 1 + s.rng.Int64N(period)
		s.exp[i] = next - period + cfg.SessionTTL
		s.schedule(int32(i), next)
	}
	return s, nil
}

func (s *Sim) addWorker() int {
	i := len(s.workers)
	s.nextInc += 7919
	id := fmt.Sprintf("worker-%04d", i)
	s.workers = append(s.workers, worker{
		id: id, inc: s.nextInc, addr: fmt.Sprintf("10.%d.%d.%d:7946", 1+i/65536, i/256%256, i%256),
		alive: true, reg: true, killedAt: -1,
	})
	s.byID[id] = i
	s.dirty = true
	return i
}

func (s *Sim) addrOf(o delegation.Owner) string {
	if i, ok := s.byID[o.ID]; ok {
		return s.workers[i].addr
	}
	return "10.255.255.255:7946"
}

// liveWorkers is the registry as the leader sees it.
func (s *Sim) liveWorkers() []plan.Worker {
	var ws []plan.Worker
	for _, w := range s.workers {
		if w.reg {
			ws = append(ws, plan.Worker{ID: w.id, Incarnation: w.inc, Draining: w.draining})
		}
	}
	return ws
}

func (s *Sim) refreshAlive() {
	if !s.dirty {
		return
	}
	s.aliveIx = s.aliveIx[:0]
	for i, w := range s.workers {
		if w.alive && !w.draining {
			s.aliveIx = append(s.aliveIx, int32(i))
		}
	}
	if len(s.aliveIx) == 0 {
		for i, w := range s.workers {
			if w.alive {
				s.aliveIx = append(s.aliveIx, int32(i))
			}
		}
	}
	s.dirty = false
}

func (s *Sim) randomAlive() int32 {
	s.refreshAlive()
	return s.aliveIx[s.rng.IntN(len(s.aliveIx))]
}

func (s *Sim) registered() int {
	n := 0
	for _, w := range s.workers {
		if w.reg {
			n++
		}
	}
	return n
}

// schedule puts session i on the wheel at time at (> now).
func (s *Sim) schedule(i int32, at int64) {
	t := max(at/s.cfg.Tick, s.now/s.cfg.Tick+1)
	if t-s.now/s.cfg.Tick >= s.slots {
		t = s.now/s.cfg.Tick + s.slots - 1
	}
	s.wheel[t%s.slots] = append(s.wheel[t%s.slots], i)
}

func (s *Sim) count(k Kind, n float64) {
	s.sec[k] += n
}

// watch counts one etcd event of size bytes delivered to n watchers.
func (s *Sim) watch(n int, bytes int) {
	s.count(WatchEvents, float64(n))
	s.count(WatchBytes, float64(n*bytes))
}

func (s *Sim) at(d int64, kind uint8, arg int) {
	heap.Push(&s.evs, event{at: s.now + d, kind: kind, arg: arg})
}

// replanSoon schedules the leader's plan after a registry change.
func (s *Sim) replanSoon() {
	if s.planAt >= 0 {
		return
	}
	s.planAt = s.now + s.c.WatchLatency + s.c.Settle
	heap.Push(&s.evs, event{at: s.planAt, kind: evPlan})
}

// step runs one scenario step.
func (s *Sim) step(st Step) error {
	p := &Phase{Name: st.String(), Start: s.now}
	s.phase = p
	s.rep.Phases = append(s.rep.Phases, p)
	first := len(s.series)
	switch st.Kind {
	case Kill:
		s.kill(st.N)
	case Join:
		for range st.N {
			s.join()
		}
	case Drain:
		s.drainQ = s.drainQ[:0]
		for _, i := range s.pick(st.N) {
			s.drainQ = append(s.drainQ, int(i))
		}
		s.at(0, evDrain, 0)
	case Restart:
		s.restart()
	}
	end := s.now + st.For
	for s.now < end {
		if err := s.tick(); err != nil {
			return err
		}
	}
	p.End = s.now
	p.summarise(s, s.series[first:])
	return nil
}

// pick returns n distinct alive, not draining workers at random.
func (s *Sim) pick(n int) []int32 {
	s.refreshAlive()
	c := slices.Clone(s.aliveIx)
	s.rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	return c[:min(n, len(c))]
}

func (s *Sim) kill(n int) {
	for _, i := range s.pick(n) {
		w := &s.workers[i]
		w.alive, w.killedAt = false, s.now
		s.dirty = true
		// Its last keepalive was up to W/4 ago; etcd's lessor finds the
		// lease expired at its next check after that + W.
		last := s.now - s.rng.Int64N(s.cfg.WorkerTTL/4)
		exp := last + s.cfg.WorkerTTL
		found := (exp/s.c.LessorCheck + 1) * s.c.LessorCheck
		heap.Push(&s.evs, event{at: found, kind: evExpire, arg: int(i)})
		// Planned: its session groups were renewed up to S/3 ago.
		w.groupExp = s.now - s.rng.Int64N(s.cfg.SessionTTL/3) + s.cfg.SessionTTL
		s.phase.Kills = append(s.phase.Kills, &Recovery{Worker: w.id, Killed: s.now, Shards: s.owned(int(i))})
	}
}

func (s *Sim) owned(w int) int {
	n := 0
	for sh := range s.m.Owner {
		if o := s.m.Owner[sh]; o != delegation.NoOwner && s.m.Workers[o].ID == s.workers[w].id && s.m.Workers[o].Incarnation == s.workers[w].inc {
			n++
		}
	}
	return n
}

func (s *Sim) join() {
	s.addWorker()
	reg := s.registered()
	// register: a lease grant and a txn put; the registry watchers
	// (every worker and the leader) see it.
	s.count(Grants, 1)
	s.count(Txns, 1)
	s.writeBud--
	s.writeBud--
	s.watch(reg, s.workerKV)
	// start: read the config, the registry, the map and every session.
	s.count(Reads, 4)
	s.count(ReadBytes, float64(reg*s.workerKV+s.rep.Initial.JSONBytes))
	if !s.d.WatchNoPut {
		s.count(ReadBytes, float64(s.cfg.Sessions*s.clientKV))
	}
	s.replanSoon()
}

// restart: every client restarts at once; their sessions are abandoned
// (their leases expire after S and are revoked by etcd's lessor) and each
// opens a new session, after the design's jitter.
func (s *Sim) restart() {
	for i := range s.st {
		if s.st[i] == sLive || s.st[i] == sRetry || s.st[i] == sQueued {
			if s.d.GroupSize == 1 {
				s.addExpiry(s.exp[i])
			} else {
				// Its worker deletes the key once its deadline passed
				// there: up to S after its last renewal.
				s.addExpiry(s.now + s.rng.Int64N(s.cfg.SessionTTL/3) + s.cfg.SessionTTL*2/3)
			}
		}
		if s.home[i] >= 0 {
			s.workers[s.home[i]].homed--
			s.home[i] = -1
		}
		s.st[i] = sWait
	}
	s.live = 0
	// The queues hold only abandoned sessions now.
	s.renewQ, s.openQ = nil, nil
	for i := range s.wheel {
		s.wheel[i] = s.wheel[i][:0]
	}
	for i := range s.st {
		s.schedule(int32(i), s.now+s.jitter())
	}
}

func (s *Sim) jitter() int64 {
	if s.d.ReconnectJitter <= 0 {
		return s.c.RTOMin
	}
	return 1 + s.rng.Int64N(s.d.ReconnectJitter)
}

// spreadOver counts n datagrams spread evenly over the next d: clients
// see a newer map version in the next reply they get (token holders send
// KEEPALIVEs every W/4) and fetch it then.
func (s *Sim) spreadOver(n float64, d int64) {
	ticks := max(d/s.cfg.Tick, 1)
	for t := int64(1); t <= ticks; t++ {
		s.spread[(s.now/s.cfg.Tick+t)%s.slots] += n / float64(ticks)
	}
}

// addExpiry notes an abandoned lease that expires at t.
func (s *Sim) addExpiry(t int64) {
	tk := max(t/s.cfg.Tick, s.now/s.cfg.Tick+1)
	if tk-s.now/s.cfg.Tick >= s.slots {
		tk = s.now/s.cfg.Tick + s.slots - 1
	}
	s.expire[tk%s.slots]++
}

// tick advances virtual time by one Tick.
func (s *Sim) tick() error {
	tick := s.cfg.Tick
	for len(s.evs) > 0 && s.evs[0].at <= s.now {
		e := heap.Pop(&s.evs).(event)
		if err := s.handle(e); err != nil {
			return err
		}
	}
	slot := (s.now / tick) % s.slots
	due := s.wheel[slot]
	s.wheel[slot] = nil
	for _, i := range due {
		s.session(i)
	}
	s.count(MapDatagrams, s.spread[slot])
	s.spread[slot] = 0
	// abandoned leases expiring now
	s.revReady += float64(s.expire[slot])
	s.expire[slot] = 0

	// etcd: the write budget of this tick, control writes were taken already.
	s.writeBud = min(s.writeBud+s.c.EtcdWritesPerSec*float64(tick)/1e9, s.c.EtcdWritesPerSec*float64(tick)/1e9)
	if s.d.GroupSize > 1 && s.revReady > 0 {
		// Planned: abandoned sessions are ended by their workers, not by
		// etcd's lessor: one txn per MaxTxnOps sessions deletes their keys
		// and puts one end record listing them, the only key the other
		// workers watch (docs/SCALE.md), so each watcher gets one event
		// per batch.
		n := s.revReady
		if s.d.EndRate > 0 {
			n = min(n, s.d.EndRate*float64(s.cfg.Tick)/1e9)
		}
		s.revReady -= n
		s.phase.maxPendingRevokes = max(s.phase.maxPendingRevokes, s.revReady)
		b := math.Ceil(n / float64(s.c.MaxTxnOps))
		s.count(Deletes, n)
		s.count(Txns, b)
		s.writeBud -= b
		reg := float64(s.registered())
		s.count(WatchEvents, b*reg)
		s.count(WatchBytes, n*17*reg) // a session id in hex and a comma
	}
	// the lessor revokes expired leases every LessorCheck, at its rate
	if s.d.GroupSize == 1 && s.now%s.c.LessorCheck < tick && s.revReady > 0 {
		n := min(s.revReady, s.c.LeaseRevokeRate*float64(s.c.LessorCheck)/1e9)
		s.revReady -= n
		s.count(Revokes, n)
		s.count(Deletes, n)
		s.writeBud -= n
		s.watch(int(float64(s.registered())*n), s.clientKV/2) // delete events carry the key
		s.phase.maxPendingRevokes = max(s.phase.maxPendingRevokes, s.revReady)
	}
	if s.adopts > 0 {
		txns := (s.adopts + s.c.MaxTxnOps - 1) / s.c.MaxTxnOps
		s.count(Txns, float64(txns))
		s.writeBud -= float64(txns)
		s.adopts = 0
	}
	s.serveRenewals()
	s.serveOpens()
	s.background()

	s.now += tick
	if s.now%Second == 0 {
		s.series = append(s.series, s.sec)
		s.sec = [nKinds]float64{}
	}
	return nil
}

// background: worker lease renewals (every W/4) with the map check's
// linearizable read, and the Planned design's group lease renewals.
func (s *Sim) background() {
	tick := s.cfg.Tick
	alive, groups := 0, 0
	for _, w := range s.workers {
		if w.alive && w.reg {
			alive++
			if s.d.GroupSize > 1 {
				groups += (w.homed + s.d.GroupSize - 1) / s.d.GroupSize
			}
		}
	}
	// Holders: each live session keeps its grants valid with a KEEPALIVE
	// every W/4 to each worker it holds grants on: with its tokens spread
	// uniformly, Workers × (1 − (1 − 1/Workers)^(Tokens/Sessions)) workers.
	if s.cfg.Sessions > 0 && alive > 0 {
		per := float64(s.cfg.Tokens) / float64(s.cfg.Sessions)
		on := float64(alive) * (1 - math.Pow(1-1/float64(alive), per))
		s.count(HolderDgrams, 2*float64(s.live)*on*4*float64(tick)/float64(s.cfg.WorkerTTL))
	}
	wr := float64(alive) * 4 * float64(tick) / float64(s.cfg.WorkerTTL)
	s.count(WorkerRenewals, wr)
	s.count(Reads, wr)
	if s.d.GroupSize > 1 {
		s.count(Renewals, float64(groups)*3*float64(tick)/float64(s.cfg.SessionTTL))
	}
}

// session handles session i's due event.
func (s *Sim) session(i int32) {
	switch s.st[i] {
	case sLive:
		h := s.home[i]
		if !s.workers[h].alive {
			// No answer: the client tries the next worker after
			// max(S/6, 4 RTO) (clientlib/session.go renew).
			s.st[i] = sRetry
			s.count(KeepaliveDgrams, 6) // its retransmissions meanwhile
			s.schedule(i, s.now+max(s.cfg.SessionTTL/6, 4*s.c.RTOMin))
			return
		}
		s.renew(i)
	case sRetry:
		old := s.home[i]
		h := s.randomAlive()
		s.workers[old].homed--
		s.home[i] = h
		s.workers[h].homed++
		s.count(Rehomes, 1)
		s.st[i] = sLive
		if s.d.GroupSize > 1 {
			if s.now >= s.workers[old].groupExp {
				s.lose(i)
				return
			}
			s.adopts++ // a txn moves its key to h's group
		}
		s.renew(i)
	case sWait:
		s.st[i] = sOpening
		s.wait[i] = s.now
		s.openQ = append(s.openQ, i)
	}
}

// renew sends session i's KEEPALIVE RENEW to its home.
func (s *Sim) renew(i int32) {
	s.count(KeepaliveDgrams, 2)
	if s.d.GroupSize > 1 {
		// The worker vouches from its group's lease; nothing goes to etcd.
		s.schedule(i, s.now+s.cfg.SessionTTL/3)
		return
	}
	s.st[i] = sQueued
	s.renewQ = append(s.renewQ, renewal{s: i, sent: s.now})
}

// lose: session i's lease expired while its client lived; the client
// opens a new session after the design's jitter.
func (s *Sim) lose(i int32) {
	s.count(Lost, 1)
	s.live--
	if s.home[i] >= 0 {
		s.workers[s.home[i]].homed--
		s.home[i] = -1
	}
	s.st[i] = sWait
	s.schedule(i, s.now+s.jitter())
}

func (s *Sim) serveRenewals() {
	cpu := s.c.RenewOnceCPU
	if s.d.KeepAliveStream {
		cpu = s.c.RenewStreamCPU
	}
	rate := s.c.EtcdLeaderCores * 1e9 / float64(cpu)
	s.renewBud = min(s.renewBud+rate*float64(s.cfg.Tick)/1e9, rate*float64(s.cfg.Tick)/1e9)
	n := 0
	for n < len(s.renewQ) && s.renewBud >= 1 {
		r := s.renewQ[n]
		n++
		s.renewBud--
		i := r.s
		if s.now > s.exp[i] {
			// Served after the lease ran out: etcd revokes it, the
			// client learns SESSION_EXPIRED and opens anew.
			s.revReady++
			s.lose(i)
			continue
		}
		s.count(Renewals, 1)
		s.exp[i] = s.now + s.cfg.SessionTTL
		s.phase.renewLate = max(s.phase.renewLate, s.now-r.sent)
		s.st[i] = sLive
		s.schedule(i, max(r.sent+s.cfg.SessionTTL/3, s.now+s.cfg.Tick))
	}
	s.renewQ = s.renewQ[n:]
	if len(s.renewQ) == 0 {
		s.renewQ = nil
	}
	s.phase.maxRenewQ = max(s.phase.maxRenewQ, len(s.renewQ))
}

func (s *Sim) serveOpens() {
	if len(s.openQ) == 0 {
		return
	}
	tick := float64(s.cfg.Tick) / 1e9
	ops := 2.0 // grant + put
	per := float64(s.c.PoolSize) * 1e9 / float64(2*s.c.EtcdCallLatency)
	if s.d.GroupSize > 1 {
		ops = 1
		per = float64(s.c.PoolSize) * 1e9 / float64(s.c.EtcdCallLatency)
	}
	if s.d.OpenRate > 0 {
		per = min(per, s.d.OpenRate)
	}
	s.refreshAlive()
	capTick := per * float64(len(s.aliveIx)) * tick
	s.openBud = min(s.openBud+capTick, capTick)
	reg := s.registered()
	n := 0
	for n < len(s.openQ) && s.openBud >= 1 && s.writeBud >= ops {
		i := s.openQ[n]
		n++
		s.openBud--
		s.writeBud -= ops
		h := s.randomAlive()
		s.home[i] = h
		s.workers[h].homed++
		s.st[i] = sLive
		s.live++
		s.exp[i] = s.now + s.cfg.SessionTTL
		s.schedule(i, s.now+s.cfg.SessionTTL/3)
		if ops == 2 {
			s.count(Grants, 1)
		}
		s.count(Puts, 1)
		s.count(Opens, 1)
		if !s.d.WatchNoPut {
			s.watch(reg, s.clientKV)
		}
		w := s.now - s.wait[i]
		s.count(OpenDgrams, float64(1+retransmissions(w, s.c.RTOMin)))
		s.phase.openWait = append(s.phase.openWait, w)
	}
	s.openQ = s.openQ[n:]
	if len(s.openQ) == 0 {
		s.openQ = nil
	}
	s.phase.maxOpenQ = max(s.phase.maxOpenQ, len(s.openQ))
}

// retransmissions is how many times a client resends a request answered
// after w: every RTO, from rto doubling up to 1 s (SPEC §12, no jitter).
func retransmissions(w, rto int64) int {
	n, t := 0, rto
	for t < w {
		n++
		rto = min(2*rto, Second)
		t += rto
	}
	return n
}

func (s *Sim) handle(e event) error {
	switch e.kind {
	case evExpire:
		w := &s.workers[e.arg]
		if !w.reg {
			return nil
		}
		w.reg = false
		s.count(Revokes, 1)
		s.count(Deletes, 1)
		s.writeBud--
		s.watch(s.registered()+1, len(cluster.WorkerKey(w.id)))
		for _, k := range s.phase.Kills {
			if k.Worker == w.id {
				k.LeaseGone = s.now
			}
		}
		s.replanSoon()
	case evPlan:
		s.planAt = -1
		return s.replan()
	case evDrain:
		if len(s.drainQ) == 0 {
			s.drainW = -1
			return nil
		}
		i := s.drainQ[0]
		s.drainQ = s.drainQ[1:]
		s.drainW = i
		s.workers[i].draining = true
		s.dirty = true
		s.phase.Drains = append(s.phase.Drains, &Drained{Worker: s.workers[i].id, Started: s.now, Shards: s.owned(i)})
		s.count(Puts, 1) // tokenctl drain's mark; the leader watches it
		s.writeBud--
		s.watch(1, 64)
		s.replanSoon()
	case evHandoff:
		// The drained worker has handed every shard off and stops: it
		// revokes its lease (a clean stop).
		w := &s.workers[e.arg]
		w.alive, w.reg = false, false
		s.dirty = true
		// Planned: it leaves its session groups to expire; their clients
		// re-home and are adopted meanwhile.
		w.groupExp = s.now - s.rng.Int64N(s.cfg.SessionTTL/3) + s.cfg.SessionTTL
		s.count(Revokes, 1)
		s.count(Deletes, 1)
		s.writeBud--
		s.watch(s.registered()+1, len(cluster.WorkerKey(w.id)))
		if n := len(s.phase.Drains); n > 0 {
			s.phase.Drains[n-1].Stopped = s.now
		}
		s.replanSoon()
		s.at(s.c.Settle, evDrain, 0)
	}
	return nil
}

// replan is the leader's replan: the real planner on the registry.
func (s *Sim) replan() error {
	live := s.liveWorkers()
	var t0 int64
	if s.cfg.Clock != nil {
		t0 = s.cfg.Clock()
	}
	next, moves, err := plan.Plan(live, s.cfg.Shards, s.m)
	var took int64
	if s.cfg.Clock != nil {
		took = s.cfg.Clock() - t0
	}
	if err != nil {
		return fmt.Errorf("sim: plan at %.3fs: %w", float64(s.now)/1e9, err)
	}
	p := s.phase
	p.Plans = append(p.Plans, took)
	// The leader reads the map before it plans.
	s.count(Reads, 1)
	s.count(ReadBytes, float64(s.rep.Initial.JSONBytes))
	if len(moves) == 0 {
		return nil
	}
	s.m = next
	cost, err := mapCost(next, s.addrOf, s.graceMs)
	if err != nil {
		return err
	}
	p.Map = cost
	reg := s.registered()
	clients := s.cfg.Sessions
	written, fetchDg := cost.JSONBytes, cost.Datagrams
	if s.d.RangeShards > 0 {
		clear(s.dirtyMv)
		for _, mv := range moves {
			s.dirtyMv[mv.Shard] = true
		}
		docs, b, dg, err := rangeCost(next, s.dirtyMv, s.d.RangeShards, s.addrOf, s.graceMs)
		if err != nil {
			return err
		}
		written, fetchDg = b, dg
		p.RangeDocs = max(p.RangeDocs, docs)
	}
	s.count(MapVersions, 1)
	s.count(Txns, 1)
	s.writeBud--
	s.count(MapBytes, float64(written))
	s.watch(reg, written)
	// Every client sees the newer version in a reply header and fetches
	// the map (or, Planned, the ranges that changed).
	s.spreadOver(float64(2*clients*fetchDg), s.cfg.WorkerTTL/4)
	p.MapFetchDgrams = max(p.MapFetchDgrams, fetchDg)
	p.MaxMapBytes = max(p.MaxMapBytes, cost.JSONBytes)
	p.MapVersionsN++

	var handoffs, recoveries, tokens int64
	for _, mv := range moves {
		tokens += s.tokens[mv.Shard]
		if i, ok := s.byID[mv.To.ID]; ok && !s.workers[i].alive {
			// Its lease has not run out yet: the leader cannot know.
			p.ToDead++
		}
		switch mv.Kind {
		case plan.Handoff:
			handoffs++
		case plan.Recovery:
			recoveries++
		}
	}
	s.count(ShardsMoved, float64(len(moves)))
	s.count(Reclaims, float64(tokens))
	p.MovesPerPlan = append(p.MovesPerPlan, len(moves))
	p.Handoffs += handoffs
	p.Recoveries += recoveries
	if handoffs > 0 {
		var hb int64
		for _, mv := range moves {
			if mv.Kind == plan.Handoff {
				hb += s.tokens[mv.Shard] * s.c.HandoffTokenBytes
			}
		}
		s.count(HandoffBytes, float64(hb))
	}
	applied := s.now + s.c.EtcdCallLatency + s.c.WatchLatency
	for _, k := range p.Kills {
		if k.LeaseGone > 0 && k.Mapped == 0 && !owns(next, k.Worker) {
			k.Mapped = applied
			k.Grants = applied + s.cfg.Grace
			k.HeldValid = applied + s.cfg.WorkerTTL/4
			k.Reclaims = 0
			lost := 0
			for _, mv := range moves {
				if mv.From.ID == k.Worker && mv.Kind == plan.Recovery {
					k.Reclaims += s.tokens[mv.Shard]
					lost++
				}
			}
			// Sessions with a token in those shards, tokens spread
			// uniformly: each of its Tokens/Sessions tokens misses them
			// with probability 1 - lost/shards.
			if s.cfg.Sessions > 0 {
				per := float64(s.cfg.Tokens) / float64(s.cfg.Sessions)
				miss := math.Pow(1-float64(lost)/float64(s.cfg.Shards), per)
				k.Sessions = int64(float64(s.cfg.Sessions) * (1 - miss))
			}
		}
	}
	if s.drainW >= 0 && handoffs > 0 {
		d := p.Drains[len(p.Drains)-1]
		d.Mapped = applied
		d.Moved = int(handoffs)
		s.at(s.c.EtcdCallLatency+s.c.WatchLatency+s.c.HandoffTime, evHandoff, s.drainW)
	}
	// Every shard owned by a registered worker?
	p.Unowned = max(p.Unowned, s.unowned())
	return nil
}

// owns reports whether worker id (any incarnation) owns a shard in m.
func owns(m delegation.Map, id string) bool {
	for _, o := range m.Workers {
		if o.ID == id {
			return true
		}
	}
	return false
}

// unowned counts shards of the map with no owner, or an owner whose
// registration is gone.
func (s *Sim) unowned() int {
	reg := map[delegation.Owner]bool{}
	for _, w := range s.workers {
		if w.reg {
			reg[delegation.Owner{ID: w.id, Incarnation: w.inc}] = true
		}
	}
	n := 0
	for _, o := range s.m.Owner {
		if o == delegation.NoOwner || !reg[s.m.Workers[o]] {
			n++
		}
	}
	return n
}

// Percentile returns the p-th percentile (0..100) of xs (sorted in place).
func Percentile(xs []int64, p float64) int64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[max(i, 0)]
}
