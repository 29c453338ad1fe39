// Package proc starts and manages child processes: the one process harness
// that "tokend up", the bench and the real-process test suites (through
// testkit/proctest) share. A Process is started from a Spec (path,
// arguments, environment, directory, an optional wrapper such as
// "ip netns exec NAME"), keeps the tail of its output, is signalled and
// killed only by its own PID (or process group), and is reaped by a
// goroutine of its own. Ready means the start-up banner (Banner) on its
// output, or 200 from its /readyz; balanced means the delegation map gives
// every shard to a live worker and each named worker some shards (View).
//
// It does not import package testing: tests wrap it in testkit/proctest.
package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Errors of the package; test them with errors.Is.
var (
	// ErrExited: the process has exited (and been reaped), so it cannot be
	// signalled, or will not become ready.
	ErrExited = errors.New("proc: process exited")
	// ErrNotReaped: the process was not reaped within ReapWait of SIGKILL.
	ErrNotReaped = errors.New("proc: process not reaped after SIGKILL")
)

// ReapWait is how long Kill waits for the process to be reaped after
// SIGKILL before it gives up with ErrNotReaped.
const ReapWait = 10 * time.Second

// Spec says what to start and how.
type Spec struct {
	Name string   // for messages; default the base name of Path
	Path string   // the program
	Args []string // its arguments, without the program's name
	// Env is added to this process's environment (a later entry for a
	// variable wins).
	Env []string
	Dir string // working directory; "" is this process's
	// Wrap, if set, is a command that runs Path: the process started is
	// Wrap[0] with Wrap[1:], Path and Args as its arguments (e.g. "ip",
	// "netns", "exec", NAME). The wrapper must exec Path in its own
	// process, so that the PID is Path's.
	Wrap []string

	// Stdout and Stderr, when set, also get the process's output; either
	// way it is kept in the Process's Out. If both are the same writer,
	// the process gets one pipe for both, which keeps them in order.
	Stdout, Stderr io.Writer
	// StdinPipe gives the process a pipe as standard input (Process.Stdin);
	// otherwise it reads from the null device.
	StdinPipe bool
	// Keep bounds Out to the last Keep bytes of output; 0 keeps all, and
	// a negative Keep nothing (for a long-lived process whose output goes
	// to Stdout and Stderr).
	Keep int

	// Setpgid puts the process in a process group of its own: a terminal's
	// Ctrl-C does not reach it, and Kill kills the whole group.
	Setpgid bool
	// Pdeathsig, on Linux, is the signal the kernel sends the process when
	// the thread that started it ends (see Spawner); 0 is none.
	Pdeathsig syscall.Signal
	// Spawner, if set, starts the process from its locked OS thread.
	Spawner *Spawner
	// WaitDelay bounds how long the reaper waits for the output copiers
	// after the process has exited (exec.Cmd.WaitDelay); 0 waits for them.
	WaitDelay time.Duration
}

// Process is a started process. Its methods may be called from any
// goroutine.
type Process struct {
	Name string
	Out  *Buffer // its standard output and error, as Spec.Keep says

	spec  Spec
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed once reaped; err is set before
	err   error
}

// Start starts the process described by s and a goroutine that reaps it.
func Start(s Spec) (*Process, error) {
	name := s.Name
	if name == "" {
		name = filepath.Base(s.Path)
	}
	argv := append(append(append([]string{}, s.Wrap...), s.Path), s.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	if len(s.Env) > 0 {
		cmd.Env = append(os.Environ(), s.Env...)
	}
	cmd.Dir = s.Dir
	cmd.SysProcAttr = sysProcAttr(s)
	cmd.WaitDelay = s.WaitDelay
	p := &Process{Name: name, Out: &Buffer{Max: s.Keep}, spec: s, cmd: cmd, done: make(chan struct{})}
	out := func(w io.Writer) io.Writer {
		if w == nil {
			return p.Out
		}
		return io.MultiWriter(p.Out, w)
	}
	cmd.Stdout = out(s.Stdout)
	if sameWriter(s.Stdout, s.Stderr) {
		cmd.Stderr = cmd.Stdout // one pipe, in order
	} else {
		cmd.Stderr = out(s.Stderr)
	}
	if s.StdinPipe {
		in, err := cmd.StdinPipe()
		if err != nil {
			return nil, fmt.Errorf("proc: %s: %w", name, err)
		}
		p.stdin = in
	}
	var err error
	if s.Spawner != nil {
		err = s.Spawner.start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		if p.stdin != nil {
			p.stdin.Close()
		}
		return nil, fmt.Errorf("proc: starting %s: %w", name, err)
	}
	go func() { // ends when the process has exited and its output is copied
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// sameWriter reports whether a and b are the same writer (or both nil),
// without panicking on writers of a type that cannot be compared.
func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}

// PID is the process's id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// CommandLine is what was started, for messages.
func (p *Process) CommandLine() string { return strings.Join(p.cmd.Args, " ") }

// Stdin is the write end of the process's standard input, if Spec.StdinPipe
// asked for one (else nil). It is closed once the process is reaped.
func (p *Process) Stdin() io.WriteCloser { return p.stdin }

// Done is closed once the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has been reaped.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process ended, as exec.Cmd.Wait says (nil: exit status
// 0); valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// State is the exit state once reaped, else nil.
func (p *Process) State() *os.ProcessState {
	if !p.Exited() {
		return nil
	}
	return p.cmd.ProcessState
}

// Signal sends sig to the process by its PID; once it has been reaped (its
// PID may be another process's by then) it sends nothing and returns
// ErrExited.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%w: %v to %s (pid %d)", ErrExited, sig, p.Name, p.PID())
	}
	if err := syscall.Kill(p.PID(), sig); err != nil {
		return fmt.Errorf("proc: %v to %s (pid %d): %w", sig, p.Name, p.PID(), err)
	}
	return nil
}

// Wait waits until the process has been reaped; it returns nil then, or
// the context's error (the process is left running).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("proc: %s (pid %d) still running: %w", p.Name, p.PID(), ctx.Err())
	}
}

// Kill sends SIGKILL (to the process group if Spec.Setpgid, else to the
// process; it works on a stopped process too) and waits until the process
// is reaped, at most ReapWait. It is a no-op on a reaped process.
func (p *Process) Kill() error {
	if p.Exited() {
		return nil
	}
	target := p.PID()
	if p.spec.Setpgid {
		target = -target // its group: the process and anything it started
	}
	syscall.Kill(target, syscall.SIGKILL) // an error means it is gone already
	t := time.NewTimer(ReapWait)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: %s (pid %d), %v", ErrNotReaped, p.Name, p.PID(), ReapWait)
	}
}

// Stop sends sig (unless 0), waits up to grace for the process to exit,
// then kills it (Kill). It returns once the process is reaped, or Kill's
// error.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	if sig != 0 {
		if err := p.Signal(sig); err != nil && !errors.Is(err, ErrExited) {
			return err
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.done:
			return nil
		case <-t.C:
		}
	}
	return p.Kill()
}
