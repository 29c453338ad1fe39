package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// tokenctl health is a container's health check: 0 only on 200 OK, 1 on
// any other status or no answer, with the endpoint's own reason.
func TestHealth(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || !ready.Load() {
			http.Error(w, "coordinator not started", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	}))
	defer srv.Close()
	hostport := strings.TrimPrefix(srv.URL, "http://")

	check := func(wantCode int, wantOut, wantErr string, args ...string) {
		t.Helper()
		var out, errOut strings.Builder
		code := run(context.Background(), append([]string{"health"}, args...), &out, &errOut)
		if code != wantCode || !strings.Contains(out.String(), wantOut) || !strings.Contains(errOut.String(), wantErr) {
			t.Errorf("health %v: exit %d, stdout %q, stderr %q; want %d, %q, %q", args, code, out.String(), errOut.String(), wantCode, wantOut, wantErr)
		}
	}
	check(exitOK, "/readyz: ok", "", hostport)
	check(exitOK, "", "", "-q", srv.URL+"/readyz")
	check(exitError, "", "coordinator not started", srv.URL+"/other")
	ready.Store(false)
	check(exitError, "", "503", hostport)
	srv.Close()
	check(exitError, "", "health http://"+hostport+"/readyz", hostport)
	check(exitUsage, "", "at most one URL", "a", "b")
	check(exitUsage, "", "--timeout", "--timeout", "0", hostport)
}
