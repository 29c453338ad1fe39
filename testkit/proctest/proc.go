package proctest

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/proc"
)

// Proc is a process a test started with Start. Its methods shadow those of
// proc.Process that can fail: these fail the test instead of returning an
// error.
type Proc struct {
	*proc.Process
	t testing.TB
}

// Start starts s for the test. Unless s says otherwise the kernel kills
// the process with SIGKILL should the test binary die (Linux). t.Cleanup
// kills it by PID if it still runs, reaps it, and, if the test failed,
// logs the last of its output.
func Start(t testing.TB, s proc.Spec) *Proc {
	t.Helper()
	if s.Pdeathsig == 0 {
		s.Pdeathsig = syscall.SIGKILL
	}
	p, err := proc.Start(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("--- last output of %s (pid %d, %s):\n%s", p.Name, p.PID(), p.CommandLine(), p.Out)
		}
	})
	return &Proc{Process: p, t: t}
}

// Signal sends sig to the process by PID, failing the test if it cannot.
func (p *Proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// Kill sends SIGKILL by PID and waits until the process is reaped; the
// test fails (and goes on) if it is not within proc.ReapWait.
func (p *Proc) Kill() {
	p.t.Helper()
	if err := p.Process.Kill(); err != nil {
		p.t.Error(err)
	}
}

// Stop sends sig and waits for the exit, failing the test if it does not
// come within (cleanup kills the process then).
func (p *Proc) Stop(sig syscall.Signal, within time.Duration) {
	p.t.Helper()
	p.Signal(sig)
	p.WaitExit(within)
}

// WaitExit waits for the process to exit, failing the test if it does not
// within.
func (p *Proc) WaitExit(within time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := p.Wait(ctx); err != nil {
		p.t.Fatalf("%s did not exit within %v: %v", p.Name, within, err)
	}
}

// WaitReady waits until the process's /readyz at httpAddr answers 200,
// failing the test with its output if it exits first or within passes.
func (p *Proc) WaitReady(httpAddr string, within time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := p.Process.WaitReady(ctx, httpAddr); err != nil {
		p.t.Fatalf("%s: not ready within %v: %v\n%s", p.Name, within, err, p.Out)
	}
}

// WaitOutput waits until the process has written s, failing the test with
// its output if it exits first or within passes.
func (p *Proc) WaitOutput(s string, within time.Duration) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := p.Process.WaitOutput(ctx, s); err != nil {
		p.t.Fatalf("%s: %v\n%s", p.Name, err, p.Out)
	}
}

// WaitBanner waits until the process has written tokend's banner
// (proc.Banner).
func (p *Proc) WaitBanner(within time.Duration) {
	p.t.Helper()
	p.WaitOutput(proc.Banner, within)
}
