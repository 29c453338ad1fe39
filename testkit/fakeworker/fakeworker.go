// Package fakeworker is a cluster of fake tokend workers for testing
// clients (clientlib, clientlib/c) without etcd or the worker shell. Token
// semantics are not re-implemented here: every shard a fake worker serves is
// a real worker/table.Table, and every session a worker knows is a real
// worker/session.Session (reply cache, ack, REVOKE retransmission). What the
// fake adds is the rest of the wire protocol (wire/SPEC.md): sessions that
// live in the Cluster instead of etcd, the delegation map and its MAP pages,
// NOT_OWNER redirects, KEEPALIVE, and fault knobs.
//
// A Cluster runs one goroutine per worker, reading its net.PacketConn (a
// real loopback UDP socket by default, or a testkit/faultnet.Conn), and one
// ticker goroutine for deadlines, REVOKE retransmissions, grace periods and
// session expiry. Close stops them. Time comes from an internal/clock.Clock
// (real time unless injected).
//
// Workers authenticate (wire/SPEC.md section 20) unless Config.Insecure:
// SESSION_OPEN goes through a COOKIE round trip, and every datagram of a
// session is tagged with the session's key in both directions; datagrams
// whose tag does not verify, and those of sessions nobody knows, are
// dropped and counted (AuthFailures). The client keys the workers know are
// Config.Keys; ClientKey and WriteKeyFile give a client the default one.
//
// Workers take BUNDLEs and, to a session that offered bundles in its
// SESSION_OPEN, send what one step produces for it as BUNDLE_REPLYs
// (wire/SPEC.md section 22); Config.NoBundle plays an older worker that
// knows no bundles.
//
// What the fake does not do: leases of its own (a worker always vouches for
// Config.Validity unless told not to), etcd, handoffs of reply caches with a
// shard, deadlock detection across tokens. TEST ONLY: it is no reference
// for the worker.
package fakeworker

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker/session"
	"github.com/tokend/tokend/worker/table"
)

// Config describes a fake cluster. Zero fields take the defaults noted.
type Config struct {
	Workers     int           // number of workers (1)
	Shards      uint32        // shard count (16)
	SessionTTL  time.Duration // session TTL unless SESSION_OPEN asks for one (3 s)
	WorkerTTL   time.Duration // worker TTL reported in SESSION_OPEN (2 s)
	Validity    time.Duration // validity_ms of grants and KEEPALIVE replies (WorkerTTL − 50 ms)
	Grace       time.Duration // grace period of a recovered shard (1 s)
	RunsPerPage int           // runs per MAP reply (50)

	// NoExpiry keeps sessions until they close or EndSession ends them,
	// however long they go without a renewal.
	NoExpiry bool
	// NoRevokeRetransmit sends each REVOKE and GRANT_ASYNC once.
	NoRevokeRetransmit bool
	// ReplyCache bounds the cached replies of a session, as the worker's
	// Limits.ReplyCache (16384).
	ReplyCache int
	// Insecure makes the workers speak without authentication, as a
	// cluster started with --insecure: SESSION_OPEN is answered at once,
	// tags are zero and none is checked.
	Insecure bool
	// Keys are the client keys the workers know, by name; nil: one random
	// key named DefaultKeyName (ClientKey).
	Keys map[string]auth.Key

	// NoBundle plays a worker from before bundles (wire/SPEC.md section
	// 22): it drops a SESSION_OPEN with flag BUNDLE (as ErrBadFlags) and
	// every BUNDLE (an unknown type), and never sends a BUNDLE_REPLY.
	// Both are traced as Received, not handled.
	NoBundle bool

	// WaitSlack is added to every request's wait_ms, as if the request had
	// spent that long on the way: a client whose context ends with its
	// wait then cancels before the worker's TIMEOUT comes.
	WaitSlack time.Duration

	// Listen opens worker i's socket (default: UDP on 127.0.0.1, any port).
	Listen func(i int) (net.PacketConn, error)
	Clock  clock.Clock  // default clock.Real
	Seed   uint64       // seeds loss and REVOKE jitter
	Table  table.Config // default table.DefaultConfig()

	// Trace, if set, is told what the workers receive, apply and send.
	// It is called without the cluster's lock held (it may call the
	// Cluster's methods), from the workers' and the ticker's goroutines.
	Trace func(Event)
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	// Received: a datagram reached a worker (not muted, not lost). Header
	// is zero and Err set if its header did not parse. A BUNDLE is traced
	// as received, and then each datagram in it (if the bundle is well
	// formed and the worker takes bundles).
	Received EventKind = iota + 1
	// Applied: a token request was stepped into a shard's table and its
	// outcome was final or QUEUED (a retryable answer means not applied).
	Applied
	// Resent: a request seen before was answered from the reply cache.
	Resent
	// Expired: session Header.Session ended: its TTL ran out without a
	// renewal. Worker is -1.
	Expired
	// Sent: a worker is about to send Pkt to Peer, alone or in a
	// BUNDLE_REPLY (not traced itself).
	Sent
	// Handled: a worker has finished with a received datagram.
	Handled
)

// Event is one thing a worker did, for Config.Trace. Pkt is valid only
// during the call.
type Event struct {
	Kind   EventKind
	Worker int
	Peer   net.Addr
	Header wire.Header
	Pkt    []byte
	Err    error
}

// Start says how a shard starts at its new owner when the map changes.
type Start uint8

const (
	// Fresh: an empty table with no grace period; what the old owner held
	// is gone (its holders' RECLAIMs are refused).
	Fresh Start = iota
	// Recover: an empty table in a grace period of Config.Grace, in which
	// holders reclaim (SPEC §13), as after the old owner crashed.
	Recover
	// Handoff: the old owner's table is exported and imported at the new
	// epoch (SPEC §18, protocol 2): queued requests move with it, cached
	// at the new owner as requests answered QUEUED, and so do the
	// outcomes of requests answered QUEUED that their clients have not
	// acknowledged (other cached replies do not). A shard that had no
	// table, or whose table is in its grace period, is recovered instead.
	Handoff
)

// Grant is a grant as a fake worker's table holds it.
type Grant struct {
	Session    uint64
	Fence      uint64
	Mode       wire.Mode
	Start, End uint64
}

// DefaultKeyName names the client key a Cluster makes when Config.Keys is
// nil.
const DefaultKeyName = "test"

// CookieLifetime is how long a COOKIE answer stays valid, in seconds.
const CookieLifetime = 5

// NoOwner is the owner of a shard that no worker serves.
const NoOwner = -1

// Cluster is a set of fake workers sharing one delegation map and one set of
// sessions.
type Cluster struct {
	cfg      Config
	noBundle atomic.Bool // cfg.NoBundle, switched by SetNoBundle
	clk      clock.Clock
	start    time.Time
	trace    func(Event)
	done     chan struct{}
	wg       sync.WaitGroup

	mu       sync.Mutex // guards the fields below and every worker's state
	workers  []*worker
	version  uint64
	owner    []int
	epoch    []uint32
	hintless bool
	answers  map[wire.Type]wire.Status
	sessions map[uint64]*sess
	gone     map[uint64]*sess    // ended sessions, kept to answer them SESSION_EXPIRED
	opens    map[string][]byte   // key name and nonce, or addr and request id -> SESSION_OPEN reply
	cookies  *auth.Cookies       // nil: insecure
	keys     map[string]auth.Key // client keys by name
	keyName  string              // the key ClientKey returns
	authFail uint64              // datagrams dropped: bad tag, unknown key or session, bad cookie
	ignored  map[uint64]bool     // sessions whose datagrams are dropped
	rng      *rand.Rand
	drop     float64
	dup      float64
	closed   bool
	// Bundles received and sent, datagrams in them, bundles dropped whole.
	bundlesIn, bundledIn, bundlesOut, bundledOut, bundlesBad uint64
}

type sess struct {
	id      uint64
	ttl     time.Duration
	expires int64
	addr    net.Addr
	// The session's MACs, guarded by Cluster.mu like the rest (nil:
	// insecure).
	c2w, w2c *auth.MAC
	bundle   bool // its SESSION_OPEN offered bundles: it gets BUNDLE_REPLYs
}

type reqKey struct{ sess, req uint64 }

type shardFence struct {
	shard uint32
	fence uint64
}

type waiter struct {
	shard uint32
	name  string
}

type worker struct {
	idx     int
	conn    net.PacketConn
	addr    string
	muted   bool
	noVouch bool
	tables  map[uint32]*table.Table
	cores   map[uint64]*session.Session
	// What the tables hold, followed from their outputs (table has no
	// query API), for Grants and Waiters.
	held    map[shardFence]*heldGrant
	waiting map[reqKey]waiter
}

type heldGrant struct {
	Grant
	name string
}

// pkt is a datagram to send once the lock is released.
type pkt struct {
	w      int
	b      []byte
	to     net.Addr
	lost   bool // muted worker or loss: traced, not sent
	dup    bool // sent twice (a bundle it goes in is)
	bundle bool // may go in a BUNDLE_REPLY: a session that takes them, a type a bundle carries
}

// outbox collects what one locked step sends and traces.
type outbox struct {
	pkts   []pkt
	events []Event
	now    int64
}

// New starts a cluster. Every shard starts on worker 0 at epoch 1, map
// version 1. Close stops it.
func New(cfg Config) (*Cluster, error) {
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.Shards == 0 {
		cfg.Shards = 16
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 3 * time.Second
	}
	if cfg.WorkerTTL == 0 {
		cfg.WorkerTTL = 2 * time.Second
	}
	if cfg.Validity == 0 {
		cfg.Validity = cfg.WorkerTTL - 50*time.Millisecond
	}
	if cfg.Grace == 0 {
		cfg.Grace = time.Second
	}
	if cfg.RunsPerPage == 0 {
		cfg.RunsPerPage = 50
	}
	if cfg.Table == (table.Config{}) {
		cfg.Table = table.DefaultConfig()
	}
	if cfg.Listen == nil {
		cfg.Listen = func(int) (net.PacketConn, error) { return net.ListenPacket("udp4", "127.0.0.1:0") }
	}
	c := &Cluster{cfg: cfg, clk: clock.Or(cfg.Clock), trace: cfg.Trace, done: make(chan struct{}),
		version: 1, owner: make([]int, cfg.Shards), epoch: make([]uint32, cfg.Shards),
		answers: map[wire.Type]wire.Status{}, sessions: map[uint64]*sess{}, gone: map[uint64]*sess{},
		opens: map[string][]byte{}, ignored: map[uint64]bool{}, keys: map[string]auth.Key{},
		rng: rand.New(rand.NewPCG(cfg.Seed, 0xfa4e))}
	c.start = c.clk.Now()
	c.noBundle.Store(cfg.NoBundle)
	if err := c.setupKeys(); err != nil {
		return nil, err
	}
	for i := range cfg.Workers {
		conn, err := cfg.Listen(i)
		if err != nil {
			for _, w := range c.workers {
				_ = w.conn.Close()
			}
			return nil, fmt.Errorf("fakeworker: worker %d: %w", i, err)
		}
		c.workers = append(c.workers, &worker{idx: i, conn: conn, addr: conn.LocalAddr().String(),
			tables: map[uint32]*table.Table{}, cores: map[uint64]*session.Session{},
			held: map[shardFence]*heldGrant{}, waiting: map[reqKey]waiter{}})
	}
	for s := range c.epoch {
		c.epoch[s] = 1
		c.workers[0].tables[uint32(s)], _ = table.New(1, cfg.Table)
	}
	for _, w := range c.workers {
		c.wg.Add(1)
		go c.serve(w)
	}
	c.wg.Add(1)
	go c.tick()
	return c, nil
}

// setupKeys makes the cookie secret and the client keys. Called by New.
func (c *Cluster) setupKeys() error {
	if c.cfg.Insecure {
		return nil
	}
	secret, err := auth.NewKey()
	if err != nil {
		return fmt.Errorf("fakeworker: %w", err)
	}
	c.cookies = auth.NewCookies(secret, CookieLifetime)
	if c.cfg.Keys == nil {
		k, err := auth.NewKey()
		if err != nil {
			return fmt.Errorf("fakeworker: %w", err)
		}
		c.keys[DefaultKeyName], c.keyName = k, DefaultKeyName
		return nil
	}
	for name, k := range c.cfg.Keys {
		if !auth.ValidKeyName(name) {
			return fmt.Errorf("fakeworker: invalid key name %q", name)
		}
		c.keys[name] = k
		if c.keyName == "" || name < c.keyName {
			c.keyName = name
		}
	}
	return nil
}

// ClientKey returns the name and key a client authenticates with:
// DefaultKeyName's without Config.Keys, else the first name in order.
// ok is false without authentication (Config.Insecure) or keys.
func (c *Cluster) ClientKey() (name string, k auth.Key, ok bool) {
	if c.keyName == "" {
		return "", auth.Key{}, false
	}
	return c.keyName, c.keys[c.keyName], true
}

// WriteKeyFile writes ClientKey as a client key file at path (mode 0600),
// for clientlib.Config.KeyFile or the C client.
func (c *Cluster) WriteKeyFile(path string) error {
	name, k, ok := c.ClientKey()
	if !ok {
		return errors.New("fakeworker: no client key: the cluster does not authenticate")
	}
	return os.WriteFile(path, auth.FormatKeyFile(name, k), 0o600)
}

// AuthFailures returns how many datagrams the workers dropped because no
// key they hold verifies them: a bad tag, an unknown key, session or
// cookie.
func (c *Cluster) AuthFailures() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.authFail
}

// Seal tags datagram b (its header names the session) with the session's
// worker to client key, as its worker would: a test forging what a worker
// sends passes the client's checks with it.
func (c *Cluster) Seal(b []byte) error {
	h, err := wire.ParseHeader(b)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.Insecure {
		return nil
	}
	return c.seal(h.Session, b)
}

// Close stops the workers and waits for their goroutines.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.done)
	for _, w := range c.workers {
		_ = w.conn.Close()
	}
	c.wg.Wait()
}

// now is the tables' clock: monotonic nanoseconds since New.
func (c *Cluster) now() int64 { return int64(c.clk.Since(c.start)) }

// ---------------------------------------------------------------- knobs and queries

// Addr returns worker w's address.
func (c *Cluster) Addr(w int) string { return c.workers[w].addr }

// Workers returns the number of workers.
func (c *Cluster) Workers() int { return len(c.workers) }

// Conn returns worker w's socket (to send forged datagrams from it).
func (c *Cluster) Conn(w int) net.PacketConn { return c.workers[w].conn }

// Shards returns the shard count.
func (c *Cluster) Shards() uint32 { return c.cfg.Shards }

// MapVersion returns the map's version.
func (c *Cluster) MapVersion() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.version
}

// Owner returns the worker serving shard (NoOwner: none) and its epoch.
func (c *Cluster) Owner(shard uint32) (int, uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.owner[shard], c.epoch[shard]
}

// SetOwner delegates shard to worker w (NoOwner: nobody) at epoch, in a
// new map version; how says how w starts it.
func (c *Cluster) SetOwner(shard uint32, w int, epoch uint32, how Start) {
	c.Reassign(how, func(s uint32, o int, e uint32) (int, uint32) {
		if s == shard {
			return w, epoch
		}
		return o, e
	})
}

// Reassign changes the map in one new version: f gets every shard's owner
// and epoch and returns the new ones. A shard whose owner or epoch changes
// leaves its old owner (queued requests there are forgotten, final replies
// stay cached) and starts at the new one as how says.
func (c *Cluster) Reassign(how Start, f func(shard uint32, owner int, epoch uint32) (int, uint32)) {
	c.mu.Lock()
	ob := &outbox{now: c.now()}
	c.reassignLocked(ob, how, f)
	c.mu.Unlock()
	c.flush(ob)
}

func (c *Cluster) reassignLocked(ob *outbox, how Start, f func(uint32, int, uint32) (int, uint32)) {
	type outcome struct {
		id uint64
		r  session.Reply
	}
	for s := range c.cfg.Shards {
		o, e := f(s, c.owner[s], c.epoch[s])
		if o == c.owner[s] && e == c.epoch[s] {
			continue
		}
		var (
			snap     *table.Snapshot
			outcomes []outcome // unacknowledged outcomes of requests answered QUEUED
		)
		if old := c.owner[s]; old != NoOwner {
			w := c.workers[old]
			if t := w.tables[s]; t != nil && how == Handoff {
				snap, _ = t.Export() // nil in grace: recovered below
			}
			w.dropShard(s)
			for id, core := range w.cores {
				for _, r := range core.DropShards(func(x uint32) bool { return x == s }, nil) {
					if r.Exempt {
						outcomes = append(outcomes, outcome{id, r})
					}
				}
			}
		}
		c.owner[s], c.epoch[s] = o, e
		if o == NoOwner {
			continue
		}
		w := c.workers[o]
		var t *table.Table
		var err error
		switch {
		case how == Fresh:
			t, err = table.New(e, c.cfg.Table)
		case how == Handoff && snap != nil:
			t, err = table.Import(snap, e, c.cfg.Table)
			if err == nil {
				w.tables[s] = t
				w.adoptWaiters(c, s, e, t, snap.Waiters)
				w.apply(c, ob, s, t.Revokes(nil), nil) // the old owner's REVOKEs stopped
				for _, o := range outcomes {
					w.adoptOutcome(c, ob, o.id, e, o.r)
				}
			}
			for _, tok := range snap.Tokens {
				for _, g := range tok.Grants {
					w.held[shardFence{s, g.Fence}] = &heldGrant{Grant{g.Session, g.Fence, g.Mode, g.Start, g.End}, string(tok.Name)}
				}
			}
		default:
			t, err = table.NewRecovering(e, ob.now+int64(c.cfg.Grace), c.cfg.Table)
		}
		if err != nil {
			panic(fmt.Sprintf("fakeworker: shard %d at epoch %d: %v", s, e, err))
		}
		w.tables[s] = t
	}
	c.version++
}

// adoptWaiters caches the requests queued in table t, imported for shard
// at epoch, as requests answered QUEUED (whatever the session's ack), and
// follows them for Waiters. Caller holds mu.
func (w *worker) adoptWaiters(c *Cluster, shard, epoch uint32, t *table.Table, ws []table.WaiterState) {
	for _, q := range ws {
		if c.sessions[q.Session] == nil {
			continue
		}
		pos, ok := t.Queued(q.Session, q.Req)
		if !ok {
			continue
		}
		w.waiting[reqKey{q.Session, q.Req}] = waiter{shard, string(q.Name)}
		core := w.core(c, q.Session)
		if _, cached := core.Entry(q.Req); cached {
			continue
		}
		typ := wire.TypeAcquire
		if q.Conv != 0 {
			typ = wire.TypeConvert
		}
		h := wire.Header{Type: typ.Reply(), Session: q.Session, Request: q.Req, Shard: shard, Epoch: epoch}
		core.Adopt(q.Req, session.Entry{Type: typ, Shard: shard, Fence: q.Conv, Pending: true, Exempt: true,
			Pkt: w.encode(c, h, wire.StatusQueued, wire.Queued{Position: pos - 1})})
	}
}

// adoptOutcome caches at this worker, the shard's new owner, the
// unacknowledged outcome r of a request answered QUEUED by the old owner
// of session id, under the shard's new epoch. Caller holds mu.
func (w *worker) adoptOutcome(c *Cluster, ob *outbox, id uint64, epoch uint32, r session.Reply) {
	if c.sessions[id] == nil {
		return
	}
	core := w.core(c, id)
	if _, cached := core.Entry(r.Req); cached {
		return
	}
	h, err := wire.ParseHeader(r.Pkt)
	if err != nil {
		return
	}
	h.Epoch, h.MapVersion = epoch, c.version+1 // the map being made
	b := append(wire.AppendHeader(nil, h), r.Pkt[wire.HeaderLen:]...)
	if err := wire.Seal(b); err != nil {
		return
	}
	if err := c.seal(id, b); err != nil {
		return
	}
	e := r.Entry
	e.Pkt = b
	if core.Known(r.Req) {
		e.Expire = ob.now + session.Linger
	}
	core.Adopt(r.Req, e)
}

// dropShard forgets shard's table and what it held.
func (w *worker) dropShard(s uint32) {
	delete(w.tables, s)
	for k := range w.held {
		if k.shard == s {
			delete(w.held, k)
		}
	}
	for k, q := range w.waiting {
		if q.shard == s {
			delete(w.waiting, k)
		}
	}
}

// Restart kills workers ws and starts them again at once with nothing in
// memory (no tables, reply caches or REVOKEs): every shard they served
// comes back at epoch + 1 in a grace period, all in one new map version.
func (c *Cluster) Restart(ws ...int) {
	c.mu.Lock()
	ob := &outbox{now: c.now()}
	restarted := map[int]bool{}
	for _, w := range ws {
		restarted[w] = true
		clear(c.workers[w].cores)
	}
	c.reassignLocked(ob, Recover, func(_ uint32, o int, e uint32) (int, uint32) {
		if restarted[o] {
			return o, e + 1
		}
		return o, e
	})
	c.mu.Unlock()
	c.flush(ob)
}

// SetMuted makes worker w drop everything it receives and sends (hung, or
// cut off), while it stays in the map; false makes it answer again.
func (c *Cluster) SetMuted(w int, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.workers[w].muted = on
}

// SetNoBundle switches every worker to play one from before bundles
// (Config.NoBundle) or back, as if an older binary had taken over the
// same addresses: BUNDLEs and flagged opens are dropped, nothing is sent
// bundled.
func (c *Cluster) SetNoBundle(on bool) { c.noBundle.Store(on) }

// SetNoVouch makes worker w answer KEEPALIVE with validity 0, as a worker
// unsure of its lease does; it still serves token requests.
func (c *Cluster) SetNoVouch(w int, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.workers[w].noVouch = on
}

// SetHintless makes NOT_OWNER and STALE_EPOCH carry no owner address.
func (c *Cluster) SetHintless(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hintless = on
}

// Answer makes every worker answer requests of type typ with status st
// instead of serving them (after the ownership checks; not cached).
// SESSION_OPEN is answered so after its key, tag and cookie checks, tagged
// with the open key. StatusOK serves them again.
func (c *Cluster) Answer(typ wire.Type, st wire.Status) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st == wire.StatusOK {
		delete(c.answers, typ)
	} else {
		c.answers[typ] = st
	}
}

// SetLoss drops each datagram a worker receives or sends with probability
// drop, and duplicates each one it sends with probability dup.
func (c *Cluster) SetLoss(drop, dup float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop, c.dup = drop, dup
}

// Ignore makes every worker drop the datagrams of session id (a one-sided
// partition), or serve it again.
func (c *Cluster) Ignore(id uint64, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on {
		c.ignored[id] = true
	} else {
		delete(c.ignored, id)
	}
}

// EndSession ends session id everywhere, as the expiry of its etcd lease
// would.
func (c *Cluster) EndSession(id uint64) {
	c.mu.Lock()
	ob := &outbox{now: c.now()}
	c.endSessionLocked(ob, id)
	c.mu.Unlock()
	c.flush(ob)
}

// Revoke makes worker w revoke grant fence of name from session id, wanting
// it kept at most in mode, as a test's script step. The REVOKE is
// retransmitted until acknowledged like any other (one outstanding per
// grant and mode).
func (c *Cluster) Revoke(w int, id uint64, name string, fence uint64, mode wire.Mode) error {
	c.mu.Lock()
	ob := &outbox{now: c.now()}
	shard := wire.Shard([]byte(name), c.cfg.Shards)
	err := c.workers[w].revoke(c, ob, id, shard, fence, mode, table.WholeStart, table.WholeEnd, name)
	c.mu.Unlock()
	c.flush(ob)
	return err
}

// Grants returns the grants worker w's tables hold on name, by fence.
func (c *Cluster) Grants(w int, name string) []Grant {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gs []Grant
	for _, g := range c.workers[w].held {
		if g.name == name {
			gs = append(gs, g.Grant)
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].Fence < gs[j].Fence })
	return gs
}

// HolderOf returns the session holding fence at any worker.
func (c *Cluster) HolderOf(fence uint64) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.workers {
		for k, g := range w.held {
			if k.fence == fence {
				return g.Session, true
			}
		}
	}
	return 0, false
}

// Waiters returns how many requests wait on name at worker w.
func (c *Cluster) Waiters(w int, name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, q := range c.workers[w].waiting {
		if q.name == name {
			n++
		}
	}
	return n
}

// Revoking returns how many sessions worker w has REVOKEs in flight for.
func (c *Cluster) Revoking(w int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, core := range c.workers[w].cores {
		if core.Revoking() {
			n++
		}
	}
	return n
}

// NameOn returns a token name that starts with prefix and lies in a shard
// worker w serves.
func (c *Cluster) NameOn(prefix string, w int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := 0; ; k++ {
		n := fmt.Sprintf("%s-%d", prefix, k)
		if c.owner[wire.Shard([]byte(n), c.cfg.Shards)] == w {
			return n
		}
	}
}

// ---------------------------------------------------------------- goroutines

func (c *Cluster) serve(w *worker) {
	defer c.wg.Done()
	buf := make([]byte, wire.MaxDatagram+1)
	for {
		n, from, err := w.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || c.isDone() {
				return
			}
			continue
		}
		b := buf[:n]
		c.mu.Lock()
		lost := w.muted || (c.drop > 0 && c.rng.Float64() < c.drop)
		c.mu.Unlock()
		if lost {
			continue
		}
		h, herr := wire.ParseHeader(b)
		c.emit(Event{Kind: Received, Worker: w.idx, Peer: from, Header: h, Pkt: b, Err: herr})
		ob := &outbox{}
		switch {
		case herr != nil:
		case c.noBundle.Load() && (h.Type == wire.TypeBundle || h.Type == wire.TypeSessionOpen && h.Flags&wire.FlagBundle != 0):
			// An older worker: unknown type, unknown flag.
		case h.Type == wire.TypeBundle:
			c.bundleIn(w, ob, h, b, from)
		default:
			c.mu.Lock()
			ob.now = c.now()
			if !w.muted {
				w.handle(c, ob, h, b, from)
			}
			c.mu.Unlock()
		}
		c.flush(ob)
		c.emit(Event{Kind: Handled, Worker: w.idx, Peer: from, Header: h, Pkt: b, Err: herr})
	}
}

// bundleIn serves BUNDLE b: each datagram in it is traced and handled as
// if it had come alone, and what they produce is sent in one flush (so
// in BUNDLE_REPLYs to a session that takes them). A bundle of a bad
// layout is dropped whole.
func (c *Cluster) bundleIn(w *worker, ob *outbox, h wire.Header, b []byte, from net.Addr) {
	if err := wire.CheckBundle(h, b); err != nil {
		c.mu.Lock()
		c.bundlesBad++
		c.mu.Unlock()
		return
	}
	c.mu.Lock()
	c.bundlesIn++
	c.mu.Unlock()
	for e := b[wire.HeaderLen:]; len(e) > 0; {
		var d []byte
		d, e = wire.NextBundled(e)
		dh, err := wire.ParseHeader(d)
		c.emit(Event{Kind: Received, Worker: w.idx, Peer: from, Header: dh, Pkt: d, Err: err})
		c.mu.Lock()
		c.bundledIn++
		ob.now = c.now()
		if err == nil && !w.muted {
			w.handle(c, ob, dh, d, from)
		}
		c.mu.Unlock()
	}
}

// Bundles returns how many BUNDLEs the workers took (and the datagrams in
// them) and dropped whole, and how many BUNDLE_REPLYs they sent (and the
// datagrams in them).
func (c *Cluster) Bundles() (in, bundledIn, bad, out, bundledOut uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundlesIn, c.bundledIn, c.bundlesBad, c.bundlesOut, c.bundledOut
}

func (c *Cluster) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

func (c *Cluster) tick() {
	defer c.wg.Done()
	tk, ch := c.clk.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	var outs []table.Output
	var pkts []session.Due
	for {
		select {
		case <-c.done:
			return
		case <-ch:
		}
		c.mu.Lock()
		ob := &outbox{now: c.now()}
		if !c.cfg.NoExpiry {
			for id, s := range c.sessions {
				if ob.now >= s.expires {
					ob.events = append(ob.events, Event{Kind: Expired, Worker: -1, Header: wire.Header{Session: id}})
					c.endSessionLocked(ob, id)
				}
			}
		}
		for _, w := range c.workers {
			for shard, t := range w.tables {
				if d, ok := t.NextDeadline(); ok && d <= ob.now {
					outs = t.Tick(ob.now, outs[:0])
					w.apply(c, ob, shard, outs, nil)
				}
			}
			for id, core := range w.cores {
				pkts = core.Tick(ob.now, pkts[:0])
				if c.cfg.NoRevokeRetransmit {
					continue
				}
				if s := c.sessions[id]; s != nil {
					for _, p := range pkts {
						c.send(ob, w, p.Pkt, s.addr)
					}
				}
			}
		}
		c.mu.Unlock()
		c.flush(ob)
	}
}

// send queues b from worker w to to, applying mute and loss. Caller holds mu.
func (c *Cluster) send(ob *outbox, w *worker, b []byte, to net.Addr) {
	if to == nil || b == nil {
		return
	}
	lost := w.muted || (c.drop > 0 && c.rng.Float64() < c.drop)
	bundle := false
	if len(b) >= wire.HeaderLen && wire.Bundles(wire.TypeBundleReply, wire.Type(b[3])) {
		s := c.sessions[binary.BigEndian.Uint64(b[8:])]
		bundle = s != nil && s.bundle && !c.noBundle.Load()
	}
	dup := !lost && c.dup > 0 && c.rng.Float64() < c.dup
	ob.pkts = append(ob.pkts, pkt{w: w.idx, b: b, to: to, lost: lost, dup: dup, bundle: bundle})
}

// flush traces and sends what a locked step produced: the datagrams for
// one session at one address that may be bundled go in BUNDLE_REPLYs, in
// their order. Caller does not hold mu.
func (c *Cluster) flush(ob *outbox) {
	for _, e := range ob.events {
		c.emit(e)
	}
	used := make([]bool, len(ob.pkts))
	for i, p := range ob.pkts {
		if p.lost || used[i] {
			continue
		}
		group := []pkt{p} // what goes in one UDP datagram
		if p.bundle {
			size := wire.HeaderLen + wire.BundleEntryOverhead + len(p.b)
			for j := i + 1; j < len(ob.pkts); j++ {
				q := ob.pkts[j]
				if q.lost || used[j] || q.w != p.w || addrPortOf(q.to) != addrPortOf(p.to) ||
					binary.BigEndian.Uint64(q.b[8:]) != binary.BigEndian.Uint64(p.b[8:]) {
					continue
				}
				if !q.bundle || !wire.BundleFits(size, len(q.b)) {
					break // it starts the next bundle, or goes alone: order kept
				}
				size += wire.BundleEntryOverhead + len(q.b)
				group = append(group, q)
				used[j] = true
			}
		}
		out := p.b
		if len(group) > 1 {
			h, _ := wire.ParseHeader(p.b)
			out = wire.AppendHeader(nil, wire.Header{Type: wire.TypeBundleReply, Session: h.Session,
				Request: h.Request, MapVersion: h.MapVersion})
			for _, q := range group {
				out = wire.AppendBundled(out, q.b)
				p.dup = p.dup || q.dup
			}
			if err := wire.Seal(out); err != nil {
				panic(fmt.Sprintf("fakeworker: bundle: %v", err))
			}
			c.mu.Lock()
			c.bundlesOut++
			c.bundledOut += uint64(len(group))
			c.mu.Unlock()
		}
		for range 1 + btoi(p.dup) {
			for _, q := range group {
				h, _ := wire.ParseHeader(q.b)
				c.emit(Event{Kind: Sent, Worker: q.w, Peer: q.to, Header: h, Pkt: q.b})
			}
			_, _ = c.workers[p.w].conn.WriteTo(out, p.to)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (c *Cluster) emit(e Event) {
	if c.trace != nil {
		c.trace(e)
	}
}

// ---------------------------------------------------------------- serving

// handle serves one datagram with header h. Caller holds mu.
func (w *worker) handle(c *Cluster, ob *outbox, h wire.Header, b []byte, from net.Addr) {
	if !h.Type.IsRequest() {
		return
	}
	if h.Type == wire.TypeSessionOpen {
		w.open(c, ob, h, b, from)
		return
	}
	if h.Type == wire.TypeMapRequest && (h.Session == 0 || c.cfg.Insecure) {
		w.mapRequest(c, ob, h, b, from)
		return
	}
	if c.ignored[h.Session] {
		return
	}
	s := c.sessions[h.Session]
	if s == nil {
		// An ended session's datagrams are answered SESSION_EXPIRED, with
		// its key; without authentication unknown ones UNKNOWN_SESSION.
		// Authenticating workers ignore what no key they hold verifies.
		g := c.gone[h.Session]
		if !c.cfg.Insecure && (g == nil || g.c2w == nil || !g.c2w.Verify(b)) {
			c.authFail++
			return
		}
		if h.Type != wire.TypeRevokeAck {
			st := wire.StatusUnknownSession
			if g != nil {
				st = wire.StatusSessionExpired
			}
			c.send(ob, w, w.errReply(c, h.Reply(), st), from)
		}
		return
	}
	if s.c2w != nil && !s.c2w.Verify(b) {
		c.authFail++
		return
	}
	if h.Type == wire.TypeMapRequest {
		w.mapRequest(c, ob, h, b, from)
		return
	}
	core := w.core(c, s.id)
	v, cached := core.Decide(h)
	if v == session.Stale {
		return
	}
	s.addr = from
	switch h.Type {
	case wire.TypeKeepalive:
		w.keepalive(c, ob, s, core, h, b)
	case wire.TypeSessionClose:
		var m wire.Empty
		if m.Decode(h, b) != nil {
			c.send(ob, w, w.errReply(c, h.Reply(), wire.StatusBadRequest), from)
			return
		}
		core.Ack(h.Ack, ob.now)
		c.endSessionLocked(ob, s.id)
		c.send(ob, w, w.encode(c, h.Reply(), wire.StatusOK, wire.Empty{}), from)
	case wire.TypeRevokeAck:
		var m wire.RevokeAck
		if m.Decode(h, b) == nil {
			core.Ack(h.Ack, ob.now)
			core.AckRevoke(m.Target)
		}
	case wire.TypeGrantAck:
		var m wire.GrantAck
		if m.Decode(h, b) == nil {
			core.Ack(h.Ack, ob.now)
			core.Mark(h.Request)
			core.AckOutcome(m.Target)
		}
	default:
		w.token(c, ob, s, core, h, b, v, cached)
	}
}

func (w *worker) mapRequest(c *Cluster, ob *outbox, h wire.Header, b []byte, from net.Addr) {
	var m wire.MapRequest
	if m.Decode(h, b) == nil {
		c.send(ob, w, w.encode(c, h.Reply(), wire.StatusOK, c.mapPage(m.FirstShard)), from)
	}
}

// open serves SESSION_OPEN (wire/SPEC.md sections 11 and 20): with
// authentication, a COOKIE answer first; then, for the open with the
// cookie, the key, the tag and the cookie are checked (a failure is
// dropped and counted; a stale or foreign cookie gets a fresh COOKIE), a
// retransmission gets the same answer, and a new session gets an OK
// tagged with its session key. Answer(TypeSessionOpen, st) makes the
// checked open answered st, tagged with the open key.
func (w *worker) open(c *Cluster, ob *outbox, h wire.Header, b []byte, from net.Addr) {
	var m wire.SessionOpen
	if m.Decode(h, b) != nil {
		return
	}
	key := fmt.Sprintf("%v/%d", from, h.Request)
	var ck auth.Key
	if !c.cfg.Insecure {
		if len(m.KeyName) == 0 {
			c.send(ob, w, w.encode(c, h.Reply(), wire.StatusBadRequest,
				wire.ErrorBody{Message: []byte("this cluster requires a client key")}), from)
			return
		}
		name, nonce, ap := string(m.KeyName), auth.Nonce(m.Nonce), addrPortOf(from)
		secs := uint32(ob.now/int64(time.Second)) + 1
		cookie := func() []byte {
			return w.encode(c, h.Reply(), wire.StatusCookie, wire.Cookie{Cookie: c.cookies.Mint(secs, ap, nonce, name)})
		}
		if len(m.Cookie) == 0 {
			c.send(ob, w, cookie(), from)
			return
		}
		k, ok := c.keys[name]
		if !ok || !auth.NewMAC(auth.OpenKey(k), auth.ClientToWorker).Verify(b) {
			c.authFail++
			return
		}
		if err := c.cookies.Check(secs, ap, nonce, name, m.Cookie); err != nil {
			c.authFail++
			c.send(ob, w, cookie(), from)
			return
		}
		key, ck = "key "+name+"/"+hex.EncodeToString(m.Nonce[:]), k
	}
	if r, ok := c.opens[key]; ok {
		c.send(ob, w, r, from)
		return
	}
	if st, ok := c.answers[wire.TypeSessionOpen]; ok {
		r := w.errReply(c, h.Reply(), st)
		if !c.cfg.Insecure {
			_ = auth.NewMAC(auth.OpenKey(ck), auth.WorkerToClient).Seal(r)
		}
		c.send(ob, w, r, from)
		return
	}
	id, err := auth.NewSessionID()
	for err == nil && (c.sessions[id] != nil || c.gone[id] != nil) {
		id, err = auth.NewSessionID()
	}
	if err != nil {
		return
	}
	s := &sess{id: id, ttl: c.cfg.SessionTTL, addr: from, bundle: m.Bundle && !c.noBundle.Load()}
	if m.TTLMs != 0 {
		s.ttl = time.Duration(m.TTLMs) * time.Millisecond
	}
	body := wire.SessionReply{TTLMs: ms(s.ttl), ShardCount: c.cfg.Shards, GraceMs: ms(c.cfg.Grace),
		WorkerTTLMs: ms(c.cfg.WorkerTTL), Bundle: s.bundle}
	if !c.cfg.Insecure {
		wn, err := auth.NewNonce()
		if err != nil {
			return
		}
		body.WorkerNonce = wn
		sk := auth.SessionKey(ck, auth.Nonce(m.Nonce), wn, id)
		s.c2w, s.w2c = auth.NewMAC(sk, auth.ClientToWorker), auth.NewMAC(sk, auth.WorkerToClient)
	}
	s.expires = ob.now + int64(s.ttl)
	c.sessions[s.id] = s
	rh := h.Reply()
	rh.Session = s.id
	r := w.encode(c, rh, wire.StatusOK, body)
	c.opens[key] = r
	c.send(ob, w, r, from)
}

func (w *worker) keepalive(c *Cluster, ob *outbox, s *sess, core *session.Session, h wire.Header, b []byte) {
	var m wire.Keepalive
	if m.Decode(h, b) != nil {
		c.send(ob, w, w.errReply(c, h.Reply(), wire.StatusBadRequest), s.addr)
		return
	}
	core.Ack(h.Ack, ob.now)
	r := wire.KeepaliveReply{ValidityMs: ms(c.cfg.Validity)}
	if w.noVouch {
		r.ValidityMs = 0
	}
	if m.Renew {
		s.expires = ob.now + int64(s.ttl)
		r.SessionTTLMs = ms(s.ttl)
	}
	for _, e := range m.Entries {
		st := wire.StatusOK
		switch {
		case e.Shard >= c.cfg.Shards || c.owner[e.Shard] != w.idx:
			st = wire.StatusNotOwner
		case c.epoch[e.Shard] != e.Epoch:
			st = wire.StatusStaleEpoch
		}
		r.Statuses = append(r.Statuses, st)
	}
	c.send(ob, w, w.encode(c, h.Reply(), wire.StatusOK, r), s.addr)
}

// token serves ACQUIRE, RELEASE, CONVERT, CANCEL and RECLAIM, as the
// worker's handleToken does.
func (w *worker) token(c *Cluster, ob *outbox, s *sess, core *session.Session, h wire.Header, b []byte, v session.Verdict, cached []byte) {
	rh := h.Reply()
	switch v {
	case session.Reused:
		c.send(ob, w, w.errReply(c, rh, wire.StatusBadRequest), s.addr)
		return
	case session.Resend:
		core.Repolled(h.Request)
		ob.events = append(ob.events, Event{Kind: Resent, Worker: w.idx, Peer: s.addr, Header: h, Pkt: append([]byte(nil), b...)})
		c.send(ob, w, cached, s.addr)
		return
	}
	var (
		in    table.Input
		name  []byte
		batch []table.BatchEntry
		err   error
	)
	if h.Type == wire.TypeAcquireBatch {
		batch, err = decodeBatch(h, b, c.cfg.Shards)
	} else {
		in, name, err = table.Decode(h, b, ob.now+int64(c.cfg.WaitSlack))
	}
	if err != nil {
		c.send(ob, w, w.errReply(c, rh, wire.StatusBadRequest), s.addr)
		return
	}
	core.Ack(h.Ack, ob.now)
	if name != nil && wire.Shard(name, c.cfg.Shards) != h.Shard {
		c.send(ob, w, w.errReply(c, rh, wire.StatusBadRequest), s.addr)
		return
	}
	if h.Shard >= c.cfg.Shards || c.owner[h.Shard] != w.idx || c.epoch[h.Shard] != h.Epoch {
		st := wire.StatusNotOwner
		hint := wire.NotOwner{Message: []byte("shard not served here")}
		if h.Shard < c.cfg.Shards {
			if o := c.owner[h.Shard]; o == w.idx {
				st, hint.Message = wire.StatusStaleEpoch, []byte("stale shard epoch")
			}
			if o := c.owner[h.Shard]; o != NoOwner && !c.hintless {
				hint.Addr = []byte(c.workers[o].addr)
			}
			hint.Epoch = c.epoch[h.Shard]
		}
		c.send(ob, w, w.encode(c, rh, st, hint), s.addr)
		return
	}
	if v == session.Unknown {
		// Below the ack and not cached: not applied here (wire/SPEC.md
		// section 18).
		c.send(ob, w, w.errReply(c, rh, wire.StatusUnknownRequest), s.addr)
		return
	}
	if st, ok := c.answers[h.Type]; ok {
		c.send(ob, w, w.errReply(c, rh, st), s.addr)
		return
	}
	if core.OverLimit(h) {
		c.send(ob, w, w.errReply(c, rh, wire.StatusLimit), s.addr)
		return
	}
	if batch != nil {
		outs := w.tables[h.Shard].AcquireAll(s.id, h.Request, batch, ob.now, nil)
		w.batchReply(c, ob, h.Shard, outs, core, h, s.addr)
		w.apply(c, ob, h.Shard, outs, nil)
		return
	}
	in.Session, in.Req = s.id, h.Request
	t := w.tables[h.Shard]
	outs := t.Step(in, ob.now, nil)
	w.apply(c, ob, h.Shard, outs, &request{core: core, h: h, b: b, in: in, to: s.addr})
}

// request is the request a Step answers.
type request struct {
	core *session.Session
	h    wire.Header
	b    []byte
	in   table.Input
	to   net.Addr
}

// apply turns a Step's or Tick's outputs into datagrams and follows what
// the table holds. Caller holds mu.
func (w *worker) apply(c *Cluster, ob *outbox, shard uint32, outs []table.Output, rq *request) {
	for i := range outs {
		o := &outs[i]
		switch o.Kind {
		case table.KindReply:
			if rq != nil {
				w.reply(c, ob, shard, o, rq)
			}
		case table.KindAsync:
			w.async(c, ob, shard, o)
		case table.KindRevoke:
			_ = w.revoke(c, ob, o.Session, shard, o.Fence, o.Mode, o.Start, o.End, o.Name)
		}
	}
}

func (w *worker) reply(c *Cluster, ob *outbox, shard uint32, o *table.Output, rq *request) {
	h := rq.h
	rh := h.Reply()
	rh.Status = o.Status
	p := w.outcome(c, rh, o)
	if p == nil {
		return
	}
	w.follow(shard, h.Type, rq.in, o)
	oc := session.Outcome{Req: h.Request, Type: h.Type, Shard: shard, Fence: rq.in.Fence, Status: o.Status, Pkt: p}
	if o.Released {
		oc.Released = o.Fence
	}
	rq.core.Applied(oc)
	if o.Status == wire.StatusOK && h.Type == wire.TypeCancel {
		if typ, ok := rq.core.CancelTarget(rq.in.Target); ok {
			th := wire.Header{Type: typ.Reply(), Session: h.Session, Request: rq.in.Target,
				Shard: shard, Epoch: c.epoch[shard]}
			rq.core.Settle(rq.in.Target, wire.StatusCanceled, w.errReply(c, th, wire.StatusCanceled), ob.now)
		}
	}
	if !o.Status.Retryable() {
		ob.events = append(ob.events, Event{Kind: Applied, Worker: w.idx, Peer: rq.to, Header: h,
			Pkt: append([]byte(nil), rq.b...)})
	}
	c.send(ob, w, p, rq.to)
}

// follow records what a reply changed in the table, for Grants and Waiters.
func (w *worker) follow(shard uint32, typ wire.Type, in table.Input, o *table.Output) {
	if o.Status == wire.StatusQueued {
		w.waiting[reqKey{o.Session, o.Req}] = waiter{shard, o.Name}
		return
	}
	if o.Status != wire.StatusOK {
		return
	}
	switch typ {
	case wire.TypeAcquire, wire.TypeReclaim:
		w.grant(shard, o)
	case wire.TypeConvert:
		delete(w.held, shardFence{shard, in.Fence})
		w.grant(shard, o)
	case wire.TypeRelease:
		if in.Partial && o.End != 0 { // a full release reports no range
			w.grant(shard, o) // a partial release: the rest, same fence
			return
		}
		delete(w.held, shardFence{shard, in.Fence})
	case wire.TypeCancel:
		if o.Released {
			delete(w.held, shardFence{shard, o.Fence})
		}
	}
}

func (w *worker) grant(shard uint32, o *table.Output) {
	w.held[shardFence{shard, o.Fence}] = &heldGrant{Grant{o.Session, o.Fence, o.Mode, o.Start, o.End}, o.Name}
}

func (w *worker) async(c *Cluster, ob *outbox, shard uint32, o *table.Output) {
	k := reqKey{o.Session, o.Req}
	delete(w.waiting, k)
	core, s := w.cores[o.Session], c.sessions[o.Session]
	if core == nil || s == nil {
		return
	}
	e, isCached := core.Entry(o.Req)
	typ := wire.TypeAcquire
	if isCached {
		typ = e.Type
	}
	if o.Status == wire.StatusOK {
		if typ == wire.TypeConvert {
			delete(w.held, shardFence{shard, e.Fence})
		}
		w.grant(shard, o)
	}
	rh := wire.Header{Type: typ.Reply(), Status: o.Status, Session: o.Session, Request: o.Req, Shard: shard,
		Epoch: c.epoch[shard]}
	p := w.outcome(c, rh, o)
	if o.Status == wire.StatusOK {
		core.Settle(o.Req, o.Status, p, ob.now)
		ah := rh
		ah.Type = wire.TypeGrantAsync
		ap := w.outcome(c, ah, o)
		if ap != nil {
			core.GrantAsync(o.Req, shard, o.Fence, ap, ob.now)
		}
		c.send(ob, w, ap, s.addr)
		return
	}
	if !isCached || p == nil {
		return
	}
	core.Settle(o.Req, o.Status, p, ob.now)
	c.send(ob, w, p, s.addr)
}

// revoke starts a REVOKE of grant fence from session id (one outstanding
// per grant, mode and range). Caller holds mu.
func (w *worker) revoke(c *Cluster, ob *outbox, id uint64, shard uint32, fence uint64, mode wire.Mode, start, end uint64, name string) error {
	s := c.sessions[id]
	if s == nil {
		return fmt.Errorf("fakeworker: no session %#x", id)
	}
	core := w.core(c, id)
	k := session.RevokeKey{Shard: shard, Fence: fence, Mode: mode, Start: start, End: end}
	var encErr error
	p, _, err := core.Revoke(k, ob.now, func(seq uint64) ([]byte, error) {
		h := wire.Header{Type: wire.TypeRevoke, Session: id, Request: seq, Shard: shard, Epoch: c.epoch[shard],
			MapVersion: c.version}
		b, err := wire.Revoke{Fence: fence, Mode: mode, Start: start, End: end, Name: []byte(name)}.Append(nil, h)
		if err == nil {
			err = c.seal(h.Session, b)
		}
		encErr = err
		return b, err
	})
	if err != nil || encErr != nil {
		return errors.Join(err, encErr)
	}
	c.send(ob, w, p, s.addr)
	return nil
}

// core returns the worker's state of session id, made on first use with
// the worker's bounds (SPEC §11).
func (w *worker) core(c *Cluster, id uint64) *session.Session {
	core := w.cores[id]
	if core == nil {
		n := c.cfg.ReplyCache
		if n <= 0 {
			n = 16384
		}
		core = session.New(session.Config{Cap: n, Hard: 2 * n, Seed: c.cfg.Seed ^ id})
		w.cores[id] = core
	}
	return core
}

// endSessionLocked ends session id at every worker. Caller holds mu.
func (c *Cluster) endSessionLocked(ob *outbox, id uint64) {
	if s := c.sessions[id]; s != nil {
		c.gone[id] = s
	} else if c.gone[id] == nil {
		c.gone[id] = &sess{id: id}
	}
	delete(c.sessions, id)
	for _, w := range c.workers {
		for shard, t := range w.tables {
			outs := t.Step(table.Input{Op: table.OpEndSession, Session: id}, ob.now, nil)
			w.apply(c, ob, shard, outs, nil)
		}
		delete(w.cores, id)
		for k, g := range w.held {
			if g.Session == id {
				delete(w.held, k)
			}
		}
		for k := range w.waiting {
			if k.sess == id {
				delete(w.waiting, k)
			}
		}
	}
}

// ---------------------------------------------------------------- encoding

type appender interface {
	Append([]byte, wire.Header) ([]byte, error)
}

// encode encodes body under reply header h with status st and the map
// version, tagged with the session's key if h names one.
func (w *worker) encode(c *Cluster, h wire.Header, st wire.Status, body appender) []byte {
	h.Status, h.MapVersion = st, c.version
	b, err := body.Append(nil, h)
	if err == nil {
		err = c.seal(h.Session, b)
	}
	if err != nil {
		panic(fmt.Sprintf("fakeworker: encoding %v %v: %v", h.Type, st, err))
	}
	return b
}

// seal tags b, a datagram of session id, with the session's worker to
// client key; without authentication, or for session 0, the zero tag
// stays. Caller holds mu.
func (c *Cluster) seal(id uint64, b []byte) error {
	if c.cfg.Insecure || id == 0 {
		return nil
	}
	s := c.sessions[id]
	if s == nil {
		s = c.gone[id]
	}
	if s == nil || s.w2c == nil {
		return fmt.Errorf("fakeworker: no key for session %#x", id)
	}
	return s.w2c.Seal(b)
}

// addrPortOf is a's address and port, IPv4 unmapped.
func addrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	if ua, ok := a.(*net.UDPAddr); ok {
		ap = ua.AddrPort()
	} else if a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (w *worker) errReply(c *Cluster, h wire.Header, st wire.Status) []byte {
	return w.encode(c, h, st, wire.ErrorBody{Message: []byte(st.Text())})
}

// outcome encodes a table outcome under h (type and status set).
func (w *worker) outcome(c *Cluster, h wire.Header, o *table.Output) []byte {
	switch {
	case h.Status == wire.StatusOK && (h.Type == wire.TypeReleaseReply || h.Type == wire.TypeCancelReply):
		return w.encode(c, h, h.Status, wire.Empty{})
	case h.Status == wire.StatusOK:
		g := wire.Grant{Fence: o.Fence, Mode: o.Mode, ValidityMs: ms(c.cfg.Validity), Start: o.Start, End: o.End,
			ValueFlags: uint8(o.VFlags)}
		if o.VFlags&table.ValueValid != 0 {
			g.Value = []byte(o.Value)
		}
		return w.encode(c, h, h.Status, g)
	case h.Status == wire.StatusQueued:
		return w.encode(c, h, h.Status, wire.Queued{Position: max(o.Position, 1) - 1})
	}
	return w.errReply(c, h, h.Status)
}

// mapPage is the MAP reply from shard first on: at most RunsPerPage runs,
// and the workers they name.
func (c *Cluster) mapPage(first uint32) wire.MapReply {
	m := wire.MapReply{MapVersion: c.version, ShardCount: c.cfg.Shards, GraceMs: ms(c.cfg.Grace)}
	listed := map[int]bool{}
	for s := first; s < c.cfg.Shards && len(m.Runs) < c.cfg.RunsPerPage; {
		e := s + 1
		for e < c.cfg.Shards && c.owner[e] == c.owner[s] && c.epoch[e] == c.epoch[s] {
			e++
		}
		run := wire.MapRun{First: s, Count: e - s, Worker: wire.NoWorker, Epoch: c.epoch[s]}
		if o := c.owner[s]; o != NoOwner {
			run.Worker = uint16(o)
			listed[o] = true
		}
		m.Runs = append(m.Runs, run)
		s = e
	}
	for i, w := range c.workers {
		if listed[i] {
			m.Workers = append(m.Workers, wire.MapWorker{Index: uint16(i), Addr: []byte(w.addr), ID: []byte(fmt.Sprintf("fake-%d", i))})
		}
	}
	return m
}

func ms(d time.Duration) uint32 { return uint32(d / time.Millisecond) }

// decodeBatch decodes an ACQUIRE_BATCH whose entries must all be in the
// header's shard (wire/SPEC.md section 21).
func decodeBatch(h wire.Header, b []byte, shards uint32) ([]table.BatchEntry, error) {
	var m wire.AcquireBatch
	if err := m.Decode(h, b); err != nil {
		return nil, err
	}
	out := make([]table.BatchEntry, len(m.Entries))
	for i, e := range m.Entries {
		if wire.Shard(e.Name, shards) != h.Shard {
			return nil, wire.ErrBadBody
		}
		out[i] = table.BatchEntry{Name: e.Name, Mode: e.Mode, Start: e.Start, End: e.End}
	}
	return out, nil
}

// batchReply answers an ACQUIRE_BATCH from AcquireAll's replies, as the
// worker's handleBatch does. Caller holds mu.
func (w *worker) batchReply(c *Cluster, ob *outbox, shard uint32, outs []table.Output, core *session.Session,
	h wire.Header, to net.Addr) {
	grants, failed := table.BatchGrants(outs, nil)
	rh := h.Reply()
	var p []byte
	st := wire.StatusOK
	switch {
	case failed == nil:
		p = w.encode(c, rh, st, wire.GrantBatch{ValidityMs: ms(c.cfg.Validity), Grants: grants})
		for i := range outs {
			if outs[i].Kind == table.KindReply {
				w.grant(shard, &outs[i])
			}
		}
	case failed.Status == wire.StatusConflict:
		st = failed.Status
		p = w.encode(c, rh, st, wire.BatchConflict{Entry: uint8(failed.Entry)})
	default:
		st = failed.Status
		p = w.errReply(c, rh, st)
	}
	core.Applied(session.Outcome{Req: h.Request, Type: h.Type, Shard: shard, Status: st, Pkt: p})
	c.send(ob, w, p, to)
}
