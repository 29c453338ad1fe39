package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
)

// tokenPath is the worker's describe endpoint (worker.ServeToken).
const tokenPath = "/v1/token"

// holdersInfo is what tokenctl holders prints: the owning worker's answer
// (worker.TokenInfo, decoded here so that tokenctl does not link the
// worker) and where tokenctl found it.
type holdersInfo struct {
	Name        string        `json:"name"`
	NameHex     string        `json:"name_hex"`
	Shard       uint32        `json:"shard"`
	Epoch       uint32        `json:"epoch"`
	Worker      string        `json:"worker"`
	WorkerHTTP  string        `json:"worker_http"`
	MapVersion  uint64        `json:"map_version"`
	Grace       bool          `json:"grace"`
	At          time.Time     `json:"at"`
	HolderCount int           `json:"holder_count"`
	WaiterCount int           `json:"waiter_count"`
	Holders     []holderEntry `json:"holders"`
	Waiters     []waiterEntry `json:"waiters"`
	ValueValid  bool          `json:"value_valid"`
	name        []byte        // the name's bytes, for printing
}

type holderEntry struct {
	Session    string     `json:"session"`
	Client     string     `json:"client,omitempty"`
	Mode       string     `json:"mode"`
	Start      uint64     `json:"start"`
	End        uint64     `json:"end"`
	Fence      uint64     `json:"fence"`
	Converting bool       `json:"converting,omitempty"`
	Since      *time.Time `json:"since,omitempty"`
	HeldMs     int64      `json:"held_ms,omitempty"`
}

type waiterEntry struct {
	Position  int        `json:"position"`
	Session   string     `json:"session"`
	Client    string     `json:"client,omitempty"`
	Request   uint64     `json:"request"`
	Mode      string     `json:"mode"`
	Start     uint64     `json:"start"`
	End       uint64     `json:"end"`
	Converts  uint64     `json:"converts,omitempty"`
	Since     time.Time  `json:"since"`
	WaitingMs int64      `json:"waiting_ms"`
	Deadline  *time.Time `json:"deadline,omitempty"`
}

// owner is where the map says a token's shard is served.
type owner struct {
	shard      uint32
	epoch      uint32
	id         string
	http       string
	mapVersion uint64
}

// cmdHolders asks the worker that owns NAME's shard who holds and who waits
// for it. tokenctl finds that worker in etcd (config, map, registry) and
// asks its HTTP endpoint; token state is never in etcd.
func cmdHolders(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("holders", stderr, "holders [flags] NAME")
	var c common
	c.register(fs, false, true)
	isHex := fs.Bool("hex", false, "NAME is the name's bytes in hex (for names that are not text)")
	limit := fs.Int("limit", 100, "list at most this many holders and waiters (1 to 10000; the counts are always whole)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for etcd and the worker")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("holders: want exactly one token NAME")
	}
	name := []byte(pos[0])
	if *isHex {
		if name, err = hex.DecodeString(pos[0]); err != nil {
			return usageErr("holders: --hex: %v", err)
		}
	}
	if len(name) < 1 || len(name) > wire.MaxName {
		return usageErr("holders: NAME must be 1 to %d bytes", wire.MaxName)
	}
	if *limit < 1 || *limit > 10000 {
		return usageErr("holders: --limit must be 1 to 10000")
	}
	if *timeout <= 0 {
		return usageErr("holders: --timeout must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	info, err := askOwner(ctx, func(ctx context.Context) (owner, error) { return findOwner(ctx, cli, name) },
		&http.Client{}, name, *limit)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, info)
	}
	printHolders(stdout, info)
	return nil
}

// parseInterleaved parses fs's flags wherever they are among the
// positional arguments (tokenctl holders NAME -o json) and returns those.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

// findOwner reads where the map serves name's shard, and that worker's
// HTTP address from its registration.
func findOwner(ctx context.Context, cli *clientv3.Client, name []byte) (owner, error) {
	resp, err := cli.Get(ctx, cluster.ConfigKey)
	if err != nil {
		return owner{}, fmt.Errorf("reading %s: %w", cluster.ConfigKey, err)
	}
	if len(resp.Kvs) == 0 {
		return owner{}, errors.New("no cluster config in etcd: no server has bootstrapped the cluster")
	}
	var cfg cluster.Config
	if err := json.Unmarshal(resp.Kvs[0].Value, &cfg); err != nil || cfg.Shards <= 0 {
		return owner{}, fmt.Errorf("%s: bad config (%v)", cluster.ConfigKey, err)
	}
	m, err := readMap(ctx, cli)
	if err != nil {
		return owner{}, err
	}
	o := owner{shard: wire.Shard(name, uint32(cfg.Shards)), mapVersion: m.Version}
	if m.Shards() != cfg.Shards {
		return o, fmt.Errorf("the map (version %d) has %d shards, the config %d: no leader has written a map for this cluster yet", m.Version, m.Shards(), cfg.Shards)
	}
	do, epoch, ok := m.Lookup(int(o.shard))
	if !ok {
		return o, fmt.Errorf("shard %d has no owner in the map (version %d): no worker serves it now", o.shard, m.Version)
	}
	o.id, o.epoch = do.ID, epoch
	wresp, err := cli.Get(ctx, cluster.WorkerKey(do.ID))
	if err != nil {
		return o, fmt.Errorf("reading %s: %w", cluster.WorkerKey(do.ID), err)
	}
	var doc cluster.Worker
	if len(wresp.Kvs) > 0 {
		json.Unmarshal(wresp.Kvs[0].Value, &doc)
	}
	if inc, err := strconv.ParseUint(doc.Incarnation, 16, 64); err != nil || inc != do.Incarnation {
		return o, fmt.Errorf("shard %d's owner in the map (version %d), worker %s incarnation %x, is not registered: it is gone and the shard awaits a new owner",
			o.shard, m.Version, do.ID, do.Incarnation)
	}
	if doc.HTTP == "" {
		return o, fmt.Errorf("worker %s serves shard %d but registered no HTTP address (run it with --advertise-http-addr, or an --http-addr others can reach)", do.ID, o.shard)
	}
	o.http = doc.HTTP
	return o, nil
}

// askOwner asks the owner that locate finds for name's holders. If the
// worker cannot be reached, no longer owns the shard (the map moved) or
// cannot answer now, it reads the map again and asks once more.
func askOwner(ctx context.Context, locate func(context.Context) (owner, error), hc *http.Client, name []byte, limit int) (*holdersInfo, error) {
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, last
			case <-time.After(200 * time.Millisecond): // a handoff or a map change settles
			}
		}
		o, err := locate(ctx)
		if err != nil {
			return nil, err
		}
		info, retry, err := fetchToken(ctx, hc, o, name, limit)
		if err == nil {
			return info, nil
		}
		if !retry {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("%w (asked twice, re-reading the map in between)", last)
}

// fetchToken GETs the token from o. retry says that another look at the
// map may help.
func fetchToken(ctx context.Context, hc *http.Client, o owner, name []byte, limit int) (_ *holdersInfo, retry bool, _ error) {
	u := (&url.URL{Scheme: "http", Host: o.http, Path: tokenPath,
		RawQuery: url.Values{"name": {string(name)}, "limit": {strconv.Itoa(limit)}}.Encode()}).String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	where := fmt.Sprintf("worker %s (shard %d's owner in map version %d) at http://%s", o.id, o.shard, o.mapVersion, o.http)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, true, fmt.Errorf("%s cannot be reached: %w", where, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, true, fmt.Errorf("%s: reading the answer: %w", where, err)
	}
	msg := strings.TrimSpace(string(body))
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusMisdirectedRequest:
		return nil, true, fmt.Errorf("%s no longer owns the shard (the map moved): %s", where, msg)
	case http.StatusServiceUnavailable:
		return nil, true, fmt.Errorf("%s cannot answer now: %s", where, msg)
	case http.StatusNotFound:
		return nil, false, fmt.Errorf("%s has no %s endpoint: is it an older tokend? (%s)", where, tokenPath, resp.Status)
	default:
		return nil, false, fmt.Errorf("%s: %s: %s", where, resp.Status, msg)
	}
	var info holdersInfo
	if err := json.Unmarshal(body, &info); err != nil {
		return nil, false, fmt.Errorf("%s: bad answer: %w", where, err)
	}
	info.WorkerHTTP, info.MapVersion, info.name = o.http, o.mapVersion, name
	return &info, false, nil
}

func printHolders(w io.Writer, info *holdersInfo) {
	fmt.Fprintf(w, "token %q: shard %d, epoch %d, worker %s (http %s), as of %s\n",
		info.name, info.Shard, info.Epoch, info.Worker, info.WorkerHTTP, info.At.Format(time.RFC3339Nano))
	if info.Grace {
		fmt.Fprintln(w, "note: the shard is in its grace period after a crash: holders may still be reclaiming their grants")
	}
	if info.HolderCount == 0 && info.WaiterCount == 0 {
		fmt.Fprintln(w, "nobody holds or waits for it")
		return
	}
	shown := func(n, of int, what string) string {
		if n == of {
			return ""
		}
		return fmt.Sprintf(" (%d %s shown; --limit)", n, what)
	}
	fmt.Fprintf(w, "holders   %d%s\n", info.HolderCount, shown(len(info.Holders), info.HolderCount, "oldest"))
	if len(info.Holders) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  MODE\tRANGE\tFENCE\tSESSION\tCLIENT\tHELD\t")
		for _, h := range info.Holders {
			conv := ""
			if h.Converting {
				conv = "converting"
			}
			held := "-" // handed over from another worker: not known
			if h.Since != nil {
				held = (time.Duration(h.HeldMs) * time.Millisecond).String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d (%d:%d)\t%s\t%s\t%s\t%s\n", h.Mode, rangeString(h.Start, h.End), h.Fence,
				wire.FenceEpoch(h.Fence), wire.FenceSeq(h.Fence), h.Session, orDash(h.Client), held, conv)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "waiters   %d%s\n", info.WaiterCount, shown(len(info.Waiters), info.WaiterCount, "first"))
	if len(info.Waiters) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "  #\tMODE\tRANGE\tSESSION\tCLIENT\tREQUEST\tWAITING\tTIMES OUT\t")
		for _, q := range info.Waiters {
			until := "never"
			if q.Deadline != nil {
				until = "in " + q.Deadline.Sub(info.At).Round(time.Millisecond).String()
			}
			conv := ""
			if q.Converts != 0 {
				conv = fmt.Sprintf("converts fence %d", q.Converts)
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%d\t%v\t%s\t%s\n", q.Position, q.Mode, rangeString(q.Start, q.End),
				q.Session, orDash(q.Client), q.Request, (time.Duration(q.WaitingMs) * time.Millisecond).String(), until, conv)
		}
		tw.Flush()
	}
}
