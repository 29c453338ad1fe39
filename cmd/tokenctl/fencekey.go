package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/internal/pki"
)

const fenceKeyUsage = `fence-key [--cluster-key-file FILE | --certs-dir DIR] [-o text|json]

Print the cluster's public fence key, in hex (64 characters): the Ed25519
key that verifies fence proofs (docs/SECURITY.md §4; clientlib
Token.Proof). It is derived from the cluster key, so run this where
cluster.key is (a server's --certs-dir); the public key itself is not
secret. Give it to storage, which checks proofs with fenceproof.Verify (Go,
after fenceproof.ParsePublicKey) or tokend_fence_proof_verify (C). Servers
also publish it in etcd at /tokend/fence-key.`

// cmdFenceKey prints the public fence key of the cluster key file.
func cmdFenceKey(_ context.Context, args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("fence-key", stderr, fenceKeyUsage)
	output := flags.String("o", envOr("TOKENCTL_OUTPUT", "text"), "output format: text or json")
	certsDir := flags.String("certs-dir", envOr("TOKEND_CERTS_DIR", defaultCertsDir), "directory whose cluster.key is the default --cluster-key-file (env TOKEND_CERTS_DIR)")
	clusterKeyFile := flags.String("cluster-key-file", os.Getenv("TOKEND_CLUSTER_KEY_FILE"),
		"the cluster key (default <certs-dir>/cluster.key; env TOKEND_CLUSTER_KEY_FILE)")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() != 0 {
		return usageErr("fence-key: unexpected argument %q", flags.Arg(0))
	}
	if *output != "text" && *output != "json" {
		return usageErr("-o: %q is not text or json", *output)
	}
	path := *clusterKeyFile
	if path == "" {
		path = filepath.Join(*certsDir, pki.ClusterKeyFile)
	}
	name, k, err := pki.ReadKeyFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usageErr("--cluster-key-file: %s does not exist: run this where the cluster key is (a server's --certs-dir), or name it with --cluster-key-file", path)
	case err != nil:
		return usageErr("--cluster-key-file: %v", err)
	case name != pki.ClusterKeyName:
		return usageErr("--cluster-key-file: %s holds the key %q, not the cluster key (%q)", path, name, pki.ClusterKeyName)
	}
	key := fenceproof.FormatPublicKey(fenceproof.PublicKey(k[:]))
	if *output == "json" {
		return printJSON(stdout, struct {
			FenceKey string `json:"fence_key"`
		}{key})
	}
	_, err = fmt.Fprintln(stdout, key)
	return err
}
