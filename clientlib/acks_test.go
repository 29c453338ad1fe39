package clientlib_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/worker"
)

// tapConn is a client's real UDP socket that counts the datagrams it reads
// and writes by type and drops the first dropGrants GRANT_ASYNCs it reads.
type tapConn struct {
	net.PacketConn
	mu         sync.Mutex // guards the fields below
	dropGrants int
	read       map[wire.Type]int
	written    map[wire.Type]int
	bundled    map[wire.Type]int // written inside BUNDLEs
	dropped    int
	okAcquire  int // ACQUIRE replies read with status OK (a grant by reply, not GRANT_ASYNC)
}

func newTapConn(t *testing.T, dropGrants int) *tapConn {
	t.Helper()
	uc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { uc.Close() })
	return &tapConn{PacketConn: uc, dropGrants: dropGrants, read: map[wire.Type]int{}, written: map[wire.Type]int{}, bundled: map[wire.Type]int{}}
}

func (c *tapConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, a, err := c.PacketConn.ReadFrom(p)
		if err != nil || n < wire.HeaderLen {
			return n, a, err
		}
		typ := wire.Type(p[3])
		c.mu.Lock()
		c.read[typ]++
		if typ == wire.TypeAcquireReply && wire.Status(p[5]) == wire.StatusOK {
			c.okAcquire++
		}
		drop := typ == wire.TypeGrantAsync && c.dropGrants > 0
		if drop {
			c.dropGrants--
			c.dropped++
		}
		c.mu.Unlock()
		if !drop {
			return n, a, err
		}
	}
}

func (c *tapConn) WriteTo(p []byte, a net.Addr) (int, error) {
	if len(p) >= wire.HeaderLen {
		c.mu.Lock()
		c.written[wire.Type(p[3])]++
		if wire.Type(p[3]) == wire.TypeBundle {
			for e := p[wire.HeaderLen:]; len(e) >= 2; {
				var d []byte
				d, e = wire.NextBundled(e)
				c.bundled[wire.Type(d[3])]++
			}
		}
		c.mu.Unlock()
	}
	return c.PacketConn.WriteTo(p, a)
}

func (c *tapConn) counts() (read, written map[wire.Type]int, dropped int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	read, written = map[wire.Type]int{}, map[wire.Type]int{}
	for k, v := range c.read {
		read[k] = v
	}
	for k, v := range c.written {
		written[k] = v
	}
	return read, written, c.dropped
}

// metric returns the value of the metric name (with label=value, if label
// is not "") summed over a worker's metrics.
func metric(t *testing.T, g prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// TestGrantAsyncLostRecovered: the first two GRANT_ASYNCs to a waiter are
// lost; the worker's retransmissions bring the grant, without a re-poll
// (the waiter re-polls only every hour here), and the client acknowledges
// each GRANT_ASYNC it reads with a GRANT_ACK (wire/SPEC.md §12).
func TestGrantAsyncLostRecovered(t *testing.T) {
	c := startCluster(t, nil, 1)
	holder := dial(t, c, nil, 0, clientlib.Config{OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	tap := newTapConn(t, 2)
	cfg := clientlib.Config{PacketConn: tap}
	clientlib.SetPollEvery(&cfg, time.Hour)
	waiter := dial(t, c, nil, 0, cfg)
	ctx := ctxFor(t, 30*time.Second)
	th, err := holder.Acquire(ctx, "g", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		tok *clientlib.Token
		err error
	}
	got := make(chan result, 1)
	go func() {
		tok, err := waiter.Acquire(ctx, "g", wire.EX)
		got <- result{tok, err}
	}()
	reg := c.Metrics(0)
	clientlib.Eventually(t, 10*time.Second, "the waiter queued", func() bool {
		return metric(t, reg, "tokend_worker_queued_requests", "", "") == 1
	})
	if err := th.Release(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("acquire: %v", r.err)
	}
	read, written, dropped := tap.counts()
	if dropped != 2 || read[wire.TypeGrantAsync] < 3 {
		t.Fatalf("%d GRANT_ASYNCs read, %d dropped; want the third to bring the grant", read[wire.TypeGrantAsync], dropped)
	}
	tap.mu.Lock()
	byReply := tap.okAcquire
	tap.mu.Unlock()
	if byReply != 0 {
		t.Fatalf("the grant came as the reply to a re-poll (%d ACQUIREs sent)", written[wire.TypeAcquire])
	}
	if n := metric(t, reg, "tokend_worker_grant_async_retransmissions_total", "", ""); n < 2 {
		t.Fatalf("%v GRANT_ASYNC retransmissions counted, want at least 2", n)
	}
	clientlib.Eventually(t, 5*time.Second, "a GRANT_ACK sent", func() bool {
		_, w, _ := tap.counts()
		return w[wire.TypeGrantAck] >= 1
	})
	if err := r.tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestQueuedDoesNotPinAck: while one request of a session waits in a
// queue, the session does 2,200 further operations (acquire and release
// pairs) without a single LIMIT, on a worker whose reply cache holds 1,024
// replies per session: the ack skips requests answered QUEUED (wire/SPEC.md
// §11). The waiter is then granted as usual.
func TestQueuedDoesNotPinAck(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Limits: worker.Limits{ReplyCache: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	holder := dial(t, c, nil, 0, clientlib.Config{OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	cl := dial(t, c, nil, 0, clientlib.Config{})
	ctx = ctxFor(t, 60*time.Second)
	th, err := holder.Acquire(ctx, "pin", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		tok, err := cl.Acquire(ctx, "pin", wire.EX)
		if err == nil {
			err = tok.Release(ctx)
		}
		got <- err
	}()
	reg := c.Metrics(0)
	clientlib.Eventually(t, 10*time.Second, "the waiter queued", func() bool {
		return metric(t, reg, "tokend_worker_queued_requests", "", "") == 1
	})
	for range 1100 {
		tok, err := cl.Acquire(ctx, "op", wire.EX)
		if err != nil {
			t.Fatal(err)
		}
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := metric(t, reg, "tokend_worker_limited_total", "limit", "queued_requests"); n != 0 {
		t.Fatalf("%v requests answered LIMIT while one waited", n)
	}
	if err := th.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the waiter: %v", err)
	}
}

// TestAcksRideWithRelease: in a handoff, the holder's REVOKE_ACK and the
// waiter's GRANT_ACK are held (batchio.go) and go to the worker in one
// BUNDLE with the RELEASE that follows, never alone: one UDP datagram
// instead of two for each side (SPEC §22). With the usual 2 ms hold, a
// waiter that keeps its grant longer sends its GRANT_ACK alone.
func TestAcksRideWithRelease(t *testing.T) {
	c := startCluster(t, nil, 1)
	ctx := ctxFor(t, 30*time.Second)
	for _, long := range []bool{false, true} {
		name := "ride"
		hold := time.Hour
		if long {
			name, hold = "alone", 0
		}
		tapH, tapW := newTapConn(t, 0), newTapConn(t, 0)
		cfgH := clientlib.Config{PacketConn: tapH, OnRevoke: func(ctx context.Context, tok *clientlib.Token, _ clientlib.Revocation) {
			if err := tok.Release(ctx); err != nil {
				t.Errorf("release on revoke: %v", err)
			}
		}}
		cfgW := clientlib.Config{PacketConn: tapW}
		clientlib.SetAckHold(&cfgH, hold)
		clientlib.SetAckHold(&cfgW, hold)
		// A session open answered only in its retransmission without the
		// bundle flag (a slow start) makes a client that sends no
		// BUNDLEs: dial again.
		dialBundling := func(cfg clientlib.Config) *clientlib.Client {
			t.Helper()
			for range 5 {
				cl := dial(t, c, nil, 0, cfg)
				if clientlib.TakesBundles(cl) {
					return cl
				}
				t.Log("session opened without bundles: dialing again")
				cl.Close()
			}
			t.Fatal("no session that takes bundles in 5 tries")
			return nil
		}
		holder := dialBundling(cfgH)
		waiter := dialBundling(cfgW)
		if _, err := holder.Acquire(ctx, name, wire.EX); err != nil {
			t.Fatal(err)
		}
		tok, err := waiter.Acquire(ctx, name, wire.EX)
		if err != nil {
			t.Fatal(err)
		}
		if long {
			clientlib.Eventually(t, 5*time.Second, "the GRANT_ACK sent alone", func() bool {
				_, w, _ := tapW.counts()
				return w[wire.TypeGrantAck] >= 1
			})
		}
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
		clientlib.Eventually(t, 5*time.Second, "the holder's REVOKE_ACK sent", func() bool {
			tapH.mu.Lock()
			defer tapH.mu.Unlock()
			return tapH.written[wire.TypeRevokeAck]+tapH.bundled[wire.TypeRevokeAck] == 1
		})
		check := func(who string, tap *tapConn, ack wire.Type) {
			t.Helper()
			tap.mu.Lock()
			defer tap.mu.Unlock()
			// A retransmitted REVOKE or GRANT_ASYNC (a slow machine) is
			// acknowledged again, so "at least once".
			if tap.written[ack] != 0 || tap.bundled[ack] < 1 || tap.bundled[wire.TypeRelease] != 1 {
				t.Errorf("%s: %s sent alone %d times and in bundles %d times, RELEASE in bundles %d times; want only in the RELEASE's bundle",
					who, ack, tap.written[ack], tap.bundled[ack], tap.bundled[wire.TypeRelease])
			}
		}
		if !long {
			check("holder", tapH, wire.TypeRevokeAck)
			check("waiter", tapW, wire.TypeGrantAck)
			for _, cl := range []*clientlib.Client{holder, waiter} {
				if st := cl.Stats(); st.AcksHeld < 1 || st.AcksAlone != 0 {
					t.Errorf("Stats: %d acknowledgements held, %d sent alone; want 1 or more and 0", st.AcksHeld, st.AcksAlone)
				}
			}
		} else if st := waiter.Stats(); st.AcksAlone < 1 {
			t.Errorf("Stats: %d acknowledgements sent alone, want at least the GRANT_ACK", st.AcksAlone)
		}
	}
	t.Logf("GRANT_ASYNC retransmissions: %v", metric(t, c.Metrics(0), "tokend_worker_grant_async_retransmissions_total", "", ""))
}
