package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
)

// sessionsResult is what tokenctl sessions prints.
type sessionsResult struct {
	Count    int           `json:"count"`
	Sessions []sessionInfo `json:"sessions"` // by session id
}

// sessionInfo is one live client session: its /tokend/clients document
// and the etcd lease the key lives on.
type sessionInfo struct {
	cluster.Client
	Lease string `json:"lease"` // hex: the etcd lease the document lives on (not the session id)
}

// cmdSessions lists the live client sessions from etcd: the keys under
// /tokend/clients/, each on its session's lease.
func cmdSessions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sessions", stderr, "sessions [flags]")
	var c common
	c.register(fs, false, true)
	worker := fs.String("worker", "", "only the sessions that worker ID opened")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for etcd")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageErr("sessions: unexpected argument %q", pos[0])
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, *timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	ss, err := readSessions(ctx, cli)
	if err != nil {
		return err
	}
	if *worker != "" {
		ss = slices.DeleteFunc(ss, func(s sessionInfo) bool { return s.Worker != *worker })
	}
	res := sessionsResult{Count: len(ss), Sessions: ss}
	if res.Sessions == nil {
		res.Sessions = []sessionInfo{}
	}
	if c.output == "json" {
		return printJSON(stdout, res)
	}
	printSessions(stdout, ss, time.Now())
	return nil
}

// readSessions reads every live session, sorted by session id.
func readSessions(ctx context.Context, cli *clientv3.Client) ([]sessionInfo, error) {
	resp, err := cli.Get(ctx, cluster.ClientsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading %s from etcd: %w", cluster.ClientsPrefix, err)
	}
	var out []sessionInfo
	for _, kv := range resp.Kvs {
		s, ok := sessionOf(kv.Key, kv.Value, kv.Lease)
		if ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b sessionInfo) int { return cmpSession(a.Session, b.Session) })
	return out, nil
}

// sessionOf decodes one /tokend/clients key; a document without its
// session id takes it from the key.
func sessionOf(key, val []byte, lease int64) (sessionInfo, bool) {
	var s sessionInfo
	if json.Unmarshal(val, &s.Client) != nil {
		return s, false
	}
	if s.Session == "" {
		s.Session = strings.TrimPrefix(string(key), cluster.ClientsPrefix)
	}
	s.SealedKey = "" // sealed, but of no use to a reader
	s.Lease = cluster.SessionString(uint64(lease))
	return s, true
}

// cmpSession orders session ids as numbers (hex strings of different
// lengths do not sort so), unparsable ones last.
func cmpSession(a, b string) int {
	x, errA := cluster.ParseSession(a)
	y, errB := cluster.ParseSession(b)
	switch {
	case errA != nil || errB != nil:
		if (errA == nil) != (errB == nil) {
			if errA == nil {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	case x < y:
		return -1
	case x > y:
		return 1
	}
	return 0
}

func printSessions(w io.Writer, ss []sessionInfo, now time.Time) {
	if len(ss) > 0 {
		tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tCLIENT\tKEY\tLIBRARY\tWORKER\tSINCE\tAGE")
		for _, s := range ss {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Session, orDash(s.Addr), orDash(s.KeyName), orDash(s.Library), orDash(s.Worker), orDash(s.Since), age(s.Since, now))
		}
		tw.Flush()
	}
	switch len(ss) {
	case 1:
		fmt.Fprintln(w, "1 session")
	default:
		fmt.Fprintf(w, "%d sessions\n", len(ss))
	}
}

// age is how long ago since (a cluster.Now time) was, to the second.
func age(since string, now time.Time) string {
	t, err := time.Parse(time.RFC3339Nano, since)
	if err != nil {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}
