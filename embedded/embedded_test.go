package embedded_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/embedded/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestMain checks that stopped members leave no goroutine behind.
func TestMain(m *testing.M) {
	etcdtest.VerifyTestMain(m)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, cli *clientv3.Client, k, v string) {
	t.Helper()
	if _, err := cli.Put(ctxT(t, 10*time.Second), k, v); err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
}

func get(t *testing.T, cli *clientv3.Client, k string) string {
	t.Helper()
	resp, err := cli.Get(ctxT(t, 10*time.Second), k)
	if err != nil {
		t.Fatalf("get %s: %v", k, err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %d keys", k, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

func newClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func TestStartPutGetRestart(t *testing.T) {
	cfg := etcdtest.Config(t, "s1")
	m, err := embedded.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Name() != "s1" || !slices.Equal(m.ClientEndpoints(), cfg.ClientURLs) || m.ID() == 0 {
		t.Fatalf("Name %q, ClientEndpoints %v, ID %x", m.Name(), m.ClientEndpoints(), m.ID())
	}
	if !m.IsLeader() {
		t.Error("the only member is not leader")
	}
	id := m.ID()

	cli := newClient(t, m.ClientEndpoints()...)
	put(t, cli, "/tokend/test", "v1")
	if got := get(t, cli, "/tokend/test"); got != "v1" {
		t.Fatalf("get = %q, want v1", got)
	}
	cli.Close()

	start := time.Now()
	m.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with the client closed first, want < 2s", d)
	}
	select {
	case err := <-m.Err():
		t.Errorf("Err() after Close = %v, want nothing", err)
	default:
	}

	m, err = embedded.Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("restart on the same data dir: %v", err)
	}
	defer m.Close()
	if m.ID() != id {
		t.Errorf("ID after restart = %x, want %x", m.ID(), id)
	}
	cli = newClient(t, m.ClientEndpoints()...)
	defer cli.Close()
	if got := get(t, cli, "/tokend/test"); got != "v1" {
		t.Fatalf("get after restart = %q, want v1", got)
	}
}

func TestCloseIdempotent(t *testing.T) {
	m, err := embedded.Start(t.Context(), etcdtest.Config(t, "s1"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			if err := m.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	wg.Wait()
	if err := m.Close(); err != nil {
		t.Errorf("Close again: %v", err)
	}
	if m.IsLeader() {
		t.Error("IsLeader after Close")
	}
}

// TestCloseLogsNoErrors: a clean start and stop logs nothing at error level
// (etcd's listeners complain about being closed; Member filters that out).
func TestCloseLogsNoErrors(t *testing.T) {
	t.Run("plain", func(t *testing.T) { closeLogsNoErrors(t, etcdtest.Config(t, "s1")) })
	t.Run("tls", func(t *testing.T) { closeLogsNoErrors(t, etcdtest.SecureConfig(t, "s1", etcdtest.PKI(t, "s1"))) })
}

func closeLogsNoErrors(t *testing.T, cfg embedded.Config) {
	core, logs := observer.New(zap.InfoLevel)
	cfg.Logger = zap.New(core)
	m, err := embedded.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if logs.Len() == 0 {
		t.Fatal("nothing logged at info level: is the logger used?")
	}
	for _, e := range logs.FilterLevelExact(zap.ErrorLevel).All() {
		t.Errorf("logged an error: %s %v", e.Message, e.ContextMap())
	}
	if n := logs.FilterMessageSnippet("grpc server due to error").Len(); n > 0 {
		t.Errorf("logged the listeners' closing %d times", n)
	}
	if n := logs.FilterMessageSnippet("single port").Len(); n > 0 {
		t.Errorf("logged the single-port warning %d times", n)
	}
}

func TestValidate(t *testing.T) {
	base := embedded.Config{
		Name:       "s1",
		Dir:        "/var/lib/tokend",
		PeerURLs:   []string{"http://10.0.0.1:2380"},
		ClientURLs: []string{"http://10.0.0.1:2379"},
	}
	if err := base.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	three := "s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,s3=http://10.0.0.3:2380"
	tests := []struct {
		name string
		edit func(*embedded.Config)
		want string // in the message; "" = valid
	}{
		{"defaults", func(c *embedded.Config) { c.Name = "" }, ""},
		{"three members", func(c *embedded.Config) { c.InitialCluster = three }, ""},
		{"existing", func(c *embedded.Config) { c.ClusterState = "existing" }, ""},
		{"localhost and ipv6", func(c *embedded.Config) {
			c.PeerURLs = []string{"http://localhost:2380", "http://[::1]:2380"}
		}, ""},
		{"name with =", func(c *embedded.Config) { c.Name = "a=b" }, "Name"},
		{"name with ,", func(c *embedded.Config) { c.Name = "a,b" }, "Name"},
		{"empty dir", func(c *embedded.Config) { c.Dir = "" }, "Dir"},
		{"no peer URLs", func(c *embedded.Config) { c.PeerURLs = nil }, "PeerURLs"},
		{"no client URLs", func(c *embedded.Config) { c.ClientURLs = nil }, "ClientURLs"},
		{"https", func(c *embedded.Config) { c.PeerURLs = []string{"https://10.0.0.1:2380"} }, "PeerURLs[0]"},
		{"unix", func(c *embedded.Config) { c.ClientURLs = []string{"unix:///tmp/s"} }, "ClientURLs[0]"},
		{"unparsable", func(c *embedded.Config) { c.ClientURLs = []string{"http://%zz"} }, "ClientURLs[0]"},
		{"no port", func(c *embedded.Config) { c.PeerURLs = []string{"http://10.0.0.1"} }, "PeerURLs[0]"},
		{"port 0", func(c *embedded.Config) { c.PeerURLs = []string{"http://10.0.0.1:0"} }, "PeerURLs[0]"},
		{"port too big", func(c *embedded.Config) { c.PeerURLs = []string{"http://10.0.0.1:65536"} }, "PeerURLs[0]"},
		{"host name", func(c *embedded.Config) { c.ClientURLs = []string{"http://etcd.example:2379"} }, "ClientURLs[0]"},
		{"unspecified host", func(c *embedded.Config) { c.ClientURLs = []string{"http://0.0.0.0:2379"} }, "ClientURLs[0]"},
		{"path", func(c *embedded.Config) { c.ClientURLs = []string{"http://10.0.0.1:2379/x"} }, "ClientURLs[0]"},
		{"same address twice", func(c *embedded.Config) { c.ClientURLs = c.PeerURLs }, "ClientURLs[0]"},
		{"initial cluster syntax", func(c *embedded.Config) { c.InitialCluster = "http://10.0.0.1:2380" }, "InitialCluster"},
		{"initial cluster bad URL", func(c *embedded.Config) {
			c.InitialCluster = "s1=http://10.0.0.1:2380,s2=ftp://10.0.0.2:2380"
		}, "InitialCluster"},
		{"initial cluster duplicate URL", func(c *embedded.Config) {
			c.InitialCluster = "s1=http://10.0.0.1:2380,s2=http://10.0.0.1:2380"
		}, "InitialCluster"},
		{"name not in initial cluster", func(c *embedded.Config) { c.Name = "s4"; c.InitialCluster = three }, "InitialCluster"},
		{"initial cluster URL mismatch", func(c *embedded.Config) {
			c.PeerURLs = []string{"http://10.0.0.9:2380"}
			c.InitialCluster = three
		}, "InitialCluster"},
		{"cluster state", func(c *embedded.Config) { c.ClusterState = "old" }, "ClusterState"},
		{"quota", func(c *embedded.Config) { c.QuotaBackendBytes = -1 }, "QuotaBackendBytes"},
		{"retention", func(c *embedded.Config) { c.CompactionRetention = -time.Hour }, "CompactionRetention"},
		{"ready timeout", func(c *embedded.Config) { c.ReadyTimeout = -time.Second }, "ReadyTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			tt.edit(&c)
			before := c
			err := c.Validate()
			if !slices.Equal(c.PeerURLs, before.PeerURLs) || c.Name != before.Name || c.InitialCluster != before.InitialCluster {
				t.Error("Validate modified the config")
			}
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate = %v, want nil", err)
			case tt.want == "":
			case err == nil:
				t.Fatalf("Validate = nil, want an error naming %s", tt.want)
			case !errors.Is(err, embedded.ErrBadConfig):
				t.Fatalf("Validate = %v, not ErrBadConfig", err)
			case !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "embedded: "):
				t.Fatalf("Validate = %q, want it to name %s", err, tt.want)
			}
		})
	}
}

// TestStartErrors: a member that cannot start returns an error promptly
// instead of hanging, and leaves nothing running (checked by goleak).
func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyURL := "http://" + busy.Addr().String()

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		edit    func(*embedded.Config)
		ctx     func(*testing.T) context.Context
		want    error  // errors.Is; nil = any error
		message string // in the message
	}{
		{name: "bad config", edit: func(c *embedded.Config) { c.Dir = "" }, want: embedded.ErrBadConfig},
		{name: "client port in use", edit: func(c *embedded.Config) { c.ClientURLs = []string{busyURL} }, message: "address already in use"},
		{name: "peer port in use", edit: func(c *embedded.Config) { c.PeerURLs = []string{busyURL}; c.InitialCluster = "" }, message: "address already in use"},
		{name: "data dir is a file", edit: func(c *embedded.Config) { c.Dir = file }, message: "data dir"},
		{name: "no quorum", edit: func(c *embedded.Config) {
			// s2 and s3 never start.
			c.InitialCluster = "s1=" + c.PeerURLs[0] + ",s2=" + etcdtest.FreeURL(t) + ",s3=" + etcdtest.FreeURL(t)
			c.ReadyTimeout = time.Second
		}, want: embedded.ErrNotReady},
		{name: "context ends", edit: func(c *embedded.Config) {
			c.InitialCluster = "s1=" + c.PeerURLs[0] + ",s2=" + etcdtest.FreeURL(t) + ",s3=" + etcdtest.FreeURL(t)
		}, ctx: func(t *testing.T) context.Context { return ctxT(t, time.Second) }, want: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := etcdtest.Config(t, "s1")
			tt.edit(&cfg)
			ctx := t.Context()
			if tt.ctx != nil {
				ctx = tt.ctx(t)
			}
			start := time.Now()
			m, err := embedded.Start(ctx, cfg)
			if err == nil {
				m.Close()
				t.Fatal("Start succeeded")
			}
			// Not a hang: well under the 30 s default ReadyTimeout, with
			// slack for a loaded machine.
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Start took %v to fail", d)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Start = %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.message) || !strings.HasPrefix(err.Error(), "embedded: ") {
				t.Errorf("Start = %q, want %q in it", err, tt.message)
			}
			t.Log(err)
		})
	}
}

// TestClusterReplace: three members; one stops and writes go on; Replace
// swaps it for a new member and the cluster is three healthy members again.
func TestClusterReplace(t *testing.T) {
	ms, cli := etcdtest.StartCluster(t, 3)
	put(t, cli, "/tokend/a", "1")

	// Replace refuses before touching the cluster.
	notEmpty := etcdtest.Config(t, "s4")
	if err := os.WriteFile(filepath.Join(notEmpty.Dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := embedded.Replace(ctxT(t, 5*time.Second), cli, "s3", notEmpty); !errors.Is(err, embedded.ErrDataDirNotEmpty) {
		t.Fatalf("Replace with a non-empty dir = %v, want ErrDataDirNotEmpty", err)
	}
	if _, err := embedded.Replace(ctxT(t, 5*time.Second), cli, "s3", etcdtest.Config(t, "s4")); !errors.Is(err, embedded.ErrMemberAlive) {
		t.Fatalf("Replace of a live member = %v, want ErrMemberAlive", err)
	}
	if _, err := embedded.Replace(ctxT(t, 5*time.Second), cli, "nope", etcdtest.Config(t, "s4")); !errors.Is(err, embedded.ErrNoSuchMember) {
		t.Fatalf("Replace of an unknown member = %v, want ErrNoSuchMember", err)
	}

	// Stop s3; the other two keep a quorum.
	cli.Close() // it may have streams to s3 (see Member.Close)
	dead := ms[2]
	wasLeader := dead.IsLeader()
	start := time.Now()
	dead.Close()
	t.Logf("closed %s (leader: %v) in %v", dead.Name(), wasLeader, time.Since(start))
	cli = newClient(t, append(ms[0].ClientEndpoints(), ms[1].ClientEndpoints()...)...)
	defer cli.Close()
	put(t, cli, "/tokend/b", "2")

	cfg := etcdtest.Config(t, "s4")
	start = time.Now()
	m4, err := embedded.Replace(ctxT(t, 30*time.Second), cli, "s3", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m4.Close() }) // after the clients (deferred) are closed
	t.Logf("Replace took %v", time.Since(start))

	list, err := cli.MemberList(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mb := range list.Members {
		names = append(names, mb.Name)
		for _, ep := range mb.ClientURLs {
			if _, err := cli.Status(ctxT(t, 5*time.Second), ep); err != nil {
				t.Errorf("member %s at %s: %v", mb.Name, ep, err)
			}
		}
	}
	slices.Sort(names)
	if want := []string{"s1", "s2", "s4"}; !slices.Equal(names, want) {
		t.Fatalf("members %v, want %v", names, want)
	}

	// The new member serves linearizable reads of data written before it
	// joined, and takes writes.
	cli4 := newClient(t, m4.ClientEndpoints()...)
	defer cli4.Close()
	if got := get(t, cli4, "/tokend/a"); got != "1" {
		t.Errorf("s4 reads a = %q, want 1", got)
	}
	if got := get(t, cli4, "/tokend/b"); got != "2" {
		t.Errorf("s4 reads b = %q, want 2", got)
	}
	put(t, cli4, "/tokend/c", "3")
	if got := get(t, cli, "/tokend/c"); got != "3" {
		t.Errorf("s1/s2 read c = %q, want 3", got)
	}
	for _, m := range append(ms[:2], m4) {
		select {
		case err := <-m.Err():
			t.Errorf("%s: %v", m.Name(), err)
		default:
		}
	}

	// A member removed from the cluster stops by itself and says so on Err.
	// etcd refuses the removal (unhealthy cluster) until s4 has been
	// connected for 5 s, hence the retries.
	cli4.Close()
	start = time.Now()
	ctx := ctxT(t, 20*time.Second)
	for {
		_, err := cli.MemberRemove(ctx, m4.ID())
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("remove s4: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("removing s4 took %v", time.Since(start))
	select {
	case err := <-m4.Err():
		if !errors.Is(err, embedded.ErrStopped) {
			t.Errorf("s4 Err() = %v, want ErrStopped", err)
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		t.Fatal("s4 removed but no error on Err()")
	}
	start = time.Now()
	m4.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close of a stopped member took %v", d)
	}
}
