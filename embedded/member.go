package embedded

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Member is a running etcd member. Its methods are safe for concurrent use.
type Member struct {
	name       string
	id         uint64
	clientURLs []string
	etcd       *embed.Etcd
	logger     *zap.Logger  // etcd's logger; synced on Close
	closing    *atomic.Bool // set by Close: quiets the listeners' complaints

	errc    chan error    // capacity 1: the first fatal error; never closed
	stop    chan struct{} // closed by Close to end watch
	watched chan struct{} // closed when watch has returned

	closeOnce sync.Once
}

// Start starts the member described by cfg and returns once it is ready to
// serve clients: it has joined its cluster, which has a leader, and has
// published itself. It gives up with ErrNotReady after cfg.ReadyTimeout, or
// with ctx's error when ctx ends first; ctx is not used after Start returns.
// Errors while starting (bad config, a port in use, an unusable data dir, a
// cluster that does not match) are returned, never waited out. On any error
// everything Start began is stopped again.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded: start %q: %w", c.Name, err)
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded: start %q: data dir: %w", c.Name, err)
	}
	lg := c.Logger
	if lg == nil {
		lg = defaultLogger()
	}
	closing := new(atomic.Bool)
	lg = quietLogger(lg.With(zap.String("member", c.Name)), closing)

	e, err := embed.StartEtcd(c.embedConfig(lg))
	if err != nil {
		return nil, fmt.Errorf("embedded: start %q: %w", c.Name, err)
	}
	timer := time.NewTimer(c.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		abort(e, closing)
		if err == nil {
			err = errors.New("serving stopped")
		}
		return nil, fmt.Errorf("embedded: start %q: %w", c.Name, err)
	case <-e.Server.StopNotify():
		abort(e, closing)
		return nil, fmt.Errorf("%w: %q stopped while starting (see the etcd log)", ErrStopped, c.Name)
	case <-timer.C:
		abort(e, closing)
		return nil, fmt.Errorf("%w: %q after %v (is a quorum of the cluster up?)", ErrNotReady, c.Name, c.ReadyTimeout)
	case <-ctx.Done():
		abort(e, closing)
		return nil, fmt.Errorf("embedded: start %q: %w", c.Name, ctx.Err())
	}

	if !c.ClientTLS.IsZero() {
		if err := ensureAuth(ctx, e.Server, c.ReadyTimeout); err != nil {
			abort(e, closing)
			return nil, fmt.Errorf("embedded: start %q: %w", c.Name, err)
		}
	}

	m := &Member{
		name:       c.Name,
		id:         uint64(e.Server.MemberID()),
		clientURLs: slices.Clone(c.ClientURLs),
		etcd:       e,
		logger:     lg,
		closing:    closing,
		errc:       make(chan error, 1),
		stop:       make(chan struct{}),
		watched:    make(chan struct{}),
	}
	go m.watch()
	return m, nil
}

// abort stops a server that never became ready. embed.Etcd.Close alone would
// hang: it waits for the client servers, which wait for the server to be
// ready or stopping, and the server is only stopped after that wait. Stopping
// the server first releases them.
func abort(e *embed.Etcd, closing *atomic.Bool) {
	closing.Store(true)
	e.Server.HardStop()
	e.Close()
}

func defaultLogger() *zap.Logger {
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	lg, err := zc.Build()
	if err != nil { // only on a broken stderr sink
		return zap.NewNop()
	}
	return lg
}

// embedConfig maps a validated, defaulted Config onto etcd's; everything not
// set here keeps etcd's default.
func (c *Config) embedConfig(lg *zap.Logger) *embed.Config {
	ec := embed.NewConfig()
	ec.Name = c.Name
	ec.Dir = c.Dir
	ec.ListenPeerUrls = mustParse(c.ListenPeerURLs)
	ec.AdvertisePeerUrls = mustParse(c.PeerURLs)
	ec.ListenClientUrls = mustParse(c.ListenClientURLs)
	ec.AdvertiseClientUrls = mustParse(c.ClientURLs)
	ec.InitialCluster = c.InitialCluster
	ec.ClusterState = c.ClusterState
	ec.InitialClusterToken = c.ClusterToken
	ec.QuotaBackendBytes = c.QuotaBackendBytes
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = c.CompactionRetention.String()
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// The gateway (JSON over HTTP at /v3/...) is not used by tokend, and
	// with TLS it reaches the gRPC server with the member's own
	// certificate: off.
	ec.EnableGRPCGateway = false
	if !c.ClientTLS.IsZero() {
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile:       c.ClientTLS.CertFile,
			KeyFile:        c.ClientTLS.KeyFile,
			TrustedCAFile:  c.ClientTLS.CAFile,
			ClientCertAuth: true,
		}
		ec.ClientTLSInfo.Logger = lg
		ec.ClientTLSInfo.MinVersion = tls.VersionTLS12
	}
	if !c.PeerTLS.IsZero() {
		ec.PeerTLSInfo = transport.TLSInfo{
			CertFile:       c.PeerTLS.CertFile,
			KeyFile:        c.PeerTLS.KeyFile,
			TrustedCAFile:  c.PeerTLS.CAFile,
			ClientCertAuth: true,
			AllowedCNs:     slices.Clone(c.PeerAllowedCNs),
		}
		ec.PeerTLSInfo.Logger = lg
		ec.PeerTLSInfo.MinVersion = tls.VersionTLS12
	}
	return ec
}

func mustParse(urls []string) []url.URL {
	out := make([]url.URL, len(urls))
	for i, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			panic("embedded: URL passed validation but does not parse: " + s)
		}
		out[i] = *u
	}
	return out
}

// watch turns the first fatal event of the running server into an error on
// errc, until Close.
func (m *Member) watch() {
	defer close(m.watched)
	var err error
	select {
	case <-m.stop:
		return
	case e, ok := <-m.etcd.Err():
		if !ok {
			return
		}
		if e == nil {
			e = errors.New("serving stopped")
		}
		err = fmt.Errorf("embedded: member %q: %w", m.name, e)
	case <-m.etcd.Server.StopNotify():
		err = fmt.Errorf("%w: %q (removed from the cluster, or a fatal error: see the etcd log)", ErrStopped, m.name)
	}
	m.errc <- err // capacity 1 and the only send
}

// Name returns the member's name.
func (m *Member) Name() string { return m.name }

// ID returns the member's ID in its cluster.
func (m *Member) ID() uint64 { return m.id }

// IsLeader reports whether this member is, as far as it knows, the leader
// of its cluster. It is false after Close.
func (m *Member) IsLeader() bool {
	select {
	case <-m.etcd.Server.StopNotify():
		return false
	default:
		return m.etcd.Server.Leader() == m.etcd.Server.MemberID()
	}
}

// ClientEndpoints returns the URLs clients use to reach this member.
func (m *Member) ClientEndpoints() []string { return slices.Clone(m.clientURLs) }

// Err returns a channel that receives at most one error: the first fatal
// failure of the running member (a listener failing, or the server stopping
// by itself, ErrStopped, e.g. after being removed from the cluster). The
// member is no longer serving then; call Close. The channel is never closed,
// and nothing is sent on it because of Close.
func (m *Member) Err() <-chan error { return m.errc }

// Close stops the member and returns when it has stopped; the data dir can
// then be reused by Start. It is idempotent and safe to call concurrently;
// it always returns nil.
//
// Close every client, watch, lease keep-alive and session using this member
// first: etcd waits for open gRPC streams for up to its request timeout (7 s)
// before cutting them. With clients closed first, Close takes tens of
// milliseconds for a single member and up to about 1 s in a cluster (etcd
// gives the connections from live peers 1 s to end; a leader first hands
// leadership over, which is quick while the others are up).
// stopGrace bounds the leadership handover of Close.
const stopGrace = 2 * time.Second

func (m *Member) Close() error {
	m.closeOnce.Do(func() {
		close(m.stop)
		<-m.watched // so the stop below is not reported on errc
		m.closing.Store(true)
		// Stop the raft server (handing leadership over first, if it can)
		// before the client listeners: a request still in flight, such as
		// a linearizable read of the last server of a cluster going down,
		// then ends at once with "server stopped" instead of holding the
		// listeners' graceful stop for the request timeout (7 s), which
		// made a server without quorum take ~9 s to exit.
		//
		// Stop hands leadership over first; on the last member of a
		// cluster going down there is nobody to hand it to, and the
		// attempt (with linearizable reads retrying meanwhile, and over
		// TLS holding the client listener's HTTP shutdown) can last the
		// request timeout. After stopGrace the raft server is stopped
		// without handover.
		if srv := m.etcd.Server; srv != nil {
			stopped := make(chan struct{})
			go func() {
				defer close(stopped)
				srv.Stop()
			}()
			select {
			case <-stopped:
			case <-time.After(stopGrace):
				srv.HardStop()
				<-stopped
			}
		}
		m.etcd.Close()
		_ = m.logger.Sync() // fails harmlessly on a terminal's stderr
	})
	return nil
}
