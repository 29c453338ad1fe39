package keys

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/wire/auth"
)

func TestMain(m *testing.M) { etcdtest.VerifyTestMain(m) }

// lookup is what a worker needs of a Store (worker.KeyLookup).
type lookup interface {
	ClientKey(name string) (auth.Key, bool)
}

var _ lookup = (*Store)(nil)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newKey(t *testing.T) auth.Key {
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestAddListRevoke: a key is stored sealed (the document holds neither
// the key nor anything that opens without the cluster key or under
// another name), listed without it, refused a second time, and revoked
// once, after which a write guarded by Exists fails; bad names are
// refused before etcd is touched.
func TestAddListRevoke(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	ctx := ctxT(t)
	ck, alice := newKey(t), newKey(t)
	now := time.Date(2026, 12, 3, 16, 0, 0, 0, time.UTC)
	if err := Add(ctx, cli, ck, "alice", alice, now); err != nil {
		t.Fatal(err)
	}
	if err := Add(ctx, cli, ck, "alice", newKey(t), now); !errors.Is(err, ErrExists) {
		t.Errorf("second add: %v, want ErrExists", err)
	}
	if err := Add(ctx, cli, ck, "bob", newKey(t), now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, Path("alice"))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	raw := resp.Kvs[0].Value
	var d Doc
	if err := json.Unmarshal(raw, &d); err != nil || d.Name != "alice" || d.Created != "2026-12-03T16:00:00Z" {
		t.Errorf("document %s: %v", raw, err)
	}
	if strings.Contains(string(raw), base64.RawURLEncoding.EncodeToString(alice[:])) ||
		strings.Contains(string(raw), base64.RawStdEncoding.EncodeToString(alice[:])) {
		t.Error("the document holds the key in the clear")
	}
	if _, k, err := unseal(ck, Path("alice"), raw); err != nil || k != alice {
		t.Errorf("unseal: %v", err)
	}
	if _, _, err := unseal(newKey(t), Path("alice"), raw); !errors.Is(err, ErrSealed) {
		t.Errorf("another cluster key: %v", err)
	}
	if _, _, err := unseal(ck, Path("mallory"), raw); !errors.Is(err, ErrSealed) {
		t.Errorf("copied to another name: %v", err)
	}

	list, err := List(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	want := []Info{{"alice", "2026-12-03T16:00:00Z"}, {"bob", "2026-12-03T16:00:01Z"}}
	if len(list) != 2 || list[0] != want[0] || list[1] != want[1] {
		t.Errorf("list %v, want %v", list, want)
	}
	guarded := func() bool {
		t.Helper()
		resp, err := cli.Txn(ctx).If(Exists("alice")).Then(clientv3.OpPut(cluster.ClientsPrefix+"guarded", "{}")).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Succeeded
	}
	if !guarded() {
		t.Error("a put guarded by Exists(alice) failed while alice is stored")
	}
	if err := Revoke(ctx, cli, "alice"); err != nil {
		t.Fatal(err)
	}
	if guarded() {
		t.Error("a put guarded by Exists(alice) succeeded after alice's revocation")
	}
	if err := Revoke(ctx, cli, "alice"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second revoke: %v, want ErrNotFound", err)
	}
	if list, _ := List(ctx, cli); len(list) != 1 || list[0].Name != "bob" {
		t.Errorf("after revoke: %v", list)
	}
	for _, name := range []string{"", "cluster", "a b", "ä", strings.Repeat("x", 65), "../x"} {
		if err := Add(ctx, cli, ck, name, alice, now); !errors.Is(err, ErrBadName) {
			t.Errorf("Add(%q): %v, want ErrBadName", name, err)
		}
		if err := Revoke(ctx, cli, name); !errors.Is(err, ErrBadName) {
			t.Errorf("Revoke(%q): %v, want ErrBadName", name, err)
		}
	}
}

// TestEnsure: registering the same key again changes nothing (servers do
// it at every start, concurrently); another key under the name, or a
// cluster key that does not open the stored one, is a clear error and the
// stored key stays.
func TestEnsure(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	ctx := ctxT(t)
	ck, k := newKey(t), newKey(t)
	var wg sync.WaitGroup
	created := make([]bool, 4)
	errs := make([]error, 4)
	for i := range created {
		wg.Go(func() { created[i], errs[i] = Ensure(ctx, cli, ck, "default", k, time.Now()) })
	}
	wg.Wait()
	n := 0
	for i := range created {
		if errs[i] != nil {
			t.Fatalf("concurrent Ensure: %v", errs[i])
		}
		if created[i] {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d of 4 concurrent Ensure calls created the key, want 1", n)
	}
	before, _ := cli.Get(ctx, Path("default"))
	if c, err := Ensure(ctx, cli, ck, "default", k, time.Now()); c || err != nil {
		t.Errorf("again: created %v, %v", c, err)
	}
	if _, err := Ensure(ctx, cli, ck, "default", newKey(t), time.Now()); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "not replaced") {
		t.Errorf("another key: %v, want ErrExists", err)
	}
	if _, err := Ensure(ctx, cli, newKey(t), "default", k, time.Now()); !errors.Is(err, ErrSealed) || !strings.Contains(err.Error(), "cluster key") {
		t.Errorf("another cluster key: %v, want ErrSealed", err)
	}
	after, _ := cli.Get(ctx, Path("default"))
	if after.Kvs[0].ModRevision != before.Kvs[0].ModRevision {
		t.Error("the stored key was rewritten")
	}
}

// TestStore: a Store knows no key before Start, loads the keys there at
// Start, sees a key added and a
// key revoked by the time its watch delivers the change (WaitRevision on
// the write's revision), leaves out a document that does not open under
// the cluster key, and answers lookups while it changes.
func TestStore(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	ctx := ctxT(t)
	ck, alice, bob := newKey(t), newKey(t), newKey(t)
	if err := Add(ctx, cli, ck, "alice", alice, time.Now()); err != nil {
		t.Fatal(err)
	}
	other := newKey(t) // another cluster's key
	if err := Add(ctx, cli, other, "stranger", newKey(t), time.Now()); err != nil {
		t.Fatal(err)
	}
	s := NewStore(cli, ck, nil)
	defer s.Close()
	if _, ok := s.ClientKey("alice"); ok {
		t.Error("a store knows keys before Start")
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if k, ok := s.ClientKey("alice"); !ok || k != alice {
		t.Fatal("alice missing at open")
	}
	if _, ok := s.ClientKey("stranger"); ok {
		t.Error("a key sealed under another cluster key was taken")
	}
	if s.Len() != 1 || s.LeftOut() != 1 {
		t.Errorf("Len %d, LeftOut %d; want 1 and 1 (stranger)", s.Len(), s.LeftOut())
	}

	// Adds and revocations, each seen once the store reaches its revision.
	if err := Add(ctx, cli, ck, "bob", bob, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitHead(t, s, cli)
	if k, ok := s.ClientKey("bob"); !ok || k != bob {
		t.Error("bob not seen after its add")
	}
	if err := Revoke(ctx, cli, "alice"); err != nil {
		t.Fatal(err)
	}
	waitHead(t, s, cli)
	if _, ok := s.ClientKey("alice"); ok {
		t.Error("alice still known after its revocation")
	}
	// A good key overwritten with garbage goes too.
	if _, err := cli.Put(ctx, Path("bob"), `{"name":"bob","sealed":"AAAA"}`); err != nil {
		t.Fatal(err)
	}
	waitHead(t, s, cli)
	if _, ok := s.ClientKey("bob"); ok || s.LeftOut() != 2 {
		t.Errorf("bob kept (%v) after its document became unreadable; LeftOut %d, want 2", ok, s.LeftOut())
	}
	if _, err := cli.Delete(ctx, Path("stranger")); err != nil {
		t.Fatal(err)
	}
	waitHead(t, s, cli)
	if s.LeftOut() != 1 {
		t.Errorf("LeftOut %d after stranger's deletion, want 1", s.LeftOut())
	}

	// Lookups race with changes without a data race (go test -race).
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				s.ClientKey("carol")
			}
		}
	})
	carol := newKey(t)
	if err := Add(ctx, cli, ck, "carol", carol, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitHead(t, s, cli)
	close(stop)
	wg.Wait()
	if k, ok := s.ClientKey("carol"); !ok || k != carol {
		t.Error("carol not seen")
	}

}

// waitHead waits until s reflects etcd's current revision.
func waitHead(t *testing.T, s *Store, cli *clientv3.Client) {
	t.Helper()
	ctx := ctxT(t)
	head, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitRevision(ctx, head.Header.Revision); err != nil {
		t.Fatal(err)
	}
}

// TestEndSessions: the sessions opened with a key end (their leases are
// revoked, and the documents go with them); sessions of other keys and
// documents without a key name stay.
func TestEndSessions(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	ctx := ctxT(t)
	put := func(id, keyName string) clientv3.LeaseID {
		l, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		doc := `{"session":"` + id + `","key_name":"` + keyName + `"}`
		if keyName == "" {
			doc = `{"session":"` + id + `"}`
		}
		if _, err := cli.Put(ctx, cluster.ClientsPrefix+id, doc, clientv3.WithLease(l.ID)); err != nil {
			t.Fatal(err)
		}
		return l.ID
	}
	a1, a2, b, none := put("a1", "alice"), put("a2", "alice"), put("b1", "bob"), put("c1", "")
	ended, err := EndSessions(ctx, cli, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(ended) != 2 || ended[0] != "a1" || ended[1] != "a2" {
		t.Errorf("ended %v, want [a1 a2]", ended)
	}
	for _, l := range []clientv3.LeaseID{a1, a2} {
		if r, err := cli.TimeToLive(ctx, l); err != nil || r.TTL != -1 {
			t.Errorf("lease %x of an alice session: ttl %v, %v; want revoked", l, r.TTL, err)
		}
	}
	for _, l := range []clientv3.LeaseID{b, none} {
		if r, err := cli.TimeToLive(ctx, l); err != nil || r.TTL <= 0 {
			t.Errorf("lease %x of another session: ttl %v, %v; want live", l, r.TTL, err)
		}
	}
	resp, _ := cli.Get(ctx, cluster.ClientsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if len(resp.Kvs) != 2 {
		t.Errorf("%d session documents left, want 2", len(resp.Kvs))
	}
	if ended, err := EndSessions(ctx, cli, "alice"); err != nil || len(ended) != 0 {
		t.Errorf("again: %v %v", ended, err)
	}
}

// TestStoreCloseWithoutStart: a store that never started closes at once.
func TestStoreCloseWithoutStart(t *testing.T) {
	s := NewStore(nil, auth.Key{}, nil)
	s.Close()
	s.Close()
}

// BenchmarkClientKey measures a lookup as a worker makes one per
// SESSION_OPEN, from every CPU at once, in a store of 1000 keys.
func BenchmarkClientKey(b *testing.B) {
	s := NewStore(nil, auth.Key{}, nil)
	snap := &snapshot{keys: map[string]auth.Key{}, bad: map[string]bool{}}
	for i := range 1000 {
		snap.keys["client-"+strconv.Itoa(i)] = auth.Key{byte(i)}
	}
	s.publish(snap, 1)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := s.ClientKey("client-500"); !ok {
				b.Fatal("not found")
			}
		}
	})
}
