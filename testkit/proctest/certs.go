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
// certificate for each server (valid on loopback), the client certificates
// of the etcd users tokend and root, the cluster key (cluster.key) and the
// client key "default" (client.key), in a directory of the test. Servers,
// workers and tokenctl take the directory as --certs-dir (servers register
// client.key, everyone finds cluster.key there); EtcdClient dials with it;
// clients take KeyFile(dir).
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

// KeyFile returns the client key file (the key "default", which the
// servers register at start) in certsDir, made by Certs or by the
// all-in-one's first start: for clientlib.Config.KeyFile, tokenctl
// --key-file, the C client's key file, or $TOKEND_KEY_FILE.
func KeyFile(certsDir string) string { return filepath.Join(certsDir, pki.DefaultClientKeyFile) }

// ClusterKeyFile returns the cluster key file in certsDir (for tokenctl
// keys --cluster-key-file, and tokend --cluster-key-file where a test keeps
// it elsewhere).
func ClusterKeyFile(certsDir string) string { return filepath.Join(certsDir, pki.ClusterKeyFile) }
