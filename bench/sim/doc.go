// Package sim is a simulation of a tokend cluster at scale (a million
// clients, a hundred million held tokens, a thousand workers) in virtual
// time, to find which part of the control plane hits a wall first. It
// runs the real planner (coordinator/plan), the real delegation map
// (cluster/delegation: its runs and its JSON form, the etcd value) and
// the real MAP_REPLY encoding (wire) over a virtual cluster, and models
// everything else with named constants (Costs).
//
// # What is real and what is a model
//
// Real code, run on every event of the scenario:
//   - plan.Plan computes every map, its moves and their kinds (assign,
//     handoff, recovery). Its wall-clock time on this machine is the one
//     measurement the simulation takes (Config.Clock; nil leaves it out so
//     that tests are deterministic).
//   - delegation.Map.MarshalJSON gives the size of the etcd value of every
//     map version, and delegation.Runs the runs a MAP_REPLY carries.
//   - wire.MapReply.Append pages every map into MAP_REPLY datagrams of at
//     most 1,200 bytes (SPEC §15), as a worker answers MAP_REQUEST: the
//     datagrams per full map fetch are counted from real encodings.
//   - cluster.Client, cluster.Worker and their keys give the bytes of the
//     session and registration keys (JSON as the worker writes them).
//
// Modelled, with the constants in Costs (each says where it comes from):
// etcd's capacity for writes and lease renewals, its lessor's expiry
// check and revoke rate, latencies of an etcd call and of a watch event,
// the coordinator's settle delay, a planned handoff's duration, the CPU
// per lease renewal, and the client's renewal schedule (every S/3, try
// another worker after max(S/6, 4 RTO) without an answer,
// clientlib/session.go renew). Sessions are one state each (home worker,
// lease expiry, next renewal) on a timing wheel; etcd is two fluid queues
// (writes, lease renewals) served at their capacity per tick, so a
// backlog delays renewals, and a renewal served after its lease expired
// loses the session, which then reopens (a cascade the report shows).
//
// Time is virtual: int64 nanoseconds, advanced one Tick at a time; all
// randomness comes from Config.Seed, so a run is reproducible except for
// the measured planner times. The package has no sockets, no etcd and no
// goroutines.
//
// # Designs
//
// A Design switches the parts the scaling plan (docs/SCALE.md) changes:
// one LeaseKeepAlive stream per worker instead of a KeepAliveOnce per
// renewal, sessions grouped under one etcd lease per group, jittered
// reconnects with a per-worker open rate limit, session watches that
// skip puts with session ends paced and batched into end records, and the
// map split into per-range documents. Current is the code as it is;
// Planned is the plan.
//
// Run runs a Config's scenario (Steps: steady, kill, join, rolling drain,
// every client restarting) and returns a Report: per phase, rates per
// virtual second (average and peak), totals, the planner's and the map's
// figures, failover times and session outcomes; Report.Table prints it
// with the source of every row.
package sim
