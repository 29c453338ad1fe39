package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/proctest"
)

// unitFile is a systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func readUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: %q is not key=value in a section", path, line)
			}
			u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	return u
}

// flagDefaults runs "tokend <mode> -h" and returns its flags with their
// printed defaults ("" if none).
func flagDefaults(t *testing.T, mode string) map[string]string {
	t.Helper()
	out, _ := exec.Command(proctest.Tokend(t), mode, "-h").CombinedOutput()
	flags := map[string]string{}
	re := regexp.MustCompile(`\(default ([^)]*)\)$`)
	var last string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "  -") {
			last = strings.Fields(line)[0][1:]
			flags[last] = ""
		} else if m := re.FindStringSubmatch(strings.TrimSpace(line)); m != nil && last != "" {
			flags[last] = m[1]
		}
	}
	if len(flags) < 10 {
		t.Fatalf("tokend %s -h listed %d flags:\n%s", mode, len(flags), out)
	}
	return flags
}

// envFile returns the TOKEND_* settings of an environment file, the
// commented-out examples too (commented: true).
func envFile(t *testing.T, path string) map[string]struct {
	value     string
	commented bool
} {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		value     string
		commented bool
	}{}
	re := regexp.MustCompile(`^(#?)(TOKEND_[A-Z0-9_]+)=(.*)$`)
	for _, line := range strings.Split(string(b), "\n") {
		if m := re.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			out[m[2]] = struct {
				value     string
				commented bool
			}{m[3], m[1] == "#"}
		}
	}
	return out
}

// envToFlag is TOKEND_DRAIN_TIMEOUT -> drain-timeout.
func envToFlag(env string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(env, "TOKEND_"), "_", "-"))
}

// TestSystemdUnits checks the units as a reviewer would (the settings
// issue 15 asks for, every TOKEND_* variable of the environment files a
// real flag of its mode, stop timeouts above drain plus shutdown, etcd over
// TLS with the certificates in /etc/tokend/pki, client authentication
// with the key files there: cluster.key on servers and workers, client.key
// on servers, installed 0600 for tokend), then
// runs systemd-analyze verify and security on them where it exists, with
// ExecStart pointed at a copy of the test's tokend (verify needs the
// binary to exist).
func TestSystemdUnits(t *testing.T) {
	dir := filepath.Join(deployDir(), "systemd")
	for _, tc := range []struct {
		unit, mode, env string
		extra           map[string]string // [Service] key -> value required besides the common ones
		keyFiles        map[string]string // TOKEND_* key file setting -> its file
		keys            []string          // the key files its comment installs, 0600
	}{
		{"tokend-server.service", "server", "server.env", map[string]string{"StateDirectory": "tokend", "EnvironmentFile": "/etc/tokend/server.env"},
			map[string]string{"TOKEND_CLUSTER_KEY_FILE": "/etc/tokend/pki/cluster.key", "TOKEND_CLIENT_KEY_FILE": "/etc/tokend/pki/client.key"},
			[]string{"client.key", "cluster.key", "server-s1.key", "tokend.key"}},
		{"tokend-worker@.service", "worker", "worker.env", map[string]string{"EnvironmentFile": "/etc/tokend/worker.env"},
			map[string]string{"TOKEND_CLUSTER_KEY_FILE": "/etc/tokend/pki/cluster.key"},
			[]string{"cluster.key", "tokend.key"}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			u := readUnit(t, filepath.Join(dir, tc.unit))
			svc := u["Service"]
			want := map[string]string{
				"User": "tokend", "Group": "tokend", "Restart": "on-failure", "KillSignal": "SIGTERM",
				"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
				"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
				"SystemCallFilter": "@system-service", "RestartPreventExitStatus": "2",
			}
			for k, v := range tc.extra {
				want[k] = v
			}
			for k, v := range want {
				// The last assignment wins, but filters and files accumulate.
				got := svc[k]
				ok := len(got) > 0 && got[len(got)-1] == v
				if k == "SystemCallFilter" || k == "EnvironmentFile" {
					ok = slices.Contains(got, v)
				}
				if !ok {
					t.Errorf("%s: [Service] %s=%q missing (has %q)", tc.unit, k, v, got)
				}
			}
			if ex := svc["ExecStart"]; len(ex) != 1 || !strings.HasPrefix(ex[0], "/usr/local/bin/tokend "+tc.mode) {
				t.Errorf("%s: ExecStart %q, want /usr/local/bin/tokend %s", tc.unit, ex, tc.mode)
			}
			for _, k := range []string{"StartLimitIntervalSec", "StartLimitBurst"} {
				if len(u["Unit"][k]) != 1 {
					t.Errorf("%s: [Unit] %s missing: restarts need a burst limit", tc.unit, k)
				}
			}
			rs := svc["RestartSec"]
			if len(rs) != 1 || parseSec(rs[0]) <= 0 {
				t.Errorf("%s: RestartSec %q, want a positive delay", tc.unit, rs)
			}

			// Every variable is a flag of this mode; the stop timeout is
			// above drain + shutdown with the file's values or the defaults.
			flags := flagDefaults(t, tc.mode)
			env := envFile(t, filepath.Join(dir, tc.env))
			for k := range env {
				if _, ok := flags[envToFlag(k)]; !ok {
					t.Errorf("%s: %s is not a flag of tokend %s (--%s)", tc.env, k, tc.mode, envToFlag(k))
				}
			}
			// Secure by default: certificates in /etc/tokend/pki, https://
			// only (in the commented-out examples too).
			if e := env["TOKEND_CERTS_DIR"]; e.commented || e.value != "/etc/tokend/pki" {
				t.Errorf("%s: TOKEND_CERTS_DIR=%q (commented %v), want /etc/tokend/pki", tc.env, e.value, e.commented)
			}
			for k, e := range env {
				if strings.Contains(e.value, "http://") {
					t.Errorf("%s: %s=%s: etcd runs over TLS, https:// only", tc.env, k, e.value)
				}
			}
			unitText, _ := os.ReadFile(filepath.Join(dir, tc.unit))
			if !strings.Contains(string(unitText), "tokend certs") || strings.Contains(string(unitText), "No TLS") {
				t.Errorf("%s: its comment must say how to install the certificates (tokend certs)", tc.unit)
			}
			// Clients authenticate: the key files are set, in
			// /etc/tokend/pki, and the comment installs exactly this
			// mode's keys, 0600 and owned by tokend (a key file others may
			// read is refused at start).
			for k, want := range tc.keyFiles {
				if e := env[k]; e.commented || e.value != want {
					t.Errorf("%s: %s=%q (commented %v), want %s", tc.env, k, e.value, e.commented, want)
				}
			}
			if e, ok := env["TOKEND_INSECURE"]; ok && !e.commented {
				t.Errorf("%s: TOKEND_INSECURE=%s turns client authentication off", tc.env, e.value)
			}
			var keys []string
			install := regexp.MustCompile(`(?m)^#\s+install -m (\d+) -o tokend -g tokend ((?:certs/\S+ )+)/etc/tokend/pki/$`)
			for _, m := range install.FindAllStringSubmatch(string(unitText), -1) {
				for _, f := range strings.Fields(m[2]) {
					if f = strings.TrimPrefix(f, "certs/"); strings.HasSuffix(f, ".key") {
						keys = append(keys, f)
						if m[1] != "0600" {
							t.Errorf("%s: installs %s with mode %s, want 0600", tc.unit, f, m[1])
						}
					}
				}
			}
			if slices.Sort(keys); !slices.Equal(keys, tc.keys) {
				t.Errorf("%s: its comment installs the keys %q, want %q", tc.unit, keys, tc.keys)
			}
			budget := 0.0
			for _, f := range []string{"drain-timeout", "shutdown-timeout"} {
				v := flags[f]
				if e, ok := env["TOKEND_"+strings.ToUpper(strings.ReplaceAll(f, "-", "_"))]; ok && !e.commented {
					v = e.value
				}
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Fatalf("--%s %q: %v", f, v, err)
				}
				budget += d.Seconds()
			}
			if ts := svc["TimeoutStopSec"]; len(ts) != 1 || parseSec(ts[0]) <= budget {
				t.Errorf("%s: TimeoutStopSec %q, want more than --drain-timeout + --shutdown-timeout = %vs", tc.unit, ts, budget)
			}
		})
	}
	b, err := os.ReadFile(filepath.Join(dir, "tokend.sysusers"))
	if err != nil || !regexp.MustCompile(`(?m)^u tokend - "[^"]*" /var/lib/tokend$`).Match(b) {
		t.Errorf("tokend.sysusers: want a line u tokend - \"...\" /var/lib/tokend: %v\n%s", err, b)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the units were checked, not verified")
	}
	// verify needs ExecStart to exist: point it at a copy of tokend.
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "tokend")
	src, err := os.ReadFile(proctest.Tokend(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tokend-server.service", "tokend-worker@.service"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/tokend", bin))
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// An instance of the template, as systemctl would load it.
	for _, unit := range []string{"tokend-server.service", "tokend-worker@1.service"} {
		path := filepath.Join(tmp, unit)
		if unit != "tokend-server.service" {
			if err := os.Link(filepath.Join(tmp, "tokend-worker@.service"), path); err != nil {
				t.Fatal(err)
			}
		}
		// verify reports bad keys and values on stderr but still exits 0:
		// any output is a failure.
		out, err := runCmd(t, time.Minute, tmp, true, analyze, "verify", "--man=no", path)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		out, err = runCmd(t, time.Minute, tmp, true, analyze, "security", "--offline=yes", path)
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Logf("systemd-analyze security %s did not run: %v", unit, err)
			continue
		}
		level, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security %s: exposure %.1f (0 best, 10 worst)", unit, level)
		if level > 2.0 {
			t.Errorf("%s: exposure %.1f, above 2.0: a hardening option was lost\n%s", unit, level, out)
		}
	}
}

// parseSec parses a systemd time span of the forms used here (30s, 5min,
// 2) in seconds; -1 if it cannot.
func parseSec(s string) float64 {
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		return n
	}
	if d, err := time.ParseDuration(strings.ReplaceAll(s, "min", "m")); err == nil {
		return d.Seconds()
	}
	return -1
}
