package clientlib

import "github.com/tokend/tokend/internal/clock"

// SetClock makes the Client dialed with cfg run its timers, and tell the
// time unless cfg.Now is set, on clk: a test passes a testkit/fakeclock and
// moves time by hand. The clock stays out of the public Config because its
// type is internal.
func SetClock(cfg *Config, clk clock.Clock) { cfg.clock = clk }
