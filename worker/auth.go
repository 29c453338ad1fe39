package worker

import (
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/wire/auth"
)

// Auth turns on the authentication of wire/SPEC.md section 20. A worker
// with Config.Auth nil runs unauthenticated (tokend --insecure).
type Auth struct {
	// ClusterKey seals session keys into the session documents in etcd,
	// so that every worker can check a session's datagrams, and
	// authenticates planned handoffs between workers.
	ClusterKey auth.Key
	// Keys finds the client key of a name; a revoked or unknown name is
	// not found. Required.
	Keys KeyLookup
}

// KeyLookup finds client keys by name. It is called on the receive path
// and must be fast and safe for concurrent use.
type KeyLookup interface {
	ClientKey(name string) (auth.Key, bool)
}

// KeyGuard is implemented by a KeyLookup whose keys live in etcd
// (cluster/keys.Store): the put that creates a session is made only while
// StillValid(name) holds, so a revocation, which then ends the key's
// sessions, cannot miss a session whose open was under way.
type KeyGuard interface {
	StillValid(name string) clientv3.Cmp
}

// keyGuard returns the KeyGuard of the client keys, if they have one.
func (w *Worker) keyGuard() (KeyGuard, bool) {
	if w.cfg.Auth == nil {
		return nil, false
	}
	g, ok := w.cfg.Auth.Keys.(KeyGuard)
	return g, ok
}
