//go:build linux

// Package netns lets a test open sockets inside a Linux network namespace
// that `ip netns add` made, from the test's own process: a client library
// running in the test then talks from that namespace's address, as a
// client on another host would, while the test keeps it in reach (its
// history, its tokens, its goroutines).
//
// A socket belongs to the namespace it was created in for its whole life,
// whichever thread later reads or writes it. ListenPacket creates it on a
// locked thread that it moves into the namespace and then back to the one
// it came from. The thread must survive: a child process started with a
// parent-death signal (proctest.Start does that) is killed when the
// thread that forked it ends, and the runtime ends a thread whose locked
// goroutine exits, which would be any thread, including one that forked a
// tokend. Only if the way back fails is the thread left to die.
package netns

import (
	"errors"
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

// in runs f on a locked OS thread inside namespace ns, then moves the
// thread back.
func in(ns string, f func() error) error {
	target, err := os.Open(filepath.Join(Dir, ns))
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	defer target.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns: %w", err)
			return
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("netns: setns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread dies with this goroutine rather
			// than serve others from the wrong namespace.
			done <- errors.Join(ferr, fmt.Errorf("netns: back from %s: %w", ns, err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
