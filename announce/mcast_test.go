package announce

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/wire/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// wait bounds every wait in these tests.
const wait = 5 * time.Second

var (
	mcastOnce sync.Once
	mcastErr  error
)

// needMulticast skips the test unless multicast works on the loopback
// interface (FACTS.md: it does on Linux once lo is up, with
// IP_MULTICAST_IF set; not in a fresh network namespace whose lo is down).
func needMulticast(t *testing.T) {
	t.Helper()
	mcastOnce.Do(func() { mcastErr = Available("") })
	if mcastErr != nil {
		t.Skipf("multicast on loopback unavailable: %v", mcastErr)
	}
}

// testConfig returns an enabled config on the loopback interface with a
// group, port and cluster name of its own, so that tests (and daemons)
// running at the same time do not hear each other, and the announce keys of
// a cluster key of its own: senders sign, listeners verify.
func testConfig(t *testing.T) Config {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Enabled:    true,
		Group:      fmt.Sprintf("239.255.%d.%d:%d", 100+rand.IntN(100), 1+rand.IntN(254), port),
		Cluster:    fmt.Sprintf("test-%d", rand.Uint64()),
		Interval:   50 * time.Millisecond,
		SigningKey: SigningKey(k),
		PublicKey:  PublicKey(k),
	}
}

// collector records the events of a Listener.
type collector struct {
	ch chan Event
}

func newCollector() *collector { return &collector{ch: make(chan Event, 1024)} }

func (c *collector) on(ev Event) {
	select {
	case c.ch <- ev:
	default:
	}
}

// next waits for an event that satisfies ok, skipping others.
func (c *collector) next(t *testing.T, what string, ok func(Event) bool) Event {
	t.Helper()
	timeout := time.After(wait)
	for {
		select {
		case ev := <-c.ch:
			if ok(ev) {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s within %v", what, wait)
		}
	}
}

func listen(t *testing.T, cfg Config, on func(Event)) *Listener {
	t.Helper()
	l, err := Listen(cfg, on)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func sender(t *testing.T, cfg Config, addr, id string) *Sender {
	t.Helper()
	s, err := NewSender(cfg, addr, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSendReceive(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c := newCollector()
	l := listen(t, cfg, c.on)
	s := sender(t, cfg, "127.0.0.1:7700", "w1")

	ev := c.next(t, "first announcement", func(ev Event) bool { return true })
	if ev.Kind != KindNew || ev.Worker != "127.0.0.1:7700" || ev.Ann.WorkerID != "w1" || ev.Ann.MapVersion != 0 ||
		ev.Ann.Cluster != cfg.Cluster || ev.Ann.Interval != cfg.Interval || ev.From.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("first event %+v", ev)
	}
	c.next(t, "heartbeat", func(ev Event) bool { return ev.Kind == KindHeartbeat })

	// A version bump goes out at once, not at the next heartbeat.
	start := time.Now()
	s.SetMapVersion(7)
	ev = c.next(t, "newer version", func(ev Event) bool { return ev.Kind == KindNewer })
	if lat := time.Since(start); ev.Ann.MapVersion != 7 || lat > cfg.Interval/2 {
		t.Fatalf("newer event %+v after %v", ev, lat)
	}
	t.Logf("version bump to event: %v", time.Since(start))
	s.SetMapVersion(3) // lower: ignored
	ev = c.next(t, "heartbeat", func(ev Event) bool { return ev.Kind == KindHeartbeat && ev.At.After(start) })
	if ev.Ann.MapVersion != 7 {
		t.Fatalf("version went down: %+v", ev)
	}
	if ps := l.Workers(); len(ps) != 1 || ps[0].Worker != "127.0.0.1:7700" || ps[0].MapVersion != 7 {
		t.Fatalf("Workers = %+v", ps)
	}

	// Close says bye: the worker is forgotten at once.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	c.next(t, "bye", func(ev Event) bool { return ev.Kind == KindBye })
	if ps := l.Workers(); len(ps) != 0 {
		t.Fatalf("Workers after bye = %+v", ps)
	}
	if st := s.Stats(); st.Sent < 3 || st.Errors != 0 {
		t.Fatalf("sender stats %+v", st)
	}
	st := l.Stats()
	if st.Delivered < 4 || st.Received < st.Delivered {
		t.Fatalf("listener stats %+v", st)
	}
	for reason, n := range st.Dropped {
		if reason != dropDuplicate && reason != "foreign" {
			t.Errorf("dropped %d as %q", n, reason)
		}
	}
}

func TestUnspecifiedAddress(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c := newCollector()
	l := listen(t, cfg, c.on)
	sender(t, cfg, "0.0.0.0:7700", "")
	ev := c.next(t, "announcement", func(Event) bool { return true })
	if ev.Worker != "127.0.0.1:7700" || ev.Ann.Addr != "0.0.0.0:7700" {
		t.Fatalf("event %+v", ev)
	}
	ps, err := l.WaitWorkers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].Worker != "127.0.0.1:7700" {
		t.Fatalf("WaitWorkers = %+v, %v", ps, err)
	}
}

func TestClusterFiltering(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c := newCollector()
	l := listen(t, cfg, c.on)
	other := cfg
	other.Cluster = cfg.Cluster + "-other"
	otherKey, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	other.SigningKey = SigningKey(otherKey) // another cluster has another key: still counted as "cluster"
	sender(t, other, "127.0.0.1:7701", "foreign")
	// Let the foreign sender's announcements arrive (and be dropped) first.
	deadline := time.Now().Add(wait)
	for l.Stats().Dropped["cluster"] < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("foreign cluster's announcements not counted: %+v", l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sender(t, cfg, "127.0.0.1:7700", "ours")
	c.next(t, "own cluster", func(Event) bool { return true })
	time.Sleep(3 * cfg.Interval)
	for len(c.ch) > 0 {
		if ev := <-c.ch; ev.Ann.Cluster != cfg.Cluster || ev.Worker != "127.0.0.1:7700" {
			t.Fatalf("foreign event delivered: %+v", ev)
		}
	}
	if ps := l.Workers(); len(ps) != 1 || ps[0].WorkerID != "ours" {
		t.Fatalf("Workers = %+v", ps)
	}
}

// rawSend sends b to cfg's group on the loopback interface with TTL 1.
func rawSend(t *testing.T, cfg Config, bs ...[]byte) {
	t.Helper()
	r, err := resolve(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.src, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := ipv4.NewPacketConn(c)
	if err := errors.Join(p.SetMulticastInterface(r.ifi), p.SetMulticastTTL(1), p.SetMulticastLoopback(true)); err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		if _, err := p.WriteTo(b, nil, net.UDPAddrFromAddrPort(r.group)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadDatagramsCounted(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c := newCollector()
	l := listen(t, cfg, c.on)
	good := Announcement{Cluster: cfg.Cluster, Addr: "127.0.0.1:7700", Interval: time.Second, Sender: 5, Seq: 1, MapVersion: 2,
		SentAt: uint64(time.Now().UnixMilli())}
	gb, err := good.AppendSigned(nil, cfg.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	crc := append([]byte{}, gb...)
	crc[HeaderLen] ^= 1
	big := make([]byte, MaxDatagram+100)
	copy(big, gb)
	rawSend(t, cfg,
		[]byte("x"), // short
		append([]byte("TK"), make([]byte, 62)...), // a wire datagram: magic
		gb[:len(gb)-1], // truncated: length
		crc,            // checksum
		big,            // too large
		gb,             // good
		gb,             // duplicate
	)
	c.next(t, "the good datagram", func(ev Event) bool { return ev.Ann.Sender == 5 })
	want := map[string]uint64{"short": 1, "magic": 1, "length": 1, "checksum": 1, "too_large": 1, dropDuplicate: 1}
	deadline := time.Now().Add(wait)
	for {
		st := l.Stats()
		ok := st.Received == 7 && st.Delivered == 1
		for k, v := range want {
			ok = ok && st.Dropped[k] == v
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want drops %v", st, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case ev := <-c.ch:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

func TestTwoListenersOneHost(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c1, c2 := newCollector(), newCollector()
	listen(t, cfg, c1.on)
	listen(t, cfg, c2.on)
	s := sender(t, cfg, "127.0.0.1:7700", "w")
	s.SetMapVersion(42)
	for _, c := range []*collector{c1, c2} {
		c.next(t, "version 42", func(ev Event) bool { return ev.Ann.MapVersion == 42 })
	}
}

func TestCloseNoLeak(t *testing.T) {
	needMulticast(t)
	defer goleak.VerifyNone(t)
	cfg := testConfig(t)
	cfg.Interval = time.Millisecond // keep datagrams flowing while closing
	var calls sync.WaitGroup
	block := make(chan struct{})
	l, err := Listen(cfg, func(Event) { calls.Add(1); defer calls.Done(); <-block })
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSender(cfg, "127.0.0.1:7700", "")
	if err != nil {
		t.Fatal(err)
	}
	ps, err := l.WaitWorkers(context.Background())
	if err != nil || len(ps) != 1 {
		t.Fatalf("WaitWorkers = %v, %v", ps, err)
	}
	close(block) // a callback in progress: Close waits for it
	for _, closer := range []interface{ Close() error }{s, l} {
		start := time.Now()
		if err := closer.Close(); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Close took %v", d)
		}
		if err := closer.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	if _, err := l.WaitWorkers(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitWorkers after Close: %v", err)
	}
}

func TestWaitWorkersContext(t *testing.T) {
	needMulticast(t)
	l := listen(t, testConfig(t), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.WaitWorkers(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitWorkers = %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := Listen(Config{}, nil); !errors.Is(err, ErrDisabled) {
		t.Errorf("disabled Listen: %v", err)
	}
	if _, err := NewSender(Config{}, "127.0.0.1:1", ""); !errors.Is(err, ErrDisabled) {
		t.Errorf("disabled NewSender: %v", err)
	}
	for _, g := range []string{"127.0.0.1:7790", "10.1.2.3:7790", "239.255.1.1:0", "239.255.1.1", "[ff02::1]:7790", "nonsense"} {
		if _, err := Listen(Config{Enabled: true, Group: g}, nil); !errors.Is(err, ErrNotMulticast) {
			t.Errorf("group %q: %v", g, err)
		}
	}
	if _, err := NewSender(Config{Enabled: true, Interface: "nosuchif0"}, "127.0.0.1:1", ""); !errors.Is(err, ErrInterface) {
		t.Errorf("missing interface: %v", err)
	}
	if err := Available("nosuchif0"); !errors.Is(err, ErrInterface) {
		t.Errorf("Available(missing): %v", err)
	}
	for _, cfg := range []Config{
		{Enabled: true, Cluster: string(make([]byte, MaxCluster+1))},
		{Enabled: true, Interval: time.Microsecond},
		{Enabled: true, TTL: 256},
		{Enabled: true, PublicKey: make([]byte, 31)},
		{Enabled: true, Insecure: true, SigningKey: make([]byte, 32)},
	} {
		if _, err := Listen(cfg, nil); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	if _, err := NewSender(Config{Enabled: true}, "no-port", ""); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad worker address: %v", err)
	}
}

func TestNoMulticastFlag(t *testing.T) {
	// An interface that is up, not loopback and lacks the multicast flag is
	// refused with ErrNoMulticast. Find one, if this host has one.
	ifs, _ := net.Interfaces()
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagUp != 0 && ifi.Flags&(net.FlagLoopback|net.FlagMulticast) == 0 {
			if _, _, err := lookupInterface(ifi.Name); !errors.Is(err, ErrNoMulticast) {
				t.Fatalf("%s: %v", ifi.Name, err)
			}
			return
		}
	}
	t.Skip("no up interface without the multicast flag here")
}

// TestForgedAnnouncementsDropped: a listener with the cluster's announce key
// drops and counts every announcement not signed with it (unsigned, signed
// with another key, of the old unsigned format version 1) and every signed
// one sent more than MaxSkew from now (a recorded one replayed), and
// delivers the genuine one.
func TestForgedAnnouncementsDropped(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	c := newCollector()
	l := listen(t, cfg, c.on)
	now := uint64(time.Now().UnixMilli())
	forge := func(sender uint64, sentAt uint64, key func() []byte) []byte {
		a := Announcement{Cluster: cfg.Cluster, Addr: "127.0.0.1:7701", WorkerID: "fake", Interval: time.Second,
			Sender: sender, Seq: 1, MapVersion: 99, SentAt: sentAt}
		var b []byte
		var err error
		if key == nil {
			b, err = a.Append(nil)
		} else {
			b, err = a.AppendSigned(nil, key())
		}
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	other, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	v1 := forge(6, now, nil)
	v1[2] = 1
	reseal(v1)
	ours := func() []byte { return cfg.SigningKey }
	stale := uint64(MaxSkew.Milliseconds()) + 1000
	rawSend(t, cfg,
		forge(1, now, nil), // unsigned
		forge(2, now, func() []byte { return SigningKey(other) }), // another cluster's key
		forge(3, now-stale, ours),                                 // replayed: too old
		forge(4, now+stale, ours),                                 // from the future
		v1,                                                        // the old format
	)
	genuine := Announcement{Cluster: cfg.Cluster, Addr: "127.0.0.1:7700", WorkerID: "real", Interval: time.Second,
		Sender: 5, Seq: 1, MapVersion: 2, SentAt: uint64(time.Now().UnixMilli())}
	gb, err := genuine.AppendSigned(nil, cfg.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	rawSend(t, cfg, gb)
	ev := c.next(t, "the genuine announcement", func(Event) bool { return true })
	if ev.Ann.Sender != 5 || !ev.Ann.Signed {
		t.Fatalf("delivered %+v", ev)
	}
	want := map[string]uint64{"unsigned": 1, "signature": 1, dropTimestamp: 2, "version": 1}
	deadline := time.Now().Add(wait)
	for {
		st := l.Stats()
		ok := st.Received == 6 && st.Delivered == 1
		for k, v := range want {
			ok = ok && st.Dropped[k] == v
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want drops %v", st, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ps := l.Workers(); len(ps) != 1 || ps[0].WorkerID != "real" {
		t.Fatalf("Workers = %+v", ps)
	}
}

// TestUnsignedSenderKeyedListener: a worker that does not sign (an insecure
// cluster's) is never known to a listener that verifies, and a Sender with
// the signing key is.
func TestUnsignedSenderKeyedListener(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	l := listen(t, cfg, nil)
	unsigned := cfg
	unsigned.SigningKey = nil
	sender(t, unsigned, "127.0.0.1:7701", "unsigned")
	deadline := time.Now().Add(wait)
	for l.Stats().Dropped["unsigned"] < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("unsigned announcements not counted: %+v", l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	sender(t, cfg, "127.0.0.1:7700", "signed")
	ps, err := l.WaitWorkers(context.Background())
	if err != nil || len(ps) != 1 || ps[0].WorkerID != "signed" {
		t.Fatalf("WaitWorkers = %+v, %v", ps, err)
	}
}

// TestInsecureListener: without a key, Listen needs Insecure, and then
// accepts unsigned and signed announcements alike.
func TestInsecureListener(t *testing.T) {
	needMulticast(t)
	cfg := testConfig(t)
	cfg.PublicKey = nil
	if _, err := Listen(cfg, nil); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Listen without a key: %v", err)
	}
	cfg.Insecure = true
	l := listen(t, cfg, nil)
	unsigned := cfg
	unsigned.SigningKey = nil
	sender(t, unsigned, "127.0.0.1:7701", "unsigned")
	sender(t, cfg, "127.0.0.1:7700", "signed")
	deadline := time.Now().Add(wait)
	for len(l.Workers()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("Workers = %+v, stats %+v", l.Workers(), l.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
