package clientlib

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/testkit/fakeworker"
	"github.com/tokend/tokend/testkit/mcast"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker"
)

// TestAnnouncements: a client with no seeds finds a worker by its multicast
// announcements, and learns a new delegation map from them within
// milliseconds, before any reply could tell it.
func TestAnnouncements(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	if err := announce.Available(""); err != nil {
		t.Skipf("no multicast on loopback: %v", err)
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	acfg := announce.Config{Enabled: true, Interval: 200 * time.Millisecond,
		Group:   fmt.Sprintf("239.255.%d.%d:%d", 100+rand.IntN(100), 1+rand.IntN(254), port),
		Cluster: fmt.Sprintf("test-%d", rand.Uint64())}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := devcluster.Start(ctx, devcluster.Options{Workers: 1}) // w1 does not announce
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	acfg.PublicKey = announce.PublicKey(dc.Auth().ClusterKey) // wa signs with the cluster's key
	wa, err := worker.New(worker.Config{Client: dc.Client, ID: "wa", UDPAddr: "127.0.0.1:0", TTL: 2 * time.Second,
		Registry: prometheus.NewRegistry(), Announce: acfg, Auth: dc.Auth()})
	if err != nil {
		t.Fatal(err)
	}
	if err := wa.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer wa.Close()
	if err := dc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}

	c, err := DialConfig(ctx, Config{Announce: acfg, KeyFile: dc.KeyFile()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.seeds) != 1 || c.seeds[0].String() != wa.Addr().String() {
		t.Fatalf("seeds %v, want the announcing worker %v", c.seeds, wa.Addr())
	}
	tok, err := c.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Release(ctx)

	// Watch the announcements too, to know when wa applied the next map.
	newer := make(chan announce.Event, 16)
	v0 := c.mapVer.Load()
	l, err := announce.Listen(acfg, func(ev announce.Event) {
		if ev.Ann.MapVersion > v0 {
			select {
			case newer <- ev:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.WaitWorkers(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := dc.AddWorker(ctx); err != nil { // rebalance: a new map version
		t.Fatal(err)
	}
	var ev announce.Event
	select {
	case ev = <-newer:
	case <-time.After(10 * time.Second):
		t.Fatal("no newer map announced")
	}
	if ev.Ann.MapVersion <= v0 {
		t.Fatalf("announced version %d, client had %d", ev.Ann.MapVersion, v0)
	}
	// Within 250 ms of the announcement: keepalives, which would also
	// bring the new version, come every 667 ms.
	if !poll(250*time.Millisecond-time.Since(ev.At), func() bool { return c.mapVer.Load() >= ev.Ann.MapVersion }) {
		t.Fatalf("client still at map version %d %v after version %d was announced", c.mapVer.Load(), time.Since(ev.At), ev.Ann.MapVersion)
	}
	t.Logf("map %d -> %d: client had it %v after the announcement", v0, ev.Ann.MapVersion, time.Since(ev.At))
}

// testGroup returns an announce config (interval 50 ms) with a group, port
// and cluster name of its own, so that tests running at the same time do not
// hear each other.
func testGroup(t *testing.T) announce.Config {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	return announce.Config{Enabled: true, Interval: 50 * time.Millisecond,
		Group:   fmt.Sprintf("239.255.%d.%d:%d", 100+rand.IntN(100), 1+rand.IntN(254), port),
		Cluster: fmt.Sprintf("test-%d", rand.Uint64())}
}

// replayer multicasts b to cfg's group on the loopback interface every
// interval until the test ends.
func replayer(t *testing.T, cfg announce.Config, interval time.Duration, b []byte) {
	t.Helper()
	send := mcast.Sender(t, cfg.Group)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		for {
			send(b)
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestForgedAnnouncements is the acceptance test of forged announcements to
// a seedless client (docs/SECURITY.md section 2). A fake worker that would
// grant anything (an insecure fake cluster) is announced on the group three
// ways: unsigned, signed with another cluster's key, and signed with the
// real cluster's key but sent long ago (a recorded announcement replayed).
// The client, which holds the cluster's announce public key, drops and
// counts all three, never sends the fake a datagram, finds no worker while
// only forgeries are heard, and connects to the real worker, whose
// announcements are signed, as soon as it announces.
func TestForgedAnnouncements(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	if err := announce.Available(""); err != nil {
		t.Skipf("no multicast on loopback: %v", err)
	}
	acfg := testGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := devcluster.Start(ctx, devcluster.Options{Workers: 1}) // w1 does not announce
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	clusterKey := dc.Auth().ClusterKey
	acfg.PublicKey = announce.PublicKey(clusterKey)

	var fakeGot atomic.Uint64
	fake, err := fakeworker.New(fakeworker.Config{Insecure: true, Trace: func(ev fakeworker.Event) {
		if ev.Kind == fakeworker.Received {
			fakeGot.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	unsigned := acfg
	sender := func(cfg announce.Config, id string) {
		s, err := announce.NewSender(cfg, fake.Addr(0), id)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.SetMapVersion(1 << 40) // newer than any real map: "fetch from me"
	}
	sender(unsigned, "unsigned")
	otherKey, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	other := acfg
	other.SigningKey = announce.SigningKey(otherKey)
	sender(other, "other-key")
	old := announce.Announcement{Cluster: acfg.Cluster, Addr: fake.Addr(0), WorkerID: "replayed", MapVersion: 1 << 40,
		Interval: acfg.Interval, Sender: 77, Seq: 1,
		SentAt: uint64(time.Now().Add(-announce.MaxSkew - time.Minute).UnixMilli())}
	replay, err := old.AppendSigned(nil, announce.SigningKey(clusterKey))
	if err != nil {
		t.Fatal(err)
	}
	replayer(t, acfg, acfg.Interval, replay)

	// Only forgeries on the group: a seedless client finds no worker.
	witness, err := announce.Listen(announce.Config{Enabled: true, Group: acfg.Group, Cluster: acfg.Cluster, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer witness.Close()
	eventually(t, 5*time.Second, "forgeries on the group", func() bool { return witness.Stats().Received >= 9 })
	short, cancelShort := context.WithTimeout(ctx, 10*acfg.Interval)
	_, err = DialConfig(short, Config{Announce: acfg, KeyFile: dc.KeyFile()})
	cancelShort()
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no worker announced") {
		t.Fatalf("seedless Dial with only forged announcements: %v; want ErrUnavailable, no worker announced", err)
	}

	// The real worker announces (signed): the client takes it, and only it.
	wa, err := worker.New(worker.Config{Client: dc.Client, ID: "wa", UDPAddr: "127.0.0.1:0", TTL: 2 * time.Second,
		Registry: prometheus.NewRegistry(), Announce: announce.Config{Enabled: true, Group: acfg.Group,
			Cluster: acfg.Cluster, Interval: acfg.Interval}, Auth: dc.Auth()})
	if err != nil {
		t.Fatal(err)
	}
	if err := wa.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer wa.Close()
	if err := dc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := DialConfig(ctx, Config{Announce: acfg, KeyFile: dc.KeyFile()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.seeds) != 1 || c.seeds[0].String() != wa.Addr().String() {
		t.Fatalf("seeds %v, want only the real worker %v", c.seeds, wa.Addr())
	}
	tok, err := c.Acquire(ctx, "forged", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Release(ctx)
	eventually(t, 5*time.Second, "each forgery dropped and counted", func() bool {
		d := c.Stats().AnnouncementsDropped
		return d["unsigned"] > 0 && d["signature"] > 0 && d["timestamp"] > 0
	})
	if n := fakeGot.Load(); n != 0 {
		t.Fatalf("the fake worker received %d datagrams", n)
	}
	t.Logf("client dropped %v", c.Stats().AnnouncementsDropped)
}

// TestAnnounceNeedsKey: a client that listens to announcements needs the
// cluster's announce key, unless it is insecure.
func TestAnnounceNeedsKey(t *testing.T) {
	acfg := announce.Config{Enabled: true}
	_, err := DialConfig(context.Background(), Config{Announce: acfg})
	if !errors.Is(err, ErrAuth) || !errors.Is(err, announce.ErrNoKey) || !strings.Contains(err.Error(), "tokenctl announce-key") {
		t.Fatalf("DialConfig without the announce key: %v", err)
	}
	cfg := Config{Announce: acfg, Insecure: true}
	if err := cfg.setDefaults(); err != nil || !cfg.Announce.Insecure {
		t.Fatalf("insecure: %v, Announce.Insecure %v", err, cfg.Announce.Insecure)
	}
	cfg = Config{Announce: announce.Config{Enabled: true, Insecure: true}, Seeds: []string{"127.0.0.1:1"}}
	if err := cfg.setDefaults(); !errors.Is(err, ErrAuth) {
		t.Fatalf("Announce.Insecure without Insecure: %v", err)
	}
}

// TestAnnouncementsInsecure: in a cluster started with --insecure, workers
// announce unsigned and an insecure client without an announce key finds
// them without seeds.
func TestAnnouncementsInsecure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	if err := announce.Available(""); err != nil {
		t.Skipf("no multicast on loopback: %v", err)
	}
	acfg := testGroup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := devcluster.Start(ctx, devcluster.Options{Workers: 1, Insecure: true}) // w1 does not announce
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	wa, err := worker.New(worker.Config{Client: dc.Client, ID: "wa", UDPAddr: "127.0.0.1:0", TTL: 2 * time.Second,
		Registry: prometheus.NewRegistry(), Announce: acfg, Auth: dc.Auth()})
	if err != nil {
		t.Fatal(err)
	}
	if err := wa.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer wa.Close()
	if err := dc.WaitServing(ctx); err != nil {
		t.Fatal(err)
	}
	signed := make(chan bool, 1)
	witness, err := announce.Listen(announce.Config{Enabled: true, Group: acfg.Group, Cluster: acfg.Cluster, Insecure: true},
		func(ev announce.Event) {
			select {
			case signed <- ev.Ann.Signed:
			default:
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	defer witness.Close()
	select {
	case s := <-signed:
		if s {
			t.Fatal("a worker of an insecure cluster signs its announcements")
		}
	case <-ctx.Done():
		t.Fatal("no announcement")
	}
	c, err := DialConfig(ctx, Config{Announce: acfg, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.seeds) != 1 || c.seeds[0].String() != wa.Addr().String() {
		t.Fatalf("seeds %v, want the announcing worker %v", c.seeds, wa.Addr())
	}
	tok, err := c.Acquire(ctx, "a", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	tok.Release(ctx)
}
