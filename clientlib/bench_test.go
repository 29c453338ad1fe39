package clientlib

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// leanWorker answers just what an uncontended acquire+release loop needs
// (SESSION_OPEN, MAP_REQUEST, KEEPALIVE, ACQUIRE with a GRANT, RELEASE and
// SESSION_CLOSE with OK) over real loopback UDP, without allocating per
// datagram, so that a benchmark's allocations and CPU are the client's.
// Every token is always free. With a key it authenticates like a worker
// (wire/SPEC.md section 20) but checks no cookie: every session's key
// comes from the key, the client's nonce, a zero worker nonce and the
// session id. It takes BUNDLEs and answers the datagrams of one in
// BUNDLE_REPLYs to a session that offered bundles (SPEC §22), unless
// noBundle, where it plays an older worker (drops an open with the flag
// and every BUNDLE). TEST ONLY.
type leanWorker struct {
	conn     *net.UDPConn
	addr     string
	shard    uint32
	key      *auth.Key // nil: insecure
	keyFile  string
	noBundle bool
	wg       sync.WaitGroup
}

func newLeanWorker(tb testing.TB, authenticate bool) *leanWorker {
	tb.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	w := &leanWorker{conn: conn, addr: conn.LocalAddr().String(), shard: 64}
	if authenticate {
		k, err := auth.NewKey()
		if err != nil {
			tb.Fatal(err)
		}
		w.key, w.keyFile = &k, filepath.Join(tb.TempDir(), "client.key")
		if err := os.WriteFile(w.keyFile, auth.FormatKeyFile("bench", k), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	w.wg.Add(1)
	go w.serve()
	tb.Cleanup(func() {
		_ = conn.Close()
		w.wg.Wait()
	})
	return w
}

// leanState is the lean worker's state and scratch space, owned by serve.
type leanState struct {
	session uint64
	fence   uint64
	ka      wire.Keepalive
	sts     []wire.Status
	mr      wire.MapRequest
	open    wire.SessionOpen
	// The MACs of each session by id, and whether it takes bundles: the
	// worker's only allocations are per session.
	macs    map[uint64][2]*auth.MAC
	bundles map[uint64]bool
}

func (w *leanWorker) serve() {
	defer w.wg.Done()
	buf := make([]byte, wire.MaxDatagram+1)
	out := make([]byte, 0, wire.MaxDatagram)
	bout := make([]byte, 0, wire.MaxDatagram) // the BUNDLE_REPLY being built
	st := &leanState{session: 0x1000, macs: map[uint64][2]*auth.MAC{}, bundles: map[uint64]bool{}}
	for {
		n, from, err := w.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		b := buf[:n]
		h, err := wire.ParseHeader(b)
		if err != nil {
			continue
		}
		if h.Type != wire.TypeBundle {
			var ok bool
			if out, ok = w.answer(st, h, b, out); ok {
				_, _ = w.conn.WriteToUDPAddrPort(out, from)
			}
			continue
		}
		if w.noBundle || wire.CheckBundle(h, b) != nil {
			continue
		}
		// Each datagram as if alone; the answers in BUNDLE_REPLYs if the
		// session takes them.
		bundle := st.bundles[h.Session]
		bout = bout[:0]
		nb := 0
		for e := b[wire.HeaderLen:]; len(e) > 0; {
			var d []byte
			d, e = wire.NextBundled(e)
			dh, err := wire.ParseHeader(d)
			if err != nil {
				continue
			}
			var ok bool
			if out, ok = w.answer(st, dh, d, out); !ok {
				continue
			}
			if !bundle || !wire.Bundles(wire.TypeBundleReply, wire.Type(out[3])) {
				_, _ = w.conn.WriteToUDPAddrPort(out, from)
				continue
			}
			if nb > 0 && !wire.BundleFits(len(bout), len(out)) {
				bout, nb = w.sendBundle(bout, nb, from)
			}
			if nb == 0 {
				rh, _ := wire.ParseHeader(out)
				bout = wire.AppendHeader(bout[:0], wire.Header{Type: wire.TypeBundleReply, Status: wire.StatusOK,
					Session: rh.Session, Request: rh.Request, MapVersion: rh.MapVersion})
			}
			bout = wire.AppendBundled(bout, out)
			nb++
		}
		if nb > 0 {
			w.sendBundle(bout, nb, from)
		}
	}
}

// sendBundle sends the BUNDLE_REPLY b of nb datagrams (one alone) and
// returns b emptied.
func (w *leanWorker) sendBundle(b []byte, nb int, to netip.AddrPort) ([]byte, int) {
	if nb == 1 {
		_, _ = w.conn.WriteToUDPAddrPort(b[wire.HeaderLen+wire.BundleEntryOverhead:], to)
	} else if wire.Seal(b) == nil {
		_, _ = w.conn.WriteToUDPAddrPort(b, to)
	}
	return b[:0], 0
}

// answer returns in out the answer to datagram b with header h, or false
// for none.
func (w *leanWorker) answer(st *leanState, h wire.Header, b, out []byte) ([]byte, bool) {
	rh := h.Reply()
	rh.MapVersion = 1
	var w2c *auth.MAC
	if w.key != nil && h.Type != wire.TypeSessionOpen {
		m, ok := st.macs[h.Session]
		if !ok || !m[0].Verify(b) {
			return out, false
		}
		w2c = m[1]
	}
	var err error
	switch h.Type {
	case wire.TypeSessionOpen:
		if st.open.Decode(h, b) != nil || (w.noBundle && st.open.Bundle) {
			return out, false
		}
		if w.key != nil && len(st.open.Cookie) == 0 {
			out, err = wire.Cookie{}.Append(out[:0], rh)
			break
		}
		st.session++
		rh.Session = st.session
		if w.key != nil {
			sk := auth.SessionKey(*w.key, auth.Nonce(st.open.Nonce), auth.Nonce{}, st.session)
			w2c = auth.NewMAC(sk, auth.WorkerToClient)
			st.macs[st.session] = [2]*auth.MAC{auth.NewMAC(sk, auth.ClientToWorker), w2c}
		}
		st.bundles[st.session] = st.open.Bundle
		out, err = wire.SessionReply{TTLMs: 10000, ShardCount: w.shard, GraceMs: 1000, WorkerTTLMs: 5000,
			Bundle: st.open.Bundle}.Append(out[:0], rh)
	case wire.TypeMapRequest:
		if st.mr.Decode(h, b) != nil {
			return out, false
		}
		out, err = wire.MapReply{MapVersion: 1, ShardCount: w.shard, GraceMs: 1000,
			Workers: []wire.MapWorker{{Index: 0, Addr: []byte(w.addr), ID: []byte("lean")}},
			Runs:    []wire.MapRun{{First: 0, Count: w.shard, Worker: 0, Epoch: 1}}}.Append(out[:0], rh)
	case wire.TypeKeepalive:
		if st.ka.Decode(h, b) != nil {
			return out, false
		}
		st.sts = st.sts[:0]
		for range st.ka.Entries {
			st.sts = append(st.sts, wire.StatusOK)
		}
		r := wire.KeepaliveReply{ValidityMs: 4000, Statuses: st.sts}
		if st.ka.Renew {
			r.SessionTTLMs = 10000
		}
		out, err = r.Append(out[:0], rh)
	case wire.TypeAcquire:
		st.fence++
		out, err = wire.Grant{Fence: wire.MakeFence(1, st.fence), Mode: wire.EX, ValidityMs: 4000,
			End: wire.WholeEnd}.Append(out[:0], rh)
	case wire.TypeRelease, wire.TypeSessionClose:
		out, err = wire.Empty{}.Append(out[:0], rh)
	default:
		return out, false
	}
	if err == nil && w2c != nil {
		err = w2c.Seal(out)
	}
	if err != nil {
		panic(fmt.Sprintf("lean worker cannot encode %v: %v", rh.Type, err))
	}
	return out, true
}

// BenchmarkAcquireRelease measures the client's acquire+release pairs
// against a lean worker over loopback UDP: each client loops on its own
// token; auth=true authenticates every datagram (both sides' cost), false
// is a cluster started with --insecure. The worker does not allocate per
// datagram, so allocs/op is the client's (per pair: two requests).
//
//	go test ./clientlib -run '^$' -bench AcquireRelease -benchmem -count 5
func BenchmarkAcquireRelease(b *testing.B) {
	for _, authenticate := range []bool{false, true} {
		w := newLeanWorker(b, authenticate)
		b.Run(fmt.Sprintf("auth=%v", authenticate), func(b *testing.B) { benchAcquireRelease(b, w) })
	}
}

func benchAcquireRelease(b *testing.B, w *leanWorker) {
	for _, v := range []struct{ clients, goroutines int }{{1, 1}, {16, 16}, {1, 16}, {1, 64}} {
		b.Run(fmt.Sprintf("clients=%d/goroutines=%d", v.clients, v.goroutines), func(b *testing.B) {
			ctx := context.Background()
			n := v.goroutines
			cs := make([]*Client, n)
			for i := range cs {
				if i >= v.clients {
					cs[i] = cs[i%v.clients]
					continue
				}
				dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				c, err := DialConfig(dctx, Config{Seeds: []string{w.addr}, KeyFile: w.keyFile, Insecure: w.key == nil}) // no token cache: every pair goes to the worker
				cancel()
				if err != nil {
					b.Fatal(err)
				}
				cs[i] = c
			}
			defer func() {
				for _, c := range cs[:v.clients] {
					_ = c.Close()
				}
			}()
			b.ReportAllocs()
			cpu0 := processCPU()
			b.ResetTimer()
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i, c := range cs {
				k := b.N / n
				if i < b.N%n {
					k++
				}
				name := fmt.Sprintf("bench/%d", i)
				wg.Go(func() {
					for range k {
						tok, err := c.Acquire(ctx, name, wire.EX)
						if err != nil {
							errs[i] = err
							return
						}
						if err := tok.Release(ctx); err != nil {
							errs[i] = err
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			for _, err := range errs {
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
			// CPU per pair (client and lean worker together): steadier than
			// pairs/s on a shared machine.
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/pair")
			var sent, calls, bundled, bundles uint64
			for _, c := range cs[:v.clients] {
				st := c.Stats()
				sent, bundled, bundles = sent+st.Sent, bundled+st.BundledSent, bundles+st.BundlesSent
				calls += c.sendq.calls.Load()
			}
			b.ReportMetric(float64(calls)/float64(sent), "sendcalls/datagram")
			// How much went in BUNDLEs, and the UDP datagrams the clients
			// sent per pair (2 without bundles).
			b.ReportMetric(float64(bundled)/float64(sent), "bundled/datagram")
			b.ReportMetric(float64(sent-bundled+bundles)/float64(b.N), "udp/pair")
		})
	}
}

// BenchmarkCachedReacquire measures re-acquire+release pairs served by the
// token cache: one client, one goroutine, one token it keeps re-acquiring
// (against a lean worker, authenticated, which sees only the first acquire
// and the keepalives). datagrams/op counts everything the client sent
// during the loop, keepalives included.
//
//	go test ./clientlib -run '^$' -bench CachedReacquire -benchmem -cpu 1
func BenchmarkCachedReacquire(b *testing.B) {
	w := newLeanWorker(b, true)
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := DialConfig(dctx, Config{Seeds: []string{w.addr}, KeyFile: w.keyFile, TokenCache: DefaultTokenCache})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Acquire(ctx, "bench/cached", wire.EX)
	if err != nil {
		b.Fatal(err)
	}
	if err := tok.Release(ctx); err != nil {
		b.Fatal(err)
	}
	before := c.Stats()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		tok, err := c.Acquire(ctx, "bench/cached", wire.EX)
		if err != nil {
			b.Fatal(err)
		}
		if err := tok.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := c.Stats()
	if hits := after.CacheHits - before.CacheHits; hits != uint64(b.N) {
		b.Fatalf("%d cache hits for %d pairs", hits, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
	b.ReportMetric(float64(after.Sent-before.Sent)/float64(b.N), "datagrams/op")
}

// BenchmarkSessionTag measures what authentication adds per datagram on
// the client: sealing an ACQUIRE (sealSession, under the session's send
// lock) and verifying a GRANT (verifySession, recvLoop's check).
//
//	go test ./clientlib -run '^$' -bench SessionTag -benchmem
func BenchmarkSessionTag(b *testing.B) {
	k, _ := auth.NewKey()
	c := &Client{key: &clientKey{name: "bench", key: k, open: auth.OpenKey(k)}}
	c.keys.Store(newSessionKeys(k, auth.Nonce{1}, auth.Nonce{2}, 42))
	name := []byte("file/7/page/3")
	h := wire.Header{Type: wire.TypeAcquire, Session: 42, Request: 10, Ack: 10,
		Shard: wire.Shard(name, 64), Epoch: 1, MapVersion: 1}
	acq, err := wire.Acquire{Mode: wire.EX, WaitMs: wire.WaitForever, Name: name}.Append(nil, h)
	if err != nil {
		b.Fatal(err)
	}
	rh := h.Reply()
	grant, err := wire.Grant{Fence: wire.MakeFence(1, 1), Mode: wire.EX, ValidityMs: 1000}.Append(nil, rh)
	if err == nil {
		err = auth.NewMAC(auth.SessionKey(k, auth.Nonce{1}, auth.Nonce{2}, 42), auth.WorkerToClient).Seal(grant)
	}
	if err != nil {
		b.Fatal(err)
	}
	b.Run("seal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := c.sealSession(acq); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !c.verifySession(grant) {
				b.Fatal("the grant does not verify")
			}
		}
	})
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
