package clientlib

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/tokend/tokend/wire"
)

// BatchRequest is one token of an AcquireBatch: a name, a mode, and a byte
// range [Start, End) (both 0, or wire.WholeStart and wire.WholeEnd: the
// whole token).
type BatchRequest struct {
	Name       string
	Mode       wire.Mode
	Start, End uint64
}

// AcquireBatch acquires every token of reqs, all or nothing, and returns
// their Tokens in the order of reqs. It cannot deadlock against other
// callers of AcquireBatch: it takes the tokens in one fixed global order,
// by shard, then name, then range. For each shard in that order it first
// sends one ACQUIRE_BATCH (SPEC §21; up to wire.MaxBatch tokens per
// datagram, granted together or not at all, never queued); if that
// conflicts, it acquires that shard's tokens one by one with Acquire, in
// the same order, waiting as opts say (Wait, Try). If anything fails, it
// releases what it got and returns the error; opts are those of Acquire
// (Range is ignored: each request has its own). With the token cache on
// (Config.TokenCache), a shard with one of its names cached is taken token
// by token with Acquire, in the same order, so that the cache serves what
// it can with no datagram.
//
// Every Token it returns is valid for at least as long as one Acquire
// returns: the grants of earlier shards, which may have aged while a later
// shard waited, are confirmed by their workers first (a KEEPALIVE), or
// AcquireBatch fails and gives everything back.
//
// Tokens a batch grant makes are ordinary Tokens: released, converted and
// revoked one by one.
func (c *Client) AcquireBatch(ctx context.Context, reqs []BatchRequest, opts ...Option) ([]*Token, error) {
	items := make([]batchItem, len(reqs))
	for i, r := range reqs {
		if len(r.Name) == 0 || len(r.Name) > wire.MaxName || !r.Mode.Valid() ||
			(!wire.IsWhole(r.Start, r.End) && r.Start >= r.End) {
			return nil, fmt.Errorf("%s: %w: request %d (%q, mode %d, [%d, %d))",
				batchOp, ErrBadRequest, i, r.Name, r.Mode, r.Start, r.End)
		}
		if r.Start == 0 && r.End == 0 {
			r.Start, r.End = wire.WholeStart, wire.WholeEnd
		}
		items[i] = batchItem{r, i, wire.Shard([]byte(r.Name), c.shardCount)}
	}
	slices.SortStableFunc(items, func(a, b batchItem) int {
		return cmp.Or(cmp.Compare(a.shard, b.shard), cmp.Compare(a.Name, b.Name),
			cmp.Compare(a.Start, b.Start), cmp.Compare(a.End, b.End))
	})
	out := make([]*Token, len(reqs))
	fail := func(err error) ([]*Token, error) {
		for _, t := range out {
			if t != nil {
				_ = t.Release(context.WithoutCancel(ctx))
			}
		}
		return nil, err
	}
	for lo := 0; lo < len(items); {
		hi := lo + 1
		for hi < len(items) && hi-lo < wire.MaxBatch && items[hi].shard == items[lo].shard {
			hi++
		}
		if err := c.acquireShard(ctx, items[lo:hi], out, opts); err != nil {
			return fail(err)
		}
		lo = hi
	}
	// The grants taken first aged while later ones were taken (an Acquire
	// of a later shard, or of the same shard after a conflict, may have
	// waited long): each is valid for at least freshFor when AcquireBatch
	// returns, as one from Acquire is. confirm returns at once for those
	// still fresh.
	for _, t := range out {
		if err := c.confirm(ctx, t); err != nil {
			return fail(fmt.Errorf("%s: %w", batchOp, err))
		}
	}
	return out, nil
}

const batchOp = "clientlib: acquire batch"

// batchItem is one request of an AcquireBatch: reqs[i], in shard.
type batchItem struct {
	BatchRequest
	i     int
	shard uint32
}

// acquireShard takes group, the requests of one shard (at most
// wire.MaxBatch), into out: by one ACQUIRE_BATCH, unless a name of the
// shard is in the token cache (the worker would refuse the batch for the
// session's own cached grant, and the cache serves hits with no
// datagram); if that conflicts, or the cache has one, by one Acquire each
// in the global order, holding the earlier ones. On error out may hold
// some of group's tokens: the caller releases them.
func (c *Client) acquireShard(ctx context.Context, group []batchItem, out []*Token, opts []Option) error {
	if !c.cachesAny(group) {
		entries := make([]wire.BatchEntry, len(group))
		for k, it := range group {
			entries[k] = wire.BatchEntry{Mode: it.Mode, Start: it.Start, End: it.End, Name: []byte(it.Name)}
		}
		toks, err := c.acquireBatch(ctx, group[0].shard, entries)
		if err == nil {
			for k, it := range group {
				out[it.i] = toks[k]
			}
			return nil
		}
		if !errors.Is(err, ErrConflict) {
			return err
		}
		c.batchFallbacks.Add(1)
	}
	for _, it := range group {
		t, err := c.Acquire(ctx, it.Name, it.Mode, append(opts[:len(opts):len(opts)], Range(it.Start, it.End))...)
		if err != nil {
			return fmt.Errorf("%s: %w", batchOp, err)
		}
		out[it.i] = t
	}
	return nil
}

// cachesAny reports whether the token cache holds a grant of one of the
// names of group.
func (c *Client) cachesAny(group []batchItem) bool {
	if c.cacheMax <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, it := range group {
		for _, t := range c.byName[it.Name] {
			if t.cached {
				return true
			}
		}
	}
	return false
}

// acquireBatch sends one ACQUIRE_BATCH of entries (all of shard) and makes
// a Token of each grant, in entry order.
func (c *Client) acquireBatch(ctx context.Context, shard uint32, entries []wire.BatchEntry) ([]*Token, error) {
	if err := c.usable(); err != nil {
		return nil, fmt.Errorf("%s: %w", batchOp, err)
	}
	cl := newCall()
	cl.batch.Entries = entries
	cl.names = make([]string, len(entries))
	for k := range entries {
		cl.names[k] = string(entries[k].Name)
	}
	cl.typ, cl.body, cl.routed, cl.shard = wire.TypeAcquireBatch, &cl.batch, true, shard
	if err := c.register(ctx, cl, true); err != nil {
		putCall(cl)
		return nil, fmt.Errorf("%s: %w", batchOp, err)
	}
	// A batch never queues, so its answer comes at once: it is not
	// abandoned with ctx (an unknown outcome could leave grants behind).
	r, res, err := c.exchange(context.WithoutCancel(ctx), cl, exOpts{})
	if err != nil {
		c.finish(cl)
		putCall(cl)
		return nil, giveUp(batchOp, err, res)
	}
	if r.h.Status != wire.StatusOK {
		c.finish(cl)
		putCall(cl)
		if r.h.Status == wire.StatusConflict {
			return nil, fmt.Errorf("%s: %w (worker: entry %d, %q)", batchOp, ErrConflict, r.entry, entries[min(int(r.entry), len(entries)-1)].Name)
		}
		return nil, statusError(batchOp, &r)
	}
	if len(r.batch) != len(entries) {
		c.finish(cl)
		putCall(cl)
		return nil, fmt.Errorf("%s: %w: %d grants for %d entries", batchOp, ErrInternal, len(r.batch), len(entries))
	}
	toks := make([]*Token, len(entries))
	c.mu.Lock()
	c.finishLocked(cl)
	if c.state != stateOpen && c.state != stateClosing {
		err := c.closedErrLocked()
		c.mu.Unlock()
		putCall(cl)
		return nil, fmt.Errorf("%s: %w", batchOp, err)
	}
	fresh := true
	for k, g := range r.batch {
		name := string(entries[k].Name)
		t := &Token{c: c, name: name, shard: shard, op: make(chan struct{}, 1), grant: &grant{pending: true}}
		gr := r
		gr.batch = nil
		gr.fence, gr.mode, gr.start, gr.end, gr.vflags = g.fence, g.mode, g.start, g.end, g.vflags
		gr.vlen = uint8(copy(gr.val[:], g.val))
		c.byName[name] = append(c.byName[name], t)
		c.applyGrantLocked(t, cl, &gr)
		fresh = fresh && c.freshLocked(t)
		toks[k] = t
	}
	c.mu.Unlock()
	putCall(cl)
	c.batchGrants.Add(uint64(len(toks)))
	if !fresh {
		for _, t := range toks {
			if err := c.confirm(ctx, t); err != nil {
				for _, t := range toks {
					_ = t.Release(context.WithoutCancel(ctx))
				}
				return nil, fmt.Errorf("%s: %w", batchOp, err)
			}
		}
	}
	return toks, nil
}
