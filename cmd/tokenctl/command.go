package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/clientlib"
)

// minStartValidity is the least validity a grant must have left for the
// command to be started; below it tokenctl waits for the next renewal.
const minStartValidity = 50 * time.Millisecond

// The environment a command run under a token gets.
const (
	envToken      = "TOKEND_TOKEN"
	envFence      = "TOKEND_FENCE"
	envValidUntil = "TOKEND_VALID_UNTIL_MS"
)

// waitValid waits until tok is valid with at least min left. A grant in
// jeopardy is waited on until it is renewed, reclaimed or lost (at most
// the grace period); a lost one is an exitLost error.
func waitValid(tok *clientlib.Token, min time.Duration, what string) error {
	for {
		if time.Until(tok.ValidUntil()) >= min {
			return nil
		}
		select {
		case <-tok.Lost():
			return exitError_{exitLost, fmt.Sprintf("%s (fence %d) was lost before %s: %v", tok.Name(), tok.Fence(), what, tok.Err())}
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// runUnder runs argv while tok is valid, like flock(1): see the acquire
// usage text for the promises. It returns nil or an exitError_ carrying
// the command's status (no message) or exitLost (with one).
//
// The command is stopped when the grant's validity runs out (jeopardy), not
// when the library declares it lost: no other client can be granted the
// token before the old owner's vouching ended and the new owner's grace
// period passed, and jeopardy starts no later than that vouching ends, so a
// command has the grace period to stop; loss is declared only a margin
// before another grant is possible.
func runUnder(tok *clientlib.Token, argv []string, killGrace time.Duration, foreground bool,
	sigs <-chan os.Signal, stdout, stderr io.Writer) error {
	if err := waitValid(tok, minStartValidity, "the command started; not started"); err != nil {
		return err
	}
	validUntil := tok.ValidUntil()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = commandEnv(os.Environ(), tok.Name(), tok.Fence(), validUntil)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: !foreground}
	if err := cmd.Start(); err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		return exitError_{code, fmt.Sprintf("%s: %v", argv[0], err)}
	}
	pid := cmd.Process.Pid
	target := -pid // its process group: what it started goes too
	if foreground {
		target = pid
	}
	kill := func(sig syscall.Signal) { syscall.Kill(target, sig) }
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	// Checked right after the start: a loss that raced with it is seen here.
	lost := tok.Lost()
	check := time.NewTimer(time.Until(tok.ValidUntil()))
	defer check.Stop()
	var killAt <-chan time.Time
	stopping, killed := false, false
	reason := ""
	var waitErr error
watch:
	for {
		select {
		case waitErr = <-exited:
			break watch
		case <-lost:
			lost = nil
			if !killed {
				kill(syscall.SIGKILL)
				stopping, killed = true, true
				reason = fmt.Sprintf("lost (%v): the command was killed (SIGKILL)", tok.Err())
			}
		case <-check.C:
			if left := time.Until(tok.ValidUntil()); left > 0 {
				check.Reset(left) // renewed meanwhile
				continue
			}
			if stopping {
				continue
			}
			stopping = true
			const why = "validity ran out (not renewed: the worker failed or cannot be reached): the command was "
			if killGrace <= 0 {
				kill(syscall.SIGKILL)
				killed = true
				reason = why + "killed (SIGKILL)"
			} else {
				kill(syscall.SIGTERM)
				killAt = time.After(killGrace)
				reason = why + "stopped (SIGTERM)"
			}
		case <-killAt:
			if !killed {
				kill(syscall.SIGKILL)
				killed = true
				reason += fmt.Sprintf(", then killed (SIGKILL after the %v kill grace)", killGrace)
			}
		case s := <-sigs:
			sig := s.(syscall.Signal)
			if foreground && (sig == syscall.SIGINT || sig == syscall.SIGQUIT) {
				continue // the terminal sent it to the command too
			}
			kill(sig)
		}
	}
	if stopping {
		if !foreground {
			syscall.Kill(-pid, syscall.SIGKILL) // whatever is left of its process group
		}
		// Said now, not after the release (which may wait for a dead worker).
		fmt.Fprintf(stderr, "tokenctl: %s (fence %d) %s\n", tok.Name(), tok.Fence(), reason)
		return exitError_{exitLost, ""}
	}
	select {
	case <-lost:
		// Lost as the command ended: it may have been cut short.
		return exitError_{exitLost, fmt.Sprintf("%s (fence %d) lost (%v) as the command ended", tok.Name(), tok.Fence(), tok.Err())}
	default:
	}
	var ee *exec.ExitError
	switch {
	case waitErr == nil:
		return nil
	case errors.As(waitErr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitError_{128 + int(ws.Signal()), ""}
		}
		return exitError_{ee.ExitCode(), ""}
	}
	return fmt.Errorf("waiting for %s: %w", argv[0], waitErr)
}

// commandEnv is env without any TOKEND_TOKEN, TOKEND_FENCE and
// TOKEND_VALID_UNTIL_MS, plus this grant's.
func commandEnv(env []string, name string, fence uint64, validUntil time.Time) []string {
	out := make([]string, 0, len(env)+3)
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if k == envToken || k == envFence || k == envValidUntil {
			continue
		}
		out = append(out, e)
	}
	return append(out,
		envToken+"="+name,
		envFence+"="+strconv.FormatUint(fence, 10),
		envValidUntil+"="+strconv.FormatInt(validUntil.UnixMilli(), 10))
}

// commandSignals catches what a command running under a token should get
// instead of tokenctl; stop undoes it.
func commandSignals() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 4) // a burst of distinct signals; more would repeat
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	return ch, func() { signal.Stop(ch) }
}

// releaseCtx bounds the release at the end of a hold.
func releaseCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}
