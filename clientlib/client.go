package clientlib

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/wire"
)

// Client is one session with a tokend cluster over one UDP socket. Its
// methods are safe for concurrent use.
type Client struct {
	cfg     Config
	log     *slog.Logger
	conn    net.PacketConn
	ownConn bool
	bconn   batchConn  // conn for recvmmsg and sendmmsg; nil if conn is not a UDP socket
	sendq   *sendQueue // combines concurrent sends, in bundles where it can
	seeds   []netip.AddrPort
	ann     *announce.Listener // nil unless Config.Announce.Enabled; closed by shutdown
	clk     clock.Clock        // Config.Now for the time, Config.clock for timers
	// realTimers: clk's timers are the system's, so contexts can carry
	// their deadlines (withTimeout).
	realTimers bool
	key        *clientKey // nil: Config.Insecure

	// Set by Dial before the background loops start; read-only afterwards.
	shardCount uint32
	grace      time.Duration // G: grace period of a recovering shard
	workerTTL  time.Duration // W: the workers' lease TTL
	sessionTTL time.Duration // S as granted

	ctx     context.Context // canceled by Close: every goroutine ends with it
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped atomic.Bool // recvLoop's cheap view of ctx.Done
	dead    chan struct{}

	session   atomic.Uint64
	mapVer    atomic.Uint64 // the cached map's version, for recvLoop's quick check
	slots     chan struct{} // one per unfinished user request (maxInFlight)
	mapKick   chan struct{} // size 1: ask mapLoop for a fresh map
	maintKick chan struct{} // size 1: wake maintLoop early
	closeOnce sync.Once

	keys atomic.Pointer[sessionKeys] // the session's MACs, set with session (nil: insecure)
	// authFailures counts datagrams dropped for a tag that does not verify.
	authFailures atomic.Uint64
	sent         atomic.Uint64 // datagrams sent
	// bundlers are the workers that take BUNDLEs (SPEC §22): their OK
	// SESSION_REPLY had the flag, or they sent a BUNDLE_REPLY with a
	// datagram of the session in it. Copied on write (rare); nil: none.
	bundlers                 atomic.Pointer[map[netip.AddrPort]struct{}]
	bundlersMu               sync.Mutex    // serializes the writers of bundlers
	bundlesRecv, bundledRecv atomic.Uint64 // BUNDLE_REPLYs taken, and the datagrams in them
	bundlesBad               atomic.Uint64 // BUNDLE_REPLYs dropped whole
	// The token cache's bounds (0: off; set by Dial) and counters (Stats).
	cacheMax                     int
	cacheIdle                    time.Duration
	cacheHits, cacheMisses       atomic.Uint64
	batchGrants, batchFallbacks  atomic.Uint64 // AcquireBatch: tokens granted by ACQUIRE_BATCH; shards that fell back to Acquire
	cacheEvictions, cacheRevoked atomic.Uint64
	cacheDropped, cacheSplits    atomic.Uint64

	mu         sync.Mutex // guards the fields below
	state      clientState
	noSpawn    bool // Close has begun stopping goroutines: spawn refuses
	deadErr    error
	nextReq    uint64
	unfinished []uint64 // ascending ids of unfinished requests
	pending    map[uint64]*call
	open       *opening // SESSION_OPEN in flight (matched by its random request id)
	sessDL     time.Time
	home       netip.AddrPort // where the session is renewed
	renewing   bool
	nextRenew  time.Time
	dm         *dmap
	mapDone    chan struct{} // closed when the next map fetch completes
	mapNew     chan struct{} // closed when a map of another version is installed
	leases     map[leaseKey]*lease
	vouched    chan struct{} // closed (and cleared) when a lease's deadline moves: confirm waits on it
	kas        map[netip.AddrPort]*kaState
	done       map[netip.AddrPort]*doneState // DONEs owed to recovering workers (done.go)
	nextProbe  time.Time                     // next map refresh while some lease is in jeopardy
	byName     map[string][]*Token
	inflight   map[string]int            // unfinished ACQUIRE/CONVERT/RECLAIM per token name
	parked     map[string][]parkedRevoke // REVOKEs waiting for inflight[name] to end
	nParked    int
	strays     map[strayKey]bool
	udpAddrs   map[netip.AddrPort]*net.UDPAddr
	cache      tokenCache
	maintNext  time.Time // when maintain runs next, as it planned
	lastMaint  time.Time // when maintain last ran: a clock reading for the cache's idle times
}

type clientState uint8

const (
	stateOpen    clientState = iota
	stateClosing             // Close is releasing tokens and closing the session
	stateDead                // the session expired
	stateClosed
)

// Dial opens a session with the cluster reachable at seeds (worker UDP
// addresses, "host:port") with the default configuration. See DialConfig.
func Dial(ctx context.Context, seeds ...string) (*Client, error) {
	return DialConfig(ctx, Config{Seeds: seeds})
}

// DialConfig opens a session (SESSION_OPEN to the seeds in turn, until one
// answers or ctx ends), fetches the delegation map and starts the client's
// background work: the receive loop, keepalives and map refreshes. Close the
// Client to end the session.
func DialConfig(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("clientlib: dial: %w", err)
	}
	c := &Client{
		cfg:       cfg,
		log:       cfg.Logger,
		clk:       newClock(cfg.clock, cfg.Now),
		conn:      cfg.PacketConn,
		dead:      make(chan struct{}),
		slots:     make(chan struct{}, maxInFlight),
		mapKick:   make(chan struct{}, 1),
		maintKick: make(chan struct{}, 1),
		pending:   map[uint64]*call{},
		mapDone:   make(chan struct{}),
		mapNew:    make(chan struct{}),
		leases:    map[leaseKey]*lease{},
		kas:       map[netip.AddrPort]*kaState{},
		done:      map[netip.AddrPort]*doneState{},
		byName:    map[string][]*Token{},
		inflight:  map[string]int{},
		strays:    map[strayKey]bool{},
		udpAddrs:  map[netip.AddrPort]*net.UDPAddr{},
	}
	if cfg.TokenCache > 0 {
		c.cacheMax, c.cacheIdle = cfg.TokenCache, cfg.TokenCacheIdle
	}
	_, c.realTimers = clock.Or(cfg.clock).(clock.Real)
	key, err := loadKey(&c.cfg)
	if err != nil {
		return nil, fmt.Errorf("clientlib: dial: %w", err)
	}
	c.key = key
	for _, s := range cfg.Seeds {
		ap, err := resolve(s)
		if err != nil {
			return nil, fmt.Errorf("clientlib: dial: seed %q: %w", s, err)
		}
		c.seeds = append(c.seeds, ap)
	}
	if err := c.listenAnnouncements(ctx); err != nil {
		return nil, fmt.Errorf("clientlib: dial: %w", err)
	}
	if c.conn == nil {
		pc, err := net.ListenPacket("udp", ":0")
		if err != nil {
			c.closeAnnouncements()
			return nil, fmt.Errorf("clientlib: dial: %w", err)
		}
		c.conn, c.ownConn = pc, true
	}
	c.bconn = newBatchConn(c.conn)
	var takes func(net.Addr) bool
	if !cfg.NoBundle {
		takes = c.takesBundles
	}
	c.sendq = newSendQueue(c.bconn, c.conn, takes, c.sendFailed, cfg.ackHold)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.spawn(c.recvLoop)
	if err := c.openSession(ctx); err != nil {
		c.shutdown()
		return nil, fmt.Errorf("clientlib: dial: %w", err)
	}
	m, err := c.fetchMap(ctx)
	if err != nil {
		c.closeSession() // best effort; otherwise the session expires with its TTL
		c.shutdown()
		return nil, fmt.Errorf("clientlib: dial: delegation map: %w", err)
	}
	c.mu.Lock()
	c.applyMapLocked(m)
	c.lastMaint = c.now()
	c.mu.Unlock()
	select {
	case <-c.mapKick: // kicked by replies that came before the map: it is fresh
	default:
	}
	c.spawn(c.mapLoop)
	c.spawn(c.maintLoop)
	c.log.Info("tokend session open", "session", c.Session(), "home", c.home.String(),
		"shards", c.shardCount, "session_ttl", c.sessionTTL, "worker_ttl", c.workerTTL, "grace", c.grace)
	return c, nil
}

// Session returns the session id: a random 63-bit number the worker drew
// (wire/SPEC.md section 20).
func (c *Client) Session() uint64 { return c.session.Load() }

// Close gives back every held token (best effort, within a short timeout),
// closes the session, stops the client's goroutines and waits for them
// (running OnRevoke handlers included), and closes the socket if the Client
// opened it. Tokens still held lose their grants: Lost closes and Err
// reports ErrClosed. Close is idempotent; it returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		wasOpen := c.state == stateOpen
		if wasOpen {
			c.state = stateClosing
		}
		var toks []*Token
		for _, ts := range c.byName {
			for _, t := range ts {
				if !t.cached { // SESSION_CLOSE gives back the cached grants
					toks = append(toks, t)
				}
			}
		}
		c.mu.Unlock()
		if wasOpen {
			c.releaseAll(toks)
			c.closeSession()
		}
		c.shutdown()
		c.log.Info("tokend session closed", "session", c.Session())
	})
	return nil
}

// releaseAll gives back toks concurrently, each within closeTimeout.
func (c *Client) releaseAll(toks []*Token) {
	ctx, cancel := context.WithTimeout(c.ctx, closeTimeout) // real time: see closeSession
	defer cancel()
	sem := make(chan struct{}, 32) // bounded fan-out
	var wg sync.WaitGroup
	for _, t := range toks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			_ = t.release(ctx, releaseOptions{}, ErrClosed)
		}()
	}
	wg.Wait()
}

// shutdown stops everything: no new goroutines, cancel, unblock the reader,
// wait, close the socket if it is ours. Remaining tokens are lost.
func (c *Client) shutdown() {
	c.mu.Lock()
	c.noSpawn = true
	if c.state != stateDead {
		c.state = stateClosed
	}
	c.loseAllLocked(ErrClosed, false)
	c.mu.Unlock()
	if c.sendq != nil {
		c.sendq.close() // what it holds goes out before the socket closes
	}
	c.stopped.Store(true)
	c.cancel()
	if c.ownConn {
		_ = c.conn.Close()
	} else {
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
	}
	c.wg.Wait()
	c.closeAnnouncements()
	if !c.ownConn {
		_ = c.conn.SetReadDeadline(time.Time{})
	}
}

// spawn runs f on a goroutine that Close waits for; it refuses once Close
// has begun stopping (then f does not run).
func (c *Client) spawn(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spawnLocked(f)
}

func (c *Client) spawnLocked(f func()) bool {
	if c.noSpawn {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// margin is the client margin taken off a lease of length d (SPEC.md 13).
func (c *Client) margin(d time.Duration) time.Duration {
	return time.Duration(float64(d)*c.cfg.Drift) + marginFixed
}

// leaseEnd is the deadline of a lease of ms milliseconds counted from sent.
func (c *Client) leaseEnd(sent time.Time, ms uint32) time.Time {
	d := time.Duration(ms) * time.Millisecond
	return sent.Add(d - c.margin(d))
}

// kick signals a size-1 channel without blocking.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// resolve turns "host:port" into an address, literal IPs without DNS.
func resolve(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	ua, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if ua, ok := a.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (c *Client) udpAddrLocked(ap netip.AddrPort) *net.UDPAddr {
	ua := c.udpAddrs[ap]
	if ua == nil {
		ua = net.UDPAddrFromAddrPort(ap)
		c.udpAddrs[ap] = ua
	}
	return ua
}

// write sends one datagram, combined with concurrent ones (batchio.go);
// errors are logged, the retransmission covers them. b may be reused as
// soon as write returns. lead is false on the receive loop, which must not
// be kept sending other goroutines' datagrams.
func (c *Client) write(b []byte, to *net.UDPAddr, lead bool) {
	c.sent.Add(1)
	q := c.sendq
	how := sendAlone
	if q != nil {
		how = q.enqueue(b, to, lead)
		switch how {
		case sendQueued:
			return
		case sendDrain:
			q.drain(c.sendFailed)
			return
		}
		q.calls.Add(1)
	}
	if _, err := c.conn.WriteTo(b, to); err != nil {
		c.sendFailed(err)
	}
	if how == sendNow {
		q.drain(c.sendFailed)
	}
}

// writeAlone sends datagram b to to in a system call of its own, outside
// the send queue, so that it is never bundled.
func (c *Client) writeAlone(b []byte, to *net.UDPAddr) {
	c.sent.Add(1)
	if q := c.sendq; q != nil {
		if held := q.takeHeld(to); held != nil {
			q.write(held, c.sendFailed) // ahead of b, as in the queue
		}
		q.calls.Add(1)
	}
	if _, err := c.conn.WriteTo(b, to); err != nil {
		c.sendFailed(err)
	}
}

// takeBundlesFrom records that worker from takes BUNDLEs.
func (c *Client) takeBundlesFrom(from netip.AddrPort) {
	if m := c.bundlers.Load(); m != nil {
		if _, ok := (*m)[from]; ok {
			return
		}
	}
	c.bundlersMu.Lock()
	defer c.bundlersMu.Unlock()
	old := c.bundlers.Load()
	m := map[netip.AddrPort]struct{}{from: {}}
	if old != nil {
		if _, ok := (*old)[from]; ok {
			return
		}
		for k := range *old {
			m[k] = struct{}{}
		}
	}
	c.bundlers.Store(&m)
}

// takesBundles reports whether the worker at to takes BUNDLEs (sendQueue).
func (c *Client) takesBundles(to net.Addr) bool {
	m := c.bundlers.Load()
	if m == nil {
		return false
	}
	ua, ok := to.(*net.UDPAddr)
	if !ok {
		return false
	}
	ap := ua.AddrPort()
	_, ok = (*m)[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())]
	return ok
}

func (c *Client) sendFailed(err error) {
	if !c.stopped.Load() {
		c.log.Debug("send failed", "err", err)
	}
}

// recvLoop is the only reader of the socket. It validates each datagram,
// hands replies and GRANT_ASYNC to the waiting request and handles REVOKE.
func (c *Client) recvLoop() {
	var buf []byte
	var rb batchReader
	if uc, ok := c.conn.(*net.UDPConn); ok && c.bconn != nil {
		rb = newBatchReader(c.bconn, uc)
	} else {
		buf = make([]byte, wire.MaxDatagram+1) // +1: an oversized datagram is seen, not cut
	}
	var out []byte // REVOKE_ACK and the like, sent from here
	out = make([]byte, 0, wire.MaxDatagram)
	var lastDL time.Time
	var r reply
	var mr wire.MapReply
	for !c.stopped.Load() {
		if !c.ownConn {
			// A borrowed PacketConn may not wake a blocked read on
			// SetReadDeadline; a rolling deadline bounds how long Close waits.
			// Socket deadlines are in the system's time, not the client's
			// clock's, and so is the pause after a failed read below: a
			// fake clock that stands still must not stop the reader.
			if now := time.Now(); now.Sub(lastDL) > 20*time.Millisecond {
				_ = c.conn.SetReadDeadline(now.Add(50 * time.Millisecond))
				lastDL = now
			}
		}
		var n int
		var from netip.AddrPort
		var err error
		if rb != nil {
			n, err = rb.read()
		} else {
			n, from, err = c.read(buf)
		}
		if err != nil {
			if c.stopped.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				lastDL = time.Time{}
				continue
			}
			c.log.Debug("receive failed", "err", err)
			select {
			case <-c.ctx.Done():
				return
			case <-time.After(time.Millisecond):
			}
			continue
		}
		if rb == nil {
			out = c.handle(buf[:n], from, &r, &mr, out)
			continue
		}
		for i := range n {
			b, from := rb.datagram(i)
			out = c.handle(b, from, &r, &mr, out)
		}
	}
}

// read reads one datagram; from a *net.UDPConn without allocating its
// source address.
func (c *Client) read(buf []byte) (int, netip.AddrPort, error) {
	if uc, ok := c.conn.(*net.UDPConn); ok {
		n, ap, err := uc.ReadFromUDPAddrPort(buf)
		return n, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), err
	}
	n, from, err := c.conn.ReadFrom(buf)
	return n, addrPortOf(from), err
}

// handle processes one datagram. r and mr are recvLoop's scratch space.
func (c *Client) handle(b []byte, from netip.AddrPort, r *reply, mr *wire.MapReply, out []byte) []byte {
	h, err := wire.ParseHeader(b)
	if err != nil {
		c.log.Debug("dropped datagram", "from", from.String(), "reason", wire.Reason(err))
		return out
	}
	if h.Type == wire.TypeBundleReply {
		return c.handleBundle(h, b, from, r, mr, out)
	}
	out, _ = c.handleOne(h, b, from, r, mr, out)
	return out
}

// handleBundle takes a BUNDLE_REPLY (SPEC §22): if the bundle is well
// formed, each datagram in it is handled as if it had come alone from the
// same worker, with every check (a bad one is dropped alone); if not, the
// whole bundle is dropped and counted. A worker that sent one with a
// datagram of the session in it (its tag verified) takes bundles.
func (c *Client) handleBundle(h wire.Header, b []byte, from netip.AddrPort, r *reply, mr *wire.MapReply, out []byte) []byte {
	if err := wire.CheckBundle(h, b); err != nil {
		c.bundlesBad.Add(1)
		c.log.Debug("dropped BUNDLE_REPLY", "from", from.String(), "reason", wire.Reason(err))
		return out
	}
	c.bundlesRecv.Add(1)
	genuine := false
	for e := b[wire.HeaderLen:]; len(e) > 0; {
		var d []byte
		d, e = wire.NextBundled(e)
		c.bundledRecv.Add(1)
		h, err := wire.ParseHeader(d)
		if err != nil {
			c.log.Debug("dropped datagram in a bundle", "from", from.String(), "reason", wire.Reason(err))
			continue
		}
		var ok bool
		out, ok = c.handleOne(h, d, from, r, mr, out)
		genuine = genuine || ok
	}
	if genuine && !c.cfg.NoBundle {
		c.takeBundlesFrom(from)
	}
	return out
}

// handleOne processes one datagram with header h, whether it came alone
// or in a bundle (never a bundle itself). ok reports that it was of the
// session and its tag verified.
func (c *Client) handleOne(h wire.Header, b []byte, from netip.AddrPort, r *reply, mr *wire.MapReply, out []byte) (_ []byte, ok bool) {
	if h.Type == wire.TypeSessionOpenReply {
		c.openReply(h, b, from, r)
		return out, false
	}
	if h.Type != wire.TypeRevoke && h.Type != wire.TypeGrantAsync && !h.Type.IsReply() || h.Type == wire.TypeBundleReply {
		c.log.Debug("dropped datagram", "from", from.String(), "type", h.Type, "reason", "not for a client")
		return out, false
	}
	if h.Session != c.Session() {
		return out, false
	}
	// Every other datagram is of the session: its tag is checked before
	// anything in it is believed, the map version included.
	if !c.verifySession(b) {
		c.authFailed(h.Type.String(), b)
		return out, false
	}
	return c.handleSession(h, b, from, r, mr, out), true
}

// handleSession processes datagram b of the session, its tag verified.
func (c *Client) handleSession(h wire.Header, b []byte, from netip.AddrPort, r *reply, mr *wire.MapReply, out []byte) []byte {
	if h.MapVersion > c.mapVer.Load() {
		kick(c.mapKick) // the sender knows a newer map (SPEC.md 15)
	}
	switch {
	case h.Type == wire.TypeRevoke:
		var m wire.Revoke
		if err := m.Decode(h, b); err != nil {
			c.log.Debug("dropped REVOKE", "from", from.String(), "reason", wire.Reason(err))
			return out
		}
		return c.onRevoke(h, &m, from, out)
	default: // GRANT_ASYNC or a reply
		*r = reply{h: h, from: from, async: h.Type == wire.TypeGrantAsync}
		if err := r.decode(b, mr); err != nil {
			c.log.Debug("dropped reply", "type", h.Type, "reason", wire.Reason(err))
			return out
		}
		c.mu.Lock()
		if cl := c.pending[h.Request]; cl != nil && cl.accepts(h.Type) {
			cl.deliver(r)
		}
		c.mu.Unlock()
		if h.Type == wire.TypeGrantAsync {
			// Acknowledged whatever becomes of it (a duplicate, the grant
			// of an abandoned request): the worker retransmits it until
			// then (SPEC.md 12).
			out = c.sendGrantAck(h, h.Request, from, out)
		}
	}
	return out
}

// sendGrantAck sends GRANT_ACK for queued request target, whose outcome
// came in h from worker from: a fresh request id, finished as soon as it
// is sent, and the shard and epoch of h (SPEC.md 5). out is a send buffer
// (nil: one is made).
func (c *Client) sendGrantAck(h wire.Header, target uint64, from netip.AddrPort, out []byte) []byte {
	c.mu.Lock()
	c.nextReq++
	ah := wire.Header{Type: wire.TypeGrantAck, Session: c.session.Load(), Request: c.nextReq,
		Ack: c.ackLocked(c.nextReq), Shard: h.Shard, Epoch: h.Epoch, MapVersion: c.mapVer.Load()}
	ua := c.udpAddrLocked(from)
	c.mu.Unlock()
	return c.sendAck(ah, target, ua, out)
}
