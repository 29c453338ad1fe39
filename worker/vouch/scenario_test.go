package vouch

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/cockroachdb/datadriven"

	"github.com/tokend/tokend/testkit/script"
)

// TestScenarios runs the scripts in testdata/*.txt: a worker's lease
// through its renewal rounds, as the shell reports them. `go test
// ./worker/vouch -run TestScenarios -rewrite` regenerates the
// expectations, to be reviewed as a diff.
//
// Times are nanoseconds, or numbers with the unit ms or s. Commands:
//
//	grant sent=T ttl=D [granted=D] [drift=F]   a new lease (default granted=ttl, drift 0.01)
//	renew start=T [ttl=D] [map=stale] [no-answer] [not-found]
//	    a round started at T: etcd answered the keepalive with TTL D
//	    (default the lease's; 0: gone), or did not answer, or said the
//	    lease does not exist; the map check confirmed the applied map
//	    current unless map=stale
//	lose                                       the worker revoked its lease
//	at now=T                                   may it vouch at T, and for how long (validity_ms)
//
// Every command that changes the lease shows SafeUntil afterwards.
func TestScenarios(t *testing.T) {
	script.Run(t, "testdata/*.txt", func() func(*testing.T, *datadriven.TestData) string {
		var l Lease
		var ttl int64
		return func(t *testing.T, d *datadriven.TestData) string {
			a := script.ArgsOf(d)
			dur := func(k string, def int64) int64 { return a.Nanos(t, d, k, def) }
			var out string
			switch d.Cmd {
			case "grant":
				drift := 0.01
				if v, ok := a["drift"]; ok {
					f, err := strconv.ParseFloat(v, 64)
					if err != nil {
						d.Fatalf(t, "drift=%q: %v", v, err)
					}
					drift = f
				}
				ttl = dur("ttl", 0)
				l = Grant(dur("sent", 0), ttl, dur("granted", ttl), drift)
				out = fmt.Sprintf("renew every %s, hedge after %s", ms(l.Interval()), ms(l.Hedge()))
			case "renew":
				_, stale := a["map"]
				_, noAnswer := a["no-answer"]
				_, notFound := a["not-found"]
				r := Renewal{Start: dur("start", 0), Answered: !noAnswer && !notFound, NotFound: notFound,
					MapCurrent: !stale || a["map"] != "stale"}
				if r.Answered {
					r.TTL = dur("ttl", ttl)
				}
				v, again := l.Renewed(r)
				out = v.String()
				if v != Lost {
					out += ", next round in " + ms(again)
				}
			case "lose":
				l.Lose()
				out = "revoked"
			case "at":
				now := dur("now", 0)
				until, ok := l.SafeUntil()
				switch {
				case !ok:
					return "lost: vouches for nothing, validity_ms 0\n"
				case now < until:
					return fmt.Sprintf("safe, validity_ms %d\n", ValidityMs(until-now))
				default:
					return fmt.Sprintf("not safe, validity_ms %d\n", ValidityMs(until-now))
				}
			default:
				d.Fatalf(t, "unknown command %q", d.Cmd)
			}
			if until, ok := l.SafeUntil(); ok {
				out += "\nsafe until " + ms(until)
			} else {
				out += "\nlost: never safe"
			}
			return out + "\n"
		}
	})
}

func ms(ns int64) string { return strconv.FormatFloat(float64(ns)/1e6, 'f', -1, 64) + "ms" }
