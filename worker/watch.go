package worker

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
)

func formatInc(inc uint64) string { return strconv.FormatUint(inc, 16) }

// loadAll reads the delegation map, the worker registry and the sessions,
// and returns the revisions to watch them from.
func (w *Worker) loadAll(ctx context.Context) ([3]int64, error) {
	var revs [3]int64
	var err error
	// The registry first: applying the map looks up the previous owners
	// of shards handed over in it.
	for _, i := range []int{1, 0, 2} {
		sync := []func(context.Context) (int64, error){w.syncMap, w.syncWorkers, w.syncClients}[i]
		if revs[i], err = sync(ctx); err != nil {
			return revs, err
		}
	}
	return revs, nil
}

// watchLoop follows key (or a prefix) from revision rev on: event applies
// each change under mu. When the watch fails (e.g. compacted), sync reads
// the whole state again and reconciles. It ends when ctx does.
func (w *Worker) watchLoop(ctx context.Context, key string, prefix bool, rev int64,
	sync func(context.Context) (int64, error), event func(*outbox, *clientv3.Event)) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithRev(rev + 1)}
		if prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		var werr error
		for resp := range w.cfg.Client.Watch(wctx, key, opts...) {
			if werr = resp.Err(); werr != nil {
				break
			}
			if len(resp.Events) == 0 {
				continue
			}
			now := w.clk.Now()
			w.mu.Lock()
			ob := w.outbox(now, w.mono(now))
			ob.safe = w.safeUntil()
			for _, ev := range resp.Events {
				event(ob, ev)
				rev = max(rev, ev.Kv.ModRevision)
			}
			w.mu.Unlock()
			w.flush(ob)
			backoff = 100 * time.Millisecond
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.log.Warn("watch interrupted; reading it again", "key", key, "err", werr)
		if !wait(ctx, w.clk, backoff) {
			return
		}
		backoff = min(2*backoff, 2*time.Second)
		if r, err := sync(ctx); err == nil {
			rev = r
		} else if ctx.Err() == nil {
			w.log.Warn("cannot read again", "key", key, "err", err)
		}
	}
}

// syncMap reads the delegation map and applies it if it is new.
func (w *Worker) syncMap(ctx context.Context) (int64, error) {
	resp, err := w.cfg.Client.Get(ctx, cluster.DelegationKey)
	if err != nil {
		return 0, err
	}
	// A map more than one version ahead of ours: read its predecessor
	// from etcd's history, to find the previous owners of the shards it
	// gives us (a planned handoff needs them). Best effort: without it
	// those shards are recovered with a grace period.
	var older *delegation.Map
	if len(resp.Kvs) > 0 {
		older = w.readPredecessor(ctx, resp.Kvs[0])
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	if len(resp.Kvs) == 0 {
		w.mapRev = 0
		w.setMap(ob, nil, nil)
	} else {
		w.mapRev = max(w.mapRev, resp.Kvs[0].ModRevision)
		w.setMap(ob, resp.Kvs[0].Value, older)
	}
	w.mu.Unlock()
	w.flush(ob)
	return resp.Header.Revision, nil
}

// readPredecessor returns the map that kv (the current map) replaced, if
// ours is older than that one.
func (w *Worker) readPredecessor(ctx context.Context, kv *mvccpb.KeyValue) *delegation.Map {
	var m delegation.Map
	if json.Unmarshal(kv.Value, &m) != nil || kv.ModRevision < 2 {
		return nil
	}
	w.mu.Lock()
	have := w.dmap.Version
	w.mu.Unlock()
	if have+1 >= m.Version {
		return nil // ours is that map, or the current one
	}
	resp, err := w.cfg.Client.Get(ctx, cluster.DelegationKey, clientv3.WithRev(kv.ModRevision-1))
	if err != nil || len(resp.Kvs) == 0 {
		return nil // compacted, or there was none
	}
	var p delegation.Map
	if json.Unmarshal(resp.Kvs[0].Value, &p) != nil || p.Version+1 != m.Version || p.Validate() != nil {
		return nil
	}
	return &p
}

func (w *Worker) mapEvent(ob *outbox, ev *clientv3.Event) {
	if w.muteMapWatch {
		return
	}
	if ev.Type == mvccpb.DELETE {
		w.mapRev = 0
		w.setMap(ob, nil, nil)
		return
	}
	w.mapRev = max(w.mapRev, ev.Kv.ModRevision)
	w.setMap(ob, ev.Kv.Value, nil)
}

// mapCurrent confirms, with a linearizable read of the map key's revision,
// that the applied delegation map is etcd's current one, and applies etcd's
// if the watch is behind (a watch stream on a member that went silent
// delivers nothing and reports no error). It runs beside every renewal of
// the worker's lease, and SafeUntil is extended only when it succeeds:
// a map written at T that moves a shard away is applied before the worker
// vouches for anything past T + TTL. The new owner of a shard whose handoff
// failed waits longer than that (wire/SPEC.md 18), so the two never serve
// it at once, however late this worker's watch is.
func (w *Worker) mapCurrent(ctx context.Context, within, hedge time.Duration) error {
	resp, _, err := hedged(ctx, w.clk, within, hedge, func(ctx context.Context) (*clientv3.GetResponse, error) {
		return w.cfg.Client.Get(ctx, cluster.DelegationKey, clientv3.WithKeysOnly())
	}, nil)
	if err != nil {
		return err
	}
	var rev int64
	if len(resp.Kvs) > 0 {
		rev = resp.Kvs[0].ModRevision
	}
	w.mu.Lock()
	have := w.mapRev
	w.mu.Unlock()
	if rev == have {
		return nil
	}
	w.met.mapResyncs.Inc()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	_, err = w.syncMap(ctx)
	return err
}

// setMap applies the map in value (nil: there is no map, so nothing may be
// served). A map not newer than the current one is ignored. older is as in
// applyMap. Caller holds mu.
func (w *Worker) setMap(ob *outbox, value []byte, older *delegation.Map) {
	var m delegation.Map
	if value != nil {
		if err := json.Unmarshal(value, &m); err != nil {
			w.log.Error("ignoring malformed delegation map", "err", err)
			return
		}
		if m.Version <= w.dmap.Version && w.dmap.Shards() != 0 {
			if !m.Equal(w.dmap) {
				w.log.Warn("ignoring delegation map older than the current one", "version", m.Version, "current", w.dmap.Version)
			}
			return
		}
	} else if w.dmap.Shards() != 0 {
		w.log.Warn("delegation map deleted; serving nothing")
	}
	w.applyMap(ob, m, older)
	if w.ann != nil {
		w.ann.SetMapVersion(m.Version) // does not block
	}
	w.log.Debug("delegation map applied", "version", m.Version)
}

// syncWorkers reads the worker registry.
func (w *Worker) syncWorkers(ctx context.Context) (int64, error) {
	resp, err := w.cfg.Client.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	clear(w.registry)
	for _, kv := range resp.Kvs {
		w.putWorker(kv)
	}
	w.mu.Unlock()
	return resp.Header.Revision, nil
}

func (w *Worker) workerEvent(_ *outbox, ev *clientv3.Event) {
	if ev.Type == mvccpb.DELETE {
		delete(w.registry, strings.TrimPrefix(string(ev.Kv.Key), cluster.WorkersPrefix))
		return
	}
	w.putWorker(ev.Kv)
}

func (w *Worker) putWorker(kv *mvccpb.KeyValue) {
	var doc cluster.Worker
	if err := json.Unmarshal(kv.Value, &doc); err != nil || doc.ID == "" {
		w.log.Warn("ignoring malformed worker registration", "key", string(kv.Key))
		return
	}
	w.registry[doc.ID] = doc
}

// syncClients reads the live sessions: new ones become known, known ones
// that are gone end.
func (w *Worker) syncClients(ctx context.Context) (int64, error) {
	resp, err := w.cfg.Client.Get(ctx, cluster.ClientsPrefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	now := w.clk.Now()
	w.mu.Lock()
	ob := w.outbox(now, w.mono(now))
	ob.safe = w.safeUntil()
	live := map[uint64]bool{}
	for _, kv := range resp.Kvs {
		id, in, ok := parseClient(kv)
		if !ok {
			continue
		}
		live[id] = true
		if s := w.sessions[id]; s != nil {
			s.learn(in)
		} else if _, gone := w.gone[id]; !gone {
			s = w.newSession(id, in.addr)
			s.learn(in)
			w.sessions[id] = s
		}
	}
	for id := range w.sessions {
		if !live[id] {
			w.endSession(ob, id)
		}
	}
	w.clientsRev = max(w.clientsRev, resp.Header.Revision)
	w.mu.Unlock()
	w.flush(ob)
	return resp.Header.Revision, nil
}

// clientEvent applies a session put (a new session) or delete (it ended:
// expiry or close).
func (w *Worker) clientEvent(ob *outbox, ev *clientv3.Event) {
	if ev.Type == mvccpb.DELETE {
		id, err := cluster.ParseSession(strings.TrimPrefix(string(ev.Kv.Key), cluster.ClientsPrefix))
		if err == nil {
			w.endSession(ob, id)
		}
	} else if id, in, ok := parseClient(ev.Kv); ok {
		w.addSession(id, in, ev.Kv.ModRevision)
	}
	w.clientsRev = max(w.clientsRev, ev.Kv.ModRevision)
}

// parseClient reads a session key: its id and what its document says (an
// unreadable document says nothing).
func parseClient(kv *mvccpb.KeyValue) (uint64, sessInfo, bool) {
	id, err := cluster.ParseSession(strings.TrimPrefix(string(kv.Key), cluster.ClientsPrefix))
	if err != nil || id == 0 || id >= 1<<63 {
		return 0, sessInfo{}, false
	}
	var doc cluster.Client
	if json.Unmarshal(kv.Value, &doc) != nil {
		return id, sessInfo{}, true
	}
	return id, infoOf(doc), true
}
