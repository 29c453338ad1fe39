package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// TestAnnounceKey: announce-key prints the announce key of the cluster key
// file (the vector of announce/SPEC.md), from --cluster-key-file or
// <certs-dir>/cluster.key, as text or JSON, and refuses a missing file or a
// client key file with a usage error.
func TestAnnounceKey(t *testing.T) {
	var k auth.Key
	for i := range k {
		k[i] = byte(i)
	}
	const want = "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q" // announce/SPEC.md, "Signature"
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
		{"announce-key", "--cluster-key-file", filepath.Join(dir, pki.ClusterKeyFile)},
		{"announce-key", "--certs-dir", dir},
	} {
		out, code := tokenctl(t, args...)
		if code != exitOK || out != want+"\n" {
			t.Fatalf("%v: exit %d, output %q; want %q", args, code, out, want)
		}
		pub, err := announce.ParsePublicKey(out)
		if err != nil || !bytes.Equal(pub, announce.PublicKey(k)) {
			t.Fatalf("printed key does not parse back: %v", err)
		}
	}
	out, code := tokenctl(t, "announce-key", "--certs-dir", dir, "-o", "json")
	var j struct {
		AnnounceKey string `json:"announce_key"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &j) != nil || j.AnnounceKey != want {
		t.Fatalf("-o json: exit %d, %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"announce-key", "--certs-dir", t.TempDir()}, "does not exist"},
		{[]string{"announce-key", "--cluster-key-file", clientFile}, "not the cluster key"},
		{[]string{"announce-key", "--certs-dir", dir, "extra"}, "unexpected argument"},
		{[]string{"announce-key", "--certs-dir", dir, "-o", "yaml"}, "not text or json"},
	} {
		out, code := tokenctl(t, tc.args...)
		if code != exitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, %q; want usage error with %q", tc.args, code, out, tc.want)
		}
	}
}
