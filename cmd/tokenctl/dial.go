package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
)

// defaultCertsDir is where tokend's all-in-one default keeps its
// certificates when started in the same directory.
const defaultCertsDir = "./tokend-data/pki"

// etcdFlags are how tokenctl reaches etcd: the endpoints and, unless
// --insecure, the certificates. The environment variables are tokend's
// (TOKEND_CERTS_DIR, TOKEND_ETCD_CACERT, ...), so one setting serves both.
type etcdFlags struct {
	certsDir string
	cacert   string
	cert     string
	key      string
	insecure bool
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.certsDir, "certs-dir", envOr("TOKEND_CERTS_DIR", defaultCertsDir), "directory with ca.crt and root.crt/.key (or tokend.crt/.key) made by \"tokend certs\" or by tokend's first start (env TOKEND_CERTS_DIR)")
	fs.StringVar(&e.cacert, "etcd-cacert", os.Getenv("TOKEND_ETCD_CACERT"), "CA of the etcd members' certificates (default <certs-dir>/ca.crt; env TOKEND_ETCD_CACERT)")
	fs.StringVar(&e.cert, "etcd-cert", os.Getenv("TOKEND_ETCD_CERT"), "client certificate; its common name is the etcd user (default <certs-dir>/root.crt, else <certs-dir>/tokend.crt; env TOKEND_ETCD_CERT)")
	fs.StringVar(&e.key, "etcd-key", os.Getenv("TOKEND_ETCD_KEY"), "key of --etcd-cert (default: next to it, as .key; env TOKEND_ETCD_KEY)")
	insecure, _ := strconv.ParseBool(os.Getenv("TOKEND_INSECURE"))
	fs.BoolVar(&e.insecure, "insecure", insecure, "reach etcd without TLS, for a cluster started with --insecure (env TOKEND_INSECURE)")
}

// clientTLS resolves the files: the operator's root certificate if
// --certs-dir has one, else tokend's (a worker's host).
func (e *etcdFlags) clientTLS() *cluster.ClientTLS {
	if e.insecure {
		return nil
	}
	t := &cluster.ClientTLS{CAFile: e.cacert, CertFile: e.cert, KeyFile: e.key}
	if t.CAFile == "" {
		t.CAFile = filepath.Join(e.certsDir, pki.CACertFile)
	}
	if t.CertFile == "" {
		user := pki.UserRoot
		if _, err := os.Stat(filepath.Join(e.certsDir, pki.ClientCertFile(user))); err != nil {
			user = pki.UserTokend
		}
		t.CertFile = filepath.Join(e.certsDir, pki.ClientCertFile(user))
		if t.KeyFile == "" {
			t.KeyFile = filepath.Join(e.certsDir, pki.ClientKeyFile(user))
		}
	}
	if t.KeyFile == "" {
		t.KeyFile = t.CertFile[:len(t.CertFile)-len(filepath.Ext(t.CertFile))] + ".key"
	}
	return t
}

// dial returns an etcd client for endpoints. Unusable certificate files
// and endpoints of the wrong scheme are usage errors (exit 2).
func (e *etcdFlags) dial(endpoints string, timeout time.Duration) (*clientv3.Client, error) {
	cli, err := cluster.Dial(cluster.DialConfig{Endpoints: splitList(endpoints), TLS: e.clientTLS(), DialTimeout: timeout})
	switch {
	case errors.Is(err, cluster.ErrTLSFiles):
		return nil, usageErr("%v (see --certs-dir, or --insecure for a cluster started with --insecure)", err)
	case errors.Is(err, cluster.ErrEndpoint):
		return nil, usageErr("--etcd: %v", err)
	case err != nil:
		return nil, fmt.Errorf("--etcd %s: %w", endpoints, err)
	}
	return cli, nil
}
