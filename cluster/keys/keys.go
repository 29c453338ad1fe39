// Package keys keeps the client keys of the datagram authentication
// (wire/SPEC.md section 20) in etcd, sealed under the cluster key, so that
// every worker knows every client key and sees one added or revoked at
// once through its watch. tokenctl keys adds, lists and revokes them;
// servers register the cluster's default client key at start; workers
// look keys up through a [Store].
//
//	/tokend/keys/<name>   Doc: the key sealed under the cluster key (no lease: it lives until revoked)
//
// A key is sealed with auth.SealKey(cluster key, "client "+name, key), so a
// sealed key copied to another name, or a document written without the
// cluster key, does not open. Listing never shows a key.
package keys

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/internal/pki"
	"github.com/tokend/tokend/wire/auth"
)

// Prefix is where the client keys live, one key per name.
const Prefix = cluster.Prefix + "keys/"

// Errors of the package; test them with errors.Is.
var (
	// ErrBadName: not a client key name (1 to 64 of A-Z a-z 0-9 . _ -, and
	// not "cluster").
	ErrBadName = errors.New("keys: bad key name")
	// ErrExists: a key of that name exists already (Add), or exists with
	// another key (Ensure).
	ErrExists = errors.New("keys: key exists")
	// ErrNotFound: no key of that name.
	ErrNotFound = errors.New("keys: no such key")
	// ErrSealed: a stored key does not open under this cluster key: it was
	// written with another cluster key, or the document is damaged.
	ErrSealed = errors.New("keys: stored key does not open under this cluster key")
)

// Doc is the JSON document stored at Prefix+name.
type Doc struct {
	Name    string `json:"name"`
	Sealed  string `json:"sealed"`  // standard base64 of auth.SealKey(cluster, "client "+name, key)
	Created string `json:"created"` // cluster.Now; for people only
}

// Info is what List says about a key: never the key itself.
type Info struct {
	Name    string `json:"name"`
	Created string `json:"created"`
}

// Path is the etcd key of client key name.
func Path(name string) string { return Prefix + name }

func label(name string) string { return "client " + name }

func checkName(name string) error {
	if !pki.ValidClientKeyName(name) {
		return fmt.Errorf("%w: %q: use 1 to %d characters of A-Z a-z 0-9 . _ - (not %q)", ErrBadName, name, auth.MaxKeyName, pki.ClusterKeyName)
	}
	return nil
}

// seal makes the document of name and k.
func seal(clusterKey auth.Key, name string, k auth.Key, now time.Time) ([]byte, error) {
	sealed, err := auth.SealKey(clusterKey, label(name), k)
	if err != nil {
		return nil, err
	}
	return json.Marshal(Doc{Name: name, Sealed: base64.StdEncoding.EncodeToString(sealed), Created: cluster.Now(now)})
}

// unseal opens the document stored at etcd key path.
func unseal(clusterKey auth.Key, path string, value []byte) (string, auth.Key, error) {
	name := strings.TrimPrefix(path, Prefix)
	var d Doc
	if err := json.Unmarshal(value, &d); err != nil {
		return name, auth.Key{}, fmt.Errorf("%w: %s: %v", ErrSealed, path, err)
	}
	sealed, err := base64.StdEncoding.DecodeString(d.Sealed)
	if err != nil {
		return name, auth.Key{}, fmt.Errorf("%w: %s: sealed: %v", ErrSealed, path, err)
	}
	k, err := auth.UnsealKey(clusterKey, label(name), sealed)
	if err != nil {
		return name, auth.Key{}, fmt.Errorf("%w: %s", ErrSealed, path)
	}
	return name, k, nil
}

// Add stores client key k under name, sealed under clusterKey. It fails
// with ErrExists if name has a key already: revoke it first.
func Add(ctx context.Context, cli *clientv3.Client, clusterKey auth.Key, name string, k auth.Key, now time.Time) error {
	if err := checkName(name); err != nil {
		return err
	}
	doc, err := seal(clusterKey, name, k, now)
	if err != nil {
		return err
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(Path(name)), "=", 0)).
		Then(clientv3.OpPut(Path(name), string(doc))).
		Commit()
	if err != nil {
		return fmt.Errorf("keys: writing %s: %w", Path(name), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %q (tokenctl keys revoke %s first to replace it)", ErrExists, name, name)
	}
	return nil
}

// Ensure makes sure name has key k: it adds it if name has no key, and
// does nothing if it has k already (so servers may all call it at every
// start). It fails with ErrExists if name has another key, and with
// ErrSealed if the stored key does not open under clusterKey; it never
// overwrites. created says whether it added the key.
func Ensure(ctx context.Context, cli *clientv3.Client, clusterKey auth.Key, name string, k auth.Key, now time.Time) (created bool, err error) {
	err = Add(ctx, cli, clusterKey, name, k, now)
	if !errors.Is(err, ErrExists) {
		return err == nil, err
	}
	resp, err := cli.Get(ctx, Path(name))
	if err != nil {
		return false, fmt.Errorf("keys: reading %s: %w", Path(name), err)
	}
	if len(resp.Kvs) == 0 {
		// Revoked between the two calls: the operator's word stands.
		return false, fmt.Errorf("%w: %q was revoked while being registered", ErrNotFound, name)
	}
	_, got, err := unseal(clusterKey, Path(name), resp.Kvs[0].Value)
	if err != nil {
		return false, fmt.Errorf("%w (is the cluster key the one the cluster was made with?)", err)
	}
	if got != k {
		return false, fmt.Errorf("%w: %q holds another key than the one given; not replaced", ErrExists, name)
	}
	return false, nil
}

// List returns every key's name and creation time, by name.
func List(ctx context.Context, cli *clientv3.Client) ([]Info, error) {
	resp, err := cli.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("keys: reading %s: %w", Prefix, err)
	}
	out := make([]Info, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		info := Info{Name: strings.TrimPrefix(string(kv.Key), Prefix)}
		var d Doc
		if json.Unmarshal(kv.Value, &d) == nil {
			info.Created = d.Created
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Revoke deletes name's key: every Store drops it when its watch delivers
// the deletion, and no new session can be opened with it. It fails with
// ErrNotFound if name has no key. Sessions opened with it before are ended
// by EndSessions.
func Revoke(ctx context.Context, cli *clientv3.Client, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	resp, err := cli.Delete(ctx, Path(name))
	if err != nil {
		return fmt.Errorf("keys: deleting %s: %w", Path(name), err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: %q (tokenctl keys list shows the keys)", ErrNotFound, name)
	}
	return nil
}

// Exists is the etcd comparison "key name is stored". A worker that puts
// a session document in a transaction guarded by it cannot open a
// session with a key revoked meanwhile: the put either comes before the
// revocation's delete, and EndSessions (which runs after it) ends the
// session, or it fails.
func Exists(name string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(Path(name)), ">", 0)
}

// sessionKeyName is the part of a session document (cluster.Client) that
// names the client key its session was opened with.
type sessionKeyName struct {
	KeyName string `json:"key_name"`
}

// EndSessions ends every live session opened with key name: it revokes
// the etcd lease of each /tokend/clients document whose key_name is name
// (the document goes with it, and every worker drops the session's grants
// and queued requests), or deletes a document without a lease. It returns
// the session ids ended (the documents' keys, hex).
func EndSessions(ctx context.Context, cli *clientv3.Client, name string) ([]string, error) {
	resp, err := cli.Get(ctx, cluster.ClientsPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("keys: reading %s: %w", cluster.ClientsPrefix, err)
	}
	var ended []string
	var errs []error
	for _, kv := range resp.Kvs {
		var s sessionKeyName
		if json.Unmarshal(kv.Value, &s) != nil || s.KeyName != name {
			continue
		}
		id := strings.TrimPrefix(string(kv.Key), cluster.ClientsPrefix)
		if kv.Lease != 0 {
			_, err = cli.Revoke(ctx, clientv3.LeaseID(kv.Lease))
		} else {
			_, err = cli.Delete(ctx, string(kv.Key))
		}
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			errs = append(errs, fmt.Errorf("keys: ending session %s: %w", id, err))
			continue
		}
		ended = append(ended, id)
	}
	return ended, errors.Join(errs...)
}
