package embedded

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Cluster states for Config.ClusterState.
const (
	ClusterStateNew      = "new"      // bootstrap a new cluster from InitialCluster
	ClusterStateExisting = "existing" // join a cluster that already has this member added
)

// Defaults applied by Start (and assumed by Validate) for zero fields.
const (
	DefaultName                = "default"
	DefaultClusterToken        = "tokend"
	DefaultCompactionRetention = time.Hour
	DefaultReadyTimeout        = 30 * time.Second
)

// TLSFiles names the PEM files of one side of a member: its certificate and
// key, and the CA whose certificates it accepts from the other end.
type TLSFiles struct {
	CertFile string
	KeyFile  string
	CAFile   string
}

// IsZero reports whether no file is named.
func (t TLSFiles) IsZero() bool { return t == TLSFiles{} }

// Config describes one member. Zero fields take the defaults documented on
// them. URLs are https where the side has TLS files (ClientTLS, PeerTLS),
// plain http where it has none. PeerURLs and ClientURLs are advertised
// (the other members and clients connect to them), so their host must be a
// specific address (an IP, or localhost), never 0.0.0.0; the member listens
// on them too unless ListenPeerURLs or ListenClientURLs say otherwise.
type Config struct {
	Name string // member name, e.g. "s1"; default "default"
	Dir  string // data dir, created 0700 if missing; required

	PeerURLs   []string // advertised, e.g. "http://10.0.0.1:2380"; required
	ClientURLs []string // advertised, e.g. "http://10.0.0.1:2379"; required

	// ListenPeerURLs and ListenClientURLs are where the member listens,
	// e.g. "http://0.0.0.0:2380" (every address). Default: PeerURLs and
	// ClientURLs.
	ListenPeerURLs   []string
	ListenClientURLs []string

	// InitialCluster lists every member at bootstrap:
	// "s1=http://10.0.0.1:2380,s2=http://10.0.0.2:2380,...". It must name
	// this member with exactly its PeerURLs. Default: Name=PeerURLs (a
	// one-member cluster). It is ignored once the data dir is initialised.
	InitialCluster string
	ClusterState   string // ClusterStateNew (default) or ClusterStateExisting
	ClusterToken   string // default DefaultClusterToken

	// ClientTLS secures the client URLs: the member serves them with
	// CertFile and KeyFile and accepts only clients with a certificate that
	// CAFile signed (client certificate authentication: the certificate's
	// common name is the etcd user). A member with ClientTLS also turns on
	// etcd authentication (see Start). Zero: plain http and no
	// authentication, open to anyone who reaches the URLs.
	ClientTLS TLSFiles
	// PeerTLS secures the peer URLs the same way; the member dials the
	// other members with the same certificate. Zero: plain http.
	PeerTLS TLSFiles
	// PeerAllowedCNs, if not empty, are the only certificate common names
	// accepted from peers, so that a client certificate of the same CA
	// cannot speak raft to the member (pki.MemberCN for certificates made
	// by tokend certs).
	PeerAllowedCNs []string

	// QuotaBackendBytes is the backend size at which etcd raises the NOSPACE
	// alarm and refuses writes; 0 means etcd's default (2 GiB).
	QuotaBackendBytes int64
	// CompactionRetention is the history kept by periodic auto-compaction;
	// 0 means DefaultCompactionRetention. Compaction cannot be turned off.
	CompactionRetention time.Duration
	// ReadyTimeout bounds how long Start waits for the member to be ready;
	// 0 means DefaultReadyTimeout. It counts from the end of etcd's
	// synchronous bootstrap, which for a new multi-member cluster takes
	// about 1 s per other member (etcd asks each whether it has bootstrapped
	// already, and they cannot answer before their own bootstrap is done).
	ReadyTimeout time.Duration

	// Logger receives etcd's logs. Default: zap's production logger (JSON
	// to stderr) at warn level.
	Logger *zap.Logger
}

// Validate reports whether Start would accept c once defaults are applied.
// It does not modify c. Errors wrap ErrBadConfig and name the field.
func (c *Config) Validate() error {
	d := c.withDefaults()
	return d.validate()
}

// withDefaults returns a copy of c with the zero fields set to their defaults
// and URLs in etcd's canonical form (as url.URL.String prints them).
func (c *Config) withDefaults() Config {
	d := *c
	if d.Name == "" {
		d.Name = DefaultName
	}
	d.PeerURLs = canonical(d.PeerURLs)
	d.ClientURLs = canonical(d.ClientURLs)
	if len(d.ListenPeerURLs) == 0 {
		d.ListenPeerURLs = d.PeerURLs
	}
	if len(d.ListenClientURLs) == 0 {
		d.ListenClientURLs = d.ClientURLs
	}
	d.ListenPeerURLs = canonical(d.ListenPeerURLs)
	d.ListenClientURLs = canonical(d.ListenClientURLs)
	if d.InitialCluster == "" && len(d.PeerURLs) > 0 {
		pairs := make([]string, len(d.PeerURLs))
		for i, u := range d.PeerURLs {
			pairs[i] = d.Name + "=" + u
		}
		d.InitialCluster = strings.Join(pairs, ",")
	}
	if d.ClusterState == "" {
		d.ClusterState = ClusterStateNew
	}
	if d.ClusterToken == "" {
		d.ClusterToken = DefaultClusterToken
	}
	if d.CompactionRetention == 0 {
		d.CompactionRetention = DefaultCompactionRetention
	}
	if d.ReadyTimeout == 0 {
		d.ReadyTimeout = DefaultReadyTimeout
	}
	return d
}

// canonical returns urls re-printed by url.URL.String where they parse, so
// they compare equal to the URLs etcd reports; the others are kept as given
// for validate to reject.
func canonical(urls []string) []string {
	out := make([]string, len(urls))
	for i, s := range urls {
		out[i] = s
		if u, err := url.Parse(s); err == nil {
			out[i] = u.String()
		}
	}
	return out
}

func badConfig(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrBadConfig}, args...)...)
}

// validate checks a Config that already has its defaults.
func (c *Config) validate() error {
	if strings.ContainsAny(c.Name, "=,") || strings.TrimSpace(c.Name) != c.Name {
		return badConfig("Name %q: must not contain '=', ',' or surrounding spaces", c.Name)
	}
	if c.Dir == "" {
		return badConfig("Dir: empty")
	}
	if len(c.PeerURLs) == 0 {
		return badConfig("PeerURLs: empty")
	}
	if len(c.ClientURLs) == 0 {
		return badConfig("ClientURLs: empty")
	}
	if err := checkTLSFiles("ClientTLS", c.ClientTLS); err != nil {
		return err
	}
	if err := checkTLSFiles("PeerTLS", c.PeerTLS); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		urls []string
	}{{"PeerURLs", c.PeerURLs}, {"ClientURLs", c.ClientURLs}} {
		for i, s := range f.urls {
			if _, err := c.checkURL(fmt.Sprintf("%s[%d]", f.name, i), s, false); err != nil {
				return err
			}
		}
	}
	hostports := map[string]string{} // listen host:port -> field that uses it
	for _, f := range []struct {
		name string
		urls []string
	}{{"ListenPeerURLs", c.ListenPeerURLs}, {"ListenClientURLs", c.ListenClientURLs}} {
		for i, s := range f.urls {
			field := fmt.Sprintf("%s[%d]", f.name, i)
			u, err := c.checkURL(field, s, true)
			if err != nil {
				return err
			}
			if other, ok := hostports[u.Host]; ok {
				return badConfig("%s %q: address %s already used by %s", field, s, u.Host, other)
			}
			hostports[u.Host] = field
		}
	}
	if err := c.validateInitialCluster(); err != nil {
		return err
	}
	switch c.ClusterState {
	case ClusterStateNew, ClusterStateExisting:
	default:
		return badConfig("ClusterState %q: must be %q or %q", c.ClusterState, ClusterStateNew, ClusterStateExisting)
	}
	if c.QuotaBackendBytes < 0 {
		return badConfig("QuotaBackendBytes %d: negative", c.QuotaBackendBytes)
	}
	if c.CompactionRetention < 0 {
		return badConfig("CompactionRetention %v: negative", c.CompactionRetention)
	}
	if c.ReadyTimeout < 0 {
		return badConfig("ReadyTimeout %v: negative", c.ReadyTimeout)
	}
	return nil
}

func (c *Config) validateInitialCluster() error {
	seen := map[string]string{} // URL -> member name
	var mine []string
	for _, pair := range strings.Split(c.InitialCluster, ",") {
		name, raw, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || name == "" {
			return badConfig("InitialCluster %q: entry %q is not name=URL", c.InitialCluster, pair)
		}
		u, err := c.checkURL("InitialCluster member "+name, raw, false)
		if err != nil {
			return err
		}
		s := u.String()
		if other, dup := seen[s]; dup {
			return badConfig("InitialCluster %q: URL %s listed for both %s and %s", c.InitialCluster, s, other, name)
		}
		seen[s] = name
		if name == c.Name {
			mine = append(mine, s)
		}
	}
	if len(mine) == 0 {
		return badConfig("InitialCluster %q: does not name this member %q", c.InitialCluster, c.Name)
	}
	a, b := slices.Sorted(slices.Values(mine)), slices.Sorted(slices.Values(c.PeerURLs))
	if !slices.Equal(a, b) {
		return badConfig("InitialCluster %q: lists %v for %q but PeerURLs are %v", c.InitialCluster, a, c.Name, b)
	}
	return nil
}

// scheme is the URL scheme of the client or peer side: https with TLS
// files, else http.
func scheme(t TLSFiles) string {
	if t.IsZero() {
		return "http"
	}
	return "https"
}

// checkURL accepts exactly scheme://host:port where scheme is https for a
// side with TLS files and http for one without, host is an IP address or
// localhost and port is 1-65535. The side is the peer side for the fields
// named Peer* and InitialCluster, else the client side. Only a listen URL may have an
// unspecified host (0.0.0.0, ::). An advertised URL may also name its host
// by DNS (server-0.tokend-server.ns.svc in a Kubernetes StatefulSet,
// server1 in compose): etcd resolves it when it connects, and a listen
// URL, which etcd must bind, takes an address.
func (c *Config) checkURL(field, s string, listen bool) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, badConfig("%s %q: %v", field, s, err)
	}
	want, side := scheme(c.ClientTLS), "ClientTLS"
	if strings.Contains(field, "Peer") || strings.HasPrefix(field, "InitialCluster") {
		want, side = scheme(c.PeerTLS), "PeerTLS"
	}
	if u.Scheme != want {
		if want == "https" {
			return nil, badConfig("%s %q: scheme must be https: %s is set", field, s, side)
		}
		return nil, badConfig("%s %q: scheme must be http (set %s for https)", field, s, side)
	}
	if u.User != nil || u.Path != "" || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, badConfig("%s %q: must be %s://host:port with nothing after the port", field, s, want)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, badConfig("%s %q: want host:port: %v", field, s, err)
	}
	if host != "localhost" {
		ip := net.ParseIP(host)
		switch {
		case ip == nil && listen:
			return nil, badConfig("%s %q: host must be an IP address or localhost: the member binds it (a DNS name may be advertised, with ListenPeerURLs or ListenClientURLs to listen on)", field, s)
		case ip == nil && !dnsName(host):
			return nil, badConfig("%s %q: host must be an IP address, localhost or a DNS name", field, s)
		case ip != nil && ip.IsUnspecified() && !listen:
			return nil, badConfig("%s %q: host must be a specific address: the URL is advertised (listen on 0.0.0.0 with ListenPeerURLs or ListenClientURLs)", field, s)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, badConfig("%s %q: port must be 1-65535", field, s)
	}
	return u, nil
}

// checkTLSFiles accepts no files, or all three: a certificate and key that
// load as a pair and a CA file with at least one PEM certificate.
func checkTLSFiles(field string, t TLSFiles) error {
	if t.IsZero() {
		return nil
	}
	for _, f := range []struct{ name, path string }{{"CertFile", t.CertFile}, {"KeyFile", t.KeyFile}, {"CAFile", t.CAFile}} {
		if f.path == "" {
			return badConfig("%s.%s: empty (give all three files, or none)", field, f.name)
		}
	}
	if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
		return badConfig("%s: certificate %s and key %s: %v", field, t.CertFile, t.KeyFile, err)
	}
	b, err := os.ReadFile(t.CAFile)
	if err != nil {
		return badConfig("%s.CAFile: %v", field, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return badConfig("%s.CAFile %s: no PEM certificate in it", field, t.CAFile)
	}
	return nil
}

// dnsName reports whether host is a DNS name: dot-separated labels of
// letters, digits and inner hyphens, 1-63 bytes each, 253 in all.
func dnsName(host string) bool {
	host = strings.TrimSuffix(host, ".")
	if host == "" || len(host) > 253 {
		return false
	}
	for _, l := range strings.Split(host, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}
