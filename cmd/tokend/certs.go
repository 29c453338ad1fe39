package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/tokend/tokend/internal/pki"
)

const certsUsage = `Usage: tokend certs --dir DIR --server NAME=HOST[,HOST...] [--server ...] [flags]

Makes what etcd's TLS and authentication need, in DIR:
  ca.crt, ca.key              the cluster CA (made once; keep ca.key safe, off the servers if you can)
  server-NAME.crt, .key       one per --server: the etcd member NAME, valid for NAME, its HOSTs
                              (the addresses and DNS names others reach it at) and, unless
                              --loopback=false, localhost, 127.0.0.1 and ::1 (a server dials
                              its own member on loopback)
  tokend.crt, tokend.key      etcd user tokend (servers' coordinators, workers): /tokend/ only
  root.crt, root.key          etcd user root (the operator: tokenctl member, etcdctl)
  cluster.key                 the cluster key: servers and workers only (it seals the client
                              keys and session keys kept in etcd; whoever has it can pose as
                              any worker)
  client.key                  the client key "default": servers register it in etcd at start,
                              clients (tokenctl --key-file, clientlib Config.KeyFile) use it;
                              "tokenctl keys add" makes more, one per client

Keys are written 0600, the directory 0700. Key files that exist are never
replaced (not even with --force). What exists already and fits is
kept, so running it again with one more --server adds that server's
certificate with the same CA; a certificate that does not fit (other
hosts, another CA) is refused unless --force, which reissues it (never the
CA: remove ca.crt and ca.key for a new one).

Copy to each server's --certs-dir (default <data-dir>/pki): ca.crt,
server-NAME.crt, server-NAME.key, tokend.crt, tokend.key. To each worker's
(default ./tokend-data/pki): ca.crt, tokend.crt, tokend.key, cluster.key.
To the operator's (tokenctl --certs-dir, default ./tokend-data/pki):
ca.crt, root.crt, root.key, cluster.key (for tokenctl keys). To each
client's: client.key, or a key of its own from "tokenctl keys add".
The servers also take client.key (they register it; --client-key-file).

Example, three servers:
  tokend certs --dir ./certs --server s1=10.77.0.1 --server s2=10.77.0.2 --server s3=10.77.0.3

Flags:
`

// serverList collects repeated --server NAME=HOST[,HOST...] flags.
type serverList []pki.Server

func (l *serverList) String() string {
	var parts []string
	for _, s := range *l {
		parts = append(parts, s.Name+"="+strings.Join(s.Hosts, ","))
	}
	return strings.Join(parts, " ")
}

func (l *serverList) Set(v string) error {
	name, hosts, _ := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if name == "" {
		return fmt.Errorf("%q: want NAME=HOST[,HOST...]", v)
	}
	s := pki.Server{Name: name}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			s.Hosts = append(s.Hosts, h)
		}
	}
	for _, o := range *l {
		if o.Name == name {
			return fmt.Errorf("server %q given twice", name)
		}
	}
	*l = append(*l, s)
	return nil
}

// runCerts is "tokend certs": exit 0 when done, 1 when a file is refused,
// 2 on a usage error.
func runCerts(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokend certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory to write to (created 0700 if missing); required")
	var servers serverList
	fs.Var(&servers, "server", "an etcd member: NAME=HOST[,HOST...] (its --name, and the IP addresses and DNS names of its advertised URLs); repeat for each server")
	users := fs.String("users", pki.UserTokend+","+pki.UserRoot, "comma-separated etcd users to make client certificates for (tokend and root are the ones tokend sets up)")
	loopback := fs.Bool("loopback", true, "make every server certificate valid for localhost, 127.0.0.1 and ::1 too (a server dials its own member on loopback)")
	force := fs.Bool("force", false, "reissue certificates that exist but do not fit (other hosts, another CA)")
	validity := fs.Duration("validity", pki.DefaultValidity, "how long new certificates are valid")
	fs.Usage = func() {
		fmt.Fprint(stderr, certsUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "tokend certs: "+format+"\n", a...)
		return 2
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected argument %q", fs.Arg(0))
	case *dir == "":
		return usage("--dir is required (see tokend certs -h)")
	case *validity <= 0:
		return usage("--validity must be positive, got %v", *validity)
	}
	req := pki.Request{Dir: *dir, Force: *force, Validity: *validity, Now: time.Now()}
	for _, s := range servers {
		if *loopback {
			s.Hosts = append(s.Hosts, loopbackHosts...)
		}
		req.Servers = append(req.Servers, s)
	}
	for _, u := range strings.Split(*users, ",") {
		if u = strings.TrimSpace(u); u != "" {
			req.Users = append(req.Users, u)
		}
	}
	res, err := pki.Write(req)
	if err == nil {
		var kr pki.Result
		kr, err = pki.WriteKeys(*dir)
		res.Created = append(res.Created, kr.Created...)
		res.Kept = append(res.Kept, kr.Kept...)
	}
	for _, f := range res.Created {
		fmt.Fprintf(stdout, "created %s\n", f)
	}
	for _, f := range res.Kept {
		fmt.Fprintf(stdout, "kept    %s\n", f)
	}
	switch {
	case errors.Is(err, pki.ErrBadName):
		return usage("%v", err)
	case err != nil:
		fmt.Fprintf(stderr, "tokend certs: %v\n", err)
		return 1
	}
	if len(servers) > 0 {
		fmt.Fprintf(stdout, "Copy %s, server-NAME.crt/.key, tokend.crt/.key, %s and %s to each server's --certs-dir (default <data-dir>/pki); %s, tokend.crt/.key and %s to each worker's; root.crt/.key are the operator's; %s is the clients'.\n",
			filepath.Join(*dir, pki.CACertFile), pki.ClusterKeyFile, pki.DefaultClientKeyFile, pki.CACertFile, pki.ClusterKeyFile, pki.DefaultClientKeyFile)
	}
	return 0
}
