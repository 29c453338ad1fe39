package clientlib

// The fake workers the client's tests run against: testkit/fakeworker (the
// real worker/table and worker/session behind the wire protocol) over
// faultnet, seen through the fields and methods these tests use. What the
// workers receive, apply and send is recorded here from fakeworker's trace,
// so that tests can assert on the client's datagrams; the map a test writes
// into owner, epoch and mapVersion under mu is handed to the fake before it
// handles the next datagram.

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/fakeworker"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

type fakeConfig struct {
	workers     int
	shardCount  uint32
	sessionTTL  time.Duration
	workerTTL   time.Duration
	validity    time.Duration // validity_ms the workers report
	grace       time.Duration
	runsPerPage int
	realUDP     bool // real loopback sockets instead of faultnet (clients open their own)
	noRevokeRTX bool // send each REVOKE once, never retransmit it
	insecure    bool // the workers do not authenticate
	noBundle    bool // the workers are from before bundles (fakeworker.Config.NoBundle)
}

type fakeCluster struct {
	t   testing.TB
	net *faultnet.Network
	cfg fakeConfig
	fw  *fakeworker.Cluster
	// keyFile holds the workers' client key (dial's default KeyFile);
	// "" when insecure.
	keyFile string

	mu           sync.Mutex // guards everything below
	mapVersion   uint64     // the map as tests see and set it (see sync)
	owner        []int      // shard -> worker index, -1 = none
	epoch        []uint32
	synced       []int // owner, epoch and refuseReclaim as last handed to fw
	syncedEpoch  []uint32
	refuseSynced bool
	workers      []*fakeWorker
	sessions     map[uint64]*fakeSession
	applied      map[fakeReq]int // how often each (session, request id) was applied
	bodies       map[fakeReq]string
	seen         []fakeSeen
	cancels      []uint64 // targets named in CANCEL requests that were applied
	releases     []uint64 // fences named in RELEASE requests that were applied
	notOwner     int      // NOT_OWNER/STALE_EPOCH answers sent
	// per worker, in order: "r" for each RECLAIM applied, "d" for each
	// KEEPALIVE with DONE received (SPEC §13, "Early end of grace")
	reclaimDone   map[int]string
	mapRequests   int
	bundles       map[int]int        // BUNDLEs received, per worker
	flaggedOpens  map[int]int        // SESSION_OPENs with flag BUNDLE received, per worker
	requestSeen   map[[2]uint64]bool // (session, request id) of every request received, alone or in a BUNDLE
	bundledAgain  int                // datagrams that came in a BUNDLE after they had come once already
	refuseReclaim bool               // answer every RECLAIM RECLAIM_REFUSED (set before the first request)
	problems      []string           // protocol violations by the client
}

type fakeReq struct{ sess, req uint64 }

type fakeSeen struct {
	typ            wire.Type
	sess, req, ack uint64
	worker         int
}

type fakeSession struct {
	id   uint64
	addr net.Addr // where its last request came from
}

type fakeWorker struct {
	conn  net.PacketConn
	addr  string
	revs  map[fakeReq]bool     // one entry per session with REVOKEs in flight
	vouch map[uint64]time.Time // session -> last reply that vouched for grants
	// tokens is not the worker's state (its tables are in fw); a test that
	// replaces it changes nothing.
	tokens map[string]*fakeToken
}

type fakeToken struct{}

// fakeGrant is a grant as a fake worker's table holds it.
type fakeGrant struct {
	sess, fence uint64
	mode        wire.Mode
	start, end  uint64
}

func newFakeCluster(t testing.TB, seed uint64, cfg fakeConfig) *fakeCluster {
	t.Helper()
	if cfg.workers == 0 {
		cfg.workers = 1
	}
	if cfg.shardCount == 0 {
		cfg.shardCount = 16
	}
	if cfg.sessionTTL == 0 {
		cfg.sessionTTL = 3 * time.Second
	}
	if cfg.workerTTL == 0 {
		cfg.workerTTL = 2 * time.Second
	}
	if cfg.validity == 0 {
		cfg.validity = cfg.workerTTL - 50*time.Millisecond
	}
	if cfg.grace == 0 {
		cfg.grace = time.Second
	}
	if cfg.runsPerPage == 0 {
		cfg.runsPerPage = 50
	}
	fc := &fakeCluster{t: t, net: faultnet.New(seed), cfg: cfg, mapVersion: 1,
		owner: make([]int, cfg.shardCount), epoch: make([]uint32, cfg.shardCount),
		sessions: map[uint64]*fakeSession{}, applied: map[fakeReq]int{}, bodies: map[fakeReq]string{},
		reclaimDone: map[int]string{}, bundles: map[int]int{}, flaggedOpens: map[int]int{},
		requestSeen: map[[2]uint64]bool{}}
	for s := range fc.epoch {
		fc.epoch[s] = 1
	}
	fc.synced, fc.syncedEpoch = slices.Clone(fc.owner), slices.Clone(fc.epoch)
	fcfg := fakeworker.Config{Workers: cfg.workers, Shards: cfg.shardCount, SessionTTL: cfg.sessionTTL,
		WorkerTTL: cfg.workerTTL, Validity: cfg.validity, Grace: cfg.grace, RunsPerPage: cfg.runsPerPage,
		NoExpiry: true, NoRevokeRetransmit: cfg.noRevokeRTX, WaitSlack: time.Second, Seed: seed, Trace: fc.observe,
		Insecure: cfg.insecure, NoBundle: cfg.noBundle}
	if !cfg.realUDP {
		fcfg.Listen = func(i int) (net.PacketConn, error) { return fc.net.Listen(fmt.Sprintf("127.0.0.1:%d", 7701+i)) }
	}
	fc.mu.Lock() // observe may run before New returns
	fw, err := fakeworker.New(fcfg)
	if err != nil {
		fc.mu.Unlock()
		t.Fatal(err)
	}
	fc.fw = fw
	if !cfg.insecure {
		fc.keyFile = filepath.Join(t.TempDir(), "client.key")
		if err := fw.WriteKeyFile(fc.keyFile); err != nil {
			fc.mu.Unlock()
			fw.Close()
			t.Fatal(err)
		}
	}
	for i := range cfg.workers {
		fc.workers = append(fc.workers, &fakeWorker{conn: fw.Conn(i), addr: fw.Addr(i),
			revs: map[fakeReq]bool{}, vouch: map[uint64]time.Time{}, tokens: map[string]*fakeToken{}})
	}
	fc.mu.Unlock()
	t.Cleanup(fc.close)
	return fc
}

func (fc *fakeCluster) close() {
	fc.fw.Close()
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for _, p := range fc.problems {
		fc.t.Errorf("client protocol violation: %s", p)
	}
}

// dial opens a client on a fresh faultnet address with the first worker as
// seed, with the workers' client key unless cfg has a KeyFile or is
// Insecure.
func (fc *fakeCluster) dial(t testing.TB, cfg Config) *Client {
	t.Helper()
	if !fc.cfg.realUDP {
		conn, err := fc.net.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		cfg.PacketConn = conn
	}
	if cfg.Seeds == nil {
		cfg.Seeds = []string{fc.addr(0)}
	}
	if cfg.KeyFile == "" && !cfg.Insecure {
		cfg.KeyFile, cfg.Insecure = fc.keyFile, fc.keyFile == ""
	}
	if cfg.RTOMax == 0 {
		cfg.RTOMax = 200 * time.Millisecond
	}
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = testLogger(t) // go test -v shows the client's debug log
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// setOwner delegates shard to worker w at epoch (bumping the map version);
// with grace the new owner recovers it (a grace period for reclaims),
// without it starts it empty.
func (fc *fakeCluster) setOwner(shard uint32, w int, epoch uint32, grace bool) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.syncLocked()
	how := fakeworker.Fresh
	if grace {
		how = fakeworker.Recover
	}
	fc.fw.SetOwner(shard, w, epoch, how)
	fc.owner[shard], fc.epoch[shard] = w, epoch
	fc.synced[shard], fc.syncedEpoch[shard] = w, epoch
	fc.mapVersion = fc.fw.MapVersion()
}

// syncLocked hands the fake what a test wrote into owner, epoch and
// refuseReclaim. Caller holds mu.
func (fc *fakeCluster) syncLocked() {
	for s := range fc.owner {
		if fc.owner[s] != fc.synced[s] || fc.epoch[s] != fc.syncedEpoch[s] {
			fc.fw.SetOwner(uint32(s), fc.owner[s], fc.epoch[s], fakeworker.Fresh)
			fc.synced[s], fc.syncedEpoch[s] = fc.owner[s], fc.epoch[s]
			fc.mapVersion = fc.fw.MapVersion()
		}
	}
	if fc.refuseReclaim != fc.refuseSynced {
		st := wire.StatusOK
		if fc.refuseReclaim {
			st = wire.StatusReclaimRefused
		}
		fc.fw.Answer(wire.TypeReclaim, st)
		fc.refuseSynced = fc.refuseReclaim
	}
}

func (fc *fakeCluster) noHints(on bool)           { fc.fw.SetHintless(on) }
func (fc *fakeCluster) setNoVouch(w int, on bool) { fc.fw.SetNoVouch(w, on) }
func (fc *fakeCluster) setSilent(w int, on bool)  { fc.fw.SetMuted(w, on) }

// expireSession drops a session everywhere, as etcd expiry would.
func (fc *fakeCluster) expireSession(id uint64) { fc.fw.EndSession(id) }

func (fc *fakeCluster) grants(w int, name string) []fakeGrant {
	var gs []fakeGrant
	for _, g := range fc.fw.Grants(w, name) {
		gs = append(gs, fakeGrant{sess: g.Session, fence: g.Fence, mode: g.Mode, start: g.Start, end: g.End})
	}
	return gs
}

func (fc *fakeCluster) waiters(w int, name string) int { return fc.fw.Waiters(w, name) }

func (fc *fakeCluster) addr(w int) string { return fc.fw.Addr(w) }

// sendRevoke makes worker wi revoke fence on name from session sess (wanted
// mode wanted), as a test script step.
func (fc *fakeCluster) sendRevoke(wi int, sess uint64, name string, fence uint64, wanted wire.Mode) {
	if err := fc.fw.Revoke(wi, sess, name, fence, wanted); err != nil {
		fc.t.Fatal(err)
	}
}

func (fc *fakeCluster) problem(format string, args ...any) {
	fc.problems = append(fc.problems, fmt.Sprintf(format, args...))
}

// observe records what the fake workers do (fakeworker's Trace).
func (fc *fakeCluster) observe(e fakeworker.Event) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.syncLocked()
	h := e.Header
	switch e.Kind {
	case fakeworker.Received:
		fc.received(e)
		if e.Err == nil && h.Type == wire.TypeKeepalive && h.Flags&wire.FlagDone != 0 {
			fc.reclaimDone[e.Worker] += "d"
		}
	case fakeworker.Applied:
		fc.applied[fakeReq{h.Session, h.Request}]++
		if h.Type == wire.TypeReclaim {
			fc.reclaimDone[e.Worker] += "r"
		}
		switch h.Type {
		case wire.TypeCancel:
			var m wire.Cancel
			if m.Decode(h, e.Pkt) == nil {
				fc.cancels = append(fc.cancels, m.Target)
			}
		case wire.TypeRelease:
			var m wire.Release
			if m.Decode(h, e.Pkt) == nil {
				fc.releases = append(fc.releases, m.Fence)
			}
		}
	case fakeworker.Sent:
		w := fc.workers[e.Worker]
		switch {
		case h.Status == wire.StatusNotOwner || h.Status == wire.StatusStaleEpoch:
			fc.notOwner++
		case h.Type == wire.TypeKeepaliveReply && h.Status == wire.StatusOK:
			var m wire.KeepaliveReply
			if m.Decode(h, e.Pkt) == nil && m.ValidityMs > 0 {
				w.vouch[h.Session] = time.Now()
			}
		case h.Status == wire.StatusOK && (h.Type == wire.TypeAcquireReply || h.Type == wire.TypeConvertReply ||
			h.Type == wire.TypeReclaimReply):
			w.vouch[h.Session] = time.Now()
		}
	}
	for i, w := range fc.workers {
		n := fc.fw.Revoking(i)
		clear(w.revs)
		for k := range n {
			w.revs[fakeReq{0, uint64(k)}] = true
		}
	}
}

// received records a request and checks it against the protocol. Caller
// holds mu.
func (fc *fakeCluster) received(e fakeworker.Event) {
	h := e.Header
	if e.Err != nil {
		fc.problem("undecodable datagram: %v", e.Err)
		return
	}
	if !h.Type.IsRequest() {
		fc.problem("non-request %v sent to a worker", h.Type)
		return
	}
	switch h.Type {
	case wire.TypeBundle:
		// Framing only: the datagrams in it are traced one by one.
		fc.bundles[e.Worker]++
		if wire.CheckBundle(h, e.Pkt) == nil {
			for rest := e.Pkt[wire.HeaderLen:]; len(rest) > 0; {
				var d []byte
				d, rest = wire.NextBundled(rest)
				if ih, err := wire.ParseHeader(d); err == nil {
					id := [2]uint64{ih.Session, ih.Request}
					if fc.requestSeen[id] {
						fc.bundledAgain++
					}
					fc.requestSeen[id] = true
				}
			}
		}
		return
	case wire.TypeMapRequest:
		fc.mapRequests++
	case wire.TypeSessionOpen:
		if h.Flags&wire.FlagBundle != 0 {
			fc.flaggedOpens[e.Worker]++
		}
	}
	fc.seen = append(fc.seen, fakeSeen{h.Type, h.Session, h.Request, h.Ack, e.Worker})
	fc.requestSeen[[2]uint64{h.Session, h.Request}] = true
	switch h.Type {
	case wire.TypeMapRequest, wire.TypeSessionOpen:
		return
	}
	if s := fc.sessions[h.Session]; s != nil {
		s.addr = e.Peer
	} else {
		fc.sessions[h.Session] = &fakeSession{id: h.Session, addr: e.Peer}
	}
	if h.Type == wire.TypeKeepalive || h.Type == wire.TypeRevokeAck {
		return
	}
	key := fakeReq{h.Session, h.Request}
	body := fmt.Sprintf("%v %x", h.Type, e.Pkt[wire.HeaderLen:])
	if prev, ok := fc.bodies[key]; ok && prev != body {
		fc.problem("request id %d reused: %s then %s", h.Request, prev, body)
	}
	fc.bodies[key] = body
}
