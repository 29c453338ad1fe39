package clientlib

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// recordConn is a batchConn that keeps what WriteBatch was given, at most
// max per call (as a socket may take fewer than offered).
type recordConn struct {
	mu    sync.Mutex
	max   int
	got   []string
	calls int
}

func (r *recordConn) ReadBatch([]ipv4.Message, int) (int, error) { select {} }

func (r *recordConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	n := min(len(ms), r.max)
	for _, m := range ms[:n] {
		r.got = append(r.got, string(m.Buffers[0]))
	}
	time.Sleep(50 * time.Microsecond) // a system call's worth: lets others queue
	return n, nil
}

// TestSendQueueSendsEachOnce: many goroutines sending at once through the
// combiner; every datagram goes out exactly once, with its own bytes (the
// sender's buffer is reused at once), whether sent directly or queued.
func TestSendQueueSendsEachOnce(t *testing.T) {
	rc := &recordConn{max: 5}
	q := &sendQueue{bc: rc}
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	var direct sync.Map
	const goroutines, each = 16, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			buf := make([]byte, 0, 32)
			for i := range each {
				buf = fmt.Appendf(buf[:0], "%d/%d", g, i)
				how := q.enqueue(buf, to, g%4 != 0)
				if how != sendQueued {
					direct.Store(string(buf), true)
				}
				clear(buf[:cap(buf)]) // the caller reuses its buffer at once
				if how == sendNow {
					q.drain(func(err error) { t.Errorf("send failed: %v", err) })
				}
			}
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for _, s := range rc.got {
		seen[s]++
	}
	direct.Range(func(k, _ any) bool {
		seen[k.(string)]++
		return true
	})
	for g := range goroutines {
		for i := range each {
			if k := fmt.Sprintf("%d/%d", g, i); seen[k] != 1 {
				t.Fatalf("datagram %s sent %d times", k, seen[k])
			}
		}
	}
	if len(seen) != goroutines*each {
		t.Fatalf("%d distinct datagrams sent, want %d (bytes changed under the queue?)", len(seen), goroutines*each)
	}
	if q.busy || len(q.q) != 0 {
		t.Fatalf("queue left busy=%v with %d datagrams", q.busy, len(q.q))
	}
	t.Logf("%d datagrams, %d queued, in %d sendmmsg calls", goroutines*each, len(rc.got), rc.calls)
}

// TestBatchReaderSources: the receive loop's reader gives each datagram's
// bytes and source, IPv4 sources unmapped, from IPv4 and IPv6 senders on a
// dual-stack socket (the client's own) and from an IPv4-only one.
func TestBatchReaderSources(t *testing.T) {
	for _, network := range []string{"udp", "udp4"} {
		t.Run(network, func(t *testing.T) {
			pc, err := net.ListenPacket(network, ":0")
			if err != nil {
				t.Skip(err)
			}
			t.Cleanup(func() { _ = pc.Close() })
			uc := pc.(*net.UDPConn)
			port := uc.LocalAddr().(*net.UDPAddr).Port
			rb := newBatchReader(newBatchConn(pc), uc)
			senders := []string{"127.0.0.1"}
			if network == "udp" {
				senders = append(senders, "::1")
			}
			want := map[string]netip.AddrPort{}
			for i, host := range senders {
				s, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
				if err != nil {
					t.Logf("no %s: %v", host, err)
					continue
				}
				t.Cleanup(func() { _ = s.Close() })
				dst := &net.UDPAddr{IP: net.ParseIP(host), Port: port}
				for k := range 3 {
					msg := fmt.Sprintf("%d-%d", i, k)
					if _, err := s.WriteTo([]byte(msg), dst); err != nil {
						t.Fatal(err)
					}
					ap := s.LocalAddr().(*net.UDPAddr).AddrPort()
					want[msg] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
				}
			}
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			for len(want) > 0 {
				n, err := rb.read()
				if err != nil {
					t.Fatalf("read: %v (still missing %v)", err, want)
				}
				for i := range n {
					b, from := rb.datagram(i)
					w, ok := want[string(b)]
					if !ok {
						t.Fatalf("unexpected datagram %q from %v", b, from)
					}
					if from != w {
						t.Fatalf("datagram %q: source %v, want %v", b, from, w)
					}
					delete(want, string(b))
				}
			}
			// A deadline in the past ends a waiting read with an error, as
			// Close's wake-up of the receive loop needs.
			_ = pc.SetReadDeadline(time.Unix(1, 0))
			if n, err := rb.read(); err == nil {
				t.Fatalf("read past the deadline: %d datagrams, no error", n)
			}
		})
	}
}
