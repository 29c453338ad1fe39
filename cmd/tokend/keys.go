package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
	"github.com/tokend/tokend/worker"
)

// The datagram authentication (wire/SPEC.md section 20): every mode reads
// the cluster key; servers (and the all-in-one) register a client key
// file's key in etcd at start; workers look client keys up in a
// keys.Store. --insecure turns it off.

// keyFlags are the options naming key files.
var keyFlags = []string{"cluster-key-file", "client-key-file"}

// registerTimeout bounds the registration of the client key at start.
const registerTimeout = 30 * time.Second

// prepareKeys runs at start, after prepareTLS: with --insecure it refuses
// key files given explicitly; otherwise the all-in-one creates
// cluster.key and client.key in --certs-dir when missing, and every mode
// loads its keys. Errors wrap errConfig, name the flag and the file, and
// say how to make it.
func (c *config) prepareKeys(log *slog.Logger) error {
	if c.insecure {
		for _, f := range keyFlags {
			if c.set[f] {
				return bad(f, "given together with --insecure, which turns client authentication off: drop one of them")
			}
		}
		return nil
	}
	if c.mode == modeAll && !c.set["cluster-key-file"] && !c.set["client-key-file"] {
		res, err := pki.WriteKeys(c.certsDir)
		if err != nil {
			return bad("certs-dir", "%v", err)
		}
		if len(res.Created) > 0 {
			log.Info("created the cluster key and the default client key (clients authenticate with client.key; --insecure turns authentication off)",
				"dir", c.certsDir, "files", len(res.Created))
		}
	}
	name, k, err := pki.ReadKeyFile(c.clusterKeyFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return bad("cluster-key-file", "%s does not exist: make it with \"tokend certs --dir DIR ...\" and copy DIR/%s here (every server and worker needs the same one), "+
			"or run every server and worker with --insecure", c.clusterKeyFile, pki.ClusterKeyFile)
	case err != nil:
		return bad("cluster-key-file", "%v", err)
	case name != pki.ClusterKeyName:
		return bad("cluster-key-file", "%s holds the key %q, not the cluster key (%q): give the %s that \"tokend certs\" made", c.clusterKeyFile, name, pki.ClusterKeyName, pki.ClusterKeyFile)
	}
	c.clusterKey = k
	if c.mode == modeWorker {
		return nil
	}
	name, k, err = pki.ReadKeyFile(c.clientKeyFile)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !c.set["client-key-file"]:
		log.Debug("no client key file to register", "file", c.clientKeyFile)
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return bad("client-key-file", "%s does not exist (\"tokend certs\" makes %s; tokenctl keys add makes others)", c.clientKeyFile, pki.DefaultClientKeyFile)
	case err != nil:
		return bad("client-key-file", "%v", err)
	case !pki.ValidClientKeyName(name):
		return bad("client-key-file", "%s holds the cluster key, not a client key", c.clientKeyFile)
	}
	c.clientKeyName, c.clientKey = name, k
	return nil
}

// workerAuth is the worker's authentication: nil with --insecure.
func (c *config) workerAuth(store *keys.Store) *worker.Auth {
	if c.insecure {
		return nil
	}
	return &worker.Auth{ClusterKey: c.clusterKey, Keys: store}
}

// coordinatorKey is the key the coordinator's deadlock detector
// authenticates its queries to the workers with: nil with --insecure.
func (c *config) coordinatorKey() *auth.Key {
	if c.insecure {
		return nil
	}
	k := c.clusterKey
	return &k
}

// checkClusterKey refuses to run a worker whose cluster key opens none of
// the client keys in etcd while some are there: it has another cluster
// key than the servers, and could authenticate nobody.
func (d *daemon) checkClusterKey() error {
	if n := d.keys.LeftOut(); n > 0 && d.keys.Len() == 0 {
		return fmt.Errorf("--cluster-key-file %s: none of the %d client keys in etcd opens under this cluster key: "+
			"every server and worker needs the same cluster.key (the one \"tokend certs\" made for this cluster)", d.cfg.clusterKeyFile, n)
	}
	return nil
}

// publishFenceKey puts the public fence key of the cluster key at
// /tokend/fence-key (cluster.FenceKey) unless it is there already; another
// value there means another cluster key, an error that says so.
func (d *daemon) publishFenceKey(ctx context.Context, cli *clientv3.Client) error {
	c := d.cfg
	if c.insecure {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	pub := fenceproof.FormatPublicKey(fenceproof.PublicKey(c.clusterKey[:]))
	doc, err := json.Marshal(cluster.FenceKeyDoc{Algorithm: "ed25519", PublicKey: pub})
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(cluster.FenceKey), "=", 0)).
		Then(clientv3.OpPut(cluster.FenceKey, string(doc))).Else(clientv3.OpGet(cluster.FenceKey)).Commit()
	if err != nil {
		return fmt.Errorf("publishing the fence key: %w", err)
	}
	if resp.Succeeded {
		d.log.Info("published the public fence key in etcd", "key", cluster.FenceKey, "fence_key", pub)
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		var have cluster.FenceKeyDoc
		if json.Unmarshal(kvs[0].Value, &have) != nil || have.PublicKey != pub {
			return fmt.Errorf("--cluster-key-file %s: %s holds another public fence key (%s, this cluster key's is %s): every server and worker needs the same cluster key",
				c.clusterKeyFile, cluster.FenceKey, kvs[0].Value, pub)
		}
	}
	return nil
}

// registerClientKey stores the client key file's key in etcd unless its
// name has it already; a different key under that name is an error that
// says what to do (never an overwrite).
func (d *daemon) registerClientKey(ctx context.Context, cli *clientv3.Client) error {
	c := d.cfg
	if c.insecure || c.clientKeyName == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	created, err := keys.Ensure(ctx, cli, c.clusterKey, c.clientKeyName, c.clientKey, time.Now())
	switch {
	case errors.Is(err, keys.ErrExists):
		return fmt.Errorf("--client-key-file %s: %w; the cluster has another key named %q: give this server that key's file, "+
			"or revoke the other (tokenctl keys revoke %s) if this file is the one to keep", c.clientKeyFile, err, c.clientKeyName, c.clientKeyName)
	case errors.Is(err, keys.ErrSealed):
		return fmt.Errorf("--cluster-key-file %s: %w: every server and worker needs the same cluster key", c.clusterKeyFile, err)
	case err != nil:
		return fmt.Errorf("registering client key %q: %w", c.clientKeyName, err)
	case created:
		d.log.Info("registered the client key in etcd", "name", c.clientKeyName, "file", c.clientKeyFile)
	}
	return nil
}
