package vouch

import "math"

// Durations in nanoseconds.
const (
	millisecond = int64(1e6)
	second      = 1000 * millisecond

	// Margin is what SafeUntil keeps in hand beyond clock drift, for the
	// scheduling delay between checking the lease and acting on it.
	Margin = 50 * millisecond
	// Retry is the longest pause before the next round after a round that
	// proved nothing.
	Retry = 250 * millisecond
	// MaxHedge bounds the delay before a renewal's call is repeated
	// against another etcd member.
	MaxHedge = 100 * millisecond
)

// Lease is what the worker knows of its own lease. The zero value is a
// lease that was never proven alive.
type Lease struct {
	ttl       int64 // the TTL the worker counts with: the lesser of asked and granted
	margin    int64 // Margin plus the drift over one TTL
	aliveTill int64 // the lease lives at least until then
	lost      bool  // etcd said the lease is gone
}

// Grant starts a lease asked with TTL asked and granted with TTL granted
// by etcd, for a request sent at sent. drift is the tolerated clock rate
// difference (e.g. 0.01).
func Grant(sent, asked, granted int64, drift float64) Lease {
	ttl := min(asked, granted)
	return Lease{ttl: ttl, margin: int64(float64(ttl)*drift) + Margin, aliveTill: sent + ttl}
}

// SafeUntil returns the time until which the worker may act as the
// lease's owner: the proven life minus the margin. ok is false once the
// lease is lost: then never.
func (l *Lease) SafeUntil() (until int64, ok bool) {
	if l.lost {
		return math.MinInt64, false
	}
	return l.aliveTill - l.margin, true
}

// Lose records that the lease is gone (etcd said so, or the worker revoked
// it): nothing is vouched for from now on, whatever answers come later.
func (l *Lease) Lose() { l.lost = true }

// Interval is the time between renewal rounds: a quarter of the TTL.
func (l *Lease) Interval() int64 { return l.ttl / 4 }

// Hedge is how long a renewal's call waits for an answer before it is
// repeated against another etcd member.
func (l *Lease) Hedge() int64 { return min(l.Interval()/4, MaxHedge) }

// Renewal is the outcome of one round: a keepalive of the lease and,
// beside it, a check that the applied map is etcd's current one.
type Renewal struct {
	// Start is when the round started, before the keepalive and the map
	// check were sent. Both prove something as of Start at the latest.
	Start int64
	// Answered: etcd answered the keepalive (TTL is its answer).
	Answered bool
	// TTL is the remaining TTL etcd answered, nanoseconds; 0 or less
	// means the lease is gone.
	TTL int64
	// NotFound: etcd answered that the lease does not exist.
	NotFound bool
	// MapCurrent: the map check confirmed that every map written before
	// Start is applied.
	MapCurrent bool
}

// Verdict is what a round proved.
type Verdict uint8

const (
	// Extended: the lease lives and the map is current; SafeUntil moved to
	// at least Start + TTL - margin.
	Extended Verdict = iota + 1
	// Unconfirmed: the lease lives, but a map newer than the applied one
	// may have moved shards away: SafeUntil stays where it was.
	Unconfirmed
	// Failed: no answer; SafeUntil stays where it was and runs out by
	// itself if etcd cannot be reached.
	Failed
	// Lost: etcd says the lease is gone. The worker must stop serving and
	// register again as a new incarnation.
	Lost
)

var verdictNames = [...]string{Extended: "extended", Unconfirmed: "unconfirmed", Failed: "failed", Lost: "lost"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) && verdictNames[v] != "" {
		return verdictNames[v]
	}
	return "?"
}

// Renewed applies the outcome of a round and returns what it proved and
// how long to wait before the next round (0 after Lost: there is none).
func (l *Lease) Renewed(r Renewal) (Verdict, int64) {
	switch {
	case l.lost || r.NotFound || (r.Answered && r.TTL <= 0):
		l.lost = true
		return Lost, 0
	case !r.Answered:
		return Failed, min(l.Interval(), Retry)
	case !r.MapCurrent:
		return Unconfirmed, min(l.Interval(), Retry)
	}
	if till := r.Start + min(l.ttl, r.TTL); till > l.aliveTill {
		l.aliveTill = till
	}
	return Extended, l.Interval()
}

// ValidityMs is the validity_ms a reply carries when the worker can vouch
// for remaining more nanoseconds: floored to milliseconds, 0 if it cannot
// vouch at all.
func ValidityMs(remaining int64) uint32 {
	if remaining <= 0 {
		return 0
	}
	return uint32(min(remaining/millisecond, math.MaxUint32))
}
