package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/worker"
)

// opsCluster starts an in-process cluster (etcd without TLS, clients
// authenticated with c.KeyFile(); loopback) whose
// shards are all served by worker "h1", which registers an HTTP address
// serving /v1/token as tokend does. devcluster's own worker w1, which has
// no HTTP listener, is drained away with tokenctl drain. It returns the
// cluster and the flags that reach its etcd.
func opsCluster(t *testing.T) (*devcluster.Cluster, []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Sessions outlive the test: a session ends only when it is evicted.
	c, err := devcluster.Start(ctx, devcluster.Options{Shards: 16, SessionTTL: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	etcd := []string{"--etcd", strings.Join(c.Member.ClientEndpoints(), ","), "--insecure"}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Client: c.Client, ID: "h1", UDPAddr: "127.0.0.1:0", HTTPAddr: ln.Addr().String(), TTL: 2 * time.Second, Auth: c.Auth()})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc(tokenPath, w.ServeToken)
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		w.Close()
	})
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if out, code := tokenctl(t, append(append([]string{"drain", "--timeout", "30s"}, etcd...), "w1")...); code != exitOK {
		t.Fatalf("drain w1: exit %d: %s", code, out)
	}
	if err := c.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	return c, etcd
}

// tokenctl runs a tokenctl command in the test process.
func tokenctl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errOut strings.Builder
	code := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), code
}

// testClient dials a client with a session of its own whose revocation
// handler keeps what it holds (as a busy holder would).
func testClient(t *testing.T, c *devcluster.Cluster) *clientlib.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.Seeds(), KeyFile: c.KeyFile(),
		OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

type acquired struct {
	tok *clientlib.Token
	err error
}

// acquireAsync acquires in the background until ctx ends; the outcome
// comes on the channel.
func acquireAsync(ctx context.Context, cl *clientlib.Client, name string, mode wire.Mode, opts ...clientlib.Option) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		tok, err := cl.Acquire(ctx, name, mode, opts...)
		ch <- acquired{tok, err}
	}()
	return ch
}

// TestHoldersSessionsEvict: tokenctl holders shows one holder (EX on a
// range) and two waiters in line (PR on an overlapping range, waiting for
// ever; EX on the whole token, with a timeout), in text and JSON, by name
// and by --hex; a token nobody holds says so. tokenctl sessions lists the
// three sessions. tokenctl evict ends the holder's session, and the first
// waiter is granted the token long before any lease could have expired;
// evicting it again is a clear error.
func TestHoldersSessionsEvict(t *testing.T) {
	c, etcd := opsCluster(t)
	const name = "file/7"
	holder, w1, w2 := testClient(t, c), testClient(t, c), testClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := holder.Acquire(ctx, name, wire.EX, clientlib.Range(0, 4096))
	if err != nil {
		t.Fatal(err)
	}
	var lost atomic.Bool
	go func() { <-held.Lost(); lost.Store(true) }()

	holders := func(args ...string) holdersInfo {
		t.Helper()
		out, code := tokenctl(t, append(append([]string{"holders"}, args...), append(etcd, "-o", "json")...)...)
		if code != exitOK {
			t.Fatalf("holders %v: exit %d: %s", args, code, out)
		}
		var info holdersInfo
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return info
	}
	waitWaiters := func(n int) holdersInfo {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			info := holders(name)
			if info.WaiterCount == n {
				return info
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %d waiters: %+v", n, info)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// No deadline: the first waiter waits for ever (until the test ends).
	waitCtx, stopWaiting := context.WithCancel(context.Background())
	defer stopWaiting()
	got1 := acquireAsync(waitCtx, w1, name, wire.PR, clientlib.Range(0, 100))
	waitWaiters(1)
	got2 := acquireAsync(waitCtx, w2, name, wire.EX, clientlib.Wait(50*time.Second))
	info := waitWaiters(2)

	sess := func(cl *clientlib.Client) string { return cluster.SessionString(cl.Session()) }
	if info.Worker != "h1" || info.HolderCount != 1 || len(info.Holders) != 1 || len(info.Waiters) != 2 || info.Shard != wire.Shard([]byte(name), 16) {
		t.Fatalf("holders: %+v", info)
	}
	if h := info.Holders[0]; h.Session != sess(holder) || h.Mode != "EX" || h.Start != 0 || h.End != 4096 || h.Fence != held.Fence() || h.Client == "" {
		t.Errorf("holder %+v, want session %s EX [0,4096) fence %d", h, sess(holder), held.Fence())
	}
	q1, q2 := info.Waiters[0], info.Waiters[1]
	if q1.Position != 1 || q1.Session != sess(w1) || q1.Mode != "PR" || q1.Start != 0 || q1.End != 100 || q1.Deadline != nil || q1.Since.IsZero() {
		t.Errorf("first waiter %+v, want session %s PR [0,100) waiting for ever", q1, sess(w1))
	}
	if q2.Position != 2 || q2.Session != sess(w2) || q2.Mode != "EX" || q2.Start != wire.WholeStart || q2.End != wire.WholeEnd || q2.Deadline == nil {
		t.Errorf("second waiter %+v, want session %s EX whole with a deadline", q2, sess(w2))
	}
	if byHex := holders("--hex", hex.EncodeToString([]byte(name))); byHex.HolderCount != 1 || byHex.WaiterCount != 2 || byHex.Name != name {
		t.Errorf("--hex: %+v", byHex)
	}
	if cut := holders(name, "--limit", "1"); len(cut.Waiters) != 1 || cut.WaiterCount != 2 {
		t.Errorf("--limit 1: %+v", cut)
	}

	out, code := tokenctl(t, append([]string{"holders", name}, etcd...)...)
	for _, want := range []string{`token "file/7": shard`, "worker h1", "holders   1", "EX", "[0,4096)", sess(holder),
		"waiters   2", "PR", "[0,100)", "[whole]", sess(w1), sess(w2), "never"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("holders (text): exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	t.Logf("tokenctl holders %s:\n%s", name, out)
	out, code = tokenctl(t, append([]string{"holders", "nobody/holds/this"}, etcd...)...)
	if code != exitOK || !strings.Contains(out, "nobody holds or waits for it") {
		t.Errorf("holders of a free token: exit %d:\n%s", code, out)
	}

	// sessions: the three, sorted, counted.
	out, code = tokenctl(t, append([]string{"sessions", "-o", "json"}, etcd...)...)
	var ss sessionsResult
	if code != exitOK || json.Unmarshal([]byte(out), &ss) != nil || ss.Count != 3 || len(ss.Sessions) != 3 {
		t.Fatalf("sessions: exit %d: %s", code, out)
	}
	seen := map[string]sessionInfo{}
	for i, s := range ss.Sessions {
		seen[s.Session] = s
		if i > 0 && cmpSession(ss.Sessions[i-1].Session, s.Session) >= 0 {
			t.Errorf("sessions not sorted: %s", out)
		}
	}
	for _, cl := range []*clientlib.Client{holder, w1, w2} {
		s, ok := seen[sess(cl)]
		if !ok || s.Addr == "" || s.Worker == "" || s.Library == "" || s.Since == "" || s.Lease == "" || s.Lease == "0" {
			t.Errorf("session %s: %+v (listed %v)", sess(cl), s, ok)
		}
	}
	out, code = tokenctl(t, append([]string{"sessions"}, etcd...)...)
	if code != exitOK || !strings.Contains(out, "3 sessions") || !strings.Contains(out, "SESSION") || !strings.Contains(out, sess(holder)) {
		t.Errorf("sessions (text): exit %d:\n%s", code, out)
	}
	t.Logf("tokenctl sessions:\n%s", out)

	// evict the holder: its grant goes, the first waiter gets the token.
	start := time.Now()
	out, code = tokenctl(t, append([]string{"evict", sess(holder)}, etcd...)...)
	if code != exitOK || !strings.Contains(out, "session "+sess(holder)+" evicted") {
		t.Fatalf("evict: exit %d:\n%s", code, out)
	}
	t.Logf("tokenctl evict:\n%s", out)
	select {
	case a := <-got1:
		if a.err != nil {
			t.Fatalf("the waiter after the evict: %v", a.err)
		}
		if a.tok.Mode() != wire.PR || a.tok.Fence() <= held.Fence() {
			t.Errorf("the waiter got %v fence %d (the evicted holder had %d)", a.tok.Mode(), a.tok.Fence(), held.Fence())
		}
		t.Logf("granted to the waiter %v after the evict", time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second): // the session TTL is 60 s
		t.Fatal("the waiter was not granted the token after the holder's session was evicted")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !lost.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !lost.Load() {
		t.Error("the evicted holder does not learn that its token is lost")
	}
	if info := holders(name); info.HolderCount != 1 || info.Holders[0].Session != sess(w1) || info.WaiterCount != 1 {
		t.Errorf("after the evict: %+v", info)
	}
	out, code = tokenctl(t, append([]string{"evict", sess(holder)}, etcd...)...)
	if code != exitError || !strings.Contains(out, "no live session "+sess(holder)) {
		t.Errorf("evict of an ended session: exit %d:\n%s", code, out)
	}
	out, code = tokenctl(t, append([]string{"sessions", "-o", "json"}, etcd...)...)
	if json.Unmarshal([]byte(out), &ss) != nil || ss.Count != 2 {
		t.Errorf("sessions after the evict: %s", out)
	}
	select {
	case a := <-got2:
		t.Errorf("the EX waiter returned while the PR is held: %+v", a)
	default:
	}
}
