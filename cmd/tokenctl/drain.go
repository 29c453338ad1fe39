package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
)

// drainResult is what tokenctl drain reports.
type drainResult struct {
	Worker     string `json:"worker"`
	Registered bool   `json:"registered"`        // a live registration exists under that id
	Before     int    `json:"shards_before"`     // shards the map gave it when the drain was asked
	Shards     int    `json:"shards"`            // shards the map gives it now
	MapVersion uint64 `json:"map_version"`       // the map read last
	Waited     bool   `json:"waited"`            // --wait
	TookMs     int64  `json:"took_ms,omitempty"` // until it owned no shard
}

// cmdDrain marks a worker draining (/tokend/drain/<id>): the leader moves
// its shards to the other workers by planned handoffs. The mark stays until
// "tokenctl undrain", whatever incarnation registers under the id.
func cmdDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drain", stderr, "drain [flags] WORKER-ID")
	var c common
	c.register(fs, false, true)
	wait := fs.Bool("wait", true, "wait until the map gives the worker no shard")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait (etcd and the drain)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return usageErr("drain: want exactly one worker id")
	}
	id := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()

	res := drainResult{Worker: id, Waited: *wait}
	m, err := readMap(ctx, cli)
	if err != nil {
		return err
	}
	res.Before, res.MapVersion = ownedBy(m, id), m.Version
	g, err := cli.Get(ctx, cluster.WorkerKey(id))
	if err != nil {
		return fmt.Errorf("reading %s: %w", cluster.WorkerKey(id), err)
	}
	res.Registered = len(g.Kvs) > 0
	host, _ := os.Hostname()
	doc, _ := json.Marshal(cluster.Drain{ID: id, Since: cluster.Now(time.Now()), By: "tokenctl@" + host})
	if _, err := cli.Put(ctx, cluster.DrainKey(id), string(doc)); err != nil {
		return fmt.Errorf("writing %s: %w", cluster.DrainKey(id), err)
	}
	start := time.Now()
	res.Shards = res.Before
	for *wait && res.Shards > 0 {
		select {
		case <-ctx.Done():
			report(stdout, c.output, res)
			return exitError_{exitError, fmt.Sprintf("drain %s: still %d shards after %v (is a leader running? are other workers live?)",
				id, res.Shards, time.Since(start).Round(time.Millisecond))}
		case <-time.After(100 * time.Millisecond):
		}
		if m, err = readMap(ctx, cli); err == nil {
			res.Shards, res.MapVersion = ownedBy(m, id), m.Version
		}
	}
	if *wait {
		res.TookMs = time.Since(start).Milliseconds()
	}
	report(stdout, c.output, res)
	return nil
}

func report(w io.Writer, output string, res drainResult) {
	if output == "json" {
		printJSON(w, res)
		return
	}
	reg := ""
	if !res.Registered {
		reg = " (not registered now; the mark applies when it registers)"
	}
	switch {
	case !res.Waited:
		fmt.Fprintf(w, "worker %s marked draining%s; it owns %d shards (map version %d)\n", res.Worker, reg, res.Shards, res.MapVersion)
	case res.Shards == 0:
		fmt.Fprintf(w, "worker %s drained%s: %d shards moved away in %v (map version %d); stop it with SIGTERM, or \"tokenctl undrain %s\"\n",
			res.Worker, reg, res.Before, time.Duration(res.TookMs)*time.Millisecond, res.MapVersion, res.Worker)
	default:
		fmt.Fprintf(w, "worker %s marked draining%s; it still owns %d shards (map version %d)\n", res.Worker, reg, res.Shards, res.MapVersion)
	}
}

// cmdUndrain removes a worker's drain mark: the leader may give it shards
// again.
func cmdUndrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("undrain", stderr, "undrain [flags] WORKER-ID")
	var c common
	c.register(fs, false, true)
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for etcd")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return usageErr("undrain: want exactly one worker id")
	}
	id := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	resp, err := cli.Delete(ctx, cluster.DrainKey(id))
	if err != nil {
		return fmt.Errorf("deleting %s: %w", cluster.DrainKey(id), err)
	}
	if c.output == "json" {
		return printJSON(stdout, map[string]any{"worker": id, "was_draining": resp.Deleted > 0})
	}
	if resp.Deleted == 0 {
		fmt.Fprintf(stdout, "worker %s was not marked draining by an operator\n", id)
	} else {
		fmt.Fprintf(stdout, "worker %s no longer draining; the leader may give it shards again\n", id)
	}
	return nil
}

// readMap reads the delegation map (the zero Map if there is none).
func readMap(ctx context.Context, cli *clientv3.Client) (delegation.Map, error) {
	resp, err := cli.Get(ctx, cluster.DelegationKey)
	if err != nil {
		return delegation.Map{}, fmt.Errorf("reading %s: %w", cluster.DelegationKey, err)
	}
	var m delegation.Map
	if len(resp.Kvs) == 0 {
		return m, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return delegation.Map{}, fmt.Errorf("%s: %w", cluster.DelegationKey, err)
	}
	return m, nil
}

// ownedBy counts the shards m gives to any incarnation of worker id.
func ownedBy(m delegation.Map, id string) int {
	n := 0
	for s := range m.Owner {
		if o, _, ok := m.Lookup(s); ok && o.ID == id {
			n++
		}
	}
	return n
}
