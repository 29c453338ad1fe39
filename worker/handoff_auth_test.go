package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/cluster/handoffauth"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker/table"
)

// noClientKeys knows no client key: the handoff tests open no sessions.
type noClientKeys struct{}

func (noClientKeys) ClientKey(string) (auth.Key, bool) { return auth.Key{}, false }

func testClusterKey(t *testing.T) auth.Key {
	t.Helper()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// authOf returns the Auth of a worker holding cluster key k, or nil (no
// authentication) for a nil k.
func authOf(k *auth.Key) *Auth {
	if k == nil {
		return nil
	}
	return &Auth{ClusterKey: *k, Keys: noClientKeys{}}
}

// authWorkers is twoWorkers with cluster keys k1 and k2 (nil: without
// Auth) and w1's handoff address advertised as adv1 (if not empty).
func authWorkers(t testing.TB, k1, k2 *auth.Key, adv1 string) (*clientv3.Client, *Worker, *Worker) {
	t.Helper()
	cli := testEtcd(t)
	w1, r1 := startWorkerCfg(t, Config{Client: cli, ID: "w1", Auth: authOf(k1), AdvertiseHandoffAddr: adv1})
	w2, r2 := startWorkerCfg(t, Config{Client: cli, ID: "w2", Auth: authOf(k2)})
	regs[w1], regs[w2] = r1, r2
	t.Cleanup(func() { delete(regs, w1); delete(regs, w2) })
	putMap(t, cli, 1, []delegation.Owner{w1.testOwner()}, []delegation.Run{{First: 0, Count: testShards, Owner: 0, Epoch: 1}})
	waitFor(t, "w1 serves all shards", func() bool { return w1.stats().shards == testShards })
	return cli, w1, w2
}

// keepShard9 makes w1 give shard 9 up to w2 at epoch 2 (as a map would)
// without w2 knowing, and returns the request w2 would send for it.
func keepShard9(t testing.TB, w1, w2 *Worker) *pullRequest {
	t.Helper()
	now := time.Now()
	w1.mu.Lock()
	ob := newOutbox(now, w1.mono(now))
	ob.safe = w1.safeUntil()
	m := w1.dmap.Clone()
	m.Version++
	m.Workers = append(m.Workers, w2.testOwner())
	m.Owner[9], m.Epoch[9] = 1, 2
	w1.applyMap(ob, m, nil)
	oh := w1.outgoing[9]
	w1.mu.Unlock()
	if oh == nil {
		t.Fatal("w1 kept nothing for shard 9")
	}
	o1, o2 := w1.testOwner(), w2.testOwner()
	return &pullRequest{Proto: handoffProto, From: o2.ID, Incarnation: formatInc(o2.Incarnation),
		ToID: o1.ID, To: formatInc(o1.Incarnation), MapVersion: m.Version, Shards: []shardEpochJ{{Shard: 9, Epoch: 2}}}
}

func pullFor(t *testing.T, addr string, req *pullRequest, key []byte) (*pullResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, _, err := pullOnce(ctx, addr, req, key)
	return resp, err
}

func authFailures(w *Worker, t *testing.T, reason string) float64 {
	return gatherValue(w.met2(t), "tokend_worker_handoff_auth_failures_total", "reason", reason)
}

func refusedConns(w *Worker, t *testing.T, reason string) float64 {
	return gatherValue(w.met2(t), "tokend_worker_handoff_refused_connections_total", "reason", reason)
}

// TestHandoffAuthenticated: two workers with the cluster key hand shards
// over as without authentication: imported, no grace period, no failure.
func TestHandoffAuthenticated(t *testing.T) {
	k := testClusterKey(t)
	cli, w1, w2 := authWorkers(t, &k, &k, "")
	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 0 {
		t.Fatalf("w2 after an authenticated handoff: %+v (want no grace)", s)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "imported"); v != 8 {
		t.Fatalf("imported %v shards, want 8", v)
	}
	for _, w := range []*Worker{w1, w2} {
		for _, r := range []string{authNoNonce, authBadProof, authNoChallenge, authBadSeal} {
			if v := authFailures(w, t, r); v != 0 {
				t.Errorf("%s counted %v auth failures %s", w.cfg.ID, v, r)
			}
		}
	}
}

// TestHandoffAuthRefusals: an old owner with Auth gives no state to a pull
// without credentials or with another key, and counts it; the right key
// gets the state.
func TestHandoffAuthRefusals(t *testing.T) {
	k, other := testClusterKey(t), testClusterKey(t)
	_, w1, w2 := authWorkers(t, &k, &k, "")
	req := keepShard9(t, w1, w2)
	addr := w1.HandoffAddr()

	resp, err := pullFor(t, addr, req, nil)
	if resp != nil || !errors.Is(err, errHandoffRefused) {
		t.Fatalf("pull without credentials: %+v, %v", resp, err)
	}
	if v := authFailures(w1, t, authNoNonce); v != 1 {
		t.Fatalf("no_nonce counted %v, want 1", v)
	}
	resp, err = pullFor(t, addr, req, handoffauth.Key(other))
	if resp != nil || err == nil {
		t.Fatalf("pull with another key: %+v, %v", resp, err)
	}
	waitFor(t, "bad_proof counted", func() bool { return authFailures(w1, t, authBadProof) == 1 })
	w1.mu.Lock()
	pulled := w1.outgoing[9].pulled
	w1.mu.Unlock()
	if pulled {
		t.Fatal("a refused pull marked the state pulled")
	}
	resp, err = pullFor(t, addr, req, handoffauth.Key(k))
	if err != nil || len(resp.Shards) != 1 || !resp.Shards[0].OK || resp.Shards[0].Snap == nil {
		t.Fatalf("pull with the cluster key: %+v, %v", resp, err)
	}
	// The right key asking for another worker id is refused after it is
	// authenticated.
	bad := *req
	bad.ToID = "w9"
	if resp, err := pullFor(t, addr, &bad, handoffauth.Key(k)); resp != nil || !errors.Is(err, errHandoffRefused) {
		t.Fatalf("pull naming another old owner: %+v, %v", resp, err)
	}
}

// TestHandoffAuthMismatch: when the two workers do not share the cluster
// key, or one runs without Auth, no state is imported: the new owner
// recovers the shards with a grace period and the failure is counted where
// it is seen. An old owner with Auth sends nothing; one without Auth sends
// its state to anyone (--insecure), but a new owner with Auth does not
// apply an answer that is not authenticated.
func TestHandoffAuthMismatch(t *testing.T) {
	k, other := testClusterKey(t), testClusterKey(t)
	for _, tc := range []struct {
		name     string
		k1, k2   *auth.Key
		old      bool // seen by the old owner (else the new)
		reason   string
		mustOnce bool
	}{
		{"other key", &k, &other, true, authBadProof, false},
		{"puller without auth", &k, nil, true, authNoNonce, true},
		{"giver without auth", nil, &k, false, authNoChallenge, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, w1, w2 := authWorkers(t, tc.k1, tc.k2, "")
			moveHalf(t, cli, w1, w2)
			waitFor(t, "w2 serves the moved shards", func() bool {
				s := w2.stats()
				return s.shards == 8 && s.awaiting == 0
			})
			if s := w2.stats(); s.grace != 8 {
				t.Fatalf("w2: %+v (want 8 shards in grace)", s)
			}
			if v := gatherValue(w1.met2(t), "tokend_worker_handoffs_out_total", "", ""); tc.old && v != 0 {
				t.Fatalf("w1 with Auth handed off %v shards", v)
			}
			seen := w2
			if tc.old {
				seen = w1
			}
			waitFor(t, tc.reason+" counted", func() bool { return authFailures(seen, t, tc.reason) >= 1 })
			if v := authFailures(seen, t, tc.reason); tc.mustOnce && v != 1 {
				t.Fatalf("%s counted %v times: a refusal is final, want 1", tc.reason, v)
			}
		})
	}
}

// tamperProxy forwards TCP connections to target, frame by frame from the
// server (a big-endian u32 length, then the body), passing each body the
// server sends through tamper while on is set. It counts the frames tamper
// changed.
type tamperProxy struct {
	ln      net.Listener
	target  atomic.Value // string
	on      atomic.Bool
	tamper  func([]byte) []byte
	changed atomic.Int32
	wg      sync.WaitGroup
}

func newTamperProxy(t *testing.T, tamper func([]byte) []byte) *tamperProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tamperProxy{ln: ln, tamper: tamper}
	p.wg.Go(p.run)
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *tamperProxy) run() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() {
			defer c.Close()
			target, _ := p.target.Load().(string)
			s, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer s.Close()
			p.wg.Go(func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite() })
			r := bufio.NewReader(s)
			for {
				var hdr [4]byte
				if _, err := io.ReadFull(r, hdr[:]); err != nil {
					c.(*net.TCPConn).CloseWrite()
					return
				}
				body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
				if _, err := io.ReadFull(r, body); err != nil {
					return
				}
				if out := p.tamper(body); p.on.Load() && !bytes.Equal(out, body) {
					p.changed.Add(1)
					body = out
				}
				c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...))
			}
		})
	}
}

// raiseMaxFence changes the handed-off snapshot's highest fence: JSON that
// stays valid and a state that would import.
func raiseMaxFence(b []byte) []byte {
	return bytes.Replace(b, []byte(`"MaxFence":0,`), []byte(`"MaxFence":9,`), 1)
}

// TestHandoffTamperedAnswer: an answer changed on the way is refused by the
// new owner before it is decoded, and counted; the shards are recovered
// with a grace period.
func TestHandoffTamperedAnswer(t *testing.T) {
	k := testClusterKey(t)
	p := newTamperProxy(t, raiseMaxFence)
	cli, w1, w2 := authWorkers(t, &k, &k, p.ln.Addr().String())
	p.target.Store(w1.handoff.Addr().String())

	// Through the proxy changing nothing the pull works.
	req := keepShard9(t, w1, w2)
	resp, err := pullFor(t, p.ln.Addr().String(), req, handoffauth.Key(k))
	if err != nil || !resp.Shards[0].OK || resp.Shards[0].Snap.MaxFence != 0 {
		t.Fatalf("pull through the proxy: %+v, %v", resp, err)
	}
	// Changed on the way, it is refused.
	p.on.Store(true)
	resp, err = pullFor(t, p.ln.Addr().String(), req, handoffauth.Key(k))
	var af *authFailure
	if resp != nil || !errors.Is(err, errHandoffRefused) || !errors.As(err, &af) || af.reason != authBadSeal {
		t.Fatalf("tampered pull: %+v, %v", resp, err)
	}
	if p.changed.Load() == 0 {
		t.Fatal("the proxy changed nothing: the test proves nothing")
	}

	// A real handoff through the proxy (map version 3: keepShard9 made
	// w1's own map version 2).
	putMap(t, cli, 3, []delegation.Owner{w1.testOwner(), w2.testOwner()},
		[]delegation.Run{{First: 0, Count: 8, Owner: 0, Epoch: 1}, {First: 8, Count: 8, Owner: 1, Epoch: 2}})
	waitFor(t, "w2 serves the moved shards", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 8 {
		t.Fatalf("w2 after a tampered handoff: %+v (want 8 shards in grace)", s)
	}
	if v := authFailures(w2, t, authBadSeal); v != 1 {
		t.Fatalf("bad_seal counted %v times, want 1", v)
	}
}

// dialFrom opens a TCP connection to addr from source address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the server closed c (a read ends in EOF or
// a reset), waiting up to 10 s.
func closedByPeer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestHandoffIdleConnections: silent connections from one address hold at
// most maxPeerConns slots, the rest are closed at once and counted; a real
// handoff meanwhile completes without a grace period; the silent ones are
// dropped after the handshake timeout.
func TestHandoffIdleConnections(t *testing.T) {
	k := testClusterKey(t)
	cli, w1, w2 := authWorkers(t, &k, &k, "")
	addr := w1.handoff.Addr().String()
	const n = maxHandoffConns + 4
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = dialFrom(t, "127.0.0.2", addr)
	}
	waitFor(t, "the extra connections refused", func() bool { return refusedConns(w1, t, refusedPeer) == n-maxPeerConns })
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed < n-maxPeerConns {
		t.Fatalf("%d connections closed by the server, want %d", closed, n-maxPeerConns)
	}

	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 0 {
		t.Fatalf("w2 after a handoff beside idle connections: %+v (want no grace)", s)
	}
	if v := gatherValue(w2.met2(t), "tokend_worker_handoffs_in_total", "result", "imported"); v != 8 {
		t.Fatalf("imported %v shards, want 8", v)
	}
	// The admitted silent connections are dropped by the handshake timeout.
	for _, c := range conns {
		if !closedByPeer(c) {
			t.Fatal("a silent connection stayed open")
		}
	}
	waitFor(t, "timeouts counted", func() bool { return refusedConns(w1, t, refusedTimeout) == maxPeerConns })
}

// TestHandoffFullListener: when silent connections from many addresses
// fill every slot, a new connection closes the one longest in its
// handshake instead of being refused, so a real handoff completes without a
// grace period.
func TestHandoffFullListener(t *testing.T) {
	k := testClusterKey(t)
	cli, w1, w2 := authWorkers(t, &k, &k, "")
	addr := w1.handoff.Addr().String()
	var conns []net.Conn
	for i := range maxHandoffConns / maxPeerConns {
		for range maxPeerConns {
			conns = append(conns, dialFrom(t, fmt.Sprintf("127.0.0.%d", 2+i), addr))
		}
	}
	waitFor(t, "every slot taken", func() bool {
		w1.met.ho.mu.Lock()
		defer w1.met.ho.mu.Unlock()
		return len(w1.met.ho.pending) == maxHandoffConns
	})
	moveHalf(t, cli, w1, w2)
	waitFor(t, "w2 serves the moved shards", func() bool {
		s := w2.stats()
		return s.shards == 8 && s.awaiting == 0
	})
	if s := w2.stats(); s.grace != 0 {
		t.Fatalf("w2 after a handoff to a full listener: %+v (want no grace)", s)
	}
	if v := refusedConns(w1, t, refusedEvicted); v < 1 {
		t.Fatalf("evicted %v connections, want at least 1", v)
	}
	if v := refusedConns(w1, t, refusedGlobal); v != 0 {
		t.Fatalf("refused %v connections for the global limit, want 0", v)
	}
}

// TestHandoffMACVector: the handoff key and both MACs of wire/SPEC.md
// section 18 for fixed inputs, as computed independently with Python's
// hmac and hashlib (HKDF written out from RFC 5869).
func TestHandoffMACVector(t *testing.T) {
	var ck auth.Key
	for i := range ck {
		ck[i] = byte(i)
	}
	nb, na := make([]byte, 16), make([]byte, 16)
	for i := range nb {
		nb[i], na[i] = byte(0x10+i), byte(0x20+i)
	}
	reqFrame, ansFrame := []byte("\x00\x00\x00\x0b{\"proto\":1}"), []byte("\x00\x00\x00\x02{}")
	k := handoffauth.Key(ck)
	if got := hex.EncodeToString(k); got != "c7fcad26387dc5ed033be7f823560ee86b5a89b9a9dd65fc0ac5e7a0960b23ea" {
		t.Errorf("handoff key %s", got)
	}
	p := handoffauth.MAC(k, handoffauth.DirAsker, nb, na, reqFrame)
	if got := hex.EncodeToString(p); got != "1d677a738a1f4bca4c90c534c02c6db0f5683e0bad9fce0b46d6546bb1e3f70d" {
		t.Errorf("proof %s", got)
	}
	m := handoffauth.MAC(k, handoffauth.DirAnswerer, nb, na, reqFrame, ansFrame)
	if got := hex.EncodeToString(m); got != "79dbc525445bf299a35a768e78f19f2aeab7d34eb1a8d3f03bff1ab54634e66e" {
		t.Errorf("seal %s", got)
	}
	if hmac.Equal(handoffauth.MAC(k, handoffauth.DirAsker, na, nb, reqFrame), p) {
		t.Error("nonces swapped, same proof")
	}
	if hmac.Equal(handoffauth.MAC(k, handoffauth.DirAnswerer, nb, na, reqFrame), p) {
		t.Error("other direction, same MAC")
	}
}

// deadlockQuery sends q to w's handoff listener as the leader's detector
// does, authenticated with key (handoffauth.Key of the cluster key) or,
// with a nil key, without a nonce.
func deadlockQuery(t *testing.T, w *Worker, q *cluster.DeadlockQuery, key []byte) (*cluster.DeadlockAnswer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, _, err := exchange(ctx, w.HandoffAddr(), &pullRequest{Proto: cluster.DeadlockProto, Deadlock: q}, key)
	if err != nil {
		return nil, err
	}
	var ans cluster.DeadlockAnswer
	if err := handoffauth.UnmarshalFrame(raw, &ans); err != nil {
		return nil, err
	}
	return &ans, nil
}

// rawDeadlockQuery sends q without a nonce, as a detector without the
// cluster key would, and returns every byte the worker sends until it
// closes the connection.
func rawDeadlockQuery(t *testing.T, w *Worker, q *cluster.DeadlockQuery) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", w.HandoffAddr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := handoffauth.WriteFrame(c, cluster.DeadlockRequest{Proto: cluster.DeadlockProto, Deadlock: q}); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading until the worker closes: %v", err)
	}
	return b
}

// wantAuthRequired checks that b is exactly one frame, the challenge that
// refuses a request without credentials.
func wantAuthRequired(t *testing.T, b []byte) {
	t.Helper()
	frame, err := handoffauth.ReadRawFrame(bytes.NewReader(b), handoffauth.MaxProofFrame)
	if err != nil || len(frame) != len(b) {
		t.Fatalf("answer to an unauthenticated query %q (%v): want one challenge frame", b, err)
	}
	var ch handoffauth.Challenge
	if err := handoffauth.UnmarshalFrame(frame, &ch); err != nil || ch.Error != "authentication required" || ch.Nonce != nil {
		t.Fatalf("answer to an unauthenticated query %q (%v): want the refusal", b, err)
	}
}

// TestHandoffDeadlockQuery: a worker with Auth answers the leader's
// deadlock detector only after the same authentication as a pull, the
// answer sealed. A query without a nonce gets the refusal and nothing
// else; one with another key gets nothing; each is counted.
func TestHandoffDeadlockQuery(t *testing.T) {
	k, other := testClusterKey(t), testClusterKey(t)
	_, w1, _ := authWorkers(t, &k, &k, "")
	q := &cluster.DeadlockQuery{Incarnation: formatInc(w1.testOwner().Incarnation), Waits: true}
	ans, err := deadlockQuery(t, w1, q, handoffauth.Key(k))
	if err != nil || ans.Error != "" || ans.Worker != "w1" {
		t.Fatalf("authenticated query: answer %+v, %v", ans, err)
	}
	wantAuthRequired(t, rawDeadlockQuery(t, w1, q))
	if v := authFailures(w1, t, authNoNonce); v != 1 {
		t.Fatalf("no_nonce counted %v, want 1", v)
	}
	if ans, err := deadlockQuery(t, w1, q, handoffauth.Key(other)); err == nil {
		t.Fatalf("another key got an answer: %+v", ans)
	}
	waitFor(t, "bad_proof counted", func() bool { return authFailures(w1, t, authBadProof) == 1 })
}

// TestHandoffDeadlockQueryInsecure: a worker without Auth (--insecure)
// answers a detector without the key, and a detector with the key refuses
// its answer (no challenge).
func TestHandoffDeadlockQueryInsecure(t *testing.T) {
	k := testClusterKey(t)
	_, w1, _ := authWorkers(t, nil, nil, "")
	q := &cluster.DeadlockQuery{Incarnation: formatInc(w1.testOwner().Incarnation), Waits: true}
	if ans, err := deadlockQuery(t, w1, q, nil); err != nil || ans.Error != "" || ans.Worker != "w1" {
		t.Fatalf("query without a nonce: answer %+v, %v", ans, err)
	}
	var af *authFailure
	if ans, err := deadlockQuery(t, w1, q, handoffauth.Key(k)); !errors.As(err, &af) || af.reason != authNoChallenge {
		t.Fatalf("query with the key to a worker without Auth: answer %+v, %v (want no_challenge)", ans, err)
	}
}

// TestDeadlockExchangeAuthenticated: TestDeadlockExchange's cycle on a
// worker with Auth and clients with authenticated sessions. A detector
// without the key learns nothing and ends nothing (the victim still
// waits); with the key it lists the waits and ends the victim, whose
// DEADLOCK reply is sealed with its session's key.
func TestDeadlockExchangeAuthenticated(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	w, key := f.w, handoffauth.Key(f.cluster)
	a, b := udpClient(t, w), udpClient(t, w)
	a.openAuth("alice", f.alice, 0)
	b.openAuth("alice", f.alice, 0)
	x, y := "x", "y"
	for a.shard(y) == a.shard(x) {
		y += "'"
	}
	gx := a.acquire(x, wire.EX, false, 1000).grant(t)
	gy := b.acquire(y, wire.EX, false, 1000).grant(t)
	qa := a.do(wire.Acquire{Detect: true, Mode: wire.EX, WaitMs: 10000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(y)}, a.shard(y))
	wantStatus(t, qa, wire.StatusQueued)
	qb := b.do(wire.Acquire{Detect: true, Mode: wire.PR, WaitMs: 10000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(x)}, b.shard(x))
	wantStatus(t, qb, wire.StatusQueued)

	inc := formatInc(w.testOwner().Incarnation)
	victim := cluster.DeadlockVictim{Shard: b.shard(x), Epoch: b.epoch(b.shard(x)), Session: b.session, Req: qb.h.Request}
	wantAuthRequired(t, rawDeadlockQuery(t, w, &cluster.DeadlockQuery{Incarnation: inc, Waits: true,
		Victims: []cluster.DeadlockVictim{victim}}))
	if v := gatherValue(f.reg, "tokend_worker_handoff_auth_failures_total", "reason", authNoNonce); v != 1 {
		t.Fatalf("no_nonce counted %v, want 1", v)
	}

	ans, err := deadlockQuery(t, w, &cluster.DeadlockQuery{Incarnation: inc, Waits: true}, key)
	if err != nil || ans.Error != "" || ans.Worker != "w1" || ans.Incarnation != inc {
		t.Fatalf("answer %+v, %v", ans, err)
	}
	got := map[[2]uint64]uint64{} // (waiter session, req) -> fence waited for
	for _, e := range ans.Waits {
		got[[2]uint64{e.Session, e.Req}] = e.Fence
	}
	if len(got) != 2 || got[[2]uint64{a.session, qa.h.Request}] != gy.Fence || got[[2]uint64{b.session, qb.h.Request}] != gx.Fence {
		t.Fatalf("waits %+v, want a waiting for fence %#x and b for %#x (the unauthenticated victim still waiting)",
			ans.Waits, gy.Fence, gx.Fence)
	}

	ans, err = deadlockQuery(t, w, &cluster.DeadlockQuery{Incarnation: inc, Victims: []cluster.DeadlockVictim{victim}}, key)
	if err != nil || !slices.Equal(ans.Ended, []cluster.DeadlockVictim{victim}) {
		t.Fatalf("ended %+v (%v), want %+v", ans, err, victim)
	}
	d, ok := b.event(2*time.Second, func(m msg) bool { return m.h.Request == qb.h.Request })
	if !ok {
		t.Fatal("the victim got no answer")
	}
	wantStatus(t, d, wire.StatusDeadlock)
	if !b.verified(d) {
		t.Fatal("the victim's DEADLOCK does not verify under its session's key")
	}
	if n := gatherValue(f.reg, "tokend_worker_deadlocks_total", "kind", "cycle"); n != 1 {
		t.Fatalf("deadlocks_total{kind=cycle} = %v, want 1", n)
	}
}

// levelCounter is a slog handler that counts records by level.
type levelCounter struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func (h *levelCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelCounter) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n[r.Level]++
	return nil
}
func (h *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *levelCounter) WithGroup(string) slog.Handler      { return h }

// TestHandoffWarnOncePerMinute: refusals are logged at WARN at most once a
// minute per source, the rest at DEBUG.
func TestHandoffWarnOncePerMinute(t *testing.T) {
	g := newHandoffGuard("tokend", "worker")
	h := &levelCounter{n: map[slog.Level]int{}}
	log := slog.New(h)
	t0 := time.Unix(1000, 0)
	for _, at := range []struct {
		src string
		d   time.Duration
	}{{"a", 0}, {"a", 30 * time.Second}, {"b", 31 * time.Second}, {"a", 59 * time.Second}, {"a", 61 * time.Second}, {"b", 62 * time.Second}} {
		g.warn(log, t0.Add(at.d), at.src, "refused")
	}
	if h.n[slog.LevelWarn] != 3 || h.n[slog.LevelDebug] != 3 {
		t.Fatalf("logged %v, want 3 WARN (a at 0 s and 61 s, b at 31 s) and 3 DEBUG", h.n)
	}
}

// BenchmarkHandoffPull: one pull of a shard of 0 or 10000 held tokens
// over loopback, without and with authentication (one more round trip, and
// the MAC of the answer on both sides).
func BenchmarkHandoffPull(b *testing.B) {
	for _, c := range []struct {
		tokens int
		authed bool
	}{{0, false}, {0, true}, {10000, false}, {10000, true}} {
		authed, tokens := c.authed, c.tokens
		b.Run(fmt.Sprintf("tokens=%d/auth=%v", tokens, authed), func(b *testing.B) {
			var k *auth.Key
			var key []byte
			if authed {
				ck := auth.Key{1}
				k, key = &ck, handoffauth.Key(ck)
			}
			_, w1, w2 := authWorkers(b, k, k, "")
			req := keepShard9(b, w1, w2)
			snap := &table.Snapshot{Epoch: 1, Seq: uint64(tokens), MaxFence: wire.MakeFence(1, uint64(tokens))}
			for i := range tokens {
				snap.Tokens = append(snap.Tokens, table.TokenState{Name: []byte(fmt.Sprintf("bench/%05d", i)),
					Grants: []table.GrantState{{Session: uint64(i + 1), Fence: wire.MakeFence(1, uint64(i+1)), Mode: wire.EX,
						End: ^uint64(0), Req: 1}}})
			}
			w1.mu.Lock()
			w1.outgoing[9].snap = snap
			w1.outgoing[9].expires = math.MaxInt64 // kept for the whole benchmark
			w1.mu.Unlock()
			ctx := context.Background()
			b.ResetTimer()
			var n int
			for range b.N {
				resp, nn, err := pullOnce(ctx, w1.HandoffAddr(), req, key)
				if err != nil || !resp.Shards[0].OK || len(resp.Shards[0].Snap.Tokens) != tokens {
					b.Fatalf("pull: %+v, %v", resp, err)
				}
				n = nn
			}
			b.SetBytes(int64(n))
		})
	}
}

// BenchmarkDeadlockQuery: one detector query (waits of a worker with
// nothing queued) over loopback, without and with authentication: what
// each worker costs the leader per round.
func BenchmarkDeadlockQuery(b *testing.B) {
	for _, authed := range []bool{false, true} {
		b.Run(fmt.Sprintf("auth=%v", authed), func(b *testing.B) {
			var k *auth.Key
			var key []byte
			if authed {
				ck := auth.Key{1}
				k, key = &ck, handoffauth.Key(ck)
			}
			_, w1, _ := authWorkers(b, k, k, "")
			q := &pullRequest{Proto: cluster.DeadlockProto, Deadlock: &cluster.DeadlockQuery{
				Incarnation: formatInc(w1.testOwner().Incarnation), Waits: true}}
			ctx := context.Background()
			b.ResetTimer()
			for range b.N {
				raw, _, err := exchange(ctx, w1.HandoffAddr(), q, key)
				var ans cluster.DeadlockAnswer
				if err == nil {
					err = handoffauth.UnmarshalFrame(raw, &ans)
				}
				if err != nil || ans.Error != "" {
					b.Fatalf("query: %+v, %v", ans, err)
				}
				// Without Auth a connection counts against its source
				// address (maxPeerConns) until the worker's goroutine has
				// closed it: let it, off the clock.
				b.StopTimer()
				for !peersGone(w1) {
					runtime.Gosched()
				}
				b.StartTimer()
			}
		})
	}
}

// peersGone reports whether w's handoff listener counts no connection
// against any source address.
func peersGone(w *Worker) bool {
	g := w.met.ho
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.peers) == 0
}
