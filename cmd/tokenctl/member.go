package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"google.golang.org/grpc/codes"
)

const memberUsage = `member list [flags]
       tokenctl member add [flags] --peer-urls URL NAME
       tokenctl member remove [flags] NAME-or-ID
       tokenctl member replace [flags] --peer-urls URL [--name NEW] DEAD`

// memberInfo is one etcd member as tokenctl member list shows it.
type memberInfo struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	Status     string   `json:"status"` // leader, started, not started, learner
	PeerURLs   []string `json:"peer_urls"`
	ClientURLs []string `json:"client_urls"`
}

// added is what a new member needs to start.
type added struct {
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	PeerURLs       []string `json:"peer_urls"`
	InitialCluster string   `json:"initial_cluster"`
	ClusterState   string   `json:"cluster_state"`
}

// cmdMember manages the servers' etcd membership: the operator's side of
// replacing a server (remove the dead member, add the new one, start the
// new server with --cluster-state existing and an empty data dir). It is
// etcdctl's member command cut to that job, with tokend's settings
// printed for the new server, and it runs inside the FROM-scratch image.
func cmdMember(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "Usage: tokenctl %s\n", memberUsage)
		return usageErr("member: want list, add, remove or replace")
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("member "+sub, stderr, memberUsage)
	var c common
	c.register(fs, false, true)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for etcd; a change is retried while etcd calls the cluster unhealthy")
	var peerURLs, name *string
	var force *bool
	switch sub {
	case "list":
	case "add", "replace":
		peerURLs = fs.String("peer-urls", "", "comma-separated peer URLs of the new member (its --advertise-peer-urls)")
		if sub == "replace" {
			name = fs.String("name", "", "the new member's name (default: the dead member's)")
			force = fs.Bool("force", false, "remove the member even if it still answers")
		}
	case "remove":
		force = fs.Bool("force", false, "remove the member even if it still answers")
	default:
		return usageErr("member: unknown command %q: want list, add, remove or replace", sub)
	}
	// Flags may follow the argument: tokenctl member remove s3 --force.
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
	if err := c.check(); err != nil {
		return err
	}
	wantArgs := 1
	if sub == "list" {
		wantArgs = 0
	}
	if len(pos) != wantArgs {
		return usageErr("member %s: want %d argument(s), got %q\nUsage: tokenctl %s", sub, wantArgs, pos, memberUsage)
	}
	var urls []string
	if peerURLs != nil {
		urls = splitList(*peerURLs)
		if len(urls) == 0 {
			return usageErr("member %s: --peer-urls is required", sub)
		}
		scheme := "https"
		if c.tls.insecure {
			scheme = "http"
		}
		for _, u := range urls {
			if p, err := url.Parse(u); err != nil || p.Scheme != scheme || p.Host == "" {
				return usageErr("member %s: --peer-urls: %q is not %s://host:port (https unless the cluster runs with --insecure)", sub, u, scheme)
			}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	cli, err := c.tls.dial(c.etcd, 5*time.Second)
	if err != nil {
		return err
	}
	defer cli.Close()

	switch sub {
	case "list":
		ms, err := listMembers(ctx, cli)
		if err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, ms)
		}
		tw := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tSTATUS\tPEER URLS\tCLIENT URLS")
		for _, m := range ms {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.ID, orDash(m.Name), m.Status, strings.Join(m.PeerURLs, ","), orDash(strings.Join(m.ClientURLs, ",")))
		}
		return tw.Flush()
	case "remove":
		return retryUnhealthy(ctx, func() error {
			_, err := removeMember(ctx, cli, pos[0], *force, stdout)
			return err
		})
	}

	// add, replace
	newName := pos[0]
	var removed *etcdserverpb.Member
	if sub == "replace" {
		newName = *name
		if newName == "" {
			newName = pos[0]
		}
		err := retryUnhealthy(ctx, func() error {
			m, err := removeMember(ctx, cli, pos[0], *force, stdout)
			if m != nil {
				removed = m
			}
			return err
		})
		// Gone already, and its replacement added but not started (an
		// earlier replace stopped half way): go on, addMember resumes.
		if errors.Is(err, errNoMember) && pendingMember(ctx, cli, urls) {
			err = nil
		}
		if err != nil {
			return err
		}
	}
	var a added
	err = retryUnhealthy(ctx, func() error {
		var err error
		a, err = addMember(ctx, cli, newName, urls, removed)
		return err
	})
	if err != nil {
		return err
	}
	if c.output == "json" {
		return printJSON(stdout, a)
	}
	fmt.Fprintf(stdout, "added member %s (id %s) with peer URLs %s\n", a.Name, a.ID, strings.Join(a.PeerURLs, ","))
	fmt.Fprintf(stdout, "start the new server with an EMPTY data dir and:\n")
	fmt.Fprintf(stdout, "TOKEND_NAME=%s\nTOKEND_INITIAL_CLUSTER=%s\nTOKEND_CLUSTER_STATE=%s\n", a.Name, a.InitialCluster, a.ClusterState)
	return nil
}

var errNoMember = errors.New("no such member")

// listMembers returns the members, the leader marked as such.
func listMembers(ctx context.Context, cli *clientv3.Client) ([]memberInfo, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	var leader uint64
	for _, ep := range cli.Endpoints() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, ep)
		cancel()
		if err == nil {
			leader = st.Leader
			break
		}
	}
	var out []memberInfo
	for _, m := range resp.Members {
		status := "started"
		switch {
		case m.ID == leader:
			status = "leader"
		case m.IsLearner:
			status = "learner"
		case m.Name == "":
			status = "not started"
		}
		out = append(out, memberInfo{ID: strconv.FormatUint(m.ID, 16), Name: m.Name, Status: status, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs})
	}
	slices.SortFunc(out, func(a, b memberInfo) int { return strings.Compare(a.Name+a.ID, b.Name+b.ID) })
	return out, nil
}

// removeMember removes the member named (or with the hex id) who, unless
// it answers on its client URLs and !force. It returns the member removed.
func removeMember(ctx context.Context, cli *clientv3.Client, who string, force bool, stdout io.Writer) (*etcdserverpb.Member, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("member list: %w", err)
	}
	var m *etcdserverpb.Member
	for _, x := range resp.Members {
		if x.Name == who || strconv.FormatUint(x.ID, 16) == strings.ToLower(who) {
			m = x
		}
	}
	if m == nil {
		return nil, fmt.Errorf("member %q: %w (tokenctl member list shows them)", who, errNoMember)
	}
	if !force && cluster.MemberAnswers(ctx, cli, m.ClientURLs) {
		return nil, fmt.Errorf("member %s answers on %s: it is alive; stop it first, or --force", who, strings.Join(m.ClientURLs, ","))
	}
	if _, err := cli.MemberRemove(ctx, m.ID); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
		return nil, fmt.Errorf("member remove %s: %w", who, err)
	}
	fmt.Fprintf(stdout, "removed member %s (id %x)\n", orDash(m.Name), m.ID)
	return m, nil
}

// addMember adds a member with peer URLs urls, unless one with those URLs
// was added and not started yet (an earlier attempt), and returns the
// settings the new server starts with. removed, if not nil, is a member
// just removed that a list taken before the removal may still show.
func addMember(ctx context.Context, cli *clientv3.Client, name string, urls []string, removed *etcdserverpb.Member) (added, error) {
	list, err := cli.MemberList(ctx)
	if err != nil {
		return added{}, fmt.Errorf("member list: %w", err)
	}
	var self *etcdserverpb.Member
	members := list.Members
	for _, m := range members {
		switch {
		case m.Name == "" && sameSet(m.PeerURLs, urls):
			self = m
		case m.Name == name && name != "":
			return added{}, fmt.Errorf("member add: %q is a member already (remove it first, or replace it)", name)
		case sharesURL(m.PeerURLs, urls):
			return added{}, fmt.Errorf("member add: member %s (id %x) has peer URLs %v already", orDash(m.Name), m.ID, m.PeerURLs)
		}
	}
	if self == nil {
		resp, err := cli.MemberAdd(ctx, urls)
		if err != nil {
			return added{}, fmt.Errorf("member add %v: %w", urls, err)
		}
		self, members = resp.Member, resp.Members
	}
	var pairs []string
	for _, m := range members {
		n := m.Name
		switch {
		case m.ID == self.ID:
			n = name
		case removed != nil && m.ID == removed.ID:
			continue
		case n == "":
			return added{}, fmt.Errorf("member %x (peer URLs %v) was added but never started: start or remove it first", m.ID, m.PeerURLs)
		}
		for _, u := range m.PeerURLs {
			pairs = append(pairs, n+"="+u)
		}
	}
	return added{ID: strconv.FormatUint(self.ID, 16), Name: name, PeerURLs: urls, InitialCluster: strings.Join(pairs, ","), ClusterState: "existing"}, nil
}

// pendingMember reports whether a member with peer URLs urls was added
// and has not started.
func pendingMember(ctx context.Context, cli *clientv3.Client, urls []string) bool {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(resp.Members, func(m *etcdserverpb.Member) bool { return m.Name == "" && sameSet(m.PeerURLs, urls) })
}

// retryUnhealthy calls f until it succeeds, fails for a reason waiting
// does not fix, or ctx ends. etcd refuses membership changes while the
// cluster is unhealthy (its strict reconfiguration check: the leader has
// not been connected to a quorum for 5 s, e.g. just after a member
// changed).
func retryUnhealthy(ctx context.Context, f func() error) error {
	wait := 200 * time.Millisecond
	for {
		err := f()
		var ee rpctypes.EtcdError
		again := errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) || errors.Is(err, rpctypes.ErrUnhealthy) ||
			(errors.As(err, &ee) && ee.Code() == codes.Unavailable)
		if !again {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func sameSet(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

func sharesURL(a, b []string) bool {
	return slices.ContainsFunc(a, func(s string) bool { return slices.Contains(b, s) })
}
