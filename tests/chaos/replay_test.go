package chaos

import (
	"context"
	"errors"
	"fmt"
	"github.com/tokend/tokend/tests/chaos/load"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/wire"
)

// recConn is a client socket that records what the client sends.
type recConn struct {
	*faultnet.Conn
	mu   sync.Mutex // guards sent
	sent []captured
}

type captured struct {
	b  []byte
	to net.Addr
	tp wire.Type
}

const maxCaptured = 20000

func (c *recConn) WriteTo(b []byte, to net.Addr) (int, error) {
	c.mu.Lock()
	if len(c.sent) < maxCaptured {
		tp := wire.Type(0)
		if len(b) > 3 {
			tp = wire.Type(b[3])
		}
		c.sent = append(c.sent, captured{append([]byte(nil), b...), to, tp})
	}
	c.mu.Unlock()
	return c.Conn.WriteTo(b, to)
}

func (c *recConn) captured() []captured {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]captured(nil), c.sent...)
}

// TestScenario8Replay: clients run a mixed workload while everything they
// send is captured; then each client takes a token and holds it. Some time
// later (1-3 s short, 1-60 s soak) every captured datagram is sent again,
// shuffled, twice, from the client's own address: old ACQUIREs, RELEASEs,
// CONVERTs, CANCELs, REVOKE_ACKs, KEEPALIVEs, SESSION_OPENs and
// SESSION_CLOSEs of sessions alive and ended. Nothing may change
// (invariants 4 and 7): every held token keeps its fence and stays Valid,
// the workers hold exactly the same number of grants, other clients can
// neither take the held tokens nor are blocked from the free ones, and the
// whole history stays linearizable.
func TestScenario8Replay(t *testing.T) {
	run(t, []uint64{8}, func(t *testing.T, seed uint64, long bool) {
		e := startInproc(t, seed, 2, devcluster.Options{Shards: 32})
		rng := rand.New(rand.NewPCG(seed, 8))
		const clients = 6
		w := load.New()
		revoked := make(chan int, 64) // REVOKEs of held tokens, by client
		cls := make([]*clientlib.Client, clients+2)
		recs := make([]*recConn, clients+2)
		// Two short-lived clients whose sessions end (their datagrams,
		// SESSION_CLOSE included, are replayed too).
		for i := range clients + 2 {
			conn, err := e.fn.Listen(netip.AddrPortFrom(clientHost(i), 0).String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			rc := &recConn{Conn: conn}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: e.c.Seeds(), KeyFile: e.c.KeyFile(), PacketConn: rc, TokenCache: evenCache(i),
				// A grant cached idle for TokenCacheIdle is given back: legitimately,
				// but between the two counts below (up to a minute apart in a soak)
				// that would read as the replay changing the workers' state.
				TokenCacheIdle: 10 * time.Minute,
				OnRevoke: func(_ context.Context, tok *clientlib.Token, _ clientlib.Revocation) {
					if tok.Name() != heldName(i) {
						tok.Release(context.Background())
						return
					}
					select {
					case revoked <- i:
					default:
					}
				}})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cl.Close() })
			cls[i], recs[i] = cl, rc
		}
		cfg := load.Config{Tokens: load.TokenNames("s8", 8), Ops: 60, OpTimeout: 5 * time.Second,
			Modes: []wire.Mode{wire.PR, wire.PW, wire.EX}, Converts: true, Register: true, Think: time.Millisecond}
		load.RunClients(len(cls), func(i int) {
			w.RunClient(context.Background(), i, cls[i], rand.New(rand.NewPCG(seed, uint64(i))), cfg)
		})
		// The two extra clients end their sessions.
		for _, cl := range cls[clients:] {
			cl.Close()
		}
		// Each remaining client holds one token of its own and one shared.
		type held struct {
			tok   *clientlib.Token
			fence uint64
		}
		var hs []held
		for i := range clients {
			for _, nm := range []struct {
				name string
				mode wire.Mode
			}{{heldName(i), wire.EX}, {"s8/shared", wire.PR}} {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				tok, err := cls[i].Acquire(ctx, nm.name, nm.mode)
				cancel()
				if err != nil {
					t.Fatalf("client %d: hold %s: %v", i, nm.name, err)
				}
				hs = append(hs, held{tok, tok.Fence()})
			}
		}
		time.Sleep(200 * time.Millisecond) // replies to the holds are in
		before := e.heldTokens()
		var all []captured
		var from []*recConn
		for _, rc := range recs {
			for _, c := range rc.captured() {
				all = append(all, c)
				from = append(from, rc)
			}
		}
		kinds := map[wire.Type]int{}
		for _, c := range all {
			kinds[c.tp]++
		}
		delay := time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
		if long {
			delay = time.Second + time.Duration(rng.Int64N(int64(59*time.Second)))
		}
		t.Logf("captured %d datagrams %v; %d grants held; replaying after %v", len(all), kinds, before, delay.Round(time.Millisecond))
		time.Sleep(delay)
		// Replay everything twice, shuffled, each from its sender's
		// socket; then once more from a foreign address (a forged source).
		order := rng.Perm(2 * len(all))
		replayStart := time.Now()
		for k, j := range order {
			j %= len(all)
			from[j].Conn.WriteTo(all[j].b, all[j].to)
			if k%100 == 99 {
				time.Sleep(2 * time.Millisecond) // stay within the receive queues
			}
		}
		foreign, err := e.fn.Listen(netip.AddrPortFrom(clientHost(200), 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer foreign.Close()
		for k, j := range rng.Perm(len(all)) {
			foreign.WriteTo(all[j].b, all[j].to)
			if k%100 == 99 {
				time.Sleep(2 * time.Millisecond)
			}
		}
		time.Sleep(200 * time.Millisecond)
		t.Logf("replayed %d datagrams from their senders and %d from a foreign address in %v", len(order), len(all),
			time.Since(replayStart).Round(time.Millisecond))
		// Nothing changed.
		if after := e.heldTokens(); after != before {
			t.Errorf("workers hold %d grants after the replay, %d before", after, before)
		}
		for _, h := range hs {
			if !h.tok.Valid() || h.tok.Fence() != h.fence || h.tok.Err() != nil {
				t.Errorf("held %s: Valid %v, fence %#x (was %#x), err %v", h.tok.Name(), h.tok.Valid(), h.tok.Fence(), h.fence, h.tok.Err())
			}
		}
		// A fresh client: the held tokens are held, the others free, and
		// a REVOKE still reaches the holder (the forged replay did not
		// redirect the session).
		probe, _ := e.dial(clients+5, clientlib.Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = probe.Acquire(ctx, heldName(0), wire.EX, clientlib.Wait(300*time.Millisecond))
		cancel()
		if !errors.Is(err, clientlib.ErrTimeout) {
			t.Errorf("acquire of held %s: %v, want ErrTimeout", heldName(0), err)
		}
		select {
		case i := <-revoked:
			if i != 0 {
				t.Errorf("REVOKE of %s reached client %d", heldName(0), i)
			}
		case <-time.After(time.Second):
			t.Errorf("the holder of %s got no REVOKE after the replay", heldName(0))
		}
		for i := range clients {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := probe.Acquire(ctx, heldName(i), wire.EX, clientlib.Try())
			cancel()
			if !errors.Is(err, clientlib.ErrConflict) {
				t.Errorf("try EX on held %s: %v, want ErrConflict", heldName(i), err)
			}
		}
		for _, name := range cfg.Tokens {
			// Free, or kept in a client's token cache after its release:
			// then held to a Try, and given back at once to a request
			// that waits (the library answers the REVOKE).
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			tok, err := probe.Acquire(ctx, name, wire.EX, clientlib.Wait(2*time.Second))
			cancel()
			if err != nil {
				t.Errorf("try EX on free %s after the replay: %v", name, err)
				continue
			}
			ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
			tok.Release(ctx)
			cancel()
		}
		w.Verify(t, 30*time.Second)
	})
}

func heldName(i int) string { return fmt.Sprintf("s8/held/%d", i) }
