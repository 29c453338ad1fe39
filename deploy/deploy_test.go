// Package deploy checks what deploy/ ships, the way a user runs it: the
// image and compose file with Docker (TestCompose), the systemd units with
// systemd-analyze, the Kubernetes manifests with kubectl kustomize and a
// structural check, and the Prometheus rules and Grafana dashboard with
// promtool and against a live tokend's /metrics. A test whose tool is
// missing (docker, docker-compose, root, systemd-analyze, kubectl,
// promtool) skips and says which. It has no non-test code.
package deploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/proctest"
)

func TestMain(m *testing.M) {
	os.Exit(proctest.Main(m, "tokend-deploy-", 10*time.Second))
}

// deployDir is this directory, absolute.
func deployDir() string { return filepath.Join(proctest.SourceDir(), "deploy") }

// needTools skips the test unless every tool is on PATH.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
}

// runCmd runs name args in dir with a timeout and returns its combined
// output; it fails the test if the command fails, unless mayFail.
func runCmd(t *testing.T, timeout time.Duration, dir string, mayFail bool, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out.String())
		if !mayFail {
			t.Fatal(err)
		}
	}
	return out.String(), err
}
