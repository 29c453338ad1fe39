package main

import (
	"errors"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// A host like a container's: lo, eth0 with the default route, docker0.
var lan = hostNet{
	Ifaces: []netIface{
		{Name: "lo", Loopback: true, Addrs: addrs("127.0.0.1", "::1")},
		{Name: "eth0", Addrs: addrs("fe80::1", "10.1.2.3", "fd00::3")},
		{Name: "docker0", Addrs: addrs("172.17.0.1")},
	},
	Default4:   []string{"eth0"},
	Default6:   []string{"eth0"},
	Hostname:   "h1",
	LookupHost: func() []netip.Addr { return addrs("127.0.1.1") },
}

var (
	remotePeers = []peer{{"etcd endpoint 127.0.0.1:2379", netip.MustParseAddr("127.0.0.1")}, {"etcd endpoint 10.1.2.9:2379", netip.MustParseAddr("10.1.2.9")}}
	loopPeers   = []peer{{"etcd endpoint 127.0.0.1:2379", netip.MustParseAddr("127.0.0.1")}}
)

func udpL(listen, adv string) listener {
	return listener{Flag: "udp-addr", AdvFlag: "advertise-udp-addr", Listen: listen, Advertise: adv}
}

func TestAdvertiseDerivation(t *testing.T) {
	noRoute := lan
	noRoute.Default4, noRoute.Default6 = nil, nil
	byName := noRoute
	byName.LookupHost = func() []netip.Addr { return addrs("127.0.1.1", "172.17.0.1") }
	single := hostNet{Ifaces: []netIface{lan.Ifaces[0], {Name: "veth0", Addrs: addrs("10.77.0.11")}}, Hostname: "ns"}
	loopOnly := hostNet{Ifaces: []netIface{lan.Ifaces[0]}, Hostname: "ns"}
	for _, tt := range []struct {
		name    string
		l       listener
		h       hostNet
		peers   []peer
		want    string
		whyPart string
	}{
		{"specific listen is advertised as is", udpL("10.1.2.3:7700", ""), lan, remotePeers, "10.1.2.3:7700", "listen address"},
		{"loopback listen on a loopback cluster", udpL("127.0.0.1:7700", ""), lan, loopPeers, "127.0.0.1:7700", "listen address"},
		{"loopback listen with no peers known", udpL("127.0.0.1:7700", ""), lan, nil, "127.0.0.1:7700", "listen address"},
		{"explicit advertise wins", udpL("0.0.0.0:7700", "10.9.9.9:17700"), lan, remotePeers, "10.9.9.9:17700", "--advertise-udp-addr"},
		{"explicit advertise by name", udpL("0.0.0.0:7700", "w1.tokend.svc:7700"), lan, remotePeers, "w1.tokend.svc:7700", "--advertise-udp-addr"},
		{"0.0.0.0: the default route's interface", udpL("0.0.0.0:7700", ""), lan, remotePeers, "10.1.2.3:7700", "eth0, the interface with the IPv4 default route"},
		{"empty host is 0.0.0.0", udpL(":7700", ""), lan, remotePeers, "10.1.2.3:7700", "default route"},
		{"port 0 stays 0 for the bound port", udpL("0.0.0.0:0", ""), lan, remotePeers, "10.1.2.3:0", "default route"},
		{":: derives IPv6, skipping link-local", udpL("[::]:7700", ""), lan, remotePeers, "[fd00::3]:7700", "IPv6 default route"},
		{"no default route: the host name", udpL("0.0.0.0:7700", ""), byName, remotePeers, "172.17.0.1:7700", `host name "h1"`},
		{"no default route, no name: the only address", udpL("0.0.0.0:7700", ""), single, remotePeers, "10.77.0.11:7700", "the only non-loopback IPv4 address"},
		{"nothing but loopback, cluster on loopback", udpL("0.0.0.0:7700", ""), loopOnly, loopPeers, "127.0.0.1:7700", "loopback"},
		{"nothing but loopback, IPv6", udpL("[::]:7700", ""), loopOnly, nil, "[::1]:7700", "loopback"},
		{"a default route on an interface without an address of the family", udpL("0.0.0.0:7700", ""),
			hostNet{Ifaces: []netIface{{Name: "tun0"}, {Name: "eth1", Addrs: addrs("192.168.5.5")}}, Default4: []string{"tun0"}}, remotePeers, "192.168.5.5:7700", "only non-loopback"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, why, err := advertiseAddr(tt.l, tt.h, tt.peers)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || !strings.Contains(why, tt.whyPart) {
				t.Errorf("got %q (%s), want %q (%s)", got, why, tt.want, tt.whyPart)
			}
		})
	}
}

func TestAdvertiseRefusals(t *testing.T) {
	noRoute := lan
	noRoute.Default4 = nil // eth0 and docker0 both qualify: ambiguous
	for _, tt := range []struct {
		name  string
		l     listener
		h     hostNet
		peers []peer
		want  []string // in the error
	}{
		{"unspecified advertise", udpL("0.0.0.0:7700", "0.0.0.0:7700"), lan, nil, []string{"--advertise-udp-addr", "unspecified"}},
		{"unspecified IPv6 advertise", udpL("0.0.0.0:7700", "[::]:7700"), lan, nil, []string{"--advertise-udp-addr", "unspecified"}},
		{"loopback advertise, remote cluster", udpL("0.0.0.0:7700", "127.0.0.1:7700"), lan, remotePeers, []string{"--advertise-udp-addr", "loopback", "10.1.2.9:2379"}},
		{"localhost advertise, remote cluster", udpL("0.0.0.0:7700", "localhost:7700"), lan, remotePeers, []string{"--advertise-udp-addr", "loopback"}},
		{"loopback listen, remote cluster", udpL("127.0.0.1:7700", ""), lan, remotePeers, []string{"--udp-addr", "--advertise-udp-addr", "loopback", "10.1.2.9:2379"}},
		{"nothing to derive, remote cluster", udpL("0.0.0.0:7700", ""), hostNet{Ifaces: lan.Ifaces[:1], Hostname: "h1"}, remotePeers,
			[]string{"--udp-addr", "--advertise-udp-addr", "no interface has one"}},
		{"ambiguous without a default route", udpL("0.0.0.0:7700", ""), noRoute, remotePeers, []string{"--advertise-udp-addr", "2 to choose from"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := advertiseAddr(tt.l, tt.h, tt.peers)
			if err == nil {
				t.Fatalf("got %q, want an error", got)
			}
			if !errors.Is(err, errConfig) {
				t.Errorf("%v does not wrap errConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestAdvertiseURLs(t *testing.T) {
	peers := []peer{{"initial-cluster member s2=http://10.1.2.4:2380", netip.MustParseAddr("10.1.2.4")}}
	got, _, err := advertiseURLs("client-urls", "advertise-client-urls", []string{"http://0.0.0.0:2379", "http://127.0.0.1:2379"}, nil, lan, peers)
	if err != nil || !reflect.DeepEqual(got, []string{"http://10.1.2.3:2379"}) {
		t.Errorf("0.0.0.0 next to loopback: %v, %v", got, err)
	}
	got, _, err = advertiseURLs("peer-urls", "advertise-peer-urls", []string{"http://127.0.0.1:2380"}, nil, lan, nil)
	if err != nil || !reflect.DeepEqual(got, []string{"http://127.0.0.1:2380"}) {
		t.Errorf("loopback alone: %v, %v", got, err)
	}
	if _, _, err := advertiseURLs("peer-urls", "advertise-peer-urls", []string{"http://127.0.0.1:2380"}, nil, lan, peers); err == nil || !strings.Contains(err.Error(), "--peer-urls") {
		t.Errorf("loopback peer URL in a remote cluster: %v", err)
	}
	if _, _, err := advertiseURLs("peer-urls", "advertise-peer-urls", []string{"http://0.0.0.0:2380"}, []string{"http://0.0.0.0:2380"}, lan, nil); err == nil || !strings.Contains(err.Error(), "--advertise-peer-urls") {
		t.Errorf("unspecified advertised peer URL: %v", err)
	}
}

func TestParseRoutes(t *testing.T) {
	v4 := `Iface	Destination	Gateway 	Flags	RefCnt	Use	Metric	Mask		MTU	Window	IRTT
eth1	00000000	010200C0	0003	0	0	200	00000000	0	0	0
docker0	000011AC	00000000	0001	0	0	0	0000FFFF	0	0	0
eth0	00000000	010200C0	0003	0	0	100	00000000	0	0	0
eth2	00000000	00000000	0000	0	0	0	00000000	0	0	0
`
	if got := parseRoutes(v4, false); !reflect.DeepEqual(got, []string{"eth0", "eth1"}) {
		t.Errorf("IPv4: %v", got)
	}
	v6 := `fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
`
	if got := parseRoutes(v6, true); !reflect.DeepEqual(got, []string{"eth0"}) {
		t.Errorf("IPv6: %v", got)
	}
}

// resolve runs loadConfig and resolveAdvertise as run does, with a fake
// host network.
func resolve(t *testing.T, m mode, h hostNet, args ...string) (*config, error) {
	t.Helper()
	args = append(args, "--data-dir", t.TempDir())
	if m == modeWorker {
		args = args[:len(args)-2]
	}
	c, err := loadConfig(m, args, func(string) string { return "" }, &strings.Builder{})
	if err != nil {
		return nil, err
	}
	_, err = c.resolveAdvertise(h, c.peerAddrs(func(string) []netip.Addr { return nil }))
	return c, err
}

func TestResolveWorker(t *testing.T) {
	c, err := resolve(t, modeWorker, lan, "--etcd-endpoints", "10.1.2.9:2379", "--udp-addr", "0.0.0.0:7700", "--http-addr", "0.0.0.0:7780")
	if err != nil {
		t.Fatal(err)
	}
	if c.advUDP != "10.1.2.3:7700" || c.advHTTP != "10.1.2.3:7780" || c.advHandoff != "10.1.2.3:0" {
		t.Errorf("udp %q http %q handoff %q", c.advUDP, c.advHTTP, c.advHandoff)
	}
	// The defaults listen on loopback: refused in a cluster on other hosts,
	// naming the flag; HTTP on loopback is kept private, not refused.
	_, err = resolve(t, modeWorker, lan, "--etcd-endpoints", "10.1.2.9:2379")
	if err == nil || !strings.Contains(err.Error(), "--udp-addr") {
		t.Errorf("loopback worker in a remote cluster: %v", err)
	}
	c, err = resolve(t, modeWorker, lan, "--etcd-endpoints", "10.1.2.9:2379", "--udp-addr", "0.0.0.0:7700")
	if err != nil || c.advHTTP != "" {
		t.Errorf("loopback HTTP in a remote cluster: %q, %v", c.advHTTP, err)
	}
	// Explicit handoff listen on every address, and its own advertised address.
	c, err = resolve(t, modeWorker, lan, "--etcd-endpoints", "10.1.2.9:2379", "--udp-addr", "0.0.0.0:7700", "--handoff-addr", "0.0.0.0:7701")
	if err != nil || c.advHandoff != "10.1.2.3:7701" {
		t.Errorf("handoff: %q, %v", c.advHandoff, err)
	}
	c, err = resolve(t, modeWorker, lan, "--etcd-endpoints", "10.1.2.9:2379", "--udp-addr", "0.0.0.0:7700", "--advertise-handoff-addr", "10.5.5.5:0")
	if err != nil || c.advHandoff != "10.5.5.5:0" {
		t.Errorf("advertised handoff: %q, %v", c.advHandoff, err)
	}
	if _, err := resolve(t, modeWorker, lan, "--advertise-udp-addr", "0.0.0.0:7700"); err == nil || !strings.Contains(err.Error(), "--advertise-udp-addr") {
		t.Errorf("unspecified --advertise-udp-addr: %v", err)
	}
	// On loopback everything stays as it was.
	c, err = resolve(t, modeWorker, lan)
	if err != nil || c.advUDP != "127.0.0.1:7700" || c.advHTTP != "127.0.0.1:7780" || c.advHandoff != "127.0.0.1:0" {
		t.Errorf("loopback: %+v, %v", c, err)
	}
}

func TestResolveEnv(t *testing.T) {
	env := map[string]string{"TOKEND_ADVERTISE_UDP_ADDR": "10.4.4.4:7700", "TOKEND_UDP_ADDR": "0.0.0.0:7700", "TOKEND_ETCD_ENDPOINTS": "10.1.2.9:2379"}
	c, err := loadConfig(modeWorker, nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.resolveAdvertise(lan, c.peerAddrs(func(string) []netip.Addr { return nil })); err != nil || c.advUDP != "10.4.4.4:7700" {
		t.Errorf("TOKEND_ADVERTISE_UDP_ADDR: %q, %v", c.advUDP, err)
	}
}

func TestResolveServer(t *testing.T) {
	ic := "--initial-cluster=s1=https://10.1.2.3:2380,s2=https://10.1.2.4:2380,s3=https://10.1.2.5:2380"
	c, err := resolve(t, modeServer, lan, "--name", "s1", ic, "--peer-urls", "https://0.0.0.0:2380", "--client-urls", "https://0.0.0.0:2379", "--http-addr", "0.0.0.0:7780")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.advPeerURLs, []string{"https://10.1.2.3:2380"}) || !reflect.DeepEqual(c.advClientURLs, []string{"https://10.1.2.3:2379"}) || c.advHTTP != "10.1.2.3:7780" {
		t.Errorf("peer %v client %v http %q", c.advPeerURLs, c.advClientURLs, c.advHTTP)
	}
	// The README's old command: loopback defaults in a remote cluster.
	if _, err := resolve(t, modeServer, lan, "--name", "s1", ic); err == nil || !strings.Contains(err.Error(), "--peer-urls") {
		t.Errorf("loopback peer URLs in a remote cluster: %v", err)
	}
	// No initial cluster: this member alone, at its derived peer URL.
	c, err = resolve(t, modeServer, lan, "--name", "s1", "--peer-urls", "https://0.0.0.0:2380")
	if err != nil || c.initialCluster != "s1=https://10.1.2.3:2380" {
		t.Errorf("derived initial cluster %q, %v", c.initialCluster, err)
	}
	c, err = resolve(t, modeServer, lan, "--name", "s1", "--peer-urls", "https://0.0.0.0:2380", "--advertise-peer-urls", "https://10.8.8.8:2380")
	if err != nil || c.initialCluster != "s1=https://10.8.8.8:2380" {
		t.Errorf("advertised initial cluster %q, %v", c.initialCluster, err)
	}
}

func TestFillPort(t *testing.T) {
	if got := fillPort("10.1.2.3:0", &net.UDPAddr{Port: 4242}); got != "10.1.2.3:4242" {
		t.Error(got)
	}
	if got := fillPort("10.1.2.3:7", &net.TCPAddr{Port: 4242}); got != "10.1.2.3:7" {
		t.Error(got)
	}
}

// A host with a default route never waits for DNS.
func TestAdvertiseNoLookupWithDefaultRoute(t *testing.T) {
	h := lan
	h.LookupHost = func() []netip.Addr {
		t.Error("host name resolved although the default route gave an address")
		return nil
	}
	if got, _, err := advertiseAddr(udpL("0.0.0.0:7700", ""), h, remotePeers); err != nil || got != "10.1.2.3:7700" {
		t.Errorf("%q, %v", got, err)
	}
}

func TestLocalURLs(t *testing.T) {
	got := localURLs([]string{"http://0.0.0.0:2379", "http://10.1.2.3:2381", "http://[::]:2382"})
	want := []string{"http://127.0.0.1:2379", "http://10.1.2.3:2381", "http://[::1]:2382"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestCheckLoopbackAgainstRegisteredWorkers(t *testing.T) {
	others := []peer{{"registered worker w2 at 10.1.2.4:7700", netip.MustParseAddr("10.1.2.4")}}
	if err := checkLoopback("127.0.0.1:7700", "127.0.0.1:7700", others); err == nil || !strings.Contains(err.Error(), "--udp-addr") || !strings.Contains(err.Error(), "w2") {
		t.Errorf("loopback listen: %v", err)
	}
	if err := checkLoopback("127.0.0.1:7700", "0.0.0.0:7700", others); err == nil || !strings.Contains(err.Error(), "--advertise-udp-addr") {
		t.Errorf("loopback advertised: %v", err)
	}
	if err := checkLoopback("127.0.0.1:7700", "127.0.0.1:7700", loopPeers); err != nil {
		t.Errorf("all on loopback: %v", err)
	}
	if err := checkLoopback("10.1.2.3:7700", "0.0.0.0:7700", others); err != nil {
		t.Errorf("reachable: %v", err)
	}
}

// tokend up's children advertise what they listen on, whatever
// TOKEND_ADVERTISE_* variables they inherit.
func TestUpAdvertisesLoopback(t *testing.T) {
	cfg := &upConfig{servers: 1, workers: 1, dataDir: t.TempDir(), basePort: 20000, workerTTL: 5 * time.Second,
		sessionTTL: 10 * time.Second, grace: 5 * time.Second, shutdownTimeout: 10 * time.Second, logFormat: "text", logLevel: "info"}
	env := map[string]string{"TOKEND_ADVERTISE_UDP_ADDR": "10.9.9.9:7700", "TOKEND_ADVERTISE_HTTP_ADDR": "10.9.9.9:7780",
		"TOKEND_ADVERTISE_PEER_URLS": "http://10.9.9.9:2380", "TOKEND_ADVERTISE_CLIENT_URLS": "http://10.9.9.9:2379",
		"TOKEND_ADVERTISE_HANDOFF_ADDR": "10.9.9.9:0"}
	for _, k := range planUp(cfg, false) {
		m := modeWorker
		if k.server {
			m = modeServer
		}
		c, err := loadConfig(m, k.args[1:], func(k string) string { return env[k] }, &strings.Builder{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.resolveAdvertise(lan, c.peerAddrs(func(string) []netip.Addr { return nil })); err != nil {
			t.Fatal(err)
		}
		got := c.advHTTP + " " + c.advUDP + " " + c.advHandoff
		if k.server {
			got = c.advHTTP + " " + strings.Join(c.advPeerURLs, ",") + " " + strings.Join(c.advClientURLs, ",")
		}
		if strings.Contains(got, "10.9.9.9") {
			t.Errorf("%s advertises %s", k.name, got)
		}
	}
}
