package clientlib

import (
	"net/netip"
	"time"

	"github.com/tokend/tokend/wire"
)

// Early end of grace (wire/SPEC.md section 13): a worker that recovers a
// crashed owner's shards ends their grace period as soon as every live
// session has said it is done there. This client says so with a KEEPALIVE
// carrying flag DONE and its map version V, to every worker that map V
// gives a shard at a (shard, epoch) its previous map did not have (every
// worker with a shard above epoch 1, for its first map), once every
// RECLAIM it needs there has its final answer: no token it holds sits on a
// lease that the map moved to that worker. A worker that never hears from
// it waits out the full grace period.

// doneState is a DONE owed to one worker. Guarded by Client.mu.
type doneState struct {
	inflight bool
	next     time.Time // not before (after a failed send)
}

// markDoneLocked notes the workers that m gives shards at a (shard,
// epoch) that old (nil: none) did not have: each is owed a DONE.
func (c *Client) markDoneLocked(old, m *dmap) {
	for _, r := range m.runs {
		if r.none || r.epoch <= 1 || c.done[r.addr] != nil {
			continue
		}
		gained := old == nil
		for s := r.first; !gained && s-r.first < r.count; s++ {
			o, ok := old.lookup(s)
			gained = !ok || o.none || o.addr != r.addr || o.epoch != r.epoch
		}
		if gained {
			c.done[r.addr] = &doneState{}
		}
	}
	// A worker the map no longer names is owed nothing (one with a DONE
	// in flight is forgotten when that DONE ends: sendDone).
	for addr := range c.done {
		if !m.names(addr) && !c.done[addr].inflight {
			delete(c.done, addr)
		}
	}
}

// names reports whether m lists the worker at addr.
func (m *dmap) names(addr netip.AddrPort) bool {
	for _, w := range m.workers {
		if w == addr {
			return true
		}
	}
	return false
}

// doneReadyLocked reports whether every reclaim this client owes addr has
// its final answer: no token sits on a lease the map moved to addr.
func (c *Client) doneReadyLocked(addr netip.AddrPort) bool {
	for _, l := range c.leases {
		if !l.moved || len(l.tokens) == 0 {
			continue
		}
		if rt, ok := c.dm.lookup(l.key.shard); !ok || rt.none || rt.addr == addr {
			return false // its reclaim there is still under way (or the shard has no owner yet)
		}
	}
	return true
}

// doneDueLocked starts the DONEs that are due and returns when to look
// again (zero: nothing waits for time).
func (c *Client) doneDueLocked(now time.Time) time.Time {
	var next time.Time
	for addr, d := range c.done {
		if d.inflight || !c.doneReadyLocked(addr) {
			continue
		}
		if now.Before(d.next) {
			if next.IsZero() || d.next.Before(next) {
				next = d.next
			}
			continue
		}
		d.inflight = true
		v := c.dm.version
		c.spawnLocked(func() { c.sendDone(addr, v) })
	}
	return next
}

// sendDone sends KEEPALIVE with DONE for map version v to addr.
func (c *Client) sendDone(addr netip.AddrPort, v uint64) {
	ctx, cancel := c.withTimeout(c.ctx, max(c.kaInterval(), time.Second))
	defer cancel()
	cl := &call{typ: wire.TypeKeepalive, body: wire.Keepalive{Done: v}, dest: addr}
	ok := false
	if c.register(ctx, cl, false) == nil {
		r, _, err := c.exchange(ctx, cl, exOpts{})
		c.finish(cl)
		ok = err == nil && r.h.Status == wire.StatusOK
	}
	c.mu.Lock()
	if d := c.done[addr]; d != nil {
		d.inflight = false
		switch {
		case c.dm == nil || !c.dm.names(addr):
			// The map left that worker out while the DONE was on its way
			// (markDoneLocked kept it then): it is owed nothing now, and
			// without this a DONE it never answers would be retried until
			// some later map came.
			delete(c.done, addr)
		case !ok:
			d.next = c.now().Add(c.kaInterval())
		case c.dm != nil && c.dm.version == v:
			delete(c.done, addr)
		}
		// Otherwise a newer map came meanwhile: say it again for that one.
	}
	c.mu.Unlock()
	kick(c.maintKick)
}
