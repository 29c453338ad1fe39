package ctest

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Handles without a background thread (tokend.h, "EVENT LOOPS"): the
// asynchronous API driven by one thread's poll() loop (tests/evloop.c), and
// the example examples/eventloop.c.

// evloopScenarios are tests/evloop.c's scenarios; keepalive holds a grant
// for three session TTLs of the fake (2 s) on tokend_process alone; expire
// stops the loop for two.
var evloopScenarios = [][]string{
	{"many"}, {"queued"}, {"cancel"}, {"convert"}, {"close"}, {"badargs"},
	{"keepalive", "6000"}, {"expire", "2000"},
}

func runEvloop(t *testing.T, bin string, tg target, args []string) {
	t.Helper()
	out, err := runAt(t, 2*time.Minute, tg, bin, args...)
	if err != nil || !strings.Contains(out, "ok "+args[0]) {
		t.Fatalf("%s: %v\n%s", args[0], err, out)
	}
	t.Log(strings.TrimSpace(out))
}

func TestEventLoop(t *testing.T) {
	for _, san := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "asan"}[san]
		t.Run(name, func(t *testing.T) {
			if san && !sanitizers(t, findCC(t)) {
				t.Skip("no ASan/UBSan here")
			}
			bin := filepath.Join(buildC(t, san, "tokend-evloop"), "tokend-evloop")
			f := newFake(t, 2)
			f.logCounts(t)
			t.Run("scenarios", func(t *testing.T) {
				for _, args := range evloopScenarios {
					t.Run(args[0], func(t *testing.T) {
						t.Parallel()
						runEvloop(t, bin, f.at(0), args)
					})
				}
			})
			// The paths the scenarios are about were taken: grants
			// after a wait in a queue, CANCELs, keepalives.
			for _, what := range []string{"GRANT_ASYNC", "GRANT_ACK", "CANCEL", "KEEPALIVE", "REVOKE"} {
				if f.count(what) == 0 {
					t.Errorf("the workers saw no %s", what)
				}
			}
		})
	}
	t.Run("lossy", func(t *testing.T) {
		// 10 % of datagrams lost each way: retransmissions come from
		// tokend_timeout/tokend_process alone.
		bin := filepath.Join(buildC(t, false, "tokend-evloop"), "tokend-evloop")
		f := newFake(t, 2)
		f.SetLoss(0.1, 0.1)
		f.logCounts(t)
		for _, s := range []string{"many", "queued", "cancel", "convert"} {
			runEvloop(t, bin, f.at(0), []string{s})
		}
	})
	t.Run("valgrind", func(t *testing.T) {
		vg, err := exec.LookPath("valgrind")
		if err != nil {
			t.Skip("valgrind is not installed")
		}
		if testing.Short() {
			t.Skip("slow")
		}
		bin := filepath.Join(buildC(t, false, "tokend-evloop"), "tokend-evloop")
		f := newFake(t, 2)
		for _, s := range []string{"close", "cancel", "queued", "many", "convert", "badargs"} {
			out, err := run(t, 3*time.Minute, f.at(0).env(), vg, "-q", "--error-exitcode=99", "--leak-check=full",
				"--errors-for-leak-kinds=all", bin, f.at(0).addr, s)
			if err != nil || !strings.Contains(out, "ok "+s) {
				t.Fatalf("%s under valgrind: %v\n%s", s, err, out)
			}
		}
	})
}

// TestEventLoopExample runs examples/eventloop.c against a fake cluster.
func TestEventLoopExample(t *testing.T) {
	dir := buildC(t, false, "eventloop")
	f := newFake(t, 2)
	out, err := runAt(t, time.Minute, f.at(0), filepath.Join(dir, "eventloop"), "example/evloop", "16")
	if err != nil || !strings.Contains(out, "16 granted, 16 released") {
		t.Fatalf("eventloop: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
}

// TestEventLoopTokend runs the scenarios against a real all-in-one tokend.
func TestEventLoopTokend(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tokend")
	}
	bin := filepath.Join(buildC(t, false, "tokend-evloop"), "tokend-evloop")
	tg := startTokend(t)
	if !workerServesUDP(t, tg.addr) {
		t.Skip("worker does not serve UDP yet")
	}
	for _, s := range []string{"many", "queued", "cancel", "convert", "close", "badargs"} {
		t.Run(s, func(t *testing.T) { runEvloop(t, bin, tg, []string{s}) })
	}
}
