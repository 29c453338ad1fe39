package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tokend/tokend/internal/proc"
)

// Redis is what people pick for a fast lock. The bench measures the
// single-instance recipe of the Redis documentation: acquire with
// SET key token NX PX 10000, release with a Lua compare-and-delete (only
// the holder's token deletes the key), against a redis-server the bench
// starts on loopback (--save '' --appendonly no) when one is installed.
// The client is a minimal RESP implementation (redisConn), one TCP
// connection per client, one command in flight, as a lock client is used.

// ErrNoRedis: redis-server is not installed; the Redis rows are skipped.
var ErrNoRedis = fmt.Errorf("%w: redis-server not found (Debian package redis-server)", ErrSkipped)

// redisRelease deletes the key only if it still holds the caller's token.
const redisRelease = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`

// redisRetry is how long a contended client waits before it tries SET NX
// again (Redis has no queue and no notification: clients poll).
const redisRetry = time.Millisecond

// redisConn is one RESP connection. Not safe for concurrent use.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dialRedis(ctx context.Context, addr string) (*redisConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &redisConn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}, nil
}

func (c *redisConn) close() error { return c.c.Close() }

// redisError is an error reply ("-ERR ...").
type redisError string

func (e redisError) Error() string { return "redis: " + string(e) }

// do sends one command and reads its reply: a string (simple or bulk), an
// int64, nil (null bulk or array), []any, or a redisError.
func (c *redisConn) do(args ...string) (any, error) {
	c.c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c.w, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(c.w, "$%d\r\n%s\r\n", len(a), a)
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	v, err := c.read()
	if err != nil {
		return nil, err
	}
	if e, ok := v.(redisError); ok {
		return nil, e
	}
	return v, nil
}

func (c *redisConn) line() (string, error) {
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasSuffix(s, "\r\n") {
		return "", errors.New("redis: malformed reply line")
	}
	return s[:len(s)-2], nil
}

func (c *redisConn) read() (any, error) {
	s, err := c.line()
	if err != nil {
		return nil, err
	}
	if s == "" {
		return nil, errors.New("redis: empty reply")
	}
	switch s[0] {
	case '+':
		return s[1:], nil
	case '-':
		return redisError(s[1:]), nil
	case ':':
		return strconv.ParseInt(s[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(s[1:])
		if err != nil || n < -1 || n > 512<<20 {
			return nil, fmt.Errorf("redis: bad bulk length %q", s)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(s[1:])
		if err != nil || n < -1 || n > 1<<20 {
			return nil, fmt.Errorf("redis: bad array length %q", s)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = c.read(); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unknown reply %q", s)
}

// redisLock is one lock client: a connection and the release script's SHA.
type redisLock struct {
	*redisConn
	sha string
	seq int
}

// tryLock sets key to a fresh token if it is not set: true if it now
// holds the lock.
func (l *redisLock) tryLock(key string) (string, bool, error) {
	l.seq++
	tok := strconv.Itoa(l.seq) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	v, err := l.do("SET", key, tok, "NX", "PX", "10000")
	if err != nil {
		return "", false, err
	}
	return tok, v == "OK", nil
}

// unlock deletes key if it holds tok.
func (l *redisLock) unlock(key, tok string) error {
	v, err := l.do("EVALSHA", l.sha, "1", key, tok)
	if err != nil {
		return err
	}
	if v != int64(1) {
		return fmt.Errorf("redis: release of %s: not held (%v)", key, v)
	}
	return nil
}

// redisServer is a redis-server process the bench started.
type redisServer struct {
	*proc.Process
	addr string
}

// startRedis starts redis-server on a free loopback port without
// persistence and waits until it answers PING.
func startRedis(ctx context.Context) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, ErrNoRedis
	}
	port := freeTCPPort()
	if port == 0 {
		return nil, errors.New("bench: no free TCP port for redis-server")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := startProc(proc.Spec{Name: "redis-server", Path: bin, Args: []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning", "--dir", tempDirForRedis()}})
	if err != nil {
		return nil, err
	}
	s := &redisServer{Process: p, addr: addr}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialRedis(ctx, addr)
		if err == nil {
			v, err := c.do("PING")
			c.close()
			if err == nil && v == "PONG" {
				return s, nil
			}
		}
		if p.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			p.Kill()
			return nil, fmt.Errorf("bench: redis-server on %s not answering: %v; its output: %s", addr, err, lastOutput(p, 1000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tempDirForRedis is where redis-server may write (it writes nothing with
// --save ” and --appendonly no): the run's build directory.
func tempDirForRedis() string {
	d, err := buildTemp()
	if err != nil {
		return "/tmp"
	}
	return d
}

// dialRedisLocks opens n lock clients and loads the release script.
func dialRedisLocks(ctx context.Context, addr string, n int) ([]*redisLock, error) {
	ls := make([]*redisLock, 0, n)
	for range n {
		c, err := dialRedis(ctx, addr)
		if err != nil {
			closeRedisLocks(ls)
			return nil, err
		}
		v, err := c.do("SCRIPT", "LOAD", redisRelease)
		sha, _ := v.(string)
		if err != nil || sha == "" {
			c.close()
			closeRedisLocks(ls)
			return nil, fmt.Errorf("bench: redis SCRIPT LOAD: %v (%v)", err, v)
		}
		ls = append(ls, &redisLock{redisConn: c, sha: sha})
	}
	return ls, nil
}

func closeRedisLocks(ls []*redisLock) {
	for _, l := range ls {
		l.close()
	}
}

// runRedis measures the lock recipe uncontended (each client on its own
// key; 1 and cfg.Clients connections) and contended (cfg.Clients on one
// key, retrying SET NX every millisecond; each acquisition is released at
// once: a handoff).
func runRedis(ctx context.Context, cfg *Config) ([]Result, error) {
	srv, err := startRedis(ctx)
	if err != nil {
		return nil, err
	}
	defer srv.Kill() // nothing to save
	cfg.serverCPU = func() time.Duration { return cpuOf(srv.Process) }
	defer func() { cfg.serverCPU = nil }()
	var out []Result
	for _, n := range dedupe(1, cfg.Clients) {
		cfg.progress("redis uncontended: %d connections", n)
		ls, err := dialRedisLocks(ctx, srv.addr, n)
		if err != nil {
			return out, err
		}
		l, err := measure(ctx, cfg, n, func(ctx context.Context, i int, r *rec) error {
			key := "bench/u/" + strconv.Itoa(i)
			var tok string
			return r.pair(func() error {
				t, ok, err := ls[i].tryLock(key)
				if err == nil && !ok {
					err = fmt.Errorf("redis: %s held by someone else", key)
				}
				tok = t
				return err
			}, func() error { return ls[i].unlock(key, tok) })
		})
		closeRedisLocks(ls)
		if err != nil {
			return out, err
		}
		res := Result{Workload: "uncontended", System: sysRedis, Clients: n, Unit: "pair",
			Note: "own key per connection: SET NX PX 10000 + EVALSHA compare-and-delete"}.with(&l, "acquire", "release", "pair")
		res.metric("ops", 2*l.rate(), "requests/s")
		out = append(out, res)
	}
	cfg.progress("redis contended: %d connections, retry every %v", cfg.Clients, redisRetry)
	ls, err := dialRedisLocks(ctx, srv.addr, cfg.Clients)
	if err != nil {
		return out, err
	}
	const key = "bench/c"
	var tries int64
	l, err := measure(ctx, cfg, cfg.Clients, func(ctx context.Context, i int, r *rec) error {
		t0 := time.Now()
		for {
			tok, ok, err := ls[i].tryLock(key)
			if err != nil {
				return err
			}
			if r.on {
				r.aux++ // tries, counted per client
			}
			if ok {
				t1 := time.Now()
				r.record(latAcquire, t1.Sub(t0))
				if err := ls[i].unlock(key, tok); err != nil {
					return err
				}
				r.record(latRelease, time.Since(t1))
				return nil
			}
			select {
			case <-time.After(redisRetry):
			case <-r.stop:
				return nil // not counted: it ended after the window
			}
		}
	})
	closeRedisLocks(ls)
	if err != nil {
		return out, err
	}
	tries = l.aux
	res := Result{Workload: "contended", Variant: "retry every 1ms", System: sysRedis, Clients: cfg.Clients, Unit: "handoff",
		Note: "one key: SET NX PX, on failure sleep 1 ms and retry; release at once"}.with(&l, "acquire", "release")
	res.metric("tries_per_handoff", float64(tries)/float64(max(l.ops, 1)), "")
	if l.ops > 0 {
		res.metric("handoff", 1e6/l.rate(), "µs")
	}
	out = append(out, res)
	return out, nil
}
