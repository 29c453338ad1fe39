package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/wire/auth"
)

// TestRegisterClientKey: a server registers its client key file's key
// once (every further start, and every other server with the same file,
// changes nothing); a server with another key under the same name, or
// another cluster key, fails to start with an error that says what to do,
// and the stored key stays.
func TestRegisterClientKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ck, k := mustKey(t), mustKey(t)
	server := func(clusterKey, clientKey auth.Key) *daemon {
		return &daemon{log: slog.New(slog.DiscardHandler), cfg: &config{
			mode: modeServer, clusterKeyFile: "/etc/tokend/cluster.key", clientKeyFile: "/etc/tokend/client.key",
			clusterKey: clusterKey, clientKeyName: "default", clientKey: clientKey,
		}}
	}
	for range 2 {
		if err := server(ck, k).registerClientKey(ctx, cli); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name       string
		clusterKey auth.Key
		clientKey  auth.Key
		want       []string
	}{
		{"another client key", ck, mustKey(t), []string{"--client-key-file /etc/tokend/client.key", `another key named "default"`, "tokenctl keys revoke default"}},
		{"another cluster key", mustKey(t), k, []string{"--cluster-key-file /etc/tokend/cluster.key", "the same cluster key"}},
	} {
		err := server(tt.clusterKey, tt.clientKey).registerClientKey(ctx, cli)
		for _, w := range tt.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v, want it to say %q", tt.name, err, w)
			}
		}
	}
	s, err := keys.OpenStore(ctx, cli, ck, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, ok := s.ClientKey("default"); !ok || got != k {
		t.Error("the registered key is not the first server's")
	}
	insecure := server(ck, mustKey(t))
	insecure.cfg.insecure = true
	if err := insecure.registerClientKey(ctx, cli); err != nil {
		t.Errorf("--insecure registers nothing, and fails on nothing: %v", err)
	}
}

func mustKey(t *testing.T) auth.Key {
	t.Helper()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestKeyFileDefaults: the key files default to --certs-dir's cluster.key
// and (servers only) client.key, and follow TOKEND_CLUSTER_KEY_FILE and
// TOKEND_CLIENT_KEY_FILE as every flag follows its variable; a worker has
// no --client-key-file.
func TestKeyFileDefaults(t *testing.T) {
	dir := t.TempDir()
	c, err := loadConfig(modeServer, []string{"--data-dir", dir, "--certs-dir", "/etc/tokend/pki"}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.clusterKeyFile != "/etc/tokend/pki/cluster.key" || c.clientKeyFile != "/etc/tokend/pki/client.key" {
		t.Errorf("server: cluster key %q, client key %q", c.clusterKeyFile, c.clientKeyFile)
	}
	c, err = loadConfig(modeAll, []string{"--data-dir", dir}, env("TOKEND_CLUSTER_KEY_FILE", "/k/c.key", "TOKEND_CLIENT_KEY_FILE", "/k/alice.key"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.clusterKeyFile != "/k/c.key" || c.clientKeyFile != "/k/alice.key" || !c.set["cluster-key-file"] {
		t.Errorf("from the environment: cluster key %q, client key %q", c.clusterKeyFile, c.clientKeyFile)
	}
	c, err = loadConfig(modeWorker, nil, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.clusterKeyFile != filepath.Join(defaultWorkerCertsDir, "cluster.key") || c.clientKeyFile != "" {
		t.Errorf("worker: cluster key %q, client key %q", c.clusterKeyFile, c.clientKeyFile)
	}
	var usage strings.Builder
	if _, err := loadConfig(modeWorker, []string{"--client-key-file", "x"}, env(), &usage); err == nil {
		t.Error("a worker accepted --client-key-file")
	}
}

// TestPublishFenceKey: a server puts the public fence key of its cluster
// key at /tokend/fence-key; another start changes nothing; a server with
// another cluster key fails to start and says why; --insecure publishes
// nothing.
func TestPublishFenceKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	_, cli := etcdtest.StartOne(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	server := func(clusterKey auth.Key, insecure bool) *daemon {
		return &daemon{log: slog.New(slog.DiscardHandler), cfg: &config{
			mode: modeServer, clusterKeyFile: "/etc/tokend/cluster.key", clusterKey: clusterKey, insecure: insecure,
		}}
	}
	if err := server(mustKey(t), true).publishFenceKey(ctx, cli); err != nil {
		t.Fatal(err)
	}
	if r, err := cli.Get(ctx, cluster.FenceKey); err != nil || len(r.Kvs) != 0 {
		t.Fatalf("--insecure published %v (%v)", r, err)
	}
	ck := mustKey(t)
	for range 2 {
		if err := server(ck, false).publishFenceKey(ctx, cli); err != nil {
			t.Fatal(err)
		}
	}
	r, err := cli.Get(ctx, cluster.FenceKey)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("%v, %v", r, err)
	}
	var doc cluster.FenceKeyDoc
	if err := json.Unmarshal(r.Kvs[0].Value, &doc); err != nil || doc.Algorithm != "ed25519" {
		t.Fatalf("%s holds %q (%v), want an ed25519 cluster.FenceKeyDoc", cluster.FenceKey, r.Kvs[0].Value, err)
	}
	pub, err := fenceproof.ParsePublicKey(doc.PublicKey)
	if err != nil || !bytes.Equal(pub, fenceproof.PublicKey(ck[:])) {
		t.Fatalf("%s holds %q (%v), not the cluster key's public fence key", cluster.FenceKey, r.Kvs[0].Value, err)
	}
	err = server(mustKey(t), false).publishFenceKey(ctx, cli)
	if err == nil || !strings.Contains(err.Error(), "another public fence key") || !strings.Contains(err.Error(), "same cluster key") {
		t.Errorf("another cluster key: %v", err)
	}
}
