package ctest

import (
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/testkit/mcast"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/wire/auth"
)

// TestAnnounceDecoder runs the C announcement decoder and verifier
// (tests/test_ann.c: the golden datagrams of announce/format_test.go and
// tampered variants), plain and under ASan/UBSan.
func TestAnnounceDecoder(t *testing.T) {
	for _, san := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "asan"}[san]
		t.Run(name, func(t *testing.T) {
			if san && !sanitizers(t, findCC(t)) {
				t.Skip("no ASan/UBSan here")
			}
			dir := buildC(t, san, "test_ann")
			out, err := run(t, time.Minute, nil, filepath.Join(dir, "test_ann"))
			if err != nil || !strings.Contains(out, "test_ann: ok") {
				t.Fatalf("test_ann: %v\n%s", err, out)
			}
		})
	}
}

// TestMulticastDiscovery: a seedless C client holding the cluster's announce
// key finds a real tokend by its signed announcements and acquires a token.
// Forged announcements naming a fake worker are multicast all along:
// unsigned, signed with another cluster's key, signed with the right key but
// sent long ago (a replay), of another cluster, and of version 1. While only
// forgeries are heard, the client finds no worker (and says how many it
// dropped); with the real worker announcing, it connects to it, counts the
// forgeries as dropped, and the fake receives nothing.
func TestMulticastDiscovery(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tokend")
	}
	if err := announce.Available(""); err != nil {
		t.Skipf("no multicast on loopback: %v", err)
	}
	bin := filepath.Join(buildC(t, false, "tokend-discover"), "tokend-discover")
	group := fmt.Sprintf("239.255.%d.%d:%d", 100+rand.IntN(100), 1+rand.IntN(254), proctest.FreePort(t, "udp"))
	cluster := fmt.Sprintf("ctest-%d", rand.Uint64())

	fake, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var fakeGot atomic.Int64
	fakeDone := make(chan struct{})
	go func() {
		defer close(fakeDone)
		buf := make([]byte, 2048)
		for {
			if _, _, err := fake.ReadFrom(buf); err != nil {
				return
			}
			fakeGot.Add(1)
		}
	}()
	t.Cleanup(func() { fake.Close(); <-fakeDone })

	// The real tokend, announcing signed with its cluster key.
	tg := startTokend(t, "--announce", "--announce-group", group, "--announce-cluster", cluster)
	if !workerServesUDP(t, tg.addr) {
		t.Skip("worker does not serve UDP yet")
	}
	name, clusterKey, err := pki.ReadKeyFile(filepath.Join(filepath.Dir(tg.keyFile), pki.ClusterKeyFile))
	if err != nil || name != pki.ClusterKeyName {
		t.Fatalf("cluster key: %q %v", name, err)
	}
	pubText := announce.FormatPublicKey(announce.PublicKey(clusterKey))

	// The forgeries, sent every 20 ms from a goroutine until the test ends.
	var other auth.Key
	other[0] = 1
	mk := func(a announce.Announcement, key ed25519.PrivateKey) []byte {
		var b []byte
		var err error
		if key == nil {
			b, err = a.Append(nil)
		} else {
			b, err = a.AppendSigned(nil, key)
		}
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	now := uint64(time.Now().UnixMilli())
	base := announce.Announcement{Cluster: cluster, Addr: fake.LocalAddr().String(), WorkerID: "fake",
		MapVersion: 1 << 40, Interval: time.Second, Sender: 77, Seq: 1, SentAt: now}
	old := base
	old.SentAt = now - 3600_000
	otherCluster := base
	otherCluster.Cluster = "not-" + cluster
	v1 := mk(base, nil)
	v1[2] = 1
	forged := [][]byte{
		mk(base, nil), // unsigned
		mk(base, announce.SigningKey(other)),
		mk(old, announce.SigningKey(clusterKey)), // a replay
		mk(otherCluster, announce.SigningKey(clusterKey)),
		v1,
	}
	send := mcast.Sender(t, group)
	stop, sent := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sent)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, b := range forged {
				send(b)
			}
			select {
			case <-stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-sent })

	// Another group on which only the forgeries are heard: no worker.
	fakeGroup := fmt.Sprintf("239.255.%d.%d:%d", 100+rand.IntN(100), 1+rand.IntN(254), proctest.FreePort(t, "udp"))
	sendFake := mcast.Sender(t, fakeGroup)
	stop2, sent2 := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sent2)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			for _, b := range forged {
				sendFake(b)
			}
			select {
			case <-stop2:
				return
			case <-tk.C:
			}
		}
	}()
	out, err := run(t, 30*time.Second, tg.env(), bin, cluster+"@"+fakeGroup, pubText, "0", "1000")
	close(stop2)
	<-sent2
	m := regexp.MustCompile(`no verified announcement .*\((\d+) dropped\)`).FindStringSubmatch(out)
	if exitCode(err) != 2 || m == nil {
		t.Fatalf("only forgeries: want exit 2 and no verified announcement, got %v\n%s", err, out)
	}
	if n, _ := strconv.Atoi(m[1]); n < len(forged) {
		t.Fatalf("only forgeries: %d dropped, want at least %d\n%s", n, len(forged), out)
	}
	t.Logf("only forgeries: %s", strings.TrimSpace(out))

	// The real group: the signed announcements of tokend.
	out, err = run(t, 60*time.Second, tg.env(), bin, cluster+"@"+group, pubText, strconv.Itoa(2*len(forged)), "10000")
	if err != nil || !strings.Contains(out, "fence=") {
		t.Fatalf("seedless client with the announce key: %v\n%s", err, out)
	}
	m = regexp.MustCompile(`stats accepted=(\d+) dropped=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no stats:\n%s", out)
	}
	acc, _ := strconv.Atoi(m[1])
	drop, _ := strconv.Atoi(m[2])
	if acc < 1 || drop < 2*len(forged) {
		t.Fatalf("accepted %d (want >= 1), dropped %d (want >= %d)\n%s", acc, drop, 2*len(forged), out)
	}
	t.Logf("with the real worker: %s", strings.TrimSpace(out))

	// Without the announce key (and not insecure): refused, with why.
	out, err = run(t, 30*time.Second, tg.env(), bin, cluster+"@"+group, "-", "0", "1000")
	if exitCode(err) != 2 || !strings.Contains(out, "announcements need the cluster's announce key: tokenctl announce-key") {
		t.Fatalf("no announce key: want exit 2 and why, got %v\n%s", err, out)
	}
	if n := fakeGot.Load(); n != 0 {
		t.Fatalf("the fake worker named only by forgeries received %d datagrams", n)
	}
}
