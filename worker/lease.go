package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/internal/hedge"
	"github.com/tokend/tokend/worker/vouch"
)

// ownLease is the worker's own etcd lease, to which its registration is
// attached. How long the worker may vouch for it is vouch.Lease's decision
// (invariant 5): the worker serves only while SafeUntil is in the future.
// ownLease sends the renewals and the map checks and reports their answers.
type ownLease struct {
	cli  *clientv3.Client
	clk  clock.Clock
	base time.Time // origin of the vouch.Lease's nanoseconds: when the lease was asked for
	id   clientv3.LeaseID
	log  *slog.Logger
	// check, if set, runs beside every renewal; SafeUntil is extended only
	// if it succeeds too. The worker confirms with it that its delegation
	// map is etcd's current one (Worker.mapCurrent), so that it never
	// vouches, by more than a TTL, for a shard a newer map gave away.
	check func(ctx context.Context, within, hedge time.Duration) error

	mu     sync.Mutex  // guards the fields below
	v      vouch.Lease // what the answers so far prove
	lostCh chan struct{}
}

// grantLease creates a lease with the given TTL, measuring its life from
// before the request was sent.
func grantLease(ctx context.Context, cli *clientv3.Client, clk clock.Clock, ttl time.Duration, drift float64, log *slog.Logger) (*ownLease, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	sent := clk.Now()
	resp, err := cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("worker: granting lease: %w", err)
	}
	granted := time.Duration(resp.TTL) * time.Second
	return &ownLease{
		cli: cli, clk: clk, base: sent, id: resp.ID, log: log,
		v:      vouch.Grant(0, int64(ttl), int64(granted), drift),
		lostCh: make(chan struct{}),
	}, nil
}

// SafeUntil returns the local time until which the worker may act as the
// lease's owner (vouch.Lease.SafeUntil). The zero time means never (the
// lease is lost).
func (l *ownLease) SafeUntil() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	until, ok := l.v.SafeUntil()
	if !ok {
		return time.Time{}
	}
	return l.base.Add(time.Duration(until))
}

// Lost is closed when etcd reports the lease gone; the worker must then stop
// serving and register again as a new incarnation.
func (l *ownLease) Lost() <-chan struct{} { return l.lostCh }

func (l *ownLease) markLost() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.v.Lose()
	select {
	case <-l.lostCh:
	default:
		close(l.lostCh)
	}
}

// keepAlive runs renewal rounds until ctx ends or the lease is lost: a
// KeepAliveOnce whose send time is known exactly and, beside it, the map
// check. vouch.Lease judges each round and says when to run the next.
func (l *ownLease) keepAlive(ctx context.Context) {
	l.mu.Lock()
	interval, hedge := time.Duration(l.v.Interval()), time.Duration(l.v.Hedge())
	l.mu.Unlock()
	t, tc := l.clk.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tc:
		}
		start := l.clk.Now()
		checked := make(chan error, 1)
		if l.check != nil {
			go func() { checked <- l.check(ctx, interval, hedge) }()
		} else {
			checked <- nil
		}
		r := keepAliveHedged(ctx, l.clk, l.cli, l.id, interval, hedge)
		cerr := <-checked
		rn := vouch.Renewal{
			Start:      int64(start.Sub(l.base)),
			Answered:   r.err == nil,
			NotFound:   errors.Is(r.err, rpctypes.ErrLeaseNotFound),
			MapCurrent: cerr == nil,
		}
		if r.err == nil {
			rn.TTL = int64(time.Duration(r.resp.TTL) * time.Second)
		}
		l.mu.Lock()
		verdict, again := l.v.Renewed(rn)
		l.mu.Unlock()
		switch verdict {
		case vouch.Lost:
			l.log.Error("own lease expired in etcd; stopping service", "lease", fmt.Sprintf("%x", int64(l.id)))
			l.markLost()
			return
		case vouch.Unconfirmed:
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("delegation map not confirmed current; not extending lease safety", "err", cerr)
		case vouch.Failed:
			if ctx.Err() != nil {
				return
			}
			l.log.Warn("lease keepalive failed; retrying", "err", r.err)
		}
		t.Reset(time.Duration(again))
	}
}

// renewal is the outcome of one KeepAliveOnce.
type renewal struct {
	sent time.Time
	resp *clientv3.LeaseKeepAliveResponse
	err  error
}

// keepAliveHedged renews lease id once, bounded by within, with hedged
// KeepAliveOnce calls (see hedged). The worker renews its own lease and its
// clients' session leases this way. Lease-not-found is final.
func keepAliveHedged(ctx context.Context, clk clock.Clock, cli *clientv3.Client, id clientv3.LeaseID, within, hedge time.Duration) renewal {
	resp, sent, err := hedged(ctx, clk, within, hedge, func(ctx context.Context) (*clientv3.LeaseKeepAliveResponse, error) {
		return cli.KeepAliveOnce(ctx, id)
	}, func(err error) bool { return errors.Is(err, rpctypes.ErrLeaseNotFound) })
	return renewal{sent: sent, resp: resp, err: err}
}

// maxHedges bounds the calls of one hedged round.
const maxHedges = 3

// hedged runs call, bounded by within, and again every hedge (or at once
// after an error) while none has answered, up to maxHedges calls at once,
// by the rule of internal/hedge: the first success, or an error final says
// is final, wins, and the other calls are canceled and waited for. The
// etcd client balances calls and streams round-robin over the members, so
// a member whose connection has gone silent (a partition that drops
// packets, a paused process: gRPC still thinks it is up) costs one hedge
// delay instead of the round, and a live worker keeps its lease while one
// member of three stalls (chaos.TestScenario6EtcdMemberCutOff). sent is
// when the winning call was started: a lease is counted from there.
func hedged[T any](ctx context.Context, clk clock.Clock, within, delay time.Duration, call func(context.Context) (T, error), final func(error) bool) (T, time.Time, error) {
	type sentResult struct {
		v    T
		sent time.Time
	}
	rctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	r, _, err := hedge.Run(rctx, hedge.Policy{Delay: delay, Attempts: maxHedges, Final: final, Clock: clk},
		func(ctx context.Context, _ int) (sentResult, error) {
			sent := clk.Now()
			v, err := call(ctx)
			return sentResult{v, sent}, err
		})
	return r.v, r.sent, err
}

// revoke ends the lease at once (clean shutdown): the registration vanishes
// and the leader re-delegates without waiting for the TTL.
func (l *ownLease) revoke(ctx context.Context) error {
	l.markLost()
	_, err := l.cli.Revoke(ctx, l.id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return err
}

// register puts the worker's document on its lease, only if no other
// incarnation holds the key: two processes with one id must never both
// believe they are that worker. If the key exists it waits (the previous
// incarnation's lease may still be running out) until ctx ends.
func register(ctx context.Context, cli *clientv3.Client, clk clock.Clock, l *ownLease, doc cluster.Worker, log *slog.Logger) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	key := cluster.WorkerKey(doc.ID)
	warned := false
	for {
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(b), clientv3.WithLease(l.id))).
			Commit()
		if err != nil {
			return fmt.Errorf("worker: registering %s: %w", key, err)
		}
		if resp.Succeeded {
			return nil
		}
		if !warned {
			log.Warn("worker id is still registered by another incarnation; waiting for its lease to run out", "key", key)
			warned = true
		}
		if !wait(ctx, clk, 500*time.Millisecond) {
			return fmt.Errorf("%w: %s: %w", errRegistered, key, ctx.Err())
		}
	}
}
