package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
)

// evictResult is what tokenctl evict prints.
type evictResult struct {
	sessionInfo
	Evicted bool `json:"evicted"` // false: the lease ended on its own meanwhile
}

// cmdEvict ends a client session as its expiry would: it revokes the etcd
// lease its /tokend/clients key lives on, so the key goes and every worker
// drops the session's grants and queued requests (their waiters are
// granted), and the client learns of it at its next request or keepalive.
func cmdEvict(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("evict", stderr, "evict [flags] SESSION")
	var c common
	c.register(fs, false, true)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for etcd")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("evict: want exactly one SESSION (hex, as tokenctl sessions shows it)")
	}
	id, err := cluster.ParseSession(strings.TrimPrefix(strings.ToLower(pos[0]), "0x"))
	if err != nil || id == 0 {
		return usageErr("evict: %q is not a session id (hex, as tokenctl sessions shows it)", pos[0])
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	res, err := evict(ctx, cli, id)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, res)
	}
	how := "evicted"
	if !res.Evicted {
		how = "ended on its own while being evicted:"
	}
	fmt.Fprintf(stdout, "session %s %s (client %s, library %s, opened by worker %s at %s); its lease %s is revoked: the workers drop its grants and queued requests\n",
		res.Session, how, orDash(res.Addr), orDash(res.Library), orDash(res.Worker), orDash(res.Since), res.Lease)
	return nil
}

// evict revokes the lease of session id's key, after checking it exists.
func evict(ctx context.Context, cli *clientv3.Client, id uint64) (evictResult, error) {
	key := cluster.ClientKey(id)
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return evictResult{}, fmt.Errorf("reading %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return evictResult{}, exitError_{exitError, fmt.Sprintf("no live session %s (it ended, or never was; tokenctl sessions lists the live ones)", cluster.SessionString(id))}
	}
	kv := resp.Kvs[0]
	s, ok := sessionOf(kv.Key, kv.Value, kv.Lease)
	if !ok || kv.Lease == 0 {
		return evictResult{}, fmt.Errorf("%s is not a session tokend wrote (no lease, or not JSON): not touched", key)
	}
	res := evictResult{sessionInfo: s, Evicted: true}
	// The key's own lease: session ids are not lease ids, and the key is
	// what the workers watch.
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
		if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return res, fmt.Errorf("revoking lease %s of session %s: %w", s.Lease, s.Session, err)
		}
		res.Evicted = false
	}
	return res, nil
}
