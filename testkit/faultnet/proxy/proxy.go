// Package proxy is a seeded UDP fault proxy for tests that run real tokend
// processes: it sits between clients and workers on loopback and drops,
// duplicates, delays (and so reorders), cuts one way, blackholes and flaps
// each client-worker link, under rules the test changes at run time. It is
// the real-socket sibling of package faultnet (an in-memory network for
// in-process tests); cmd/tokend-faultproxy wraps it as a process with an
// HTTP control endpoint. A TCP proxy that can stall a direction (for the
// worker-etcd and server-server links) is in tcp.go.
//
// # Shape
//
// Workers register their real UDP address in etcd and clients route by the
// delegation map, so a proxy in front of workers is invisible unless the
// client's idea of the worker addresses goes through it. The proxy therefore
// gives every worker address W a frontend socket F(W) and, for every client
// address C that sends to a frontend, one upstream socket U(C):
//
//	client C --> F(W) --[rules C->W]--> U(C) --> worker W
//	client C <-- F(W) <--[rules W->C]-- U(C) <-- worker W
//
// One upstream socket per client, shared by all workers, keeps the client's
// address as the workers see it stable: the session address registered in
// etcd at SESSION_OPEN is U(C), and REVOKE or GRANT_ASYNC sent there by any
// worker reaches C, appearing to come from F(sender). The proxy understands
// the wire protocol just enough to rewrite worker addresses on the way down:
// in MAP replies and in NOT_OWNER / STALE_EPOCH hints W becomes F(W) (a
// frontend is opened for a worker address the first time it is seen), and
// the datagram is resealed. Clients are given the frontends as seeds and
// never learn a real worker address, so all their traffic passes the proxy.
// Authenticated datagrams cannot be rewritten without breaking their tags:
// with authentication on, start each worker advertising its frontend
// (tokend --advertise-udp-addr F(W); Frontend opens one before the worker
// runs), and the maps carry frontends already.
// (Map announcements on the multicast group are not proxied: clients behind
// the proxy must not join it.)
//
// # Determinism
//
// Every random choice comes from one generator seeded by Config.Seed, in the
// order datagrams arrive. With real processes that order is not
// reproducible, so a seed reproduces the fault mix, not the exact run.
package proxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/tokend/tokend/wire"
)

// Errors returned by this package.
var (
	ErrClosed      = errors.New("proxy: closed")
	ErrTooManyPeer = errors.New("proxy: too many clients or upstreams")
)

// Dir is the direction of a link.
type Dir uint8

// Directions.
const (
	Up   Dir = 1 << iota // client to worker
	Down                 // worker to client
	Both = Up | Down
)

// Rule is the fault model of one direction of a link. The zero Rule
// forwards everything at once.
type Rule struct {
	Drop      float64       // probability a datagram is lost
	Duplicate float64       // probability a datagram is delivered twice
	MinDelay  time.Duration // each copy is delayed uniformly in [MinDelay, MaxDelay];
	MaxDelay  time.Duration // a spread above the sending interval reorders
	Cut       bool          // drop everything (blackhole; one-way when set on one direction)
	// FlapUp and FlapDown, both > 0, make the link flap: it works for
	// FlapUp, is cut for FlapDown, and so on, from when the rule was set.
	FlapUp, FlapDown time.Duration
}

// Stats counts what the proxy did.
type Stats struct {
	Received, Forwarded, Dropped, Duplicated, Rewritten uint64
}

type ruleKey struct {
	client, upstream netip.AddrPort // zero: any
	dir              Dir
}

type setRule struct {
	Rule
	since time.Time
}

// Config configures a Proxy.
type Config struct {
	// Host is the address frontends and upstream sockets bind on; default 127.0.0.1.
	Host string
	// Upstreams are worker addresses to open frontends for at once (the
	// seeds clients are given); others are opened as MAP replies name them.
	Upstreams []string
	// Seed seeds the fault decisions.
	Seed uint64
	// NoRewrite turns off the rewriting of worker addresses in MAP replies
	// and NOT_OWNER hints (the proxy is then a plain per-link UDP relay).
	NoRewrite bool
}

// maxPeers bounds the sockets the proxy opens (frontends and clients each).
const maxPeers = 1024

// Proxy is a running UDP fault proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg  Config
	host netip.Addr
	wg   sync.WaitGroup

	mu        sync.Mutex // guards the fields below
	closed    bool
	rng       *rand.Rand
	rules     map[ruleKey]setRule
	frontends map[netip.AddrPort]*net.UDPConn // by upstream (worker) address
	byFront   map[netip.AddrPort]netip.AddrPort
	clients   map[netip.AddrPort]*net.UDPConn // upstream socket by client address
	stats     Stats
	timers    map[*time.Timer]struct{}
}

// New starts a proxy with frontends for cfg.Upstreams.
func New(cfg Config) (*Proxy, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	host, err := netip.ParseAddr(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("proxy: host: %w", err)
	}
	p := &Proxy{
		cfg: cfg, host: host,
		rng:       rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5851f42d4c957f2d)),
		rules:     map[ruleKey]setRule{},
		frontends: map[netip.AddrPort]*net.UDPConn{},
		byFront:   map[netip.AddrPort]netip.AddrPort{},
		clients:   map[netip.AddrPort]*net.UDPConn{},
		timers:    map[*time.Timer]struct{}{},
	}
	for _, u := range cfg.Upstreams {
		if _, err := p.Frontend(u); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

func parse(addr string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy: %w", err)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Frontend returns the address clients use to reach upstream ("host:port"),
// opening its frontend socket if needed.
func (p *Proxy) Frontend(upstream string) (string, error) {
	u, err := parse(upstream)
	if err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := p.frontendLocked(u)
	if err != nil {
		return "", err
	}
	return f.String(), nil
}

// Frontends returns the frontend address of every upstream opened so far.
func (p *Proxy) Frontends() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for u, c := range p.frontends {
		out[u.String()] = c.LocalAddr().String()
	}
	return out
}

func (p *Proxy) frontendLocked(u netip.AddrPort) (netip.AddrPort, error) {
	if p.closed {
		return netip.AddrPort{}, ErrClosed
	}
	if c := p.frontends[u]; c != nil {
		return c.LocalAddr().(*net.UDPAddr).AddrPort(), nil
	}
	if len(p.frontends) >= maxPeers {
		return netip.AddrPort{}, ErrTooManyPeer
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.host, 0)))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy: frontend for %s: %w", u, err)
	}
	fa := c.LocalAddr().(*net.UDPAddr).AddrPort()
	p.frontends[u] = c
	p.byFront[fa] = u
	p.wg.Add(1)
	go p.readFrontend(c, u)
	return fa, nil
}

// SetRule sets the rule of the link between client and upstream in the
// directions dir. An empty client or upstream means any; the most specific
// rule applies (client and upstream, then client, then upstream, then the
// default set with both empty).
func (p *Proxy) SetRule(client, upstream string, dir Dir, r Rule) error {
	var k ruleKey
	var err error
	if client != "" {
		if k.client, err = parse(client); err != nil {
			return err
		}
	}
	if upstream != "" {
		if k.upstream, err = parse(upstream); err != nil {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, d := range []Dir{Up, Down} {
		if dir&d != 0 {
			k.dir = d
			p.rules[k] = setRule{r, now}
		}
	}
	return nil
}

// Clear removes every rule: a healed network.
func (p *Proxy) Clear() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.rules)
}

// Stats returns the counts so far.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Clients returns the client addresses seen so far and, for each, the
// address workers see it at.
func (p *Proxy) Clients() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for c, u := range p.clients {
		out[c.String()] = u.LocalAddr().String()
	}
	return out
}

func (p *Proxy) ruleLocked(client, upstream netip.AddrPort, d Dir) setRule {
	for _, k := range []ruleKey{{client, upstream, d}, {client, netip.AddrPort{}, d}, {netip.AddrPort{}, upstream, d}, {dir: d}} {
		if r, ok := p.rules[k]; ok {
			return r
		}
	}
	return setRule{}
}

// Close closes every socket and waits for the proxy's goroutines; delayed
// datagrams not yet sent are dropped.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for t := range p.timers {
		t.Stop()
	}
	clear(p.timers)
	for _, c := range p.frontends {
		c.Close()
	}
	for _, c := range p.clients {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return nil
}

// readFrontend forwards what clients send to F(u) towards u.
func (p *Proxy) readFrontend(c *net.UDPConn, u netip.AddrPort) {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		p.mu.Lock()
		p.stats.Received++
		up, err := p.clientLocked(from)
		if err != nil {
			p.stats.Dropped++
			p.mu.Unlock()
			continue
		}
		p.scheduleLocked(p.ruleLocked(from, u, Up), buf[:n], up, u)
		p.mu.Unlock()
	}
}

// clientLocked returns the upstream socket of client address c, opening it.
func (p *Proxy) clientLocked(c netip.AddrPort) (*net.UDPConn, error) {
	if p.closed {
		return nil, ErrClosed
	}
	if s := p.clients[c]; s != nil {
		return s, nil
	}
	if len(p.clients) >= maxPeers {
		return nil, ErrTooManyPeer
	}
	s, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.host, 0)))
	if err != nil {
		return nil, err
	}
	p.clients[c] = s
	p.wg.Add(1)
	go p.readUpstream(s, c)
	return s, nil
}

// readUpstream forwards what workers send to U(c) to client c, from the
// sender's frontend.
func (p *Proxy) readUpstream(s *net.UDPConn, c netip.AddrPort) {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		p.mu.Lock()
		p.stats.Received++
		if _, err := p.frontendLocked(from); err != nil {
			p.stats.Dropped++
			p.mu.Unlock()
			continue
		}
		out := buf[:n]
		if !p.cfg.NoRewrite {
			if rw, ok := p.rewriteLocked(out); ok {
				out = rw
				p.stats.Rewritten++
			}
		}
		p.scheduleLocked(p.ruleLocked(c, from, Down), out, p.frontends[from], c)
		p.mu.Unlock()
	}
}

// rewriteLocked replaces worker addresses by their frontends in a MAP
// reply or a NOT_OWNER hint, and reseals the datagram. An authenticated
// datagram (non-zero auth tag, wire/SPEC.md section 20) passes unchanged:
// a rewrite would break its tag. Behind the proxy, authenticated workers
// advertise their frontends (tokend --advertise-udp-addr), so their maps
// and hints need no rewriting.
func (p *Proxy) rewriteLocked(b []byte) ([]byte, bool) {
	h, err := wire.ParseHeader(b)
	if err != nil {
		return nil, false
	}
	for _, c := range b[wire.AuthOffset : wire.AuthOffset+wire.AuthLen] {
		if c != 0 {
			return nil, false
		}
	}
	front := func(addr []byte) ([]byte, bool) {
		u, err := parse(string(addr))
		if err != nil {
			return nil, false
		}
		f, err := p.frontendLocked(u)
		if err != nil {
			return nil, false
		}
		return []byte(f.String()), true
	}
	switch h.Kind() {
	case wire.KindMapReply:
		var m wire.MapReply
		if m.Decode(h, b) != nil {
			return nil, false
		}
		ws := make([]wire.MapWorker, len(m.Workers))
		for i, w := range m.Workers {
			ws[i] = wire.MapWorker{Index: w.Index, Addr: w.Addr, ID: append([]byte(nil), w.ID...)}
			if f, ok := front(w.Addr); ok {
				ws[i].Addr = f
			} else {
				ws[i].Addr = append([]byte(nil), w.Addr...)
			}
		}
		m.Workers = ws
		m.Runs = append([]wire.MapRun(nil), m.Runs...)
		out, err := m.Append(nil, h)
		return out, err == nil
	case wire.KindNotOwner:
		var m wire.NotOwner
		if m.Decode(h, b) != nil || len(m.Addr) == 0 {
			return nil, false
		}
		f, ok := front(m.Addr)
		if !ok {
			return nil, false
		}
		m.Message = append([]byte(nil), m.Message...)
		m.Addr = f
		out, err := m.Append(nil, h)
		return out, err == nil
	}
	return nil, false
}

// scheduleLocked applies r to one datagram and sends its copies from conn
// to dst, now or after their delays.
func (p *Proxy) scheduleLocked(r setRule, b []byte, conn *net.UDPConn, dst netip.AddrPort) {
	cut := r.Cut
	if r.FlapUp > 0 && r.FlapDown > 0 {
		phase := time.Since(r.since) % (r.FlapUp + r.FlapDown)
		cut = cut || phase >= r.FlapUp
	}
	copies := 1
	if cut || (r.Drop > 0 && p.rng.Float64() < r.Drop) {
		copies = 0
		p.stats.Dropped++
	} else if r.Duplicate > 0 && p.rng.Float64() < r.Duplicate {
		copies = 2
		p.stats.Duplicated++
	}
	for range copies {
		d := r.MinDelay
		if spread := r.MaxDelay - r.MinDelay; spread > 0 {
			d += time.Duration(p.rng.Int64N(int64(spread) + 1))
		}
		p.stats.Forwarded++
		if d <= 0 {
			conn.WriteToUDPAddrPort(b, dst) // loopback: does not block for long
			continue
		}
		pkt := append([]byte(nil), b...)
		var t *time.Timer
		t = time.AfterFunc(d, func() {
			p.mu.Lock()
			_, live := p.timers[t]
			delete(p.timers, t)
			p.mu.Unlock()
			if live {
				conn.WriteToUDPAddrPort(pkt, dst)
			}
		})
		p.timers[t] = struct{}{}
	}
}
