// Package etcdtest starts real embedded etcd members on free loopback ports
// for tests of packages that use etcd. Data lives in t.TempDir(); everything
// is stopped by t.Cleanup in the right order (clients before members).
//
// Its VerifyTestMain replaces goleak.VerifyTestMain in packages that run
// members: a member stopped by Close leaves no goroutine behind, but one of
// its peer connections can take a few seconds to end.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/testkit/freeport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// attempts is how often StartCluster tries again with new ports when one was
// taken between choosing it and binding it.
const attempts = 3

// leakWait bounds how long VerifyTestMain waits for goroutines to end.
const leakWait = 10 * time.Second

// VerifyTestMain runs the tests and then, if they passed, fails the run when
// goroutines are left behind (goleak.Find with opts), after waiting up to
// 10 s for them to end. Call it from TestMain.
//
// The wait is needed, and nothing is ignored: a peer HTTP connection can
// outlive a closed member by up to 5 s. etcd's peer listener re-arms a 5 s
// read deadline before every read (client/pkg/transport.timeoutConn), which
// defeats net/http's interruption of a connection's background read, so
// http.Server.Shutdown (given 1 s by embed.Etcd.Close) leaves such a
// connection to end at its next read timeout.
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		var err error
		for start := time.Now(); time.Since(start) < leakWait; time.Sleep(100 * time.Millisecond) {
			if err = goleak.Find(opts...); err == nil {
				break
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// FreeURL returns "http://127.0.0.1:<port>" with a port that no other test
// of this run holds (see testkit/freeport).
func FreeURL(t testing.TB) string {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatalf("etcdtest: find a free port: %v", err)
	}
	return "http://127.0.0.1:" + strconv.Itoa(p)
}

// Logger returns the logger members started here use: etcd's errors, shown
// in the test's output.
func Logger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel))
}

// Config returns a one-member configuration named name with fresh loopback
// ports, a new data dir under t.TempDir() and Logger(t).
func Config(t testing.TB, name string) embedded.Config {
	t.Helper()
	return embedded.Config{
		Name:         name,
		Dir:          t.TempDir(),
		PeerURLs:     []string{FreeURL(t)},
		ClientURLs:   []string{FreeURL(t)},
		ReadyTimeout: 10 * time.Second,
		Logger:       Logger(t),
	}
}

// StartOne starts a one-member cluster and a client for it.
func StartOne(t testing.TB) (*embedded.Member, *clientv3.Client) {
	t.Helper()
	ms, cli := StartCluster(t, 1)
	return ms[0], cli
}

// StartCluster starts an n-member cluster (members "s1".."sN") and one
// client with all their endpoints. Members are closed at cleanup after the
// client, the leader last so that no member waits on a leadership handover;
// closing a member earlier in the test is fine (Close is idempotent).
func StartCluster(t testing.TB, n int) ([]*embedded.Member, *clientv3.Client) {
	t.Helper()
	if n < 1 {
		t.Fatalf("etcdtest: StartCluster(%d)", n)
	}
	var (
		ms  []*embedded.Member
		err error
	)
	for range attempts {
		if ms, err = startCluster(t, n); err == nil {
			break
		}
		t.Logf("etcdtest: cluster did not start, retrying with other ports: %v", err)
	}
	if err != nil {
		t.Fatalf("etcdtest: start %d members: %v", n, err)
	}
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.ClientEndpoints()...)
	}
	t.Cleanup(func() { closeAll(ms) })
	return ms, Client(t, eps...)
}

// Client returns a client for endpoints, closed at cleanup.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcdtest: client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// startCluster starts n members concurrently (none is ready before a quorum
// runs) and, if any fails, closes the others.
func startCluster(t testing.TB, n int) ([]*embedded.Member, error) {
	return startMembers(t, n, func(name string) embedded.Config { return Config(t, name) })
}

// startMembers starts n members s1..sN configured by config.
func startMembers(t testing.TB, n int, config func(name string) embedded.Config) ([]*embedded.Member, error) {
	cfgs := make([]embedded.Config, n)
	var pairs []string
	for i := range cfgs {
		cfgs[i] = config(fmt.Sprintf("s%d", i+1))
		pairs = append(pairs, cfgs[i].Name+"="+cfgs[i].PeerURLs[0])
	}
	ms := make([]*embedded.Member, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(pairs, ",")
		wg.Go(func() { ms[i], errs[i] = embedded.Start(context.Background(), cfgs[i]) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, m := range ms {
			if m != nil {
				m.Close()
			}
		}
		return nil, err
	}
	return ms, nil
}

// closeAll closes the followers (concurrently: each waits up to 1 s for its
// peer connections), then the leader: closing a leader first makes it hand
// leadership over, which waits for an election.
func closeAll(ms []*embedded.Member) {
	var wg sync.WaitGroup
	for _, m := range ms {
		if !m.IsLeader() {
			wg.Go(func() { m.Close() })
		}
	}
	wg.Wait()
	for _, m := range ms {
		m.Close()
	}
}

// PKI writes a CA, a member certificate for each of names (valid for
// 127.0.0.1 and localhost) and client certificates for the users tokend and
// root into a new directory under t.TempDir(), and returns it.
func PKI(t testing.TB, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	req := pki.Request{Dir: dir, Users: []string{pki.UserTokend, pki.UserRoot}}
	for _, n := range names {
		req.Servers = append(req.Servers, pki.Server{Name: n, Hosts: []string{"127.0.0.1", "localhost"}})
	}
	if _, err := pki.Write(req); err != nil {
		t.Fatalf("etcdtest: certificates: %v", err)
	}
	return dir
}

// SecureConfig is Config with TLS on both sides (https URLs) using member
// name's certificate from dir, made by PKI: the member turns etcd
// authentication on when it starts.
func SecureConfig(t testing.TB, name, dir string) embedded.Config {
	t.Helper()
	c := Config(t, name)
	files := embedded.TLSFiles{
		CertFile: filepath.Join(dir, pki.ServerCertFile(name)),
		KeyFile:  filepath.Join(dir, pki.ServerKeyFile(name)),
		CAFile:   filepath.Join(dir, pki.CACertFile),
	}
	c.ClientTLS, c.PeerTLS, c.PeerAllowedCNs = files, files, []string{pki.MemberCN}
	c.PeerURLs = []string{"https" + strings.TrimPrefix(c.PeerURLs[0], "http")}
	c.ClientURLs = []string{"https" + strings.TrimPrefix(c.ClientURLs[0], "http")}
	return c
}

// StartSecureCluster is StartCluster with SecureConfig members; the client
// it returns acts as user root. It returns the certificate directory too.
func StartSecureCluster(t testing.TB, n int) ([]*embedded.Member, *clientv3.Client, string) {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("s%d", i+1)
	}
	dir := PKI(t, names...)
	var (
		ms  []*embedded.Member
		err error
	)
	for range attempts {
		if ms, err = startMembers(t, n, func(name string) embedded.Config { return SecureConfig(t, name, dir) }); err == nil {
			break
		}
		t.Logf("etcdtest: cluster did not start, retrying with other ports: %v", err)
	}
	if err != nil {
		t.Fatalf("etcdtest: start %d secure members: %v", n, err)
	}
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.ClientEndpoints()...)
	}
	t.Cleanup(func() { closeAll(ms) })
	return ms, SecureClient(t, dir, pki.UserRoot, eps...), dir
}

// SecureClient returns a client acting as user (pki.UserTokend or
// pki.UserRoot) with its certificate from dir, closed at cleanup.
func SecureClient(t testing.TB, dir, user string, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := cluster.Dial(cluster.DialConfig{Endpoints: endpoints, TLS: &cluster.ClientTLS{
		CAFile:   filepath.Join(dir, pki.CACertFile),
		CertFile: filepath.Join(dir, pki.ClientCertFile(user)),
		KeyFile:  filepath.Join(dir, pki.ClientKeyFile(user)),
	}})
	if err != nil {
		t.Fatalf("etcdtest: client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
