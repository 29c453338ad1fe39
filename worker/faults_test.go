package worker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

// history checks what clients saw against invariants 1, 2 and 4.
type history struct {
	t  testing.TB
	mu sync.Mutex // guards the fields below
	// held: per token, the grants clients currently consider held (a
	// holder forgets its grant before it sends the RELEASE).
	held map[string]map[uint64]wire.Mode
	// seen: per token, every grant observed, in observation order.
	seen map[string][]grantSeen
	// byReq: the fence each (session, request id) was answered with.
	byReq map[[2]uint64]uint64
	// fences: (token, fence) -> (session, request id) that got it.
	fences map[tokFence][2]uint64
	grants int
}

type tokFence struct {
	token string
	fence uint64
}

type grantSeen struct {
	fence uint64
	mode  wire.Mode
}

func newHistory(t testing.TB) *history {
	return &history{t: t, held: map[string]map[uint64]wire.Mode{}, seen: map[string][]grantSeen{},
		byReq: map[[2]uint64]uint64{}, fences: map[tokFence][2]uint64{}}
}

// reply records every GRANT a request id was answered with (duplicates
// included): all must carry the same fence (at most once).
func (hs *history) reply(token string, session, req, fence uint64) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	k := [2]uint64{session, req}
	if f, ok := hs.byReq[k]; ok && f != fence {
		hs.t.Errorf("invariant 4: request %d of session %x answered with fences %#x and %#x", req, session, f, fence)
	}
	hs.byReq[k] = fence
	if o, ok := hs.fences[tokFence{token, fence}]; ok && o != k {
		hs.t.Errorf("invariant 4/2: %s fence %#x given to %v and %v", token, fence, o, k)
	}
	hs.fences[tokFence{token, fence}] = k
}

// grant records that a client starts holding fence on token.
func (hs *history) grant(token string, fence uint64, mode wire.Mode) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.grants++
	for f, m := range hs.held[token] {
		if !wire.Compatible(m, mode) {
			hs.t.Errorf("invariant 1: %s granted %v (fence %#x) while %v (fence %#x) is held", token, mode, fence, m, f)
		}
	}
	for _, g := range hs.seen[token] {
		if !wire.Compatible(g.mode, mode) && fence <= g.fence {
			hs.t.Errorf("invariant 2: %s fence %#x (%v) after conflicting fence %#x (%v)", token, fence, mode, g.fence, g.mode)
		}
	}
	hs.seen[token] = append(hs.seen[token], grantSeen{fence, mode})
	if hs.held[token] == nil {
		hs.held[token] = map[uint64]wire.Mode{}
	}
	hs.held[token][fence] = mode
}

func (hs *history) release(token string, fence uint64) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	delete(hs.held[token], fence)
}

// TestAtMostOnceFaultnet (invariants 1, 2, 4): clients acquire and release
// a few tokens in shared and exclusive modes over a network that drops 20%,
// duplicates 10% and delays 0-20 ms (reordering) every datagram, seeded.
// Every request id gets one answer however often it arrives, grants seen by
// clients are compatible, fences of conflicting grants increase, and at the
// end the worker holds nothing (no acquire applied twice).
func TestAtMostOnceFaultnet(t *testing.T) {
	const seed = 20261123
	cli := testEtcd(t)
	fn := faultnet.New(seed)
	wconn, err := fn.Listen("127.0.0.1:7700")
	if err != nil {
		t.Fatal(err)
	}
	w, reg := startWorker(t, cli, "w1", wconn)
	serveAll(t, cli, w)
	fn.SetDefault(faultnet.Rule{Drop: 0.2, Duplicate: 0.1, MaxDelay: 20 * time.Millisecond})

	const clients, ops = 4, 30
	tokens := []string{"t0", "t1", "t2"}
	hs := newHistory(t)
	var wg sync.WaitGroup
	for i := range clients {
		conn, err := fn.Listen("127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		c := newTClient(t, conn, w.Addr(), testShards)
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		wg.Go(func() {
			c.open(30000)
			for range ops {
				if t.Failed() {
					return
				}
				tok := tokens[rng.IntN(len(tokens))]
				mode := wire.PR
				if rng.IntN(3) > 0 {
					mode = wire.EX
				}
				g, err := c.acquireWait(tok, mode, hs)
				if err != nil {
					t.Error(err)
					return
				}
				hs.grant(tok, g.Fence, mode)
				// Hold for a while of real time: the other clients'
				// requests, retransmissions and the network's delays must
				// overlap the hold for the history to test anything.
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
				hs.release(tok, g.Fence)
				h := c.header(c.shard(tok), 0)
				r, err := c.call(wire.Release{Fence: g.Fence, Name: []byte(tok)}, h, 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if r.h.Status != wire.StatusOK {
					t.Errorf("RELEASE of %s fence %#x: %v (applied twice?)", tok, g.Fence, r.h.Status)
					return
				}
				c.finish(h.Request)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if hs.grants != clients*ops {
		t.Fatalf("%d grants seen, want %d", hs.grants, clients*ops)
	}
	waitFor(t, "worker holds nothing", func() bool { s := w.stats(); return s.grants == 0 && s.waiters == 0 })
	resp, err := cli.Get(context.Background(), cluster.ClientsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != clients {
		t.Fatalf("%d sessions in etcd, want %d (a retransmitted open applied twice?)", resp.Count, clients)
	}
	st := fn.Stats()
	dups := gatherValue(reg, "tokend_worker_ops_total", "result", "duplicate")
	t.Logf("network %+v; worker answered %v duplicates from its cache, dropped %v stale", st, dups,
		gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", "stale"))
	if st.Duplicated == 0 || st.Dropped == 0 || dups == 0 {
		t.Fatal("the network injected no faults")
	}
}

// acquireWait acquires tok (waiting as long as it takes): retransmits, and
// once QUEUED re-polls every 50 ms or takes the GRANT_ASYNC. Every GRANT
// for the request id goes to hs.reply.
func (c *tclient) acquireWait(tok string, mode wire.Mode, hs *history) (wire.Grant, error) {
	h := c.header(c.shard(tok), 0)
	m := wire.Acquire{Mode: mode, WaitMs: wire.WaitForever, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(tok)}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		r, err := c.call(m, h, 10*time.Second)
		if err != nil {
			return wire.Grant{}, err
		}
		switch r.h.Status {
		case wire.StatusOK:
			g := r.grant(c.t)
			hs.reply(tok, c.session, h.Request, g.Fence)
			c.finish(h.Request)
			c.drainGrants(tok, h.Request, hs)
			return g, nil
		case wire.StatusQueued:
		default:
			return wire.Grant{}, fmt.Errorf("ACQUIRE %s: %v", tok, r.h.Status)
		}
		ev, ok := c.event(50*time.Millisecond, func(e msg) bool {
			return e.h.Request == h.Request && (e.h.Type == wire.TypeGrantAsync || e.h.Status == wire.StatusOK && e.h.Type == wire.TypeAcquireReply)
		})
		if ok {
			g := ev.grant(c.t)
			hs.reply(tok, c.session, h.Request, g.Fence)
			c.finish(h.Request)
			c.drainGrants(tok, h.Request, hs)
			return g, nil
		}
	}
	return wire.Grant{}, fmt.Errorf("ACQUIRE %s: not granted in time", tok)
}

// drainGrants checks late copies of grants for req that are already queued.
func (c *tclient) drainGrants(tok string, req uint64, hs *history) {
	for {
		ev, ok := c.event(0, func(e msg) bool {
			return e.h.Request == req && e.h.Kind() == wire.KindGrant
		})
		if !ok {
			return
		}
		hs.reply(tok, c.session, req, ev.grant(c.t).Fence)
	}
}
