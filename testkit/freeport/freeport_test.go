package freeport

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// TestPortsAreFreshAndOutsideEphemeral: ports never repeat within a
// process, lie outside the kernel's ephemeral range, and can be bound.
func TestPortsAreFreshAndOutsideEphemeral(t *testing.T) {
	lo, hi := span()
	seen := map[int]bool{}
	for range 200 {
		p, err := Port()
		if err != nil {
			t.Fatal(err)
		}
		if p < lo || p >= hi {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	base, err := Range(5)
	if err != nil {
		t.Fatal(err)
	}
	for p := base; p < base+5; p++ {
		if seen[p] {
			t.Fatalf("range port %d handed out before", p)
		}
		l, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("range port %d not bindable: %v", p, err)
		}
		l.Close()
	}
	if _, err := Range(0); err == nil {
		t.Error("Range(0) gave no error")
	}
}

// TestReservedAcrossProcesses: a port this process holds cannot be
// reserved by another process (this test binary run again as a child).
func TestReservedAcrossProcesses(t *testing.T) {
	if s := os.Getenv("FREEPORT_CHILD"); s != "" {
		var held, other int
		if _, err := fmt.Sscan(s, &held, &other); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(lockFn, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		lock = f
		if reserve(held, 1) {
			os.Exit(3) // took what the parent holds
		}
		for q := other; q < other+20; q++ {
			if reserve(q, 1) {
				os.Exit(0)
			}
		}
		os.Exit(4) // refused ports nobody (or not everybody) holds
	}
	p, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	other := p + 1
	for given[other] {
		other++
	}
	mu.Unlock()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestReservedAcrossProcesses$")
	cmd.Env = append(os.Environ(), "FREEPORT_CHILD="+fmt.Sprint(p, " ", other))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child could reserve port %d the parent holds, or failed: %v\n%s", p, err, out)
	}
}
