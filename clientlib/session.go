package clientlib

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// leaseKey names the promise of one worker about one shard at one epoch.
type leaseKey struct {
	addr         netip.AddrPort
	shard, epoch uint32
}

// lease is the client's deadline for the grants it holds from one worker in
// one shard at one epoch (SPEC.md 13). Guarded by Client.mu.
type lease struct {
	key      leaseKey
	deadline time.Time         // grants are valid before this (and while the session lives)
	tokens   map[*grant]*Token // the grants held under it, each with its current handle
	moved    bool              // the map has a newer epoch for the shard: its tokens are reclaimed
	// planned: maintain saw it holding tokens, so its deadline and the
	// keepalives of its worker are scheduled; a grant on an unplanned
	// lease wakes maintLoop.
	planned bool
}

// extendLocked moves the deadline of l forward (never back) and wakes
// whoever waits for a grant to be confirmed.
func (c *Client) extendLocked(l *lease, dl time.Time) {
	if !dl.After(l.deadline) {
		return
	}
	l.deadline = dl
	if c.vouched != nil {
		close(c.vouched)
		c.vouched = nil
	}
}

// kaState schedules the keepalives to one worker. Guarded by Client.mu.
type kaState struct {
	inflight bool
	next     time.Time
}

// kaInterval is how often the grants held on a worker are vouched for anew:
// W/4, so that a deadline (at least about 2W/3 ahead after each answer)
// never lapses while the worker is healthy, even with a lost keepalive.
func (c *Client) kaInterval() time.Duration { return max(c.workerTTL/4, c.cfg.RTOMin) }

// probeInterval is how often the map is refetched while a lease is in doubt.
func (c *Client) probeInterval() time.Duration {
	return min(max(c.workerTTL/10, c.cfg.RTOMin), 500*time.Millisecond)
}

// lostAt is when the tokens of l are declared lost unless reclaimed:
// deadline + G − client margin (SPEC.md 13).
func (c *Client) lostAt(l *lease) time.Time {
	return l.deadline.Add(c.grace - c.margin(c.grace))
}

// opening is the SESSION_OPEN in flight. Set before its first send and
// read-only afterwards, except that only recvLoop uses w2c.
type opening struct {
	call  *call
	nonce auth.Nonce
	w2c   *auth.MAC // open key, worker to client: its error answers (nil: insecure)
}

// openSession opens the session (wire/SPEC.md sections 11 and 20): a
// random request id and nonce; SESSION_OPEN to the seeds in turn (three
// sends each) until one answers. An authenticating worker first answers
// COOKIE; the same SESSION_OPEN goes again with the cookie, tagged with
// the open key, and the OK answer must verify under the session key.
func (c *Client) openSession(ctx context.Context) error {
	id, err := randomID()
	if err != nil {
		return err
	}
	op := &opening{}
	body := wire.SessionOpen{TTLMs: uint32(c.cfg.SessionTTL / time.Millisecond), Lib: []byte(c.cfg.Library)}
	var openC2W *auth.MAC
	if c.key != nil {
		if op.nonce, err = auth.NewNonce(); err != nil {
			return err
		}
		body.Nonce, body.KeyName = op.nonce, []byte(c.key.name)
		op.w2c = auth.NewMAC(c.key.open, auth.WorkerToClient)
		openC2W = auth.NewMAC(c.key.open, auth.ClientToWorker)
	}
	cl := &call{id: id, typ: wire.TypeSessionOpen, dest: c.seeds[0], body: body,
		ch: make(chan reply, 4), buf: make([]byte, 0, wire.MaxDatagram)}
	op.call = cl
	c.mu.Lock()
	c.open = op
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.open = nil
		c.mu.Unlock()
	}()
	// The latest cookie and the worker that gave it: the open goes with it
	// (tagged) to that worker, without it (untagged) to another.
	var cookie [wire.CookieLen]byte
	var cookieFrom netip.AddrPort
	// created is the first send that can have created the session, where
	// its TTL counts from: an open with a cookie (no worker opens one
	// without), or, without a key, the first send.
	var created time.Time
	rto := c.cfg.RTOMin
	timer, timerC := c.clk.NewTimer(time.Hour)
	defer timer.Stop()
	si := 0
	var last string
	tried := map[netip.AddrPort]bool{}
	triedList := func() string {
		var ts []netip.AddrPort
		for _, s := range c.seeds {
			if tried[s] && !slices.Contains(ts, s) {
				ts = append(ts, s)
			}
		}
		return addrList(ts)
	}
	sendNow, timeouts := true, 0
	flagTries := 0 // sends since the open began or took a new cookie
	for {
		if sendNow {
			sendNow = false
			cl.dest = c.seeds[si%len(c.seeds)]
			tried[cl.dest] = true
			cl.mac = nil
			b := body
			// Offer bundles on every other send, first with the flag: an
			// older worker drops an open with it (SPEC §22).
			b.Bundle = !c.cfg.NoBundle && flagTries%2 == 0
			flagTries++
			if cookieFrom == cl.dest {
				b.Cookie = cookie[:]
				cl.mac = openC2W
			}
			cl.body = b
			if created.IsZero() && (c.key == nil || cl.mac != nil) {
				created = c.now()
			}
			c.send(cl)
			resetTimer(timer, timerC, jitter(rto))
			rto = min(2*rto, c.cfg.RTOMax)
		}
		select {
		case <-ctx.Done():
			if cookieFrom.IsValid() && last == wire.StatusCookie.String() {
				return fmt.Errorf("open session: %w: %s answered COOKIE but never the open tagged with key %q (%s): "+
					"the cluster does not know that key, it was revoked, or it is not the right key: %w",
					ErrAuth, cookieFrom, c.key.name, c.key.from, ctx.Err())
			}
			if last != "" {
				return fmt.Errorf("open session: %w (last answer %s; tried %s): %w", ErrUnavailable, last, triedList(), ctx.Err())
			}
			return fmt.Errorf("open session: %w (no answer from %s, %d sends): %w", ErrUnavailable, triedList(), cl.sends, ctx.Err())
		case <-c.ctx.Done():
			return ErrClosed
		case <-timerC:
			sendNow = true
			if timeouts++; timeouts%3 == 0 {
				si++ // three sends per seed, then the next one
			}
		case r := <-cl.ch:
			switch s := r.h.Status; {
			case s == wire.StatusCookie && c.key == nil:
				return fmt.Errorf("open session: %w: %s authenticates its clients (it answered COOKIE): "+
					"set Config.KeyFile, not Config.Insecure", ErrAuth, r.from)
			case s == wire.StatusCookie:
				last = s.String()
				if r.from == cl.dest && (r.cookie != cookie || cookieFrom != r.from) {
					cookie, cookieFrom = r.cookie, r.from
					sendNow = true // the same open at once, with the cookie
					rto = c.cfg.RTOMin
					flagTries = 0 // a new open (tagged): with the flag first again
				}
			case s == wire.StatusOK && r.unauth:
				return fmt.Errorf("open session: %w: worker %s does not authenticate: started with --insecure? "+
					"(refusing an unauthenticated session: the client has key %q; set Config.Insecure "+
					"for such a cluster)", ErrAuth, r.from, c.key.name)
			case s == wire.StatusOK:
				c.sessionOpened(created, &r)
				return nil
			case s.Retryable():
				last = s.String() // the timer resends
			case s == wire.StatusBadRequest && c.key == nil:
				return fmt.Errorf("open session: %w: %s refused a client without a key (worker: %s: %s): "+
					"if the cluster authenticates its clients, set Config.KeyFile", ErrAuth, r.from, s, r.msg)
			default:
				return statusError("open session", &r)
			}
		}
	}
}

// randomID returns a random non-zero request id for SESSION_OPEN: it is
// what matches the open's unauthenticated answers (COOKIE), so it is not
// guessable.
func randomID() (uint64, error) {
	var b [8]byte
	for {
		if _, err := crand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("open session: random request id: %w", err)
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id, nil
		}
	}
}

// openReply hands an answer to the SESSION_OPEN in flight, after the
// checks of wire/SPEC.md section 20 for a client with a key: COOKIE comes
// untagged; OK must verify under the session key its session id and
// nonces make (an untagged OK is handed on marked unauth, to be refused);
// anything else must verify under the open key. recvLoop only.
func (c *Client) openReply(h wire.Header, b []byte, from netip.AddrPort, r *reply) {
	c.mu.Lock()
	op := c.open
	c.mu.Unlock()
	if op == nil || op.call.id != h.Request {
		return
	}
	*r = reply{h: h, from: from}
	if err := r.decode(b, nil); err != nil {
		c.log.Debug("dropped reply", "type", h.Type, "reason", wire.Reason(err))
		return
	}
	if c.key != nil {
		switch {
		case h.Status == wire.StatusCookie:
		case h.Status == wire.StatusOK && zeroTag(b):
			r.unauth = true
		case h.Status == wire.StatusOK:
			sk := newSessionKeys(c.key.key, op.nonce, auth.Nonce(r.sess.WorkerNonce), h.Session)
			if !sk.verify(b) {
				c.authFailed("SESSION_OPEN OK", b)
				return
			}
			r.keys = sk
		case !op.w2c.Verify(b):
			c.authFailed("SESSION_OPEN "+h.Status.String(), b)
			return
		}
	}
	c.mu.Lock()
	if c.open == op {
		op.call.deliver(r)
	}
	c.mu.Unlock()
}

// sessionOpened starts the session of OK reply r to an open first sent
// (in the form that can create a session) at created.
func (c *Client) sessionOpened(created time.Time, r *reply) {
	c.shardCount = r.sess.ShardCount
	c.grace = time.Duration(r.sess.GraceMs) * time.Millisecond
	c.workerTTL = time.Duration(r.sess.WorkerTTLMs) * time.Millisecond
	c.sessionTTL = time.Duration(r.sess.TTLMs) * time.Millisecond
	if r.keys != nil {
		c.keys.Store(r.keys) // before the session id: recvLoop verifies what names it
	}
	c.session.Store(r.h.Session)
	if r.sess.Bundle && !c.cfg.NoBundle {
		c.takeBundlesFrom(r.from)
	}
	c.mu.Lock()
	c.home = r.from
	c.sessDL = c.leaseEnd(created, r.sess.TTLMs)
	c.nextRenew = created.Add(c.sessionTTL / 3)
	c.mu.Unlock()
}

// sessionGone ends the session: every token is lost and every request
// fails with err (wrapping ErrSessionExpired).
func (c *Client) sessionGone(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sessionGoneLocked(err)
}

func (c *Client) sessionGoneLocked(err error) {
	if c.state != stateOpen && c.state != stateClosing {
		return
	}
	closing := c.state == stateClosing
	c.state = stateDead
	c.deadErr = err
	close(c.dead)
	if closing {
		// Close's own SESSION_CLOSE overtook a renewal or keepalive still
		// in flight: the end it asked for, not news. Close ends the tokens
		// still held anyway (Err reports ErrClosed).
		c.loseAllLocked(fmt.Errorf("%w: %w", ErrClosed, err), false)
		c.log.Debug("tokend session ended while closing", "session", c.Session(), "err", err)
		return
	}
	c.loseAllLocked(err, false)
	c.log.Warn("tokend session ended", "session", c.Session(), "err", err)
}

func (c *Client) deadError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadErr
}

// usable reports whether new requests may start.
func (c *Client) usable() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateOpen:
		return nil
	case stateDead:
		return c.deadErr
	}
	return ErrClosed
}

// closeSession sends SESSION_CLOSE to the home worker (then the others);
// UNKNOWN_SESSION and SESSION_EXPIRED count as success (SPEC.md 11).
func (c *Client) closeSession() {
	// Close's bounds are in real time, whatever the client's clock: its
	// caller waits in real time.
	ctx, cancel := context.WithTimeout(c.ctx, closeTimeout)
	defer cancel()
	for _, to := range c.mapTargets() {
		cl := &call{typ: wire.TypeSessionClose, body: wire.Empty{}, dest: to}
		if c.register(ctx, cl, false) != nil {
			return
		}
		tctx, tcancel := context.WithTimeout(ctx, c.perTarget())
		r, _, err := c.exchange(tctx, cl, exOpts{keepSession: true})
		tcancel()
		c.finish(cl)
		if err == nil {
			if r.h.Status != wire.StatusOK && r.h.Status != wire.StatusUnknownSession &&
				r.h.Status != wire.StatusSessionExpired {
				c.log.Warn("session close refused", "status", r.h.Status, "msg", r.msg)
			}
			return
		}
		if ctx.Err() != nil {
			c.log.Debug("session close not answered; the lease will expire", "err", err)
			return
		}
	}
}

// maintLoop keeps the session and the grants alive: it renews the session,
// sends keepalives for the shards where tokens are held, declares tokens lost
// when their deadline plus grace passes, and refreshes the map while a lease
// is in doubt. It sleeps until the next thing is due.
func (c *Client) maintLoop() {
	timer, timerC := c.clk.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-timerC:
		case <-c.maintKick:
		}
		next := c.maintain()
		resetTimer(timer, timerC, max(next.Sub(c.now()), time.Millisecond))
	}
}

// maintain does what is due and returns when it must run next.
func (c *Client) maintain() time.Time {
	now := c.now()
	next := now.Add(time.Minute)
	soon := func(t time.Time) {
		if t.Before(next) {
			next = t
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() { c.maintNext = next }()
	c.lastMaint = now
	if c.state != stateOpen && c.state != stateClosing {
		return next
	}
	if !now.Before(c.sessDL) {
		c.sessionGoneLocked(fmt.Errorf("%w: not renewed in time", ErrSessionExpired))
		return next
	}
	soon(c.sessDL)
	if !c.renewing {
		if !now.Before(c.nextRenew) {
			c.renewing = true
			c.spawnLocked(c.renew)
		} else {
			soon(c.nextRenew)
		}
	}
	if c.cache.n > 0 {
		soon(c.expireCacheLocked(now))
	}
	probe := false
	perWorker := map[netip.AddrPort][]wire.ShardEpoch{}
	for k, l := range c.leases {
		if len(l.tokens) == 0 {
			// Kept while it could still vouch, for the next grant of the
			// shard (a client that acquires and releases in a loop would
			// otherwise make a new lease each time); not planned for.
			l.planned = false
			if l.moved || !now.Before(l.deadline) {
				delete(c.leases, k)
			}
			continue
		}
		l.planned = true
		if lost := c.lostAt(l); !now.Before(lost) {
			// The grace rule applies to grants the application relies on,
			// whose deadline was established and then lapsed; a pending
			// grant (Acquire is still confirming it) is not lost by it.
			pending := false
			for _, t := range l.tokens {
				if t.pending {
					pending = true
					continue
				}
				c.loseLocked(t, fmt.Errorf("%w: not vouched for since %v and not reclaimed within the grace period",
					ErrLost, now.Sub(l.deadline).Round(time.Millisecond)), true)
			}
			if !pending {
				delete(c.leases, k)
				continue
			}
		} else {
			soon(lost)
		}
		if c.cfg.OnJeopardy != nil {
			soon(c.jeopardyLocked(l, now))
		}
		if !now.Before(l.deadline) {
			probe = true // in jeopardy: watch the map for a new owner
		} else {
			soon(l.deadline)
		}
		if !l.moved {
			perWorker[k.addr] = append(perWorker[k.addr], wire.ShardEpoch{Shard: k.shard, Epoch: k.epoch})
		}
	}
	if probe {
		if !now.Before(c.nextProbe) {
			c.nextProbe = now.Add(c.probeInterval())
			kick(c.mapKick)
		}
		soon(c.nextProbe)
	}
	for addr, ks := range c.kas {
		if _, ok := perWorker[addr]; !ok && !ks.inflight {
			delete(c.kas, addr)
		}
	}
	for addr, entries := range perWorker {
		ks := c.kas[addr]
		if ks == nil {
			ks = &kaState{next: now.Add(c.kaInterval())}
			c.kas[addr] = ks
		}
		if ks.inflight {
			continue
		}
		if now.Before(ks.next) {
			soon(ks.next)
			continue
		}
		ks.inflight = true
		slices.SortFunc(entries, func(a, b wire.ShardEpoch) int { return cmp.Compare(a.Shard, b.Shard) })
		c.spawnLocked(func() { c.keepalive(addr, entries) })
	}
	if c.state == stateOpen {
		if t := c.doneDueLocked(now); !t.IsZero() {
			soon(t)
		}
	}
	return next
}

// jeopardyLocked calls OnJeopardy for the tokens of l whose validity is
// within JeopardyBefore of its end, once per stretch of doubt, and returns
// when it must look again.
func (c *Client) jeopardyLocked(l *lease, now time.Time) time.Time {
	until := l.deadline
	if c.sessDL.Before(until) {
		until = c.sessDL
	}
	jb := c.cfg.JeopardyBefore
	if jb == 0 {
		jb = min(c.workerTTL, c.sessionTTL) / 3
	}
	at := until.Add(-jb)
	doubt := !now.Before(at)
	for _, t := range l.tokens {
		switch {
		case !doubt:
			t.jeopardy = false
		case !t.jeopardy && !t.pending && !t.cached:
			t.jeopardy = true
			h := c.cfg.OnJeopardy
			c.spawnLocked(func() { h(t, until) })
		}
	}
	if doubt {
		return now.Add(time.Minute) // renewal or loss will change things
	}
	return at
}

// keepaliveSoonLocked makes the keepalive to addr due now (a fresh grant
// whose deadline is near).
func (c *Client) keepaliveSoonLocked(addr netip.AddrPort) {
	ks := c.kas[addr]
	if ks == nil {
		ks = &kaState{}
		c.kas[addr] = ks
	}
	ks.next = time.Time{}
	kick(c.maintKick)
}

// keepalive asks addr to vouch for entries (at most 141 per datagram) and
// renews the leases it answers OK for.
func (c *Client) keepalive(addr netip.AddrPort, entries []wire.ShardEpoch) {
	start := c.now()
	failed, unvouched := false, false
	for len(entries) > 0 {
		chunk := entries[:min(len(entries), wire.MaxKeepaliveEntries)]
		entries = entries[len(chunk):]
		ok, vouched := c.keepaliveChunk(addr, chunk)
		failed = failed || !ok
		unvouched = unvouched || (ok && !vouched)
	}
	c.mu.Lock()
	if ks := c.kas[addr]; ks != nil {
		ks.inflight = false
		ks.next = start.Add(c.kaInterval())
		switch {
		case failed:
			ks.next = c.now().Add(c.cfg.RTOMin) // try again soon; the exchange had its own backoff
		case unvouched:
			// The worker answered but could not vouch for its own lease
			// (validity 0, SPEC §17.16: it cannot reach etcd for a moment,
			// e.g. while etcd elects a leader). Ask again soon rather than
			// in W/4: the grants are valid again as soon as it can vouch,
			// not up to W/4 later (recovery.TestEtcdMemberStop).
			ks.next = c.now().Add(max(c.cfg.RTOMin, c.kaInterval()/10))
		}
	}
	c.mu.Unlock()
	if failed {
		kick(c.mapKick) // the worker may be gone: has the shard moved?
	}
	kick(c.maintKick)
}

// keepaliveChunk reports whether addr answered, and whether it vouched for
// the entries it owns (validity_ms > 0).
func (c *Client) keepaliveChunk(addr netip.AddrPort, chunk []wire.ShardEpoch) (ok, vouched bool) {
	ctx, cancel := c.withTimeout(c.ctx, c.kaInterval())
	defer cancel()
	cl := &call{typ: wire.TypeKeepalive, body: wire.Keepalive{Entries: chunk}, dest: addr}
	if c.register(ctx, cl, false) != nil {
		return false, false
	}
	r, _, err := c.exchange(ctx, cl, exOpts{})
	c.finish(cl)
	if err != nil || r.h.Status != wire.StatusOK || len(r.kaStatuses) != len(chunk) {
		return false, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	doubt := false
	for i, st := range r.kaStatuses {
		l := c.leases[leaseKey{addr, chunk[i].Shard, chunk[i].Epoch}]
		if l == nil {
			continue
		}
		if st != wire.StatusOK {
			doubt = true // the worker no longer serves the shard at that epoch
			continue
		}
		if r.kaValidity > 0 {
			c.extendLocked(l, c.leaseEnd(cl.firstSend, r.kaValidity))
		}
	}
	if doubt {
		kick(c.mapKick)
	}
	return true, r.kaValidity > 0
}

// renew renews the session lease with KEEPALIVE+RENEW, at the home worker
// first and then at the others in turn, until one does or the session ends.
func (c *Client) renew() {
	defer func() {
		c.mu.Lock()
		c.renewing = false
		c.mu.Unlock()
		kick(c.maintKick)
	}()
	c.mu.Lock()
	to := c.home
	c.mu.Unlock()
	for c.ctx.Err() == nil {
		c.mu.Lock()
		left := c.sessDL.Sub(c.now())
		alive := (c.state == stateOpen || c.state == stateClosing) && left > 0
		c.mu.Unlock()
		if !alive {
			return
		}
		// Each try takes a fresh request id: a worker renews once per id
		// and does not answer a copy of a KEEPALIVE it applied (wire/SPEC.md
		// section 20), so once the answer to an id is lost, sending the id
		// again is in vain; the retransmissions within a try cover a lost
		// request. A slow etcd may get one renewal queued per try; their
		// late answers come to ids given up.
		try := min(max(c.sessionTTL/8, 4*c.cfg.RTOMin), left)
		ctx, cancel := c.withTimeout(c.ctx, try)
		cl := &call{typ: wire.TypeKeepalive, body: wire.Keepalive{Renew: true}, dest: to}
		if c.register(ctx, cl, false) != nil {
			cancel()
			return
		}
		// Retransmit at least every TTL/12, not on the RTO schedule up to
		// RTOMax (1s): about ten sends fit in the 2/3 TTL left, so lost
		// datagrams do not end the session.
		r, _, err := c.exchange(ctx, cl, exOpts{rtoMax: c.sessionTTL / 12})
		cancel()
		c.finish(cl)
		if err == nil && r.h.Status == wire.StatusOK && r.kaTTL > 0 {
			c.mu.Lock()
			if dl := c.leaseEnd(cl.firstSend, r.kaTTL); dl.After(c.sessDL) {
				c.sessDL = dl
			}
			c.nextRenew = cl.firstSend.Add(time.Duration(r.kaTTL) * time.Millisecond / 3)
			if c.home != to {
				c.log.Info("session renewed at another worker", "home", to.String())
				c.home = to
			}
			c.mu.Unlock()
			return
		}
		if err == nil && (r.h.Status == wire.StatusUnknownSession || r.h.Status == wire.StatusSessionExpired) {
			return // exchange ended the session
		}
		c.log.Debug("session renewal failed", "worker", to.String(), "err", err, "status", r.h.Status)
		to = c.nextWorker(to)
		c.pause(c.cfg.RTOMin)
	}
}

// nextWorker returns the worker after cur among the map's workers and the seeds.
func (c *Client) nextWorker(cur netip.AddrPort) netip.AddrPort {
	ts := c.mapTargets()
	i := slices.Index(ts, cur)
	return ts[(i+1)%len(ts)]
}
