//go:build linux

package announce

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestNetns runs in a fresh network namespace (unshare -n, so root only):
// there the loopback interface starts down and Available says so; once it
// is up, announcements go around on it like on the host's.
func TestNetns(t *testing.T) {
	if os.Getenv("ANNOUNCE_NETNS_CHILD") == "1" {
		netnsChild(t)
		return
	}
	if testing.Short() {
		t.Skip("short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for unshare -n")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip")
	}
	if err := exec.Command(unshare, "-n", "true").Run(); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, "-n", os.Args[0], "-test.run=^TestNetns$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "ANNOUNCE_NETNS_CHILD=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNetns") {
		t.Fatalf("child failed: %v", err)
	}
}

func netnsChild(t *testing.T) {
	if err := Available(""); !errors.Is(err, ErrInterface) {
		t.Fatalf("Available with lo down = %v, want ErrInterface", err)
	} else {
		t.Logf("lo down: %v", err)
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	if err := Available(""); err != nil {
		t.Fatalf("Available with lo up: %v", err)
	}
	cfg := testConfig(t)
	cfg.Group = DefaultGroup // alone in this namespace: the default is safe
	c := newCollector()
	l := listen(t, cfg, c.on)
	s := sender(t, cfg, "127.0.0.1:7700", "ns")
	s.SetMapVersion(9)
	c.next(t, "version 9", func(ev Event) bool { return ev.Ann.MapVersion == 9 })
	if ps := l.Workers(); len(ps) != 1 {
		t.Fatalf("Workers = %+v", ps)
	}
}
