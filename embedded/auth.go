package embedded

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/etcdserver"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3client"
)

// The etcd users and role a member with ClientTLS sets up. Users have no
// password: they authenticate by the common name of their client
// certificate.
const (
	// RoleTokend may read and write the keys under KeyPrefix, nothing else:
	// no other keys, no membership, no users, no maintenance.
	RoleTokend = "tokend"
	// UserTokend has RoleTokend: coordinators and workers.
	UserTokend = "tokend"
	// UserRoot has etcd's root role: the operator.
	UserRoot = "root"
	// KeyPrefix is the prefix RoleTokend may use (cluster.Prefix).
	KeyPrefix = "/tokend/"
)

// ensureAuth turns etcd authentication on, with UserTokend (RoleTokend) and
// UserRoot, unless it is on already. It runs on every start of a member
// with ClientTLS, through the member's in-process client (which has no
// identity, and so can change auth only while auth is off).
//
// Every member of a new cluster does this when it starts, and may race
// with the others. That is safe: each step only adds (a role, a
// permission, a user, a grant) and tolerates "already exists", and a
// member enables auth only after it has done every step itself, so auth is
// never on without the users and role. A member that loses the race finds
// its next step refused for want of a user, sees auth on, and stops.
// Once auth is on, nothing here changes it: root manages users from then
// on.
func ensureAuth(ctx context.Context, s *etcdserver.EtcdServer, timeout time.Duration) error {
	if s.AuthStore().IsAuthEnabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cli := v3client.New(s)
	defer cli.Close()
	err := setUpAuth(ctx, cli)
	if err != nil && s.AuthStore().IsAuthEnabled() {
		return nil // another member was first
	}
	if err != nil {
		return fmt.Errorf("enable etcd authentication: %w", err)
	}
	return nil
}

func setUpAuth(ctx context.Context, cli *clientv3.Client) error {
	if _, err := cli.RoleAdd(ctx, RoleTokend); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role %s: %w", RoleTokend, err)
	}
	if _, err := cli.RoleGrantPermission(ctx, RoleTokend, KeyPrefix, clientv3.GetPrefixRangeEnd(KeyPrefix),
		clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("grant %s read-write on %s: %w", RoleTokend, KeyPrefix, err)
	}
	for _, u := range []struct{ user, role string }{{UserTokend, RoleTokend}, {UserRoot, "root"}} {
		if _, err := cli.UserAddWithOptions(ctx, u.user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			return fmt.Errorf("add user %s: %w", u.user, err)
		}
		if _, err := cli.UserGrantRole(ctx, u.user, u.role); err != nil {
			return fmt.Errorf("grant role %s to %s: %w", u.role, u.user, err)
		}
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("auth enable: %w", err)
	}
	return nil
}
