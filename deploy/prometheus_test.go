package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/internal/proc"
	"github.com/tokend/tokend/testkit/proctest"
	"github.com/tokend/tokend/worker"
)

// TestPrometheusRules runs promtool on deploy/prometheus: the rules and
// both scrape configs parse, and rules_test.yml's alert scenarios pass.
func TestPrometheusRules(t *testing.T) {
	needTools(t, "promtool")
	dir := filepath.Join(deployDir(), "prometheus")
	runCmd(t, time.Minute, dir, false, "promtool", "check", "rules", "rules.yml")
	runCmd(t, time.Minute, dir, false, "promtool", "check", "config", "prometheus.yml")
	runCmd(t, time.Minute, dir, false, "promtool", "test", "rules", "rules_test.yml")
	// Debian builds Prometheus without Kubernetes service discovery.
	if out, err := runCmd(t, time.Minute, dir, true, "promtool", "check", "config", "prometheus-kubernetes.yml"); err != nil {
		if strings.Contains(out, "field kubernetes_sd_configs not found") {
			t.Log("prometheus-kubernetes.yml not checked: this promtool has no Kubernetes service discovery")
		} else {
			t.Error(err)
		}
	}
}

// family is a metric family as a Desc declares it.
type family struct {
	labels []string // variable labels
}

// recorder is a Registerer that remembers every family its collectors
// describe, children or not: a CounterVec that has counted nothing is on
// no /metrics page yet but is a name rules may use.
type recorder struct {
	reg      *prometheus.Registry
	families map[string]family
}

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*variableLabels: \{([^}]*)\}`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := descRE.FindStringSubmatch(d.String())
		if m == nil {
			return fmt.Errorf("cannot read %s", d)
		}
		var labels []string
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				labels = append(labels, l)
			}
		}
		r.families[m[1]] = family{labels}
	}
	return r.reg.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// declaredFamilies returns every tokend_ family a worker and a coordinator
// register, built in-process and never started (the etcd client is never
// used).
func declaredFamilies(t *testing.T) map[string]family {
	t.Helper()
	rec := &recorder{reg: prometheus.NewRegistry(), families: map[string]family{}}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	w, err := worker.New(worker.Config{Client: cli, ID: "metrics", UDPAddr: "127.0.0.1:0", Registry: rec})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := coordinator.New(coordinator.Config{Client: cli, Name: "metrics", Registry: rec}); err != nil {
		t.Fatal(err)
	}
	if len(rec.families) < 20 {
		t.Fatalf("only %d families declared: %v", len(rec.families), rec.families)
	}
	return rec.families
}

// liveFamilies starts an all-in-one tokend on loopback as users start it
// (etcd over TLS with authentication, clients authenticated; it makes its
// certificates and key files on this first start), gives it a token
// request with its client key and a malformed datagram (so the
// request and drop counters have series), and returns the families on its
// /metrics with their types.
func liveFamilies(t *testing.T) map[string]string {
	t.Helper()
	tokend, tokenctl := proctest.Tokend(t), proctest.Tokenctl(t)
	httpAddr := proctest.Loop(proctest.FreePort(t, "tcp"))
	udpAddr := proctest.Loop(proctest.FreePort(t, "udp"))
	dataDir := t.TempDir()
	p := proctest.Start(t, proc.Spec{Name: "tokend", Path: tokend, Keep: 64 << 10, Args: []string{
		"--data-dir", dataDir, "--http-addr", httpAddr, "--udp-addr", udpAddr,
		"--client-urls", "https://" + proctest.Loop(proctest.FreePort(t, "tcp")),
		"--peer-urls", "https://" + proctest.Loop(proctest.FreePort(t, "tcp"))}})
	defer p.Stop(syscall.SIGINT, 20*time.Second)
	p.WaitReady(httpAddr, 30*time.Second)
	get := func(path string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Authenticated with the client key the first start made.
	runCmd(t, 30*time.Second, t.TempDir(), false, tokenctl, "acquire", "--seeds", udpAddr, "--key-file", filepath.Join(dataDir, "pki", "client.key"),
		"--wait", "10s", "--for", "10ms", "deploy-metrics")
	c, err := net.Dial("udp", udpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("not a tokend datagram"))
	c.Close()

	var types map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := get("/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d %s", code, body)
		}
		types = map[string]string{}
		sc := bufio.NewScanner(strings.NewReader(body))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
				types[f[2]] = f[3]
			}
		}
		if _, ok := types["tokend_worker_dropped_datagrams_total"]; ok {
			return types
		}
		if time.Now().After(deadline) {
			t.Fatal("the malformed datagram was not counted in tokend_worker_dropped_datagrams_total within 10 s")
		}
	}
}

// promExprs returns the PromQL of rules.yml (by rule name) and of the
// dashboard (by panel title).
func promExprs(t *testing.T) (rules, panels map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir(), "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf struct {
		Groups []struct {
			Rules []struct {
				Record, Alert, Expr string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatal(err)
	}
	rules = map[string]string{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			rules[r.Record+r.Alert] = r.Expr
		}
	}
	b, err = os.ReadFile(filepath.Join(deployDir(), "grafana", "tokend.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title, Type string
			Targets     []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	panels = map[string]string{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			panels[p.Title] += tg.Expr + "\n"
		}
	}
	return rules, panels
}

var (
	metricRE = regexp.MustCompile(`\b(?:tokend|etcd|go|process|grpc)_[a-z0-9_]+\b`)
	// labelsRE is where PromQL names labels, not metrics (grpc_code is a
	// label): the lists of by, without, on, ignoring, group_left and
	// group_right, and a selector's braces.
	labelsRE  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\{[^}]*\}`)
	matcherRE = regexp.MustCompile(`\b(tokend_[a-z0-9_]+)\{([^}]*)\}`)
	labelRE   = regexp.MustCompile(`([a-z_]+)\s*(?:=~|!~|!=|=)`)
	recordRE  = regexp.MustCompile(`\btokend:[a-z0-9_:]+`)
)

// base is a series name's family: a histogram's _bucket, _sum and _count
// series belong to it.
func base(name string, known func(string) bool) string {
	for _, s := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, s); ok && known(b) {
			return b
		}
	}
	return name
}

// TestMetricNames holds rules.yml and the Grafana dashboard to the metrics
// tokend really has: every tokend_ name they use is a family a worker or a
// coordinator registers (with the labels they select on), every etcd_ name
// is on a live tokend's /metrics, every recording rule the dashboard uses
// is defined, and every tokend_ family has a dashboard panel.
func TestMetricNames(t *testing.T) {
	declared := declaredFamilies(t)
	live := liveFamilies(t)
	for name := range live {
		if strings.HasPrefix(name, "tokend_") {
			if _, ok := declared[name]; !ok {
				t.Errorf("%s is on /metrics but the in-process worker and coordinator did not register it: is there a component this test does not build?", name)
			}
		}
	}
	known := func(n string) bool {
		_, d := declared[n]
		_, l := live[n]
		return d || l
	}
	rules, panels := promExprs(t)
	var notLive []string
	check := func(where, expr string) {
		for _, n := range metricRE.FindAllString(labelsRE.ReplaceAllString(expr, " "), -1) {
			b := base(n, known)
			switch {
			case strings.HasPrefix(b, "tokend_") && !known(b):
				t.Errorf("%s uses %s: tokend has no such metric", where, n)
			case !strings.HasPrefix(b, "tokend_") && live[b] == "":
				t.Errorf("%s uses %s: not on a live tokend's /metrics", where, n)
			case strings.HasPrefix(b, "tokend_") && live[b] == "" && !slices.Contains(notLive, b):
				notLive = append(notLive, b)
			}
		}
		for _, m := range matcherRE.FindAllStringSubmatch(expr, -1) {
			f, ok := declared[base(m[1], known)]
			if !ok {
				continue
			}
			for _, l := range labelRE.FindAllStringSubmatch(m[2], -1) {
				if l[1] != "job" && l[1] != "instance" && !slices.Contains(f.labels, l[1]) {
					t.Errorf("%s selects %s on %s, which has labels %v", where, l[1], m[1], f.labels)
				}
			}
		}
	}
	for name, expr := range rules {
		check("rules.yml "+name, expr)
	}
	for title, expr := range panels {
		check("dashboard panel "+quote(title), expr)
		for _, r := range recordRE.FindAllString(expr, -1) {
			if _, ok := rules[r]; !ok {
				t.Errorf("dashboard panel %q uses %s, which rules.yml does not record", title, r)
			}
		}
	}
	slices.Sort(notLive)
	t.Logf("registered but without series on a fresh tokend (nothing counted yet): %v", notLive)

	// A panel for every family.
	var names []string
	for name := range declared {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		found := false
		for _, expr := range panels {
			for _, n := range metricRE.FindAllString(labelsRE.ReplaceAllString(expr, " "), -1) {
				found = found || base(n, known) == name
			}
		}
		if !found {
			t.Errorf("no dashboard panel shows %s", name)
		}
	}
	t.Logf("%d tokend_ families, %d panels, %d rules", len(names), len(panels), len(rules))
}

func quote(s string) string { return strconv.Quote(s) }
