// Package mcast sends test datagrams to an IP multicast group on the
// loopback interface, where the announcement tests (Go and C clients)
// listen; tests use it to play forged or replayed announcements.
package mcast

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/announce"
)

// Sender returns a function that multicasts a datagram to group
// ("239.x.y.z:port") on the loopback interface, with TTL 1 and loopback
// delivery on. Its socket closes when the test ends.
func Sender(t testing.TB, group string) func(b []byte) {
	t.Helper()
	g, err := announce.ParseGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	var lo *net.Interface
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback != 0 && ifs[i].Flags&net.FlagUp != 0 {
			lo = &ifs[i]
			break
		}
	}
	if lo == nil {
		t.Fatal("no loopback interface")
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := ipv4.NewPacketConn(c)
	if err := errors.Join(p.SetMulticastInterface(lo), p.SetMulticastTTL(1), p.SetMulticastLoopback(true)); err != nil {
		t.Fatal(err)
	}
	to := net.UDPAddrFromAddrPort(g)
	return func(b []byte) { p.WriteTo(b, nil, to) }
}
