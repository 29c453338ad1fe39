package clientlib

import (
	"testing"
	"time"

	"github.com/tokend/tokend/internal/clock"
)

// SetClock makes the Client dialed with cfg run its timers, and tell the
// time unless cfg.Now is set, on clk: a test passes a testkit/fakeclock and
// moves time by hand. The clock stays out of the public Config because its
// type is internal.
func SetClock(cfg *Config, clk clock.Clock) { cfg.clock = clk }

// withClock returns cfg with SetClock(clk) applied.
func withClock(cfg Config, clk clock.Clock) Config {
	SetClock(&cfg, clk)
	return cfg
}

// Eventually and Always are eventually and always for the external tests.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	eventually(t, d, what, cond)
}

func Always(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	always(t, d, what, cond)
}

// SetPollEvery sets how often the Client dialed with cfg re-polls a
// QUEUED request (default 500 ms): a test that wants to see what arrives
// without a re-poll sets it to an hour.
func SetPollEvery(cfg *Config, d time.Duration) { cfg.pollEvery = d }

// SetAckHold sets how long the Client dialed with cfg holds a REVOKE_ACK
// or GRANT_ACK for a worker that takes bundles, waiting for a request to
// send it with (default 2 ms): a test that wants to see which datagram
// carried it sets it to an hour.
func SetAckHold(cfg *Config, d time.Duration) { cfg.ackHold = d }

// TakesBundles reports whether c knows a worker that takes BUNDLEs (its
// session open was answered with the flag, or a BUNDLE_REPLY came).
func TakesBundles(c *Client) bool {
	m := c.bundlers.Load()
	return m != nil && len(*m) > 0
}
