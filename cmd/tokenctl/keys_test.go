package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// authCluster starts an in-process cluster that authenticates clients
// (etcd without TLS, loopback) and returns it with the flags that reach
// its etcd.
func authCluster(t *testing.T) (*devcluster.Cluster, []string) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Shards: 16, SessionTTL: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, []string{"--etcd", strings.Join(c.Member.ClientEndpoints(), ","), "--insecure"}
}

// TestKeys: tokenctl keys add makes a key and its file (0600, never over
// another file), or prints the key file; list shows the names and never a
// key; a client with the new key takes a token (tokenctl acquire
// --key-file, and TOKEND_KEY_FILE), one without a key (--insecure) is
// refused with a hint; sessions show the key each opened with; revoke ends the sessions opened with
// the key at once and the key opens no new session, while the default
// key's sessions go on.
func TestKeys(t *testing.T) {
	c, etcd := authCluster(t)
	seeds := strings.Join(c.Seeds(), ",")
	ck := []string{"--cluster-key-file", c.ClusterKeyFile()}
	dir := t.TempDir()
	aliceFile := filepath.Join(dir, "alice.key")

	out, code := tokenctl(t, append(append([]string{"keys", "add", "alice", "--out", aliceFile}, etcd...), ck...)...)
	if code != exitOK || !strings.Contains(out, "added key alice") || !strings.Contains(out, aliceFile) {
		t.Fatalf("keys add: exit %d:\n%s", code, out)
	}
	fi, err := os.Stat(aliceFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v", aliceFile, fi, err)
	}
	name, alice, err := pki.ReadKeyFile(aliceFile)
	if err != nil || name != "alice" {
		t.Fatalf("alice's key file: %q %v", name, err)
	}
	before, _ := os.ReadFile(aliceFile)
	out, code = tokenctl(t, append(append([]string{"keys", "add", "bob", "--out", aliceFile}, etcd...), ck...)...)
	if code != exitUsage || !strings.Contains(out, "not replaced") {
		t.Errorf("add over an existing file: exit %d:\n%s", code, out)
	}
	if after, _ := os.ReadFile(aliceFile); string(after) != string(before) {
		t.Error("alice's key file was replaced")
	}
	out, code = tokenctl(t, append(append([]string{"keys", "add", "alice"}, etcd...), ck...)...)
	if code != exitError || !strings.Contains(out, "exists already") || !strings.Contains(out, "keys revoke alice") {
		t.Errorf("adding alice twice: exit %d:\n%s", code, out)
	}
	// Printed: the one line is a key file.
	out, code = tokenctl(t, append(append([]string{"keys", "add", "carol", "-o", "json"}, etcd...), ck...)...)
	var added keyAdded
	if code != exitOK || json.Unmarshal([]byte(out), &added) != nil || added.Name != "carol" || added.Created == "" {
		t.Fatalf("keys add carol: exit %d:\n%s", code, out)
	}
	if n, _, err := auth.ParseKeyFile([]byte(added.KeyFile)); err != nil || n != "carol" {
		t.Errorf("printed key file %q: %q %v", added.KeyFile, n, err)
	}

	out, code = tokenctl(t, append([]string{"keys", "list"}, etcd...)...)
	for _, want := range []string{"NAME", "alice", "carol", "default", "3 keys"} {
		if code != exitOK || !strings.Contains(out, want) {
			t.Errorf("keys list: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	enc := string(auth.FormatKeyFile("alice", alice))
	if strings.Contains(out, strings.Fields(enc)[3]) {
		t.Error("keys list shows alice's key")
	}
	out, code = tokenctl(t, append([]string{"keys", "list", "-o", "json"}, etcd...)...)
	var listed keysListed
	if code != exitOK || json.Unmarshal([]byte(out), &listed) != nil || listed.Count != 3 || listed.Keys[0].Name != "alice" {
		t.Errorf("keys list -o json: exit %d:\n%s", code, out)
	}

	// tokenctl acquire with alice's key, by flag and by TOKEND_KEY_FILE.
	out, code = tokenctl(t, "acquire", "--seeds", seeds, "--key-file", aliceFile, "--timeout", "5s", "page/1", "--", "true")
	if code != exitOK {
		t.Errorf("acquire with alice's key: exit %d:\n%s", code, out)
	}
	t.Setenv("TOKEND_KEY_FILE", aliceFile)
	out, code = tokenctl(t, "acquire", "--seeds", seeds, "--timeout", "5s", "page/1", "--", "true")
	if code != exitOK {
		t.Errorf("acquire with TOKEND_KEY_FILE: exit %d:\n%s", code, out)
	}
	t.Setenv("TOKEND_KEY_FILE", "")
	out, code = tokenctl(t, "acquire", "--seeds", seeds, "--insecure", "--timeout", "2s", "page/1", "--", "true")
	if code != exitError || !strings.Contains(out, "drop --insecure") {
		t.Errorf("acquire --insecure on a cluster that authenticates: exit %d, want 1 and a hint:\n%s", code, out)
	}

	// Live sessions: two with alice's key, one with the default key.
	dial := func(keyFile string) *clientlib.Client {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.Seeds(), KeyFile: keyFile})
		if err != nil {
			t.Fatalf("dial with %s: %v", keyFile, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	a1, a2, d := dial(aliceFile), dial(aliceFile), dial(c.KeyFile())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	held, err := a1.Acquire(ctx, "page/2", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	sess := func(cl *clientlib.Client) string { return cluster.SessionString(cl.Session()) }

	out, code = tokenctl(t, append([]string{"sessions"}, etcd...)...)
	if code != exitOK || !strings.Contains(out, "KEY") || !strings.Contains(out, " alice ") || !strings.Contains(out, " default ") {
		t.Errorf("sessions show no key names: exit %d:\n%s", code, out)
	}
	revoked := time.Now()
	out, code = tokenctl(t, append([]string{"keys", "revoke", "alice"}, etcd...)...)
	if code != exitOK || !strings.Contains(out, "revoked key alice; ended 2 session(s)") ||
		!strings.Contains(out, sess(a1)) || !strings.Contains(out, sess(a2)) || strings.Contains(out, sess(d)) {
		t.Fatalf("keys revoke alice: exit %d:\n%s", code, out)
	}
	select {
	case <-held.Lost():
		t.Logf("alice's grant lost %v after tokenctl keys revoke started", time.Since(revoked).Round(time.Millisecond))
	case <-ctx.Done():
		t.Error("alice's grant is not lost after her key was revoked")
	}
	out, code = tokenctl(t, append([]string{"sessions"}, etcd...)...)
	if code != exitOK || !strings.Contains(out, sess(d)) || strings.Contains(out, sess(a1)) || strings.Contains(out, sess(a2)) {
		t.Errorf("sessions after the revoke: exit %d:\n%s", code, out)
	}
	if _, err := d.Acquire(ctx, "page/2", wire.EX); err != nil {
		t.Errorf("the default key's client after alice's revoke: %v", err)
	}
	out, code = tokenctl(t, "acquire", "--seeds", seeds, "--key-file", aliceFile, "--timeout", "2s", "page/3", "--", "true")
	if code != exitError {
		t.Errorf("acquire with a revoked key: exit %d, want 1:\n%s", code, out)
	}
	t.Logf("acquire with a revoked key: %s", out)
	out, code = tokenctl(t, append([]string{"keys", "revoke", "alice"}, etcd...)...)
	if code != exitError || !strings.Contains(out, `no key "alice"`) {
		t.Errorf("revoking alice again: exit %d:\n%s", code, out)
	}
	out, code = tokenctl(t, append([]string{"keys", "list", "-o", "json"}, etcd...)...)
	if json.Unmarshal([]byte(out), &listed) != nil || listed.Count != 2 {
		t.Errorf("keys after the revoke: %s", out)
	}
}

// TestKeysUsage: bad names, missing or wrong cluster key files, and key
// file mistakes on acquire are usage errors (exit 2) that say what to do,
// before anything is sent.
func TestKeysUsage(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.WriteKeys(dir); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.key")
	b, _ := os.ReadFile(filepath.Join(dir, "client.key"))
	os.WriteFile(open, b, 0o644)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"keys"}, "want add, list or revoke"},
		{[]string{"keys", "rotate"}, `unknown command "rotate"`},
		{[]string{"keys", "add"}, "want exactly one key NAME"},
		{[]string{"keys", "add", "a b"}, "is not a key name"},
		{[]string{"keys", "add", "cluster"}, "is not a key name"},
		{[]string{"keys", "revoke", "x", "y"}, "want exactly one key NAME"},
		{[]string{"keys", "list", "x"}, "unexpected argument"},
		{[]string{"keys", "add", "alice", "--certs-dir", t.TempDir()}, "cluster.key does not exist"},
		{[]string{"keys", "add", "alice", "--cluster-key-file", filepath.Join(dir, "client.key")}, `holds the key "default", not the cluster key`},
		{[]string{"keys", "add", "alice", "--cluster-key-file", open}, "chmod 600"},
		{[]string{"acquire", "--certs-dir", t.TempDir(), "x"}, "client.key does not exist"},
		{[]string{"acquire", "--key-file", filepath.Join(dir, "cluster.key"), "x"}, "the cluster key, not a client key"},
		{[]string{"acquire", "--key-file", open, "x"}, "chmod 600"},
		{[]string{"acquire", "--key-file", filepath.Join(dir, "client.key"), "--insecure", "x"}, "drop one of them"},
	} {
		out, code := tokenctl(t, tt.args...)
		if code != exitUsage || !strings.Contains(out, tt.want) {
			t.Errorf("tokenctl %v: exit %d, want 2 and %q:\n%s", tt.args, code, tt.want, out)
		}
	}
}
