package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"

	"github.com/tokend/tokend/cluster"
)

// Replace swaps the dead member deadName of the cluster that cli reaches for
// a new member described by cfg, and returns the new member once it is ready.
//
// It removes deadName from the cluster, adds a member with cfg.PeerURLs, and
// starts cfg as a member joining an existing cluster: cfg.ClusterState is
// taken as ClusterStateExisting and cfg.InitialCluster is computed from the
// cluster's membership (whatever the caller set). cfg.Dir must be empty or
// absent (ErrDataDirNotEmpty otherwise): a member's data must never be
// reused by another member, nor by the same name after removal.
// cfg.Name may equal deadName.
//
// Replace refuses (ErrMemberAlive) to remove a member that still answers on
// its client URLs. While etcd rejects the change because the cluster is
// unhealthy (strict reconfiguration check: the serving member has not been
// connected to a quorum for 5 s, e.g. just after the cluster formed or a
// member joined; no leader; too few members started), it retries until ctx
// ends, then returns ctx's error together with the last rejection. The same
// holds for starting the new member.
//
// If an earlier Replace added the new member but failed to start it, a new
// call with an empty data dir resumes from the start: it finds the unstarted
// member by its peer URLs and does not remove deadName again.
func Replace(ctx context.Context, cli *clientv3.Client, deadName string, cfg Config) (*Member, error) {
	cfg.ClusterState = ClusterStateExisting
	cfg.InitialCluster = "" // placeholder (Name=PeerURLs) until the membership is known
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if deadName == "" {
		return nil, badConfig("Replace: empty name of the member to remove")
	}
	if err := checkEmptyDir(c.Dir); err != nil {
		return nil, err
	}
	lg := c.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	lg = lg.With(zap.String("replace", deadName), zap.String("member", c.Name))

	// Phase 1: membership. Each step looks at the current membership first,
	// so a retry after a partial success (or an earlier Replace) goes on
	// where it stopped.
	var (
		initialCluster string
		removed        bool // deadName is out of the cluster
	)
	err := retry(ctx, lg, func() (bool, error) {
		ic, err := reconfigure(ctx, cli, deadName, &c, &removed)
		initialCluster = ic
		return retryable(err), err
	})
	if err != nil {
		return nil, fmt.Errorf("embedded: replace %q by %q: %w", deadName, c.Name, err)
	}

	// Phase 2: start. After a failed attempt the data dir may already hold
	// the member's state; starting again on it is the right thing to do (it
	// is this member's own data), so it is never wiped.
	c.InitialCluster = initialCluster
	var m *Member
	err = retry(ctx, lg, func() (bool, error) {
		var err error
		m, err = Start(ctx, c)
		return startRetryable(err), err
	})
	if err != nil {
		return nil, fmt.Errorf("embedded: replace %q by %q: member added but not started: %w", deadName, c.Name, err)
	}
	return m, nil
}

// reconfigure removes deadName (if still a member) and adds the new member
// (if not added yet), and returns the initial cluster string for it. It sets
// *removed once deadName is gone.
func reconfigure(ctx context.Context, cli *clientv3.Client, deadName string, c *Config, removed *bool) (string, error) {
	list, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("member list: %w", err)
	}
	var dead, self *etcdserverpb.Member
	for _, mb := range list.Members {
		switch {
		case mb.Name == deadName:
			dead = mb
		case mb.Name == "" && sameURLs(mb.PeerURLs, c.PeerURLs):
			self = mb // added by an earlier attempt, not started yet
		case mb.Name == "":
			return "", fmt.Errorf("%w: member %x (peer URLs %v) was added but not started; start or remove it first", ErrMemberExists, mb.ID, mb.PeerURLs)
		case mb.Name == c.Name:
			return "", fmt.Errorf("%w: %q is a started member already", ErrMemberExists, c.Name)
		}
	}
	if dead == nil && self == nil && !*removed {
		return "", fmt.Errorf("%w: %q", ErrNoSuchMember, deadName)
	}
	if dead != nil {
		if cluster.MemberAnswers(ctx, cli, dead.ClientURLs) {
			return "", fmt.Errorf("%w: %q answers on %v", ErrMemberAlive, deadName, dead.ClientURLs)
		}
		if _, err := cli.MemberRemove(ctx, dead.ID); err != nil && !errors.Is(err, rpctypes.ErrMemberNotFound) {
			return "", fmt.Errorf("remove %q: %w", deadName, err)
		}
	}
	*removed = true
	members := list.Members
	if self == nil {
		resp, err := cli.MemberAdd(ctx, c.PeerURLs)
		if err != nil {
			return "", fmt.Errorf("add %v: %w", c.PeerURLs, err)
		}
		self, members = resp.Member, resp.Members
	}
	var pairs []string
	for _, mb := range members {
		name := mb.Name
		switch {
		case mb.ID == self.ID:
			name = c.Name
		case dead != nil && mb.ID == dead.ID:
			continue // a list taken before the removal
		}
		for _, u := range mb.PeerURLs {
			pairs = append(pairs, name+"="+u)
		}
	}
	return strings.Join(pairs, ","), nil
}

func sameURLs(a, b []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(canonical(a))), slices.Sorted(slices.Values(canonical(b))))
}

// checkEmptyDir accepts an absent or empty directory.
func checkEmptyDir(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embedded: data dir: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err == io.EOF {
		return nil
	}
	if err != nil {
		return fmt.Errorf("embedded: data dir %s: %w", dir, err)
	}
	return fmt.Errorf("%w: %s holds %s", ErrDataDirNotEmpty, dir, names[0])
}

// retryable reports whether etcd rejected a membership change for a reason
// that goes away by itself: an unhealthy or leaderless cluster, a timeout,
// too few started members.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrMemberNotEnoughStarted) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable
	}
	return false
}

// startRetryable reports whether a failed Start of a joining member may
// succeed later: not for a bad config or a local address in use, which no
// waiting fixes, nor for the caller's context ending.
func startRetryable(err error) bool {
	if err == nil || errors.Is(err, ErrBadConfig) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var op *net.OpError
	return !(errors.As(err, &op) && op.Op == "listen")
}

// retry calls f until it succeeds, returns an error it does not mark as
// retryable, or ctx ends; waits grow from 100 ms to 1 s.
func retry(ctx context.Context, lg *zap.Logger, f func() (again bool, err error)) error {
	wait := 100 * time.Millisecond
	for {
		again, err := f()
		if err == nil || !again {
			return err
		}
		lg.Info("embedded: retrying", zap.Error(err), zap.Duration("in", wait))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}
