package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tokend.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, "udp-addr: 127.0.0.1:7001\nhttp-addr: 127.0.0.1:8001\nlog-level: warn\nshards: 64\npeer-urls: [\"https://127.0.0.1:3380\"]\n")
	tests := []struct {
		name string
		args []string
		env  func(string) string
		// want
		udp, http, level string
		shards           int
		peers            string
	}{
		{
			name: "defaults",
			args: []string{"--data-dir", dir},
			env:  env(),
			udp:  "127.0.0.1:7700", http: "127.0.0.1:7780", level: "info", shards: 4096, peers: "https://127.0.0.1:2380",
		},
		{
			name: "file over defaults",
			args: []string{"--data-dir", dir, "--config", file},
			env:  env(),
			udp:  "127.0.0.1:7001", http: "127.0.0.1:8001", level: "warn", shards: 64, peers: "https://127.0.0.1:3380",
		},
		{
			name: "env over file",
			args: []string{"--data-dir", dir, "--config", file},
			env:  env("TOKEND_UDP_ADDR", "127.0.0.1:7002", "TOKEND_SHARDS", "128"),
			udp:  "127.0.0.1:7002", http: "127.0.0.1:8001", level: "warn", shards: 128, peers: "https://127.0.0.1:3380",
		},
		{
			name: "flag over env over file",
			args: []string{"--data-dir", dir, "--config", file, "--udp-addr", "127.0.0.1:7003", "--log-level=debug"},
			env:  env("TOKEND_UDP_ADDR", "127.0.0.1:7002", "TOKEND_LOG_LEVEL", "error"),
			udp:  "127.0.0.1:7003", http: "127.0.0.1:8001", level: "debug", shards: 64, peers: "https://127.0.0.1:3380",
		},
		{
			name: "config file named by env",
			args: []string{"--data-dir", dir},
			env:  env("TOKEND_CONFIG", file),
			udp:  "127.0.0.1:7001", http: "127.0.0.1:8001", level: "warn", shards: 64, peers: "https://127.0.0.1:3380",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(modeAll, tt.args, tt.env, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.udpAddr != tt.udp || c.httpAddr != tt.http || c.logLevel != tt.level || c.shards != tt.shards || strings.Join(c.peerURLs, ",") != tt.peers {
				t.Errorf("got udp=%s http=%s level=%s shards=%d peers=%v", c.udpAddr, c.httpAddr, c.logLevel, c.shards, c.peerURLs)
			}
		})
	}
}

func TestConfigDerived(t *testing.T) {
	c, err := loadConfig(modeServer, []string{"--data-dir", t.TempDir(), "--name", "s2",
		"--peer-urls", "https://127.0.0.1:2480", "--initial-cluster", "s1=https://127.0.0.1:2380,s2=https://127.0.0.1:2480"}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.runWorker {
		t.Error("server mode runs no worker unless --worker")
	}
	c, err = loadConfig(modeAll, []string{"--data-dir", t.TempDir()}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.initialCluster != "tokend=https://127.0.0.1:2380" || !c.runWorker || c.workerTTL != 5*time.Second {
		t.Errorf("derived defaults: cluster=%q worker=%v ttl=%v", c.initialCluster, c.runWorker, c.workerTTL)
	}
}

// TestConfigNoBundle: bundles are on unless --no-bundle, TOKEND_NO_BUNDLE
// or the file's no-bundle key turns them off, in every mode that runs a
// worker.
func TestConfigNoBundle(t *testing.T) {
	file := writeFile(t, "no-bundle: true\n")
	for _, tt := range []struct {
		name string
		mode mode
		args []string
		env  func(string) string
		want bool
	}{
		{"default", modeAll, nil, env(), false},
		{"flag", modeAll, []string{"--no-bundle"}, env(), true},
		{"flag false over env", modeAll, []string{"--no-bundle=false"}, env("TOKEND_NO_BUNDLE", "true"), false},
		{"env", modeAll, nil, env("TOKEND_NO_BUNDLE", "true"), true},
		{"file", modeAll, []string{"--config", file}, env(), true},
		{"worker mode", modeWorker, []string{"--no-bundle", "--etcd-endpoints", "https://127.0.0.1:2379"}, env(), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.mode != modeWorker {
				args = append([]string{"--data-dir", t.TempDir()}, args...)
			}
			c, err := loadConfig(tt.mode, args, tt.env, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.noBundle != tt.want {
				t.Errorf("noBundle = %v, want %v", c.noBundle, tt.want)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	os.WriteFile(notDir, nil, 0o600)
	tests := []struct {
		name string
		mode mode
		args []string
		env  func(string) string
		file string
		want string // substring of the error, naming the flag
	}{
		{"bad port", modeAll, []string{"--udp-addr", "127.0.0.1:99999"}, nil, "", "--udp-addr: \"127.0.0.1:99999\": bad port"},
		{"no port", modeAll, []string{"--http-addr", "127.0.0.1"}, nil, "", "--http-addr:"},
		{"no host", modeAll, []string{"--udp-addr", ":7700"}, nil, "", "--udp-addr: \":7700\": missing host"},
		{"unwritable dir", modeAll, []string{"--data-dir", filepath.Join(notDir, "sub")}, nil, "", "--data-dir:"},
		{"empty dir", modeAll, []string{"--data-dir", ""}, nil, "", "--data-dir: must not be empty"},
		{"malformed url", modeAll, []string{"--peer-urls", "http//127.0.0.1:2380"}, nil, "", "--peer-urls:"},
		{"url scheme", modeAll, []string{"--client-urls", "tcp://127.0.0.1:2379"}, nil, "", "--client-urls: \"tcp://127.0.0.1:2379\": scheme must be https (http with --insecure)"},
		{"url port zero", modeAll, []string{"--client-urls", "https://127.0.0.1:0"}, nil, "", "--client-urls:"},
		{"url path", modeAll, []string{"--client-urls", "https://127.0.0.1:2379/x"}, nil, "", "must not have a path"},
		{"cluster state", modeServer, []string{"--cluster-state", "old"}, nil, "", "--cluster-state: \"old\" is not new or existing"},
		{"initial cluster syntax", modeServer, []string{"--initial-cluster", "s1"}, nil, "", "--initial-cluster: \"s1\": want name=peerURL"},
		{"initial cluster misses me", modeServer, []string{"--name", "s9", "--initial-cluster", "s1=https://127.0.0.1:2380"}, nil, "", "does not name this member \"s9\""},
		{"bad name", modeServer, []string{"--name", "a b"}, nil, "", "--name:"},
		{"log format", modeAll, []string{"--log-format", "xml"}, nil, "", "--log-format: \"xml\" is not text or json"},
		{"log level", modeAll, []string{"--log-level", "loud"}, nil, "", "--log-level:"},
		{"shards", modeAll, []string{"--shards", "0"}, nil, "", "--shards: 0 is outside"},
		{"shards not int", modeAll, []string{"--shards", "many"}, nil, "", "\"many\" is not an integer"},
		{"session ttl", modeAll, []string{"--session-ttl", "500ms"}, nil, "", "--session-ttl: must be at least 2s"},
		{"worker ttl", modeWorker, []string{"--worker-ttl", "1s"}, nil, "", "--worker-ttl: must be at least 2s"},
		{"duration syntax", modeAll, []string{"--grace", "soon"}, nil, "", "\"soon\" is not a duration"},
		{"quota", modeAll, []string{"--quota-bytes", "10"}, nil, "", "--quota-bytes:"},
		{"compaction", modeAll, []string{"--compaction", "1s"}, nil, "", "--compaction: must be at least 1m"},
		{"worker id", modeWorker, []string{"--worker-id", "w/1"}, nil, "", "--worker-id:"},
		{"announce group not multicast", modeWorker, []string{"--announce", "--announce-group", "10.0.0.1:7790"}, nil, "", "--announce-group:"},
		{"announce group syntax", modeWorker, []string{"--announce", "--announce-group", "239.1.2.3"}, nil, "", "--announce-group:"},
		{"handoff addr", modeWorker, []string{"--handoff-addr", "127.0.0.1"}, nil, "", "--handoff-addr:"},
		{"announce cluster empty", modeWorker, []string{"--announce", "--announce-cluster", ""}, nil, "", "--announce-cluster:"},
		{"etcd endpoints", modeWorker, []string{"--etcd-endpoints", "127.0.0.1"}, nil, "", "--etcd-endpoints:"},
		{"etcd endpoint scheme", modeWorker, []string{"--etcd-endpoints", "ftp://127.0.0.1:2379"}, nil, "", "scheme must be https (http with --insecure)"},
		{"flag of another mode", modeWorker, []string{"--data-dir", "x"}, nil, "", "flag provided but not defined: -data-dir"},
		{"stray argument", modeAll, []string{"extra"}, nil, "", "unexpected argument \"extra\""},
		{"bad env value", modeAll, nil, env("TOKEND_SHARDS", "lots"), "", "TOKEND_SHARDS: \"lots\" is not an integer"},
		{"unknown file key", modeAll, nil, nil, "udp-adr: 127.0.0.1:1\n", "unknown key \"udp-adr\""},
		{"file key of another mode", modeWorker, nil, nil, "shards: 8\n", "unknown key \"shards\""},
		{"bad file value", modeAll, nil, nil, "shards: [1, 2]\n", "key \"shards\""},
		{"nested file value", modeAll, nil, nil, "shards: {a: 1}\n", "nested mappings"},
		{"malformed yaml", modeAll, nil, nil, "shards: [\n", "--config"},
		{"missing file", modeAll, []string{"--config", filepath.Join(dir, "nope.yaml")}, nil, "", "--config:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.mode != modeWorker && !contains(args, "--data-dir") {
				args = append([]string{"--data-dir", t.TempDir()}, args...)
			}
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, tt.file))
			}
			getenv := tt.env
			if getenv == nil {
				getenv = env()
			}
			_, err := loadConfig(tt.mode, args, getenv, io.Discard)
			if err == nil {
				t.Fatalf("no error; want one containing %q", tt.want)
			}
			if !errors.Is(err, errConfig) {
				t.Errorf("error %v does not wrap errConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestRunUsageErrors(t *testing.T) {
	var out, errb strings.Builder
	if code := run([]string{"frobnicate"}, env(), &out, &errb); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
	if !strings.Contains(errb.String(), "unknown command \"frobnicate\"") {
		t.Errorf("stderr %q", errb.String())
	}
	errb.Reset()
	if code := run([]string{"--shards", "-3", "--data-dir", t.TempDir()}, env(), &out, &errb); code != 2 {
		t.Errorf("bad flag: exit %d, want 2", code)
	}
	if code := run([]string{"version"}, env(), &out, &errb); code != 0 || !strings.Contains(out.String(), "tokend ") {
		t.Errorf("version: exit %d, out %q", code, out.String())
	}
}
