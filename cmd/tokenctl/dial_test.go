package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/internal/pki"
)

// TestEtcdCertificates: tokenctl reaches a secure etcd with the
// certificates of --certs-dir or TOKEND_CERTS_DIR (root's, else tokend's);
// missing files are usage errors (exit 2); a certificate of another CA,
// the tokend user asking for a membership change, and --insecure against
// a secure cluster are refused (exit 1).
func TestEtcdCertificates(t *testing.T) {
	ms, root, certs := etcdtest.StartSecureCluster(t, 1)
	ep := ms[0].ClientEndpoints()[0]
	host := strings.TrimPrefix(ep, "https://")
	if _, err := root.Put(context.Background(), cluster.ConfigKey, `{"shards":16,"session_ttl_ms":10000,"grace_ms":5000}`); err != nil {
		t.Fatal(err)
	}
	workerOnly := t.TempDir() // what a worker's host has: no root certificate
	for _, f := range []string{pki.CACertFile, pki.ClientCertFile(pki.UserTokend), pki.ClientKeyFile(pki.UserTokend)} {
		b, _ := os.ReadFile(filepath.Join(certs, f))
		os.WriteFile(filepath.Join(workerOnly, f), b, 0o600)
	}
	other := etcdtest.PKI(t)
	tokenctl := func(wantCode int, want string, args ...string) {
		t.Helper()
		var out, errOut strings.Builder
		code := run(context.Background(), args, &out, &errOut)
		if code != wantCode || !strings.Contains(out.String()+errOut.String(), want) {
			t.Errorf("tokenctl %v: exit %d, want %d and %q:\n%s%s", args, code, wantCode, want, out.String(), errOut.String())
		}
	}
	tokenctl(exitOK, "16 shards", "status", "--etcd", host, "--certs-dir", certs)
	tokenctl(exitOK, "16 shards", "status", "--etcd", ep, "--certs-dir", workerOnly)
	tokenctl(exitOK, "NAME", "member", "list", "--etcd", host, "--certs-dir", certs)
	tokenctl(exitError, "permission denied", "member", "add", "s9", "--peer-urls", "https://127.0.0.1:1", "--etcd", host, "--certs-dir", workerOnly, "--timeout", "3s")
	tokenctl(exitUsage, "no such file", "status", "--etcd", host, "--certs-dir", t.TempDir())
	tokenctl(exitUsage, "plain http", "status", "--etcd", "http://"+host, "--certs-dir", certs)
	tokenctl(exitUsage, "no client certificate", "status", "--etcd", ep, "--insecure")
	tokenctl(exitError, "reading /tokend/", "status", "--etcd", host, "--insecure", "--timeout", "2s")
	tokenctl(exitError, "reading /tokend/", "status", "--etcd", host, "--timeout", "2s",
		"--etcd-cacert", filepath.Join(certs, pki.CACertFile), "--etcd-cert", filepath.Join(other, pki.ClientCertFile(pki.UserRoot)))

	t.Setenv("TOKEND_CERTS_DIR", certs)
	tokenctl(exitOK, "16 shards", "status", "--etcd", host)
	t.Setenv("TOKEND_CERTS_DIR", "")
	t.Setenv("TOKEND_ETCD_CACERT", filepath.Join(certs, pki.CACertFile))
	t.Setenv("TOKEND_ETCD_CERT", filepath.Join(certs, pki.ClientCertFile(pki.UserTokend)))
	tokenctl(exitOK, "16 shards", "status", "--etcd", host)
}
