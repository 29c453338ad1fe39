package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// addClusterKeyFlag registers --cluster-key-file, whose use is what the
// key is needed for ("to seal the new key with").
func addClusterKeyFlag(flags *flag.FlagSet, use string) *string {
	return flags.String("cluster-key-file", os.Getenv("TOKEND_CLUSTER_KEY_FILE"),
		"the cluster key"+use+" (default <certs-dir>/cluster.key; env TOKEND_CLUSTER_KEY_FILE)")
}

// readClusterKey reads the cluster key from file, or from certsDir's
// cluster.key if file is empty; every failure is a usage error that says
// where to run the command instead.
func readClusterKey(file, certsDir string) (auth.Key, error) {
	path := file
	if path == "" {
		path = filepath.Join(certsDir, pki.ClusterKeyFile)
	}
	name, k, err := pki.ReadKeyFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return auth.Key{}, usageErr("--cluster-key-file: %s does not exist: run this where the cluster key is (a server's --certs-dir), or name it with --cluster-key-file", path)
	case err != nil:
		return auth.Key{}, usageErr("--cluster-key-file: %v", err)
	case name != pki.ClusterKeyName:
		return auth.Key{}, usageErr("--cluster-key-file: %s holds the key %q, not the cluster key (%q)", path, name, pki.ClusterKeyName)
	}
	return k, nil
}

// publicKeyCmd is a command that prints a public key derived from the
// cluster key file (fence-key, announce-key): as text, or with -o json as
// {jsonField: key}.
func publicKeyCmd(name, usage, jsonField string, derive func(auth.Key) string) func(context.Context, []string, io.Writer, io.Writer) error {
	return func(_ context.Context, args []string, stdout, stderr io.Writer) error {
		flags := newFlagSet(name, stderr, usage)
		output := flags.String("o", envOr("TOKENCTL_OUTPUT", "text"), "output format: text or json")
		certsDir := flags.String("certs-dir", envOr("TOKEND_CERTS_DIR", defaultCertsDir), "directory whose cluster.key is the default --cluster-key-file (env TOKEND_CERTS_DIR)")
		clusterKeyFile := addClusterKeyFlag(flags, "")
		if err := parseFlags(flags, args); err != nil {
			return err
		}
		if flags.NArg() != 0 {
			return usageErr("%s: unexpected argument %q", name, flags.Arg(0))
		}
		if *output != "text" && *output != "json" {
			return usageErr("-o: %q is not text or json", *output)
		}
		k, err := readClusterKey(*clusterKeyFile, *certsDir)
		if err != nil {
			return err
		}
		key := derive(k)
		if *output == "json" {
			return printJSON(stdout, map[string]string{jsonField: key})
		}
		_, err = fmt.Fprintln(stdout, key)
		return err
	}
}
