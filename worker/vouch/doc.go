// Package vouch decides how long a worker may vouch for its own etcd lease,
// and so for every grant it serves under it (invariant 5): the pure core of
// the worker's lease keeper.
//
// etcd restarts a lease's TTL when it receives a keepalive, so a keepalive
// sent at k and answered proves the lease alive until at least k + TTL on
// the sender's clock, however late the answer comes. A renewal counts only
// if, beside it, the worker confirmed that its delegation map is etcd's
// current one: otherwise a newer map may have moved shards away, and the
// worker vouches no longer than before. The worker serves only before
// SafeUntil, which keeps a margin for clock drift and scheduling.
//
// Like worker/table it reads no clock, does no I/O and starts no goroutine:
// times are nanoseconds on the caller's monotonic clock. The worker's shell
// (worker/lease.go) sends the keepalives and the map checks, and reports
// each round's answers to Lease.Renewed.
package vouch
