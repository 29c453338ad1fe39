package worker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// BenchmarkAcquireRelease measures ACQUIRE (EX, TRY) + RELEASE pairs over
// real loopback UDP against one worker, with 1 and 8 clients in flight
// (each its own session, socket and token). It reports pairs/s.
//
// With auth=true the worker authenticates (wire/SPEC.md section 20): every
// datagram is sealed and checked at both ends.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, withAuth := range []bool{false, true} {
		b.Run(fmt.Sprintf("auth=%v", withAuth), func(b *testing.B) { benchAcquireRelease(b, withAuth) })
	}
}

func benchAcquireRelease(b *testing.B, withAuth bool) {
	var (
		w     *Worker
		alice auth.Key
	)
	if withAuth {
		f := newAuthFixture(b, Limits{})
		w, alice = f.w, f.alice
	} else {
		cli := testEtcd(b)
		w, _ = startWorker(b, cli, "bench", nil)
		serveAll(b, cli, w)
	}
	for _, inflight := range []int{1, 8} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) {
			loops := make([]*benchClient, inflight)
			for i := range loops {
				loops[i] = newBenchClient(b, w, fmt.Sprintf("bench/%d", i), withAuth, alice)
			}
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, l := range loops {
				n := b.N / inflight
				if i < b.N%inflight {
					n++
				}
				wg.Go(func() {
					if err := l.run(n); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
		})
	}
}

// benchClient is a lean synchronous client on a connected UDP socket.
type benchClient struct {
	conn    *net.UDPConn
	session uint64
	name    []byte
	shard   uint32
	id      uint64
	buf     []byte
	rbuf    []byte
	lastN   int       // length of the last reply in rbuf
	out, in *auth.MAC // with auth: the session's MACs
}

func newBenchClient(b *testing.B, w *Worker, name string, withAuth bool, key auth.Key) *benchClient {
	tc := udpClient(b, w)
	// The session outlives the benchmark without keepalives.
	if withAuth {
		tc.openAuth("alice", key, 60000)
	} else {
		tc.open(120000)
	}
	conn, err := net.DialUDP("udp4", nil, w.Addr())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &benchClient{conn: conn, session: tc.session, name: []byte(name),
		shard: wire.Shard([]byte(name), testShards), id: 1 << 20,
		buf: make([]byte, 0, wire.MaxDatagram), rbuf: make([]byte, 2048), out: tc.out, in: tc.in}
}

func (c *benchClient) run(n int) error {
	for range n {
		r, err := c.roundTrip(wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: c.name})
		if err != nil {
			return err
		}
		var g wire.Grant
		if err := g.Decode(r, c.rbuf[:c.lastN]); err != nil {
			return fmt.Errorf("acquire: %v %w", r.Status, err)
		}
		if r, err = c.roundTrip(wire.Release{Fence: g.Fence, Name: c.name}); err != nil {
			return err
		}
		if r.Status != wire.StatusOK {
			return fmt.Errorf("release: %v", r.Status)
		}
	}
	return nil
}

// roundTrip sends a new request and waits for its reply, retransmitting
// every 100 ms.
func (c *benchClient) roundTrip(m appender) (wire.Header, error) {
	c.id++
	h := wire.Header{Session: c.session, Request: c.id, Ack: c.id, Shard: c.shard, Epoch: 1}
	pkt, err := m.Append(c.buf[:0], h)
	if err != nil {
		return h, err
	}
	if c.out != nil {
		if err := c.out.Seal(pkt); err != nil {
			return h, err
		}
	}
	for try := 0; try < 50; try++ {
		if _, err := c.conn.Write(pkt); err != nil {
			return h, err
		}
		c.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			n, err := c.conn.Read(c.rbuf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return h, err
			}
			rh, err := wire.ParseHeader(c.rbuf[:n])
			if err == nil && rh.Request == c.id && rh.Type.IsReply() {
				if c.in != nil && !c.in.Verify(c.rbuf[:n]) {
					return h, fmt.Errorf("reply to request %d does not verify", c.id)
				}
				c.lastN = n
				return rh, nil
			}
		}
	}
	return h, fmt.Errorf("no reply to request %d", c.id)
}
