package announce

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
)

// probeGroup is the group Available sends to, on an ephemeral port.
var probeGroup = netip.MustParseAddr("239.255.84.75")

// Available reports whether multicast works on the interface named ifname
// ("" = the loopback interface, as in Config.Interface): it joins a group on
// that interface, sends a datagram to it with TTL 1 and loopback on, and
// waits up to about a second for it to come back. It returns nil if it did,
// and otherwise an error wrapping ErrUnavailable, ErrInterface or
// ErrNoMulticast that says why. Use it to skip tests, or to disable
// announcements with a warning, where multicast does not work (for example
// in a network namespace whose loopback interface is down).
//
// The datagram is not an announcement (listeners drop it as "magic") and
// goes to an ephemeral port, so it disturbs nobody.
func Available(ifname string) error {
	ifi, src, err := lookupInterface(ifname)
	if err != nil {
		return err
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("%w: %s: %s: %v", ErrUnavailable, ifi.Name, what, err)
	}
	group := net.IP(probeGroup.AsSlice())
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: group})
	if err != nil {
		return fail("listen", err)
	}
	defer rc.Close()
	r := ipv4.NewPacketConn(rc)
	if err := r.JoinGroup(ifi, &net.UDPAddr{IP: group}); err != nil {
		return fail("join", err)
	}
	defer r.LeaveGroup(ifi, &net.UDPAddr{IP: group})
	sc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)))
	if err != nil {
		return fail("sender socket", err)
	}
	defer sc.Close()
	s := ipv4.NewPacketConn(sc)
	if err := errors.Join(s.SetMulticastInterface(ifi), s.SetMulticastTTL(1), s.SetMulticastLoopback(true)); err != nil {
		return fail("sender options", err)
	}
	token := make([]byte, 16)
	rand.Read(token)
	dst := &net.UDPAddr{IP: group, Port: rc.LocalAddr().(*net.UDPAddr).Port}
	buf := make([]byte, 64)
	for range 4 {
		if _, err := s.WriteTo(token, nil, dst); err != nil {
			return fail("send", err)
		}
		deadline := time.Now().Add(250 * time.Millisecond)
		r.SetReadDeadline(deadline)
		for {
			n, _, _, err := r.ReadFrom(buf)
			if err != nil {
				break // timed out: send again
			}
			if bytes.Equal(buf[:n], token) {
				return nil
			}
		}
	}
	return fail("receive", errors.New("the datagram sent to the group did not come back within 1s"))
}
