package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/testkit/freeport"
)

// etcdCluster is an embedded etcd cluster on loopback for the comparison.
type etcdCluster struct {
	dir     string
	members []*embedded.Member
}

func freeURL() (string, error) {
	p, err := freeport.Port()
	if err != nil {
		return "", err
	}
	return "http://127.0.0.1:" + strconv.Itoa(p), nil
}

// startEtcd starts n members in a new temp dir, trying new ports up to
// three times if one was taken meanwhile.
func startEtcd(ctx context.Context, n int) (*etcdCluster, error) {
	dir, err := os.MkdirTemp("", "tokend-bench-etcd-")
	if err != nil {
		return nil, err
	}
	for attempt := range 3 {
		ms, err := startMembers(ctx, filepath.Join(dir, fmt.Sprint(attempt)), n)
		if err == nil {
			return &etcdCluster{dir: dir, members: ms}, nil
		}
		if attempt == 2 || ctx.Err() != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("bench: start etcd (%d members): %w", n, err)
		}
	}
	panic("unreachable")
}

func startMembers(ctx context.Context, dir string, n int) ([]*embedded.Member, error) {
	cfgs := make([]embedded.Config, n)
	var pairs []string
	for i := range cfgs {
		peer, err := freeURL()
		if err != nil {
			return nil, err
		}
		client, err := freeURL()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("e%d", i+1)
		cfgs[i] = embedded.Config{Name: name, Dir: filepath.Join(dir, name), PeerURLs: []string{peer},
			ClientURLs: []string{client}, ReadyTimeout: 20 * time.Second, Logger: zap.NewNop()}
		pairs = append(pairs, name+"="+peer)
	}
	ms := make([]*embedded.Member, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(pairs, ",")
		wg.Go(func() { ms[i], errs[i] = embedded.Start(ctx, cfgs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeMembers(ms)
		return nil, err
	}
	return ms, nil
}

func (e *etcdCluster) endpoints() []string {
	var eps []string
	for _, m := range e.members {
		eps = append(eps, m.ClientEndpoints()...)
	}
	return eps
}

// close stops the members (followers first, then the leader, so that no
// member waits for a leadership handover) and removes the data.
func (e *etcdCluster) close() {
	closeMembers(e.members)
	os.RemoveAll(e.dir)
}

func closeMembers(ms []*embedded.Member) {
	var wg sync.WaitGroup
	for _, m := range ms {
		if m != nil && !m.IsLeader() {
			wg.Go(func() { m.Close() })
		}
	}
	wg.Wait()
	for _, m := range ms {
		if m != nil {
			m.Close()
		}
	}
}

// mutexClient is one etcd lock user: its own client connection and its
// own session (lease), as separate processes would have.
type mutexClient struct {
	cli  *clientv3.Client
	sess *concurrency.Session
}

func dialMutexClients(ctx context.Context, eps []string, n int) ([]*mutexClient, error) {
	cs := make([]*mutexClient, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Go(func() {
			cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				errs[i] = err
				return
			}
			sess, err := concurrency.NewSession(cli, concurrency.WithTTL(10), concurrency.WithContext(ctx))
			if err != nil {
				cli.Close()
				errs[i] = err
				return
			}
			cs[i] = &mutexClient{cli: cli, sess: sess}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeMutexClients(cs)
		return nil, fmt.Errorf("bench: etcd clients: %w", err)
	}
	return cs, nil
}

// closeMutexClients ends the sessions (revoking their leases) and closes
// the connections: before the members stop, or they wait for the streams.
func closeMutexClients(cs []*mutexClient) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(func() {
				c.sess.Close()
				c.cli.Close()
			})
		}
	}
	wg.Wait()
}

// runEtcdMutex runs the uncontended (1 and cfg.Clients clients, own key
// each) and contended (cfg.Clients clients, one key) Lock+Unlock loops
// with concurrency.Mutex against embedded etcd of each size in
// cfg.EtcdMembers.
func runEtcdMutex(ctx context.Context, cfg *Config) ([]Result, error) {
	var out []Result
	for _, members := range cfg.EtcdMembers {
		system := fmt.Sprintf("etcd-%d", members)
		cfg.progress("%s: starting", system)
		ec, err := startEtcd(ctx, members)
		if err != nil {
			return out, err
		}
		rs, err := etcdWorkloads(ctx, cfg, ec.endpoints(), system)
		out = append(out, rs...)
		ec.close()
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func etcdWorkloads(ctx context.Context, cfg *Config, eps []string, system string) ([]Result, error) {
	var out []Result
	for _, n := range dedupe(1, cfg.Clients) {
		cfg.progress("%s uncontended Mutex: %d clients", system, n)
		cs, err := dialMutexClients(ctx, eps, n)
		if err != nil {
			return out, err
		}
		ms := make([]*concurrency.Mutex, n)
		for i := range ms {
			ms[i] = concurrency.NewMutex(cs[i].sess, fmt.Sprintf("/bench/u/%d", i))
		}
		l, err := measure(ctx, cfg, n, func(ctx context.Context, i int, r *rec) error {
			return r.pair(func() error { return ms[i].Lock(ctx) }, func() error { return ms[i].Unlock(ctx) })
		})
		closeMutexClients(cs)
		if err != nil {
			return out, err
		}
		res := Result{Workload: "uncontended", System: system, Clients: n, Unit: "pair",
			Note: "concurrency.Mutex, own key per client, Lock+Unlock"}.with(&l, "acquire", "release", "pair")
		res.metric("ops", 2*l.rate(), "requests/s")
		out = append(out, res)
	}
	cfg.progress("%s contended Mutex: %d clients", system, cfg.Clients)
	cs, err := dialMutexClients(ctx, eps, cfg.Clients)
	if err != nil {
		return out, err
	}
	ms := make([]*concurrency.Mutex, len(cs))
	for i := range ms {
		ms[i] = concurrency.NewMutex(cs[i].sess, "/bench/contended")
	}
	l, err := measure(ctx, cfg, len(cs), func(ctx context.Context, i int, r *rec) error {
		t0 := time.Now()
		if err := ms[i].Lock(ctx); err != nil {
			return err
		}
		r.record(latAcquire, time.Since(t0))
		t1 := time.Now()
		// Unlock with a context of its own: a lock taken must be given
		// back even when the window's context ends right now.
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := ms[i].Unlock(uctx)
		cancel()
		if err != nil {
			return err
		}
		r.record(latRelease, time.Since(t1))
		return nil
	})
	closeMutexClients(cs)
	if err != nil {
		return out, err
	}
	res := Result{Workload: "contended", Variant: "Lock, Unlock", System: system, Clients: len(cs), Unit: "handoff",
		Note: "concurrency.Mutex, one key"}.with(&l, "acquire", "release")
	if l.ops > 0 {
		res.metric("handoff", 1e6/l.rate(), "µs")
	}
	out = append(out, res)
	return out, nil
}
