package clientlib

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/hedge"
	"github.com/tokend/tokend/wire"
)

// dmap is the client's copy of the delegation map (SPEC.md 15): which
// worker serves which shard at which epoch.
type dmap struct {
	version uint64
	runs    []mrun           // sorted by first, not overlapping
	workers []netip.AddrPort // every worker named, in index order
}

// mrun says that count shards from first on are served by addr at epoch.
type mrun struct {
	first, count uint32
	addr         netip.AddrPort
	epoch        uint32
	none         bool // nobody owns these shards right now
}

// lookup returns the run that covers shard.
func (m *dmap) lookup(shard uint32) (mrun, bool) {
	if m == nil {
		return mrun{}, false
	}
	i := sort.Search(len(m.runs), func(i int) bool {
		return uint64(m.runs[i].first)+uint64(m.runs[i].count) > uint64(shard)
	})
	if i < len(m.runs) && m.runs[i].first <= shard {
		return m.runs[i], true
	}
	return mrun{}, false
}

// mapPage is one MAP reply, copied out of the receive buffer.
type mapPage struct {
	version    uint64
	shardCount uint32
	workers    map[uint16]string
	runs       []wire.MapRun
}

func newMapPage(m *wire.MapReply) *mapPage {
	p := &mapPage{version: m.MapVersion, shardCount: m.ShardCount,
		workers: make(map[uint16]string, len(m.Workers)), runs: slices.Clone(m.Runs)}
	for _, w := range m.Workers {
		p.workers[w.Index] = string(w.Addr)
	}
	return p
}

// requestMap asks mapLoop for a fresh map and returns a channel closed when
// the next fetch has completed (whether or not the map changed).
func (c *Client) requestMap() <-chan struct{} {
	c.mu.Lock()
	ch := c.mapDone
	c.mu.Unlock()
	kick(c.mapKick)
	return ch
}

// newMap returns a channel closed when a map of another version than the
// current one is installed.
func (c *Client) newMap() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mapNew
}

// mapLoop fetches the map whenever asked (a newer version seen in a reply
// header, a redirect, a lease in doubt), at most once per RTOMin.
func (c *Client) mapLoop() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.mapKick:
		}
		ctx, cancel := c.withTimeout(c.ctx, 5*time.Second)
		m, err := c.fetchMap(ctx)
		cancel()
		c.mu.Lock()
		if err == nil {
			c.applyMapLocked(m)
		}
		close(c.mapDone)
		c.mapDone = make(chan struct{})
		c.mu.Unlock()
		if err != nil && c.ctx.Err() == nil {
			c.log.Debug("map refresh failed", "err", err)
		}
		c.pause(c.cfg.RTOMin)
	}
}

// mapTargets lists where to ask for the map: the session's home first, then
// the workers of the current map, then the seeds.
func (c *Client) mapTargets() []netip.AddrPort {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ts []netip.AddrPort
	add := func(a netip.AddrPort) {
		if a.IsValid() && !slices.Contains(ts, a) {
			ts = append(ts, a)
		}
	}
	add(c.home)
	if c.dm != nil {
		for _, w := range c.dm.workers {
			add(w)
		}
	}
	for _, s := range c.seeds {
		add(s)
	}
	return ts
}

// perTarget is how long one worker gets to answer before the next is tried:
// six sends on the RTO schedule.
func (c *Client) perTarget() time.Duration {
	var d time.Duration
	rto := c.cfg.RTOMin
	for range 6 {
		d += rto
		rto = min(2*rto, c.cfg.RTOMax)
	}
	return d + d/4
}

// mapHedgeFanout caps how many workers are asked for one map page at once.
const mapHedgeFanout = 3

// mapHedge is how long a map request goes unanswered before the next
// worker is asked as well: a dead worker (typically the session's home,
// asked first) must not hold up the map for perTarget, most of the grace
// period in which a moved grant must be reclaimed.
func (c *Client) mapHedge() time.Duration { return 4 * c.cfg.RTOMin }

// fetchMap reads the whole delegation map, page by page (SPEC.md 15),
// starting over if the version changes in between. Each page is asked of
// the worker that answered the previous one, hedged with the others
// (mapPage).
func (c *Client) fetchMap(ctx context.Context) (*dmap, error) {
	targets := c.mapTargets()
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: nowhere to ask", ErrUnavailable)
	}
	ti := 0
	var (
		m        = &dmap{}
		byIndex  = map[uint16]netip.AddrPort{}
		first    uint32
		restarts int
	)
	for first < c.shardCount {
		p, i, err := c.mapPage(ctx, targets, ti, first)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: no map page from %s: %w", ErrUnavailable, addrList(targets), err)
			}
			if c.ctx.Err() != nil {
				return nil, err
			}
			// Every worker failed: start the next round elsewhere, after
			// a pause (a fast error must not make this spin).
			ti++
			t, tick := c.clk.NewTimer(c.cfg.RTOMin)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%w: no map page from %s: %w", ErrUnavailable, addrList(targets), ctx.Err())
			case <-c.ctx.Done():
				t.Stop()
				return nil, ErrClosed
			case <-tick:
			}
			continue
		}
		ti = i
		if p.shardCount != c.shardCount {
			c.log.Error("map shard count differs from the session's", "map", p.shardCount, "session", c.shardCount)
			return nil, fmt.Errorf("%w: map has %d shards, session %d", ErrInternal, p.shardCount, c.shardCount)
		}
		if first != 0 && p.version != m.version {
			if restarts++; restarts > 8 {
				return nil, fmt.Errorf("%w: map keeps changing", ErrUnavailable)
			}
			m, byIndex, first = &dmap{}, map[uint16]netip.AddrPort{}, 0
			continue
		}
		m.version = p.version
		if len(p.runs) == 0 {
			break // the worker describes nothing from here on
		}
		for idx, a := range p.workers {
			if _, ok := byIndex[idx]; ok {
				continue
			}
			ap, err := resolve(a)
			if err != nil {
				c.log.Warn("map names an unresolvable worker", "addr", a, "err", err)
				continue
			}
			byIndex[idx] = ap
		}
		for _, r := range p.runs {
			run := mrun{first: r.First, count: r.Count, epoch: r.Epoch, none: r.Worker == wire.NoWorker}
			if !run.none {
				ap, ok := byIndex[r.Worker]
				if !ok {
					run.none = true
				}
				run.addr = ap
			}
			m.runs = append(m.runs, run)
		}
		last := p.runs[len(p.runs)-1]
		first = last.First + last.Count
	}
	idxs := make([]uint16, 0, len(byIndex))
	for idx := range byIndex {
		idxs = append(idxs, idx)
	}
	slices.Sort(idxs)
	for _, idx := range idxs {
		if a := byIndex[idx]; !slices.Contains(m.workers, a) {
			m.workers = append(m.workers, a)
		}
	}
	return m, nil
}

// mapPage asks for the map page from shard first on: targets[ti] first,
// then, every mapHedge without an answer or at once when a worker fails,
// the next target too (at most mapHedgeFanout at a time, each target once).
// It returns the first page answered and the index of the target that
// answered it, or an error once every target has failed or ctx ends. Like
// every hedge.Run, it returns only once the requests still out are
// cancelled and have returned.
func (c *Client) mapPage(ctx context.Context, targets []netip.AddrPort, ti int, first uint32) (*mapPage, int, error) {
	// Run ends with ctx; the client's closing ends it too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	p, i, err := hedge.Run(ctx, hedge.Policy{Delay: c.mapHedge(), Attempts: len(targets),
		Parallel: mapHedgeFanout, Clock: c.clk},
		func(ctx context.Context, i int) (*mapPage, error) {
			return c.mapPageFrom(ctx, targets[(ti+i)%len(targets)], first)
		})
	switch {
	case err == nil:
		return p, (ti + i) % len(targets), nil
	case c.ctx.Err() != nil:
		return nil, ti, ErrClosed
	}
	return nil, ti, err
}

// mapPageFrom asks one worker for the map from shard first on.
func (c *Client) mapPageFrom(ctx context.Context, to netip.AddrPort, first uint32) (*mapPage, error) {
	ctx, cancel := c.withTimeout(ctx, c.perTarget())
	defer cancel()
	cl := &call{typ: wire.TypeMapRequest, body: wire.MapRequest{FirstShard: first}, dest: to}
	if err := c.register(ctx, cl, false); err != nil {
		return nil, err
	}
	defer c.finish(cl)
	r, _, err := c.exchange(ctx, cl, exOpts{})
	if err != nil {
		return nil, err
	}
	if r.h.Status != wire.StatusOK || r.page == nil {
		return nil, statusError("map request", &r)
	}
	if len(r.page.runs) > 0 && r.page.runs[0].First != first {
		return nil, errMapPageStart
	}
	return r.page, nil
}

// applyMapLocked installs m unless it is older than the cached map, and
// starts reclaims for leases whose shard moved to a newer epoch.
func (c *Client) applyMapLocked(m *dmap) {
	if c.dm != nil && m.version < c.dm.version {
		return
	}
	changed := c.dm == nil || m.version != c.dm.version
	if changed {
		c.log.Debug("delegation map", "version", m.version, "runs", len(m.runs), "workers", len(m.workers))
		close(c.mapNew)
		c.mapNew = make(chan struct{})
		c.markDoneLocked(c.dm, m)
	}
	c.dm = m
	c.mapVer.Store(m.version)
	for _, l := range c.leases {
		c.checkMovedLocked(l)
	}
	if changed && len(c.done) > 0 {
		kick(c.maintKick) // DONEs may be due (once the reclaims just started end)
	}
}

// listenAnnouncements starts listening to the workers' announcements if
// Config.Announce is enabled, and, without seeds, waits (until ctx ends)
// for workers to be announced and takes them as the seeds.
func (c *Client) listenAnnouncements(ctx context.Context) error {
	if !c.cfg.Announce.Enabled {
		return nil
	}
	if c.cfg.Announce.Logger == nil {
		c.cfg.Announce.Logger = c.log
	}
	l, err := announce.Listen(c.cfg.Announce, c.onAnnouncement)
	if err != nil {
		if len(c.seeds) > 0 { // announcements are hints: go on without them
			c.log.Warn("not listening to announcements", "err", err)
			return nil
		}
		return err
	}
	c.ann = l
	if len(c.seeds) > 0 {
		return nil
	}
	peers, err := l.WaitWorkers(ctx)
	if err != nil {
		c.closeAnnouncements()
		return fmt.Errorf("%w: no seeds and no worker announced on %v: %w", ErrUnavailable, l.Group(), err)
	}
	for _, p := range peers {
		if ap, err := resolve(p.Worker); err == nil {
			c.seeds = append(c.seeds, ap)
		}
	}
	if len(c.seeds) == 0 {
		c.closeAnnouncements()
		return fmt.Errorf("%w: announced workers are unresolvable", ErrUnavailable)
	}
	c.log.Debug("seeds from announcements", "seeds", len(c.seeds))
	return nil
}

// onAnnouncement runs on the announce listener's goroutine: a map version
// newer than ours makes mapLoop fetch the map (it rate-limits itself).
// Before Dial has the first map, mapVer is 0 and the kick is absorbed.
func (c *Client) onAnnouncement(ev announce.Event) {
	if ev.Ann.MapVersion > c.mapVer.Load() {
		kick(c.mapKick)
	}
}

// closeAnnouncements stops listening (idempotent).
func (c *Client) closeAnnouncements() {
	if c.ann != nil {
		_ = c.ann.Close()
	}
}

// addrList names the addresses for an error message (at most 8).
func addrList(as []netip.AddrPort) string {
	var b strings.Builder
	for i, a := range as {
		if i == 8 {
			fmt.Fprintf(&b, " and %d more", len(as)-8)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(a.String())
	}
	return b.String()
}
