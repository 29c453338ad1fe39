package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary a child process of the tests below: its
// value says what the child does.
const childEnv = "PROC_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(childEnv); ok {
		os.Exit(child(mode))
	}
	os.Exit(m.Run())
}

func child(mode string) int {
	switch mode {
	case "banner": // the banner, then wait for SIGINT (exit 0) or stdin EOF (exit 3)
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT)
		fmt.Fprint(os.Stderr, "starting\n")
		fmt.Print("child" + Banner)
		eof := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(eof) }()
		select {
		case <-sigs:
			return 0
		case <-eof:
			return 3
		}
	case "ignore": // ignores SIGTERM
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring")
		time.Sleep(time.Minute)
		return 0
	case "ready": // serves /readyz on the address in READY_ADDR
		ln, err := net.Listen("tcp", os.Getenv("READY_ADDR"))
		if err != nil {
			return 1
		}
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		return 1
	case "lines":
		fmt.Print("one\ntwo\nthree")
		return 5
	}
	return 2
}

func start(t *testing.T, s Spec) *Process {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s.Path = self
	p, err := Start(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestBannerSignalsAndExit(t *testing.T) {
	p := start(t, Spec{Name: "c", Env: []string{childEnv + "=banner"}, Pdeathsig: syscall.SIGKILL, StdinPipe: true})
	if err := p.WaitBanner(ctxFor(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := p.Out.String(); got != "starting\nchild"+Banner {
		t.Errorf("Out = %q", got)
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctxFor(t, 100*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait on a running process = %v, want the deadline", err)
	}
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(syscall.SIGINT, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Err() != nil || !p.State().Success() {
		t.Errorf("after SIGINT: %v, %v; want exit status 0", p.Err(), p.State())
	}
	if err := p.Signal(syscall.SIGINT); !errors.Is(err, ErrExited) {
		t.Errorf("Signal after the exit = %v, want ErrExited", err)
	}
}

func TestStdinPipe(t *testing.T) {
	p := start(t, Spec{Env: []string{childEnv + "=banner"}, StdinPipe: true})
	if err := p.WaitBanner(ctxFor(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	p.Stdin().Close()
	if err := p.Wait(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if code := p.State().ExitCode(); code != 3 {
		t.Errorf("exit code %d after stdin EOF, want 3", code)
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	p := start(t, Spec{Env: []string{childEnv + "=ignore"}, Setpgid: true})
	if err := p.WaitOutput(ctxFor(t, 20*time.Second), "ignoring\n"); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := p.Stop(syscall.SIGTERM, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 200*time.Millisecond {
		t.Errorf("stopped after %v, before the grace", took)
	}
	if ws := p.State().Sys().(syscall.WaitStatus); ws.Signal() != syscall.SIGKILL {
		t.Errorf("ended by %v, want SIGKILL", p.State())
	}
}

func TestWaitOutputExited(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	lw := NewLineWriter(func(l []byte) { mu.Lock(); lines = append(lines, string(l)); mu.Unlock() })
	p := start(t, Spec{Env: []string{childEnv + "=lines"}, Stdout: lw, Keep: 4})
	if err := p.WaitOutput(ctxFor(t, 20*time.Second), "four"); !errors.Is(err, ErrExited) {
		t.Errorf("WaitOutput of what never comes = %v, want ErrExited", err)
	}
	lw.Flush()
	if got := strings.Join(lines, ","); got != "one,two,three" {
		t.Errorf("lines %q", got)
	}
	if got := p.Out.String(); got != "hree" {
		t.Errorf("Out keeps %q, want the last 4 bytes", got)
	}
	if p.State().ExitCode() != 5 || p.Err() == nil {
		t.Errorf("exit %v", p.Err())
	}
}

func TestWaitReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := start(t, Spec{Env: []string{childEnv + "=ready", "READY_ADDR=" + addr}})
	if err := p.WaitReady(ctxFor(t, 20*time.Second), addr); err != nil {
		t.Fatal(err)
	}
	p.Kill()
	if err := p.WaitReady(ctxFor(t, 20*time.Second), addr); !errors.Is(err, ErrExited) {
		t.Errorf("WaitReady after the kill = %v, want ErrExited", err)
	}
}

func TestWrapAndSpawner(t *testing.T) {
	env, err := os.Stat("/usr/bin/env")
	if err != nil || env.IsDir() {
		t.Skip("no /usr/bin/env to wrap with")
	}
	sp := NewSpawner()
	p := start(t, Spec{Wrap: []string{"/usr/bin/env", childEnv + "=banner"}, Spawner: sp, Pdeathsig: syscall.SIGTERM, Setpgid: true, Dir: os.TempDir(), StdinPipe: true})
	defer sp.Close()
	defer p.Kill()
	if err := p.WaitBanner(ctxFor(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.CommandLine(), "/usr/bin/env "+childEnv+"=banner ") {
		t.Errorf("command line %q", p.CommandLine())
	}
	if err := p.Stop(syscall.SIGINT, 10*time.Second); err != nil || !p.State().Success() {
		t.Errorf("stop: %v, %v", err, p.State())
	}
}

func TestBuffer(t *testing.T) {
	all, tail, none := &Buffer{}, &Buffer{Max: 3}, &Buffer{Max: -1}
	for _, b := range []*Buffer{all, tail, none} {
		b.Write([]byte("abcd"))
		b.Write([]byte("ef"))
	}
	if all.String() != "abcdef" || all.Tail(2) != "ef" || all.Tail(10) != "abcdef" {
		t.Errorf("unbounded: %q", all)
	}
	if tail.String() != "def" {
		t.Errorf("Max 3 keeps %q, want def", tail)
	}
	if none.String() != "" {
		t.Errorf("Max -1 keeps %q, want nothing", none)
	}
}
