package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// TestPublicKeyCommands: announce-key and fence-key print the public key
// their package derives from the cluster key file (the vectors of
// announce/SPEC.md and fenceproof/testdata/vectors.txt), from
// --cluster-key-file or <certs-dir>/cluster.key, as text or JSON, and
// refuse a missing file or a client key file with a usage error.
func TestPublicKeyCommands(t *testing.T) {
	var k auth.Key
	for i := range k {
		k[i] = byte(i)
	}
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

	for _, cmd := range []struct {
		name, field, want string
		parsesBack        func(out string) bool
	}{
		{"announce-key", "announce_key", "bOa5Z6w11Yf9NvIOVUzlmoQHGXdNN64_sNfV8zkDo1Q", // announce/SPEC.md, "Signature"
			func(out string) bool {
				pub, err := announce.ParsePublicKey(out)
				return err == nil && bytes.Equal(pub, announce.PublicKey(k))
			}},
		{"fence-key", "fence_key", "5e87b2830fd92470c490b489a6784d7a273a56cfdecfebc443382993a102c28f", // fenceproof/testdata/vectors.txt
			func(out string) bool {
				pub, err := fenceproof.ParsePublicKey(out)
				return err == nil && bytes.Equal(pub, fenceproof.PublicKey(k[:]))
			}},
	} {
		t.Run(cmd.name, func(t *testing.T) {
			for _, args := range [][]string{
				{cmd.name, "--cluster-key-file", filepath.Join(dir, pki.ClusterKeyFile)},
				{cmd.name, "--certs-dir", dir},
			} {
				out, code := tokenctl(t, args...)
				if code != exitOK || out != cmd.want+"\n" {
					t.Fatalf("%v: exit %d, output %q; want %q", args, code, out, cmd.want)
				}
				if !cmd.parsesBack(out) {
					t.Fatalf("printed key %q does not parse back", out)
				}
			}
			out, code := tokenctl(t, cmd.name, "--certs-dir", dir, "-o", "json")
			var j map[string]string
			if code != exitOK || json.Unmarshal([]byte(out), &j) != nil || j[cmd.field] != cmd.want {
				t.Fatalf("-o json: exit %d, %q", code, out)
			}
			for _, tc := range []struct {
				args []string
				want string
			}{
				{[]string{cmd.name, "--certs-dir", t.TempDir()}, "does not exist"},
				{[]string{cmd.name, "--cluster-key-file", clientFile}, "not the cluster key"},
				{[]string{cmd.name, "--certs-dir", dir, "extra"}, "unexpected argument"},
				{[]string{cmd.name, "--certs-dir", dir, "-o", "yaml"}, "not text or json"},
			} {
				out, code := tokenctl(t, tc.args...)
				if code != exitUsage || !strings.Contains(out, tc.want) {
					t.Errorf("%v: exit %d, %q; want usage error with %q", tc.args, code, out, tc.want)
				}
			}
		})
	}
}
