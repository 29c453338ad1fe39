package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func request(dir string) Request {
	return Request{
		Dir:     dir,
		Servers: []Server{{"s1", []string{"10.0.0.1", "server1.example", "localhost", "127.0.0.1"}}, {"s2", []string{"10.0.0.2"}}},
		Users:   []string{UserTokend, UserRoot},
	}
}

func TestWriteMakesAChainWithSafeModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	res, err := Write(request(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Created) != 10 || len(res.Kept) != 0 {
		t.Fatalf("created %v, kept %v", res.Created, res.Kept)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	for _, f := range res.Created {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if filepath.Ext(f) == ".key" {
			want = 0o600
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", f, fi.Mode().Perm(), want)
		}
	}
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	s1 := loadPair(t, dir, ServerCertFile("s1"), ServerKeyFile("s1"))
	if s1.Subject.CommonName != MemberCN {
		t.Errorf("s1 CN %q", s1.Subject.CommonName)
	}
	for _, host := range []string{"s1", "10.0.0.1", "server1.example", "localhost", "127.0.0.1"} {
		if _, err := s1.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("s1 as server for %s: %v", host, err)
		}
	}
	if _, err := s1.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.2"}); err == nil {
		t.Error("s1's certificate is valid for s2's address")
	}
	if _, err := s1.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("s1 as peer client: %v", err)
	}
	for _, u := range []string{UserTokend, UserRoot} {
		c := loadPair(t, dir, ClientCertFile(u), ClientKeyFile(u))
		if c.Subject.CommonName != u {
			t.Errorf("%s: CN %q", u, c.Subject.CommonName)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("%s as client: %v", u, err)
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
			t.Errorf("%s's client certificate can act as a server", u)
		}
	}
}

func loadPair(t *testing.T, dir, cert, key string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, cert), filepath.Join(dir, key))
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestWriteAgainKeepsAndAdds(t *testing.T) {
	dir := t.TempDir()
	req := request(dir)
	if _, err := Write(req); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, ServerCertFile("s1")))
	res, err := Write(req)
	if err != nil || len(res.Created) != 0 {
		t.Fatalf("second run: created %v, err %v; want nothing new", res.Created, err)
	}
	req.Servers = append(req.Servers, Server{"s3", []string{"10.0.0.3"}})
	res, err = Write(req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, ServerCertFile("s3")), filepath.Join(dir, ServerKeyFile("s3"))}
	if !slices.Equal(res.Created, want) {
		t.Errorf("adding s3 created %v, want %v", res.Created, want)
	}
	after, _ := os.ReadFile(filepath.Join(dir, ServerCertFile("s1")))
	if string(before) != string(after) {
		t.Error("s1's certificate was rewritten")
	}
}

func TestWriteRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	req := request(dir)
	if _, err := Write(req); err != nil {
		t.Fatal(err)
	}
	req.Servers[0].Hosts = append(req.Servers[0].Hosts, "10.9.9.9")
	if _, err := Write(req); !errors.Is(err, ErrExists) {
		t.Fatalf("new host for s1 without Force: %v, want ErrExists", err)
	}
	req.Force = true
	res, err := Write(req)
	if err != nil || !slices.Contains(res.Created, filepath.Join(dir, ServerCertFile("s1"))) {
		t.Fatalf("with Force: created %v, err %v", res.Created, err)
	}
	if c := loadPair(t, dir, ServerCertFile("s1"), ServerKeyFile("s1")); c.VerifyHostname("10.9.9.9") != nil {
		t.Error("the reissued certificate lacks the new host")
	}

	// A certificate of another CA is not kept either.
	other := t.TempDir()
	if _, err := Write(Request{Dir: other, Users: []string{UserRoot}}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{ClientCertFile(UserRoot), ClientKeyFile(UserRoot)} {
		b, _ := os.ReadFile(filepath.Join(other, f))
		os.WriteFile(filepath.Join(dir, f), b, 0o600)
	}
	if _, err := Write(Request{Dir: dir, Users: []string{UserRoot}}); !errors.Is(err, ErrExists) {
		t.Fatalf("another CA's root certificate: %v, want ErrExists", err)
	}
}

func TestBadNames(t *testing.T) {
	for _, req := range []Request{
		{Servers: []Server{{"s 1", nil}}},
		{Servers: []Server{{"s1", []string{"0.0.0.0"}}}},
		{Servers: []Server{{"s1", []string{"bad_host"}}}},
		{Users: []string{MemberCN}},
		{Users: []string{""}},
	} {
		req.Dir = t.TempDir()
		if _, err := Write(req); !errors.Is(err, ErrBadName) {
			t.Errorf("%+v: %v, want ErrBadName", req, err)
		}
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCA(dir); err == nil {
		t.Fatal("LoadCA of an empty dir succeeded")
	}
	os.WriteFile(filepath.Join(dir, CACertFile), []byte("not pem"), 0o644)
	if _, err := LoadCA(dir); !errors.Is(err, ErrBadFile) {
		t.Fatalf("garbage ca.crt: %v, want ErrBadFile", err)
	}
}
