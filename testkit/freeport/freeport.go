// Package freeport hands out loopback ports for tests that must name a port
// before whatever listens on it starts: a tokend process given --http-addr,
// an embedded etcd member given its URLs.
//
// Asking the kernel for port 0 and closing the socket is not enough: the
// port is then in Linux's ephemeral range, and any outgoing connection of
// any process (an etcd client, another test package run in parallel by
// go test) may take it before the process we start binds it. So the ports
// come from below the ephemeral range (read from
// /proc/sys/net/ipv4/ip_local_port_range), where the kernel never picks
// one, and each is reserved across the processes of a test run by a
// byte-range lock on one shared file (offset = port), which the kernel
// drops when the process that holds it exits. A port is handed out at most
// once per process, and only if it is free for both TCP and UDP at that
// moment.
package freeport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// lowest is the lowest port handed out: below it live the well-known
// services a developer's machine may run.
const lowest = 10000

var (
	mu     sync.Mutex
	given  = map[int]bool{} // ports handed out by this process
	lock   *os.File         // the shared lock file, opened once
	lockFn = filepath.Join(os.TempDir(), "tokend-test-ports.lock")
)

// Port returns a loopback port free for both TCP and UDP, not handed out
// before by this process nor, while it lives, by another one.
func Port() (int, error) { return Range(1) }

// Range returns the first of n consecutive ports as Port describes.
func Range(n int) (int, error) {
	if n < 1 || n > 100 {
		return 0, fmt.Errorf("freeport: %d ports asked for, want 1 to 100", n)
	}
	lo, hi := span()
	if hi-lo < 10*n {
		return 0, fmt.Errorf("freeport: no port range outside the ephemeral one (ip_local_port_range leaves %d..%d)", lo, hi)
	}
	mu.Lock()
	defer mu.Unlock()
	if lock == nil {
		f, err := os.OpenFile(lockFn, os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			return 0, fmt.Errorf("freeport: %w", err)
		}
		lock = f
	}
	for range 1000 {
		base := lo + rand.IntN(hi-lo-n+1)
		if givenAny(base, n) || !reserve(base, n) {
			continue
		}
		if !bindable(base, n) {
			// Taken by something outside this scheme; keep it
			// reserved so that no one tries it again.
			for p := base; p < base+n; p++ {
				given[p] = true
			}
			continue
		}
		for p := base; p < base+n; p++ {
			given[p] = true
		}
		return base, nil
	}
	return 0, errors.New("freeport: no free port found in 1000 tries")
}

func givenAny(base, n int) bool {
	for p := base; p < base+n; p++ {
		if given[p] {
			return true
		}
	}
	return false
}

// reserve takes the write lock on bytes [base, base+n) of the shared file
// without waiting; false if another process holds any of them.
func reserve(base, n int) bool {
	err := syscall.FcntlFlock(lock.Fd(), syscall.F_SETLK, &syscall.Flock_t{
		Type: syscall.F_WRLCK, Whence: 0, Start: int64(base), Len: int64(n),
	})
	return err == nil
}

func bindable(base, n int) bool {
	var held []interface{ Close() error }
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for p := base; p < base+n; p++ {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			return false
		}
		held = append(held, l)
		u, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return false
		}
		held = append(held, u)
	}
	return true
}

// span is [lo, hi): the ports below the ephemeral range, or above it when
// the range starts too low to leave room below.
func span() (lo, hi int) {
	elo, ehi := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			a, err1 := strconv.Atoi(f[0])
			b, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && a <= b {
				elo, ehi = a, b
			}
		}
	}
	if elo-lowest >= 2000 {
		return lowest, elo
	}
	return ehi + 1, 65536
}
