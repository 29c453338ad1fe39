package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// holder is a lean raw-datagram client (wire/SPEC.md) that opens one
// session and holds many tokens in it while keeping no per-token state:
// token names are derived from a counter, and SESSION_CLOSE gives them all
// back at once. The process heap then grows by what the worker spends per
// held token, not by a client library's bookkeeping (a clientlib.Token
// costs the client a few hundred bytes of its own).
//
// It does what SPEC.md asks of a client for the requests it makes:
// strictly increasing request ids, ack = oldest unfinished id, at most
// holderWindow unfinished, retransmission with the same id (a renewal
// with a new one), retry of
// retryable statuses, map refresh on NOT_OWNER/STALE_EPOCH, and session
// renewal (KEEPALIVE RENEW), and authentication (wire/SPEC.md section
// 20, rawauth.go): replies whose tag does not verify are dropped and
// counted (badTags). It never waits in a queue (ACQUIRE TRY on
// names nobody else uses) and does not renew per-shard validity: it only
// holds, it does not act on what it holds.
type holder struct {
	mu sync.Mutex // held by acquire and renewIfDue's caller: one user of the socket at a time

	raw    *net.UDPConn
	pc     *ipv4.PacketConn
	seed   *net.UDPAddr
	prefix string
	key    *rawKey   // nil: the cluster runs --insecure
	c2w    *auth.MAC // the session's MACs (nil without a key)
	w2c    *auth.MAC

	session   uint64
	shards    uint32
	ttl       time.Duration
	renewedAt time.Time
	owners    []shardOwner // by shard
	mapVer    uint64
	next      uint64 // the last request id used
	held      int64  // tokens held now
	named     int64  // token names used so far: prefix0 .. prefix(named-1)
	errs      int64  // requests that failed (final status other than OK)
	badTags   int64  // replies dropped: their auth tag did not verify
	lastErr   wire.Status

	rbuf []byte
}

type shardOwner struct {
	addr  *net.UDPAddr
	epoch uint32
}

const (
	holderTTL    = 120 * time.Second       // session TTL asked for; renewed every third
	holderWindow = 128                     // unfinished requests (SPEC.md: at most 256)
	holderSpan   = 768                     // request ids from the ack on (SPEC: the worker caches at least 1024 replies above the ack)
	holderRTO    = 30 * time.Millisecond   // first retransmission
	holderRTOMax = time.Second             // retransmission backoff cap
	holderCall   = 200 * time.Millisecond  // wait per try of a synchronous request
	holderTries  = 50                      // tries of a synchronous request
	holderPoll   = 5 * time.Millisecond    // read timeout of the pipeline loop
	holderScan   = 10 * time.Millisecond   // how often the pipeline looks for requests to resend
	holderLib    = "tokend-bench-holder/1" // library name in SESSION_OPEN
	// holderNames is the most tokens a holder holds: the worker's default
	// limit of names per session (worker.Limits.NamesPerSession), above
	// which it answers LIMIT.
	holderNames = 10_000
)

// errHolder reports a holder failure.
var errHolder = errors.New("bench: holder")

// dialHolder opens a session at tgt's first seed and fetches the
// delegation map.
func dialHolder(ctx context.Context, tgt target, prefix string) (*holder, error) {
	key, err := loadRawKey(tgt)
	if err != nil {
		return nil, err
	}
	sa, err := net.ResolveUDPAddr("udp4", tgt.seeds[0])
	if err != nil {
		return nil, err
	}
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	raw.SetReadBuffer(4 << 20) // best effort: room for a window of replies
	h := &holder{raw: raw, pc: ipv4.NewPacketConn(raw), seed: sa, prefix: prefix, key: key, rbuf: make([]byte, 2048)}
	if err := h.open(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if err := h.fetchMap(ctx); err != nil {
		h.close(ctx)
		return nil, err
	}
	return h, nil
}

// call sends pkt (retransmitting the same bytes) to `to` until a datagram
// that match accepts arrives; it returns that datagram's header and bytes
// (valid until the next call).
func (h *holder) call(ctx context.Context, to *net.UDPAddr, pkt []byte, match func(wire.Header, []byte) bool) (wire.Header, []byte, error) {
	return h.callTries(ctx, to, pkt, match, holderTries)
}

// callTries is call with at most tries sends.
func (h *holder) callTries(ctx context.Context, to *net.UDPAddr, pkt []byte, match func(wire.Header, []byte) bool, tries int) (wire.Header, []byte, error) {
	for try := 0; try < tries && ctx.Err() == nil; try++ {
		if _, err := h.raw.WriteToUDP(pkt, to); err != nil {
			return wire.Header{}, nil, err
		}
		h.raw.SetReadDeadline(time.Now().Add(holderCall))
		for {
			n, _, err := h.raw.ReadFromUDP(h.rbuf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return wire.Header{}, nil, err
			}
			rh, err := wire.ParseHeader(h.rbuf[:n])
			if err == nil && match(rh, h.rbuf[:n]) {
				return rh, h.rbuf[:n], nil
			}
		}
	}
	if ctx.Err() != nil {
		return wire.Header{}, nil, ctx.Err()
	}
	return wire.Header{}, nil, fmt.Errorf("%w: no answer from %v", errHolder, to)
}

// open opens the session (wire/SPEC.md section 20: with a key, a first
// open without cookie, then the same open with the worker's cookie).
func (h *holder) open(ctx context.Context) error {
	id := rand.Uint64() | 1
	nonce, err := auth.NewNonce()
	if err != nil {
		return err
	}
	openC2W, openW2C := h.key.openMACs()
	m := wire.SessionOpen{TTLMs: uint32(holderTTL / time.Millisecond), Lib: []byte(holderLib)}
	var cookie []byte
	for ctx.Err() == nil {
		pkt, err := h.key.openDatagram(nil, m, id, nonce, cookie, openC2W)
		if err != nil {
			return err
		}
		sent := time.Now()
		var sk auth.Key
		rh, b, err := h.call(ctx, h.seed, pkt, func(rh wire.Header, b []byte) bool {
			if rh.Type != wire.TypeSessionOpenReply || rh.Request != id {
				return false
			}
			var ok bool
			if sk, ok = h.key.verifyOpenReply(rh, b, nonce, openW2C); !ok {
				h.badTags++
			}
			return ok
		})
		if err != nil {
			return err
		}
		if rh.Status == wire.StatusCookie {
			if h.key == nil {
				return errNoKey
			}
			var c wire.Cookie
			if err := c.Decode(rh, b); err != nil {
				return err
			}
			cookie = c.Cookie[:]
			continue
		}
		if rh.Status.Retryable() {
			time.Sleep(holderRTO)
			continue
		}
		if rh.Status != wire.StatusOK {
			return fmt.Errorf("%w: SESSION_OPEN: %v", errHolder, rh.Status)
		}
		var r wire.SessionReply
		if err := r.Decode(rh, b); err != nil {
			return err
		}
		h.session, h.shards, h.renewedAt = rh.Session, r.ShardCount, sent
		h.c2w, h.w2c = h.key.sessionMACs(sk)
		h.ttl = time.Duration(r.TTLMs) * time.Millisecond
		return nil
	}
	return ctx.Err()
}

// fetchMap reads the whole delegation map (MAP_REQUEST without a session,
// so that it takes no request id of the session).
func (h *holder) fetchMap(ctx context.Context) error {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			time.Sleep(holderRTO)
		}
		owners := make([]shardOwner, h.shards)
		var version uint64
		first, complete := uint32(0), true
		for first < h.shards {
			id := rand.Uint64() | 1
			pkt, err := wire.MapRequest{FirstShard: first}.Append(nil, wire.Header{Request: id})
			if err != nil {
				return err
			}
			rh, b, err := h.call(ctx, h.seed, pkt, func(rh wire.Header, _ []byte) bool {
				return rh.Type == wire.TypeMapReply && rh.Request == id
			})
			if err != nil {
				return err
			}
			var m wire.MapReply
			if rh.Status != wire.StatusOK || m.Decode(rh, b) != nil || len(m.Runs) == 0 ||
				(version != 0 && m.MapVersion != version) {
				complete = false
				break
			}
			version = m.MapVersion
			addrs := map[uint16]*net.UDPAddr{}
			for _, w := range m.Workers {
				if a, err := net.ResolveUDPAddr("udp4", string(w.Addr)); err == nil {
					addrs[w.Index] = a
				}
			}
			for _, run := range m.Runs {
				a := addrs[run.Worker]
				if a == nil { // no owner now (NoWorker) or an address we cannot use
					complete = false
				}
				for s := run.First; s < run.First+run.Count && s < h.shards; s++ {
					owners[s] = shardOwner{a, run.Epoch}
				}
				first = run.First + run.Count
			}
		}
		if complete {
			h.owners, h.mapVer = owners, version
			return nil
		}
	}
	return ctx.Err()
}

// pend is an unfinished request of the pipeline.
type pend struct {
	idx   int64 // token index; -1: the session renewal
	sent  time.Time
	first time.Time
	rto   time.Duration
}

// acquire makes the holder hold n more tokens (EX, TRY, whole range),
// with up to holderWindow requests in flight, renewing the session as
// needed. Tokens refused with a final status are counted in h.errs and
// replaced by others; more than maxErrors refusals stop it.
func (h *holder) acquire(ctx context.Context, n int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	target := h.held + n
	pending := make(map[uint64]*pend, holderWindow)
	lo := h.next + 1 // no request below lo is unfinished
	ackFor := func(id uint64) uint64 {
		for lo < id && pending[lo] == nil {
			lo++
		}
		return lo
	}
	out := make([]ipv4.Message, 0, echoBatch)
	bufs := make([][]byte, echoBatch)
	for i := range bufs {
		bufs[i] = make([]byte, 0, wire.MaxDatagram)
	}
	in := make([]ipv4.Message, echoBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1536)}
	}
	var (
		name     []byte
		renewing bool
		lastScan time.Time
		refresh  bool
	)
	// build appends request id to the batch (flushing it when full).
	build := func(id uint64, p *pend) error {
		if len(out) == cap(out) {
			if err := h.flush(out); err != nil {
				return err
			}
			out = out[:0]
		}
		hd := wire.Header{Session: h.session, Request: id, Ack: ackFor(id), MapVersion: h.mapVer}
		buf := bufs[len(out)][:0]
		var (
			to  *net.UDPAddr
			err error
		)
		if p.idx < 0 {
			buf, err = wire.Keepalive{Renew: true}.Append(buf, hd)
			to = h.seed
		} else {
			name = strconv.AppendInt(append(name[:0], h.prefix...), p.idx, 10)
			hd.Shard = wire.Shard(name, h.shards)
			o := h.owners[hd.Shard]
			hd.Epoch, to = o.epoch, o.addr
			buf, err = wire.Acquire{Try: true, Mode: wire.EX, Name: name}.Append(buf, hd)
		}
		if err != nil {
			return err
		}
		if err := sealWith(h.c2w, buf); err != nil {
			return err
		}
		bufs[len(out)] = buf
		out = append(out, ipv4.Message{Buffers: [][]byte{buf}, Addr: to})
		return nil
	}
	for h.held < target || len(pending) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		if h.errs > maxErrors {
			return fmt.Errorf("%w: %d acquires refused, last %v", errHolder, h.errs, h.lastErr)
		}
		if h.badTags > maxErrors {
			return fmt.Errorf("%w: %d replies whose auth tag does not verify", errHolder, h.badTags)
		}
		if refresh {
			if err := h.fetchMap(ctx); err != nil {
				return err
			}
			refresh = false
		}
		now := time.Now()
		// The renewal goes even with the window full (one more than
		// holderWindow, well within SPEC.md's 256): requests the worker
		// keeps answering with a retryable status must not starve it.
		if !renewing && now.Sub(h.renewedAt) > h.ttl/3 {
			h.next++
			p := &pend{idx: -1, sent: now, first: now, rto: holderRTO}
			pending[h.next] = p
			renewing = true
			if err := build(h.next, p); err != nil {
				return err
			}
		}
		for len(pending) < holderWindow && h.held+int64(len(pending)) < target && h.next+1-ackFor(h.next+1) < holderSpan {
			h.next++
			p := &pend{idx: h.named, sent: now, first: now, rto: holderRTO}
			h.named++
			pending[h.next] = p
			if err := build(h.next, p); err != nil {
				return err
			}
		}
		if now.Sub(lastScan) >= holderScan {
			lastScan = now
			for id, p := range pending {
				if now.Sub(p.sent) >= p.rto {
					p.sent = now
					p.rto = min(2*p.rto, holderRTOMax)
					if p.idx < 0 {
						// A worker renews once per request id and drops
						// a copy (SPEC.md section 20, Replays): a renewal
						// whose answer was lost goes again under a new id.
						delete(pending, id)
						h.next++
						id = h.next
						pending[id] = p
					}
					if err := build(id, p); err != nil {
						return err
					}
				}
			}
		}
		if err := h.flush(out); err != nil {
			return err
		}
		out = out[:0]
		h.raw.SetReadDeadline(time.Now().Add(holderPoll))
		k, err := h.pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return err
		}
		for i := range in[:k] {
			b := in[i].Buffers[0][:in[i].N]
			rh, err := wire.ParseHeader(b)
			if err != nil || rh.Session != h.session {
				continue
			}
			if !verifiedBy(h.w2c, b) {
				h.badTags++
				continue
			}
			p := pending[rh.Request]
			if p == nil || !rh.Type.IsReply() {
				continue // a duplicate, or a REVOKE (nobody else uses these names)
			}
			switch {
			case rh.Type == wire.TypeKeepaliveReply:
				if rh.Status == wire.StatusOK {
					h.renewedAt = p.first
				}
				renewing = false
				delete(pending, rh.Request)
			case rh.Status == wire.StatusOK:
				h.held++
				delete(pending, rh.Request)
			case rh.Status == wire.StatusNotOwner || rh.Status == wire.StatusStaleEpoch:
				refresh, p.sent = true, time.Now() // resend after an RTO, to the new owner
			case rh.Status.Retryable():
				p.sent = time.Now() // not applied: resend the same id after an RTO
			default:
				h.errs++
				h.lastErr = rh.Status
				delete(pending, rh.Request)
			}
		}
	}
	return nil
}

// renewIfDue renews the session if a third of its TTL has passed since
// the last renewal, for a holder that is not acquiring (acquire renews
// by itself). Each try takes a new request id: a worker renews once per
// id and drops a copy (SPEC.md section 20, Replays).
func (h *holder) renewIfDue(ctx context.Context) error {
	if time.Since(h.renewedAt) <= h.ttl/3 {
		return nil
	}
	for try := 0; try < holderTries && ctx.Err() == nil; try++ {
		h.next++
		id := h.next
		pkt, err := wire.Keepalive{Renew: true}.Append(nil, wire.Header{Session: h.session, Request: id, Ack: id, MapVersion: h.mapVer})
		if err != nil {
			return err
		}
		if err := sealWith(h.c2w, pkt); err != nil {
			return err
		}
		sent := time.Now()
		rh, _, err := h.callTries(ctx, h.seed, pkt, func(rh wire.Header, b []byte) bool {
			return rh.Type == wire.TypeKeepaliveReply && rh.Request == id && rh.Session == h.session && verifiedBy(h.w2c, b)
		}, 1)
		if errors.Is(err, errHolder) || (err == nil && rh.Status.Retryable()) {
			continue // no answer in time, or not applied: again, with a new id
		}
		if err != nil {
			return err
		}
		if rh.Status != wire.StatusOK {
			return fmt.Errorf("%w: session renewal: %v", errHolder, rh.Status)
		}
		h.renewedAt = sent
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: session renewal: no answer", errHolder)
}

// flush sends a batch.
func (h *holder) flush(ms []ipv4.Message) error {
	for len(ms) > 0 {
		k, err := h.pc.WriteBatch(ms, 0)
		if err != nil {
			return fmt.Errorf("%w: send: %v", errHolder, err)
		}
		ms = ms[k:]
	}
	return nil
}

// close ends the session (every held token is given back) and closes the
// socket. UNKNOWN_SESSION or SESSION_EXPIRED after a retransmission count
// as success (SPEC.md 11).
func (h *holder) close(ctx context.Context) error {
	defer h.raw.Close()
	h.next++
	id := h.next
	pkt, err := wire.Empty{}.Append(nil, wire.Header{Type: wire.TypeSessionClose, Session: h.session, Request: id, Ack: id, MapVersion: h.mapVer})
	if err != nil {
		return err
	}
	if err := sealWith(h.c2w, pkt); err != nil {
		return err
	}
	_, _, err = h.call(ctx, h.seed, pkt, func(rh wire.Header, b []byte) bool {
		return rh.Type == wire.TypeSessionCloseReply && rh.Request == id && verifiedBy(h.w2c, b)
	})
	h.held = 0
	return err
}
