package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/net/ipv4"
)

// echoBatch is how many datagrams the echo server reads and writes per
// system call: the worker's batch size.
const echoBatch = 64

// echoServer answers every datagram with itself, batching like the worker:
// one goroutine, ReadBatch of up to 64 datagrams, one WriteBatch of the
// replies. It is "the limit": the network path of a token request without
// any token work.
type echoServer struct {
	conn *net.UDPConn
	pc   *ipv4.PacketConn
	done chan struct{}
}

// startEcho starts an echo server on 127.0.0.1 (a free port).
func startEcho() (*echoServer, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("bench: echo server: %w", err)
	}
	s := &echoServer{conn: conn, pc: ipv4.NewPacketConn(conn), done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *echoServer) addr() *net.UDPAddr { return s.conn.LocalAddr().(*net.UDPAddr) }

func (s *echoServer) serve() {
	defer close(s.done)
	in := make([]ipv4.Message, echoBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1536)}
	}
	out := make([]ipv4.Message, 0, echoBatch)
	for {
		n, err := s.pc.ReadBatch(in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond) // do not spin on a persistent error
			continue
		}
		out = out[:0]
		for i := range in[:n] {
			out = append(out, ipv4.Message{Buffers: [][]byte{in[i].Buffers[0][:in[i].N]}, Addr: in[i].Addr})
		}
		for ms := out; len(ms) > 0; {
			k, err := s.pc.WriteBatch(ms, 0)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				k++ // skip the one that failed
			}
			ms = ms[min(k, len(ms)):]
		}
	}
}

// close stops the server and waits for its goroutine.
func (s *echoServer) close() {
	s.conn.Close()
	<-s.done
}

// echoClient is one synchronous client: its own connected socket, one
// datagram in flight, like a clientlib client waiting for a reply.
type echoClient struct {
	conn *net.UDPConn
	out  []byte
	in   []byte
	seq  uint64
}

func newEchoClient(srv *net.UDPAddr, payload int) (*echoClient, error) {
	conn, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, srv)
	if err != nil {
		return nil, fmt.Errorf("bench: echo client: %w", err)
	}
	return &echoClient{conn: conn, out: make([]byte, max(payload, 8)), in: make([]byte, 1536)}, nil
}

// roundTrip sends one datagram and waits for its echo, resending every
// 20 ms (the client library's first timeout) at most 50 times.
func (c *echoClient) roundTrip() error {
	c.seq++
	for i := range 8 {
		c.out[i] = byte(c.seq >> (8 * i))
	}
	for range 50 {
		if _, err := c.conn.Write(c.out); err != nil {
			return err
		}
		c.conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			n, err := c.conn.Read(c.in)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return err
			}
			if n == len(c.out) && string(c.in[:8]) == string(c.out[:8]) {
				return nil
			}
		}
	}
	return errors.New("bench: echo: no reply")
}

// runEcho measures round trips per second and their latency with 1 and
// with cfg.Clients datagrams in flight.
func runEcho(ctx context.Context, cfg *Config) ([]Result, error) {
	srv, err := startEcho()
	if err != nil {
		return nil, err
	}
	defer srv.close()
	var out []Result
	for _, n := range dedupe(1, cfg.Clients) {
		cfg.progress("echo: %d in flight", n)
		clients := make([]*echoClient, n)
		for i := range clients {
			if clients[i], err = newEchoClient(srv.addr(), cfg.Payload); err != nil {
				closeEcho(clients)
				return nil, err
			}
		}
		res, err := measure(ctx, cfg, n, func(_ context.Context, i int, r *rec) error {
			t0 := time.Now()
			if err := clients[i].roundTrip(); err != nil {
				return err
			}
			r.record(0, time.Since(t0))
			return nil
		})
		closeEcho(clients)
		if err != nil {
			return out, err
		}
		out = append(out, Result{
			Workload: "echo", System: "udp-echo", Clients: n, Unit: "round trip",
			Note: fmt.Sprintf("%d-byte datagrams, server batches %d", cfg.Payload, echoBatch),
		}.with(&res, "round trip"))
	}
	return out, nil
}

func closeEcho(cs []*echoClient) {
	for _, c := range cs {
		if c != nil {
			c.conn.Close()
		}
	}
}

// dedupe returns its arguments without repeats, in order.
func dedupe(ns ...int) []int {
	var out []int
	seen := map[int]bool{}
	for _, n := range ns {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}
