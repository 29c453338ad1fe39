package proctest

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
)

// Certs makes, with "tokend certs" as an operator would, what a secure
// cluster of the named servers on this machine needs: a CA, a member
// certificate for each server (valid on loopback), and the client
// certificates of the etcd users tokend and root, in a directory of the
// test. Servers, workers and tokenctl take the directory as --certs-dir;
// EtcdClient dials with it.
func Certs(t testing.TB, servers ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	args := []string{"certs", "--dir", dir}
	for _, s := range servers {
		args = append(args, "--server", s)
	}
	if out, err := exec.Command(Tokend(t), args...).CombinedOutput(); err != nil {
		t.Fatalf("tokend %v: %v\n%s", args, err, out)
	}
	return dir
}

// EtcdClient returns an etcd client of endpoints that acts as the etcd
// user root with the certificates in certsDir (made by Certs or by the
// all-in-one's first start), as tokenctl does; closed at cleanup. Like
// clientv3.New it does not wait for a connection.
func EtcdClient(t testing.TB, certsDir string, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := cluster.Dial(cluster.DialConfig{Endpoints: endpoints, DialTimeout: 5 * time.Second, TLS: &cluster.ClientTLS{
		CAFile:   filepath.Join(certsDir, pki.CACertFile),
		CertFile: filepath.Join(certsDir, pki.ClientCertFile(pki.UserRoot)),
		KeyFile:  filepath.Join(certsDir, pki.ClientKeyFile(pki.UserRoot)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
