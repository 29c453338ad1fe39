package keys

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/wire/auth"
)

// reloadBackoff is how long the Store waits between attempts to reload
// the keys after its watch failed.
const reloadBackoff = 200 * time.Millisecond

// Store is every client key in etcd, unsealed, kept up to date by a
// watch: a key added appears and a key revoked disappears as soon as the
// watch delivers the change. Its ClientKey is what a worker's
// authentication looks keys up with (worker.KeyLookup): lock-free and safe
// for concurrent use. A document that does not open under the cluster key
// is left out and logged.
type Store struct {
	cli        *clientv3.Client
	clusterKey auth.Key
	log        *slog.Logger

	// snap is replaced whole on every change (copy on write): changes are
	// rare, lookups are on every SESSION_OPEN.
	snap atomic.Pointer[snapshot]
	rev  atomic.Int64 // the etcd revision keys reflects

	mu      sync.Mutex         // guards the two fields below
	changed chan struct{}      // closed and replaced on every applied change
	cancel  context.CancelFunc // set by Start; stops run

	done chan struct{} // closed when run returns
}

// NewStore returns a Store that knows no key until Start: a worker can be
// built with it before etcd is reachable. log may be nil.
func NewStore(cli *clientv3.Client, clusterKey auth.Key, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{cli: cli, clusterKey: clusterKey, log: log, changed: make(chan struct{}), done: make(chan struct{})}
	s.snap.Store(&snapshot{keys: map[string]auth.Key{}, bad: map[string]bool{}})
	return s
}

// Start loads every key (bounded by ctx) and starts watching for changes
// until Close. Call it once.
func (s *Store) Start(ctx context.Context) error {
	if err := s.load(ctx); err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	go s.run(wctx)
	return nil
}

// OpenStore is NewStore and Start.
func OpenStore(ctx context.Context, cli *clientv3.Client, clusterKey auth.Key, log *slog.Logger) (*Store, error) {
	s := NewStore(cli, clusterKey, log)
	if err := s.Start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// ClientKey returns the key of name, and false if name has no key (never
// added, revoked, or not openable under the cluster key).
func (s *Store) ClientKey(name string) (auth.Key, bool) {
	k, ok := s.snap.Load().keys[name]
	return k, ok
}

// StillValid is the etcd comparison that holds while name's key is
// stored (worker.KeyGuard): a worker creates a session opened with it only
// under this condition.
func (s *Store) StillValid(name string) clientv3.Cmp { return Exists(name) }

// Len returns the number of keys known.
func (s *Store) Len() int { return len(s.snap.Load().keys) }

// LeftOut returns the number of documents under Prefix that do not open
// under the cluster key (written with another cluster key, or damaged).
// Some and no key that opens means this process has the wrong cluster
// key.
func (s *Store) LeftOut() int { return len(s.snap.Load().bad) }

// snapshot is the Store's view as of one revision.
type snapshot struct {
	keys map[string]auth.Key
	bad  map[string]bool // names whose documents do not open
}

// WaitRevision waits until the Store reflects etcd revision rev or later
// (the revision of a write's response, say), or ctx ends.
func (s *Store) WaitRevision(ctx context.Context, rev int64) error {
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if s.rev.Load() >= rev {
			return nil
		}
		select {
		case <-ch:
		case <-s.done:
			return fmt.Errorf("keys: store closed at revision %d, waiting for %d", s.rev.Load(), rev)
		case <-ctx.Done():
			return fmt.Errorf("keys: store at revision %d, waiting for %d: %w", s.rev.Load(), rev, ctx.Err())
		}
	}
}

// Close stops the watch and waits for it. It is safe to call more than
// once, and without Start.
func (s *Store) Close() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-s.done
}

// publish installs snap as of revision rev and wakes WaitRevision.
func (s *Store) publish(snap *snapshot, rev int64) {
	s.snap.Store(snap)
	s.rev.Store(rev)
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// load reads every key afresh.
func (s *Store) load(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("keys: reading %s: %w", Prefix, err)
	}
	snap := &snapshot{keys: make(map[string]auth.Key, len(resp.Kvs)), bad: map[string]bool{}}
	for _, kv := range resp.Kvs {
		name, k, err := unseal(s.clusterKey, string(kv.Key), kv.Value)
		if err != nil {
			s.log.Warn("client key left out: it does not open under the cluster key", "key", name, "err", err)
			snap.bad[name] = true
			continue
		}
		snap.keys[name] = k
	}
	s.publish(snap, resp.Header.Revision)
	return nil
}

// run applies the watch's changes; when the watch fails (compaction, lost
// leader, closed connection) it reloads everything and watches again.
func (s *Store) run(ctx context.Context) {
	defer close(s.done)
	for {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, Prefix, clientv3.WithPrefix(), clientv3.WithRev(s.rev.Load()+1))
		for resp := range wch {
			if err := resp.Err(); err != nil {
				s.log.Info("client key watch ended; reloading the keys", "err", err)
				break
			}
			s.apply(resp)
		}
		cancel()
		for {
			if ctx.Err() != nil {
				return
			}
			err := s.load(ctx)
			if err == nil {
				break
			}
			s.log.Warn("reloading the client keys", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(reloadBackoff):
			}
		}
	}
}

// apply applies one watch response's events.
func (s *Store) apply(resp clientv3.WatchResponse) {
	old := s.snap.Load()
	snap := &snapshot{keys: maps.Clone(old.keys), bad: maps.Clone(old.bad)}
	for _, ev := range resp.Events {
		name, k, err := unseal(s.clusterKey, string(ev.Kv.Key), ev.Kv.Value)
		delete(snap.keys, name)
		delete(snap.bad, name)
		switch {
		case ev.Type == clientv3.EventTypeDelete:
		case err != nil:
			snap.bad[name] = true
			s.log.Warn("client key left out: it does not open under the cluster key", "key", name, "err", err)
		default:
			snap.keys[name] = k
		}
	}
	rev := resp.Header.Revision
	if n := len(resp.Events); n > 0 {
		rev = max(rev, resp.Events[n-1].Kv.ModRevision)
	}
	s.publish(snap, rev)
}
