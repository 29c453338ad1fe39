package clientlib

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
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
