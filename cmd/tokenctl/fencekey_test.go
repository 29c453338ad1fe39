package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// TestFenceKey: fence-key prints the public fence key of the cluster key
// file (the one of fenceproof/testdata/vectors.txt), from
// --cluster-key-file or <certs-dir>/cluster.key, as text or JSON, and
// refuses a missing file or a client key file with a usage error.
func TestFenceKey(t *testing.T) {
	var k auth.Key
	for i := range k {
		k[i] = byte(i)
	}
	const want = "5e87b2830fd92470c490b489a6784d7a273a56cfdecfebc443382993a102c28f" // fenceproof/testdata/vectors.txt
	dir := t.TempDir()
	if err := pki.WriteKeyFile(filepath.Join(dir, pki.ClusterKeyFile), pki.ClusterKeyName, k); err != nil {
		t.Fatal(err)
	}
	clientFile := filepath.Join(dir, "client.key")
	if err := pki.WriteKeyFile(clientFile, "default", k); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TOKEND_CLUSTER_KEY_FILE", "")
	t.Setenv("TOKEND_CERTS_DIR", "")
	t.Setenv("TOKENCTL_OUTPUT", "")

	for _, args := range [][]string{
		{"fence-key", "--cluster-key-file", filepath.Join(dir, pki.ClusterKeyFile)},
		{"fence-key", "--certs-dir", dir},
	} {
		out, code := tokenctl(t, args...)
		if code != exitOK || out != want+"\n" {
			t.Fatalf("%v: exit %d, output %q; want %q", args, code, out, want)
		}
		pub, err := fenceproof.ParsePublicKey(out)
		if err != nil || !bytes.Equal(pub, fenceproof.PublicKey(k[:])) {
			t.Fatalf("printed key does not parse back: %v", err)
		}
	}
	out, code := tokenctl(t, "fence-key", "--certs-dir", dir, "-o", "json")
	var j struct {
		FenceKey string `json:"fence_key"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &j) != nil || j.FenceKey != want {
		t.Fatalf("-o json: exit %d, %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fence-key", "--certs-dir", t.TempDir()}, "does not exist"},
		{[]string{"fence-key", "--cluster-key-file", clientFile}, "not the cluster key"},
		{[]string{"fence-key", "--certs-dir", dir, "extra"}, "unexpected argument"},
		{[]string{"fence-key", "--certs-dir", dir, "-o", "yaml"}, "not text or json"},
	} {
		out, code := tokenctl(t, tc.args...)
		if code != exitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, %q; want usage error with %q", tc.args, code, out, tc.want)
		}
	}
}
