// Package pki makes the certificates that secure tokend's etcd: one cluster
// CA, a certificate per etcd member (used on its client URLs and, as server
// and client, between peers) and client certificates whose common name is
// the etcd user they authenticate as ("tokend" for servers and workers,
// "root" for the operator), and the key files of the datagram
// authentication (keys.go). It uses only the standard library and
// wire/auth: ECDSA P-256 keys, x509 certificates, PEM files, key files.
//
// A directory made by [Write] holds, by these names:
//
//	ca.crt, ca.key                   the cluster CA (keep ca.key off the servers if you can)
//	server-<name>.crt, .key          etcd member <name>: CN tokend-member, SANs its name and hosts
//	tokend.crt, tokend.key           etcd user tokend: coordinators and workers
//	root.crt, root.key               etcd user root: the operator (tokenctl member, etcdctl)
//	cluster.key                      the cluster key (WriteKeys): servers and workers only
//	client.key                       the client key "default" (WriteKeys): for clients
//
// Keys are written 0600, certificates 0644, the directory 0700.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Common names and etcd users.
const (
	// MemberCN is the common name of every member certificate. Members
	// accept peer connections only from certificates with this name, so a
	// client certificate of the same CA cannot talk raft to them; as an etcd
	// user name it exists nowhere, so a member certificate used on a client
	// URL is refused every request.
	MemberCN = "tokend-member"
	// UserTokend is the etcd user of coordinators and workers: read-write
	// on /tokend/ only.
	UserTokend = "tokend"
	// UserRoot is etcd's administrator, for the operator.
	UserRoot = "root"
)

// File names in a directory made by Write.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// DefaultValidity is how long new certificates are valid.
const DefaultValidity = 10 * 365 * 24 * time.Hour

// Errors returned by this package; the returned errors wrap them and name
// the file.
var (
	// ErrExists: a certificate file exists and does not match what was
	// asked (another CA, other hosts); Force replaces it.
	ErrExists = errors.New("pki: certificate exists")
	// ErrBadFile: a file is missing, unreadable or not the PEM it should be.
	ErrBadFile = errors.New("pki: bad file")
	// ErrBadName: a server name, host or user cannot go into a certificate.
	ErrBadName = errors.New("pki: bad name")
)

// ServerCertFile and ServerKeyFile name member name's certificate and key.
func ServerCertFile(name string) string { return "server-" + name + ".crt" }
func ServerKeyFile(name string) string  { return "server-" + name + ".key" }

// ClientCertFile and ClientKeyFile name etcd user's certificate and key.
func ClientCertFile(user string) string { return user + ".crt" }
func ClientKeyFile(user string) string  { return user + ".key" }

// CA is a certificate authority that can issue certificates.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
}

// NewCA makes a self-signed CA valid from now for validity.
func NewCA(commonName string, now time.Time, validity time.Duration) (*CA, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"tokend"}},
		NotBefore:             now.Add(-time.Hour), // tolerate clocks a little behind
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return &CA{Cert: cert, CertPEM: encodeCert(der), key: key}, keyPEM, nil
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	cert, certPEM, err := readCert(certFile)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%w: %s is not a CA certificate", ErrBadFile, certFile)
	}
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	key, err := parseKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadFile, keyFile, err)
	}
	if !publicEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%w: %s does not belong to %s", ErrBadFile, keyFile, certFile)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
}

// IssueServer makes the certificate of etcd member name, valid for name and
// hosts (DNS names or IP addresses) as a TLS server and as a client (members
// dial each other with it). Its common name is MemberCN.
func (ca *CA) IssueServer(name string, hosts []string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := checkServer(name, hosts); err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: MemberCN, Organization: []string{"tokend"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name},
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := net.ParseIP(h); ip != nil {
			if !slices.ContainsFunc(tmpl.IPAddresses, ip.Equal) {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl, now, validity)
}

// checkServer accepts a member name that is a DNS label or name, and hosts
// that are specific IP addresses or DNS names.
func checkServer(name string, hosts []string) error {
	if !dnsName(name) {
		return fmt.Errorf("%w: server name %q: use letters, digits, '-' and '.'", ErrBadName, name)
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		switch ip := net.ParseIP(h); {
		case ip != nil && ip.IsUnspecified():
			return fmt.Errorf("%w: host %q of %s: an unspecified address names no host; give the address others connect to", ErrBadName, h, name)
		case ip == nil && !dnsName(h):
			return fmt.Errorf("%w: host %q of %s: not an IP address or DNS name", ErrBadName, h, name)
		}
	}
	return nil
}

// IssueClient makes a client certificate for etcd user: its common name is
// the user name, which etcd takes as the user when client certificate
// authentication is on.
func (ca *CA) IssueClient(user string, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if !dnsName(user) || user == MemberCN {
		return nil, nil, fmt.Errorf("%w: user %q: use letters, digits, '-' and '.' (not %s)", ErrBadName, user, MemberCN)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: []string{"tokend"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(tmpl, now, validity)
}

func (ca *CA) issue(tmpl *x509.Certificate, now time.Time, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(der), keyPEM, nil
}

// Server is a member certificate to make: the member's name and the hosts
// (DNS names, IP addresses) others reach it at.
type Server struct {
	Name  string
	Hosts []string
}

// Request says what Write makes.
type Request struct {
	Dir     string
	Servers []Server
	Users   []string // client certificates, by etcd user
	// Force replaces certificates that exist but do not match the request.
	// The CA is never replaced: remove ca.crt and ca.key for a new one.
	Force    bool
	Now      time.Time     // default time.Now()
	Validity time.Duration // default DefaultValidity
}

// Result says what Write did with each file.
type Result struct {
	Created []string // new files (paths)
	Kept    []string // files that already matched the request
}

// Write makes the CA (unless dir holds one) and the certificates of req in
// req.Dir. A certificate that exists already is kept if it was issued by
// the CA and, for a member, names every requested host; otherwise Write
// fails with ErrExists unless req.Force. Running it again with the same
// request changes nothing; with another server added it issues only that
// one. Files are written to a temporary name and renamed, so a reader never
// sees half a file.
func Write(req Request) (Result, error) {
	var res Result
	now, validity := req.Now, req.Validity
	if now.IsZero() {
		now = time.Now()
	}
	if validity <= 0 {
		validity = DefaultValidity
	}
	if err := os.MkdirAll(req.Dir, 0o700); err != nil {
		return res, err
	}
	// Check names before anything is written.
	for _, s := range req.Servers {
		if err := checkServer(s.Name, s.Hosts); err != nil {
			return res, err
		}
	}
	for _, u := range req.Users {
		if !dnsName(u) || u == MemberCN {
			return res, fmt.Errorf("%w: user %q: use letters, digits, '-' and '.' (not %s)", ErrBadName, u, MemberCN)
		}
	}
	caCert, caKey := filepath.Join(req.Dir, CACertFile), filepath.Join(req.Dir, CAKeyFile)
	var ca *CA
	switch _, err := os.Stat(caCert); {
	case err == nil:
		if ca, err = LoadCA(req.Dir); err != nil {
			return res, err
		}
		res.Kept = append(res.Kept, caCert, caKey)
	case errors.Is(err, os.ErrNotExist):
		if _, err := os.Stat(caKey); err == nil {
			return res, fmt.Errorf("%w: %s exists without %s", ErrExists, caKey, caCert)
		}
		var keyPEM []byte
		if ca, keyPEM, err = NewCA("tokend cluster CA", now, validity); err != nil {
			return res, err
		}
		if err := writeFile(caKey, keyPEM, 0o600); err != nil {
			return res, err
		}
		if err := writeFile(caCert, ca.CertPEM, 0o644); err != nil {
			return res, err
		}
		res.Created = append(res.Created, caCert, caKey)
	default:
		return res, err
	}
	type job struct {
		cert, key string
		matches   func(*x509.Certificate) bool
		issue     func() ([]byte, []byte, error)
	}
	var jobs []job
	for _, s := range req.Servers {
		s := s
		jobs = append(jobs, job{
			cert: filepath.Join(req.Dir, ServerCertFile(s.Name)), key: filepath.Join(req.Dir, ServerKeyFile(s.Name)),
			matches: func(c *x509.Certificate) bool {
				if c.Subject.CommonName != MemberCN || c.VerifyHostname(s.Name) != nil {
					return false
				}
				for _, h := range s.Hosts {
					if c.VerifyHostname(strings.TrimSpace(h)) != nil {
						return false
					}
				}
				return true
			},
			issue: func() ([]byte, []byte, error) { return ca.IssueServer(s.Name, s.Hosts, now, validity) },
		})
	}
	for _, u := range req.Users {
		u := u
		jobs = append(jobs, job{
			cert: filepath.Join(req.Dir, ClientCertFile(u)), key: filepath.Join(req.Dir, ClientKeyFile(u)),
			matches: func(c *x509.Certificate) bool { return c.Subject.CommonName == u },
			issue:   func() ([]byte, []byte, error) { return ca.IssueClient(u, now, validity) },
		})
	}
	for _, j := range jobs {
		if c, _, err := readCert(j.cert); err == nil {
			_, keyErr := os.Stat(j.key)
			if keyErr == nil && ca.Verify(c) == nil && j.matches(c) {
				res.Kept = append(res.Kept, j.cert, j.key)
				continue
			}
			if !req.Force {
				return res, fmt.Errorf("%w: %s does not match (another CA, other names, or no key); --force replaces it", ErrExists, j.cert)
			}
		} else if !errors.Is(err, os.ErrNotExist) && !req.Force {
			return res, fmt.Errorf("%w (--force replaces it)", err)
		}
		certPEM, keyPEM, err := j.issue()
		if err != nil {
			return res, err
		}
		if err := writeFile(j.key, keyPEM, 0o600); err != nil {
			return res, err
		}
		if err := writeFile(j.cert, certPEM, 0o644); err != nil {
			return res, err
		}
		res.Created = append(res.Created, j.cert, j.key)
	}
	return res, nil
}

// Verify checks that c was issued by ca and is valid now.
func (ca *CA) Verify(c *x509.Certificate) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	_, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err
}

func readCert(path string) (*x509.Certificate, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%w: %s: no PEM certificate", ErrBadFile, path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrBadFile, path, err)
	}
	return c, b, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, err2 := x509.ParseECPrivateKey(blk.Bytes); err2 == nil {
			return ek, nil
		}
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key type %T cannot sign", k)
	}
	return s, nil
}

func publicEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// writeFile writes b to path with mode perm through a temporary file in the
// same directory and a rename.
func writeFile(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename: a no-op
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// dnsName reports whether s is a DNS name (or a single label such as s1):
// labels of letters, digits and inner hyphens, 1-63 bytes, 253 in all.
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
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
