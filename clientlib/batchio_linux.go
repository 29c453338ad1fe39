//go:build linux

package clientlib

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tokend/tokend/wire"
)

// mmsgReader is the batchReader on Linux: recvmmsg into buffers, headers
// and source addresses allocated once, so a datagram received costs no
// allocation (x/net's ReadBatch allocates each source address).
type mmsgReader struct {
	rc    syscall.RawConn
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	addrs []unix.RawSockaddrInet6 // large enough for an IPv4 source too
	bufs  [][]byte

	recv  func(fd uintptr) bool // r.recvmmsg, bound once: a method value per read would allocate
	n     int
	errno syscall.Errno
}

func newBatchReader(bc batchConn, uc *net.UDPConn) batchReader {
	rc, err := uc.SyscallConn()
	if err != nil {
		return newXnetReader(bc)
	}
	r := &mmsgReader{rc: rc, hdrs: make([]unix.Mmsghdr, recvBatch), iovs: make([]unix.Iovec, recvBatch),
		addrs: make([]unix.RawSockaddrInet6, recvBatch), bufs: make([][]byte, recvBatch)}
	r.recv = r.recvmmsg
	for i := range r.hdrs {
		r.bufs[i] = make([]byte, wire.MaxDatagram+1) // +1: an oversized datagram is seen, not cut
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.addrs[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
	}
	return r
}

func (r *mmsgReader) read() (int, error) {
	for i := range r.hdrs {
		r.hdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		r.hdrs[i].Hdr.Flags = 0
		r.hdrs[i].Len = 0
	}
	r.n, r.errno = 0, 0
	if err := r.rc.Read(r.recv); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

// recvmmsg is the raw read: false asks the runtime to wait until the
// socket is readable (and to honour its deadline and Close).
func (r *mmsgReader) recvmmsg(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])),
		uintptr(len(r.hdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	r.n, r.errno = int(n), e
	return true
}

func (r *mmsgReader) datagram(i int) ([]byte, netip.AddrPort) {
	b := r.bufs[i][:r.hdrs[i].Len]
	sa := &r.addrs[i]
	switch sa.Family {
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return b, netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return b, netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return b, netip.AddrPort{}
}
