package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// errConfig marks every configuration error; main exits 2 on it.
var errConfig = errors.New("tokend: bad configuration")

// mode is what the process runs.
type mode int

const (
	modeAll    mode = iota // embedded default: one etcd member, coordinator and worker
	modeServer             // one of (usually) three servers: etcd member, coordinator, optional worker
	modeWorker             // a worker joining an existing cluster
)

func (m mode) String() string {
	return [...]string{"all-in-one", "server", "worker"}[m]
}

// config is the whole daemon configuration after flags, environment and the
// YAML file have been merged (in that order of precedence) and validated.
type config struct {
	mode mode

	configFile string
	dataDir    string
	logFormat  string
	logLevel   string
	httpAddr   string
	pprof      bool   // serve net/http/pprof under /debug/pprof/ on httpAddr
	advHTTP    string // advertised HTTP host:port; "" after resolveAdvertise: not advertised

	// etcd member (all-in-one and server)
	name           string
	peerURLs       []string // listen
	clientURLs     []string // listen
	advPeerURLs    []string // advertised; set by resolveAdvertise if not given
	advClientURLs  []string // advertised; set by resolveAdvertise if not given
	initialCluster string
	clusterState   string
	clusterToken   string
	quotaBytes     int64
	compaction     time.Duration

	// worker
	runWorker     bool     // server mode only: also run an in-process worker
	workerID      string   // default: derived from host name and UDP port
	udpAddr       string   // worker's UDP listen address
	advUDP        string   // worker's advertised UDP host:port (port 0: the bound port); set by resolveAdvertise if not given
	handoffAddr   string   // worker's TCP listen address for planned handoffs
	advHandoff    string   // its advertised host:port (port 0: the bound port); set by resolveAdvertise if not given
	handoffProto  int      // newest handoff protocol spoken (0: the newest)
	noBundle      bool     // the worker neither offers nor sends bundles (wire/SPEC.md section 22)
	etcdEndpoints []string // worker mode: where etcd is
	workerTTL     time.Duration

	// multicast announcements (worker side; package announce)
	announce          bool
	announceGroup     string
	announceInterface string
	announceCluster   string

	// cluster-wide values fixed at bootstrap (written to /tokend/config once)
	shards     int
	sessionTTL time.Duration
	grace      time.Duration

	shutdownTimeout time.Duration
	drainTimeout    time.Duration // SIGTERM: how long the worker drains before stopping (0: no drain)

	// etcd security (see tls.go): TLS and authentication unless insecure.
	insecure bool
	certsDir string // where the default files below are; default <data-dir>/pki, worker ./tokend-data/pki
	// the member's side (all-in-one and server)
	etcdCertFile, etcdKeyFile, etcdCAFile string // client URLs
	peerCertFile, peerKeyFile, peerCAFile string // peer URLs
	peerAllowedCN                         string // "" accepts any peer certificate of the CA
	// this process's etcd client (coordinator, worker): user tokend
	etcdCACert, etcdCert, etcdKey string
	// datagram authentication (keys.go), unless insecure
	clusterKeyFile string // the cluster key: every mode
	clientKeyFile  string // the client key servers register (all-in-one, server); optional
	clusterKey     auth.Key
	clientKeyName  string // "" when there is no client key to register
	clientKey      auth.Key
	// set is the options given by flag, environment or file (not defaults).
	set map[string]bool
}

// option is one configuration value: its flag, its environment variable
// (TOKEND_ + the flag name upper-cased with '-' -> '_') and its YAML key (the
// flag name).
type option struct {
	name  string
	usage string
	value flag.Value
	modes []mode // the modes that accept it; nil = all
}

func envName(flagName string) string {
	return "TOKEND_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// defaults returns the configuration before any flag, variable or file.
func defaults(m mode) *config {
	c := &config{
		mode:      m,
		dataDir:   "./tokend-data",
		logFormat: "text",
		logLevel:  "info",
		httpAddr:  "127.0.0.1:7780",
		name:      "tokend",
		// peerURLs, clientURLs: https://127.0.0.1:2380 and :2379, http://
		// with --insecure; set by validate.
		clusterState:    "new",
		clusterToken:    "tokend",
		quotaBytes:      2 << 30,
		compaction:      time.Hour,
		runWorker:       m != modeServer,
		udpAddr:         "127.0.0.1:7700",
		etcdEndpoints:   []string{"127.0.0.1:2379"},
		workerTTL:       5 * time.Second,
		announceGroup:   announce.DefaultGroup,
		announceCluster: announce.DefaultCluster,
		shards:          4096,
		sessionTTL:      10 * time.Second,
		grace:           5 * time.Second,
		shutdownTimeout: 10 * time.Second,
		drainTimeout:    10 * time.Second,
		peerAllowedCN:   pki.MemberCN,
	}
	return c
}

func (c *config) options() []option {
	member := []mode{modeAll, modeServer}
	return []option{
		{"config", "YAML file with any of these options (keys are flag names)", stringVal(&c.configFile), nil},
		{"data-dir", "directory for etcd's data (created if missing)", stringVal(&c.dataDir), member},
		{"log-format", "log format: text or json", stringVal(&c.logFormat), nil},
		{"log-level", "log level: debug, info, warn or error", stringVal(&c.logLevel), nil},
		{"http-addr", "host:port to listen on for /metrics, /healthz and /readyz (port 0 picks one)", stringVal(&c.httpAddr), nil},
		{"pprof", "also serve Go's runtime profiles under /debug/pprof/ on --http-addr (off by default: they reveal internals and cost CPU while taken)", boolVal(&c.pprof), nil},
		{"advertise-http-addr", "host:port registered for people and tools to reach HTTP at (default: --http-addr if specific, else derived from the default route's interface; not registered if --http-addr is loopback and the cluster is not)", stringVal(&c.advHTTP), nil},
		{"name", "etcd member name (unique in the cluster)", stringVal(&c.name), member},
		{"peer-urls", "comma-separated etcd peer URLs to listen on (https://0.0.0.0:2380 listens on every address) (default https://127.0.0.1:2380; http:// with --insecure)", listVal(&c.peerURLs), member},
		{"client-urls", "comma-separated etcd client URLs to listen on (https://0.0.0.0:2379 listens on every address) (default https://127.0.0.1:2379; http:// with --insecure)", listVal(&c.clientURLs), member},
		{"advertise-peer-urls", "comma-separated etcd peer URLs the other members connect to (default: --peer-urls, with 0.0.0.0 replaced by a derived address)", listVal(&c.advPeerURLs), member},
		{"advertise-client-urls", "comma-separated etcd client URLs advertised to clients (default: --client-urls, with 0.0.0.0 replaced by a derived address)", listVal(&c.advClientURLs), member},
		{"initial-cluster", "etcd initial cluster, name=peerURL,... (default: this member alone)", stringVal(&c.initialCluster), member},
		{"cluster-state", "etcd initial cluster state: new or existing", stringVal(&c.clusterState), member},
		{"cluster-token", "etcd initial cluster token", stringVal(&c.clusterToken), member},
		{"quota-bytes", "etcd backend quota in bytes", int64Val(&c.quotaBytes), member},
		{"compaction", "etcd periodic auto-compaction retention", durationVal(&c.compaction), member},
		{"worker", "server mode: also run a worker in this process", boolVal(&c.runWorker), []mode{modeServer}},
		{"worker-id", "worker id (default: host name and UDP port)", stringVal(&c.workerID), nil},
		{"udp-addr", "worker UDP host:port to listen on for clients (port 0 picks one; 0.0.0.0 listens on every address)", stringVal(&c.udpAddr), nil},
		{"advertise-udp-addr", "worker UDP host:port registered for clients (default: --udp-addr if specific, else the address of the interface with the default route; port 0: the bound port)", stringVal(&c.advUDP), nil},
		{"handoff-addr", "worker TCP host:port other workers pull handed-off shards from (default: the UDP address's host, any port; off: no handoffs, moves cost a grace period)", stringVal(&c.handoffAddr), nil},
		{"handoff-proto", "newest handoff protocol the worker speaks (0: the newest, 2, which moves queued requests with a shard; 1: as workers of an earlier version, for clients of an earlier version during an upgrade)", intVal(&c.handoffProto), nil},
		{"no-bundle", "the worker does not agree to bundles (several datagrams of one session in one, wire/SPEC.md section 22) and sends none, as workers of an earlier version; it still takes those a client sends", boolVal(&c.noBundle), nil},
		{"advertise-handoff-addr", "worker handoff host:port registered for other workers (default: --handoff-addr if specific, else the advertised UDP host with the bound port)", stringVal(&c.advHandoff), nil},
		{"etcd-endpoints", "comma-separated etcd client endpoints (worker mode)", listVal(&c.etcdEndpoints), []mode{modeWorker}},
		{"worker-ttl", "worker lease TTL in etcd: how fast a dead worker is noticed", durationVal(&c.workerTTL), nil},
		{"announce", "announce the worker and its map version on IP multicast (disabled with a warning if multicast does not work on the interface)", boolVal(&c.announce), nil},
		{"announce-group", "multicast group:port for announcements", stringVal(&c.announceGroup), nil},
		{"announce-interface", "interface to announce on (default: the loopback interface; name the LAN interface for a cluster on several hosts)", stringVal(&c.announceInterface), nil},
		{"announce-cluster", "cluster name in announcements; clients listen for this name (clusters sharing a host or LAN need distinct names)", stringVal(&c.announceCluster), nil},
		{"shards", "number of shards (fixed when the cluster is first created)", intVal(&c.shards), member},
		{"session-ttl", "client session lease TTL (fixed when the cluster is first created)", durationVal(&c.sessionTTL), member},
		{"grace", "recovery grace period for a crashed worker's shards (fixed when the cluster is first created)", durationVal(&c.grace), member},
		{"shutdown-timeout", "how long an orderly shutdown may take before it is forced", durationVal(&c.shutdownTimeout), nil},
		{"drain-timeout", "on SIGTERM, how long the worker may hand its shards to other workers before stopping (0: stop at once, like SIGINT)", durationVal(&c.drainTimeout), nil},
		{"insecure", "etcd without TLS and without authentication: http:// URLs, and clients without certificates; anyone who reaches its client URL can rewrite the cluster's state (a warning is logged at start)", boolVal(&c.insecure), nil},
		{"certs-dir", "directory with the files made by \"tokend certs\" (ca.crt, server-<name>.crt/.key, tokend.crt/.key, cluster.key, client.key); the all-in-one default creates them there on first start (default <data-dir>/pki; worker: ./tokend-data/pki)", stringVal(&c.certsDir), nil},
		{"etcd-cert-file", "certificate the etcd member serves its client URLs with (default <certs-dir>/server-<name>.crt)", stringVal(&c.etcdCertFile), member},
		{"etcd-key-file", "key of --etcd-cert-file (default <certs-dir>/server-<name>.key)", stringVal(&c.etcdKeyFile), member},
		{"etcd-ca-file", "CA whose client certificates the etcd member accepts; the common name is the etcd user (default <certs-dir>/ca.crt)", stringVal(&c.etcdCAFile), member},
		{"peer-cert-file", "certificate for etcd peer traffic, as server and client (default --etcd-cert-file)", stringVal(&c.peerCertFile), member},
		{"peer-key-file", "key of --peer-cert-file (default --etcd-key-file)", stringVal(&c.peerKeyFile), member},
		{"peer-ca-file", "CA of the other members' certificates (default --etcd-ca-file)", stringVal(&c.peerCAFile), member},
		{"peer-cert-allowed-cn", "only peers whose certificate has this common name may connect (\"tokend certs\" makes member certificates with it; empty: any certificate of --peer-ca-file)", stringVal(&c.peerAllowedCN), member},
		{"etcd-cacert", "CA that signed the etcd members' certificates, for this process's etcd client (default <certs-dir>/ca.crt)", stringVal(&c.etcdCACert), nil},
		{"etcd-cert", "client certificate of this process's etcd client; its common name is the etcd user, tokend (default <certs-dir>/tokend.crt)", stringVal(&c.etcdCert), nil},
		{"etcd-key", "key of --etcd-cert (default <certs-dir>/tokend.key)", stringVal(&c.etcdKey), nil},
		{"cluster-key-file", "the cluster key, made by \"tokend certs\" (or the all-in-one's first start): it seals the client and session keys in etcd; servers and workers only (default <certs-dir>/cluster.key)", stringVal(&c.clusterKeyFile), nil},
		{"client-key-file", "a client key this server registers in etcd at start if absent, so that clients holding the same file can authenticate (default <certs-dir>/client.key, skipped if that file does not exist)", stringVal(&c.clientKeyFile), member},
	}
}

func (o option) accepts(m mode) bool {
	if o.modes == nil {
		return true
	}
	for _, x := range o.modes {
		if x == m {
			return true
		}
	}
	return false
}

// loadConfig builds the configuration for mode m from args, the environment
// (getenv) and the YAML file named by --config / TOKEND_CONFIG. Precedence:
// flags, then environment, then file, then defaults. Every error names the
// flag it is about and wraps errConfig.
func loadConfig(m mode, args []string, getenv func(string) string, usage io.Writer) (*config, error) {
	c := defaults(m)
	fs := flag.NewFlagSet("tokend "+m.String(), flag.ContinueOnError)
	fs.SetOutput(usage)
	byName := map[string]option{}
	for _, o := range c.options() {
		if !o.accepts(m) {
			continue
		}
		byName[o.name] = o
		fs.Var(o.value, o.name, o.usage)
	}
	fs.Usage = func() {
		fmt.Fprintf(usage, "Usage of tokend %s:\n", m)
		fs.PrintDefaults()
		fmt.Fprintf(usage, "\nEvery flag can also be set as TOKEND_<FLAG> (e.g. TOKEND_DATA_DIR) or as a key in the --config YAML file.\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", errConfig, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errConfig, fs.Arg(0))
	}
	fromFlags := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { fromFlags[f.Name] = true })

	fromEnv := map[string]string{}
	for name := range byName {
		if fromFlags[name] {
			continue
		}
		if v := getenv(envName(name)); v != "" {
			fromEnv[name] = v
		}
	}
	if v, ok := fromEnv["config"]; ok {
		if err := fs.Set("config", v); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errConfig, envName("config"), err)
		}
	}
	fileSet := map[string]bool{}
	if c.configFile != "" {
		file, err := readConfigFile(c.configFile)
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(file))
		for k := range file {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if _, ok := byName[k]; !ok || k == "config" {
				return nil, fmt.Errorf("%w: %s: unknown key %q for tokend %s", errConfig, c.configFile, k, m)
			}
			if fromFlags[k] || fromEnv[k] != "" {
				continue
			}
			if err := fs.Set(k, file[k]); err != nil {
				return nil, fmt.Errorf("%w: %s: key %q: %v", errConfig, c.configFile, k, err)
			}
			fileSet[k] = true
		}
	}
	for name, v := range fromEnv {
		if name == "config" {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errConfig, envName(name), err)
		}
	}
	c.set = map[string]bool{}
	for name := range byName {
		if fromFlags[name] || fromEnv[name] != "" || fileSet[name] {
			c.set[name] = true
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// readConfigFile reads a flat YAML mapping of flag names to scalars or lists.
func readConfigFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: --config: %v", errConfig, err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: --config %s: %v", errConfig, path, err)
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			out[k] = strings.Join(parts, ",")
		case map[string]any:
			return nil, fmt.Errorf("%w: %s: key %q: nested mappings are not supported", errConfig, path, k)
		case nil:
			return nil, fmt.Errorf("%w: %s: key %q has no value", errConfig, path, k)
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out, nil
}

func bad(flagName, format string, args ...any) error {
	return fmt.Errorf("%w: --%s: %s", errConfig, flagName, fmt.Sprintf(format, args...))
}

// validate checks every value and fills derived defaults.
func (c *config) validate() error {
	switch c.logFormat {
	case "text", "json":
	default:
		return bad("log-format", "%q is not text or json", c.logFormat)
	}
	switch c.logLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("log-level", "%q is not debug, info, warn or error", c.logLevel)
	}
	if err := checkHostPort(c.httpAddr, true); err != nil {
		return bad("http-addr", "%v", err)
	}
	if c.advHTTP != "" {
		if err := checkAdvertise(c.advHTTP); err != nil {
			return bad("advertise-http-addr", "%v", err)
		}
	}
	if c.shutdownTimeout <= 0 {
		return bad("shutdown-timeout", "must be positive, got %v", c.shutdownTimeout)
	}
	if c.drainTimeout < 0 {
		return bad("drain-timeout", "must not be negative, got %v", c.drainTimeout)
	}
	if c.mode != modeServer || c.runWorker {
		if err := checkHostPort(c.udpAddr, true); err != nil {
			return bad("udp-addr", "%v", err)
		}
		if c.handoffAddr != "" && c.handoffAddr != "off" {
			if err := checkHostPort(c.handoffAddr, true); err != nil {
				return bad("handoff-addr", "%v", err)
			}
		}
		if c.advUDP != "" {
			if err := checkAdvertise(c.advUDP); err != nil {
				return bad("advertise-udp-addr", "%v", err)
			}
		}
		if c.advHandoff != "" {
			if c.handoffAddr == "off" {
				return bad("advertise-handoff-addr", "%q is set but --handoff-addr is off", c.advHandoff)
			}
			if err := checkAdvertise(c.advHandoff); err != nil {
				return bad("advertise-handoff-addr", "%v", err)
			}
		}
		if c.workerTTL < 2*time.Second {
			return bad("worker-ttl", "must be at least 2s (etcd's minimum lease TTL), got %v", c.workerTTL)
		}
		if c.announce {
			if _, err := announce.ParseGroup(c.announceGroup); err != nil {
				return bad("announce-group", "%v", err)
			}
			if n := len(c.announceCluster); n == 0 || n > announce.MaxCluster {
				return bad("announce-cluster", "%q: use 1-%d bytes", c.announceCluster, announce.MaxCluster)
			}
		}
		if c.workerID != "" && !validID(c.workerID) {
			return bad("worker-id", "%q: use 1-64 letters, digits, '.', '_' or '-'", c.workerID)
		}
	}
	if c.mode == modeWorker {
		if len(c.etcdEndpoints) == 0 {
			return bad("etcd-endpoints", "at least one endpoint is needed")
		}
		for _, e := range c.etcdEndpoints {
			hp := e
			if strings.Contains(e, "://") {
				u, err := url.Parse(e)
				if err != nil {
					return bad("etcd-endpoints", "%q: %v", e, err)
				}
				if err := c.checkScheme(u.Scheme); err != nil {
					return bad("etcd-endpoints", "%q: %v", e, err)
				}
				hp = u.Host
			}
			if err := checkHostPort(hp, false); err != nil {
				return bad("etcd-endpoints", "%q: %v", e, err)
			}
		}
		c.defaultTLSFiles()
		return nil
	}

	// etcd member
	if c.dataDir == "" {
		return bad("data-dir", "must not be empty")
	}
	if err := checkWritableDir(c.dataDir); err != nil {
		return bad("data-dir", "%v", err)
	}
	if !validID(c.name) {
		return bad("name", "%q: use 1-64 letters, digits, '.', '_' or '-'", c.name)
	}
	scheme := "https"
	if c.insecure {
		scheme = "http"
	}
	if len(c.peerURLs) == 0 {
		c.peerURLs = []string{scheme + "://127.0.0.1:2380"}
	}
	if len(c.clientURLs) == 0 {
		c.clientURLs = []string{scheme + "://127.0.0.1:2379"}
	}
	c.defaultTLSFiles()
	for _, f := range []struct {
		flag string
		urls []string
	}{{"peer-urls", c.peerURLs}, {"client-urls", c.clientURLs}, {"advertise-peer-urls", c.advPeerURLs}, {"advertise-client-urls", c.advClientURLs}} {
		if len(f.urls) == 0 && !strings.HasPrefix(f.flag, "advertise-") {
			return bad(f.flag, "at least one URL is needed")
		}
		for _, s := range f.urls {
			if err := c.checkURL(s); err != nil {
				return bad(f.flag, "%q: %v", s, err)
			}
		}
	}
	switch c.clusterState {
	case "new", "existing":
	default:
		return bad("cluster-state", "%q is not new or existing", c.clusterState)
	}
	if c.initialCluster == "" {
		// This member alone, at its advertised peer URLs: known now
		// unless they are derived from the host's network, in which case
		// resolveAdvertise sets it.
		if !anyUnspecified(c.peerURLs) || len(c.advPeerURLs) > 0 {
			urls, _, err := advertiseURLs("peer-urls", "advertise-peer-urls", c.peerURLs, c.advPeerURLs, hostNet{}, nil)
			if err != nil {
				return err
			}
			pairs := make([]string, len(urls))
			for i, u := range urls {
				pairs[i] = c.name + "=" + u
			}
			c.initialCluster = strings.Join(pairs, ",")
		}
		return c.validateRest()
	}
	found := false
	for _, m := range strings.Split(c.initialCluster, ",") {
		name, u, ok := strings.Cut(strings.TrimSpace(m), "=")
		if !ok || name == "" {
			return bad("initial-cluster", "%q: want name=peerURL", m)
		}
		if err := c.checkURL(u); err != nil {
			return bad("initial-cluster", "%q: %v", m, err)
		}
		if name == c.name {
			found = true
		}
	}
	if !found {
		return bad("initial-cluster", "does not name this member %q (see --name)", c.name)
	}
	return c.validateRest()
}

// validateRest checks the etcd member's values after its URLs.
func (c *config) validateRest() error {
	if c.clusterToken == "" {
		return bad("cluster-token", "must not be empty")
	}
	if c.quotaBytes < 64<<20 || c.quotaBytes > 8<<30 {
		return bad("quota-bytes", "%d is outside [64 MiB, 8 GiB]", c.quotaBytes)
	}
	if c.compaction < time.Minute {
		return bad("compaction", "must be at least 1m, got %v", c.compaction)
	}
	if c.shards < 1 || c.shards > 65536 {
		return bad("shards", "%d is outside [1, 65536]", c.shards)
	}
	if c.sessionTTL < 2*time.Second {
		return bad("session-ttl", "must be at least 2s (etcd's minimum lease TTL), got %v", c.sessionTTL)
	}
	if c.grace < 0 {
		return bad("grace", "must not be negative, got %v", c.grace)
	}
	return nil
}

func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '.', r == '_', r == '-':
		default:
			return false
		}
	}
	return true
}

func checkHostPort(s string, allowZero bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" {
		return fmt.Errorf("%q: missing host (use 0.0.0.0 to listen on every address)", s)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 || (p == 0 && !allowZero) {
		return fmt.Errorf("%q: bad port %q", s, port)
	}
	return nil
}

// checkAdvertise checks an advertised host:port: like a listen address,
// but it must name a host others can connect to.
func checkAdvertise(s string) error {
	if err := checkHostPort(s, true); err != nil {
		return err
	}
	host, _, _ := net.SplitHostPort(s)
	if isUnspecified(host) {
		return fmt.Errorf("%q: an unspecified address cannot be advertised: nobody can connect to it; give this host's reachable address", s)
	}
	return nil
}

// anyUnspecified reports whether a URL of urls has an unspecified host.
func anyUnspecified(urls []string) bool {
	for _, s := range urls {
		if u, err := url.Parse(s); err == nil {
			if host, _, err := net.SplitHostPort(u.Host); err == nil && isUnspecified(host) {
				return true
			}
		}
	}
	return false
}

// checkURL checks an etcd member URL: https://host:port, or http:// with
// --insecure.
func (c *config) checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return err
	}
	if err := c.checkScheme(u.Scheme); err != nil {
		return err
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return fmt.Errorf("must not have a path or query")
	}
	return checkHostPort(u.Host, false)
}

// checkScheme accepts https for a secure etcd and http for an insecure one.
func (c *config) checkScheme(scheme string) error {
	switch {
	case scheme == "https" && !c.insecure, scheme == "http" && c.insecure:
		return nil
	case scheme == "http":
		return fmt.Errorf("plain http, but etcd runs with TLS unless --insecure: use https:// (or --insecure to run without TLS and authentication)")
	case scheme == "https":
		return fmt.Errorf("https, but --insecure runs etcd without TLS: use http://, or drop --insecure")
	}
	return fmt.Errorf("scheme must be https (http with --insecure)")
}

// checkWritableDir creates dir if needed and proves it is writable.
func checkWritableDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".tokend-probe-*")
	if err != nil {
		return fmt.Errorf("not writable: %v", err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// memberDir is where this member's etcd data lives under the data dir.
func (c *config) memberDir() string { return filepath.Join(c.dataDir, c.name+".etcd") }

// flag.Value implementations.

type stringValue struct{ p *string }

func stringVal(p *string) flag.Value     { return stringValue{p} }
func (v stringValue) Set(s string) error { *v.p = s; return nil }
func (v stringValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

type listValue struct{ p *[]string }

func listVal(p *[]string) flag.Value { return listValue{p} }
func (v listValue) Set(s string) error {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	*v.p = out
	return nil
}
func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

type intValue struct{ p *int }

func intVal(p *int) flag.Value { return intValue{p} }
func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	*v.p = n
	return nil
}
func (v intValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

type int64Value struct{ p *int64 }

func int64Val(p *int64) flag.Value { return int64Value{p} }
func (v int64Value) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	*v.p = n
	return nil
}
func (v int64Value) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.FormatInt(*v.p, 10)
}

type boolValue struct{ p *bool }

func boolVal(p *bool) flag.Value { return boolValue{p} }
func (v boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not a boolean", s)
	}
	*v.p = b
	return nil
}
func (v boolValue) String() string {
	if v.p == nil {
		return "false"
	}
	return strconv.FormatBool(*v.p)
}
func (v boolValue) IsBoolFlag() bool { return true }

type durationValue struct{ p *time.Duration }

func durationVal(p *time.Duration) flag.Value { return durationValue{p} }
func (v durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. 5s, 1m30s)", s)
	}
	*v.p = d
	return nil
}
func (v durationValue) String() string {
	if v.p == nil {
		return "0s"
	}
	return v.p.String()
}
