package worker

import "github.com/tokend/tokend/wire/auth"

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
