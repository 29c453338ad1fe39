// Package worker is tokend's stateless UDP token server: the thin shell
// around pure cores that take the time as an argument. worker/table is one
// shard's tokens, worker/session what the worker keeps of a client session,
// worker/ownership which shards to serve, hand off, pull or recover when the
// map changes, worker/grace when a recovered shard's grace period may end
// early (every live session said DONE or ended: wire/SPEC.md section 13;
// earlygrace.go), and worker/vouch how long the worker may vouch for its
// own lease. The shell registers in etcd under that lease, serves the shards
// the coordinator delegates to it, keeps all token state in memory, and
// serves a shard only while it is sure it owns it: its delegation is
// current and its own lease has not run out by its local clock (invariant
// 5). It reads the time from Config.Clock.
//
// # Goroutines
//
// A started Worker runs, all tied to one context that Close cancels and
// waits for:
//
//   - the receive loop (serve.go): reads up to 64 datagrams per ReadBatch,
//     stamps the batch with one reading of Config.Clock, handles it under one lock and
//     sends all replies with one WriteBatch. It never waits for etcd. A
//     BUNDLE's datagrams are handled one by one as if each had come alone,
//     and what any outbox sends to a session that takes bundles goes out
//     packed into BUNDLE_REPLYs (bundle.go, wire/SPEC.md section 22).
//   - the timer loop (timer.go): wakes at the earliest table deadline
//     (queued request timeouts, end of a grace period) or REVOKE
//     retransmission, runs Tick and sends what comes out.
//   - the end loop (ending.go): drops the grants and waiters of ended
//     sessions too big to end at once (over 2048 in all), 2048 per hold
//     of the lock, so that requests are served in between.
//   - the etcd pool (etcd.go): a few goroutines behind a bounded queue that
//     open, renew and close sessions and look up unknown ones; each answers
//     its datagram when etcd answers. It also reads the live sessions and
//     registrations for recovered shards (earlygrace.go). A full queue drops the datagram
//     (counted "busy"); the client retransmits.
//   - three watchers (watch.go): the delegation map, the worker registry
//     (for owner hints and MAP replies) and the client sessions.
//   - the lease (lease.go; its supervisor in worker.go): keepalives, and, if etcd
//     reports the lease gone, dropping every table and session state and
//     registering again as a new incarnation.
//   - planned handoffs (handoff.go): a TCP server from which new owners pull
//     the final state of shards this worker gave up, and a pull loop that
//     asks previous owners for the shards a map change gave this worker
//     (one connection per previous owner), importing the state or, if that
//     fails, recovering the shards with a grace period (wire/SPEC.md
//     section 18). With protocol 2 the queued requests move too, and the
//     new owner answers them under their ids; an ACQUIRE or CONVERT below
//     a session's ack that it does not hold is answered UNKNOWN_REQUEST.
//     Drain (drain.go) marks the worker draining and waits
//     until it has handed everything off. The same TCP server answers the
//     leader's deadlock detector (deadlock.go, wire/SPEC.md section 19):
//     it lists the wait-for edges of the queued requests and answers the
//     victims it is sent DEADLOCK.
//
// # Authentication
//
// With Config.Auth (wire/SPEC.md section 20; authn.go): a SESSION_OPEN is
// answered a stateless cookie first, and opens a session only with that
// cookie and a MAC under the client's key; every later datagram of a
// session carries a MAC under the session key, checked before its body is
// read, and every datagram the worker sends to a session is sealed. The
// session key travels between workers sealed under the cluster key in the
// session document. Rate limits and the table of recent opens are the pure
// core worker/guard; the replay window is in worker/session.
//
// # State
//
// One mutex (Worker.mu) guards all mutable serving state: the shard tables,
// the sessions with their reply caches and pending revokes, the delegation
// map and the registry. On two cores one lock taken once per batch costs
// less than handing messages between goroutines. Datagrams are always sent
// after the lock is released.
//
// # Metrics
//
// Registered on Config.Registry, namespace tokend, subsystem worker:
// ops_total{type,result}, op_duration_seconds{type} (arrival of the batch
// to the reply sent), dropped_datagrams_total{reason}, revokes_sent_total,
// grant_async_retransmissions_total, bundles_received_total,
// bundled_datagrams_received_total, bundles_sent_total,
// bundled_datagrams_sent_total (wire/SPEC.md section 22),
// recoveries_total, handoffs_out_total, handoffs_in_total{result},
// handoff_bytes_total{direction}, handoff_duration_seconds,
// deadlocks_total{kind} (conversion, cycle), auth_failures_total{reason}
// (datagrams dropped unanswered by authentication: bad_tag,
// unknown_session, unknown_key, bad_cookie, bad_session_key, replay),
// limited_total{limit} (requests answered LIMIT by Config.Limits), and the gauges
// held_tokens, queued_requests, ending_tokens (grants and waiters of ended
// sessions still to be dropped: ending.go), sessions, shards, grace_shards,
// handoff_waiting_shards and lease_safe_seconds.
package worker

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/worker/table"
)

// PacketConn is the datagram socket a Worker serves on: the batched subset
// of golang.org/x/net/ipv4.PacketConn that the worker uses. faultnet.Conn
// implements it, so tests run the same receive loop over a lossy in-memory
// network.
type PacketConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
	LocalAddr() net.Addr
	SetReadDeadline(t time.Time) error
	Close() error
}

// Config configures a Worker.
type Config struct {
	Client   *clientv3.Client // required; the caller closes it after Close
	ID       string           // default: host name and UDP port
	UDPAddr  string           // listen address, e.g. 127.0.0.1:7700 (port 0 picks one); ignored with Conn
	Conn     PacketConn       // optional: serve on this socket instead of binding UDPAddr; Close closes it
	HTTPAddr string           // advertised in the registration, for people; "" registers none
	// HandoffAddr is the TCP listen address for planned handoffs (new
	// owners pull the state of shards this worker gave up; wire/SPEC.md
	// section 18). Default: the UDP address's IP, any port. "off": no
	// handoffs (this worker's shards are recovered with a grace period).
	HandoffAddr string
	// HandoffProto caps the handoff protocol this worker speaks, pulling
	// and answering (wire/SPEC.md section 18): 0 is the newest (2, which
	// moves queued requests with a shard); 1 leaves them behind, as
	// workers of an earlier version do, for clients of an earlier version
	// (wire/SPEC.md section 17, "Upgrades").
	HandoffProto int
	TTL          time.Duration // own lease TTL; default 5s
	Drift        float64       // tolerated clock rate difference; default 0.01
	Table        table.Config  // per-shard limits; the zero value means table.DefaultConfig()
	Logger       *slog.Logger
	Registry     prometheus.Registerer // default: a fresh registry of its own
	// Announce, if Announce.Enabled, makes the worker announce its UDP
	// address and applied map version on a multicast group (package
	// announce): at once on every new map, and as a heartbeat. With Auth,
	// announcements are signed with the announce key derived from
	// Auth.ClusterKey (Announce.SigningKey is set from it). A failure to
	// start announcing is logged, not fatal.
	Announce announce.Config

	// AdvertiseUDPAddr is the host:port registered for clients: the map
	// sends them there. Default: the bound socket's address. A port 0 means
	// the bound port. It must not be unspecified (ErrAdvertise): with
	// UDPAddr 0.0.0.0:port, give the host's reachable address here.
	AdvertiseUDPAddr string
	// AdvertiseHandoffAddr is the host:port registered for other workers to
	// pull handoffs from. Default: the listener's address, or, if that is
	// unspecified, the advertised UDP host with the listener's port. A port
	// 0 means the listener's port.
	AdvertiseHandoffAddr string

	// Clock is the time the worker reads: batch stamps, lease safety,
	// timers. Default clock.Real; tests inject testkit/fakeclock.
	Clock clock.Clock

	// Auth authenticates clients and handoffs (wire/SPEC.md section 20);
	// nil runs without authentication (tokend --insecure).
	Auth *Auth
	// Limits bound what clients may cost the worker; the zero value
	// means the defaults (see Limits).
	Limits Limits
	// NoBundle turns bundles off (wire/SPEC.md section 22): the worker
	// answers a SESSION_OPEN without the BUNDLE flag, records no session
	// as taking bundles and sends no BUNDLE_REPLY, as a worker of an
	// earlier version does. It still takes the BUNDLEs a client sends (a
	// worker may take them on any session it knows), so that turning it
	// on in a running cluster strands no client that learned otherwise.
	NoBundle bool
}

// Worker is one token server process's worth of shards.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	conn PacketConn
	met  *metrics
	amet *authMetrics
	clk  clock.Clock
	base time.Time // origin of the tables' monotonic nanosecond clock

	jobs     chan func(context.Context) // the renewal pool's queue (bounded, see etcd.go)
	openJobs chan func(context.Context) // the open pool's queue
	renew    *renewer                   // session renewals over one LeaseKeepAlive stream
	kick     chan struct{}              // size 1: wake the timer loop early
	pullKick chan struct{}              // size 1: handoffs to pull were queued
	endKick  chan struct{}              // size 1: ended sessions' table state was queued (ending.go)
	handoff  net.Listener               // nil with HandoffAddr "off"
	udpAdv   string                     // registered UDP address
	hoAdv    string                     // registered handoff address; "" with HandoffAddr "off"
	ann      *announce.Sender           // nil unless announcing; set by Start before the watchers, closed by close
	fenceKey ed25519.PrivateKey         // signs FENCE_PROOF replies; nil without Auth
	// handoffMax, if not 0, caps the pull protocol this worker speaks
	// (tests: a worker of an earlier version; see handoffTop).
	handoffMax atomic.Int32
	// endGate, if set (tests), is a channel the end loop receives from
	// before each slice, so that a test decides when each slice runs.
	endGate atomic.Pointer[chan struct{}]

	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once

	mu sync.Mutex // guards every field below: lease and registration, map, shard tables, sessions (reply caches, revokes, MACs), opens, lookups
	serving
}

// New validates cfg and binds the UDP socket (unless cfg.Conn is given), so
// that a port conflict is reported before anything is registered.
func New(cfg Config) (*Worker, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("%w: Client is required", ErrConfig)
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5 * time.Second
	}
	if cfg.HandoffProto < 0 || cfg.HandoffProto > handoffProto {
		return nil, fmt.Errorf("%w: HandoffProto %d: this worker speaks handoff protocols %d to %d", ErrConfig,
			cfg.HandoffProto, handoffProtoMin, handoffProto)
	}
	if cfg.TTL < 2*time.Second {
		return nil, fmt.Errorf("%w: TTL %v below etcd's 2s minimum", ErrConfig, cfg.TTL)
	}
	if cfg.Drift == 0 {
		cfg.Drift = 0.01
	}
	if cfg.Table == (table.Config{}) {
		cfg.Table = table.DefaultConfig()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Auth != nil && cfg.Auth.Keys == nil {
		return nil, fmt.Errorf("%w: Auth.Keys is required", ErrConfig)
	}
	lim, err := cfg.Limits.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Limits = lim
	if cfg.Table.MaxGrantsPerSession == 0 || cfg.Table.MaxGrantsPerSession > lim.NamesPerSession {
		cfg.Table.MaxGrantsPerSession = lim.NamesPerSession
	}
	conn := cfg.Conn
	if conn == nil {
		var err error
		if conn, err = listen(cfg.UDPAddr); err != nil {
			return nil, err
		}
	}
	udp, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("worker: socket address %v is not UDP", conn.LocalAddr())
	}
	udpAdv, err := advertise(cfg.AdvertiseUDPAddr, udp, "")
	if err == nil && cfg.HTTPAddr != "" {
		_, err = advertise(cfg.HTTPAddr, nil, "")
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	if cfg.ID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "worker"
		}
		_, port, _ := net.SplitHostPort(udpAdv)
		cfg.ID = host + "-" + port
	}
	hl, err := listenHandoff(cfg.HandoffAddr, udp)
	if err != nil {
		conn.Close()
		return nil, err
	}
	var hoAdv string
	if hl != nil {
		host, _, _ := net.SplitHostPort(udpAdv)
		if hoAdv, err = advertise(cfg.AdvertiseHandoffAddr, hl.Addr(), host); err != nil {
			conn.Close()
			hl.Close()
			return nil, err
		}
	}
	w := &Worker{
		cfg:      cfg,
		conn:     conn,
		clk:      cfg.Clock,
		base:     cfg.Clock.Now(),
		jobs:     make(chan func(context.Context), jobQueue),
		openJobs: make(chan func(context.Context), jobQueue),
		kick:     make(chan struct{}, 1),
		pullKick: make(chan struct{}, 1),
		endKick:  make(chan struct{}, 1),
		handoff:  hl,
		udpAdv:   udpAdv,
		hoAdv:    hoAdv,
	}
	w.log = cfg.Logger.With("component", "worker", "worker", cfg.ID)
	if cfg.Auth != nil {
		w.fenceKey = fenceproof.PrivateKey(cfg.Auth.ClusterKey[:])
	}
	w.serving.init()
	w.guard.init(cfg.Limits, cfg.Auth)
	met, err := newMetrics(cfg.Registry, w)
	if err == nil {
		w.amet, err = newAuthMetrics(cfg.Registry)
	}
	if err != nil {
		conn.Close()
		if hl != nil {
			hl.Close()
		}
		return nil, err
	}
	w.met = met
	return w, nil
}

// listen binds a UDP socket on addr and wraps it for batched I/O. An IPv4
// (or empty) host gets an IPv4 socket, an IPv6 host an IPv6-only one:
// x/net's batched send cannot address IPv4 peers from a dual-stack socket.
func listen(addr string) (PacketConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("worker: udp address %q: %w", addr, err)
	}
	if ua.IP == nil || ua.IP.To4() != nil {
		c, err := net.ListenUDP("udp4", ua)
		if err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
		setBuffers(c)
		return ipv4.NewPacketConn(c), nil
	}
	c, err := net.ListenUDP("udp6", ua)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	setBuffers(c)
	return ipv6.NewPacketConn(c), nil
}

// socketBuffer is the receive and send buffer asked of the kernel for the
// worker's socket. The default (net.core.rmem_default, 208 KiB) holds about
// 1,500 small datagrams: a burst beyond that is dropped and costs each
// sender a retransmission timeout. The kernel caps it at rmem_max/wmem_max.
const socketBuffer = 4 << 20

// setBuffers enlarges c's buffers; failure leaves the defaults.
func setBuffers(c *net.UDPConn) {
	_ = c.SetReadBuffer(socketBuffer)
	_ = c.SetWriteBuffer(socketBuffer)
}

// advertise returns the host:port to register for a socket bound at
// bound: adv if given (its port 0 replaced by bound's port), else bound,
// else, if bound's host is unspecified, fallbackHost with bound's port. An
// unspecified host is never returned (ErrAdvertise).
func advertise(adv string, bound net.Addr, fallbackHost string) (string, error) {
	var port int
	var boundHost string
	switch a := bound.(type) {
	case *net.UDPAddr:
		port, boundHost = a.Port, a.IP.String()
		if a.IP == nil {
			boundHost = ""
		}
	case *net.TCPAddr:
		port, boundHost = a.Port, a.IP.String()
		if a.IP == nil {
			boundHost = ""
		}
	}
	host, p := boundHost, strconv.Itoa(port)
	if adv != "" {
		h, ap, err := net.SplitHostPort(adv)
		if err != nil {
			return "", fmt.Errorf("worker: advertised address %q: %w", adv, err)
		}
		host = h
		if ap != "0" {
			p = ap
		}
	} else if unspecified(host) && fallbackHost != "" {
		host = fallbackHost
	}
	if unspecified(host) {
		what := adv
		if what == "" {
			what = net.JoinHostPort(host, p) + " (the bound address)"
		}
		return "", fmt.Errorf("%w: %s", ErrAdvertise, what)
	}
	return net.JoinHostPort(host, p), nil
}

func unspecified(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// Addr is the UDP address the worker's socket is bound to.
func (w *Worker) Addr() *net.UDPAddr { return w.conn.LocalAddr().(*net.UDPAddr) }

// AdvertisedAddr is the UDP address registered for clients (Config.AdvertiseUDPAddr).
func (w *Worker) AdvertisedAddr() string { return w.udpAdv }

// ID is the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Start reads the cluster config, takes a lease, registers, loads the
// delegation map, the registry and the sessions, and starts serving. It
// returns once the worker is registered and serving what the map gives it.
func (w *Worker) Start(ctx context.Context) error {
	cc, err := cluster.WaitConfig(ctx, w.cfg.Client)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w.renew = newRenewer(runCtx, w.cfg.Client, &w.wg)
	w.cancel = cancel
	lease, stopKA, doc, err := w.takeLease(ctx, runCtx)
	if err != nil {
		cancel()
		w.wg.Wait()
		if w.handoff != nil {
			w.handoff.Close()
		}
		return err
	}
	w.mu.Lock()
	w.cluster = cc
	w.shards = make([]*shardState, cc.Shards)
	w.install(lease, doc, w.clk.Now())
	w.mu.Unlock()
	w.log.Info("registered", "key", cluster.WorkerKey(doc.ID), "udp", doc.UDP, "incarnation", doc.Incarnation, "ttl", w.cfg.TTL)
	if w.cfg.Announce.Enabled {
		if w.cfg.Announce.Logger == nil {
			w.cfg.Announce.Logger = w.log
		}
		if w.cfg.Auth != nil {
			w.cfg.Announce.SigningKey = announce.SigningKey(w.cfg.Auth.ClusterKey)
		}
		ann, err := announce.NewSender(w.cfg.Announce, doc.UDP, doc.ID)
		if err != nil {
			w.log.Warn("not announcing on multicast", "err", err)
		} else {
			w.mu.Lock()
			w.ann = ann // setMap announces each map from here on
			w.mu.Unlock()
		}
	}

	revs, err := w.loadAll(ctx)
	if err != nil {
		w.Close()
		return err
	}
	w.wg.Add(3)
	go func() {
		defer w.wg.Done()
		w.watchLoop(runCtx, cluster.DelegationKey, false, revs[0], w.syncMap, w.mapEvent)
	}()
	go func() {
		defer w.wg.Done()
		w.watchLoop(runCtx, cluster.WorkersPrefix, true, revs[1], w.syncWorkers, w.workerEvent)
	}()
	go func() {
		defer w.wg.Done()
		w.watchLoop(runCtx, cluster.ClientsPrefix, true, revs[2], w.syncClients, w.clientEvent)
	}()
	for range renewPoolSize {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.poolLoop(runCtx, w.jobs) }()
	}
	for range openPoolSize {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.poolLoop(runCtx, w.openJobs) }()
	}
	w.wg.Add(3)
	go func() { defer w.wg.Done(); w.superviseLease(runCtx, lease, stopKA) }()
	go func() { defer w.wg.Done(); w.timerLoop(runCtx) }()
	go func() { defer w.wg.Done(); w.recvLoop(runCtx) }()
	w.wg.Add(2)
	go func() { defer w.wg.Done(); w.pullLoop(runCtx) }()
	go func() { defer w.wg.Done(); w.endLoop(runCtx) }()
	if w.handoff != nil {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.handoffServer(runCtx, w.handoff) }()
	}
	return nil
}

// HandoffAddr is the registered TCP address new owners pull handed-off
// shards from ("" if handoffs are off).
func (w *Worker) HandoffAddr() string { return w.hoAdv }

// takeLease grants a new lease, keeps it alive (under runCtx) and registers
// the worker on it: one incarnation. On failure it leaves nothing behind.
func (w *Worker) takeLease(ctx, runCtx context.Context) (*ownLease, context.CancelFunc, cluster.Worker, error) {
	lease, err := grantLease(ctx, w.cfg.Client, w.clk, w.cfg.TTL, w.cfg.Drift, w.log)
	if err != nil {
		return nil, nil, cluster.Worker{}, err
	}
	lease.check = w.mapCurrent
	doc := cluster.Worker{
		ID:          w.cfg.ID,
		Incarnation: strconv.FormatInt(int64(lease.id), 16),
		UDP:         w.udpAdv,
		HTTP:        w.cfg.HTTPAddr,
		Version:     cluster.Version,
		Started:     cluster.Now(w.clk.Now()),
		TTLms:       w.cfg.TTL.Milliseconds(),
		Handoff:     w.HandoffAddr(),
	}
	w.mu.Lock()
	doc.Draining = w.draining // a re-registration keeps a drain
	w.mu.Unlock()
	kaCtx, stopKA := context.WithCancel(runCtx)
	// Keep the lease alive while we wait for a previous incarnation's key.
	w.wg.Add(1)
	go func() { defer w.wg.Done(); lease.keepAlive(kaCtx) }()
	if err := register(ctx, w.cfg.Client, w.clk, lease, doc, w.log); err != nil {
		stopKA()
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		lease.revoke(rctx)
		rcancel()
		return nil, nil, cluster.Worker{}, err
	}
	return lease, stopKA, doc, nil
}

// Ready reports whether the worker is registered and its lease is safe.
func (w *Worker) Ready() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ready && w.lease != nil && w.clk.Now().Before(w.lease.SafeUntil())
}

// Close stops serving and closes the socket (every goroutine ends before it
// returns), then revokes the lease (the registration vanishes at once, so
// the leader re-delegates without waiting for the TTL). It does not close the
// etcd client. Calling it again does nothing.
func (w *Worker) Close() error {
	var err error
	w.closeOnce.Do(func() { err = w.close() })
	return err
}

func (w *Worker) close() error {
	if w.cancel != nil {
		w.cancel()
	}
	if w.handoff != nil {
		w.handoff.Close() // also closed by the server's goroutine; a second close does nothing
	}
	// Wake the receive loop from its blocking read (it then sees the
	// context), and close the socket: nothing is answered from here on,
	// before the lease is revoked, which is the safe order (invariant 5).
	// (A faultnet.Conn ignores a deadline set during a blocked read; the
	// close wakes it.) A socket deadline is the kernel's: real time.
	w.conn.SetReadDeadline(time.Now())
	var err error
	if cerr := w.conn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	w.wg.Wait()
	w.mu.Lock()
	lease := w.lease
	w.ready = false
	ann := w.ann
	w.mu.Unlock()
	if ann != nil {
		ann.Close() // a last "bye": clients forget this worker at once
	}
	if lease != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = errors.Join(lease.revoke(ctx), err)
		cancel()
	}
	return err
}

// install makes lease the worker's current incarnation and recomputes which
// shards it serves. Caller holds mu.
func (w *Worker) install(lease *ownLease, doc cluster.Worker, now time.Time) *outbox {
	w.lease, w.doc, w.ready = lease, doc, true
	w.me = delegation.Owner{ID: doc.ID, Incarnation: uint64(lease.id)}
	ob := w.outbox(now, w.mono(now))
	ob.safe = lease.SafeUntil()
	w.applyMap(ob, w.dmap, nil)
	return ob
}

// mono converts a time to the tables' clock: monotonic nanoseconds since
// the worker was made.
func (w *Worker) mono(t time.Time) int64 { return int64(t.Sub(w.base)) }

// superviseLease waits for the current lease to be lost (etcd says it is
// gone: the worker hung or was cut off longer than its TTL). Everything
// served under it is dropped at once, since the leader has re-delegated its
// shards; then the worker registers again as a new incarnation, retrying
// with backoff until ctx ends.
func (w *Worker) superviseLease(ctx context.Context, lease *ownLease, stopKA context.CancelFunc) {
	defer func() { stopKA() }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-lease.Lost():
		}
		stopKA()
		w.mu.Lock()
		w.dropAll()
		w.me, w.ready = delegation.Owner{}, false
		w.mu.Unlock()
		w.log.Error("own lease lost: dropped every shard and session state; registering as a new incarnation")
		backoff := 100 * time.Millisecond
		for {
			nl, stop, doc, err := w.takeLease(ctx, ctx)
			if err == nil {
				w.mu.Lock()
				ob := w.install(nl, doc, w.clk.Now())
				w.mu.Unlock()
				w.flush(ob)
				w.log.Info("registered again", "incarnation", doc.Incarnation)
				lease, stopKA = nl, stop
				break
			}
			if ctx.Err() != nil {
				return
			}
			w.log.Warn("re-registration failed; retrying", "err", err, "in", backoff)
			if !wait(ctx, w.clk, backoff) {
				return
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}
