package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// startDev starts an in-process cluster for the raw clients' tests.
func startDev(t *testing.T, insecure bool) *devcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Shards: 16, SessionTTL: 10 * time.Second, Insecure: insecure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRawClientsAuthenticate runs the raw-datagram clients (the held
// set's holder and the sessions workload's swarm) against a cluster that
// authenticates and against one started insecure: each opens its
// sessions (with a key: no-cookie open, COOKIE, open with the cookie),
// makes tagged requests whose tagged replies verify, and closes them.
func TestRawClientsAuthenticate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and a worker")
	}
	for _, insecure := range []bool{false, true} {
		t.Run(fmt.Sprintf("insecure=%v", insecure), func(t *testing.T) {
			cl := startDev(t, insecure)
			tgt := devTarget(cl)
			if tgt.insecure() != insecure {
				t.Fatalf("target %+v of a cluster with insecure=%v", tgt, insecure)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			h, err := dialHolder(ctx, tgt, "bench/test/holder/")
			if err != nil {
				t.Fatal(err)
			}
			if (h.c2w == nil) != insecure {
				t.Errorf("holder session MACs %v with insecure=%v", h.c2w, insecure)
			}
			if err := h.acquire(ctx, 300); err != nil {
				h.close(ctx)
				t.Fatal(err)
			}
			if h.held != 300 || h.errs != 0 || h.badTags != 0 {
				t.Errorf("holder: %d held, %d refused, %d bad tags; want 300, 0, 0", h.held, h.errs, h.badTags)
			}
			if err := h.close(ctx); err != nil {
				t.Errorf("holder close: %v", err)
			}

			sw, err := newSwarm(tgt, 64)
			if err != nil {
				t.Fatal(err)
			}
			defer sw.close()
			sw.ttl = 3 * time.Second // a renewal every second
			if err := sw.openAll(ctx, 32, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			if n := sw.opened(); n != 64 {
				t.Fatalf("swarm: %d of 64 sessions open (lost %d, bad tags %d)", n, sw.lost, sw.badTags)
			}
			sw.startHold()
			sw.hold(ctx, 1500*time.Millisecond)
			if sw.renewals < 64 || sw.lost != 0 || sw.badTags != 0 {
				t.Errorf("swarm hold: %d renewals, %d lost, %d bad tags; want >= 64, 0, 0", sw.renewals, sw.lost, sw.badTags)
			}
			sw.closeAll(ctx, 20*time.Second)
			for _, s := range sw.ss {
				if s.state != swDone {
					t.Fatalf("swarm: a session in state %d after closeAll", s.state)
				}
			}
		})
	}
}

// TestRawClientsWrongKey: with a key the cluster does not know under
// that name, the worker drops the tagged open and no session opens.
func TestRawClientsWrongKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and a worker")
	}
	cl := startDev(t, false)
	name, _, err := readKeyFile(cl.KeyFile())
	if err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	wrong := filepath.Join(t.TempDir(), "wrong.key")
	if err := os.WriteFile(wrong, auth.FormatKeyFile(name, other), 0o600); err != nil {
		t.Fatal(err)
	}
	tgt := target{seeds: cl.Seeds(), keyFile: wrong}

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if h, err := dialHolder(ctx, tgt, "bench/test/wrong/"); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			h.close(context.Background())
		}
		t.Fatalf("holder with a wrong key: %v, want no answer until the deadline", err)
	}

	sw, err := newSwarm(tgt, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer sw.close()
	if err := sw.openAll(context.Background(), 4, time.Second); !errors.Is(err, errSwarmTimeout) {
		t.Fatalf("swarm with a wrong key: %v, want %v", err, errSwarmTimeout)
	}
	if n := sw.opened(); n != 0 {
		t.Fatalf("swarm with a wrong key opened %d sessions", n)
	}

	// Without a key at all, the open is refused (BAD_REQUEST) at once.
	h, err := dialHolder(context.Background(), target{seeds: cl.Seeds(), keyFile: ""}, "bench/test/nokey/")
	if err == nil {
		h.close(context.Background())
	}
	if !errors.Is(err, errHolder) {
		t.Fatalf("holder without a key at an authenticating cluster: %v, want %v", err, errHolder)
	}
}

// readKeyFile reads a key file.
func readKeyFile(path string) (string, auth.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", auth.Key{}, err
	}
	return auth.ParseKeyFile(b)
}

// dropProxy relays datagrams between one client and a worker, dropping
// the first n replies of type drop on their way back.
type dropProxy struct {
	front, back *net.UDPConn
	dropped     atomic.Int64
}

func startDropProxy(t *testing.T, worker string, drop wire.Type, n int64) *dropProxy {
	t.Helper()
	wa, err := net.ResolveUDPAddr("udp4", worker)
	if err != nil {
		t.Fatal(err)
	}
	p := &dropProxy{}
	if p.front, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if p.back, err = net.DialUDP("udp4", nil, wa); err != nil {
		p.front.Close()
		t.Fatal(err)
	}
	var client atomic.Pointer[net.UDPAddr]
	var wg sync.WaitGroup
	wg.Go(func() {
		b := make([]byte, wire.MaxDatagram)
		for {
			k, from, err := p.front.ReadFromUDP(b)
			if err != nil {
				return
			}
			client.Store(from)
			p.back.Write(b[:k])
		}
	})
	wg.Go(func() {
		b := make([]byte, wire.MaxDatagram)
		for {
			k, err := p.back.Read(b)
			if err != nil {
				return
			}
			if h, err := wire.ParseHeader(b[:k]); err == nil && h.Type == drop && p.dropped.Load() < n {
				p.dropped.Add(1)
				continue
			}
			if to := client.Load(); to != nil {
				p.front.WriteToUDP(b[:k], to)
			}
		}
	})
	t.Cleanup(func() {
		p.front.Close()
		p.back.Close()
		wg.Wait()
	})
	return p
}

// TestSwarmRenewalRetry: a renewal whose answer is lost is sent again
// under a new request id (a worker renews once per id and drops a copy),
// so the session stays renewed.
func TestSwarmRenewalRetry(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and a worker")
	}
	cl := startDev(t, false)
	p := startDropProxy(t, cl.Seeds()[0], wire.TypeKeepaliveReply, 2)
	sw, err := newSwarm(target{seeds: []string{p.front.LocalAddr().String()}, keyFile: cl.KeyFile()}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer sw.close()
	sw.ttl = 3 * time.Second
	ctx := context.Background()
	if err := sw.openAll(ctx, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	sw.startHold()
	// The first renewal is due within a second; its answer and the next
	// one's are dropped, and retries go after 200 and 400 ms.
	sw.hold(ctx, 3*time.Second)
	if p.dropped.Load() != 2 {
		t.Fatalf("the proxy dropped %d KEEPALIVE replies, want 2", p.dropped.Load())
	}
	if sw.renewals < 1 || sw.lost != 0 || sw.badTags != 0 {
		t.Fatalf("%d renewals answered, %d sessions lost, %d bad tags; want >= 1, 0, 0", sw.renewals, sw.lost, sw.badTags)
	}
}
