package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/internal/pki"
)

// defaultWorkerCertsDir is where a worker (and tokenctl) look for
// certificates by default: those of the all-in-one default's data dir on
// the same machine.
const defaultWorkerCertsDir = "./tokend-data/pki"

// memberFileFlags and clientFileFlags are the options naming TLS files; any
// of them given means the files are the operator's, never created here.
var (
	memberFileFlags = []string{"etcd-cert-file", "etcd-key-file", "etcd-ca-file", "peer-cert-file", "peer-key-file", "peer-ca-file"}
	clientFileFlags = []string{"etcd-cacert", "etcd-cert", "etcd-key"}
)

// defaultTLSFiles fills the file names not given from --certs-dir.
func (c *config) defaultTLSFiles() {
	if c.certsDir == "" {
		c.certsDir = defaultWorkerCertsDir
		if c.mode != modeWorker {
			c.certsDir = filepath.Join(c.dataDir, "pki")
		}
	}
	in := func(p *string, name string) {
		if *p == "" {
			*p = filepath.Join(c.certsDir, name)
		}
	}
	if c.mode != modeWorker {
		in(&c.etcdCertFile, pki.ServerCertFile(c.name))
		in(&c.etcdKeyFile, pki.ServerKeyFile(c.name))
		in(&c.etcdCAFile, pki.CACertFile)
		for _, f := range []struct {
			p   *string
			def string
		}{{&c.peerCertFile, c.etcdCertFile}, {&c.peerKeyFile, c.etcdKeyFile}, {&c.peerCAFile, c.etcdCAFile}} {
			if *f.p == "" {
				*f.p = f.def
			}
		}
	}
	in(&c.etcdCACert, pki.CACertFile)
	in(&c.etcdCert, pki.ClientCertFile(pki.UserTokend))
	in(&c.etcdKey, pki.ClientKeyFile(pki.UserTokend))
	in(&c.clusterKeyFile, pki.ClusterKeyFile)
	if c.mode != modeWorker {
		in(&c.clientKeyFile, pki.DefaultClientKeyFile)
	}
}

// clientTLS is this process's etcd client identity; nil with --insecure.
func (c *config) clientTLS() *cluster.ClientTLS {
	if c.insecure {
		return nil
	}
	return &cluster.ClientTLS{CAFile: c.etcdCACert, CertFile: c.etcdCert, KeyFile: c.etcdKey}
}

// memberTLS is the embedded member's TLS: both sides, or none with --insecure.
func (c *config) memberTLS() (client, peer embedded.TLSFiles, allowedCNs []string) {
	if c.insecure {
		return
	}
	client = embedded.TLSFiles{CertFile: c.etcdCertFile, KeyFile: c.etcdKeyFile, CAFile: c.etcdCAFile}
	peer = embedded.TLSFiles{CertFile: c.peerCertFile, KeyFile: c.peerKeyFile, CAFile: c.peerCAFile}
	if c.peerAllowedCN != "" {
		allowedCNs = []string{c.peerAllowedCN}
	}
	return
}

// prepareTLS runs at start, after validate and resolveAdvertise: with
// --insecure it warns (and refuses a data dir whose etcd has
// authentication on); otherwise the all-in-one default creates its CA and
// certificates in --certs-dir when they are missing, and every mode checks
// that its files load. Errors wrap errConfig and name the flag.
func (c *config) prepareTLS(log *slog.Logger) error {
	memberData := false
	if c.mode != modeWorker {
		_, err := os.Stat(filepath.Join(c.memberDir(), "member"))
		memberData = err == nil
	}
	if c.insecure {
		for _, f := range append(append([]string{"certs-dir"}, memberFileFlags...), clientFileFlags...) {
			if c.set[f] {
				return bad(f, "given together with --insecure, which runs etcd without TLS: drop one of them")
			}
		}
		if _, err := os.Stat(filepath.Join(c.certsDir, pki.CACertFile)); err == nil && memberData {
			return bad("insecure", "%s was created with TLS (%s exists) and its etcd requires authentication: drop --insecure", c.dataDir, filepath.Join(c.certsDir, pki.CACertFile))
		}
		where := strings.Join(c.clientURLs, ",")
		if c.mode == modeWorker {
			where = strings.Join(c.etcdEndpoints, ",")
		}
		log.Warn("etcd runs WITHOUT TLS and authentication (--insecure): anyone who can reach " + where + " can read and rewrite the cluster's state, e.g. register a fake worker; " +
			"and clients are NOT authenticated: anyone who can reach the workers' UDP ports can open sessions and take tokens")
		return nil
	}
	explicit := false
	for _, f := range append(append([]string{}, memberFileFlags...), clientFileFlags...) {
		explicit = explicit || c.set[f]
	}
	if c.mode == modeAll && !explicit {
		if err := c.createLocalCerts(log, memberData); err != nil {
			return err
		}
	}
	return c.checkTLSFiles()
}

// createLocalCerts makes the all-in-one default's CA and certificates in
// --certs-dir, unless they are there already.
func (c *config) createLocalCerts(log *slog.Logger, memberData bool) error {
	if _, err := os.Stat(filepath.Join(c.certsDir, pki.CACertFile)); errors.Is(err, os.ErrNotExist) && memberData {
		return bad("data-dir", "%s holds etcd data made without TLS (by an older tokend, or with --insecure), and %s has no certificates: "+
			"run it with --insecure to keep it that way, or move the directory away to start a new cluster with TLS and authentication",
			c.dataDir, c.certsDir)
	}
	res, err := writeLocalCerts(c.certsDir, []pki.Server{{Name: c.name, Hosts: urlHosts(c.advClientURLs, c.advPeerURLs)}})
	if err != nil {
		return bad("certs-dir", "%v", err)
	}
	if len(res.Created) > 0 {
		log.Info("created the etcd CA and certificates (etcd requires them: TLS and authentication are on; --insecure turns both off)",
			"dir", c.certsDir, "files", len(res.Created))
	}
	return nil
}

// writeLocalCerts writes a CA, the member certificates of servers (each
// also valid for localhost, 127.0.0.1 and ::1) and the client certificates
// of the users tokend and root into dir; what exists and fits is kept. It
// is what the all-in-one default does on its first start, and what a local
// cluster of several servers on one machine (tokend up) needs before it
// starts them.
func writeLocalCerts(dir string, servers []pki.Server) (pki.Result, error) {
	req := pki.Request{Dir: dir, Users: []string{pki.UserTokend, pki.UserRoot}}
	for _, s := range servers {
		s.Hosts = append(append([]string(nil), s.Hosts...), loopbackHosts...)
		req.Servers = append(req.Servers, s)
	}
	return pki.Write(req)
}

// loopbackHosts are in every member certificate: a server dials its own
// member on loopback when it listens on every address.
var loopbackHosts = []string{"localhost", "127.0.0.1", "::1"}

// urlHosts returns the distinct hosts of urls.
func urlHosts(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		for _, s := range l {
			u, err := url.Parse(s)
			if err != nil {
				continue
			}
			h, _, err := net.SplitHostPort(u.Host)
			if err != nil || h == "" {
				continue
			}
			if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
				continue
			}
			dup := false
			for _, o := range out {
				dup = dup || o == h
			}
			if !dup {
				out = append(out, h)
			}
		}
	}
	return out
}

// checkTLSFiles checks that every file this mode uses loads.
func (c *config) checkTLSFiles() error {
	hint := fmt.Sprintf(`make them with "tokend certs --dir DIR --server %s=HOST,..." and copy ca.crt, %s, %s, tokend.crt and tokend.key into %s (or point --certs-dir at them), or run with --insecure`,
		c.name, pki.ServerCertFile(c.name), pki.ServerKeyFile(c.name), c.certsDir)
	if c.mode == modeWorker {
		hint = fmt.Sprintf(`copy ca.crt, tokend.crt and tokend.key from the directory "tokend certs" made into %s (or point --certs-dir at them); --insecure only if the servers run with --insecure`, c.certsDir)
	}
	type pair struct{ certFlag, cert, keyFlag, key, caFlag, ca string }
	pairs := []pair{{"etcd-cert", c.etcdCert, "etcd-key", c.etcdKey, "etcd-cacert", c.etcdCACert}}
	if c.mode != modeWorker {
		pairs = append([]pair{
			{"etcd-cert-file", c.etcdCertFile, "etcd-key-file", c.etcdKeyFile, "etcd-ca-file", c.etcdCAFile},
			{"peer-cert-file", c.peerCertFile, "peer-key-file", c.peerKeyFile, "peer-ca-file", c.peerCAFile},
		}, pairs...)
	}
	for _, p := range pairs {
		for _, f := range []struct{ flag, path string }{{p.caFlag, p.ca}, {p.certFlag, p.cert}, {p.keyFlag, p.key}} {
			if _, err := os.Stat(f.path); err != nil {
				return bad(f.flag, "%v: %s", err, hint)
			}
		}
		_, err := (cluster.ClientTLS{CAFile: p.ca, CertFile: p.cert, KeyFile: p.key}).Config()
		if err != nil {
			return bad(p.certFlag, "%v", err)
		}
	}
	return nil
}

// etcdctlHint is the etcdctl command the banner suggests: with the
// operator's certificate if this machine has it, else this process's.
func (c *config) etcdctlHint(endpoint string) string {
	if c.insecure {
		return "go tool etcdctl --endpoints=" + endpoint + " get --prefix /tokend/"
	}
	flags := fmt.Sprintf("--cacert=%s --cert=%s --key=%s", c.etcdCACert, c.etcdCert, c.etcdKey)
	if fileExists(filepath.Join(c.certsDir, pki.ClientCertFile(pki.UserRoot))) {
		flags = etcdctlFlags(c.certsDir)
	}
	return "go tool etcdctl --endpoints=" + endpoint + " " + flags + " get --prefix /tokend/"
}

// etcdctlFlags are the etcdctl flags that authenticate as root with the
// files writeLocalCerts made in dir (for tokend up's banner, too).
func etcdctlFlags(dir string) string {
	return fmt.Sprintf("--cacert=%s --cert=%s --key=%s", filepath.Join(dir, pki.CACertFile),
		filepath.Join(dir, pki.ClientCertFile(pki.UserRoot)), filepath.Join(dir, pki.ClientKeyFile(pki.UserRoot)))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
