package worker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// rawConn is what the test client needs of a socket: a real *net.UDPConn
// or a faultnet.Conn.
type rawConn interface {
	ReadFrom(p []byte) (int, net.Addr, error)
	WriteTo(p []byte, addr net.Addr) (int, error)
	Close() error
}

// msg is a datagram the test client received, with its body decoded by
// kind.
type msg struct {
	h       wire.Header
	raw     []byte
	at      time.Time
	bundled bool // it came inside a BUNDLE_REPLY
}

func (m msg) grant(t testing.TB) wire.Grant {
	t.Helper()
	var g wire.Grant
	if err := g.Decode(m.h, m.raw); err != nil {
		t.Fatalf("decode GRANT of %v/%v: %v", m.h.Type, m.h.Status, err)
	}
	return g
}

func (m msg) String() string { return fmt.Sprintf("%v %v req=%d", m.h.Type, m.h.Status, m.h.Request) }

// appender is any wire message.
type appender interface {
	Append(dst []byte, h wire.Header) ([]byte, error)
}

// tclient is a small raw-datagram client built on wire, for tests only:
// it numbers requests, retransmits until a reply arrives, computes acks
// from its unfinished requests, and keeps server-initiated messages
// (REVOKE, GRANT_ASYNC) and late replies in a queue. It takes the
// datagrams of a BUNDLE_REPLY one by one, as if each had come alone.
type tclient struct {
	t      testing.TB
	conn   rawConn
	srv    net.Addr
	shards uint32
	rto    time.Duration
	// offerBundle sets the BUNDLE flag in the SESSION_OPENs of open and
	// openAuth (wire/SPEC.md section 22).
	offerBundle bool

	mu         sync.Mutex // guards the fields below
	session    uint64
	opened     uint64 // the nonce of the open that made session (openAuth)
	next       uint64
	unfinished map[uint64]bool
	waiting    map[uint64]chan msg
	events     []msg // REVOKE, GRANT_ASYNC, and replies nobody waited for
	bundles    int   // BUNDLE_REPLYs received
	eventCh    chan struct{}
	epochs     map[uint32]uint32 // per shard: epoch to send (default 1)

	// With a session opened by openAuth: the session's MACs (a MAC is
	// not safe for concurrent use: macMu guards them) and the count of
	// datagrams received whose tag did not verify.
	macMu   sync.Mutex
	out, in *auth.MAC
	skey    auth.Key // the session key
	badTags int

	done chan struct{}
}

func newTClient(t testing.TB, conn rawConn, srv net.Addr, shards uint32) *tclient {
	c := &tclient{t: t, conn: conn, srv: srv, shards: shards, rto: 20 * time.Millisecond,
		unfinished: map[uint64]bool{}, waiting: map[uint64]chan msg{}, eventCh: make(chan struct{}, 1),
		epochs: map[uint32]uint32{}, done: make(chan struct{})}
	go c.readLoop()
	t.Cleanup(c.close)
	return c
}

// udpClient makes a test client on a real loopback socket.
func udpClient(t testing.TB, w *Worker) *tclient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return newTClient(t, conn, w.Addr(), uint32(w.shardCount()))
}

func (c *tclient) close() {
	c.conn.Close()
	<-c.done
}

func (c *tclient) readLoop() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		raw := append([]byte(nil), buf[:n]...)
		h, err := wire.ParseHeader(raw)
		if err != nil {
			c.t.Errorf("client got a malformed datagram: %v", err)
			continue
		}
		now := time.Now()
		if h.Type != wire.TypeBundleReply {
			c.deliver(msg{h: h, raw: raw, at: now})
			continue
		}
		if err := wire.CheckBundle(h, raw); err != nil {
			c.t.Errorf("client got a malformed bundle: %v", err)
			continue
		}
		c.mu.Lock()
		c.bundles++
		c.mu.Unlock()
		for e := raw[wire.HeaderLen:]; len(e) > 0; {
			var d []byte
			d, e = wire.NextBundled(e)
			ih, err := wire.ParseHeader(d)
			if err != nil {
				c.t.Errorf("client got a malformed datagram in a bundle: %v", err)
				continue
			}
			c.deliver(msg{h: ih, raw: d, at: now, bundled: true})
		}
	}
}

// deliver hands m to whoever waits for its reply, or queues it as an
// event.
func (c *tclient) deliver(m msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch, ok := c.waiting[m.h.Request]; ok && m.h.Type.IsReply() {
		select {
		case ch <- m:
		default:
		}
		return
	}
	c.events = append(c.events, m)
	select {
	case c.eventCh <- struct{}{}:
	default:
	}
}

func (c *tclient) epoch(shard uint32) uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.epochs[shard]; ok {
		return e
	}
	return 1
}

func (c *tclient) setEpoch(shard, epoch uint32) {
	c.mu.Lock()
	c.epochs[shard] = epoch
	c.mu.Unlock()
}

// header returns a header for a new request id (or id, if non-zero) on
// shard; ack is the oldest unfinished request id.
func (c *tclient) header(shard uint32, id uint64) wire.Header {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == 0 {
		c.next++
		id = c.next
	}
	c.unfinished[id] = true
	ack := id
	for u := range c.unfinished {
		ack = min(ack, u)
	}
	h := wire.Header{Session: c.session, Request: id, Ack: ack, Shard: shard}
	if e, ok := c.epochs[shard]; ok {
		h.Epoch = e
	} else {
		h.Epoch = 1
	}
	return h
}

func (c *tclient) finish(id uint64) {
	c.mu.Lock()
	delete(c.unfinished, id)
	c.mu.Unlock()
}

// send encodes and sends one datagram (sealed with the session's MAC
// after openAuth).
func (c *tclient) send(m appender, h wire.Header) []byte {
	c.t.Helper()
	pkt := c.encode(m, h)
	c.sendRaw(pkt)
	return pkt
}

// encode encodes one datagram, sealed with the session's MAC after
// openAuth.
func (c *tclient) encode(m appender, h wire.Header) []byte {
	c.t.Helper()
	pkt, err := m.Append(nil, h)
	if err != nil {
		c.t.Fatalf("encode %T: %v", m, err)
	}
	c.macMu.Lock()
	if c.out != nil && h.Session != 0 {
		if err := c.out.Seal(pkt); err != nil {
			c.t.Fatalf("seal: %v", err)
		}
	}
	c.macMu.Unlock()
	return pkt
}

// verified reports whether m's tag verifies under the session's w→c MAC
// (true if the client has none).
func (c *tclient) verified(m msg) bool {
	c.macMu.Lock()
	defer c.macMu.Unlock()
	return c.in == nil || m.h.Session == 0 || c.in.Verify(m.raw)
}

func (c *tclient) sendRaw(pkt []byte) {
	if _, err := c.conn.WriteTo(pkt, c.srv); err != nil && !errors.Is(err, net.ErrClosed) {
		c.t.Errorf("send: %v", err)
	}
}

// call sends m with header h and retransmits (the same bytes) every rto
// until a reply for h.Request arrives or timeout passes.
func (c *tclient) call(m appender, h wire.Header, timeout time.Duration) (msg, error) {
	c.t.Helper()
	ch := make(chan msg, 4)
	c.mu.Lock()
	c.waiting[h.Request] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, h.Request)
		c.mu.Unlock()
	}()
	pkt := c.send(m, h)
	deadline := time.After(timeout)
	rto := c.rto
	for {
		select {
		case r := <-ch:
			if !c.verified(r) {
				c.macMu.Lock()
				c.badTags++
				c.macMu.Unlock()
				c.t.Errorf("reply to %v request %d does not verify", h.Type, h.Request)
			}
			return r, nil
		case <-time.After(rto):
			c.sendRaw(pkt)
			rto = min(2*rto, 200*time.Millisecond)
		case <-deadline:
			return msg{}, fmt.Errorf("no reply to %v request %d within %v", h.Type, h.Request, timeout)
		}
	}
}

// do is call for a new request that must get a reply within 5 s; final
// replies finish the request id.
func (c *tclient) do(m appender, shard uint32) msg {
	c.t.Helper()
	h := c.header(shard, 0)
	r, err := c.call(m, h, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.h.Status != wire.StatusQueued && !r.h.Status.Retryable() {
		c.finish(h.Request)
	}
	return r
}

// open opens a session (nonce as request id) and returns the reply.
func (c *tclient) open(ttlMs uint32) msg {
	c.t.Helper()
	h := wire.Header{Request: rand.Uint64() | 1}
	r, err := c.call(wire.SessionOpen{TTLMs: ttlMs, Lib: []byte("test/0"), Bundle: c.offerBundle}, h, 5*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.h.Status != wire.StatusOK {
		c.t.Fatalf("SESSION_OPEN: %v", r.h.Status)
	}
	c.mu.Lock()
	c.session = r.h.Session
	c.mu.Unlock()
	return r
}

func (c *tclient) shard(name string) uint32 { return wire.Shard([]byte(name), c.shards) }

func (c *tclient) acquire(name string, mode wire.Mode, try bool, waitMs uint32) msg {
	c.t.Helper()
	return c.do(wire.Acquire{Try: try, Mode: mode, WaitMs: waitMs, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}, c.shard(name))
}

func (c *tclient) acquireRange(name string, mode wire.Mode, start, end uint64) msg {
	c.t.Helper()
	return c.do(wire.Acquire{Try: true, Mode: mode, Start: start, End: end, Name: []byte(name)}, c.shard(name))
}

func (c *tclient) release(name string, fence uint64) msg {
	c.t.Helper()
	return c.do(wire.Release{Fence: fence, Name: []byte(name)}, c.shard(name))
}

// event waits for the next server-initiated message (or unexpected reply)
// matching ok.
func (c *tclient) event(timeout time.Duration, ok func(msg) bool) (msg, bool) {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		for i, m := range c.events {
			if ok(m) {
				c.events = append(c.events[:i], c.events[i+1:]...)
				c.mu.Unlock()
				return m, true
			}
		}
		c.mu.Unlock()
		d := time.Until(deadline)
		if d <= 0 {
			return msg{}, false
		}
		select {
		case <-c.eventCh:
		case <-time.After(d):
		}
	}
}

func (c *tclient) countEvents(ok func(msg) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.events {
		if ok(m) {
			n++
		}
	}
	return n
}

func isType(t wire.Type) func(msg) bool { return func(m msg) bool { return m.h.Type == t } }

func wantStatus(t testing.TB, m msg, st wire.Status) {
	t.Helper()
	if m.h.Status != st {
		detail := ""
		if m.h.Kind() == wire.KindError {
			var e wire.ErrorBody
			if e.Decode(m.h, m.raw) == nil {
				detail = ": " + string(e.Message)
			}
		}
		t.Fatalf("%v request %d: status %v, want %v%s", m.h.Type, m.h.Request, m.h.Status, st, detail)
	}
}
