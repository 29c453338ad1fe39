package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
)

// Listener receives the announcements of one cluster on a multicast group:
// it keeps the table of live workers (Workers, WaitWorkers) and passes every
// accepted announcement to a callback. Its methods are safe for concurrent
// use.
type Listener struct {
	cfg   *resolved
	log   *slog.Logger
	p     *ipv4.PacketConn
	group net.IP
	on    func(Event)
	done  chan struct{} // closed when the receive loop has ended
	once  sync.Once
	err   error // of Close

	mu      sync.Mutex // guards the fields below
	closing bool
	tr      *tracker
	stats   Stats
	changed chan struct{} // closed (and replaced) when a worker becomes known
}

// Stats counts what a Listener received.
type Stats struct {
	Received  uint64            // datagrams read
	Delivered uint64            // events passed to the callback (or that would have been)
	Dropped   map[string]uint64 // datagrams dropped, by reason (see Listen)
}

// Listen joins cfg's group on cfg's interface and starts receiving. For
// every accepted announcement it calls on (if not nil) from its receive
// goroutine, one call at a time: on must return quickly (hand work to
// another goroutine) and must not call Close.
//
// A datagram is dropped and counted in Stats().Dropped when it did not
// arrive on the configured interface addressed to the group ("foreign"),
// does not decode (the labels of Reason: "version" for another format
// version), belongs to another cluster ("cluster"), is not signed with
// cfg.PublicKey ("unsigned", "signature") or was sent more than MaxSkew from
// now ("timestamp") when cfg.PublicKey is set, was already seen or
// overtaken ("duplicate"), comes from a replaced or departed sender
// ("stale"), or the worker table is full ("full"); failed reads count as
// "read_error".
//
// Listen returns ErrDisabled unless cfg.Enabled, ErrNoKey without
// cfg.PublicKey and without cfg.Insecure, and errors wrapping
// ErrNotMulticast or ErrInterface/ErrNoMulticast for a bad group or
// interface. Several Listeners (in one or several processes) may listen to
// one group and port on one host: each receives every announcement.
func Listen(cfg Config, on func(Event)) (*Listener, error) {
	r, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	if r.PublicKey == nil && !r.Insecure {
		return nil, ErrNoKey
	}
	group := net.IP(r.group.Addr().AsSlice())
	// For a multicast address net.ListenUDP binds the wildcard address and
	// sets SO_REUSEADDR, so several listeners can share the port; the
	// control messages below filter what is not for this group.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: group, Port: int(r.group.Port())})
	if err != nil {
		return nil, fmt.Errorf("announce: listen on %v: %w", r.group, err)
	}
	p := ipv4.NewPacketConn(c)
	if err := p.JoinGroup(r.ifi, &net.UDPAddr{IP: group}); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: join %v on %s: %v", ErrUnavailable, r.group.Addr(), r.ifi.Name, err)
	}
	l := &Listener{
		cfg:     r,
		log:     r.Logger.With("component", "announce", "group", r.group.String(), "interface", r.ifi.Name),
		p:       p,
		group:   group,
		on:      on,
		done:    make(chan struct{}),
		tr:      newTracker(maxPeers),
		stats:   Stats{Dropped: map[string]uint64{}},
		changed: make(chan struct{}),
	}
	if err := p.SetControlMessage(ipv4.FlagInterface|ipv4.FlagDst, true); err != nil {
		// Not supported everywhere; then datagrams are not filtered by
		// interface and destination.
		l.log.Debug("no control messages: not filtering by interface", "err", err)
	}
	go l.loop()
	l.log.Debug("listening", "cluster", r.Cluster)
	return l, nil
}

// Group is the group and port listened to.
func (l *Listener) Group() netip.AddrPort { return l.cfg.group }

// Interface is the interface the group was joined on.
func (l *Listener) Interface() *net.Interface { return l.cfg.ifi }

func (l *Listener) loop() {
	defer close(l.done)
	buf := make([]byte, MaxDatagram+1)
	var readErrs int
	for {
		n, cm, src, err := l.p.ReadFrom(buf)
		if err != nil {
			l.mu.Lock()
			closing := l.closing
			if !closing {
				l.stats.Dropped["read_error"]++
			}
			l.mu.Unlock()
			if closing || errors.Is(err, net.ErrClosed) {
				return
			}
			// Should not happen on a UDP socket; do not spin on it.
			if readErrs++; readErrs == 1 {
				l.log.Warn("read failed", "err", err)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		readErrs = 0
		now := time.Now()
		ev, ok := l.handle(buf[:n], cm, src, now)
		if ok && l.on != nil {
			l.on(ev)
		}
	}
}

// handle checks and records one datagram; ok says whether to deliver ev.
func (l *Listener) handle(b []byte, cm *ipv4.ControlMessage, src net.Addr, now time.Time) (ev Event, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.Received++
	if cm != nil && (cm.IfIndex != l.cfg.ifi.Index || !cm.Dst.Equal(l.group)) {
		l.stats.Dropped["foreign"]++
		return Event{}, false
	}
	a, err := Decode(b)
	if err != nil {
		l.stats.Dropped[Reason(err)]++
		return Event{}, false
	}
	// Another cluster's announcements (signed with another key) are
	// dropped as such before the costlier signature check.
	if a.Cluster != l.cfg.Cluster {
		l.stats.Dropped["cluster"]++
		return Event{}, false
	}
	if l.cfg.PublicKey != nil {
		if err := verify(b, &a, l.cfg.PublicKey); err != nil {
			l.stats.Dropped[Reason(err)]++
			return Event{}, false
		}
		if !fresh(a.SentAt, now) {
			l.stats.Dropped[dropTimestamp]++
			return Event{}, false
		}
	}
	var from netip.AddrPort
	if u, isUDP := src.(*net.UDPAddr); isUDP {
		from = u.AddrPort()
	}
	worker := workerAddr(a.Addr, from)
	kind, drop := l.tr.observe(&a, worker, now)
	if drop != "" {
		l.stats.Dropped[drop]++
		return Event{}, false
	}
	l.stats.Delivered++
	if kind == KindNew {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return Event{Kind: kind, Worker: worker, Ann: a, From: from, At: now}, true
}

// fresh says whether sentAt (ms since the Unix epoch) is within MaxSkew of
// now.
func fresh(sentAt uint64, now time.Time) bool {
	d := now.UnixMilli() - int64(min(sentAt, 1<<63-1))
	return d <= MaxSkew.Milliseconds() && d >= -MaxSkew.Milliseconds()
}

// Workers returns the workers heard from and not forgotten (no bye, no
// three missed heartbeats), sorted by address.
func (l *Listener) Workers() []Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tr.live(time.Now())
}

// WaitWorkers waits until at least one worker is known and returns the
// known workers (as Workers does), or returns ctx's error, or ErrClosed
// once the Listener is closed.
func (l *Listener) WaitWorkers(ctx context.Context) ([]Peer, error) {
	for {
		select {
		case <-l.done:
			return nil, ErrClosed
		default:
		}
		l.mu.Lock()
		ps := l.tr.live(time.Now())
		ch := l.changed
		l.mu.Unlock()
		if len(ps) > 0 {
			return ps, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-l.done:
			return nil, ErrClosed
		case <-ch:
		}
	}
}

// Stats returns a copy of the counters.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Dropped = maps.Clone(l.stats.Dropped)
	return s
}

// Close leaves the group, closes the socket and waits for the receive
// goroutine to end (and a callback in progress to return). It is
// idempotent and returns the first call's error.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		l.closing = true
		l.mu.Unlock()
		err := l.p.LeaveGroup(l.cfg.ifi, &net.UDPAddr{IP: l.group})
		if err != nil {
			err = fmt.Errorf("announce: leave group: %w", err)
		}
		if cerr := l.p.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = errors.Join(err, cerr)
		}
		<-l.done
		l.err = err
		l.log.Debug("closed")
	})
	return l.err
}
