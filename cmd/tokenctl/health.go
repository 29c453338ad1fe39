package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// defaultHealthURL is the local daemon's readiness endpoint with tokend's
// default --http-addr port: what a container health check asks.
const defaultHealthURL = "http://127.0.0.1:7780/readyz"

// cmdHealth asks a tokend's HTTP endpoint whether it is ready (or alive,
// with /healthz) and succeeds only on 200 OK. It exists for images without
// curl or wget (the deploy image is FROM scratch): Docker and compose run
// it as the container's health check.
func cmdHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("health", stderr, "health [flags] [URL or HOST:PORT]  (default "+defaultHealthURL+")")
	timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the answer")
	quiet := fs.Bool("q", false, "print nothing; the exit status says it (0 ready, 1 not)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageErr("health: want at most one URL, got %d arguments", fs.NArg())
	}
	if *timeout <= 0 {
		return usageErr("health: --timeout must be positive, got %v", *timeout)
	}
	u := healthURL(envOr("TOKENCTL_HEALTH_URL", defaultHealthURL))
	if fs.NArg() == 1 {
		u = healthURL(fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return usageErr("health: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health %s: %s: %s", u, resp.Status, msg)
	}
	if !*quiet {
		fmt.Fprintf(stdout, "%s: %s\n", u, msg)
	}
	return nil
}

// healthURL turns "host:port" into its /readyz URL; a URL stays as it is.
func healthURL(s string) string {
	if strings.Contains(s, "://") {
		return s
	}
	return "http://" + s + "/readyz"
}
