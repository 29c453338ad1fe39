package clientlib

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// TestAuthenticatedSession: a client with the cluster's key opens a
// session through the COOKIE round trip, and its token operations,
// keepalives and map requests pass the workers' tag checks (none dropped
// on either side).
func TestAuthenticatedSession(t *testing.T) {
	fc := newFakeCluster(t, 41, fakeConfig{workers: 2, workerTTL: 400 * time.Millisecond})
	fc.setOwner(wire.Shard([]byte("b"), fc.cfg.shardCount), 1, 2, false)
	c := fc.dial(t, Config{})
	ctx := ctxT(t, 5*time.Second)
	a, err := c.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Acquire(ctx, "b", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Convert(ctx, wire.EX); err != nil {
		t.Fatal(err)
	}
	// Keepalives (every W/4) renew the grants at both workers.
	renewedAt := a.ValidUntil()
	eventually(t, 2*time.Second, "a keepalive renewed the grant", func() bool { return a.ValidUntil().After(renewedAt) })
	if err := a.Release(ctx, SetValue([]byte("v"))); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().AuthFailures; got != 0 {
		t.Fatalf("the client dropped %d datagrams of its own workers", got)
	}
	if got := fc.fw.AuthFailures(); got != 0 {
		t.Fatalf("the workers dropped %d of the client's datagrams", got)
	}
	var opens int
	fc.mu.Lock()
	for _, s := range fc.seen {
		if s.typ == wire.TypeSessionOpen {
			opens++
		}
	}
	fc.mu.Unlock()
	if opens < 2 {
		t.Fatalf("%d SESSION_OPENs: want the open without and then with the cookie", opens)
	}
}

// TestForgedDatagramsIgnored: REVOKE, GRANT_ASYNC and replies that are not
// tagged with the session's key (another key, or none) are dropped before
// anything in them is believed, and counted; the same datagrams tagged as
// the worker tags them are taken.
func TestForgedDatagramsIgnored(t *testing.T) {
	fc := newFakeCluster(t, 42, fakeConfig{})
	revoked := make(chan Revocation, 4)
	holder := fc.dial(t, Config{OnRevoke: func(_ context.Context, _ *Token, r Revocation) { revoked <- r }})
	waiter := fc.dial(t, Config{})
	ctx := ctxT(t, 10*time.Second)
	tok, err := holder.Acquire(ctx, "f", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	shard := wire.Shard([]byte("f"), fc.cfg.shardCount)
	addrOf := func(c *Client) net.Addr {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return fc.sessions[c.Session()].addr
	}
	other, _ := auth.NewKey()
	wrong := auth.NewMAC(other, auth.WorkerToClient)
	// forge sends datagram b to c from worker 0 tagged as how says, and
	// waits until c has dealt with it: dropped (counted) unless sealed.
	forge := func(c *Client, b []byte, how string) {
		t.Helper()
		before := c.Stats().AuthFailures
		switch how {
		case "wrong key":
			if err := wrong.Seal(b); err != nil {
				t.Fatal(err)
			}
		case "sealed":
			if err := fc.fw.Seal(b); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := fc.workers[0].conn.WriteTo(b, addrOf(c)); err != nil {
			t.Fatal(err)
		}
		if how != "sealed" {
			eventually(t, 2*time.Second, how+": the forgery dropped and counted",
				func() bool { return c.Stats().AuthFailures == before+1 })
		}
	}
	revoke := func() []byte {
		h := wire.Header{Type: wire.TypeRevoke, Session: holder.Session(), Request: 7, Shard: shard, Epoch: 1, MapVersion: 1}
		b, err := wire.Revoke{Fence: tok.Fence(), Mode: wire.NL, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("f")}.Append(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	forge(holder, revoke(), "wrong key")
	forge(holder, revoke(), "untagged")
	select {
	case r := <-revoked:
		t.Fatalf("a forged REVOKE reached the handler: %+v", r)
	default:
	}
	if !tok.Valid() {
		t.Fatalf("a forged REVOKE ended the token: %v", tok.Err())
	}

	// The waiter queues behind the holder (the fake's own REVOKE to the
	// holder is handled, not given back: the handler only records it).
	type result struct {
		tok *Token
		err error
	}
	done := make(chan result, 1)
	go func() {
		wt, err := waiter.Acquire(ctx, "f", wire.EX)
		done <- result{wt, err}
	}()
	eventually(t, 2*time.Second, "the waiter queued", func() bool { return fc.waiters(0, "f") == 1 })
	var req uint64
	fc.mu.Lock()
	for _, s := range fc.seen {
		if s.typ == wire.TypeAcquire && s.sess == waiter.Session() {
			req = s.req
		}
	}
	fc.mu.Unlock()
	grant := func(typ wire.Type) []byte {
		h := wire.Header{Type: typ, Session: waiter.Session(), Request: req, Shard: shard, Epoch: 1, MapVersion: 1}
		b, err := wire.Grant{Fence: wire.MakeFence(1, 99), Mode: wire.EX, ValidityMs: 1000,
			Start: wire.WholeStart, End: wire.WholeEnd}.Append(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	forge(waiter, grant(wire.TypeGrantAsync), "wrong key")
	forge(waiter, grant(wire.TypeAcquireReply), "untagged")
	expired := wire.Header{Type: wire.TypeAcquireReply, Status: wire.StatusSessionExpired, Session: waiter.Session(),
		Request: req, Shard: shard, Epoch: 1, MapVersion: 1}
	eb, err := wire.ErrorBody{Message: []byte("forged")}.Append(nil, expired)
	if err != nil {
		t.Fatal(err)
	}
	forge(waiter, eb, "wrong key")
	select {
	case r := <-done:
		t.Fatalf("the waiter took a forged answer: %v %v", fenceOf(r.tok), r.err)
	default:
	}
	if err := waiter.usable(); err != nil {
		t.Fatalf("a forged SESSION_EXPIRED ended the session: %v", err)
	}

	// Tagged with the session's key, the same forgeries are believed.
	forge(holder, revoke(), "sealed")
	select {
	case r := <-revoked:
		if r.Fence != tok.Fence() || r.Wanted != wire.NL {
			t.Fatalf("revocation %+v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a REVOKE tagged with the session key did not reach the handler")
	}
	forge(waiter, grant(wire.TypeGrantAsync), "sealed")
	select {
	case r := <-done:
		if r.err != nil || r.tok.Fence() != wire.MakeFence(1, 99) {
			t.Fatalf("sealed GRANT_ASYNC: %v %v", fenceOf(r.tok), r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a GRANT_ASYNC tagged with the session key was not taken")
	}
	if got := holder.Stats().AuthFailures + waiter.Stats().AuthFailures; got != 5 {
		t.Fatalf("%d datagrams dropped, want the 5 forgeries", got)
	}
}

// TestUnauthenticatedWorkerRefused: a client with a key refuses the
// untagged OK of a worker started with --insecure, with an error that says
// so; with Insecure it opens.
func TestUnauthenticatedWorkerRefused(t *testing.T) {
	fc := newFakeCluster(t, 43, fakeConfig{insecure: true})
	k, _ := auth.NewKey()
	path := filepath.Join(t.TempDir(), "client.key")
	if err := os.WriteFile(path, auth.FormatKeyFile("alice", k), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := fc.net.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = DialConfig(ctxT(t, 5*time.Second), Config{Seeds: []string{fc.addr(0)}, PacketConn: conn, KeyFile: path})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "does not authenticate: started with --insecure?") {
		t.Fatalf("dial: %v, want ErrAuth saying the worker does not authenticate", err)
	}
	c := fc.dial(t, Config{Insecure: true})
	tok, err := c.Acquire(ctxT(t, 5*time.Second), "i", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if err := tok.Release(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// TestWrongKey: a key the cluster does not know (another name, or the
// right name with another key) gets a COOKIE and then silence: Dial fails
// with ErrAuth naming the key, and the workers count the drops. An
// insecure client is refused by an authenticating cluster.
func TestWrongKey(t *testing.T) {
	fc := newFakeCluster(t, 44, fakeConfig{})
	name, _, _ := fc.fw.ClientKey()
	for _, n := range []string{name, "mallory"} {
		k, _ := auth.NewKey()
		path := filepath.Join(t.TempDir(), "client.key")
		if err := os.WriteFile(path, auth.FormatKeyFile(n, k), 0o600); err != nil {
			t.Fatal(err)
		}
		before := fc.fw.AuthFailures()
		conn, err := fc.net.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, err = DialConfig(ctxT(t, 300*time.Millisecond), Config{Seeds: []string{fc.addr(0)}, PacketConn: conn, KeyFile: path})
		_ = conn.Close()
		if !errors.Is(err, ErrAuth) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"`+n+`"`) ||
			!strings.Contains(err.Error(), path) {
			t.Fatalf("key %q: dial: %v, want ErrAuth naming the key and its file", n, err)
		}
		if fc.fw.AuthFailures() == before {
			t.Fatalf("key %q: the workers counted no drop", n)
		}
	}
	conn, err := fc.net.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = DialConfig(ctxT(t, 5*time.Second), Config{Seeds: []string{fc.addr(0)}, PacketConn: conn, Insecure: true})
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "KeyFile") {
		t.Fatalf("insecure dial: %v, want ErrAuth pointing at KeyFile", err)
	}
}

// TestOpenErrorsTagged: the errors a worker answers to the open with the
// cookie, tagged with the open key, are taken: BAD_REQUEST ends Dial at
// once, LIMIT is retried.
func TestOpenErrorsTagged(t *testing.T) {
	fc := newFakeCluster(t, 45, fakeConfig{})
	fc.fw.Answer(wire.TypeSessionOpen, wire.StatusBadRequest)
	conn, err := fc.net.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg := Config{Seeds: []string{fc.addr(0)}, PacketConn: conn, KeyFile: fc.keyFile}
	_, err = DialConfig(ctxT(t, 5*time.Second), cfg)
	if !errors.Is(err, ErrBadRequest) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial: %v, want ErrBadRequest before the deadline", err)
	}
	fc.fw.Answer(wire.TypeSessionOpen, wire.StatusLimit)
	_, err = DialConfig(ctxT(t, 300*time.Millisecond), cfg)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "LIMIT") {
		t.Fatalf("dial: %v, want ErrUnavailable after LIMIT", err)
	}
	if got := fc.fw.AuthFailures(); got != 0 {
		t.Fatalf("the workers dropped %d opens", got)
	}
}

// TestKeyFileSources: without a key file nor Insecure, Dial fails at once
// with ErrAuth naming the three ways; $TOKEND_KEY_FILE and DefaultKeyFile
// in the working directory are found; a bad file is named.
func TestKeyFileSources(t *testing.T) {
	fc := newFakeCluster(t, 46, fakeConfig{})
	t.Setenv(KeyFileEnv, "")
	t.Chdir(t.TempDir())
	_, err := DialConfig(ctxT(t, 5*time.Second), Config{Seeds: []string{fc.addr(0)}})
	for _, want := range []string{"Config.KeyFile", KeyFileEnv, DefaultKeyFile, "Config.Insecure"} {
		if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), want) {
			t.Fatalf("dial without a key: %v, want ErrAuth naming %s", err, want)
		}
	}
	key, err := os.ReadFile(fc.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(DefaultKeyFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(DefaultKeyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	dialKeyless := func(cfg Config) (*Client, error) {
		conn, err := fc.net.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		cfg.Seeds, cfg.PacketConn = []string{fc.addr(0)}, conn
		c, err := DialConfig(ctxT(t, 5*time.Second), cfg)
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
		return c, err
	}
	if _, err := dialKeyless(Config{}); err != nil {
		t.Fatalf("with %s: %v", DefaultKeyFile, err)
	}
	bad := filepath.Join(t.TempDir(), "bad.key")
	if err := os.WriteFile(bad, []byte("tokend-key v1 x short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(KeyFileEnv, bad) // before DefaultKeyFile
	if _, err := dialKeyless(Config{}); !errors.Is(err, ErrAuth) || !errors.Is(err, auth.ErrKeyFile) ||
		!strings.Contains(err.Error(), bad) {
		t.Fatalf("with a bad $%s: %v", KeyFileEnv, err)
	}
	t.Setenv(KeyFileEnv, fc.keyFile)
	if _, err := dialKeyless(Config{KeyFile: filepath.Join(t.TempDir(), "missing.key")}); !errors.Is(err, ErrAuth) ||
		!strings.Contains(err.Error(), "missing.key does not exist") {
		t.Fatalf("with a missing KeyFile (before $%s): %v", KeyFileEnv, err)
	}
	if _, err := dialKeyless(Config{}); err != nil {
		t.Fatalf("with $%s: %v", KeyFileEnv, err)
	}
}
