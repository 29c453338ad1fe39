//go:build linux

package netns

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// TestListenPacketInNamespace makes two namespaces joined by a veth pair
// and checks that a socket opened in one with ListenPacket sends from its
// address and reaches the other, while the test's own namespace is left
// as it was.
func TestListenPacketInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command")
	}
	a, b := fmt.Sprintf("tknsa%d", os.Getpid()), fmt.Sprintf("tknsb%d", os.Getpid())
	for _, ns := range []string{a, b} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Skipf("cannot create a network namespace: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	ipCmd(t, "link", "add", "v0", "netns", a, "type", "veth", "peer", "name", "v1", "netns", b)
	ipCmd(t, "-n", a, "addr", "add", "10.78.0.1/24", "dev", "v0")
	ipCmd(t, "-n", b, "addr", "add", "10.78.0.2/24", "dev", "v1")
	ipCmd(t, "-n", a, "link", "set", "v0", "up")
	ipCmd(t, "-n", b, "link", "set", "v1", "up")

	srv, err := ListenPacket(b, "udp4", "10.78.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := ListenPacket(a, "udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.WriteTo([]byte("ping"), srv.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, from, err := srv.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if ip := from.(*net.UDPAddr).IP.String(); ip != "10.78.0.1" {
		t.Fatalf("the datagram came from %s, want namespace %s's 10.78.0.1", ip, a)
	}
	// The test's own namespace has no 10.78.0.2: a socket there cannot bind it.
	if c, err := net.ListenPacket("udp4", "10.78.0.2:0"); err == nil {
		c.Close()
		t.Fatal("10.78.0.2 is bindable in the test's own namespace: a thread leaked into the other namespace?")
	}
	if _, err := ListenPacket("tkns-no-such-namespace", "udp4", ":0"); err == nil {
		t.Fatal("no error for a namespace that does not exist")
	}
}
