package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ClientTLS names the PEM files of an etcd client identity: the CA that
// signed the members' certificates, and this client's certificate and key
// (its common name is the etcd user it acts as).
type ClientTLS struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// Config loads the files into a tls.Config for an etcd client.
func (t ClientTLS) Config() (*tls.Config, error) {
	for _, f := range []struct{ flag, path string }{{"CA", t.CAFile}, {"certificate", t.CertFile}, {"key", t.KeyFile}} {
		if f.path == "" {
			return nil, fmt.Errorf("%w: no %s file given", ErrTLSFiles, f.flag)
		}
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: CA: %v", ErrTLSFiles, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: CA %s: no PEM certificate in it", ErrTLSFiles, t.CAFile)
	}
	pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate %s, key %s: %v", ErrTLSFiles, t.CertFile, t.KeyFile, err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// DialConfig says how to reach etcd.
type DialConfig struct {
	// Endpoints are host:port or URLs. With TLS, https:// or no scheme;
	// without, http:// or no scheme.
	Endpoints []string
	// TLS is the client identity; nil dials without TLS and without
	// credentials (a cluster started with --insecure).
	TLS *ClientTLS
	// DialTimeout bounds the first connection; default 5 s.
	DialTimeout time.Duration
	// Logger receives the etcd client's logs; default none.
	Logger *zap.Logger
}

// Dial returns an etcd client for cfg. Every etcd client of tokend's
// binaries is made here, so that they all speak TLS the same way. Like
// clientv3.New it does not wait for a connection.
func Dial(cfg DialConfig) (*clientv3.Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: none given", ErrEndpoint)
	}
	for _, ep := range cfg.Endpoints {
		if err := checkEndpoint(ep, cfg.TLS != nil); err != nil {
			return nil, err
		}
	}
	cc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, Logger: cfg.Logger}
	if cc.DialTimeout <= 0 {
		cc.DialTimeout = 5 * time.Second
	}
	if cc.Logger == nil {
		cc.Logger = zap.NewNop()
	}
	if cfg.TLS != nil {
		tc, err := cfg.TLS.Config()
		if err != nil {
			return nil, err
		}
		cc.TLS = tc
	}
	return clientv3.New(cc)
}

// checkEndpoint refuses a scheme that contradicts secure: the etcd client
// would silently drop TLS for http://, and fail obscurely for https://
// without it.
func checkEndpoint(ep string, secure bool) error {
	if !strings.Contains(ep, "://") {
		return nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("%w: %q: %v", ErrEndpoint, ep, err)
	}
	switch {
	case u.Scheme == "http" && secure:
		return fmt.Errorf("%w: %q is plain http but etcd is reached over TLS: use https:// or host:port (or --insecure for a cluster started with --insecure)", ErrEndpoint, ep)
	case u.Scheme == "https" && !secure:
		return fmt.Errorf("%w: %q is https but no client certificate is used (--insecure)", ErrEndpoint, ep)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%w: %q: scheme must be http or https", ErrEndpoint, ep)
	}
	return nil
}
