package proc

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/delegation"
)

// View is the cluster as etcd shows it: the delegation map and the
// registered workers. Launchers read it to wait until their worker
// processes are balanced.
type View struct {
	Map     delegation.Map
	Workers map[string]cluster.Worker // by id
}

// ReadView reads the map and the registered workers (two reads).
func ReadView(ctx context.Context, cli *clientv3.Client) (View, error) {
	v := View{Workers: map[string]cluster.Worker{}}
	resp, err := cli.Get(ctx, cluster.DelegationKey)
	if err != nil {
		return View{}, fmt.Errorf("proc: %w", err)
	}
	if len(resp.Kvs) > 0 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &v.Map); err != nil {
			return View{}, fmt.Errorf("proc: %s: %w", cluster.DelegationKey, err)
		}
	}
	resp, err = cli.Get(ctx, cluster.WorkersPrefix, clientv3.WithPrefix())
	if err != nil {
		return View{}, fmt.Errorf("proc: %w", err)
	}
	for _, kv := range resp.Kvs {
		var w cluster.Worker
		if json.Unmarshal(kv.Value, &w) == nil {
			v.Workers[w.ID] = w
		}
	}
	return v, nil
}

// Live reports whether o is a registered incarnation.
func (v View) Live(o delegation.Owner) bool {
	w, ok := v.Workers[o.ID]
	return ok && w.Incarnation == strconv.FormatUint(o.Incarnation, 16)
}

// ShardsOf returns the shards the map gives to worker id, with their epochs.
func (v View) ShardsOf(id string) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for s := range v.Map.Shards() {
		if o, e, ok := v.Map.Lookup(s); ok && o.ID == id {
			out[uint32(s)] = e
		}
	}
	return out
}

// Balanced reports whether the map has shards, every one owned by a live
// incarnation, and every worker in ids owns at least one.
func (v View) Balanced(ids ...string) bool {
	if v.Map.Shards() == 0 {
		return false
	}
	owns := map[string]int{}
	for s := range v.Map.Shards() {
		o, _, ok := v.Map.Lookup(s)
		if !ok || !v.Live(o) {
			return false
		}
		owns[o.ID]++
	}
	for _, id := range ids {
		if owns[id] == 0 {
			return false
		}
	}
	return true
}

// WaitView reads the view every 20 ms (each read bounded to 2 s) until
// cond holds and returns that view, or, when ctx ends, the last view read
// and an error that says what it showed.
func WaitView(ctx context.Context, cli *clientv3.Client, cond func(View) bool) (View, error) {
	var last View
	var lastErr error
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := ReadView(rctx, cli)
		cancel()
		if err == nil {
			last = v
			if cond(v) {
				return v, nil
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			var ids []string
			for id := range last.Workers {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			return last, fmt.Errorf("proc: %w (map version %d, workers %v, last error %v)", ctx.Err(), last.Map.Version, ids, lastErr)
		case <-t.C:
		}
	}
}
