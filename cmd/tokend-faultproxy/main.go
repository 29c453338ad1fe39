// Command tokend-faultproxy runs the seeded UDP fault proxy of package
// faultnet/proxy (and optional TCP stall relays) as a process, for tests and
// demos that run real tokend processes and clients in other languages.
//
//	tokend-faultproxy -upstream 127.0.0.1:7700,127.0.0.1:7701 -control 127.0.0.1:7790 -seed 42
//	tokend-faultproxy -tcp 127.0.0.1:23790=127.0.0.1:2379 ...
//
// It prints one line per frontend ("frontend <worker> <frontend>") and per
// TCP relay ("tcp <listen> <upstream>") on stdout, then serves HTTP on
// -control:
//
//	GET  /frontends                 JSON {worker: frontend}
//	GET  /stats                     JSON counts
//	POST /rule?client=&upstream=&dir=up|down|both&drop=0.2&dup=0.05&min_delay=0s&max_delay=50ms&cut=1&flap_up=1s&flap_down=1s
//	POST /clear                     remove every rule
//	POST /tcp?listen=ADDR&cut=none|up|down|both[&reset=1]
//
// Clients are given the frontends as seeds; see the package documentation
// of faultnet/proxy for why that is enough. SIGINT or SIGTERM stops it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/testkit/faultnet/proxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tokend-faultproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	upstreams := fs.String("upstream", "", "comma-separated worker UDP addresses to open frontends for")
	host := fs.String("host", "127.0.0.1", "address the proxy's sockets bind on")
	control := fs.String("control", "127.0.0.1:0", "host:port of the HTTP control endpoint")
	seed := fs.Uint64("seed", 1, "seed of the fault decisions")
	tcps := fs.String("tcp", "", "comma-separated TCP relays listen=upstream (e.g. etcd client URLs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var ups []string
	if *upstreams != "" {
		ups = strings.Split(*upstreams, ",")
	}
	p, err := proxy.New(proxy.Config{Host: *host, Upstreams: ups, Seed: *seed})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	defer p.Close()
	relays := map[string]*proxy.TCP{}
	defer func() {
		for _, r := range relays {
			r.Close()
		}
	}()
	if *tcps != "" {
		for _, spec := range strings.Split(*tcps, ",") {
			listen, up, ok := strings.Cut(spec, "=")
			if !ok {
				fmt.Fprintf(stderr, "-tcp %q: want listen=upstream\n", spec)
				return 2
			}
			r, err := proxy.NewTCP(listen, up)
			if err != nil {
				fmt.Fprintln(stderr, err)
				return 1
			}
			relays[r.Addr()] = r
			fmt.Fprintf(stdout, "tcp %s %s\n", r.Addr(), up)
		}
	}
	for w, f := range p.Frontends() {
		fmt.Fprintf(stdout, "frontend %s %s\n", w, f)
	}
	ln, err := net.Listen("tcp", *control)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "control %s\n", ln.Addr())
	srv := &http.Server{Handler: handler(p, relays), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		fmt.Fprintln(stderr, err)
		return 1
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return 0
}

func handler(p *proxy.Proxy, relays map[string]*proxy.TCP) http.Handler {
	mux := http.NewServeMux()
	writeJSON := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /frontends", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, p.Frontends()) })
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, p.Stats()) })
	mux.HandleFunc("POST /clear", func(w http.ResponseWriter, r *http.Request) { p.Clear() })
	mux.HandleFunc("POST /rule", func(w http.ResponseWriter, r *http.Request) {
		rule, dir, err := parseRule(r)
		if err == nil {
			err = p.SetRule(r.FormValue("client"), r.FormValue("upstream"), dir, rule)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("POST /tcp", func(w http.ResponseWriter, r *http.Request) {
		rl := relays[r.FormValue("listen")]
		if rl == nil {
			http.Error(w, "no such relay", http.StatusNotFound)
			return
		}
		dir, err := parseDir(r.FormValue("cut"), 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rl.SetCut(dir)
		if r.FormValue("reset") == "1" {
			rl.Reset()
		}
	})
	return mux
}

func parseDir(s string, def proxy.Dir) (proxy.Dir, error) {
	switch s {
	case "":
		return def, nil
	case "none":
		return 0, nil
	case "up":
		return proxy.Up, nil
	case "down":
		return proxy.Down, nil
	case "both":
		return proxy.Both, nil
	}
	return 0, fmt.Errorf("direction %q: want none, up, down or both", s)
}

func parseRule(r *http.Request) (proxy.Rule, proxy.Dir, error) {
	var rule proxy.Rule
	dir, err := parseDir(r.FormValue("dir"), proxy.Both)
	if err != nil {
		return rule, 0, err
	}
	var errs []error
	prob := func(k string) float64 {
		v := r.FormValue(k)
		if v == "" {
			return 0
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 {
			errs = append(errs, fmt.Errorf("%s=%q: want a probability", k, v))
		}
		return f
	}
	dur := func(k string) time.Duration {
		v := r.FormValue(k)
		if v == "" {
			return 0
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a duration", k, v))
		}
		return d
	}
	rule.Drop, rule.Duplicate = prob("drop"), prob("dup")
	rule.MinDelay, rule.MaxDelay = dur("min_delay"), dur("max_delay")
	rule.FlapUp, rule.FlapDown = dur("flap_up"), dur("flap_down")
	rule.Cut = r.FormValue("cut") == "1" || r.FormValue("cut") == "true"
	return rule, dir, errors.Join(errs...)
}
