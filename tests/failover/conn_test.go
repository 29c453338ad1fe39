//go:build linux

package failover

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// tapConn is a client's UDP socket that the test can cut off (every
// datagram is then dropped, both ways: the client lives on but reaches no
// one, like a partitioned host) and tap (tap sees every datagram the
// client receives).
type tapConn struct {
	net.PacketConn
	cut atomic.Bool
	// dropOut, if set before the client uses the socket, drops the
	// datagrams it sends for which it returns true.
	dropOut func(b []byte) bool

	mu  sync.Mutex // guards tap
	tap func(b []byte, from net.Addr)
}

func newTapConn(t *testing.T) *tapConn {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &tapConn{PacketConn: pc}
}

func (c *tapConn) setTap(f func(b []byte, from net.Addr)) {
	c.mu.Lock()
	c.tap = f
	c.mu.Unlock()
}

func (c *tapConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.cut.Load() || (c.dropOut != nil && c.dropOut(b)) {
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

func (c *tapConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		n, from, err := c.PacketConn.ReadFrom(b)
		if err != nil {
			return n, from, err
		}
		if c.cut.Load() {
			continue
		}
		c.mu.Lock()
		tap := c.tap
		c.mu.Unlock()
		if tap != nil {
			tap(b[:n], from)
		}
		return n, from, nil
	}
}
