package worker

// The guard of the handoff listener (wire/SPEC.md section 18,
// "Authentication" and "Connections"): mutual authentication of the two
// sides of an exchange (a pull or a deadlock-detector query) under a key
// derived from the cluster key, a MAC over the answer that binds it to
// that exchange, deadlines, and limits on the connections held at once,
// overall and per source address. The key, the MACs, the frames and the
// asking side are package cluster/handoffauth, shared with the
// coordinator's detector.

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/cluster/handoffauth"
)

const (
	// handshakeTimeout bounds the time from accepting a connection to
	// having read its request and, when authenticated, its proof.
	handshakeTimeout = 2 * time.Second
	// idleTimeout bounds each read and each write (in chunks of
	// idleChunk bytes) of a handoff connection: a peer that stops reading
	// or writing is dropped.
	idleTimeout = time.Second
	idleChunk   = 64 << 10
	// maxPeerConns bounds the connections one source address holds at once
	// before it has proven knowledge of the cluster key (without Auth:
	// for the connection's whole life).
	maxPeerConns = 2
	// warnEvery is the least time between two WARN logs about one source.
	warnEvery = time.Minute
	// maxWarned bounds the sources whose last WARN is remembered.
	maxWarned = 4096
)

// authFailure is an authentication failure of an answer seen by the
// asker; reason is its metric label.
type authFailure struct{ reason string }

func (e *authFailure) Error() string { return "handoff authentication failed: " + e.reason }

// Reasons of tokend_worker_handoff_auth_failures_total.
const (
	// Seen by the worker asked: a pull's old owner, or the worker the
	// deadlock detector queries.
	authNoNonce  = "no_nonce"  // a pull or detector query without credentials while Auth is set
	authBadProof = "bad_proof" // the asker's proof is missing or wrong
	// Seen by the new owner.
	authNoChallenge = "no_challenge" // the old owner answered without authenticating
	authBadSeal     = "bad_seal"     // the answer's MAC is missing or wrong
)

// Reasons of tokend_worker_handoff_refused_connections_total.
const (
	refusedGlobal  = "global_limit"      // maxHandoffConns connections open
	refusedPeer    = "peer_limit"        // maxPeerConns unauthenticated connections from that address
	refusedTimeout = "handshake_timeout" // request or proof not read in time
	refusedEvicted = "evicted"           // closed in its handshake to make room for a new connection
	refusedBad     = "bad_request"       // a malformed first frame
)

// handoffGuard holds the handoff listener's admission state and the
// counters and logs of its refusals and authentication failures.
type handoffGuard struct {
	authFailures *prometheus.CounterVec // reason
	refused      *prometheus.CounterVec // reason

	mu      sync.Mutex              // guards the fields below
	peers   map[netip.Addr]int      // connections counted against each source address
	pending map[*handshake]struct{} // connections in their handshake
	warned  map[string]time.Time    // source -> time of its last WARN
}

// handshake is a connection in its handshake.
type handshake struct {
	c  net.Conn
	at time.Time
}

// newHandoffGuard returns a guard whose collectors the caller registers.
func newHandoffGuard(ns, sub string) *handoffGuard {
	return &handoffGuard{
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoff_auth_failures_total",
			Help: "Handoff pulls and deadlock-detector queries that failed authentication, by reason (no_nonce, bad_proof: seen by the worker asked; no_challenge, bad_seal: seen by a pulling new owner)."},
			[]string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoff_refused_connections_total",
			Help: "Handoff listener connections closed without an answer, by reason (global_limit, peer_limit, evicted, handshake_timeout, bad_request)."},
			[]string{"reason"}),
		peers:   map[netip.Addr]int{},
		pending: map[*handshake]struct{}{},
		warned:  map[string]time.Time{},
	}
}

// begin records that c is in its handshake.
func (g *handoffGuard) begin(c net.Conn) *handshake {
	h := &handshake{c: c, at: time.Now()}
	g.mu.Lock()
	g.pending[h] = struct{}{}
	g.mu.Unlock()
	return h
}

// end records that h's handshake is over (or its connection closed).
func (g *handoffGuard) end(h *handshake) {
	g.mu.Lock()
	delete(g.pending, h)
	g.mu.Unlock()
}

// evictOldest closes the connection longest in its handshake, if any, and
// reports whether there was one.
func (g *handoffGuard) evictOldest() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	var old *handshake
	for h := range g.pending {
		if old == nil || h.at.Before(old.at) {
			old = h
		}
	}
	if old == nil {
		return false
	}
	delete(g.pending, old)
	old.c.Close()
	g.refused.WithLabelValues(refusedEvicted).Inc()
	return true
}

// admit counts a connection from ip unless ip holds maxPeerConns already.
func (g *handoffGuard) admit(ip netip.Addr) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peers[ip] >= maxPeerConns {
		return false
	}
	g.peers[ip]++
	return true
}

// leave uncounts a connection admit counted.
func (g *handoffGuard) leave(ip netip.Addr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peers[ip]--; g.peers[ip] <= 0 {
		delete(g.peers, ip)
	}
}

// warn logs msg at WARN if source was not warned about in the last
// warnEvery, else at DEBUG.
func (g *handoffGuard) warn(log *slog.Logger, now time.Time, source, msg string, args ...any) {
	g.mu.Lock()
	last, seen := g.warned[source]
	loud := !seen || now.Sub(last) >= warnEvery
	if loud {
		if len(g.warned) >= maxWarned {
			for s, t := range g.warned {
				if now.Sub(t) >= warnEvery {
					delete(g.warned, s)
				}
			}
		}
		if len(g.warned) < maxWarned {
			g.warned[source] = now
		}
	}
	g.mu.Unlock()
	args = append(args, "source", source)
	if loud {
		log.Warn(msg, args...)
	} else {
		log.Debug(msg, args...)
	}
}

// remoteIP is the source address of c (unmapped), or the zero Addr.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// timeoutConn bounds each Read and each chunk of a Write by idle, and all
// of them by end, the exchange's deadline (socket deadlines: real time).
// Once ctx ends every operation fails.
type timeoutConn struct {
	net.Conn
	done func() bool // reports whether the exchange is cancelled
	idle time.Duration
	end  time.Time
}

func (c *timeoutConn) arm() {
	d := time.Now().Add(c.idle)
	if c.end.Before(d) {
		d = c.end
	}
	c.Conn.SetDeadline(d)
	if c.done() { // after the deadline is set: a cancellation's deadline is not overwritten
		c.Conn.SetDeadline(time.Now())
	}
}

func (c *timeoutConn) Read(p []byte) (int, error) {
	c.arm()
	return c.Conn.Read(p)
}

func (c *timeoutConn) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), idleChunk)
		c.arm()
		m, err := c.Conn.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// isTimeout reports whether err is a socket deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// authAsker authenticates the asker of req (read as reqFrame: a pull or a
// detector query) on the connection read through r and written through c:
// it sends this worker's nonce and checks the asker's proof (in constant
// time). It returns the handoff key and the nonce, or ok false: nothing
// more is to be sent (a failure is counted and logged).
func (w *Worker) authAsker(c io.Writer, r io.Reader, reqFrame []byte, req *pullRequest, src string) (key, nonce []byte, ok bool) {
	g := w.met.ho
	what := "handoff pull refused: not authenticated"
	if req.Deadlock != nil {
		what = "deadlock detector query refused: not authenticated"
	}
	fail := func(reason string, args ...any) {
		g.authFailures.WithLabelValues(reason).Inc()
		g.warn(w.log, w.clk.Now(), src, what, append(args, "reason", reason, "from", req.From)...)
	}
	if len(req.Nonce) != handoffauth.NonceLen {
		fail(authNoNonce)
		handoffauth.WriteFrame(c, handoffauth.Challenge{Proto: challengeProto, Error: "authentication required"})
		return nil, nil, false
	}
	nonce, err := handoffauth.NewNonce()
	if err != nil {
		w.log.Error("handoff nonce", "err", err)
		return nil, nil, false
	}
	if _, err := handoffauth.WriteFrame(c, handoffauth.Challenge{Proto: challengeProto, Nonce: nonce}); err != nil {
		w.log.Debug("handoff challenge not sent", "to", req.From, "err", err)
		return nil, nil, false
	}
	var p handoffauth.Proof
	if err := handoffauth.ReadFrame(r, handoffauth.MaxProofFrame, &p); err != nil {
		switch {
		case isTimeout(err):
			g.refused.WithLabelValues(refusedTimeout).Inc()
		case errors.Is(err, net.ErrClosed): // evicted, and counted then
		default:
			fail(authBadProof, "err", err)
		}
		return nil, nil, false
	}
	key = handoffauth.Key(w.cfg.Auth.ClusterKey)
	if !hmac.Equal(p.Proof, handoffauth.MAC(key, handoffauth.DirAsker, req.Nonce, nonce, reqFrame)) {
		fail(authBadProof)
		return nil, nil, false
	}
	return key, nonce, true
}

// exchange makes one pull exchange (handoffauth.Exchange) with the old
// owner at addr: it sends req, with a nonce when key (handoffauth.Key of
// the cluster key) is set, and returns the answer's frame. Refusals wrap
// errHandoffRefused; authentication failures also carry an *authFailure.
// n counts the bytes read.
func exchange(ctx context.Context, addr string, req *pullRequest, key []byte) (frame []byte, n int, err error) {
	frame, n, err = handoffauth.Exchange(ctx, addr, key, func(nonce []byte) ([]byte, error) {
		r := *req
		r.Nonce = nonce
		return handoffauth.MarshalFrame(&r)
	}, maxPullResponse)
	switch {
	case errors.Is(err, handoffauth.ErrNoChallenge):
		err = fmt.Errorf("%w: %w", errHandoffRefused, &authFailure{authNoChallenge})
	case errors.Is(err, handoffauth.ErrBadSeal):
		err = fmt.Errorf("%w: %w", errHandoffRefused, &authFailure{authBadSeal})
	case errors.Is(err, handoffauth.ErrRefused):
		err = fmt.Errorf("%w: %w", errHandoffRefused, err)
	}
	return frame, n, err
}

// protoRefusal is the error of an answer to a pull of a protocol the old
// owner does not speak (every version has answered so).
func protoRefusal(proto int) string { return fmt.Sprintf("protocol %d not supported", proto) }

// protoDowngrade is the answer of an old owner that does not speak the
// pull's protocol version but an older one, proto.
type protoDowngrade struct {
	proto int
	msg   string
}

func (e *protoDowngrade) Error() string {
	return fmt.Sprintf("worker: handoff: the old owner speaks protocol %d: %s", e.proto, e.msg)
}

// pullOnce makes one attempt of a pull: exchange, then decode the answer.
// An answer in another protocol than req's is refused, except the refusal
// of an owner that speaks only an older one (*protoDowngrade).
func pullOnce(ctx context.Context, addr string, req *pullRequest, key []byte) (*pullResponse, int, error) {
	raw, n, err := exchange(ctx, addr, req, key)
	if err != nil {
		return nil, n, err
	}
	var resp pullResponse
	if err := handoffauth.UnmarshalFrame(raw, &resp); err != nil {
		return nil, n, err
	}
	if resp.Error != "" && resp.Retry {
		return nil, n, fmt.Errorf("%w: %s", errHandoffRetry, resp.Error)
	}
	if resp.Error == protoRefusal(req.Proto) && resp.Proto >= handoffProtoMin && resp.Proto < req.Proto {
		// An old owner that speaks only an older protocol refuses a newer
		// one, naming the one it speaks: ask again in that one.
		return nil, n, &protoDowngrade{proto: resp.Proto, msg: resp.Error}
	}
	if resp.Error != "" {
		return nil, n, fmt.Errorf("%w: %s", errHandoffRefused, resp.Error)
	}
	if resp.Proto != req.Proto {
		return nil, n, fmt.Errorf("%w: protocol %d answered to %d", errHandoffRefused, resp.Proto, req.Proto)
	}
	return &resp, n, nil
}
