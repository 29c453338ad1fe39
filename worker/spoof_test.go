package worker

import (
	"encoding/binary"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
)

// rawSender sends UDP datagrams with any IPv4 source address (a raw
// socket with IP_HDRINCL): what an attacker on the path, or one whose
// network does not filter source addresses, can send. Tests using it skip
// without CAP_NET_RAW.
type rawSender struct{ fd int }

func newRawSender(t *testing.T) *rawSender {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
		t.Skipf("raw sockets need CAP_NET_RAW: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return &rawSender{fd: fd}
}

// send sends payload from src to dst (both IPv4), UDP checksum 0 (none).
func (r *rawSender) send(t *testing.T, src, dst *net.UDPAddr, payload []byte) {
	t.Helper()
	b := make([]byte, 20+8+len(payload))
	b[0] = 0x45 // IPv4, 5 words
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64 // TTL
	b[9] = syscall.IPPROTO_UDP
	copy(b[12:16], src.IP.To4())
	copy(b[16:20], dst.IP.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[10:], ^uint16(sum))
	u := b[20:]
	binary.BigEndian.PutUint16(u[0:], uint16(src.Port))
	binary.BigEndian.PutUint16(u[2:], uint16(dst.Port))
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	copy(u[8:], payload)
	to := &syscall.SockaddrInet4{}
	copy(to.Addr[:], dst.IP.To4())
	if err := syscall.Sendto(r.fd, b, 0, to); err != nil {
		t.Fatal(err)
	}
}

// localAddr is a test client's socket address.
func (c *tclient) localAddr() *net.UDPAddr {
	return c.conn.(*net.UDPConn).LocalAddr().(*net.UDPAddr)
}

// TestAttackSpoofedRelease: a RELEASE sent from the victim's own address
// and port (spoofed) without the session key is dropped and counted; the
// grant stays.
func TestAttackSpoofedRelease(t *testing.T) {
	raw := newRawSender(t)
	f := newAuthFixture(t, Limits{})
	victim, other := udpClient(t, f.w), udpClient(t, f.w)
	victim.openAuth("alice", f.alice, 0)
	other.openAuth("alice", f.alice, 0)
	g := victim.acquire("x", wire.EX, true, 0)
	wantStatus(t, g, wire.StatusOK)
	fence := g.grant(t).Fence
	bad0 := f.failures("bad_tag")
	raw.send(t, victim.localAddr(), f.w.Addr(), forge(t, wire.Release{Fence: fence, Name: []byte("x")},
		wire.Header{Session: victim.session, Request: 1 << 30, Ack: 1, Shard: victim.shard("x"), Epoch: 1}))
	waitFor(t, "spoofed RELEASE counted", func() bool { return f.failures("bad_tag") == bad0+1 })
	if r := other.acquire("x", wire.EX, true, 0); r.h.Status == wire.StatusOK {
		t.Fatal("a spoofed RELEASE released the victim's grant")
	}
	victim.quiet(100*time.Millisecond, "spoofed RELEASE")
}

// TestAttackSpoofedOpen: a SESSION_OPEN from a spoofed source gets its
// COOKIE sent to that source, not to the attacker; an open with a cookie
// minted for another address (the attacker's own, with a valid key) is
// dropped as bad_cookie. Neither writes to etcd.
func TestAttackSpoofedOpen(t *testing.T) {
	raw := newRawSender(t)
	f := newAuthFixture(t, Limits{})
	victim, attacker := udpClient(t, f.w), udpClient(t, f.w)
	leases0, _ := etcdWrites(t, f.cli)

	m, h := openMsg("alice", 0)
	p, err := m.Append(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	raw.send(t, victim.localAddr(), f.w.Addr(), p)
	if r, ok := victim.event(5*time.Second, isType(wire.TypeSessionOpenReply)); !ok || r.h.Status != wire.StatusCookie {
		t.Fatalf("the spoofed source got %v, want a COOKIE", r)
	}

	m, h = openMsg("alice", 0)
	m.Cookie = attacker.cookie(m, h)
	bad0 := f.failures("bad_cookie")
	raw.send(t, victim.localAddr(), f.w.Addr(), sealOpen(t, m, h, f.alice))
	waitFor(t, "spoofed open counted", func() bool { return f.failures("bad_cookie") == bad0+1 })
	victim.quiet(100*time.Millisecond, "spoofed open with a cookie for another address")
	if l, s := etcdWrites(t, f.cli); l != leases0 || s != 0 {
		t.Fatalf("spoofed opens made %d leases, %d sessions", l-leases0, s)
	}
}
