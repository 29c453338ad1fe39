package announce

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv4"
)

// Sender announces one worker on a multicast group: its address and the
// delegation map version it has applied, at once when that version goes up
// and as a heartbeat every Config.Interval. It joins no group. Its methods
// are safe for concurrent use.
type Sender struct {
	cfg  *resolved
	log  *slog.Logger
	p    *ipv4.PacketConn
	dst  *net.UDPAddr
	kick chan struct{} // size 1: the version went up, send now
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the send loop has ended
	once sync.Once

	version atomic.Uint64
	sent    atomic.Uint64
	errs    atomic.Uint64

	// Owned by the send loop, then by Close after the loop has ended.
	ann    Announcement
	buf    []byte
	failed bool // the last send failed (log transitions only)
}

// SenderStats counts a Sender's datagrams.
type SenderStats struct {
	Sent, Errors uint64
}

// NewSender starts announcing the worker reachable at addr ("host:port",
// its UDP address as clients should use it; an unspecified host such as
// 0.0.0.0 makes listeners use the datagram's source address) with id
// workerID (for logs; may be ""). The first announcement goes out at once,
// with map version 0 until SetMapVersion. With cfg.SigningKey every
// announcement is signed. The socket is bound to the
// interface's IPv4 address, so the datagrams carry a real source address.
//
// NewSender returns ErrDisabled unless cfg.Enabled, and errors wrapping
// ErrNotMulticast, ErrInterface, ErrNoMulticast or ErrMalformed (addr,
// workerID) for bad arguments.
func NewSender(cfg Config, addr, workerID string) (*Sender, error) {
	r, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	var nonce [8]byte
	rand.Read(nonce[:])
	ann := Announcement{Cluster: r.Cluster, Addr: addr, WorkerID: workerID, Interval: r.Interval,
		Sender: binary.BigEndian.Uint64(nonce[:]) | 1, Seq: 1, SentAt: uint64(time.Now().UnixMilli())}
	if err := ann.check(); err != nil {
		return nil, fmt.Errorf("announce: sender: %w", err)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.src, 0)))
	if err != nil {
		return nil, fmt.Errorf("announce: sender socket on %v: %w", r.src, err)
	}
	p := ipv4.NewPacketConn(c)
	for _, set := range []struct {
		what string
		err  error
	}{
		{"interface", p.SetMulticastInterface(r.ifi)},
		{"TTL", p.SetMulticastTTL(r.TTL)},
		{"loopback", p.SetMulticastLoopback(!r.NoLoopback)},
	} {
		if set.err != nil {
			c.Close()
			return nil, fmt.Errorf("%w: %s: setting multicast %s: %v", ErrUnavailable, r.ifi.Name, set.what, set.err)
		}
	}
	s := &Sender{
		cfg:  r,
		log:  r.Logger.With("component", "announce", "group", r.group.String(), "interface", r.ifi.Name),
		p:    p,
		dst:  net.UDPAddrFromAddrPort(r.group),
		kick: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		ann:  ann,
		buf:  make([]byte, 0, MaxDatagram),
	}
	go s.loop()
	if r.SigningKey != nil {
		s.log.Debug("announcing, signed", "cluster", r.Cluster, "addr", addr, "interval", r.Interval,
			"announce_key", FormatPublicKey(r.SigningKey.Public().(ed25519.PublicKey)))
	} else {
		s.log.Debug("announcing, unsigned", "cluster", r.Cluster, "addr", addr, "interval", r.Interval)
	}
	return s, nil
}

// SetMapVersion records that the worker has applied map version v. If v is
// higher than the version announced so far, an announcement goes out at
// once; a lower or equal v changes nothing.
func (s *Sender) SetMapVersion(v uint64) {
	for {
		cur := s.version.Load()
		if v <= cur {
			return
		}
		if s.version.CompareAndSwap(cur, v) {
			break
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (s *Sender) Stats() SenderStats {
	return SenderStats{Sent: s.sent.Load(), Errors: s.errs.Load()}
}

func (s *Sender) loop() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		s.send(false)
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-t.C:
		}
	}
}

// send writes one announcement with the current map version. Caller owns
// s.ann (the loop, or Close after it).
func (s *Sender) send(bye bool) error {
	s.ann.MapVersion, s.ann.Bye = s.version.Load(), bye
	s.ann.SentAt = uint64(time.Now().UnixMilli())
	var b []byte
	var err error
	if s.cfg.SigningKey != nil {
		b, err = s.ann.AppendSigned(s.buf[:0], s.cfg.SigningKey)
	} else {
		b, err = s.ann.Append(s.buf[:0])
	}
	s.ann.Seq++
	if err == nil {
		_, err = s.p.WriteTo(b, nil, s.dst)
	}
	if err != nil {
		s.errs.Add(1)
		if !s.failed {
			s.log.Warn("announcement not sent", "err", err)
		}
		s.failed = true
		return err
	}
	s.sent.Add(1)
	if s.failed {
		s.log.Info("announcements sent again")
	}
	s.failed = false
	return nil
}

// Close stops the heartbeats, sends a last "bye" announcement (best effort:
// listeners forget the worker at once instead of after three missed
// heartbeats), and closes the socket. It is idempotent.
func (s *Sender) Close() error {
	var err error
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		s.send(true)
		if cerr := s.p.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	})
	return err
}
