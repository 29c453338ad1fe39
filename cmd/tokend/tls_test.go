package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/internal/pki"
)

// runErr runs tokend in-process and returns its exit code and stderr.
func runErr(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb strings.Builder
	code := run(args, env(), &out, &errb)
	return code, errb.String()
}

// TestTLSConfigErrors: missing or bad certificate and key files, http
// without --insecure and TLS or key flags with it, and data dirs of the
// other kind are configuration errors (exit 2) that say what to do.
func TestTLSConfigErrors(t *testing.T) {
	certs := t.TempDir()
	if _, err := writeLocalCerts(certs, []pki.Server{{Name: "s1"}}); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	os.WriteFile(garbage, []byte("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"), 0o644)

	oldDir := t.TempDir() // etcd data made without TLS by an older tokend
	os.MkdirAll(filepath.Join(oldDir, "tokend.etcd", "member"), 0o700)
	secureDir := t.TempDir() // etcd data made with TLS
	os.MkdirAll(filepath.Join(secureDir, "tokend.etcd", "member"), 0o700)
	if _, err := writeLocalCerts(filepath.Join(secureDir, "pki"), []pki.Server{{Name: "tokend"}}); err != nil {
		t.Fatal(err)
	}
	keyDir := t.TempDir() // what tokend certs makes: certificates and keys
	if _, err := writeLocalCerts(keyDir, []pki.Server{{Name: "s1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteKeys(keyDir); err != nil {
		t.Fatal(err)
	}
	openKey := filepath.Join(t.TempDir(), "open.key")
	b, _ := os.ReadFile(filepath.Join(keyDir, pki.ClusterKeyFile))
	os.WriteFile(openKey, b, 0o644)
	port := func() string { return fmt.Sprint(freePort(t)) }
	for _, tt := range []struct {
		name string
		args []string
		want []string
	}{
		{"server without certificates", []string{"server", "--name", "s1", "--data-dir", t.TempDir()},
			[]string{"--etcd-ca-file:", "no such file", `tokend certs --dir DIR --server s1=HOST`, "--insecure"}},
		{"worker without certificates", []string{"worker", "--certs-dir", t.TempDir()},
			[]string{"--etcd-cacert:", "no such file", "tokend.crt"}},
		{"garbage certificate", []string{"worker", "--certs-dir", certs, "--etcd-cert", garbage},
			[]string{"--etcd-cert:", garbage}},
		{"key of another certificate", []string{"server", "--name", "s1", "--data-dir", t.TempDir(), "--certs-dir", certs,
			"--etcd-key-file", filepath.Join(certs, "root.key")},
			[]string{"--etcd-cert-file:", "private key does not match"}},
		{"http without --insecure", []string{"--data-dir", t.TempDir(), "--client-urls", "http://127.0.0.1:" + port()},
			[]string{"--client-urls:", "plain http", "--insecure"}},
		{"https with --insecure", []string{"--insecure", "--data-dir", t.TempDir(), "--peer-urls", "https://127.0.0.1:" + port()},
			[]string{"--peer-urls:", "drop --insecure"}},
		{"http endpoint without --insecure", []string{"worker", "--etcd-endpoints", "http://127.0.0.1:2379"},
			[]string{"--etcd-endpoints:", "plain http"}},
		{"TLS file with --insecure", []string{"worker", "--insecure", "--etcd-cert", garbage},
			[]string{"--etcd-cert:", "together with --insecure"}},
		{"server without a cluster key", []string{"server", "--name", "s1", "--data-dir", t.TempDir(), "--certs-dir", certs},
			[]string{"--cluster-key-file:", filepath.Join(certs, "cluster.key"), "does not exist", "tokend certs", "--insecure"}},
		{"worker without a cluster key", []string{"worker", "--certs-dir", certs},
			[]string{"--cluster-key-file:", filepath.Join(certs, "cluster.key"), "does not exist", "tokend certs"}},
		{"client key as the cluster key", []string{"worker", "--certs-dir", keyDir, "--cluster-key-file", filepath.Join(keyDir, "client.key")},
			[]string{"--cluster-key-file:", `holds the key "default", not the cluster key`}},
		{"cluster key others can read", []string{"worker", "--certs-dir", keyDir, "--cluster-key-file", openKey},
			[]string{"--cluster-key-file:", "chmod 600"}},
		{"cluster key as the client key", []string{"server", "--name", "s1", "--data-dir", t.TempDir(), "--certs-dir", keyDir,
			"--client-key-file", filepath.Join(keyDir, "cluster.key")},
			[]string{"--client-key-file:", "the cluster key, not a client key"}},
		{"missing client key given", []string{"server", "--name", "s1", "--data-dir", t.TempDir(), "--certs-dir", keyDir,
			"--client-key-file", filepath.Join(keyDir, "alice.key")},
			[]string{"--client-key-file:", "alice.key does not exist", "tokenctl keys add"}},
		{"key file with --insecure", []string{"worker", "--insecure", "--cluster-key-file", openKey},
			[]string{"--cluster-key-file:", "together with --insecure"}},
		{"old insecure data dir", []string{"--data-dir", oldDir, "--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0"},
			[]string{"--data-dir:", "made without TLS", "--insecure", "move the directory away"}},
		{"--insecure on a secure data dir", []string{"--insecure", "--data-dir", secureDir, "--http-addr", "127.0.0.1:0", "--udp-addr", "127.0.0.1:0"},
			[]string{"--insecure:", "requires authentication"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, stderr := runErr(t, tt.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
		})
	}
	if entries, _ := os.ReadDir(filepath.Join(oldDir, "pki")); len(entries) != 0 {
		t.Errorf("certificates were created for the old data dir: %v", entries)
	}
}

// TestInsecureWarns: --insecure runs etcd over plain http without
// authentication and the workers without client authentication, makes
// neither certificates nor keys, and says so at start.
func TestInsecureWarns(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	a := newAllInOne(t)
	args := append([]string{"--insecure"}, a.args()...)
	for i, s := range args {
		args[i] = strings.Replace(s, "https://", "http://", 1)
	}
	p := startProc(t, args...)
	waitReady(t, p, fmt.Sprintf("127.0.0.1:%d", a.http), 30*time.Second)
	p.WaitBanner(10 * time.Second) // the warnings come before it (see TestAllInOne)
	out := p.Out.String()
	if !strings.Contains(out, "etcd runs WITHOUT TLS and authentication (--insecure)") || !strings.Contains(out, "level=WARN") ||
		!strings.Contains(out, "clients are NOT authenticated") {
		t.Errorf("no warning at start:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("go tool etcdctl --endpoints=127.0.0.1:%d get --prefix /tokend/", a.client)) {
		t.Errorf("banner:\n%s", out)
	}
	if _, err := os.Stat(a.certs()); err == nil {
		t.Error("--insecure created certificates")
	}
	cli := etcdClient(t, fmt.Sprintf("127.0.0.1:%d", a.client))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/anything", "x"); err != nil {
		t.Errorf("plain client on an insecure cluster: %v", err)
	}
	cli.Close()
	if code, _ := p.stop(syscall.SIGINT, 5*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestCertsCommand: tokend certs writes the files (with cluster.key and
// client.key), keeps them on a second run, refuses to change them without
// --force, never replaces a key file (not even with --force), and rejects
// bad input with 2.
func TestCertsCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	certs := func(args ...string) (int, string, string) {
		var out, errb strings.Builder
		code := run(append([]string{"certs", "--dir", dir}, args...), env(), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, stderr := certs("--server", "s1=10.0.0.1,s1.example", "--server", "s2=10.0.0.2")
	if code != 0 || strings.Count(out, "created ") != 12 {
		t.Fatalf("exit %d\n%s%s", code, out, stderr)
	}
	for _, f := range []string{"ca.key", "server-s1.key", "tokend.key", "root.key", "cluster.key", "client.key"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	code, out, _ = certs("--server", "s1=10.0.0.1,s1.example", "--server", "s2=10.0.0.2")
	if code != 0 || strings.Contains(out, "created") {
		t.Errorf("second run: exit %d\n%s", code, out)
	}
	code, out, _ = certs("--server", "s3=10.0.0.3")
	if code != 0 || strings.Count(out, "created ") != 2 {
		t.Errorf("adding s3: exit %d\n%s", code, out)
	}
	code, _, stderr = certs("--server", "s1=10.0.0.9")
	if code != 1 || !strings.Contains(stderr, "--force") {
		t.Errorf("changing s1's hosts: exit %d, stderr %q", code, stderr)
	}
	if name, _, err := pki.ReadKeyFile(filepath.Join(dir, "client.key")); err != nil || name != "default" {
		t.Errorf("client.key: %q %v", name, err)
	}
	if name, _, err := pki.ReadKeyFile(filepath.Join(dir, "cluster.key")); err != nil || name != "cluster" {
		t.Errorf("cluster.key: %q %v", name, err)
	}
	clusterKey, _ := os.ReadFile(filepath.Join(dir, "cluster.key"))
	code, out, _ = certs("--server", "s1=10.0.0.9", "--force")
	if code != 0 || !strings.Contains(out, "created "+filepath.Join(dir, "server-s1.crt")) || !strings.Contains(out, "kept    "+filepath.Join(dir, "cluster.key")) {
		t.Errorf("--force: exit %d\n%s", code, out)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "cluster.key")); string(after) != string(clusterKey) {
		t.Error("--force replaced cluster.key")
	}
	for _, args := range [][]string{
		{"--server", "s 1=10.0.0.1"},
		{"--server", "s1=0.0.0.0"},
		{"--server", "=10.0.0.1"},
		{"--server", "s1=10.0.0.1", "--server", "s1=10.0.0.2"},
		{"--users", "tokend-member"},
		{"extra"},
	} {
		if code, _, stderr := certs(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr)
		}
	}
	var out2, errb strings.Builder
	if code := run([]string{"certs"}, env(), &out2, &errb); code != 2 || !strings.Contains(errb.String(), "--dir is required") {
		t.Errorf("no --dir: exit %d, %q", code, errb.String())
	}
}
