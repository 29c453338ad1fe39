package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/embedded/etcdtest"
)

// describeServer answers /v1/token with status and body, counting calls.
func describeServer(t *testing.T, status int, body string, calls *int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		*calls++
		if r.URL.Path != tokenPath || r.URL.Query().Get("name") != "a b/\xff" || r.URL.Query().Get("limit") != "7" {
			http.Error(w, "bad request "+r.URL.String(), http.StatusBadRequest)
			return
		}
		if status != http.StatusOK {
			http.Error(w, body, status)
			return
		}
		w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// askOwner re-reads the map and asks once more when the worker has lost the
// shard, cannot be reached or cannot answer now; it gives up after the
// second try with the reason, and at once on other errors.
func TestAskOwnerRetry(t *testing.T) {
	name := []byte("a b/\xff")
	var movedCalls, newCalls, goneCalls int
	moved := describeServer(t, http.StatusMisdirectedRequest, "shard 3 not served by worker w1", &movedCalls)
	newOwner := describeServer(t, http.StatusOK, `{"name":"a b/\ufffd","worker":"w2","holder_count":1,"holders":[{"session":"ab","mode":"EX","start":0,"end":18446744073709551615,"fence":5}]}`, &newCalls)
	old := describeServer(t, http.StatusNotFound, "404 page not found", &goneCalls)
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	hostOf := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seq := func(addrs ...string) (func(context.Context) (owner, error), *int) {
		n := 0
		return func(context.Context) (owner, error) {
			a := addrs[min(n, len(addrs)-1)]
			n++
			return owner{shard: 3, id: "w" + a[len(a)-1:], http: a, mapVersion: uint64(n)}, nil
		}, &n
	}

	// The map moved between the read and the ask: the second read finds w2.
	locate, reads := seq(hostOf(moved), hostOf(newOwner))
	info, err := askOwner(ctx, locate, http.DefaultClient, name, 7)
	if err != nil || info.Worker != "w2" || info.HolderCount != 1 || info.MapVersion != 2 || *reads != 2 || movedCalls != 1 || newCalls != 1 {
		t.Fatalf("after a move: %+v, %v (reads %d)", info, err, *reads)
	}
	for _, tt := range []struct {
		addrs []string
		reads int
		want  []string
	}{
		{[]string{hostOf(moved)}, 2, []string{"no longer owns the shard (the map moved)", "not served by worker w1", "asked twice"}},
		{[]string{deadAddr}, 2, []string{"cannot be reached", deadAddr, "asked twice"}},
		{[]string{hostOf(old)}, 1, []string{"has no /v1/token endpoint"}},
	} {
		locate, reads := seq(tt.addrs...)
		_, err := askOwner(ctx, locate, http.DefaultClient, name, 7)
		for _, want := range tt.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%v: error %v, want %q", tt.addrs, err, want)
			}
		}
		if *reads != tt.reads {
			t.Errorf("%v: map read %d times, want %d", tt.addrs, *reads, tt.reads)
		}
	}
	boom := errors.New("no cluster config")
	if _, err := askOwner(ctx, func(context.Context) (owner, error) { return owner{}, boom }, http.DefaultClient, name, 7); !errors.Is(err, boom) {
		t.Errorf("locate error: %v", err)
	}
}

// holders says clearly why it cannot ask anyone: no config, no owner in
// the map, an owner that is gone, or one that registered no HTTP address.
func TestHoldersNoOwner(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	etcd := []string{"--etcd", strings.Join(cli.Endpoints(), ","), "--insecure"}
	ctx := context.Background()
	put := func(key string, v any) {
		t.Helper()
		b, _ := json.Marshal(v)
		if _, err := cli.Put(ctx, key, string(b)); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want string) {
		t.Helper()
		out, code := tokenctl(t, append([]string{"holders", "x"}, etcd...)...)
		if code != exitError || !strings.Contains(out, want) {
			t.Errorf("holders: exit %d, %q; want 1 and %q", code, out, want)
		}
	}
	check("no cluster config")
	put(cluster.ConfigKey, cluster.Config{Shards: 4})
	check("the map (version 0) has 0 shards, the config 4")
	w := delegation.Owner{ID: "w1", Incarnation: 0x1f}
	m, err := delegation.FromRuns(3, 4, []delegation.Owner{w}, []delegation.Run{{First: 0, Count: 4, Owner: 0, Epoch: 1}})
	if err != nil {
		t.Fatal(err)
	}
	put(cluster.DelegationKey, m)
	check("worker w1 incarnation 1f, is not registered")
	put(cluster.WorkerKey("w1"), cluster.Worker{ID: "w1", Incarnation: "1f", UDP: "127.0.0.1:7700"})
	check("registered no HTTP address")
	m, _ = delegation.FromRuns(4, 4, nil, []delegation.Run{{First: 0, Count: 4, Owner: -1}})
	put(cluster.DelegationKey, m)
	check("has no owner in the map (version 4)")
}

func TestOpsUsage(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"holders"}, "want exactly one token NAME"},
		{[]string{"holders", "a", "b"}, "want exactly one token NAME"},
		{[]string{"holders", "--hex", "zz"}, "--hex"},
		{[]string{"holders", strings.Repeat("n", 256)}, "1 to 255 bytes"},
		{[]string{"holders", "--limit", "0", "x"}, "--limit"},
		{[]string{"holders", "x", "-o", "yaml"}, "-o"},
		{[]string{"sessions", "extra"}, "unexpected argument"},
		{[]string{"evict"}, "want exactly one SESSION"},
		{[]string{"evict", "not-hex"}, "not a session id"},
		{[]string{"evict", "0"}, "not a session id"},
	} {
		out, code := tokenctl(t, tt.args...)
		if code != exitUsage || !strings.Contains(out, tt.want) {
			t.Errorf("tokenctl %q: exit %d, %q; want %d and %q", tt.args, code, out, exitUsage, tt.want)
		}
	}
}

func TestPrintSessions(t *testing.T) {
	var b strings.Builder
	printSessions(&b, nil, time.Now())
	if b.String() != "0 sessions\n" {
		t.Errorf("no sessions: %q", b.String())
	}
	if cmpSession("ff", "100") >= 0 || cmpSession("zz", "1") <= 0 || cmpSession("a", "a") != 0 {
		t.Error("cmpSession does not order ids as numbers")
	}
}
