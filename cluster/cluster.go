// Package cluster is tokend's shared control state in etcd: the key layout
// and the JSON documents stored under /tokend/ (cluster config, workers,
// client sessions, the delegation map, the leader election), so that the
// coordinator, the workers and operators with plain etcdctl all read the same
// thing. It holds no token state: acquire and release never touch etcd.
//
//	/tokend/config               Config, written once at bootstrap
//	/tokend/workers/<id>         Worker, on the worker's lease
//	/tokend/drain/<id>           Drain: an operator asked to drain worker id (no lease: it outlives restarts)
//	/tokend/clients/<session>    Client, on the session's lease (session = random session id in hex)
//	/tokend/keys/<name>          a client key, sealed under the cluster key (package cluster/keys)
//	/tokend/delegation/map       the delegation map, written only by the leader
//	/tokend/leader/<lease>       concurrency.Election keys; the value is a Leader
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Version is this build's version, recorded in worker and client documents.
const Version = "0.1.0"

// Keys and prefixes.
const (
	Prefix        = "/tokend/"
	ConfigKey     = "/tokend/config"
	WorkersPrefix = "/tokend/workers/"
	DrainPrefix   = "/tokend/drain/"
	ClientsPrefix = "/tokend/clients/"
	DelegationKey = "/tokend/delegation/map"
	LeaderPrefix  = "/tokend/leader/"
	// FenceKey holds the cluster's public fence key (package fenceproof)
	// as a FenceKeyDoc, put by the servers at start: what storage verifies
	// proofs with.
	FenceKey = "/tokend/fence-key"
	// ElectionPrefix is LeaderPrefix as concurrency.NewElection wants it:
	// it appends the "/" itself.
	ElectionPrefix = "/tokend/leader"
)

// Config is the cluster-wide configuration, fixed when the cluster is first
// created: changing the shard count would move every token.
type Config struct {
	Shards       int    `json:"shards"`
	SessionTTLms int64  `json:"session_ttl_ms"`
	GraceMs      int64  `json:"grace_ms"`
	Created      string `json:"created"`
	CreatedBy    string `json:"created_by"`
	Version      string `json:"version"`
}

// SessionTTL returns the session lease TTL.
func (c Config) SessionTTL() time.Duration { return time.Duration(c.SessionTTLms) * time.Millisecond }

// Grace returns the recovery grace period.
func (c Config) Grace() time.Duration { return time.Duration(c.GraceMs) * time.Millisecond }

// Validate reports whether c could have been written by a server.
func (c Config) Validate() error {
	if c.Shards < 1 || c.Shards > 65536 {
		return fmt.Errorf("%w: shards %d outside [1, 65536]", ErrBadConfig, c.Shards)
	}
	if c.SessionTTLms < 1000 {
		return fmt.Errorf("%w: session_ttl_ms %d below 1000", ErrBadConfig, c.SessionTTLms)
	}
	if c.GraceMs < 0 {
		return fmt.Errorf("%w: negative grace_ms", ErrBadConfig)
	}
	return nil
}

// Bootstrap writes c as the cluster config unless one exists already, and
// returns the config in force (the existing one wins: it is fixed at
// bootstrap).
func Bootstrap(ctx context.Context, cli *clientv3.Client, c Config) (Config, bool, error) {
	if err := c.Validate(); err != nil {
		return Config{}, false, err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return Config{}, false, err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(ConfigKey), "=", 0)).
		Then(clientv3.OpPut(ConfigKey, string(b))).
		Else(clientv3.OpGet(ConfigKey)).
		Commit()
	if err != nil {
		return Config{}, false, fmt.Errorf("cluster: writing %s: %w", ConfigKey, err)
	}
	if resp.Succeeded {
		return c, true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return Config{}, false, ErrNoConfig
	}
	got, err := decodeConfig(kvs[0].Value)
	return got, false, err
}

// ReadConfig reads the cluster config.
func ReadConfig(ctx context.Context, cli *clientv3.Client) (Config, error) {
	resp, err := cli.Get(ctx, ConfigKey)
	if err != nil {
		return Config{}, fmt.Errorf("cluster: reading %s: %w", ConfigKey, err)
	}
	if len(resp.Kvs) == 0 {
		return Config{}, ErrNoConfig
	}
	return decodeConfig(resp.Kvs[0].Value)
}

// WaitConfig reads the cluster config, waiting for a server to write it.
func WaitConfig(ctx context.Context, cli *clientv3.Client) (Config, error) {
	for {
		c, err := ReadConfig(ctx, cli)
		if !errors.Is(err, ErrNoConfig) {
			return c, err
		}
		select {
		case <-ctx.Done():
			return Config{}, fmt.Errorf("%w: %w", ErrNoConfig, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func decodeConfig(b []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrBadConfig, err)
	}
	return c, c.Validate()
}

// Worker is a live worker's registration, attached to its lease: the key
// disappears when the worker stops renewing it.
type Worker struct {
	ID          string `json:"id"`
	Incarnation string `json:"incarnation"` // the worker's lease id, hex: a restarted worker is a new incarnation
	UDP         string `json:"udp"`
	HTTP        string `json:"http,omitempty"`
	Version     string `json:"version"`
	Started     string `json:"started"`
	TTLms       int64  `json:"ttl_ms"`
	// Handoff is the TCP address ("host:port") where the worker hands the
	// state of shards it gave up to their new owners (planned moves, see
	// wire/SPEC.md section 18). Empty: it hands nothing off, and its shards
	// are recovered with a grace period.
	Handoff string `json:"handoff,omitempty"`
	// Draining is set by the worker itself (SIGTERM): move its shards
	// elsewhere. It lives and dies with this incarnation's registration.
	Draining bool `json:"draining,omitempty"`
}

// WorkerKey is the key of worker id.
func WorkerKey(id string) string { return WorkersPrefix + id }

// Drain is an operator's request to drain a worker (tokenctl drain): the
// leader plans as if the worker's registration said draining, whatever
// incarnation registers under that id, until the key is deleted (tokenctl
// undrain).
type Drain struct {
	ID    string `json:"id"`
	Since string `json:"since"` // for people only
	By    string `json:"by,omitempty"`
}

// FenceKeyDoc is the document at FenceKey.
type FenceKeyDoc struct {
	Algorithm string `json:"algorithm"`  // "ed25519"
	PublicKey string `json:"public_key"` // hex, fenceproof.FormatPublicKey
}

// DrainKey is the drain marker of worker id.
func DrainKey(id string) string { return DrainPrefix + id }

// Client is a client session, attached to the session's lease. The session
// id is random (wire/SPEC.md section 20), unrelated to the lease id.
type Client struct {
	Session string `json:"session"` // session id, hex
	Lease   string `json:"lease"`   // the etcd lease it lives on, hex; renewals and closes use it
	Addr    string `json:"addr"`
	Since   string `json:"since"`
	Library string `json:"library"`
	Worker  string `json:"worker"` // the worker that opened it
	// KeyName names the client key the session was opened with; empty
	// without authentication.
	KeyName string `json:"key_name,omitempty"`
	// SealedKey is the session key sealed under the cluster key with
	// label "session " + session id in hex (auth.SealKey), base64
	// (standard encoding); empty without authentication.
	SealedKey string `json:"sealed_key,omitempty"`
	// Bundle says the session takes BUNDLE_REPLYs (wire/SPEC.md section
	// 22): its SESSION_OPEN asked for them and the worker that opened it
	// agreed. Every worker may then bundle its datagrams to the session.
	Bundle bool `json:"bundle,omitempty"`
}

// SessionKeyLabel is the label a session's key is sealed with
// (Client.SealedKey).
func SessionKeyLabel(session uint64) string { return "session " + SessionString(session) }

// ClientKey is the key of a session.
func ClientKey(session uint64) string { return ClientsPrefix + SessionString(session) }

// SessionString formats a session id (or a lease id) as etcd formats lease
// ids: lower-case hex.
func SessionString(session uint64) string { return strconv.FormatUint(session, 16) }

// ParseSession is the inverse of SessionString.
func ParseSession(s string) (uint64, error) { return strconv.ParseUint(s, 16, 64) }

// Leader is the value a coordinator campaigns with.
type Leader struct {
	Name  string `json:"name"`
	HTTP  string `json:"http,omitempty"`
	Since string `json:"since"`
}

// Now formats t for documents (UTC, RFC 3339). Wall-clock time in documents
// is for people only; no decision is ever taken on it.
func Now(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
