package worker

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
)

// TestServeToken: the worker's describe endpoint lists one token's holder
// (EX on a range) and its two waiters in line, with sessions, client
// addresses and how long each has waited; a token nobody holds is an empty
// answer; a shard served elsewhere is 421; bad requests are 400.
func TestServeToken(t *testing.T) {
	cli := testEtcd(t)
	w, _ := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	srv := httptest.NewServer(http.HandlerFunc(w.ServeToken))
	defer srv.Close()
	get := func(query string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v1/token?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	describe := func(query string) TokenInfo {
		t.Helper()
		code, body := get(query)
		if code != http.StatusOK {
			t.Fatalf("GET ?%s: %d %s", query, code, body)
		}
		var info TokenInfo
		if err := json.Unmarshal([]byte(body), &info); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		return info
	}

	name := "a token/with spaces&odd=bytes\xff"
	a, b, c := udpClient(t, w), udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	c.open(0)
	ga := a.acquireRange(name, wire.EX, 0, 4096)
	wantStatus(t, ga, wire.StatusOK)
	wantStatus(t, b.do(wire.Acquire{Mode: wire.PR, WaitMs: wire.WaitForever, Start: 0, End: 100, Name: []byte(name)}, b.shard(name)), wire.StatusQueued)
	wantStatus(t, c.do(wire.Acquire{Mode: wire.EX, WaitMs: 60000, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}, c.shard(name)), wire.StatusQueued)

	info := describe("name=" + url.QueryEscape(name))
	if info.Name != strings.ToValidUTF8(name, "\uFFFD") || info.NameHex == "" || info.Worker != "w1" || info.Shard != a.shard(name) || info.Epoch != 1 ||
		info.HolderCount != 1 || info.WaiterCount != 2 || len(info.Holders) != 1 || len(info.Waiters) != 2 {
		t.Fatalf("describe: %+v", info)
	}
	h := info.Holders[0]
	if h.Session != cluster.SessionString(a.session) || h.Mode != "EX" || h.Start != 0 || h.End != 4096 || h.Fence != ga.grant(t).Fence || h.Client == "" {
		t.Errorf("holder %+v", h)
	}
	w1, w2 := info.Waiters[0], info.Waiters[1]
	if w1.Position != 1 || w1.Session != cluster.SessionString(b.session) || w1.Mode != "PR" || w1.End != 100 || w1.Deadline != nil || w1.Since.IsZero() || w1.Since.After(info.At) ||
		w2.Position != 2 || w2.Session != cluster.SessionString(c.session) || w2.Mode != "EX" || w2.Deadline == nil || !w2.Deadline.After(info.At) {
		t.Errorf("waiters %+v", info.Waiters)
	}
	if again := describe("hex=" + info.NameHex + "&limit=1"); again.WaiterCount != 2 || len(again.Waiters) != 1 || again.Waiters[0].Session != w1.Session {
		t.Errorf("by hex, limit 1: %+v", again)
	}

	// Nobody holds it: an empty answer, not an error.
	if none := describe("name=nobody"); none.HolderCount != 0 || none.WaiterCount != 0 || len(none.Holders) != 0 {
		t.Errorf("unheld token: %+v", none)
	}

	for _, tt := range []struct {
		query string
		code  int
		want  string
	}{
		{"", http.StatusBadRequest, "1 to 255 bytes"},
		{"name=" + strings.Repeat("n", 256), http.StatusBadRequest, "1 to 255 bytes"},
		{"hex=zz", http.StatusBadRequest, "hex"},
		{"name=x&hex=78", http.StatusBadRequest, "not both"},
		{"name=x&limit=0", http.StatusBadRequest, "limit"},
	} {
		if code, body := get(tt.query); code != tt.code || !strings.Contains(body, tt.want) {
			t.Errorf("GET ?%s: %d %q, want %d %q", tt.query, code, body, tt.code, tt.want)
		}
	}

	// The map moves the token's shard to another worker: 421, naming it.
	other := delegation.Owner{ID: "w9", Incarnation: 9}
	shard := a.shard(name)
	var runs []delegation.Run
	if shard > 0 {
		runs = append(runs, delegation.Run{First: 0, Count: shard, Owner: 0, Epoch: 1})
	}
	runs = append(runs, delegation.Run{First: shard, Count: 1, Owner: 1, Epoch: 2})
	if shard+1 < testShards {
		runs = append(runs, delegation.Run{First: shard + 1, Count: testShards - shard - 1, Owner: 0, Epoch: 1})
	}
	putMap(t, cli, 2, []delegation.Owner{w.testOwner(), other}, runs)
	waitFor(t, "the shard is given up", func() bool {
		code, _ := get("name=" + url.QueryEscape(name))
		return code == http.StatusMisdirectedRequest
	})
	if code, body := get("name=" + url.QueryEscape(name)); code != http.StatusMisdirectedRequest || !strings.Contains(body, "w9") {
		t.Errorf("moved shard: %d %q", code, body)
	}
	// A worker that cannot vouch for its lease answers nothing about tokens
	// (invariant 5); a renewal may restore it between the two steps, so try
	// a few times.
	unavailable := false
	for i := 0; i < 5 && !unavailable; i++ {
		w.mu.Lock()
		w.lease.pretendExpired()
		w.mu.Unlock()
		code, body := get("name=nobody")
		unavailable = code == http.StatusServiceUnavailable && strings.Contains(body, "cannot vouch")
	}
	if !unavailable {
		t.Error("a worker that cannot vouch for its lease describes tokens")
	}
	resp, err := http.Post(srv.URL+"/v1/token?name=x", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}
