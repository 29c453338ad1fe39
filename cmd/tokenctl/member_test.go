package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tokend/tokend/embedded"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/internal/pki"
)

// TestMemberReplace is the README's server replacement with tokenctl:
// member list shows three started members and a leader; remove refuses a
// member that still answers; once it is stopped, replace removes it and
// adds a new member, whose printed settings start a new member that joins
// with an empty data dir; add and remove by id work on a member that never
// started.
func TestMemberReplace(t *testing.T) {
	ms, cli, certs := etcdtest.StartSecureCluster(t, 3)
	etcd := strings.Join(cli.Endpoints(), ",")
	member := func(wantCode int, args ...string) string {
		t.Helper()
		var out, errOut strings.Builder
		code := run(context.Background(), append([]string{"member"}, append(args, "--etcd", etcd, "--certs-dir", certs)...), &out, &errOut)
		if code != wantCode {
			t.Fatalf("tokenctl member %v: exit %d, want %d\n%s%s", args, code, wantCode, out.String(), errOut.String())
		}
		return out.String() + errOut.String()
	}
	list := func() map[string]memberInfo {
		t.Helper()
		var ms []memberInfo
		if err := json.Unmarshal([]byte(member(exitOK, "list", "-o", "json")), &ms); err != nil {
			t.Fatal(err)
		}
		byName := map[string]memberInfo{}
		for _, m := range ms {
			byName[m.Name] = m
		}
		return byName
	}

	out := member(exitOK, "list")
	for _, want := range []string{"NAME", "s1", "s2", "s3", "leader", "started"} {
		if !strings.Contains(out, want) {
			t.Errorf("member list lacks %q:\n%s", want, out)
		}
	}
	if out := member(exitError, "remove", "s3"); !strings.Contains(out, "it is alive") {
		t.Errorf("remove of a live member: %s", out)
	}
	if out := member(exitError, "remove", "nobody"); !strings.Contains(out, "no such member") {
		t.Errorf("remove of no member: %s", out)
	}

	// s3 dies; s4 replaces it, with a certificate of the same CA.
	ms[2].Close()
	if _, err := pki.Write(pki.Request{Dir: certs, Servers: []pki.Server{{Name: "s4", Hosts: []string{"127.0.0.1"}}}}); err != nil {
		t.Fatal(err)
	}
	cfg := etcdtest.SecureConfig(t, "s4", certs)
	out = member(exitOK, "replace", "s3", "--name", "s4", "--peer-urls", cfg.PeerURLs[0], "-o", "json")
	var a added
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &a); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "removed member s3") || a.Name != "s4" || a.ClusterState != "existing" ||
		!strings.Contains(a.InitialCluster, "s4="+cfg.PeerURLs[0]) || strings.Contains(a.InitialCluster, "s3=") || strings.Count(a.InitialCluster, "=") != 3 {
		t.Fatalf("replace printed %s", out)
	}
	cfg.InitialCluster, cfg.ClusterState = a.InitialCluster, a.ClusterState
	m4, err := embedded.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("the new member does not start with the printed settings: %v", err)
	}
	t.Cleanup(func() { m4.Close() })
	got := list()
	if _, ok := got["s3"]; ok || len(got) != 3 || got["s4"].Status == "not started" {
		t.Errorf("after replace: %+v", got)
	}

	// A member added and never started is removed by its id.
	out = member(exitOK, "add", "s5", "--peer-urls", "https"+strings.TrimPrefix(etcdtest.FreeURL(t), "http"))
	if !strings.Contains(out, "TOKEND_NAME=s5") || !strings.Contains(out, "TOKEND_CLUSTER_STATE=existing") {
		t.Errorf("add printed %s", out)
	}
	var id string
	for _, m := range list() {
		if m.Status == "not started" {
			id = m.ID
		}
	}
	if id == "" {
		t.Fatal("the added member is not listed as not started")
	}
	member(exitOK, "remove", id)
	if got := list(); len(got) != 3 {
		t.Errorf("after removing %s: %+v", id, got)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "want list, add, remove or replace"},
		{[]string{"frob"}, "unknown command"},
		{[]string{"add", "s6"}, "--peer-urls is required"},
		{[]string{"add", "--peer-urls", "http://x:1", "s6"}, "not https://host:port"},
		{[]string{"add", "--insecure", "--peer-urls", "https://x:1", "s6"}, "not http://host:port"},
		{[]string{"remove"}, "want 1 argument"},
		{[]string{"list", "x"}, "want 0 argument"},
	} {
		var out, errOut strings.Builder
		if code := run(context.Background(), append([]string{"member"}, tt.args...), &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("member %v: exit %d, %q; want %d and %q", tt.args, code, errOut.String(), exitUsage, tt.want)
		}
	}
}
