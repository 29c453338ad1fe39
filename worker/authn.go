package worker

import (
	"encoding/base64"
	"net"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker/guard"
)

// Authentication of client datagrams (wire/SPEC.md section 20): the shell
// around wire/auth (the cryptography) and worker/guard (rate limits and
// the table of recent opens).
const (
	cookieLifetime = 5                // seconds a cookie is valid
	cookieRotation = 30 * time.Second // a fresh cookie secret this often
	// openRemember is how long the table of recent opens answers a
	// retransmitted SESSION_OPEN: longer than the cookie's lifetime.
	openRemember = 10 * time.Second
	// Unknown session ids are looked up in etcd (a session opened at
	// another worker may not have reached the watch yet), at most
	// lookupRate per second (burst lookupBurst); an id not found is not
	// looked up again for negativeFor, and at most maxNegative are
	// remembered. So random ids cost etcd a bounded number of reads.
	// The BAD_REQUEST answering an open without a key name is longer
	// than the request and goes to an address nobody checked: at most
	// noKeyRate per second (burst noKeyBurst) are sent.
	noKeyRate   = 100
	noKeyBurst  = 200
	lookupRate  = 50
	lookupBurst = 100
	negativeFor = 5 * time.Second
	maxNegative = 1 << 14
	// authWarnEvery is how often a source address may cause a WARN log of an
	// authentication failure; authMaxWarned bounds the addresses remembered.
	authWarnEvery = time.Minute
	authMaxWarned = 1024
)

// sessKeys is what a worker holds of a session's key: sealed as the
// session document has it, and, once unsealed, the MACs of both
// directions. Guarded by Worker.mu (a MAC keeps hash state).
type sessKeys struct {
	keyName string
	sealed  []byte
	bad     bool      // sealed does not open: the session's datagrams are dropped
	in      *auth.MAC // client to worker
	out     *auth.MAC // worker to client
}

// set installs the session key k.
func (k *sessKeys) set(key auth.Key) {
	k.in = auth.NewMAC(key, auth.ClientToWorker)
	k.out = auth.NewMAC(key, auth.WorkerToClient)
	k.bad = false
}

// macs unseals the session key on first use; false if it cannot be had.
func (k *sessKeys) macs(a *Auth, id uint64) bool {
	if k.in != nil {
		return true
	}
	if k.bad || len(k.sealed) == 0 {
		k.bad = true
		return false
	}
	key, err := auth.UnsealKey(a.ClusterKey, cluster.SessionKeyLabel(id), k.sealed)
	if err != nil {
		k.bad = true
		return false
	}
	k.set(key)
	return true
}

// sessInfo is what a session document says about a session.
type sessInfo struct {
	addr    *net.UDPAddr // nil if unreadable; the session's next datagram sets it
	lease   clientv3.LeaseID
	keyName string
	sealed  []byte
	bundle  bool // the session takes BUNDLE_REPLYs (wire/SPEC.md section 22)
}

func infoOf(doc cluster.Client) sessInfo {
	var in sessInfo
	if ap, err := netip.ParseAddrPort(doc.Addr); err == nil {
		in.addr = net.UDPAddrFromAddrPort(ap)
	}
	if l, err := cluster.ParseSession(doc.Lease); err == nil {
		in.lease = clientv3.LeaseID(l)
	}
	in.keyName = doc.KeyName
	in.sealed, _ = base64.StdEncoding.DecodeString(doc.SealedKey)
	in.bundle = doc.Bundle
	return in
}

// guardState is the state of the open and lookup defences, guarded by
// Worker.mu.
type guardState struct {
	cookies    *auth.Cookies // nil without Auth
	rotateAt   int64         // tables' clock: when the cookie secret changes next
	openRate   guard.Bucket
	srcRate    guard.Buckets[netip.Addr]
	recent     guard.Recent[openKey, *openState]
	lookupRate guard.Bucket
	noKeyRate  guard.Bucket
	negative   map[uint64]int64     // unknown session ids not found in etcd -> until (tables' clock)
	warned     map[netip.Addr]int64 // source -> when its last authentication failure was logged
}

func (g *guardState) init(l Limits, a *Auth) {
	g.openRate = guard.Bucket{Rate: l.OpenRate, Burst: l.OpenBurst}
	g.srcRate = guard.Buckets[netip.Addr]{Rate: l.OpenRatePerSource, Burst: l.OpenBurstPerSource, Max: l.RecentOpens}
	g.recent = guard.Recent[openKey, *openState]{Max: l.RecentOpens}
	g.lookupRate = guard.Bucket{Rate: lookupRate, Burst: lookupBurst}
	g.noKeyRate = guard.Bucket{Rate: noKeyRate, Burst: noKeyBurst}
	g.negative = map[uint64]int64{}
	g.warned = map[netip.Addr]int64{}
	if a != nil {
		secret, _ := auth.NewKey() // crypto/rand does not fail
		g.cookies = auth.NewCookies(secret, cookieLifetime)
	}
}

// cookieNow returns the cookies' clock (seconds) at now, rotating the
// secret when it is due. Caller holds mu.
func (w *Worker) cookieNow(now int64) uint32 {
	if now >= w.guard.rotateAt {
		if w.guard.rotateAt != 0 {
			secret, _ := auth.NewKey()
			w.guard.cookies.Rotate(secret)
		}
		w.guard.rotateAt = now + int64(cookieRotation)
	}
	return uint32(now / int64(time.Second))
}

// openLimit takes a token from the open rate limits at now; it returns
// the limit exceeded, or "". Caller holds mu.
func (w *Worker) openLimit(src netip.Addr, now int64) string {
	switch w.guard.srcRate.Allow(src, now) {
	case guard.Limited:
		return limOpenSrc
	case guard.Full:
		return limSourceTab
	}
	if !w.guard.openRate.Allow(now) {
		return limOpenRate
	}
	return ""
}

// authFail counts a datagram dropped for reason and logs it at WARN, at
// most once per source address per authWarnEvery. Caller holds mu.
func (w *Worker) authFail(reason string, from netip.AddrPort, now int64) {
	w.amet.fail(reason)
	src := from.Addr()
	if last, ok := w.guard.warned[src]; ok && now-last < int64(authWarnEvery) {
		return
	}
	if len(w.guard.warned) >= authMaxWarned {
		return
	}
	w.guard.warned[src] = now
	w.log.Warn("datagram failed authentication; further failures from this address are not logged for a minute",
		"reason", reason, "from", from)
}

// limited answers h LIMIT with the text of limit lim (sealed with mac, if
// not nil) and counts it. Caller holds mu.
func (w *Worker) limited(ob *outbox, h wire.Header, to *net.UDPAddr, lim string, mac *auth.MAC) {
	w.amet.limit(lim)
	w.met.drop("limit")
	w.met.op(h.Type, wire.StatusLimit)
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	ob.add(textReply(rh, wire.StatusLimit, limitText[lim]), to, h.Type, mac)
}

// textReply encodes a reply with status st and an ERROR body saying msg.
func textReply(h wire.Header, st wire.Status, msg string) []byte {
	h.Status = st
	pkt, err := wire.ErrorBody{Message: []byte(msg)}.Append(make([]byte, 0, wire.HeaderLen+1+len(msg)), h)
	if err != nil {
		return nil
	}
	return pkt
}

// housekeepGuard forgets what expired by now. Caller holds mu.
func (w *Worker) housekeepGuard(now int64) {
	w.guard.recent.Sweep(now)
	w.guard.srcRate.Sweep(now)
	for id, t := range w.guard.negative {
		if t <= now {
			delete(w.guard.negative, id)
		}
	}
	for a, t := range w.guard.warned {
		if now-t >= int64(authWarnEvery) {
			delete(w.guard.warned, a)
		}
	}
}

// sealed reports whether pkt carries a tag already (a cached reply sent
// before): its auth field is not all zero.
func sealed(pkt []byte) bool {
	for _, b := range pkt[wire.AuthOffset : wire.AuthOffset+wire.AuthLen] {
		if b != 0 {
			return true
		}
	}
	return false
}

// authMetrics counts authentication failures and limits.
type authMetrics struct {
	failures *prometheus.CounterVec // reason
	limited  *prometheus.CounterVec // limit
	failBy   map[string]prometheus.Counter
	limBy    map[string]prometheus.Counter
}

func newAuthMetrics(reg prometheus.Registerer) (*authMetrics, error) {
	const ns, sub = "tokend", "worker"
	m := &authMetrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "Client datagrams dropped unanswered by authentication, by reason (bad_tag, unknown_session, unknown_key, bad_cookie, bad_session_key, replay)."},
			[]string{"reason"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "limited_total",
			Help: "Requests answered LIMIT by a worker limit, by limit (sessions, names_per_session, queued_requests, open_rate, open_rate_source, open_sources, recent_opens)."},
			[]string{"limit"}),
		failBy: map[string]prometheus.Counter{},
		limBy:  map[string]prometheus.Counter{},
	}
	for _, c := range []prometheus.Collector{m.failures, m.limited} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// fail and limit count; callers hold Worker.mu (the maps of children).
func (m *authMetrics) fail(reason string) {
	c := m.failBy[reason]
	if c == nil {
		c = m.failures.WithLabelValues(reason)
		m.failBy[reason] = c
	}
	c.Inc()
}

func (m *authMetrics) limit(lim string) {
	c := m.limBy[lim]
	if c == nil {
		c = m.limited.WithLabelValues(lim)
		m.limBy[lim] = c
	}
	c.Inc()
}
