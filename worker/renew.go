package worker

import (
	"context"
	"errors"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewer renews client session leases over one LeaseKeepAlive stream for
// the whole worker. clientv3's KeepAliveOnce opens a gRPC stream, sends
// one request, reads one answer and closes the stream: per renewal, that
// stream setup is most of the cost on the worker and on the etcd member.
// Here every renewal is one message on a stream that stays open; the
// member answers a stream's requests in order, and answers are matched to
// callers by lease id, first come first served.
//
// A broken stream fails every renewal waiting on it and is replaced on the
// next call. A stream that goes silent (its member stalls) is caught by the
// caller's hedge: renewSession retries with KeepAliveOnce, which the
// client balances to another member, and resets the stream.
type renewer struct {
	cli  *clientv3.Client
	base context.Context // ends the stream when the worker stops
	wg   *sync.WaitGroup // tracks the stream's reader

	mu      sync.Mutex
	stream  pb.Lease_LeaseKeepAliveClient
	cancel  context.CancelFunc
	gen     uint64                       // bumped when a stream is dropped
	waiting map[int64][]chan renewResult // by lease id, oldest first
}

type renewResult struct {
	ttl int64 // seconds; <= 0: the lease is gone
	err error
}

// errRenewStream: the renewal stream broke or was reset while a renewal
// waited on it.
var errRenewStream = errors.New("worker: session renewal stream reset")

func newRenewer(ctx context.Context, cli *clientv3.Client, wg *sync.WaitGroup) *renewer {
	return &renewer{cli: cli, base: ctx, wg: wg, waiting: map[int64][]chan renewResult{}}
}

// renew renews lease id once and returns etcd's answer: the TTL it
// restarted (seconds), rpctypes.ErrLeaseNotFound if the lease is gone, or
// the error that kept it from answering.
func (r *renewer) renew(ctx context.Context, id clientv3.LeaseID) (int64, error) {
	ch := make(chan renewResult, 1)
	r.mu.Lock()
	st, gen, err := r.streamLocked()
	if err != nil {
		r.mu.Unlock()
		return 0, err
	}
	r.waiting[int64(id)] = append(r.waiting[int64(id)], ch)
	// A gRPC stream's Send is not safe for concurrent use: the lock
	// serialises the senders (a Send only queues the message).
	err = st.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
	r.mu.Unlock()
	if err != nil {
		r.drop(gen, err)
	}
	select {
	case res := <-ch:
		if res.err == nil && res.ttl <= 0 {
			return 0, rpctypes.ErrLeaseNotFound
		}
		return res.ttl, res.err
	case <-ctx.Done():
		// The answer, if it comes, goes into ch's buffer and is dropped.
		return 0, ctx.Err()
	}
}

// reset drops the current stream (it may have gone silent); the next
// renewal opens a new one, which the client may place on another member.
func (r *renewer) reset() {
	r.mu.Lock()
	gen := r.gen
	r.mu.Unlock()
	r.drop(gen, errRenewStream)
}

func (r *renewer) streamLocked() (pb.Lease_LeaseKeepAliveClient, uint64, error) {
	if r.stream != nil {
		return r.stream, r.gen, nil
	}
	if err := r.base.Err(); err != nil {
		return nil, 0, err
	}
	sctx, cancel := context.WithCancel(r.base)
	st, err := pb.NewLeaseClient(r.cli.ActiveConnection()).LeaseKeepAlive(sctx)
	if err != nil {
		cancel()
		return nil, 0, err
	}
	r.stream, r.cancel = st, cancel
	gen := r.gen
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.read(st, gen)
	}()
	return st, gen, nil
}

// read hands the stream's answers to their callers until it breaks.
func (r *renewer) read(st pb.Lease_LeaseKeepAliveClient, gen uint64) {
	for {
		resp, err := st.Recv()
		if err != nil {
			r.drop(gen, err)
			return
		}
		r.mu.Lock()
		var ch chan renewResult
		if q := r.waiting[resp.ID]; len(q) > 0 && r.gen == gen {
			ch = q[0]
			if len(q) == 1 {
				delete(r.waiting, resp.ID)
			} else {
				r.waiting[resp.ID] = q[1:]
			}
		}
		r.mu.Unlock()
		if ch != nil {
			ch <- renewResult{ttl: resp.TTL}
		}
	}
}

// drop ends stream generation gen, if it is still the current one, and
// fails every renewal waiting on it with err.
func (r *renewer) drop(gen uint64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if gen != r.gen || r.stream == nil {
		return
	}
	r.cancel()
	r.stream, r.cancel = nil, nil
	r.gen++
	for id, q := range r.waiting {
		for _, ch := range q {
			ch <- renewResult{err: errors.Join(errRenewStream, err)}
		}
		delete(r.waiting, id)
	}
}
