package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/tokend/tokend/internal/proc"
)

// echoBatch is how many datagrams the echo server reads and writes per
// system call: the worker's batch size.
const echoBatch = 64

// The echo server runs in a process of its own, like every server the
// bench compares: the bench re-executes its own binary with echoChildEnv
// set to "batched" or "plain", and EchoChild turns that process into an
// echo server that prints echoReady and its address, and serves until its
// standard input closes.
const (
	echoChildEnv = "TOKEND_BENCH_ECHO"
	echoReady    = "echo "
)

// Echo server kinds: batched reads and writes up to echoBatch datagrams per
// system call (recvmmsg/sendmmsg, as the worker does); plain one per call.
const (
	echoBatched = "batched"
	echoPlain   = "plain"
)

// runEchoChild serves echoes of the given kind on a free loopback port
// until stdin reaches EOF.
func runEchoChild(kind string, stdin io.Reader, stdout io.Writer) error {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fmt.Errorf("echo server: %w", err)
	}
	defer conn.Close()
	// The worker asks for 4 MB socket buffers; so does the limit.
	conn.SetReadBuffer(4 << 20)
	conn.SetWriteBuffer(4 << 20)
	go func() { // ends with the process
		io.Copy(io.Discard, stdin)
		conn.Close()
	}()
	fmt.Fprintf(stdout, "%s%s\n", echoReady, conn.LocalAddr())
	switch kind {
	case echoBatched:
		serveBatched(ipv4.NewPacketConn(conn))
	case echoPlain:
		servePlain(conn)
	default:
		return fmt.Errorf("echo server: unknown kind %q", kind)
	}
	return nil
}

// serveBatched answers every datagram with itself, batching like the
// worker: ReadBatch of up to 64 datagrams, one WriteBatch of the replies.
// It is "the limit": the network path of a token request without any
// token work.
func serveBatched(pc *ipv4.PacketConn) {
	in := make([]ipv4.Message, echoBatch)
	for i := range in {
		in[i].Buffers = [][]byte{make([]byte, 1536)}
	}
	out := make([]ipv4.Message, 0, echoBatch)
	for {
		n, err := pc.ReadBatch(in, 0)
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
			k, err := pc.WriteBatch(ms, 0)
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

// servePlain answers every datagram with itself, one system call each way.
func servePlain(conn *net.UDPConn) {
	b := make([]byte, 1536)
	for {
		n, from, err := conn.ReadFromUDPAddrPort(b)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond)
			continue
		}
		conn.WriteToUDPAddrPort(b[:n], from)
	}
}

// echoProc is an echo server process the bench started.
type echoProc struct {
	*proc.Process
	addr *net.UDPAddr
}

// startEcho starts an echo server process of the given kind and waits
// until it serves.
func startEcho(ctx context.Context, kind string) (*echoProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: no executable to start the echo server from: %w", err)
	}
	lw, lines := lineChan()
	p, err := startProc(proc.Spec{Name: "echo server", Path: exe, Env: []string{echoChildEnv + "=" + kind}, Stdout: lw, StdinPipe: true})
	if err != nil {
		return nil, err
	}
	e := &echoProc{Process: p}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case line := <-lines:
			if a, ok := strings.CutPrefix(line, echoReady); ok {
				if e.addr, err = net.ResolveUDPAddr("udp4", a); err != nil {
					e.close()
					return nil, fmt.Errorf("bench: echo server address %q: %w", a, err)
				}
				return e, nil
			}
		case <-p.Done():
			return nil, fmt.Errorf("bench: echo server exited: %v; its output: %s", p.State(), lastOutput(p, 1000))
		case <-t.C:
			e.close()
			return nil, fmt.Errorf("bench: echo server not ready within 10s; its output: %s", lastOutput(p, 1000))
		case <-ctx.Done():
			e.close()
			return nil, ctx.Err()
		}
	}
}

// close ends the process: its stdin closes, then SIGKILL if it lingers.
func (e *echoProc) close() {
	e.Stdin().Close()
	e.Kill()
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
// with cfg.Clients datagrams in flight, against an echo server process
// that batches (the limit the comparisons use, system udp-echo) and one
// that does not (udp-echo-plain).
func runEcho(ctx context.Context, cfg *Config) ([]Result, error) {
	var out []Result
	for _, kind := range []string{echoBatched, echoPlain} {
		srv, err := startEcho(ctx, kind)
		if err != nil {
			return out, err
		}
		cfg.serverCPU = func() time.Duration { return cpuOf(srv.Process) }
		rs, err := echoLoops(ctx, cfg, srv, kind)
		cfg.serverCPU = nil
		srv.close()
		out = append(out, rs...)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

func echoLoops(ctx context.Context, cfg *Config, srv *echoProc, kind string) ([]Result, error) {
	sys, note := "udp-echo", fmt.Sprintf("%d-byte datagrams, server process batches %d (recvmmsg/sendmmsg)", cfg.Payload, echoBatch)
	if kind == echoPlain {
		sys, note = "udp-echo-plain", fmt.Sprintf("%d-byte datagrams, server process: one recvfrom/sendto per datagram", cfg.Payload)
	}
	var out []Result
	for _, n := range dedupe(1, cfg.Clients) {
		cfg.progress("echo (%s): %d in flight", kind, n)
		clients := make([]*echoClient, n)
		for i := range clients {
			var err error
			if clients[i], err = newEchoClient(srv.addr, cfg.Payload); err != nil {
				closeEcho(clients)
				return out, err
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
		out = append(out, Result{Workload: "echo", System: sys, Clients: n, Unit: "round trip", Note: note}.with(&res, "round trip"))
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
