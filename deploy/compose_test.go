package deploy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// TestComposeFile checks deploy/compose.yaml without Docker: every
// TOKEND_* variable is a flag of its service's mode, servers have stable
// host names and a named volume on the data dir, workers need nothing per
// replica, health checks use tokenctl health (the image has no curl), and
// Docker waits longer than drain plus shutdown before SIGKILL. It is secure
// by default: the one-shot service certs makes the certificates in the
// volume pki, every other tokend service waits for it and mounts pki
// read-only at TOKEND_CERTS_DIR, sees no key but its own (the others are
// masked with /dev/null), and uses https:// only. Clients authenticate:
// servers have cluster.key and client.key (and seeds, for "exec serverN
// tokenctl acquire"), workers cluster.key only, the tokenctl service
// client.key (its TOKEND_KEY_FILE) and cluster.key, and nothing runs
// --insecure. With docker-compose installed, "docker-compose config" must
// accept the file.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir(), "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type service struct {
		Image, Hostname, Restart   string
		StopSignal                 string `yaml:"stop_signal"`
		StopGracePeriod            string `yaml:"stop_grace_period"`
		Command, Profiles, Volumes []string
		Entrypoint                 []string
		Ports                      []string
		Environment                map[string]string
		Healthcheck                struct{ Test []string }
		ReadOnly                   bool      `yaml:"read_only"`
		DependsOn                  dependsOn `yaml:"depends_on"`
	}
	var cf struct {
		Version  string
		Services map[string]service
		Volumes  map[string]any
	}
	if err := yaml.Unmarshal(b, &cf); err != nil {
		t.Fatal(err)
	}
	if cf.Version != "3.9" {
		t.Errorf("compose file version %q: profiles need 3.9 for docker-compose 1.28+", cf.Version)
	}

	// The keys service certs makes: the CA's, root's, tokend's, the
	// cluster key, the default client key and one per --server.
	certs, ok := cf.Services["certs"]
	if !ok || len(certs.Command) == 0 || certs.Command[0] != "certs" {
		t.Fatalf("no one-shot service certs running tokend certs: %q", certs.Command)
	}
	keys := []string{"ca.key", "root.key", "tokend.key", pki.ClusterKeyFile, pki.DefaultClientKeyFile}
	for i, a := range certs.Command {
		if a == "--server" && i+1 < len(certs.Command) {
			name, _, _ := strings.Cut(certs.Command[i+1], "=")
			keys = append(keys, "server-"+name+".key")
		}
	}
	if !slices.Contains(certs.Volumes, "pki:/var/lib/tokend") || !slices.Contains(certs.Command, "/var/lib/tokend") || certs.Restart != "no" || !certs.ReadOnly {
		t.Errorf("certs: volumes %q, command %q, restart %q: want tokend certs --dir /var/lib/tokend on the volume pki (the image user owns a new volume there), run once", certs.Volumes, certs.Command, certs.Restart)
	}
	if _, ok := cf.Volumes["pki"]; !ok {
		t.Errorf("volume pki is not declared")
	}
	// secure checks a service that reaches etcd: it waits for certs, mounts
	// pki read-only at TOKEND_CERTS_DIR, masks every key but own, and
	// names no http:// URL.
	secure := func(name string, s service, own ...string) {
		t.Helper()
		if s.DependsOn["certs"].Condition != "service_completed_successfully" {
			t.Errorf("%s: depends_on certs %+v, want condition service_completed_successfully", name, s.DependsOn)
		}
		if s.Environment["TOKEND_CERTS_DIR"] != "/etc/tokend/pki" || !slices.Contains(s.Volumes, "pki:/etc/tokend/pki:ro") {
			t.Errorf("%s: TOKEND_CERTS_DIR %q, volumes %q: want pki:/etc/tokend/pki:ro and TOKEND_CERTS_DIR=/etc/tokend/pki", name, s.Environment["TOKEND_CERTS_DIR"], s.Volumes)
		}
		for _, k := range keys {
			masked := slices.Contains(s.Volumes, "/dev/null:/etc/tokend/pki/"+k+":ro")
			if mine := slices.Contains(own, k); mine == masked {
				t.Errorf("%s: %s masked %v; want only %q readable", name, k, masked, own)
			}
		}
		for _, v := range append(slices.Clone(s.Command), slices.Collect(maps.Values(s.Environment))...) {
			if strings.Contains(v, "http://") {
				t.Errorf("%s: %q: etcd is reached over TLS, https:// only", name, v)
			}
		}
		// Client authentication stays on.
		if slices.Contains(s.Command, "--insecure") || s.Environment["TOKEND_INSECURE"] != "" {
			t.Errorf("%s: --insecure turns client authentication off", name)
		}
	}
	if tc, ok := cf.Services["tokenctl"]; !ok {
		t.Errorf("no tokenctl service")
	} else {
		// The operator (root) and a client (client.key, which tokend-lock
		// finds through TOKEND_KEY_FILE); cluster.key seals new client keys.
		secure("tokenctl", tc, "root.key", pki.DefaultClientKeyFile, pki.ClusterKeyFile)
		if tc.Environment["TOKEND_KEY_FILE"] != "/etc/tokend/pki/client.key" {
			t.Errorf("tokenctl: TOKEND_KEY_FILE %q, want /etc/tokend/pki/client.key (for tokend-lock and the libraries, whose default is relative)", tc.Environment["TOKEND_KEY_FILE"])
		}
	}

	flags := map[string]map[string]string{"server": flagDefaults(t, "server"), "worker": flagDefaults(t, "worker")}
	servers := 0
	for name, s := range cf.Services {
		if !strings.HasPrefix(s.Image, "tokend:") || len(s.Profiles) > 0 || name == "certs" {
			continue // certs, tokenctl (checked above), prometheus, grafana
		}
		mode := s.Command[0]
		for k := range s.Environment {
			if _, ok := flags[mode][envToFlag(k)]; strings.HasPrefix(k, "TOKEND_") && !ok {
				t.Errorf("%s: %s is not a flag of tokend %s", name, k, mode)
			}
		}
		if !slices.Equal(s.Healthcheck.Test, []string{"CMD", "/usr/local/bin/tokenctl", "health", "-q"}) {
			t.Errorf("%s: health check %q, want tokenctl health", name, s.Healthcheck.Test)
		}
		if d, err := time.ParseDuration(s.StopGracePeriod); err != nil || d <= 20*time.Second || s.StopSignal != "SIGTERM" {
			t.Errorf("%s: stop_grace_period %q, stop_signal %q: want SIGTERM and more than --drain-timeout + --shutdown-timeout (20 s)", name, s.StopGracePeriod, s.StopSignal)
		}
		if !s.ReadOnly {
			t.Errorf("%s: not read_only", name)
		}
		// tokenctl in the container uses tokend's certificate too: root's
		// key is not there.
		if s.Environment["TOKEND_ETCD_CERT"] != "/etc/tokend/pki/tokend.crt" {
			t.Errorf("%s: TOKEND_ETCD_CERT %q, want /etc/tokend/pki/tokend.crt (for tokenctl, whose default is root's)", name, s.Environment["TOKEND_ETCD_CERT"])
		}
		switch mode {
		case "server":
			servers++
			// It registers client.key at start; cluster.key seals it.
			secure(name, s, "server-"+name+".key", "tokend.key", pki.ClusterKeyFile, pki.DefaultClientKeyFile)
			if s.Environment["TOKENCTL_SEEDS"] != "worker:7700" {
				t.Errorf("%s: TOKENCTL_SEEDS %q, want worker:7700 (exec %s tokenctl acquire)", name, s.Environment["TOKENCTL_SEEDS"], name)
			}
			vol := name + "-data:/var/lib/tokend"
			if s.Hostname != name || !slices.Contains(s.Volumes, vol) {
				t.Errorf("%s: hostname %q, volumes %q: want hostname %s and %s", name, s.Hostname, s.Volumes, name, vol)
			}
			if _, ok := cf.Volumes[name+"-data"]; !ok {
				t.Errorf("%s: volume %s-data is not declared", name, name)
			}
			if !slices.Contains(s.Command, "https://"+name+":2380") || !strings.Contains(s.Environment["TOKEND_INITIAL_CLUSTER"], name+"=https://"+name+":2380") {
				t.Errorf("%s: its advertised peer URL must be https://%s:2380 and in TOKEND_INITIAL_CLUSTER", name, name)
			}
			if !slices.Contains(certs.Command, name) {
				t.Errorf("%s: certs makes no certificate for it (--server %s)", name, name)
			}
		case "worker":
			// The cluster key opens the client keys in etcd; a worker
			// needs no client key.
			secure(name, s, "tokend.key", pki.ClusterKeyFile)
			perReplica := s.Hostname != "" || len(s.Ports) > 0 || s.Environment["TOKEND_ADVERTISE_UDP_ADDR"] != ""
			for _, v := range s.Volumes {
				perReplica = perReplica || !strings.HasPrefix(v, "pki:") && !strings.HasPrefix(v, "/dev/null:")
			}
			if perReplica || s.Environment["TOKEND_UDP_ADDR"] != "0.0.0.0:7700" {
				t.Errorf("%s: a scaled worker can have no host name, published port, volume (but the shared pki) or advertised address of its own, and listens on 0.0.0.0:7700", name)
			}
		default:
			t.Errorf("%s: command %q", name, s.Command)
		}
	}
	if servers != 3 {
		t.Errorf("%d servers, want 3", servers)
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		runCmd(t, time.Minute, deployDir(), false, "docker-compose", "-f", "compose.yaml", "config", "-q")
	}
}

// TestCompose is the acceptance test of issue 15's first part, as a user
// runs it: make -C deploy images, then docker-compose up with three
// servers and three workers on a bridge network that the test creates
// (and removes, with its volumes, in Cleanup); service certs makes the
// certificates on the way, as on a fresh clone. It waits until
// "exec server1 tokenctl status" shows a leader and three workers serving
// every shard, checks etcd's member list over TLS as root (three started
// members named server1-3 at https:// peer URLs, with a leader; no answer
// without TLS), that each worker registered its container
// address, and takes a token with client.key from server1 ("exec server1
// tokenctl acquire"), from another container ("run --rm tokenctl
// acquire", resolving the service name worker) and with tokend-lock. It
// checks client authentication: the servers registered client.key, a
// client without a key is refused with the reason, one with a forged key
// is dropped and counted in tokend_worker_auth_failures_total, a key from
// "keys add" works until "keys revoke". And that a worker cannot use the
// CA's key. Every
// address it sends to is on the test's own network. It needs root, docker
// and docker-compose, and skips without them.
func TestCompose(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the Docker acceptance test builds an image and runs six containers")
	}
	needTools(t, "docker", "docker-compose", "make", "go")
	if os.Geteuid() != 0 {
		t.Skip("needs root to run Docker")
	}
	if _, err := runCmd(t, 20*time.Second, "", true, "docker", "info"); err != nil {
		t.Skipf("docker is not usable: %v", err)
	}
	dir := deployDir()
	image := "tokend:" + cluster.Version

	start := time.Now()
	runCmd(t, 5*time.Minute, dir, false, "make", "-s", "images")
	t.Logf("make images: %v", time.Since(start).Round(100*time.Millisecond))
	out, _ := runCmd(t, 20*time.Second, "", false, "docker", "image", "inspect", "-f", "{{.Config.User}} {{.Size}} {{index .Config.Volumes \"/var/lib/tokend\"}}", image)
	var user, size, vol string
	if f := strings.Fields(out); len(f) == 3 {
		user, size, vol = f[0], f[1], f[2]
	}
	t.Logf("%s: %s bytes, USER %s", image, size, user)
	if user != "10001:10001" || vol != "{}" {
		t.Errorf("image %s: USER %q, volume /var/lib/tokend %q; want a numeric non-root user and the volume", image, user, vol)
	}

	var b [4]byte
	rand.Read(b[:])
	project := "tokendtest" + hex.EncodeToString(b[:])
	compose := func(timeout time.Duration, mayFail bool, args ...string) (string, error) {
		t.Helper()
		return runCmd(t, timeout, dir, mayFail, "docker-compose", append([]string{"-p", project, "-f", "compose.yaml"}, args...)...)
	}
	t.Cleanup(func() {
		// -t 5: SIGKILL a draining worker after 5 s; nothing is kept.
		if _, err := compose(2*time.Minute, true, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			t.Error(err)
		}
		// Whatever down missed (a one-off container, say), by the
		// project's label: no container, network or volume stays.
		label := "label=com.docker.compose.project=" + project
		for _, kind := range [][]string{{"container", "ls", "-aq"}, {"network", "ls", "-q"}, {"volume", "ls", "-q"}} {
			out, _ := runCmd(t, 20*time.Second, "", true, "docker", append(kind, "--filter", label)...)
			if ids := strings.Fields(out); len(ids) > 0 {
				t.Errorf("left behind by down: %s %v; removing", kind[0], ids)
				rm := []string{kind[0], "rm"}
				if kind[0] == "container" {
					rm = append(rm, "-f", "-v")
				}
				runCmd(t, time.Minute, "", true, "docker", append(rm, ids...)...)
			}
		}
	})

	start = time.Now()
	compose(2*time.Minute, false, "up", "-d", "--scale", "worker=3")

	// tokenctl status, from inside server1, until the cluster is whole.
	st := waitWhole(t, compose, 3)
	t.Logf("cluster whole %v after up: leader %s, workers %d", time.Since(start).Round(100*time.Millisecond), st.Leader.Name, len(st.Workers))
	text, _ := compose(20*time.Second, false, "exec", "-T", "server1", "tokenctl", "status")
	t.Logf("exec server1 tokenctl status:\n%s", text)

	// Three etcd members, one per server, with a leader. Asked at server1's
	// address on the test's network, over TLS as the operator (root), with
	// the certificates service certs made in the volume pki; without a
	// client certificate etcd refuses.
	server1 := containerIP(t, compose)
	endpoint := netip.AddrPortFrom(server1, 2379).String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pkiDir, _ := runCmd(t, 20*time.Second, "", false, "docker", "volume", "inspect", "-f", "{{.Mountpoint}}", project+"_pki")
	tc, err := (cluster.ClientTLS{
		CAFile:   filepath.Join(strings.TrimSpace(pkiDir), "ca.crt"),
		CertFile: filepath.Join(strings.TrimSpace(pkiDir), "root.crt"),
		KeyFile:  filepath.Join(strings.TrimSpace(pkiDir), "root.key"),
	}).Config()
	if err != nil {
		t.Fatal(err)
	}
	// server1's certificate names the service, not the container address
	// the test dials, and gRPC sets the TLS server name from the address:
	// verify the chain for the name server1 here instead.
	tc.InsecureSkipVerify = true
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: "server1", Roots: tc.RootCAs, Intermediates: inter})
		return err
	}
	plain, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	if _, err := plain.MemberList(pctx); err == nil {
		t.Errorf("etcd at %s answered a client without TLS", endpoint)
	}
	pcancel()
	plain.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ml.Members {
		names = append(names, m.Name)
		if want := "https://" + m.Name + ":2380"; len(m.PeerURLs) != 1 || m.PeerURLs[0] != want || m.IsLearner {
			t.Errorf("etcd member %s: peer URLs %v, learner %v; want [%s], a voter", m.Name, m.PeerURLs, m.IsLearner, want)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"server1", "server2", "server3"}) {
		t.Errorf("etcd members %v, want server1, server2, server3", names)
	}
	es, err := cli.Status(ctx, cli.Endpoints()[0])
	if err != nil || es.Leader == 0 {
		t.Errorf("etcd status at server1: %v, leader %v", err, es)
	}

	// Each worker registered its own container address on the network,
	// port 7700: reachable from the other containers.
	var workerAddr string
	for _, w := range st.Workers {
		ap, err := netip.ParseAddrPort(w.UDP)
		if err != nil || ap.Addr().IsLoopback() || ap.Addr().IsUnspecified() || ap.Port() != 7700 ||
			!netip.PrefixFrom(server1, 16).Masked().Contains(ap.Addr()) {
			t.Errorf("worker %s registered %q: want its container address on the compose network, port 7700", w.ID, w.UDP)
		}
		workerAddr = w.UDP
	}

	// A token, from a container of its own, through the service name,
	// authenticated with client.key; and from inside server1, with the
	// same file (the servers registered it at start: keys list shows it).
	out, _ = compose(time.Minute, false, "run", "--rm", "-T", "tokenctl", "acquire", "--wait", "10s", "--for", "100ms", "deploy-acceptance")
	if !strings.Contains(out, "acquired deploy-acceptance") || !strings.Contains(out, "released deploy-acceptance") {
		t.Errorf("run --rm tokenctl acquire: %s", out)
	}
	out, _ = compose(time.Minute, false, "exec", "-T", "server1", "tokenctl", "acquire", "--wait", "10s", "--for", "100ms", "deploy-exec")
	if !strings.Contains(out, "acquired deploy-exec") || !strings.Contains(out, "released deploy-exec") {
		t.Errorf("exec server1 tokenctl acquire: %s", out)
	}
	out, _ = compose(time.Minute, false, "run", "--rm", "-T", "tokenctl", "keys", "list", "-o", "json")
	var kl struct {
		Keys []struct {
			Name string `json:"name"`
		} `json:"keys"`
	}
	// docker-compose's own progress lines come first, on stderr.
	err = json.Unmarshal([]byte(out[max(strings.Index(out, "{"), 0):]), &kl)
	registered := false
	for _, k := range kl.Keys {
		registered = registered || k.Name == pki.DefaultClientKeyName
	}
	if err != nil || !registered {
		t.Errorf("run --rm tokenctl keys list: %v, want the key %q the servers register: %s", err, pki.DefaultClientKeyName, out)
	}

	// Without a key the workers refuse, and say why.
	out, err = compose(time.Minute, true, "run", "--rm", "-T", "tokenctl", "acquire", "--insecure", "--wait", "5s", "--for", "100ms", "deploy-nokey")
	if err == nil || strings.Contains(out, "acquired") || !strings.Contains(out, "the cluster authenticates its clients") {
		t.Errorf("run --rm tokenctl acquire --insecure: %v, want refused (the cluster authenticates its clients):\n%s", err, out)
	}
	// With a forged key under the name default, the workers drop the
	// open unanswered and count it under tokend_worker_auth_failures_total.
	forged := forgedKeyFile(t)
	before := authFailures(t, st)
	out, err = compose(time.Minute, true, "run", "--rm", "-T", "-v", forged+":/etc/tokend/forged.key:ro", "tokenctl",
		"acquire", "--key-file", "/etc/tokend/forged.key", "--timeout", "3s", "--wait", "5s", "--for", "100ms", "deploy-forged")
	if err == nil || strings.Contains(out, "acquired") {
		t.Errorf("run --rm tokenctl acquire with a forged key: %v, want refused:\n%s", err, out)
	}
	if after := authFailures(t, st); after <= before {
		t.Errorf("tokend_worker_auth_failures_total over the workers: %v before the forged key, %v after: want it counted", before, after)
	} else {
		t.Logf("forged key refused (%s); tokend_worker_auth_failures_total over the workers %v -> %v", commandMessage(out, "tokenctl:"), before, after)
	}

	// The operator's flow: "keys add" in the tokenctl service prints a new
	// client's key file; a client holding it takes a token; after "keys
	// revoke" the workers no longer know the key and refuse it.
	out, _ = compose(time.Minute, false, "run", "--rm", "-T", "tokenctl", "keys", "add", "-o", "json", "deploy-client")
	var added struct {
		KeyFile string `json:"key_file"`
	}
	if err := json.Unmarshal([]byte(out[max(strings.Index(out, "{"), 0):]), &added); err != nil || added.KeyFile == "" {
		t.Fatalf("run --rm tokenctl keys add: %v\n%s", err, out)
	}
	own := imageKeyFile(t, []byte(added.KeyFile+"\n"))
	acquireWith := func(name string, mayFail bool) (string, error) {
		return compose(time.Minute, mayFail, "run", "--rm", "-T", "-v", own+":/etc/tokend/own.key:ro", "tokenctl",
			"acquire", "--key-file", "/etc/tokend/own.key", "--timeout", "3s", "--wait", "10s", "--for", "100ms", name)
	}
	if out, _ = acquireWith("deploy-own", false); !strings.Contains(out, "acquired deploy-own") {
		t.Errorf("acquire with the key from keys add: %s", out)
	}
	compose(time.Minute, false, "run", "--rm", "-T", "tokenctl", "keys", "revoke", "deploy-client")
	if out, err = acquireWith("deploy-revoked", true); err == nil || strings.Contains(out, "acquired") {
		t.Errorf("acquire with a revoked key: %v, want refused:\n%s", err, out)
	} else {
		t.Logf("revoked key refused: %s", commandMessage(out, "tokenctl:"))
	}

	// tokend-lock, static, with a numeric address (it has no name service
	// in the image), running a command while the token is held; its key
	// is the tokenctl service's TOKEND_KEY_FILE.
	if _, err := os.Stat(filepath.Join(dir, "build", "rootfs", "usr", "local", "bin", "tokend-lock")); err == nil {
		out, _ = compose(time.Minute, false, "run", "--rm", "-T", "--entrypoint", "/usr/local/bin/tokend-lock", "tokenctl",
			"-s", workerAddr, "deploy-lock", "/usr/local/bin/tokend", "version")
		if !strings.Contains(out, "tokend "+cluster.Version) {
			t.Errorf("tokend-lock in the tokenctl service: %s", out)
		}
	} else if log, _ := os.ReadFile(filepath.Join(dir, "build", "c", "static.log")); strings.Contains(string(log), "undefined reference") {
		// The libraries are there and the link is wrong.
		t.Errorf("tokend-lock left out of the image by a link error (make lock):\n%s", log)
	} else {
		t.Log("tokend-lock is not in the image (no static C library or libcrypto.a)")
	}
	// Scaled out and back in: the new worker takes its share by planned
	// handoffs, and the worker compose removes (SIGTERM) drains first, so
	// no shard is recovered with a grace period.
	start = time.Now()
	compose(2*time.Minute, false, "up", "-d", "--no-recreate", "--scale", "worker=4")
	waitWhole(t, compose, 4)
	compose(2*time.Minute, false, "up", "-d", "--no-recreate", "--scale", "worker=3")
	st = waitWhole(t, compose, 3)
	moves := shardMoves(t, st.Leader.HTTP)
	t.Logf("scaled to 4 workers and back to 3 in %v; the leader's shard moves: %v", time.Since(start).Round(100*time.Millisecond), moves)
	if moves["handoff"] == 0 || moves["recovery"] != 0 {
		t.Errorf("shard moves %v: want handoffs and no recovery (a drained worker's shards need no grace period)", moves)
	}

	// The CA's key is the certs service's alone: in a worker, "tokend
	// certs", which would keep every file that fits, cannot load it.
	out, err = compose(time.Minute, true, "exec", "-T", "worker", "tokend", "certs", "--dir", "/etc/tokend/pki")
	if err == nil || !strings.Contains(out, "ca.key") {
		t.Errorf("tokend certs in a worker container loaded the CA's key: %v\n%s", err, out)
	}

	// The health check the compose file uses, across containers.
	for _, s := range []string{"server2", "server3"} {
		compose(20*time.Second, false, "exec", "-T", "server1", "tokenctl", "health", "http://"+s+":7780/readyz")
	}
}

// dependsOn is a service's depends_on, in either form: service ->
// condition (service_started for the short form's list).
type dependsOn map[string]struct{ Condition string }

func (d *dependsOn) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.SequenceNode {
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		*d = dependsOn{}
		for _, s := range names {
			(*d)[s] = struct{ Condition string }{"service_started"}
		}
		return nil
	}
	return n.Decode((*map[string]struct{ Condition string })(d))
}

// composeStatus is "tokenctl status -o json" as far as the test reads it.
type composeStatus struct {
	Leader *struct {
		Name string `json:"name"`
		HTTP string `json:"http"`
	} `json:"leader"`
	Config *struct {
		Shards int `json:"shards"`
	} `json:"config"`
	Unowned int `json:"unowned_shards"`
	Workers []struct {
		ID     string `json:"id"`
		UDP    string `json:"udp"`
		HTTP   string `json:"http"`
		Shards int    `json:"shards"`
	} `json:"workers"`
}

// waitWhole polls "exec server1 tokenctl status" until there is a leader
// and n workers serve every shard, for at most 90 s.
func waitWhole(t *testing.T, compose func(time.Duration, bool, ...string) (string, error), n int) composeStatus {
	t.Helper()
	whole := func(st composeStatus) bool {
		if st.Leader == nil || st.Config == nil || len(st.Workers) != n || st.Unowned != 0 {
			return false
		}
		sum := 0
		for _, w := range st.Workers {
			sum += w.Shards
		}
		return sum == st.Config.Shards
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := compose(20*time.Second, true, "exec", "-T", "server1", "tokenctl", "status", "-o", "json")
		var st composeStatus
		if err == nil && json.Unmarshal([]byte(out), &st) == nil && whole(st) {
			return st
		}
		if time.Now().After(deadline) {
			logs, _ := compose(30*time.Second, true, "logs", "--tail", "20")
			t.Fatalf("no leader and %d workers serving every shard after 90 s; last status: %s %v\n%s", n, out, err, logs)
		}
		time.Sleep(time.Second)
	}
}

// shardMoves reads the leader's tokend_coordinator_shard_moves_total by
// kind from its /metrics, at its address on the test's network.
func shardMoves(t *testing.T, httpAddr string) map[string]float64 {
	t.Helper()
	moves := map[string]float64{}
	re := regexp.MustCompile(`(?m)^tokend_coordinator_shard_moves_total\{kind="(\w+)"\} (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(metricsText(t, httpAddr), -1) {
		moves[m[1]], _ = strconv.ParseFloat(m[2], 64)
	}
	return moves
}

// containerIP returns server1's address on the compose network.
func containerIP(t *testing.T, compose func(time.Duration, bool, ...string) (string, error)) netip.Addr {
	t.Helper()
	id, _ := compose(20*time.Second, false, "ps", "-q", "server1")
	out, _ := runCmd(t, 20*time.Second, "", false, "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", strings.TrimSpace(id))
	f := strings.Fields(out)
	if len(f) != 1 {
		t.Fatalf("server1 is on %d networks (%q), want the project's one", len(f), out)
	}
	a, err := netip.ParseAddr(f[0])
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// forgedKeyFile writes a key file named like client.key ("default") but
// with a random key, readable by the image's user only, and returns its
// path: the workers know the name, and the key does not verify.
func forgedKeyFile(t *testing.T) string {
	t.Helper()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return imageKeyFile(t, auth.FormatKeyFile(pki.DefaultClientKeyName, k))
}

// imageKeyFile writes a key file's text to a new file, mode 0600 and
// owned by the image's user (10001), to be mounted into a container, and
// returns its path.
func imageKeyFile(t *testing.T, text []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "client.key")
	if err := os.WriteFile(path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 10001, 10001); err != nil {
		t.Fatal(err)
	}
	return path
}

// authFailures sums tokend_worker_auth_failures_total over the workers
// of st, read from their /metrics at their addresses on the test's
// network.
func authFailures(t *testing.T, st composeStatus) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^tokend_worker_auth_failures_total\{[^}]*\} (\S+)$`)
	sum := 0.0
	for _, w := range st.Workers {
		for _, m := range re.FindAllStringSubmatch(metricsText(t, w.HTTP), -1) {
			v, _ := strconv.ParseFloat(m[1], 64)
			sum += v
		}
	}
	return sum
}

// metricsText returns the /metrics page at httpAddr.
func metricsText(t *testing.T, httpAddr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// commandMessage is the last line of out that starts with prefix: a
// command's own message among docker-compose's progress lines (and the
// exit status it prints).
func commandMessage(out, prefix string) string {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return strings.TrimSpace(out)
}
