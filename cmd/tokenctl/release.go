package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// cmdRelease ends the holders of NAME that "tokenctl acquire" started on
// this host: each one releases its grant (so a waiter gets it at once) and
// exits. A token lives in its holder's session, so only the holder can
// release it; this command asks the holders to.
func cmdRelease(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release", stderr, "release [flags] NAME")
	var c common
	c.register(fs, false, false)
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for the holders to release and exit")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErr("release: want exactly one token NAME, got %d arguments", fs.NArg())
	}
	name := fs.Arg(0)
	paths, _ := filepath.Glob(filepath.Join(holderDir(), holderPrefix(name)+"*.json"))
	var released []holding
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var h holding
		if json.Unmarshal(b, &h) != nil || h.Name != name || h.PID <= 0 {
			continue
		}
		if !isTokenctl(h.PID) {
			os.Remove(p) // a stale record: that holder is gone
			continue
		}
		if err := syscall.Kill(h.PID, syscall.SIGTERM); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				os.Remove(p)
				continue
			}
			return fmt.Errorf("signalling holder pid %d: %w", h.PID, err)
		}
		deadline := time.Now().Add(*wait)
		for isTokenctl(h.PID) {
			if time.Now().After(deadline) {
				return fmt.Errorf("holder pid %d of %s did not exit within %v", h.PID, name, *wait)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		released = append(released, h)
	}
	if len(released) == 0 {
		return exitError_{exitError, fmt.Sprintf("no holder of %q started by tokenctl acquire on this host", name)}
	}
	if c.output == "json" {
		return printJSON(stdout, released)
	}
	for _, h := range released {
		fmt.Fprintf(stdout, "released %s fence %d (holder pid %d)\n", h.Name, h.Fence, h.PID)
	}
	return nil
}

// isTokenctl reports whether pid is a live tokenctl process (and not a
// process that reused the number).
func isTokenctl(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	arg0, _, _ := strings.Cut(string(b), "\x00")
	base := filepath.Base(arg0)
	// State "Z" (zombie) counts as gone.
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return false
		}
	}
	return strings.Contains(base, "tokenctl")
}
