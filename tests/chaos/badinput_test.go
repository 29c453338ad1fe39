//go:build linux

package chaos

import (
	"context"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// TestBadInputLiveWorker (invariant 7) throws malformed, truncated,
// oversized, corrupted, misaddressed, stale and random datagrams at a live
// worker process for a bounded time (2 s; soak 30 s), from several
// sockets. The worker must keep serving (a held token stays Valid with its
// fence, a fresh client acquires and releases), its state must not change
// (held_tokens and sessions gauges), and every kind must show up in
// tokend_worker_dropped_datagrams_total under its reason.
func TestBadInputLiveWorker(t *testing.T) {
	run(t, []uint64{77}, func(t *testing.T, seed uint64, long bool) {
		c := startReal(t, seed, rclusterOpts{servers: 1, workers: 1})
		w := c.workers[0]
		holder, _ := c.dial(clientlib.Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		tok, err := holder.Acquire(ctx, "held", wire.EX)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		fence := tok.Fence()
		time.Sleep(300 * time.Millisecond)
		before, err := workerMetrics(loop(w.http))
		if err != nil {
			t.Fatal(err)
		}
		shard, epoch := wire.Shard([]byte("held"), rShards), wire.FenceEpoch(fence)
		sess := holder.Session()
		valid := func(session, req uint64, sh, ep uint32, mode wire.Mode) []byte {
			p, err := wire.Acquire{Try: true, Mode: mode, Name: []byte("held"), Start: wire.WholeStart, End: wire.WholeEnd}.
				Append(nil, wire.Header{Session: session, Request: req, Ack: 1, Shard: sh, Epoch: ep})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		reseal := func(p []byte) []byte { wire.Seal(p); return p }
		rng := rand.New(rand.NewPCG(seed, 7))
		// A reason "auth:R" is counted in tokend_worker_auth_failures_total
		// under R: a datagram of a session without the session's tag is
		// refused before its body is looked at (wire/SPEC.md section 20).
		kinds := []struct {
			reason string // the drop reason it must be counted under
			make   func() []byte
		}{
			{"short", func() []byte { return valid(sess, 1, shard, epoch, wire.EX)[:rng.IntN(64)] }},
			{"too_large", func() []byte {
				return append(valid(sess, 1, shard, epoch, wire.EX), make([]byte, 1300+rng.IntN(30000))...)
			}},
			{"checksum", func() []byte {
				p := valid(sess, 1, shard, epoch, wire.EX)
				p[64+rng.IntN(len(p)-64)] ^= 1 << rng.IntN(8)
				return p
			}},
			{"length", func() []byte { p := valid(sess, 1, shard, epoch, wire.EX); return p[:len(p)-1-rng.IntN(10)] }},
			{"bad_magic", func() []byte { p := valid(sess, 1, shard, epoch, wire.EX); p[0] = 'X'; return reseal(p) }},
			{"version", func() []byte { p := valid(sess, 1, shard, epoch, wire.EX); p[2] = 1; return reseal(p) }},
			{"unknown_type", func() []byte { p := valid(sess, 1, shard, epoch, wire.EX); p[3] = 0x3F; return reseal(p) }},
			{"auth:bad_tag", func() []byte { p := valid(sess, 1, shard, epoch, wire.EX); p[50] = 1; return reseal(p) }},
			{"not_request", func() []byte { // a well-formed reply, sent to the worker
				p, _ := wire.ErrorBody{}.Append(nil, wire.Header{Type: wire.TypeAcquire | 0x80, Status: wire.StatusConflict,
					Session: sess, Request: 1, Shard: shard, Epoch: epoch})
				return p
			}},
			{"auth:bad_tag", func() []byte { // the holder's own RELEASE, with the right fence, forged
				p, _ := wire.Release{Fence: fence, Name: []byte("held")}.Append(nil,
					wire.Header{Session: sess, Request: 1<<40 + rng.Uint64N(1<<20), Ack: 1, Shard: shard, Epoch: epoch})
				return p
			}},
			{"auth:unknown_session", func() []byte { return valid(sess^(1+rng.Uint64N(1<<40)), 1<<40, shard, epoch, wire.EX) }},
			{"", func() []byte { // random bytes: whatever reason they fail with
				p := make([]byte, rng.IntN(1500))
				for i := range p {
					p[i] = byte(rng.UintN(256))
				}
				return p
			}},
		}
		var conns []net.PacketConn
		for range 4 {
			pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			conns = append(conns, pc)
		}
		to, _ := net.ResolveUDPAddr("udp4", w.addr())
		dur := 2 * time.Second
		if long {
			dur = 30 * time.Second
		}
		sent := map[string]int{}
		for end, n := time.Now().Add(dur), 0; time.Now().Before(end) && n < 5_000_000; n++ {
			k := kinds[rng.IntN(len(kinds))]
			conns[rng.IntN(len(conns))].WriteTo(k.make(), to)
			sent[k.reason]++
			if n%100 == 99 {
				time.Sleep(time.Millisecond) // stay within the socket buffers, mostly
			}
		}
		t.Logf("sent %v", sent)
		time.Sleep(500 * time.Millisecond)
		if w.p.Exited() {
			t.Fatal("the worker process exited")
		}
		after, err := workerMetrics(loop(w.http))
		if err != nil {
			t.Fatalf("the worker no longer serves /metrics: %v", err)
		}
		drop := func(m map[string]float64, reason string) float64 {
			if r, ok := strings.CutPrefix(reason, "auth:"); ok {
				return m[`tokend_worker_auth_failures_total{reason="`+r+`"}`]
			}
			return m[`tokend_worker_dropped_datagrams_total{reason="`+reason+`"}`]
		}
		var total float64
		for k, v := range after {
			if strings.HasPrefix(k, "tokend_worker_dropped_datagrams_total") {
				total += v - before[k]
				t.Logf("%s +%v", k, v-before[k])
			}
		}
		for _, k := range kinds {
			if k.reason != "" && drop(after, k.reason) <= drop(before, k.reason) {
				t.Errorf("reason %q: no drops counted for %d such datagrams", k.reason, sent[k.reason])
			}
		}
		n := 0
		for _, v := range sent {
			n += v
		}
		t.Logf("%d datagrams sent, %v drops counted (the rest lost in socket buffers)", n, total)
		for _, g := range []string{"tokend_worker_held_tokens", "tokend_worker_sessions"} {
			if before[g] != after[g] {
				t.Errorf("%s changed from %v to %v", g, before[g], after[g])
			}
		}
		if !tok.Valid() || tok.Fence() != fence {
			t.Errorf("held token: Valid %v, fence %#x (was %#x), err %v", tok.Valid(), tok.Fence(), fence, tok.Err())
		}
		probe, _ := c.dial(clientlib.Config{})
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := probe.Acquire(ctx, "held", wire.EX, clientlib.Try()); err == nil {
			t.Error("the held token was granted to another client")
		}
		pt, err := probe.Acquire(ctx, "free", wire.EX)
		if err != nil {
			t.Fatalf("the worker stopped serving: %v", err)
		}
		if err := pt.Release(ctx); err != nil {
			t.Errorf("release: %v", err)
		}
	})
}
