package announce

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Defaults.
const (
	// DefaultGroup is the multicast group and port announcements go to:
	// 239.255.0.0/16 is the IPv4 Local Scope of RFC 2365 (administratively
	// scoped, never routed beyond the site), and 84.75 spells "TK". Port
	// 7790 sits next to the daemon's 7700 (UDP) and 7780 (HTTP).
	DefaultGroup = "239.255.84.75:7790"
	// DefaultCluster is the cluster name used when Config.Cluster is empty.
	// Clusters that share a host or a LAN must set distinct names (or use
	// distinct groups or ports).
	DefaultCluster = "tokend"
	// DefaultInterval is the sender's heartbeat period.
	DefaultInterval = time.Second
	// DefaultTTL is the multicast TTL: 1 keeps announcements on the link.
	DefaultTTL = 1
	// MaxSkew is how far a signed announcement's SentAt may be from the
	// listener's clock, either way: further, it is dropped as a replay
	// ("timestamp"). Hosts of a cluster keep their clocks within it (NTP).
	MaxSkew = 30 * time.Second
)

// Config configures a Sender or a Listener. The zero value is disabled;
// with Enabled set, the zero values of the other fields mean: group
// DefaultGroup, the loopback interface, cluster DefaultCluster, heartbeat
// every second, TTL 1, multicast loopback on, unsigned announcements (a
// Sender); a Listener needs PublicKey, or Insecure.
type Config struct {
	// Enabled turns announcements on. Off by default: multicast is not
	// available everywhere (containers, some clouds), and clients work
	// without it (they learn map changes from replies and by asking).
	// NewSender and Listen return ErrDisabled when it is false.
	Enabled bool
	// Group is the IPv4 multicast group and UDP port, "a.b.c.d:port";
	// "" = DefaultGroup. Senders and listeners of one cluster must agree.
	Group string
	// Interface is the name of the network interface to send on and to join
	// the group on; "" = the loopback interface (whatever its name), which
	// is right for a cluster on one host and never leaks onto a LAN. A
	// cluster spread over several hosts names the LAN interface, e.g.
	// "eth0", on every host.
	Interface string
	// Cluster names the cluster; listeners drop announcements of other
	// clusters. "" = DefaultCluster. 1..64 bytes.
	Cluster string
	// Interval is the sender's heartbeat period; 0 = DefaultInterval. Whole
	// milliseconds, 1 ms .. 1 h. Listeners forget a sender after missing
	// three heartbeats.
	Interval time.Duration
	// TTL is the sender's multicast TTL; 0 = DefaultTTL (1: the local link
	// only). Raise it only if the group is routed between your hosts.
	TTL int
	// NoLoopback stops the sender's own host from receiving its
	// announcements. Off by default: clients on the worker's host (every
	// client of a one-host cluster) must hear them.
	NoLoopback bool
	// SigningKey makes a Sender sign its announcements: the cluster's
	// announce signing key, SigningKey(cluster key). nil = unsigned, for a
	// cluster started with --insecure. Listeners ignore it.
	SigningKey ed25519.PrivateKey
	// PublicKey makes a Listener accept only announcements signed with the
	// cluster's announce key, PublicKey(cluster key) (`tokenctl
	// announce-key` prints it), sent less than MaxSkew from now: others are
	// dropped and counted ("unsigned", "signature", "timestamp"). Senders
	// ignore it.
	PublicKey ed25519.PublicKey
	// Insecure lets a Listener without PublicKey accept every well-formed
	// announcement, signed or not, unverified: for a cluster started with
	// --insecure. Without PublicKey and without Insecure, Listen fails with
	// ErrNoKey. Ignored when PublicKey is set.
	Insecure bool
	// Logger receives the package's logs; nil = discard.
	Logger *slog.Logger
}

// resolved is a validated Config with its defaults applied and its names
// looked up.
type resolved struct {
	Config
	group netip.AddrPort
	ifi   *net.Interface
	src   netip.Addr // the interface's first IPv4 address: the sender binds it
}

// resolve validates cfg, applies the defaults and looks up the interface.
func resolve(cfg Config) (*resolved, error) {
	if !cfg.Enabled {
		return nil, ErrDisabled
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.Cluster == "" {
		cfg.Cluster = DefaultCluster
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &resolved{Config: cfg}
	g, err := ParseGroup(cfg.Group)
	if err != nil {
		return nil, err
	}
	r.group = g
	if err := checkCluster(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("announce: cluster %q: %w", cfg.Cluster, err)
	}
	if cfg.Interval < time.Millisecond || cfg.Interval > MaxInterval || cfg.Interval%time.Millisecond != 0 {
		return nil, fmt.Errorf("announce: interval %v is not a whole number of milliseconds in [1ms, 1h]", cfg.Interval)
	}
	if cfg.TTL < 1 || cfg.TTL > 255 {
		return nil, fmt.Errorf("announce: multicast TTL %d outside [1, 255]", cfg.TTL)
	}
	if cfg.SigningKey != nil && len(cfg.SigningKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("announce: signing key of %d bytes, want %d", len(cfg.SigningKey), ed25519.PrivateKeySize)
	}
	if cfg.PublicKey != nil && len(cfg.PublicKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("announce: public key of %d bytes, want %d", len(cfg.PublicKey), ed25519.PublicKeySize)
	}
	r.ifi, r.src, err = lookupInterface(cfg.Interface)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// ParseGroup parses "a.b.c.d:port" and checks that it is an IPv4 multicast
// group with a non-zero port, returning an error wrapping ErrNotMulticast
// otherwise.
func ParseGroup(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: %v", ErrNotMulticast, s, err)
	}
	a := ap.Addr().Unmap()
	if !a.Is4() || !a.IsMulticast() {
		return netip.AddrPort{}, fmt.Errorf("%w: %q (want 224.0.0.0/4; 239.255.0.0/16 for a site)", ErrNotMulticast, s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %q has port 0", ErrNotMulticast, s)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}

// lookupInterface finds the interface named name ("" = the first loopback
// interface that is up) and its first IPv4 address. It must be up and have
// an IPv4 address, and, unless it is the loopback interface, have the
// multicast flag: Linux delivers multicast on "lo" although it does not set
// the flag (the probe, Available, tells whether it really works).
func lookupInterface(name string) (*net.Interface, netip.Addr, error) {
	var ifi *net.Interface
	if name == "" {
		ifs, err := net.Interfaces()
		if err != nil {
			return nil, netip.Addr{}, fmt.Errorf("%w: listing interfaces: %v", ErrInterface, err)
		}
		for i := range ifs {
			if ifs[i].Flags&net.FlagLoopback != 0 && ifs[i].Flags&net.FlagUp != 0 {
				ifi = &ifs[i]
				break
			}
		}
		if ifi == nil {
			return nil, netip.Addr{}, fmt.Errorf("%w: no loopback interface is up", ErrInterface)
		}
	} else {
		var err error
		if ifi, err = net.InterfaceByName(name); err != nil {
			return nil, netip.Addr{}, fmt.Errorf("%w: %q: %v", ErrInterface, name, err)
		}
	}
	if ifi.Flags&net.FlagUp == 0 {
		return nil, netip.Addr{}, fmt.Errorf("%w: %s is down", ErrInterface, ifi.Name)
	}
	if ifi.Flags&(net.FlagMulticast|net.FlagLoopback) == 0 {
		return nil, netip.Addr{}, fmt.Errorf("%w: %s (flags %v)", ErrNoMulticast, ifi.Name, ifi.Flags)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("%w: %s: addresses: %v", ErrInterface, ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() {
				return ifi, ip.Unmap(), nil
			}
		}
	}
	return nil, netip.Addr{}, fmt.Errorf("%w: %s has no IPv4 address", ErrInterface, ifi.Name)
}
