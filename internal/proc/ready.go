package proc

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Banner ends the start-up banner that tokend writes, in one write, once
// it serves ("tokend 0.1.0 (all-in-one) is up\n").
const Banner = " is up\n"

// pollEvery is how often the waits look again.
const pollEvery = 20 * time.Millisecond

// WaitOutput waits until the process's Out contains s. It returns an error
// wrapping ErrExited if the process exits without having written it, or
// the context's error. With Spec.Keep, s must still be in the kept tail.
func (p *Process) WaitOutput(ctx context.Context, s string) error {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		if strings.Contains(p.Out.String(), s) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Out.String(), s) {
				return nil
			}
			return fmt.Errorf("%w: %s (%v) without writing %q", ErrExited, p.Name, p.cmd.ProcessState, s)
		case <-ctx.Done():
			return fmt.Errorf("proc: %s: no %q: %w", p.Name, s, ctx.Err())
		case <-t.C:
		}
	}
}

// WaitBanner waits until the process has written tokend's Banner.
func (p *Process) WaitBanner(ctx context.Context) error { return p.WaitOutput(ctx, Banner) }

// WaitReady polls http://httpAddr/readyz until it answers 200. It returns
// an error wrapping ErrExited if the process exits first, or the context's
// error.
func (p *Process) WaitReady(ctx context.Context, httpAddr string) error {
	client := &http.Client{Timeout: time.Second}
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	url := "http://" + httpAddr + "/readyz"
	for {
		if p.Exited() {
			return fmt.Errorf("%w: %s (%v) before %s answered 200", ErrExited, p.Name, p.cmd.ProcessState, url)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("proc: %w", err)
		}
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			return fmt.Errorf("proc: %s: %s not 200: %w", p.Name, url, ctx.Err())
		case <-t.C:
		}
	}
}
