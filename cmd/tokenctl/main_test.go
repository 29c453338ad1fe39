package main

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tokend/tokend/wire"
)

func TestParseRange(t *testing.T) {
	for _, tt := range []struct {
		in         string
		start, end uint64
		ok         bool
	}{
		{"0:4096", 0, 4096, true},
		{"4096:8192", 4096, 8192, true},
		{"0x10:0x20", 16, 32, true},
		{"5:5", 0, 0, false},
		{"9:1", 0, 0, false},
		{"1", 0, 0, false},
		{"a:b", 0, 0, false},
		{"-1:3", 0, 0, false},
	} {
		s, e, err := parseRange(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (s != tt.start || e != tt.end)) {
			t.Errorf("parseRange(%q) = %d, %d, %v", tt.in, s, e, err)
		}
	}
	if got := rangeString(wire.WholeStart, wire.WholeEnd); got != "[whole]" {
		t.Errorf("whole range prints %q", got)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "Usage"},
		{[]string{"frob"}, exitUsage, "unknown command \"frob\""},
		{[]string{"acquire"}, exitUsage, "want a token NAME"},
		{[]string{"acquire", "x", "y"}, exitUsage, "NAME -- command"},
		{[]string{"acquire", "x", "--"}, exitUsage, "NAME -- command"},
		{[]string{"acquire", "--detach", "x", "--", "true"}, exitUsage, "without a command"},
		{[]string{"acquire", "--timeout", "0", "x"}, exitUsage, "--timeout"},
		{[]string{"acquire", "--mode", "rw", "x"}, exitUsage, "--mode"},
		{[]string{"acquire", "--range", "9:1", "x"}, exitUsage, "--range"},
		{[]string{"acquire", "-o", "yaml", "x"}, exitUsage, "-o: \"yaml\""},
		{[]string{"acquire", "--value", strings.Repeat("v", 65), "x"}, exitUsage, "--value"},
		{[]string{"acquire", strings.Repeat("n", 256)}, exitUsage, "NAME must be"},
		{[]string{"acquire", "--bogus", "x"}, exitUsage, "flag provided but not defined"},
		{[]string{"release"}, exitUsage, "want exactly one token NAME"},
		{[]string{"release", "no-such-token-held-here"}, exitError, "no holder"},
		{[]string{"status", "extra"}, exitUsage, "unexpected argument"},
	} {
		var out, errb strings.Builder
		code := run(context.Background(), tt.args, &out, &errb)
		if code != tt.code || !strings.Contains(out.String()+errb.String(), tt.want) {
			t.Errorf("tokenctl %v: exit %d (want %d), output %q (want %q)", tt.args, code, tt.code, out.String()+errb.String(), tt.want)
		}
	}
}

func TestBuildStatus(t *testing.T) {
	kvs := []*mvccpb.KeyValue{
		{Key: []byte("/tokend/config"), Value: []byte(`{"shards":4,"session_ttl_ms":10000,"grace_ms":5000}`)},
		{Key: []byte("/tokend/leader/2"), Value: []byte(`{"name":"s2"}`), CreateRevision: 9},
		{Key: []byte("/tokend/leader/1"), Value: []byte(`{"name":"s1"}`), CreateRevision: 5},
		{Key: []byte("/tokend/workers/w1"), Value: []byte(`{"id":"w1","incarnation":"a","udp":"127.0.0.1:7700"}`)},
		{Key: []byte("/tokend/workers/w2"), Value: []byte(`{"id":"w2","incarnation":"b","udp":"127.0.0.1:7701"}`)},
		{Key: []byte("/tokend/delegation/map"), Value: []byte(`{"version":3,"shards":4,"workers":[{"id":"w1","incarnation":"a","ranges":[[0,2,1]]},{"id":"w9","incarnation":"c","ranges":[[2,1,2]]}]}`)},
		{Key: []byte("/tokend/clients/ff"), Value: []byte(`{"session":"ff","addr":"127.0.0.1:5000","library":"go"}`)},
	}
	st, err := buildStatus(kvs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leader == nil || st.Leader.Name != "s1" {
		t.Errorf("leader = %+v, want s1 (created first)", st.Leader)
	}
	if st.MapVersion != 3 || st.Unowned != 2 {
		t.Errorf("map version %d, unowned %d; want 3 and 2 (one never owned, one on a gone worker)", st.MapVersion, st.Unowned)
	}
	if len(st.Workers) != 2 || st.Workers[0].Shards != 2 || !st.Workers[0].Delegated || st.Workers[1].Shards != 0 {
		t.Errorf("workers = %+v", st.Workers)
	}
	if len(st.Sessions) != 1 {
		t.Errorf("sessions = %+v", st.Sessions)
	}
	var out strings.Builder
	printStatus(&out, st)
	for _, want := range []string{"leader    s1", "4 shards", "version 3", "w1", "127.0.0.1:7701", "sessions  1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if _, err := buildStatus([]*mvccpb.KeyValue{{Key: []byte("/tokend/config"), Value: []byte("{")}}); err == nil {
		t.Error("malformed config accepted")
	}
}

func TestCommandEnv(t *testing.T) {
	until := time.UnixMilli(1796290246846)
	env := commandEnv([]string{"PATH=/bin", "TOKEND_FENCE=1", "TOKEND_TOKENX=keep", "TOKEND_VALID_UNTIL_MS=2", "TOKEND_TOKEN=old"}, "foo", 1099511627777, until)
	want := []string{"PATH=/bin", "TOKEND_TOKENX=keep", "TOKEND_TOKEN=foo", "TOKEND_FENCE=1099511627777", "TOKEND_VALID_UNTIL_MS=1796290246846"}
	if strings.Join(env, " ") != strings.Join(want, " ") {
		t.Errorf("commandEnv = %q, want %q", env, want)
	}
}

// TestAcquireUnreachable: seeds that never answer end tokenctl acquire with
// exit 1 and a message naming them, within --wait (or --timeout) plus a
// little, never a hang (issue 17).
func TestAcquireUnreachable(t *testing.T) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0") // bound, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	addr := pc.LocalAddr().String()
	for _, tt := range []struct {
		args  []string
		bound time.Duration
	}{
		{[]string{"--wait", "1500ms"}, 1500 * time.Millisecond},
		{[]string{"--try", "--timeout", "1s"}, time.Second},
		{[]string{"--timeout", "1s"}, time.Second},
		{[]string{"--timeout", "1s", "x", "--", "true"}, time.Second},
	} {
		args := append([]string{"acquire", "--insecure", "--seeds", addr}, tt.args...)
		if !slices.Contains(tt.args, "--") {
			args = append(args, "x")
		}
		var out, errb strings.Builder
		start := time.Now()
		code := run(context.Background(), args, &out, &errb)
		took := time.Since(start)
		if code != exitError || !strings.Contains(errb.String(), addr) {
			t.Errorf("tokenctl %v: exit %d, stderr %q; want exit 1 naming %s", args, code, errb.String(), addr)
		}
		if took > tt.bound+time.Second {
			t.Errorf("tokenctl %v took %v, want at most %v + 1s", args, took, tt.bound)
		}
		t.Logf("tokenctl %v: exit %d in %v: %s", args, code, took.Round(time.Millisecond), strings.TrimSpace(errb.String()))
	}
}
