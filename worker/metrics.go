package worker

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/wire"
)

// metrics are one Worker's Prometheus metrics (namespace tokend, subsystem
// worker), registered on Config.Registry.
type metrics struct {
	ops         *prometheus.CounterVec   // type, result
	dur         *prometheus.HistogramVec // type
	dropped     *prometheus.CounterVec   // reason
	recoveries  prometheus.Counter
	graceEarly  *prometheus.CounterVec   // reason
	graceDur    *prometheus.HistogramVec // end: early, deadline
	mapResyncs  prometheus.Counter
	revokesSent prometheus.Counter

	grantsResent prometheus.Counter // GRANT_ASYNC retransmissions

	// Bundles (wire/SPEC.md section 22; bundle.go): BUNDLEs taken and the
	// datagrams in them, BUNDLE_REPLYs sent and the datagrams in them.
	bundlesIn, bundledIn, bundlesOut, bundledOut prometheus.Counter

	handoffsOut  prometheus.Counter     // shard states pulled from this worker
	handoffsIn   *prometheus.CounterVec // result: imported, recovered
	handoffBytes *prometheus.CounterVec // direction: in, out
	handoffDur   prometheus.Histogram   // map applied to state imported, per pull
	deadlocks    *prometheus.CounterVec // kind: conversion (answered by a table), cycle (a detector's victim)
	ho           *handoffGuard          // handoff connections' limits, auth failures and their logs (handoff_auth.go)

	// Resolved children, so the hot path does not hash label values. Only
	// touched under Worker.mu (ops, dropped) or written once (durBy).
	opsBy  map[uint16]prometheus.Counter
	dropBy map[string]prometheus.Counter
	durBy  [256]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, w *Worker) (*metrics, error) {
	const ns, sub = "tokend", "worker"
	m := &metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "ops_total",
			Help: "Requests answered, by request type and result status (\"duplicate\": answered from the reply cache)."},
			[]string{"type", "result"}),
		dur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "op_duration_seconds",
			Help:    "Time from a request's arrival to its reply being sent, by request type.",
			Buckets: []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1, 2.5}},
			[]string{"type"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dropped_datagrams_total",
			Help: "Datagrams not applied (dropped, or answered with an error and no state change), by reason."},
			[]string{"reason"}),
		recoveries: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "recoveries_total",
			Help: "Shards taken over at an epoch above 1, started in their grace period."}),
		graceEarly: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "grace_ended_early_total",
			Help: "Recovered shards whose grace period ended before its deadline, by reason: all_done (every live session reclaimed or said DONE, or ended), no_sessions (no live session at all)."},
			[]string{"reason"}),
		graceDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "grace_duration_seconds",
			Help:    "Time from taking a shard over without a handoff to the end of its grace period, by how it ended: early (worker/grace) or deadline.",
			Buckets: []float64{1e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2, 3, 5, 10}},
			[]string{"end"}),
		mapResyncs: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "map_resyncs_total",
			Help: "Delegation maps read because the lease renewal's check found the map watch behind etcd."}),
		revokesSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "revokes_sent_total",
			Help: "REVOKE datagrams sent, retransmissions included."}),
		grantsResent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "grant_async_retransmissions_total",
			Help: "GRANT_ASYNC datagrams sent again because the client had not acknowledged them (GRANT_ACK) or re-polled yet."}),
		bundlesIn: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bundles_received_total",
			Help: "BUNDLE datagrams taken (a malformed one is counted in dropped_datagrams_total{reason=\"bad_bundle\"})."}),
		bundledIn: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bundled_datagrams_received_total",
			Help: "Datagrams received inside BUNDLEs, each then handled as if it had come alone."}),
		bundlesOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bundles_sent_total",
			Help: "BUNDLE_REPLY datagrams sent."}),
		bundledOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bundled_datagrams_sent_total",
			Help: "Datagrams sent inside BUNDLE_REPLYs rather than alone."}),
		handoffsOut: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoffs_out_total",
			Help: "Shards whose state a new owner pulled from this worker (planned handoff)."}),
		handoffsIn: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoffs_in_total",
			Help: "Shards taken over from a live previous owner, by result: imported (no grace period) or recovered (the handoff failed; grace period)."},
			[]string{"result"}),
		handoffBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoff_bytes_total",
			Help: "Bytes of handoff answers received (in) and sent (out)."}, []string{"direction"}),
		handoffDur: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "handoff_duration_seconds",
			Help:    "Time from applying the map that moved shards here to serving them with the previous owner's state, per pull.",
			Buckets: []float64{1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5}}),
		deadlocks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deadlocks_total",
			Help: "Requests answered DEADLOCK, by kind: conversion (a conversion deadlock on one token), cycle (a victim the leader's detector chose)."},
			[]string{"kind"}),
		opsBy:  map[uint16]prometheus.Counter{},
		dropBy: map[string]prometheus.Counter{},
		ho:     newHandoffGuard(ns, sub),
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, f)
	}
	cs := []prometheus.Collector{m.ops, m.dur, m.dropped, m.recoveries, m.graceEarly, m.graceDur, m.mapResyncs, m.revokesSent, m.grantsResent,
		m.bundlesIn, m.bundledIn, m.bundlesOut, m.bundledOut,
		m.handoffsOut, m.handoffsIn, m.handoffBytes, m.handoffDur, m.deadlocks, m.ho.authFailures, m.ho.refused,
		gauge("handoff_waiting_shards", "Shards gained whose state is being pulled from their previous owner.",
			func() float64 { return float64(w.stats().awaiting) }),
		gauge("held_tokens", "Grants held in the served shards.", func() float64 { return float64(w.stats().grants) }),
		gauge("queued_requests", "Requests waiting in the served shards' queues.", func() float64 { return float64(w.stats().waiters) }),
		gauge("ending_tokens", "Grants and queued requests of ended sessions still to be dropped (a big session is ended a slice at a time).",
			func() float64 { return float64(w.stats().ending) }),
		gauge("sessions", "Live client sessions known to this worker.", func() float64 { return float64(w.stats().sessions) }),
		gauge("shards", "Shards served.", func() float64 { return float64(w.stats().shards) }),
		gauge("grace_shards", "Served shards still in their recovery grace period.", func() float64 { return float64(w.stats().grace) }),
		gauge("lease_safe_seconds", "How much longer the worker can vouch for its own lease (SafeUntil - now, 0 if it cannot).",
			func() float64 {
				w.mu.Lock()
				su := w.safeUntil()
				w.mu.Unlock()
				return max(su.Sub(w.clk.Now()).Seconds(), 0)
			}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for t := range 256 {
		if typ := wire.Type(t); typ.IsRequest() {
			m.durBy[t] = m.dur.WithLabelValues(label(typ.String()))
		}
	}
	return m, nil
}

// label turns a SPEC name ("SESSION_OPEN", "NOT_OWNER") into a metric
// label value ("session_open", "not_owner").
func label(s string) string { return strings.ToLower(s) }

// op counts a request of type t answered with status st. Caller holds
// Worker.mu.
func (m *metrics) op(t wire.Type, st wire.Status) {
	k := uint16(t)<<8 | uint16(st)
	c := m.opsBy[k]
	if c == nil {
		res := "duplicate"
		if st != statusDuplicate {
			res = label(st.String())
		}
		c = m.ops.WithLabelValues(label(t.String()), res)
		m.opsBy[k] = c
	}
	c.Inc()
}

// drop counts a datagram not applied, by reason. Caller holds Worker.mu.
func (m *metrics) drop(reason string) {
	c := m.dropBy[reason]
	if c == nil {
		c = m.dropped.WithLabelValues(reason)
		m.dropBy[reason] = c
	}
	c.Inc()
}

// observe records the latency of a reply to a request of type t.
func (m *metrics) observe(t wire.Type, seconds float64) {
	if o := m.durBy[t]; o != nil {
		o.Observe(seconds)
	}
}

// workerStats is what the gauges report.
type workerStats struct {
	grants, waiters, sessions, shards, grace, awaiting int
	ending                                             int // grants and waiters of ended sessions still to drop
}

func (w *Worker) stats() workerStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s workerStats
	s.sessions = len(w.sessions)
	s.ending = w.endingTokens()
	for _, st := range w.shards {
		if st == nil {
			continue
		}
		if st.tab == nil {
			s.awaiting++
			continue
		}
		ts := st.tab.Stats()
		s.grants += ts.Grants
		s.waiters += ts.Waiters
		s.shards++
		if st.tab.InGrace() {
			s.grace++
		}
	}
	return s
}

// HeldTokens returns the number of grants held in the shards this worker
// serves now (the held_tokens gauge).
func (w *Worker) HeldTokens() int { return w.stats().grants }

// Shards returns the number of shards this worker serves now, or will
// once their handoff ends (the shards gauge).
func (w *Worker) Shards() int { s := w.stats(); return s.shards + s.awaiting }
