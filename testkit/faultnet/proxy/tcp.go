package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// TCP is a TCP relay from one listening address to one upstream whose
// directions can be stalled: while a direction is cut, bytes in it are held
// (the connection stays open, as across a partition that drops packets
// and lets TCP retransmit), and flow again when it heals. Reset closes every
// relayed connection (a partition long enough for TCP to give up, or a
// middlebox reset). Workers reach etcd through one to cut them off from it.
type TCP struct {
	ln       net.Listener
	upstream string
	wg       sync.WaitGroup

	mu    sync.Mutex // guards the fields below
	cond  *sync.Cond // signalled when cut changes or the relay closes
	cut   Dir
	conns map[net.Conn]struct{}
	gen   int // bumped by Reset: stalled pipes of older connections give up
	done  bool
}

// NewTCP listens on listen ("127.0.0.1:0" picks a port) and relays every
// connection to upstream.
func NewTCP(listen, upstream string) (*TCP, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	t := &TCP{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	t.cond = sync.NewCond(&t.mu)
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr returns the listening address.
func (t *TCP) Addr() string { return t.ln.Addr().String() }

// SetCut stalls the directions in dir (Up: towards upstream) and lets the
// others flow.
func (t *TCP) SetCut(dir Dir) {
	t.mu.Lock()
	t.cut = dir
	t.mu.Unlock()
	t.cond.Broadcast()
}

// Reset closes every relayed connection; new ones are accepted.
func (t *TCP) Reset() {
	t.mu.Lock()
	t.gen++
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.cond.Broadcast()
}

// Close stops the relay and waits for its goroutines.
func (t *TCP) Close() error {
	t.mu.Lock()
	t.done = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.cond.Broadcast()
	err := t.ln.Close()
	t.wg.Wait()
	return err
}

func (t *TCP) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		c.Close()
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *TCP) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.Close()
}

func (t *TCP) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !t.track(c) {
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(c)
			u, err := net.DialTimeout("tcp", t.upstream, 2*time.Second)
			if err != nil {
				return
			}
			if !t.track(u) {
				return
			}
			defer t.untrack(u)
			t.mu.Lock()
			gen := t.gen
			t.mu.Unlock()
			var pw sync.WaitGroup
			pw.Add(2)
			go func() { defer pw.Done(); t.pipe(u, c, Up, gen); u.Close(); c.Close() }()
			go func() { defer pw.Done(); t.pipe(c, u, Down, gen); u.Close(); c.Close() }()
			pw.Wait()
		}()
	}
}

// pipe copies src to dst, holding each chunk while direction d is cut.
func (t *TCP) pipe(dst, src net.Conn, d Dir, gen int) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			t.mu.Lock()
			for t.cut&d != 0 && !t.done && t.gen == gen {
				t.cond.Wait()
			}
			done := t.done || t.gen != gen
			t.mu.Unlock()
			if done {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF or a closed connection
		}
	}
}
