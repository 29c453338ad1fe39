package main

// Listen and advertise apart. Each listener (the worker's UDP socket, its
// handoff socket, HTTP, etcd's peer and client URLs) has a listen address
// and an advertised one: what is written to etcd (/tokend/workers/<id>, the
// leader key, etcd's member list) for others to connect to. The advertised
// address is the --advertise-* flag if given; else the listen address if it
// is specific; else, for 0.0.0.0 or ::, one derived from this host's
// network. advertiseAddr decides it and is pure: the shell (hostNetwork,
// peerAddrs) reads /proc/net/route, the interfaces and the host name.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// hostNet is what this host's network looks like: the input of the
// derivation.
type hostNet struct {
	Ifaces   []netIface
	Default4 []string // interfaces with an IPv4 default route, best (lowest metric) first
	Default6 []string // the same for IPv6
	Hostname string
	// LookupHost resolves Hostname; called only when the default route
	// gives no address, so that a host with one never waits for DNS. Nil:
	// the name resolves to nothing.
	LookupHost func() []netip.Addr
}

// netIface is one interface that is up.
type netIface struct {
	Name     string
	Loopback bool
	Addrs    []netip.Addr
}

// peer is another member of the cluster, by the address it is known at.
type peer struct {
	What string // for errors: "etcd endpoint 10.0.0.1:2379"
	Addr netip.Addr
}

// listener is one address pair to resolve.
type listener struct {
	Flag      string // the listen flag: "udp-addr"
	AdvFlag   string // its advertise flag: "advertise-udp-addr"
	Listen    string // host:port as configured
	Advertise string // host:port as configured; "" derives it
}

// advertiseAddr returns the host:port to advertise for l (a port 0 stays 0:
// the caller fills in the port it bound) and why it was chosen. It refuses,
// naming the flag, an unspecified address, and a loopback one when a peer
// is not on loopback: the others could not reach this member there.
func advertiseAddr(l listener, h hostNet, peers []peer) (addr, why string, err error) {
	remote := firstRemote(peers)
	if l.Advertise != "" {
		host, _, err := net.SplitHostPort(l.Advertise)
		if err != nil {
			return "", "", bad(l.AdvFlag, "%v", err)
		}
		if isUnspecified(host) {
			return "", "", bad(l.AdvFlag, "%q: an unspecified address cannot be advertised: nobody can connect to it; give this host's reachable address", l.Advertise)
		}
		if isLoopback(host) && remote != nil {
			return "", "", bad(l.AdvFlag, "%q is a loopback address, but the cluster's other members are not on loopback (%s): they could not reach this one; give this host's reachable address", l.Advertise, remote.What)
		}
		return l.Advertise, "given by --" + l.AdvFlag, nil
	}
	host, port, err := net.SplitHostPort(l.Listen)
	if err != nil {
		return "", "", bad(l.Flag, "%v", err)
	}
	if !isUnspecified(host) {
		if isLoopback(host) && remote != nil {
			return "", "", bad(l.Flag, "%q would be advertised, but it is a loopback address and the cluster's other members are not on loopback (%s); listen on a reachable address, or on 0.0.0.0 to derive one, or set --%s", l.Listen, remote.What, l.AdvFlag)
		}
		return l.Listen, "the listen address (--" + l.Flag + ")", nil
	}
	v6 := strings.Contains(host, ":") // "::"; "" and 0.0.0.0 are IPv4 sockets here
	ip, why, ok := deriveIP(h, v6)
	if !ok {
		if remote != nil {
			return "", "", bad(l.Flag, "%q listens on every address and no address to advertise could be found (%s); set --%s to this host's reachable address", l.Listen, why, l.AdvFlag)
		}
		ip = netip.MustParseAddr("127.0.0.1")
		if v6 {
			ip = netip.IPv6Loopback()
		}
		why = "loopback: " + why + ", and the cluster's other members are on loopback too"
	}
	return net.JoinHostPort(ip.String(), port), why, nil
}

// deriveIP picks the address to advertise for a listener on every address
// of the family: the default route's interface's, else the host name's,
// else the only non-loopback address of an interface that is up. Loopback
// and link-local addresses never qualify. Without one, why says what was
// looked at.
func deriveIP(h hostNet, v6 bool) (ip netip.Addr, why string, ok bool) {
	usable := func(a netip.Addr) bool {
		return a.IsValid() && a.Is6() == v6 && !a.Is4In6() && !a.IsLoopback() && !a.IsUnspecified() &&
			!a.IsLinkLocalUnicast() && !a.IsMulticast()
	}
	fam, defaults := "IPv4", h.Default4
	if v6 {
		fam, defaults = "IPv6", h.Default6
	}
	for _, name := range defaults {
		for _, ifc := range h.Ifaces {
			if ifc.Name != name || ifc.Loopback {
				continue
			}
			for _, a := range ifc.Addrs {
				if usable(a) {
					return a, fmt.Sprintf("the address of %s, the interface with the %s default route", name, fam), true
				}
			}
		}
	}
	if h.Hostname != "" && h.LookupHost != nil {
		for _, a := range h.LookupHost() {
			if usable(a) {
				return a, fmt.Sprintf("the address of the host name %q (no %s default route)", h.Hostname, fam), true
			}
		}
	}
	var cands []netip.Addr
	for _, ifc := range h.Ifaces {
		if ifc.Loopback {
			continue
		}
		for _, a := range ifc.Addrs {
			if usable(a) {
				cands = append(cands, a)
			}
		}
	}
	if len(cands) == 1 {
		return cands[0], fmt.Sprintf("the only non-loopback %s address (no default route; the host name %q does not resolve to one)", fam, h.Hostname), true
	}
	what := fmt.Sprintf("no %s default route, the host name %q resolves to no non-loopback %s address, and ", fam, h.Hostname, fam)
	if len(cands) == 0 {
		what += "no interface has one"
	} else {
		what += fmt.Sprintf("the interfaces have %d to choose from", len(cands))
	}
	return netip.Addr{}, what, false
}

// advertiseURLs is advertiseAddr for a list of etcd URLs: the advertised
// list if given (each checked), else one per listen URL. Without a
// --advertise-* list, a loopback listen URL next to a reachable one is
// listened on but not advertised.
func advertiseURLs(flagName, advFlag string, listen, adv []string, h hostNet, peers []peer) (out, whys []string, err error) {
	if len(adv) > 0 {
		for _, s := range adv {
			u, err := url.Parse(s)
			if err != nil {
				return nil, nil, bad(advFlag, "%q: %v", s, err)
			}
			if _, _, err := advertiseAddr(listener{Flag: flagName, AdvFlag: advFlag, Advertise: u.Host}, h, peers); err != nil {
				return nil, nil, err
			}
			out = append(out, s)
		}
		return out, []string{"given by --" + advFlag}, nil
	}
	var loop []string
	seen := map[string]bool{}
	for _, s := range listen {
		u, err := url.Parse(s)
		if err != nil {
			return nil, nil, bad(flagName, "%q: %v", s, err)
		}
		host, _, _ := net.SplitHostPort(u.Host)
		if isLoopback(host) {
			loop = append(loop, s)
			continue
		}
		a, why, err := advertiseAddr(listener{Flag: flagName, AdvFlag: advFlag, Listen: u.Host}, h, peers)
		if err != nil {
			return nil, nil, err
		}
		v := url.URL{Scheme: u.Scheme, Host: a}
		if !seen[v.String()] {
			seen[v.String()] = true
			out = append(out, v.String())
			whys = append(whys, why)
		}
	}
	if len(out) == 0 {
		// Only loopback listen URLs: advertised as they are, if the
		// cluster is on loopback too.
		for _, s := range loop {
			u, _ := url.Parse(s)
			if _, _, err := advertiseAddr(listener{Flag: flagName, AdvFlag: advFlag, Listen: u.Host}, h, peers); err != nil {
				return nil, nil, err
			}
			out = append(out, s)
			whys = append(whys, "the listen address (--"+flagName+")")
		}
	}
	return out, whys, nil
}

// checkLoopback refuses adv, the worker's advertised UDP address, if it is
// loopback while a peer is not. The error names --advertise-udp-addr if
// adv came from it (it differs from listen), else --udp-addr.
func checkLoopback(adv, listen string, peers []peer) error {
	host, _, err := net.SplitHostPort(adv)
	remote := firstRemote(peers)
	if err != nil || !isLoopback(host) || remote == nil {
		return nil
	}
	if adv != listen {
		return bad("advertise-udp-addr", "%q is a loopback address, but the cluster's other members are not on loopback (%s): its clients could not reach this worker", adv, remote.What)
	}
	return bad("udp-addr", "%q would be advertised, but it is a loopback address and the cluster's other members are not on loopback (%s); listen on a reachable address, or on 0.0.0.0 to derive one, or set --advertise-udp-addr", adv, remote.What)
}

// localURLs returns the URLs at which this process reaches its own
// listeners: listen URLs on every address become loopback ones (the
// advertised address may be a NAT's, unreachable from inside).
func localURLs(listen []string) []string {
	out := make([]string, 0, len(listen))
	for _, s := range listen {
		u, err := url.Parse(s)
		if err == nil {
			if host, port, err := net.SplitHostPort(u.Host); err == nil && isUnspecified(host) {
				lo := "127.0.0.1"
				if strings.Contains(host, ":") {
					lo = "::1"
				}
				u.Host = net.JoinHostPort(lo, port)
				s = u.String()
			}
		}
		out = append(out, s)
	}
	return out
}

// fillPort returns adv with a port 0 replaced by bound's port.
func fillPort(adv string, bound net.Addr) string {
	host, port, err := net.SplitHostPort(adv)
	if err != nil || port != "0" {
		return adv
	}
	var p int
	switch a := bound.(type) {
	case *net.TCPAddr:
		p = a.Port
	case *net.UDPAddr:
		p = a.Port
	}
	return net.JoinHostPort(host, strconv.Itoa(p))
}

func firstRemote(peers []peer) *peer {
	for i := range peers {
		if !peers[i].Addr.IsLoopback() {
			return &peers[i]
		}
	}
	return nil
}

// isUnspecified: "", 0.0.0.0 or :: (every address).
func isUnspecified(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}

// isLoopback: localhost or a loopback IP. A host name other than localhost
// counts as reachable: only its resolution could tell, and that may differ
// on other hosts.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// parseRoutes returns the interfaces with a default route in a
// /proc/net/route (IPv4) or /proc/net/ipv6_route (IPv6) listing, lowest
// metric first. Routes that are not up, or reject routes, do not count.
func parseRoutes(text string, v6 bool) []string {
	const rtfUp, rtfReject = 0x1, 0x200
	type route struct {
		iface  string
		metric uint64
	}
	var rs []route
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var iface, dst, plen, metric, flags string
		switch {
		case !v6 && len(f) >= 8 && f[0] != "Iface":
			iface, dst, flags, metric, plen = f[0], f[1], f[3], f[6], f[7]
			if plen != "00000000" {
				continue
			}
		case v6 && len(f) >= 10:
			dst, plen, metric, flags, iface = f[0], f[1], f[5], f[8], f[9]
			if plen != "00" {
				continue
			}
		default:
			continue
		}
		if strings.Trim(dst, "0") != "" {
			continue
		}
		fl, err1 := strconv.ParseUint(flags, 16, 32)
		base := 16
		if !v6 {
			base = 10
		}
		m, err2 := strconv.ParseUint(metric, base, 64)
		if err1 != nil || err2 != nil || fl&rtfUp == 0 || fl&rtfReject != 0 || iface == "lo" {
			continue
		}
		rs = append(rs, route{iface, m})
	}
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].metric < rs[j].metric })
	var out []string
	for _, r := range rs {
		out = append(out, r.iface)
	}
	return out
}

// hostNetwork reads this host's network for the derivation: the routing
// tables from /proc and the interfaces from the kernel. Nothing is sent;
// only if the default route gives no address is the host name resolved
// (bounded by a short timeout), which may ask DNS.
func hostNetwork() hostNet {
	var h hostNet
	if ifs, err := net.Interfaces(); err == nil {
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagUp == 0 {
				continue
			}
			n := netIface{Name: ifc.Name, Loopback: ifc.Flags&net.FlagLoopback != 0}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					n.Addrs = append(n.Addrs, p.Addr().Unmap())
				}
			}
			h.Ifaces = append(h.Ifaces, n)
		}
	}
	if b, err := os.ReadFile("/proc/net/route"); err == nil {
		h.Default4 = parseRoutes(string(b), false)
	}
	if b, err := os.ReadFile("/proc/net/ipv6_route"); err == nil {
		h.Default6 = parseRoutes(string(b), true)
	}
	h.Hostname, _ = os.Hostname()
	var once sync.Once
	var ips []netip.Addr
	h.LookupHost = func() []netip.Addr {
		once.Do(func() { ips = lookup(h.Hostname) })
		return ips
	}
	return h
}

// lookup resolves a host name, giving up after 2 s.
func lookup(host string) []netip.Addr {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil
	}
	for i := range ips {
		ips[i] = ips[i].Unmap()
	}
	return ips
}

// peerAddrs lists the cluster's other members as this process knows them
// at start: a worker's etcd endpoints; a server's other initial-cluster
// members. Host names are resolved; one that does not resolve is left out.
func (c *config) peerAddrs(resolve func(string) []netip.Addr) []peer {
	var hostports []struct{ what, hp string }
	if c.mode == modeWorker {
		for _, e := range c.etcdEndpoints {
			hp := e
			if u, err := url.Parse(e); err == nil && u.Host != "" {
				hp = u.Host
			}
			hostports = append(hostports, struct{ what, hp string }{"etcd endpoint " + e, hp})
		}
	} else if c.initialCluster != "" {
		for _, m := range strings.Split(c.initialCluster, ",") {
			name, raw, _ := strings.Cut(strings.TrimSpace(m), "=")
			u, err := url.Parse(raw)
			if err != nil || name == c.name {
				continue
			}
			hostports = append(hostports, struct{ what, hp string }{"initial-cluster member " + m, u.Host})
		}
	}
	var out []peer
	for _, x := range hostports {
		host, _, err := net.SplitHostPort(x.hp)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(host); err == nil {
			out = append(out, peer{x.what, a.Unmap()})
			continue
		}
		if strings.EqualFold(host, "localhost") {
			out = append(out, peer{x.what, netip.MustParseAddr("127.0.0.1")})
			continue
		}
		for _, a := range resolve(host) {
			out = append(out, peer{x.what + " (" + a.String() + ")", a})
		}
	}
	return out
}

// resolveAdvertise sets every advertised address of c from its flags, h and
// peers, and returns one line per derived address saying why it was chosen
// (for the log). It is pure. Errors name the flag and wrap errConfig.
func (c *config) resolveAdvertise(h hostNet, peers []peer) ([]string, error) {
	var notes []string
	note := func(what, addr, why string) {
		notes = append(notes, fmt.Sprintf("%s advertised as %s: %s", what, addr, why))
	}
	// HTTP is for people. A loopback listener is a deliberate choice to
	// keep /metrics private, so it is not refused, only not registered
	// where the cluster is on other hosts.
	httpL := listener{Flag: "http-addr", AdvFlag: "advertise-http-addr", Listen: c.httpAddr, Advertise: c.advHTTP}
	if host, _, _ := net.SplitHostPort(c.httpAddr); c.advHTTP == "" && isLoopback(host) && firstRemote(peers) != nil {
		c.advHTTP = ""
		notes = append(notes, fmt.Sprintf("http not advertised: --http-addr %s is loopback-only and the cluster's other members are not on loopback (set --advertise-http-addr to register one)", c.httpAddr))
	} else {
		a, why, err := advertiseAddr(httpL, h, peers)
		if err != nil {
			return nil, err
		}
		c.advHTTP = a
		note("http", a, why)
	}
	if c.mode != modeServer || c.runWorker {
		a, why, err := advertiseAddr(listener{Flag: "udp-addr", AdvFlag: "advertise-udp-addr", Listen: c.udpAddr, Advertise: c.advUDP}, h, peers)
		if err != nil {
			return nil, err
		}
		c.advUDP = a
		note("worker udp", a, why)
		switch {
		case c.handoffAddr == "off":
			c.advHandoff = ""
		case c.handoffAddr == "" && c.advHandoff == "":
			// It listens on the UDP listen host, any port: advertised at
			// the UDP advertised host with the port it binds.
			host, _, _ := net.SplitHostPort(a)
			c.advHandoff = net.JoinHostPort(host, "0")
		default:
			l := c.handoffAddr
			if l == "" {
				host, _, _ := net.SplitHostPort(c.udpAddr)
				l = net.JoinHostPort(host, "0")
			}
			a, why, err := advertiseAddr(listener{Flag: "handoff-addr", AdvFlag: "advertise-handoff-addr", Listen: l, Advertise: c.advHandoff}, h, peers)
			if err != nil {
				return nil, err
			}
			c.advHandoff = a
			note("worker handoff", a, why)
		}
	}
	if c.mode == modeWorker {
		return notes, nil
	}
	var err error
	var whys []string
	if c.advPeerURLs, whys, err = advertiseURLs("peer-urls", "advertise-peer-urls", c.peerURLs, c.advPeerURLs, h, peers); err != nil {
		return nil, err
	}
	note("etcd peer", strings.Join(c.advPeerURLs, ","), strings.Join(whys, "; "))
	if c.advClientURLs, whys, err = advertiseURLs("client-urls", "advertise-client-urls", c.clientURLs, c.advClientURLs, h, peers); err != nil {
		return nil, err
	}
	note("etcd client", strings.Join(c.advClientURLs, ","), strings.Join(whys, "; "))
	if c.initialCluster == "" {
		pairs := make([]string, len(c.advPeerURLs))
		for i, u := range c.advPeerURLs {
			pairs[i] = c.name + "=" + u
		}
		c.initialCluster = strings.Join(pairs, ",")
	}
	return notes, nil
}
