package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
)

// target is a tokend cluster as its clients see it: the workers'
// addresses and how a client authenticates (wire/SPEC.md section 20).
type target struct {
	seeds []string
	// keyFile is the client key file; "" for a cluster started with
	// --insecure (clients then set clientlib.Config.Insecure).
	keyFile string
	// pprof is the host:port of the tokend process's /debug/pprof/ (a
	// cluster started for Config.ServerProfileDir); "" otherwise.
	pprof string
}

// insecure reports whether the cluster runs without authentication.
func (t target) insecure() bool { return t.keyFile == "" }

// startTokend starts an in-process cluster of n workers on loopback; it
// authenticates its clients (its target's key file).
func startTokend(ctx context.Context, cfg *Config, workers int) (*devcluster.Cluster, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Workers: workers, Shards: cfg.Shards,
		WorkerTTL: cfg.WorkerTTL, SessionTTL: cfg.SessionTTL, Grace: cfg.WorkerTTL})
	if err != nil {
		return nil, fmt.Errorf("bench: start tokend (%d workers): %w", workers, err)
	}
	return c, nil
}

// devTarget is the target of an in-process cluster.
func devTarget(c *devcluster.Cluster) target {
	return target{seeds: c.Seeds(), keyFile: c.KeyFile()}
}

// client is one benchmark client: a clientlib session on its own loopback
// socket, and where its revocations go.
type client struct {
	*clientlib.Client
	conn    net.PacketConn
	revoked chan *clientlib.Token // size 1: the latest revocation (see onRevoke)
}

// revoke policies of dialClients.
type revokePolicy int

const (
	// revokeNotify hands a revocation to the workload (client.revoked),
	// which releases the token itself.
	revokeNotify revokePolicy = iota
	// revokeRelease releases the token at once, on the library's goroutine.
	revokeRelease
)

// dialClients opens n sessions with the cluster tgt, concurrently. On
// error the ones opened are closed.
func dialClients(ctx context.Context, tgt target, n int, policy revokePolicy) ([]*client, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cs := make([]*client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8) // a session open is an etcd write: do not queue hundreds
	for i := range cs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cs[i], errs[i] = dialClient(ctx, tgt, policy)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeClients(cs)
		return nil, fmt.Errorf("bench: dial tokend: %w", err)
	}
	return cs, nil
}

// dialClient opens a session for the workloads that measure the worker:
// without the client's token cache, every pair reaches tokend.
func dialClient(ctx context.Context, tgt target, policy revokePolicy) (*client, error) {
	return dialClientCache(ctx, tgt, policy, false)
}

// dialClientCache is dialClient with the client's token cache on or off.
func dialClientCache(ctx context.Context, tgt target, policy revokePolicy, cache bool) (*client, error) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn, revoked: make(chan *clientlib.Token, 1)}
	onRevoke := func(_ context.Context, t *clientlib.Token, _ clientlib.Revocation) {
		// Keep only the newest revocation: a stale one (of a token already
		// released) is replaced, and the workload compares tokens.
		for {
			select {
			case c.revoked <- t:
				return
			default:
			}
			select {
			case <-c.revoked:
			default:
			}
		}
	}
	if policy == revokeRelease {
		onRevoke = func(_ context.Context, t *clientlib.Token, _ clientlib.Revocation) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = t.Release(ctx) // ErrNotHeld if the workload released it first
		}
	}
	tokenCache := 0
	if cache {
		tokenCache = clientlib.DefaultTokenCache
	}
	c.Client, err = clientlib.DialConfig(ctx, clientlib.Config{Seeds: tgt.seeds, KeyFile: tgt.keyFile,
		Insecure: tgt.insecure(), PacketConn: conn, OnRevoke: onRevoke, TokenCache: tokenCache})
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// closeClients closes every client (releasing what it holds and ending its
// session), concurrently, and their sockets.
func closeClients(cs []*client) {
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Go(func() {
				c.Client.Close()
				c.conn.Close()
			})
		}
	}
	wg.Wait()
}

// waitRevoked waits until tok is revoked (true), or the window ends, or
// longest passes (false).
func (c *client) waitRevoked(ctx context.Context, tok *clientlib.Token, r *rec, longest *time.Timer, d time.Duration) bool {
	longest.Reset(d)
	defer longest.Stop()
	for {
		select {
		case t := <-c.revoked:
			if t == tok {
				return true
			}
		case <-r.stop:
			return false
		case <-ctx.Done():
			return false
		case <-longest.C:
			return false
		}
	}
}

// release gives tok back; a token the revocation handler already gave
// back (ErrNotHeld) is not an error.
func release(ctx context.Context, tok *clientlib.Token) error {
	if err := tok.Release(ctx); err != nil && !errors.Is(err, clientlib.ErrNotHeld) {
		return err
	}
	return nil
}
