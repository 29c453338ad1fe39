package worker

import (
	"fmt"
	"time"
)

// Limits bound what clients may cost a worker (wire/SPEC.md section 20).
// A request beyond a limit is answered LIMIT with an ERROR text naming it
// and counted under tokend_worker_limited_total{limit}. The zero value of
// a field means its default.
type Limits struct {
	// Sessions bounds the live sessions this worker knows (every worker
	// knows every live session of the cluster): an open beyond it is
	// refused ("sessions"). Default 1,000,000, the cluster size
	// docs/SCALE.md plans for.
	Sessions int
	// NamesPerSession bounds the names one session holds or waits for in
	// the shards of this worker ("names_per_session"). Default 10,000.
	NamesPerSession int
	// MaxSessionTTL clamps the TTL a SESSION_OPEN asks for (the OK reply
	// carries the TTL granted). Default 60 s.
	MaxSessionTTL time.Duration
	// OpenRate and OpenBurst bound session opens per second over all
	// sources ("open_rate"); OpenRatePerSource and OpenBurstPerSource per
	// source IP address ("open_rate_source"). Defaults 2,000/s (burst
	// 4,000) and 200/s (burst 400). A negative rate means no limit.
	OpenRate, OpenBurst                   float64
	OpenRatePerSource, OpenBurstPerSource float64
	// RecentOpens bounds the table of recent opens, which answers a
	// retransmitted SESSION_OPEN ("recent_opens"); the rate limits are
	// tracked for as many source addresses. Default 65,536.
	RecentOpens int
	// ReplyCache bounds the cached replies of one session (wire/SPEC.md
	// section 11): a new request beyond it is answered LIMIT
	// ("queued_requests"); a RECLAIM, or a request older than the newest
	// one cached, only beyond twice it. Default 16,384; at least 1,024.
	ReplyCache int
}

func (l Limits) withDefaults() (Limits, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	deff := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.Sessions, 1_000_000)
	def(&l.NamesPerSession, 10_000)
	def(&l.RecentOpens, 1<<16)
	def(&l.ReplyCache, replyCacheCap)
	deff(&l.OpenRate, 2000)
	deff(&l.OpenBurst, 2*l.OpenRate)
	deff(&l.OpenRatePerSource, 200)
	deff(&l.OpenBurstPerSource, 2*l.OpenRatePerSource)
	if l.MaxSessionTTL == 0 {
		l.MaxSessionTTL = time.Minute
	}
	if l.Sessions < 0 || l.NamesPerSession < 0 || l.RecentOpens < 0 || l.MaxSessionTTL < time.Second || l.ReplyCache < 1024 {
		return l, fmt.Errorf("%w: negative limit, MaxSessionTTL below 1s or ReplyCache below 1024: %+v", ErrConfig, l)
	}
	return l, nil
}

// The limits' labels and ERROR texts.
const (
	limSessions  = "sessions"
	limNames     = "names_per_session"
	limQueued    = "queued_requests"
	limOpenRate  = "open_rate"
	limOpenSrc   = "open_rate_source"
	limRecent    = "recent_opens"
	limSourceTab = "open_sources"
)

var limitText = map[string]string{
	limSessions:  "LIMIT: too many sessions on this worker",
	limNames:     "LIMIT: too many names held or waited for by this session",
	limQueued:    "LIMIT: too many unfinished requests of this session",
	limOpenRate:  "LIMIT: too many session opens per second on this worker",
	limOpenSrc:   "LIMIT: too many session opens per second from this address",
	limRecent:    "LIMIT: too many session opens in progress",
	limSourceTab: "LIMIT: too many addresses opening sessions",
}
