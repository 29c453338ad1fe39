//go:build linux

// Package netns lets a test open sockets inside a Linux network namespace
// that `ip netns add` made, from the test's own process: a client library
// running in the test then talks from that namespace's address, as a
// client on another host would, while the test keeps it in reach (its
// history, its tokens, its goroutines).
//
// A socket belongs to the namespace it was created in for its whole life,
// whichever thread later reads or writes it. ListenPacket creates it on a
// thread of its own that it moves into the namespace and never moves back:
// the goroutine ends still locked to that thread, so the runtime discards
// the thread instead of reusing it elsewhere.
package netns

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dir is where `ip netns add NAME` puts the namespace's handle.
const Dir = "/var/run/netns"

// ListenPacket is net.ListenPacket(network, addr) run inside the named
// network namespace.
func ListenPacket(ns, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := in(ns, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial is net.Dial(network, addr) run inside the named network namespace.
func Dial(ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := in(ns, func() error {
		var err error
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// in runs f on a fresh OS thread inside namespace ns; the thread is
// discarded afterwards.
func in(ns string, f func() error) error {
	fd, err := os.Open(filepath.Join(Dir, ns))
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	defer fd.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread leaves the host's namespace, so it
		// must die with this goroutine.
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- fmt.Errorf("netns: unshare: %w", err)
			return
		}
		if err := unix.Setns(int(fd.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("netns: setns %s: %w", ns, err)
			return
		}
		done <- f()
	}()
	return <-done
}
