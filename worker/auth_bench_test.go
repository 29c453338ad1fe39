package worker

import (
	"net"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/allocs"
	"github.com/tokend/tokend/wire"
)

// recvFixture is a worker with one open session, driven by calling its
// receive path (Worker.handle) directly: what one datagram costs the
// worker, without the sockets.
type recvFixture struct {
	w    *Worker
	c    *tclient
	from *net.UDPAddr
	ob   *outbox
	next uint64
}

func newRecvFixture(tb testing.TB, withAuth bool) *recvFixture {
	tb.Helper()
	f := &recvFixture{ob: &outbox{}, from: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}}
	if withAuth {
		af := newAuthFixture(tb, Limits{})
		f.w = af.w
		f.c = udpClient(tb, f.w)
		f.c.openAuth("alice", af.alice, 120000)
	} else {
		cli := testEtcd(tb)
		f.w, _ = startWorker(tb, cli, "w1", nil)
		serveAll(tb, cli, f.w)
		f.c = udpClient(tb, f.w)
		f.c.open(120000)
	}
	f.next = 1 << 20
	return f
}

// pkt encodes (and, with a session key, seals) request m with id.
func (f *recvFixture) pkt(tb testing.TB, m appender, id uint64, shard uint32) []byte {
	p, err := m.Append(nil, wire.Header{Session: f.c.session, Request: id, Ack: id, Shard: shard, Epoch: 1})
	if err != nil {
		tb.Fatal(err)
	}
	if f.c.out != nil {
		f.c.out.Seal(p)
	}
	return p
}

// handle runs one datagram through the receive path, as recvLoop does.
func (f *recvFixture) handle(p []byte) {
	now := time.Now()
	f.w.mu.Lock()
	f.ob.reset(now, f.w.mono(now), f.w.safeUntil())
	f.w.handle(f.ob, p, f.from)
	f.w.mu.Unlock()
}

// BenchmarkReceive measures the receive path of one datagram (parse,
// authenticate, decide, apply, encode and seal the reply) with and
// without authentication: a new KEEPALIVE (answered with a fresh reply),
// a retransmitted ACQUIRE answered from the reply cache, and a datagram
// with a bad tag (dropped).
func BenchmarkReceive(b *testing.B) {
	for _, mode := range []struct {
		name string
		auth bool
	}{{"insecure", false}, {"auth", true}} {
		b.Run(mode.name, func(b *testing.B) {
			f := newRecvFixture(b, mode.auth)
			name := []byte("bench")
			sh := wire.Shard(name, testShards)
			b.Run("keepalive", func(b *testing.B) {
				const chunk = 4096
				pkts := make([][]byte, 0, chunk)
				b.ReportAllocs()
				for i := 0; i < b.N; i++ {
					if i%chunk == 0 {
						b.StopTimer()
						pkts = pkts[:0]
						for range chunk {
							f.next++
							pkts = append(pkts, f.pkt(b, wire.Keepalive{Entries: []wire.ShardEpoch{{Shard: sh, Epoch: 1}}}, f.next, 0))
						}
						b.StartTimer()
					}
					f.handle(pkts[i%chunk])
				}
			})
			b.Run("resend", func(b *testing.B) {
				f.next++
				p := f.pkt(b, wire.Acquire{Try: true, Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte("r")}, f.next, wire.Shard([]byte("r"), testShards))
				f.handle(p)
				b.ReportAllocs()
				for b.Loop() {
					f.handle(p)
				}
			})
			b.Run("bad-tag", func(b *testing.B) {
				f.next++
				p := f.pkt(b, wire.Keepalive{}, f.next, 0)
				p[wire.AuthOffset] ^= 1
				wire.Seal(p)
				b.ReportAllocs()
				for b.Loop() {
					f.handle(p)
				}
			})
		})
	}
}

// TestAuthAllocs: authenticating a datagram allocates nothing: a
// retransmission answered from the reply cache and a forged datagram
// dropped cost no allocation on the receive path.
func TestAuthAllocs(t *testing.T) {
	f := newAuthFixture(t, Limits{})
	c := udpClient(t, f.w)
	c.openAuth("alice", f.alice, 0)
	rf := &recvFixture{w: f.w, c: c, ob: &outbox{}, from: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}}
	name := []byte("r")
	p := rf.pkt(t, wire.Acquire{Try: true, Mode: wire.PR, Start: wire.WholeStart, End: wire.WholeEnd, Name: name}, 1<<20, wire.Shard(name, testShards))
	rf.handle(p)
	forged := append([]byte(nil), p...)
	forged[wire.AuthOffset] ^= 1
	wire.Seal(forged)
	for _, tc := range []struct {
		name string
		pkt  []byte
	}{{"resend", p}, {"bad tag", forged}} {
		rf.handle(tc.pkt) // the metric children exist
		// The worker's own loops run beside: allocs.PerRun.
		if n := allocs.PerRun(200, func() { rf.handle(tc.pkt) }); n != 0 {
			t.Errorf("%s: %v allocations per datagram", tc.name, n)
		}
	}
}
