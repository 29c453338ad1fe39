package embedded_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/internal/pki"
)

// quick bounds one request that is expected to fail or succeed at once.
func quick(t *testing.T) context.Context { return ctxT(t, 5*time.Second) }

// TestSecureMemberRoles: a member with TLS files serves https, turns etcd
// authentication on by itself, and gives the tokend user read-write on
// /tokend/ and nothing else, while root may do anything.
func TestSecureMemberRoles(t *testing.T) {
	ms, root, dir := etcdtest.StartSecureCluster(t, 1)
	ep := ms[0].ClientEndpoints()[0]
	if !strings.HasPrefix(ep, "https://") {
		t.Fatalf("client endpoint %s is not https", ep)
	}
	tokend := etcdtest.SecureClient(t, dir, pki.UserTokend, ep)

	if st, err := root.AuthStatus(quick(t)); err != nil || !st.Enabled {
		t.Fatalf("auth status %+v, %v: want enabled", st, err)
	}
	// tokend: read-write on /tokend/ only.
	put(t, tokend, "/tokend/workers/w1", "ok")
	if got := get(t, tokend, "/tokend/workers/w1"); got != "ok" {
		t.Errorf("tokend reads %q", got)
	}
	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("tokend %s: %v, want permission denied", what, err)
		}
	}
	_, err := tokend.Put(quick(t), "/other", "x")
	denied("put /other", err)
	_, err = tokend.Put(quick(t), "/tokend", "x") // the prefix without its slash
	denied("put /tokend", err)
	_, err = tokend.Get(quick(t), "/", clientv3.WithPrefix())
	denied("get everything", err)
	_, err = tokend.MemberAdd(quick(t), []string{"https://127.0.0.1:1"})
	denied("member add", err)
	_, err = tokend.UserAdd(quick(t), "evil", "pw")
	denied("user add", err)
	_, err = tokend.AuthDisable(quick(t))
	denied("auth disable", err)
	_, err = tokend.RoleGrantPermission(quick(t), embedded.RoleTokend, "", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
	denied("widen its own role", err)
	// What tokend needs besides keys: leases, status, member list.
	lease, err := tokend.Grant(quick(t), 5)
	if err != nil {
		t.Fatalf("tokend lease grant: %v", err)
	}
	if _, err := tokend.Put(quick(t), "/tokend/clients/x", "y", clientv3.WithLease(lease.ID)); err != nil {
		t.Errorf("tokend put with lease: %v", err)
	}
	if _, err := tokend.Revoke(quick(t), lease.ID); err != nil {
		t.Errorf("tokend lease revoke: %v", err)
	}
	if _, err := tokend.Status(quick(t), ep); err != nil {
		t.Errorf("tokend status: %v", err)
	}

	// root: anything.
	put(t, root, "/other", "x")
	if _, err := root.MemberList(quick(t)); err != nil {
		t.Errorf("root member list: %v", err)
	}
	users, err := root.UserList(quick(t))
	if err != nil || !slices.Equal(users.Users, []string{"root", "tokend"}) {
		t.Errorf("users %v, %v", users, err)
	}
	role, err := root.RoleGet(quick(t), embedded.RoleTokend)
	if err != nil || len(role.Perm) != 1 || string(role.Perm[0].Key) != "/tokend/" || string(role.Perm[0].RangeEnd) != "/tokend0" {
		t.Errorf("role tokend: %+v, %v", role, err)
	}
}

// TestSecureMemberRefusesStrangers: without a certificate of the cluster's
// CA, the client URL serves nothing: no gRPC, no /health, /metrics,
// /version, /debug/vars, no gateway; a member certificate used as a client
// is refused every request; and the gateway is off even for root.
func TestSecureMemberRefusesStrangers(t *testing.T) {
	ms, _, dir := etcdtest.StartSecureCluster(t, 1)
	ep := ms[0].ClientEndpoints()[0]
	host := strings.TrimPrefix(ep, "https://")
	other := etcdtest.PKI(t) // another CA with its own root and tokend

	try := func(name string, cfg cluster.DialConfig, memberListOK bool) {
		t.Helper()
		quick := func(t *testing.T) context.Context { return ctxT(t, time.Second) }
		cfg.Endpoints, cfg.DialTimeout = []string{host}, time.Second
		cli, err := cluster.Dial(cfg)
		if err != nil {
			t.Fatalf("%s: dial: %v", name, err)
		}
		defer cli.Close()
		if _, err := cli.Put(quick(t), "/tokend/workers/evil", "x"); err == nil {
			t.Errorf("%s: put /tokend/workers/evil succeeded", name)
		}
		if _, err := cli.Get(quick(t), "/tokend/", clientv3.WithPrefix()); err == nil {
			t.Errorf("%s: get /tokend/ succeeded", name)
		}
		if _, err := cli.MemberList(quick(t)); err == nil && !memberListOK {
			t.Errorf("%s: member list succeeded", name)
		}
	}
	try("plain", cluster.DialConfig{}, false)
	try("another CA's root", cluster.DialConfig{TLS: &cluster.ClientTLS{
		CAFile:   filepath.Join(dir, pki.CACertFile), // trusts the server, but is not trusted
		CertFile: filepath.Join(other, pki.ClientCertFile(pki.UserRoot)),
		KeyFile:  filepath.Join(other, pki.ClientKeyFile(pki.UserRoot)),
	}}, false)
	try("the member's certificate", cluster.DialConfig{TLS: &cluster.ClientTLS{
		CAFile:   filepath.Join(dir, pki.CACertFile),
		CertFile: filepath.Join(dir, pki.ServerCertFile("s1")),
		KeyFile:  filepath.Join(dir, pki.ServerKeyFile("s1")),
	}}, true) // a member may list the members

	// HTTP without a client certificate: the handshake fails, whatever the path.
	noCert := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	plain := &http.Client{Timeout: 2 * time.Second}
	for _, path := range []string{"/health", "/metrics", "/version", "/debug/vars", "/v3/kv/range", "/v3/kv/put"} {
		if body, err := fetch(noCert, "https://"+host+path); err == nil {
			t.Errorf("https %s without a client certificate answered: %.80q", path, body)
		}
		if body, err := fetch(plain, "http://"+host+path); err == nil && len(body) > 0 && !strings.Contains(body, "\x15") {
			t.Errorf("http %s answered: %.80q", path, body)
		}
	}
	// With root's certificate the HTTP handlers answer, but the gateway is off.
	rootTLS, err := (cluster.ClientTLS{CAFile: filepath.Join(dir, pki.CACertFile),
		CertFile: filepath.Join(dir, pki.ClientCertFile(pki.UserRoot)), KeyFile: filepath.Join(dir, pki.ClientKeyFile(pki.UserRoot))}).Config()
	if err != nil {
		t.Fatal(err)
	}
	withRoot := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: rootTLS}}
	if _, err := fetch(withRoot, ep+"/version"); err != nil {
		t.Errorf("root: /version: %v", err)
	}
	resp, err := withRoot.Post(ep+"/v3/kv/put", "application/json", strings.NewReader(`{"key":"L3Rva2VuZC94","value":"eA=="}`))
	if err != nil {
		t.Fatalf("root: gateway post: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("root: POST /v3/kv/put: %s, want 404 (gateway off)", resp.Status)
	}
}

func fetch(c *http.Client, u string) (string, error) {
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return string(b), errors.New(resp.Status)
	}
	return string(b), nil
}

// TestEtcdctlWithoutCredentials runs the attack of the Security issue with
// the real etcdctl: "etcdctl put /tokend/workers/evil" without credentials
// is refused, with or without TLS, and nothing is written.
func TestEtcdctlWithoutCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds etcdctl")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	ms, root, _ := etcdtest.StartSecureCluster(t, 1)
	ep := ms[0].ClientEndpoints()[0]
	host := strings.TrimPrefix(ep, "https://")
	for _, args := range [][]string{
		{"--endpoints=" + host},
		{"--endpoints=" + ep, "--insecure-skip-tls-verify"},
		{"--endpoints=" + ep, "--insecure-transport=false", "--insecure-skip-tls-verify", "--user=root:"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, goTool, append(append([]string{"tool", "etcdctl", "--dial-timeout=2s", "--command-timeout=3s"}, args...), "put", "/tokend/workers/evil", "x")...)
		cmd.Dir = sourceDir(t)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			t.Errorf("etcdctl %v put succeeded: %s", args, out)
		} else {
			t.Logf("etcdctl %v: %v: %s", args, err, strings.TrimSpace(string(out)))
		}
	}
	if resp, err := root.Get(quick(t), "/tokend/workers/evil"); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("after the attempts: %v, %v", resp, err)
	}
}

// sourceDir is the module root, where "go tool etcdctl" resolves.
func sourceDir(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// TestSecureClusterRace: three members of a new cluster start at once and
// each tries to turn authentication on; the result is one consistent setup.
func TestSecureClusterRace(t *testing.T) {
	ms, root, dir := etcdtest.StartSecureCluster(t, 3)
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.ClientEndpoints()...)
	}
	if st, err := root.AuthStatus(quick(t)); err != nil || !st.Enabled {
		t.Fatalf("auth status %+v, %v", st, err)
	}
	for _, ep := range eps {
		tokend := etcdtest.SecureClient(t, dir, pki.UserTokend, ep)
		if _, err := tokend.Put(quick(t), "/tokend/x", ep); err != nil {
			t.Errorf("tokend via %s: %v", ep, err)
		}
		if _, err := tokend.Put(quick(t), "/x", ep); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("tokend /x via %s: %v", ep, err)
		}
	}
	users, err := root.UserList(quick(t))
	if err != nil || !slices.Equal(users.Users, []string{"root", "tokend"}) {
		t.Errorf("users %v, %v", users, err)
	}
}

// TestSecureReplace: embedded.Replace works in a secure cluster with root's
// client; the new member finds auth on already and serves tokend.
func TestSecureReplace(t *testing.T) {
	ms, root, dir := etcdtest.StartSecureCluster(t, 3)
	ms[2].Close()
	cfg := etcdtest.SecureConfig(t, "s3", dir)
	m, err := embedded.Replace(ctxT(t, 60*time.Second), root, "s3", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	tokend := etcdtest.SecureClient(t, dir, pki.UserTokend, m.ClientEndpoints()...)
	if _, err := tokend.Put(quick(t), "/tokend/after-replace", "ok"); err != nil {
		t.Errorf("tokend via the new member: %v", err)
	}
}

// TestTLSValidate: https needs TLS files, TLS files need https, and the
// files must load.
func TestTLSValidate(t *testing.T) {
	dir := etcdtest.PKI(t, "s1")
	good := etcdtest.SecureConfig(t, "s1", dir)
	if err := good.Validate(); err != nil {
		t.Fatalf("secure config: %v", err)
	}
	for name, mod := range map[string]func(c *embedded.Config){
		"https without files": func(c *embedded.Config) { c.ClientTLS = embedded.TLSFiles{} },
		"http with files": func(c *embedded.Config) {
			c.ClientURLs = []string{"http" + strings.TrimPrefix(c.ClientURLs[0], "https")}
		},
		"http peers with files": func(c *embedded.Config) {
			c.PeerURLs = []string{"http" + strings.TrimPrefix(c.PeerURLs[0], "https")}
		},
		"missing key": func(c *embedded.Config) { c.ClientTLS.KeyFile = "" },
		"absent cert": func(c *embedded.Config) { c.PeerTLS.CertFile = filepath.Join(dir, "nope.crt") },
		"key of another cert": func(c *embedded.Config) {
			c.ClientTLS.KeyFile = filepath.Join(dir, pki.ClientKeyFile(pki.UserRoot))
		},
		"CA not PEM": func(c *embedded.Config) { c.ClientTLS.CAFile = c.ClientTLS.KeyFile + "x" },
	} {
		c := good
		c.ClientTLS, c.PeerTLS = good.ClientTLS, good.PeerTLS
		mod(&c)
		if err := c.Validate(); !errors.Is(err, embedded.ErrBadConfig) {
			t.Errorf("%s: %v, want ErrBadConfig", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
