package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/pki"
)

const announceKeyUsage = `announce-key [--cluster-key-file FILE | --certs-dir DIR] [-o text|json]

Print the cluster's announce key: the public key that verifies the workers'
multicast announcements (announce/SPEC.md, "Signature"). It is derived from
the cluster key, so run this where cluster.key is (a server's --certs-dir);
the announce key itself is not secret. Give it to every client that finds
workers by announcements (clientlib Config.Announce.PublicKey, read with
announce.ParsePublicKey): without it such a client refuses to start.`

// cmdAnnounceKey prints the announce public key of the cluster key file.
func cmdAnnounceKey(_ context.Context, args []string, stdout, stderr io.Writer) error {
	flags := newFlagSet("announce-key", stderr, announceKeyUsage)
	output := flags.String("o", envOr("TOKENCTL_OUTPUT", "text"), "output format: text or json")
	certsDir := flags.String("certs-dir", envOr("TOKEND_CERTS_DIR", defaultCertsDir), "directory whose cluster.key is the default --cluster-key-file (env TOKEND_CERTS_DIR)")
	clusterKeyFile := flags.String("cluster-key-file", os.Getenv("TOKEND_CLUSTER_KEY_FILE"),
		"the cluster key (default <certs-dir>/cluster.key; env TOKEND_CLUSTER_KEY_FILE)")
	if err := parseFlags(flags, args); err != nil {
		return err
	}
	if flags.NArg() != 0 {
		return usageErr("announce-key: unexpected argument %q", flags.Arg(0))
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
	key := announce.FormatPublicKey(announce.PublicKey(k))
	if *output == "json" {
		return printJSON(stdout, struct {
			AnnounceKey string `json:"announce_key"`
		}{key})
	}
	_, err = fmt.Fprintln(stdout, key)
	return err
}
