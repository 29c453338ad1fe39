package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
)

// status is the whole cluster as tokenctl status shows it.
type status struct {
	Leader     *cluster.Leader  `json:"leader"`
	Config     *cluster.Config  `json:"config"`
	MapVersion uint64           `json:"map_version"`
	Unowned    int              `json:"unowned_shards"`
	Workers    []workerStatus   `json:"workers"`
	Sessions   []cluster.Client `json:"sessions"`
}

type workerStatus struct {
	cluster.Worker
	Shards    int    `json:"shards"`
	MaxEpoch  uint32 `json:"max_epoch"`
	Delegated bool   `json:"delegated"` // the map names this incarnation
}

// cmdStatus reads the control state from etcd. It is an operator's tool:
// token clients never talk to etcd, but a person asking "who serves what"
// should get the answer from the source of truth.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr, "status [flags]")
	var c common
	c.register(fs, false, true)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for etcd")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErr("status: unexpected argument %q", fs.Arg(0))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, cluster.Prefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("reading %s from etcd at %s: %w", cluster.Prefix, c.etcd, err)
	}
	st, err := buildStatus(resp.Kvs)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, st)
	}
	printStatus(stdout, st)
	return nil
}

type kv interface {
	GetKey() []byte
	GetValue() []byte
	GetCreateRevision() int64
}

func buildStatus[K kv](kvs []K) (*status, error) {
	st := &status{}
	var m delegation.Map
	var leaderRev int64
	drains := map[string]bool{}
	for _, kv := range kvs {
		key, val := string(kv.GetKey()), kv.GetValue()
		switch {
		case key == cluster.ConfigKey:
			var c cluster.Config
			if err := json.Unmarshal(val, &c); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			st.Config = &c
		case key == cluster.DelegationKey:
			if err := json.Unmarshal(val, &m); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			st.MapVersion = m.Version
		case strings.HasPrefix(key, cluster.LeaderPrefix):
			// The leader is the key created first.
			if st.Leader == nil || kv.GetCreateRevision() < leaderRev {
				var l cluster.Leader
				if json.Unmarshal(val, &l) == nil {
					st.Leader, leaderRev = &l, kv.GetCreateRevision()
				}
			}
		case strings.HasPrefix(key, cluster.WorkersPrefix):
			var w cluster.Worker
			if json.Unmarshal(val, &w) == nil {
				st.Workers = append(st.Workers, workerStatus{Worker: w})
			}
		case strings.HasPrefix(key, cluster.DrainPrefix):
			drains[strings.TrimPrefix(key, cluster.DrainPrefix)] = true
		case strings.HasPrefix(key, cluster.ClientsPrefix):
			var cl cluster.Client
			if json.Unmarshal(val, &cl) == nil {
				st.Sessions = append(st.Sessions, cl)
			}
		}
	}
	for i := range st.Workers {
		// An operator's drain mark counts like the worker's own.
		st.Workers[i].Draining = st.Workers[i].Draining || drains[st.Workers[i].ID]
	}
	for s := 0; s < m.Shards(); s++ {
		o, epoch, ok := m.Lookup(s)
		if !ok {
			st.Unowned++
			continue
		}
		found := false
		for i := range st.Workers {
			w := &st.Workers[i]
			inc, err := strconv.ParseUint(w.Incarnation, 16, 64)
			if err == nil && w.ID == o.ID && inc == o.Incarnation {
				w.Shards++
				w.MaxEpoch = max(w.MaxEpoch, epoch)
				w.Delegated = true
				found = true
			}
		}
		if !found {
			st.Unowned++ // delegated to a worker that is gone: awaiting recovery
		}
	}
	sort.Slice(st.Workers, func(i, j int) bool { return st.Workers[i].ID < st.Workers[j].ID })
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].Session < st.Sessions[j].Session })
	return st, nil
}

func printStatus(w io.Writer, st *status) {
	if st.Leader != nil {
		fmt.Fprintf(w, "leader    %s (http %s, since %s)\n", st.Leader.Name, orDash(st.Leader.HTTP), st.Leader.Since)
	} else {
		fmt.Fprintln(w, "leader    none")
	}
	if st.Config != nil {
		fmt.Fprintf(w, "config    %d shards, session ttl %v, grace %v\n", st.Config.Shards, st.Config.SessionTTL(), st.Config.Grace())
	} else {
		fmt.Fprintln(w, "config    none (no server has bootstrapped the cluster)")
	}
	fmt.Fprintf(w, "map       version %d, %d shards without a live owner\n", st.MapVersion, st.Unowned)
	fmt.Fprintf(w, "workers   %d\n", len(st.Workers))
	if len(st.Workers) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  ID\tUDP\tHTTP\tHANDOFF\tINCARNATION\tSHARDS\tMAX EPOCH\tDRAINING\tVERSION")
		for _, wk := range st.Workers {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%d\t%d\t%v\t%s\n", wk.ID, wk.UDP, orDash(wk.HTTP), orDash(wk.Handoff), wk.Incarnation, wk.Shards, wk.MaxEpoch, wk.Draining, wk.Version)
		}
		tw.Flush()
		for _, wk := range st.Workers {
			if host, _, err := net.SplitHostPort(wk.UDP); err != nil || host == "" || net.ParseIP(host).IsUnspecified() {
				fmt.Fprintf(w, "  warning: %s registered %q: clients cannot reach it (run it with --advertise-udp-addr, or a tokend that derives one)\n", wk.ID, wk.UDP)
			}
		}
	}
	fmt.Fprintf(w, "sessions  %d\n", len(st.Sessions))
	if len(st.Sessions) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  SESSION\tADDR\tLIBRARY\tWORKER\tSINCE")
		for _, s := range st.Sessions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", s.Session, s.Addr, s.Library, s.Worker, s.Since)
		}
		tw.Flush()
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
