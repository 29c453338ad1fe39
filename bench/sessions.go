package bench

import (
	"container/heap"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// The sessions workload measures what sessions cost the control plane:
// every session is an etcd lease and a key, every open a lease grant and
// a put, every renewal a lease renewal by a worker. It holds N live
// sessions with the daemon's default TTL, N doubling from the first level,
// and finds the knee: the first N at which renewals fall behind (a renewal
// answered after the next one was due, or not renewed) or sessions are
// lost. Each level runs against a fresh tokend process (one etcd member,
// the coordinator and one worker in one process, as `tokend` runs by
// default), so that CPU and memory are that level's.
//
// Sessions are driven by a swarm of raw-datagram sessions (SPEC.md §11,
// §13, §20): each opens with a random request id and nonce (with a key:
// the open without cookie, then with the worker's cookie, see rawauth.go),
// tags its datagrams and verifies the replies with its session key,
// renews with KEEPALIVE RENEW every third of its TTL (first renewals
// spread over one period), retransmits an open or a close with the same
// request id and a renewal with a new one, and closes with SESSION_CLOSE.
// A few sockets
// carry them all, so that N is not bounded by file descriptors or a client
// library's goroutines.

const (
	swarmSockets  = 16                     // sockets the sessions share
	swarmWindow   = 256                    // opens in flight in the sustained open phase
	swarmRTO      = 200 * time.Millisecond // first retransmission
	swarmRTOMax   = 2 * time.Second        // retransmission backoff cap
	swarmLib      = "tokend-bench-sessions/1"
	swarmLateFrac = 0.01 // more than this fraction of late renewals is past the knee
	swarmCloseMax = 4000 // levels up to this also measure closing every session
)

// sessionLevel is what one level measured.
type sessionLevel struct {
	n                int
	openTook         time.Duration // sustained: swarmWindow opens in flight
	burstTook        time.Duration // mass reconnect: all N at once
	burstOpened      int
	openLat, renewLt *hist
	renewals         int64 // renewals answered
	late             int64 // answered after the next renewal was due
	notRenewed       int64 // answered with session_ttl_ms 0
	lost             int64 // sessions the worker no longer knew (expired, unknown), during the hold
	openLost         int64 // opens refused, or sessions lost while the others opened
	retrans          int64 // retransmissions of opens and renewals
	badTags          int64 // replies dropped: their auth tag did not verify
	hold             time.Duration
	cpu              time.Duration // tokend process CPU during the hold
	rssBefore        int64
	rssAfter         int64
	closeTook        time.Duration
}

func (l *sessionLevel) healthy() bool {
	return l.lost == 0 && l.notRenewed == 0 && float64(l.late) <= swarmLateFrac*float64(max(l.renewals, 1))
}

// runSessions runs the sessions workload.
func runSessions(ctx context.Context, cfg *Config) ([]Result, error) {
	var out []Result
	knee := 0
	for _, n := range cfg.SessionLevels {
		if ctx.Err() != nil {
			break
		}
		cfg.progress("sessions: %d live sessions (session TTL %v, hold %v)", n, cfg.SessionTTL, cfg.SessionHold)
		l, err := sessionsLevel(ctx, cfg, n)
		if err != nil {
			return out, fmt.Errorf("%d sessions: %w", n, err)
		}
		out = append(out, l.results(cfg)...)
		if !l.healthy() {
			knee = n
			cfg.progress("sessions: past the knee at %d sessions (late %d, not renewed %d, lost %d of %d renewals)",
				n, l.late, l.notRenewed, l.lost, l.renewals)
			break
		}
	}
	if knee > 0 && len(out) > 0 {
		out[len(out)-1].Note = "past the knee: renewals fell behind or sessions were lost"
	}
	return out, nil
}

func sessionsLevel(ctx context.Context, cfg *Config, n int) (*sessionLevel, error) {
	pc, err := startProcCluster(ctx, cfg, 1, false)
	if err != nil {
		return nil, err
	}
	defer pc.close()
	sw, err := newSwarm(pc.target(), n)
	if err != nil {
		return nil, err
	}
	defer sw.close()
	l := &sessionLevel{n: n, rssBefore: pc.rss()}

	began := time.Now()
	if err := sw.openAll(ctx, swarmWindow, 2*time.Minute); err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	l.openTook = time.Since(began)

	// The knee is judged on the hold alone: renewals during the opens
	// and the mass reconnect compete with a burst of etcd writes.
	l.openLat, l.openLost = sw.openLat, sw.lost
	sw.startHold()
	cpu0, hold0 := pc.cpu(), time.Now()
	sw.hold(ctx, cfg.SessionHold)
	l.hold, l.cpu = time.Since(hold0), pc.cpu()-cpu0
	l.rssAfter = pc.rss()
	l.renewLt = sw.renewLat
	l.renewals, l.late, l.notRenewed, l.lost = sw.renewals, sw.late, sw.notRenewed, sw.lost

	// Closing is measured at small levels only: above, the process is
	// stopped with its sessions (closing 100k one by one measures etcd's
	// lease revocations, not what users wait for).
	if n <= swarmCloseMax {
		began = time.Now()
		sw.closeAll(ctx, 2*time.Minute)
		l.closeTook = time.Since(began)
	}

	// Mass reconnect: N clients whose sessions are gone (closed, or left
	// to expire as after a network fault) open new ones at once.
	sw.reset()
	began = time.Now()
	err = sw.openAll(ctx, n, 2*time.Minute)
	l.burstTook, l.burstOpened = time.Since(began), sw.opened()
	if err != nil && !errors.Is(err, errSwarmTimeout) {
		return nil, fmt.Errorf("mass reconnect: %w", err)
	}

	l.retrans, l.badTags = sw.retrans, sw.badTags
	return l, nil
}

func (l *sessionLevel) results(cfg *Config) []Result {
	variant := fmt.Sprintf("%d sessions", l.n)
	hold := Result{Workload: "sessions", Variant: variant, System: sysTokend, Clients: l.n,
		WindowS: l.hold.Seconds(), Count: l.renewals, Unit: "renewal", Errors: l.late + l.notRenewed + l.lost}
	if l.hold > 0 {
		hold.Rate = float64(l.renewals) / l.hold.Seconds()
		hold.metric("server_cpu", l.cpu.Seconds()/l.hold.Seconds(), "cores")
		hold.metric("cpu_per_1k_sessions", l.cpu.Seconds()/l.hold.Seconds()/float64(l.n)*1000, "cores")
	}
	if s := l.renewLt.summary(); s != nil {
		hold.Latencies = append(hold.Latencies, NamedLatency{Of: "renewal", Latency: *s})
	}
	hold.metric("late_renewals", float64(l.late), "")
	hold.metric("not_renewed", float64(l.notRenewed), "")
	hold.metric("lost_sessions", float64(l.lost), "")
	hold.metric("retransmissions", float64(l.retrans), "")
	if l.badTags > 0 {
		hold.metric("bad_auth_tags", float64(l.badTags), "")
	}
	if d := l.rssAfter - l.rssBefore; d > 0 {
		hold.metric("rss_per_session", float64(d)/float64(l.n), "B")
	}

	open := Result{Workload: "session opens", Variant: variant, System: sysTokend, Clients: swarmWindow,
		WindowS: l.openTook.Seconds(), Count: int64(l.n), Unit: "open", Rate: float64(l.n) / l.openTook.Seconds()}
	if s := l.openLat.summary(); s != nil {
		open.Latencies = append(open.Latencies, NamedLatency{Of: "open", Latency: *s})
	}
	if l.closeTook > 0 {
		open.metric("close_all_s", l.closeTook.Seconds(), "s")
	}
	open.metric("mass_reconnect_s", l.burstTook.Seconds(), "s")
	if l.openLost > 0 {
		open.metric("lost_while_opening", float64(l.openLost), "")
	}
	if l.burstOpened < l.n {
		open.Note = fmt.Sprintf("mass reconnect: only %d of %d back within 2 min", l.burstOpened, l.n)
	}
	return []Result{hold, open}
}

// errSwarmTimeout: not every session opened in time.
var errSwarmTimeout = errors.New("bench: sessions did not all open in time")

// swarm drives many raw sessions over a few sockets.
type swarm struct {
	seed  *net.UDPAddr
	key   *rawKey // nil: the cluster runs --insecure
	socks []*net.UDPConn
	ss    []*swSession
	ttl   time.Duration // asked for: 0 = the worker's default

	mu         sync.Mutex
	openLat    *hist
	renewLat   *hist
	renewals   int64
	late       int64
	notRenewed int64
	lost       int64
	retrans    int64
	badTags    int64 // replies dropped: their auth tag did not verify
}

type swState uint8

const (
	swIdle swState = iota
	swOpening
	swOpen
	swClosing
	swDone // closed, or lost
)

// swSession is one session of the swarm. Each is owned by the goroutine
// of its socket while a phase runs.
type swSession struct {
	sock  int
	state swState
	id    uint64     // session id, once open
	nonce uint64     // SESSION_OPEN request id
	cnon  auth.Nonce // SESSION_OPEN client nonce
	c2w   *auth.MAC  // the session's MACs, once open (nil without a key)
	w2c   *auth.MAC
	ttl   time.Duration
	next  uint64 // last request id used

	// The one request in flight: its id, first and last send, RTO.
	req       uint64
	first     time.Time
	last      time.Time
	rto       time.Duration
	pkt       []byte
	renewDue  time.Time // when the next renewal is due (swOpen)
	heapIndex int
	due       time.Time // next action: retransmit or renew
}

func newSwarm(tgt target, n int) (*swarm, error) {
	key, err := loadRawKey(tgt)
	if err != nil {
		return nil, err
	}
	sa, err := net.ResolveUDPAddr("udp4", tgt.seeds[0])
	if err != nil {
		return nil, err
	}
	sw := &swarm{seed: sa, key: key, openLat: newHist(), renewLat: newHist()}
	for range swarmSockets {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			sw.close()
			return nil, err
		}
		_ = c.SetReadBuffer(4 << 20)
		sw.socks = append(sw.socks, c)
	}
	for i := range n {
		sw.ss = append(sw.ss, &swSession{sock: i % swarmSockets})
	}
	return sw, nil
}

func (sw *swarm) close() {
	for _, c := range sw.socks {
		c.Close()
	}
}

// startHold zeroes the renewal counters and starts a new latency
// histogram: the hold is measured on its own.
func (sw *swarm) startHold() {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.renewLat, sw.openLat = newHist(), newHist() // the mass reconnect's opens are not the sustained ones
	sw.renewals, sw.late, sw.notRenewed, sw.lost = 0, 0, 0, 0
}

// reset makes every session idle again (after closeAll), keeping counters.
func (sw *swarm) reset() {
	for _, s := range sw.ss {
		*s = swSession{sock: s.sock}
	}
}

func (sw *swarm) opened() int {
	n := 0
	for _, s := range sw.ss {
		if s.state == swOpen {
			n++
		}
	}
	return n
}

// phase runs step on every socket's sessions concurrently until each
// socket's step reports it is done or the deadline passes.
func (sw *swarm) phase(ctx context.Context, within time.Duration, run func(ctx context.Context, sock int, ss []*swSession) error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	per := make([][]*swSession, len(sw.socks))
	for _, s := range sw.ss {
		per[s.sock] = append(per[s.sock], s)
	}
	errs := make([]error, len(sw.socks))
	var wg sync.WaitGroup
	for i := range sw.socks {
		wg.Go(func() { errs[i] = run(ctx, i, per[i]) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// openAll opens every idle session, with at most window opens in flight
// over all sockets.
func (sw *swarm) openAll(ctx context.Context, window int, within time.Duration) error {
	perSock := max(window/len(sw.socks), 1)
	err := sw.phase(ctx, within, func(ctx context.Context, sock int, ss []*swSession) error {
		l := sw.loop(sock, ss)
		todo := ss
		inflight := 0
		for {
			for inflight < perSock && len(todo) > 0 {
				s := todo[0]
				todo = todo[1:]
				s.nonce = rand.Uint64() | 1
				if _, err := crand.Read(s.cnon[:]); err != nil {
					return err
				}
				pkt, err := sw.key.openDatagram(nil, sw.openMsg(), s.nonce, s.cnon, nil, nil)
				if err != nil {
					return err
				}
				s.state, s.pkt = swOpening, pkt
				l.byNonce[s.nonce] = s
				l.send(s, s.nonce, time.Now())
				inflight++
			}
			if inflight == 0 && len(todo) == 0 {
				return nil
			}
			done, err := l.turn(ctx, wire.TypeSessionOpenReply)
			if err != nil {
				if ctx.Err() != nil {
					return errSwarmTimeout
				}
				return err
			}
			inflight -= done
		}
	})
	return err
}

// hold keeps every open session renewed for d, renewing each every third
// of its TTL; the first renewals are spread over one period.
func (sw *swarm) hold(ctx context.Context, d time.Duration) {
	_ = sw.phase(ctx, d, func(ctx context.Context, sock int, ss []*swSession) error {
		l := sw.loop(sock, ss)
		now := time.Now()
		for _, s := range ss {
			if s.state == swOpen {
				// Spread the first renewals over one period, but never
				// later than the one the open phase scheduled.
				due := now.Add(time.Duration(rand.Int64N(int64(s.ttl/3) + 1)))
				if !s.renewDue.IsZero() && s.renewDue.Before(due) {
					due = s.renewDue
				}
				s.renewDue = due
				l.schedule(s, s.renewDue)
			}
		}
		for ctx.Err() == nil {
			if _, err := l.turn(ctx, 0); err != nil {
				return nil
			}
		}
		return nil
	})
}

// closeAll closes every open session.
func (sw *swarm) closeAll(ctx context.Context, within time.Duration) {
	perSock := max(swarmWindow/len(sw.socks), 1)
	_ = sw.phase(ctx, within, func(ctx context.Context, sock int, ss []*swSession) error {
		l := sw.loop(sock, ss)
		var todo []*swSession
		for _, s := range ss {
			if s.state == swOpen || s.state == swOpening {
				todo = append(todo, s)
			} else {
				s.state = swDone
			}
		}
		inflight := 0
		for {
			for inflight < perSock && len(todo) > 0 {
				s := todo[0]
				todo = todo[1:]
				if s.state != swOpen {
					s.state = swDone
					continue
				}
				s.next++
				pkt, err := wire.Empty{}.Append(nil, wire.Header{Type: wire.TypeSessionClose, Session: s.id, Request: s.next, Ack: s.next})
				if err != nil {
					return err
				}
				if err := sealWith(s.c2w, pkt); err != nil {
					return err
				}
				s.state, s.pkt = swClosing, pkt
				l.send(s, s.next, time.Now())
				inflight++
			}
			if inflight == 0 && len(todo) == 0 {
				return nil
			}
			done, err := l.turn(ctx, wire.TypeSessionCloseReply)
			if err != nil {
				return nil
			}
			inflight -= done
		}
	})
}

// swLoop is one socket's event loop for one phase: a heap of sessions by
// their next action, the sessions by id and by open nonce, and the socket.
type swLoop struct {
	sw      *swarm
	openC2W *auth.MAC // the open key's MACs (nil without a key)
	openW2C *auth.MAC
	conn    *net.UDPConn
	h       swHeap
	byID    map[uint64]*swSession
	byNonce map[uint64]*swSession
	rbuf    []byte
	wbuf    []byte
}

func (sw *swarm) loop(sock int, ss []*swSession) *swLoop {
	l := &swLoop{sw: sw, conn: sw.socks[sock], rbuf: make([]byte, wire.MaxDatagram+1),
		byID: make(map[uint64]*swSession, len(ss)), byNonce: map[uint64]*swSession{}}
	l.openC2W, l.openW2C = sw.key.openMACs()
	for _, s := range ss {
		s.heapIndex = 0
		if s.id != 0 {
			l.byID[s.id] = s
		}
	}
	return l
}

func (l *swLoop) schedule(s *swSession, at time.Time) {
	s.due = at
	if s.heapIndex > 0 {
		heap.Fix(&l.h, s.heapIndex-1)
		return
	}
	heap.Push(&l.h, s)
}

func (l *swLoop) unschedule(s *swSession) {
	if s.heapIndex > 0 {
		heap.Remove(&l.h, s.heapIndex-1)
	}
}

// send sends s's request id req (its pkt) for the first time.
func (l *swLoop) send(s *swSession, req uint64, now time.Time) {
	s.req, s.first, s.last, s.rto = req, now, now, swarmRTO
	_, _ = l.conn.WriteToUDP(s.pkt, l.sw.seed)
	l.schedule(s, now.Add(s.rto))
}

// turn waits for one datagram or the earliest due action, handles it, and
// returns how many of the phase's requests (replies of type finishing:
// opens or closes; 0 for none) it finished.
func (l *swLoop) turn(ctx context.Context, finishing wire.Type) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := time.Now()
	done := 0
	// Due actions first.
	for len(l.h) > 0 && !l.h[0].due.After(now) {
		s := l.h[0]
		switch {
		case s.req != 0: // retransmit
			if s.state == swOpen {
				// A renewal: a worker renews once per request id and
				// drops a copy (SPEC.md section 20, Replays), so it goes
				// again under a new id; its latency counts from the first.
				s.next++
				pkt, err := wire.Keepalive{Renew: true}.Append(l.wbuf[:0], wire.Header{Session: s.id, Request: s.next, Ack: s.next})
				if err != nil {
					return done, err
				}
				if err := sealWith(s.c2w, pkt); err != nil {
					return done, err
				}
				s.pkt, s.req = append(s.pkt[:0], pkt...), s.next
			}
			s.rto = min(2*s.rto, swarmRTOMax)
			s.last = now
			_, _ = l.conn.WriteToUDP(s.pkt, l.sw.seed)
			l.sw.mu.Lock()
			l.sw.retrans++
			l.sw.mu.Unlock()
			l.schedule(s, now.Add(s.rto))
		case s.state == swOpen: // renewal due
			s.next++
			pkt, err := wire.Keepalive{Renew: true}.Append(l.wbuf[:0], wire.Header{Session: s.id, Request: s.next, Ack: s.next})
			if err != nil {
				return done, err
			}
			if err := sealWith(s.c2w, pkt); err != nil {
				return done, err
			}
			s.pkt = append(s.pkt[:0], pkt...)
			l.send(s, s.next, now)
		default:
			l.unschedule(s)
		}
	}
	wait := 50 * time.Millisecond
	if len(l.h) > 0 {
		wait = min(wait, time.Until(l.h[0].due))
	}
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	_ = l.conn.SetReadDeadline(time.Now().Add(max(wait, time.Millisecond)))
	n, _, err := l.conn.ReadFromUDP(l.rbuf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return done, nil
	}
	if err != nil {
		return done, err
	}
	if s, typ := l.reply(l.rbuf[:n]); s != nil && finishing != 0 && typ == finishing {
		done++
	}
	return done, nil
}

// find returns the session whose request in flight h answers.
func (l *swLoop) find(h wire.Header) *swSession {
	var s *swSession
	if h.Type == wire.TypeSessionOpenReply {
		s = l.byNonce[h.Request]
		if s == nil || s.state != swOpening {
			return nil
		}
	} else if s = l.byID[h.Session]; s == nil {
		return nil
	}
	if s.req != h.Request {
		return nil // a late duplicate of an earlier request
	}
	return s
}

// reply handles one datagram; it returns the session whose request it
// finished, if any, and the reply's type.
func (l *swLoop) reply(b []byte) (*swSession, wire.Type) {
	h, err := wire.ParseHeader(b)
	if err != nil || !h.Type.IsReply() {
		return nil, 0
	}
	s := l.find(h)
	if s == nil {
		return nil, 0 // a late duplicate
	}
	var sk auth.Key
	ok := true
	if h.Type == wire.TypeSessionOpenReply {
		sk, ok = l.sw.key.verifyOpenReply(h, b, s.cnon, l.openW2C)
	} else {
		ok = verifiedBy(s.w2c, b)
	}
	if !ok {
		l.sw.mu.Lock()
		l.sw.badTags++
		l.sw.mu.Unlock()
		return nil, 0
	}
	if h.Type == wire.TypeSessionOpenReply && h.Status == wire.StatusCookie {
		return l.cookie(s, h, b), h.Type
	}
	if h.Type == wire.TypeSessionOpenReply && h.Status == wire.StatusOK {
		s.c2w, s.w2c = l.sw.key.sessionMACs(sk)
	}
	return l.settle(s, h, b), h.Type
}

// openMsg is the swarm's SESSION_OPEN (without nonce, key and cookie).
func (sw *swarm) openMsg() wire.SessionOpen {
	return wire.SessionOpen{TTLMs: uint32(sw.ttl / time.Millisecond), Lib: []byte(swarmLib)}
}

// cookie handles a COOKIE answer (datagram b) to s's open: the same open
// goes again at once with the cookie, tagged with the open key, and its
// latency still counts from the first send. It returns s if the open is
// finished: refused, because the swarm has no key.
func (l *swLoop) cookie(s *swSession, h wire.Header, b []byte) *swSession {
	var c wire.Cookie
	var pkt []byte
	err := c.Decode(h, b)
	if err == nil && l.sw.key != nil {
		pkt, err = l.sw.key.openDatagram(s.pkt[:0], l.sw.openMsg(), s.nonce, s.cnon, c.Cookie[:], l.openC2W)
	}
	if err != nil || l.sw.key == nil {
		l.unschedule(s)
		s.req, s.state = 0, swDone
		l.sw.mu.Lock()
		l.sw.lost++
		l.sw.mu.Unlock()
		return s
	}
	now := time.Now()
	s.pkt, s.last, s.rto = pkt, now, swarmRTO
	_, _ = l.conn.WriteToUDP(s.pkt, l.sw.seed)
	l.schedule(s, now.Add(s.rto))
	return nil
}

// settle applies reply h (datagram b) to s, whose request it answers; it
// returns s if the request is finished (not retried).
func (l *swLoop) settle(s *swSession, h wire.Header, b []byte) *swSession {
	now := time.Now()
	sw := l.sw
	switch h.Type {
	case wire.TypeSessionOpenReply:
		if h.Status.Retryable() {
			return nil // retransmitted on schedule
		}
		l.unschedule(s)
		s.req = 0
		if h.Status != wire.StatusOK {
			s.state = swDone
			sw.mu.Lock()
			sw.lost++
			sw.mu.Unlock()
			return s
		}
		var r wire.SessionReply
		if r.Decode(h, b) != nil {
			s.state = swDone
			return s
		}
		s.state, s.id, s.ttl = swOpen, h.Session, time.Duration(r.TTLMs)*time.Millisecond
		delete(l.byNonce, s.nonce)
		l.byID[s.id] = s
		// An open session renews from now on, also while the others are
		// still opening: at 1,000 opens/s, 30,000 take longer than a TTL.
		s.renewDue = s.first.Add(s.ttl / 3)
		l.schedule(s, s.renewDue)
		sw.mu.Lock()
		sw.openLat.record(now.Sub(s.first))
		sw.mu.Unlock()
		return s
	case wire.TypeKeepaliveReply:
		if h.Status.Retryable() {
			return nil
		}
		l.unschedule(s)
		s.req = 0
		sw.mu.Lock()
		defer sw.mu.Unlock()
		if h.Status != wire.StatusOK {
			s.state = swDone
			sw.lost++
			return s
		}
		var r wire.KeepaliveReply
		if r.Decode(h, b) != nil {
			s.state = swDone
			sw.lost++
			return s
		}
		sw.renewals++
		sw.renewLat.record(now.Sub(s.first))
		period := s.ttl / 3
		if now.Sub(s.renewDue) > period {
			sw.late++ // answered after the next renewal was due
		}
		if r.SessionTTLMs == 0 {
			sw.notRenewed++
		}
		s.renewDue = s.renewDue.Add(period)
		if s.renewDue.Before(now) {
			s.renewDue = now
		}
		l.schedule(s, s.renewDue)
		return s
	case wire.TypeSessionCloseReply:
		l.unschedule(s)
		s.req, s.state = 0, swDone
		return s
	}
	return nil
}

// swHeap orders sessions by their next action. heapIndex is index+1 (0 =
// not in the heap).
type swHeap []*swSession

func (h swHeap) Len() int           { return len(h) }
func (h swHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h swHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i+1, j+1
}
func (h *swHeap) Push(x any) {
	s := x.(*swSession)
	s.heapIndex = len(*h) + 1
	*h = append(*h, s)
}
func (h *swHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	s.heapIndex = 0
	*h = old[:len(old)-1]
	return s
}
