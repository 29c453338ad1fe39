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
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/keys"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

const keysUsage = `keys add [flags] NAME        make a client key NAME and store it (sealed) in etcd
       tokenctl keys list [flags]            list the client keys: names and when they were made
       tokenctl keys revoke [flags] NAME     delete key NAME and end the sessions opened with it

Client keys authenticate clients to the workers (wire/SPEC.md section 20).
"tokend certs" makes one, "default", in client.key, which the servers
register at start; "keys add" makes one per client, so that one client's
key can be revoked without touching the others. The workers see a key
added or revoked at once.

add writes the new key file (mode 0600) to --out, or prints it; give it
to the client (tokenctl --key-file, clientlib Config.KeyFile, the C
client's key file, or TOKEND_KEY_FILE). It needs the cluster key
(--cluster-key-file) to seal the key: run it where cluster.key is. The
key is shown this once: etcd holds it sealed, and list never shows it.

Rotation: add a new key, give the client its file, then revoke the old
one. revoke ends the live sessions opened with the key at once (their
grants go to those waiting); a client still holding the revoked key can
open no new session.`

// keyAdded is what tokenctl keys add prints with -o json.
type keyAdded struct {
	Name    string `json:"name"`
	Created string `json:"created"`
	File    string `json:"file,omitempty"`     // --out
	KeyFile string `json:"key_file,omitempty"` // the key file's contents, without --out
}

// keysListed is what tokenctl keys list prints with -o json.
type keysListed struct {
	Count int         `json:"count"`
	Keys  []keys.Info `json:"keys"`
}

// keyRevoked is what tokenctl keys revoke prints with -o json.
type keyRevoked struct {
	Name     string   `json:"name"`
	Revoked  bool     `json:"revoked"`  // false: there was no such key (any sessions of it were still ended)
	Sessions []string `json:"sessions"` // the sessions ended, hex
}

// cmdKeys manages the client keys in etcd (package cluster/keys).
func cmdKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "Usage: tokenctl %s\n", keysUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			return nil
		}
		return usageErr("keys: want add, list or revoke")
	}
	sub, args := args[0], args[1:]
	flags := newFlagSet("keys "+sub, stderr, keysUsage)
	var c common
	c.register(flags, false, true)
	timeout := flags.Duration("timeout", 5*time.Second, "how long to wait for etcd")
	var out, clusterKeyFile *string
	switch sub {
	case "add":
		out = flags.String("out", "", "write the key file here (mode 0600; never replaces a file) instead of printing it")
		clusterKeyFile = addClusterKeyFlag(flags, ", to seal the new key with")
	case "list", "revoke":
	default:
		return usageErr("keys: unknown command %q: want add, list or revoke", sub)
	}
	pos, err := parseInterleaved(flags, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	var name string
	switch {
	case sub == "list" && len(pos) != 0:
		return usageErr("keys list: unexpected argument %q", pos[0])
	case sub != "list" && len(pos) != 1:
		return usageErr("keys %s: want exactly one key NAME", sub)
	case sub != "list":
		name = pos[0]
		if !pki.ValidClientKeyName(name) {
			return usageErr("keys %s: %q is not a key name: use 1 to %d characters of A-Z a-z 0-9 . _ - (not %q)", sub, name, auth.MaxKeyName, pki.ClusterKeyName)
		}
	}
	var clusterKey auth.Key
	if sub == "add" {
		if clusterKey, err = readClusterKey(*clusterKeyFile, c.tls.certsDir); err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()

	switch sub {
	case "add":
		return keysAdd(ctx, cli, clusterKey, name, *out, c.output, stdout, stderr)
	case "list":
		list, err := keys.List(ctx, cli)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, keysListed{Count: len(list), Keys: list})
		}
		if len(list) > 0 {
			tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tCREATED")
			for _, k := range list {
				fmt.Fprintf(tw, "%s\t%s\n", k.Name, orDash(k.Created))
			}
			tw.Flush()
		}
		if len(list) == 1 {
			fmt.Fprintln(stdout, "1 key")
		} else {
			fmt.Fprintf(stdout, "%d keys\n", len(list))
		}
		return nil
	}
	return keysRevoke(ctx, cli, name, c.output, stdout)
}

// keysAdd makes a key, writes its file (if out) and then stores it: a key
// whose file could not be written is never stored; a file whose key could
// not be stored is removed.
func keysAdd(ctx context.Context, cli *clientv3.Client, clusterKey auth.Key, name, out, output string, stdout, stderr io.Writer) error {
	k, err := auth.NewKey()
	if err != nil {
		return err
	}
	if out != "" {
		if err := pki.WriteKeyFile(out, name, k); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return usageErr("--out: %s exists; not replaced (choose another file, or remove it)", out)
			}
			return fmt.Errorf("--out: %w", err)
		}
	}
	now := time.Now()
	if err := keys.Add(ctx, cli, clusterKey, name, k, now); err != nil {
		if out != "" {
			os.Remove(out)
		}
		if errors.Is(err, keys.ErrExists) {
			return fmt.Errorf("key %q exists already: revoke it first (tokenctl keys revoke %s), or choose another name", name, name)
		}
		return err
	}
	res := keyAdded{Name: name, Created: cluster.Now(now), File: out}
	if out == "" {
		res.KeyFile = strings.TrimSuffix(string(auth.FormatKeyFile(name, k)), "\n")
	}
	if output == "json" {
		return printJSON(stdout, res)
	}
	if out != "" {
		fmt.Fprintf(stdout, "added key %s; its key file is %s (mode 0600): give it to the client (tokenctl --key-file, clientlib Config.KeyFile, TOKEND_KEY_FILE)\n", name, out)
		return nil
	}
	fmt.Fprintln(stdout, res.KeyFile)
	fmt.Fprintf(stderr, "tokenctl: added key %s; the line above is its key file: save it with mode 0600 and give it to the client (it is not shown again)\n", name)
	return nil
}

// keysRevoke deletes the key and ends its sessions. The sessions are
// ended also when the key is gone already (a revoke that was
// interrupted, say); that is an error only if there was nothing to end.
func keysRevoke(ctx context.Context, cli *clientv3.Client, name, output string, stdout io.Writer) error {
	res := keyRevoked{Name: name, Revoked: true, Sessions: []string{}}
	revErr := keys.Revoke(ctx, cli, name)
	if revErr != nil && !errors.Is(revErr, keys.ErrNotFound) {
		return revErr
	}
	res.Revoked = revErr == nil
	ended, err := keys.EndSessions(ctx, cli, name)
	res.Sessions = append(res.Sessions, ended...)
	if err != nil {
		return fmt.Errorf("key %s revoked (no new session can open with it), but ending its sessions failed: %w (run the command again)", name, err)
	}
	if !res.Revoked && len(res.Sessions) == 0 {
		return exitError_{exitError, fmt.Sprintf("no key %q (tokenctl keys list shows the keys)", name)}
	}
	if output == "json" {
		return printJSON(stdout, res)
	}
	what := "revoked key " + name
	if !res.Revoked {
		what = "key " + name + " was revoked already"
	}
	switch len(res.Sessions) {
	case 0:
		fmt.Fprintf(stdout, "%s; no live session had been opened with it\n", what)
	default:
		fmt.Fprintf(stdout, "%s; ended %d session(s) opened with it: %s\n", what, len(res.Sessions), strings.Join(res.Sessions, " "))
	}
	return nil
}

// keyFlags are how a token command authenticates to the workers: a client
// key file, or --insecure for a cluster started with --insecure.
type keyFlags struct {
	certsDir string
	keyFile  string
	insecure bool
}

func (k *keyFlags) register(flags *flag.FlagSet) {
	flags.StringVar(&k.certsDir, "certs-dir", envOr("TOKEND_CERTS_DIR", defaultCertsDir), "directory whose client.key is the default --key-file (env TOKEND_CERTS_DIR)")
	flags.StringVar(&k.keyFile, "key-file", os.Getenv("TOKEND_KEY_FILE"), "client key file: client.key from \"tokend certs\" or tokend's first start, or one from \"tokenctl keys add\" (default <certs-dir>/client.key; env TOKEND_KEY_FILE)")
	insecure, _ := strconv.ParseBool(os.Getenv("TOKEND_INSECURE"))
	flags.BoolVar(&k.insecure, "insecure", insecure, "for a cluster started with --insecure: no key, datagrams not authenticated (env TOKEND_INSECURE)")
}

// resolve returns the key file to use ("" with --insecure). A missing or
// unusable file, and --key-file together with --insecure, are usage
// errors that say what to do.
func (k *keyFlags) resolve(flags *flag.FlagSet) (string, error) {
	given := map[string]bool{}
	flags.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if k.insecure {
		if given["key-file"] {
			return "", usageErr("--key-file and --insecure: a cluster started with --insecure takes no key; drop one of them")
		}
		return "", nil
	}
	path := k.keyFile
	if path == "" {
		path = filepath.Join(k.certsDir, pki.DefaultClientKeyFile)
	}
	switch name, _, err := pki.ReadKeyFile(path); {
	case errors.Is(err, fs.ErrNotExist):
		return "", usageErr("--key-file: %s does not exist: give the client key file (\"tokend certs\" makes client.key, \"tokenctl keys add\" makes others), "+
			"or --insecure for a cluster started with --insecure", path)
	case err != nil:
		return "", usageErr("--key-file: %v", err)
	case name == pki.ClusterKeyName:
		return "", usageErr("--key-file: %s is the cluster key, not a client key: give client.key or a key from \"tokenctl keys add\"", path)
	}
	return path, nil
}
