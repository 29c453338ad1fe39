package clientlib_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/coordinator"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
)

// Deadlocks are answered, not waited out (wire/SPEC.md section 19): one
// party of a conversion deadlock or of a wait-for cycle across tokens gets
// ErrDeadlock within a second, keeps what it holds, and the other goes on
// once the victim gives something back.

// deadlockBound is the acceptance bound on detection.
const deadlockBound = time.Second

func dlCluster(t *testing.T, workers int) *devcluster.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Options{Workers: workers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// party is a client of the deadlock tests, with the names of the tokens
// it has been asked to give back.
type party struct {
	*clientlib.Client
	revoked chan string
}

// dlClient dials a client whose revoke handler gives nothing back: a holder
// that keeps what it holds while it waits for more, which is what
// deadlocks. It only reports the token's name on revoked.
func dlClient(t *testing.T, c *devcluster.Cluster) *party {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := &party{revoked: make(chan string, 64)}
	cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: c.Seeds(), KeyFile: c.KeyFile(),
		OnRevoke: func(_ context.Context, tok *clientlib.Token, _ clientlib.Revocation) {
			select {
			case p.revoked <- tok.Name():
			default: // nobody waits for this one
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	p.Client = cl
	return p
}

// namesOn returns one token name per worker id asked for, each in a shard
// that worker serves, waiting (up to a deadline) for the leader to give
// every one of them shards.
func namesOn(t *testing.T, c *devcluster.Cluster, prefix string, ids ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []string
	clientlib.Eventually(t, 20*time.Second, fmt.Sprintf("the map giving shards to all of %v", ids), func() bool {
		m, _, err := coordinator.ReadMap(ctx, c.Client)
		if err != nil {
			t.Fatal(err)
		}
		out = make([]string, len(ids))
		found := 0
		for n := 0; n < 4096 && found < len(ids); n++ {
			name := fmt.Sprintf("%s-%d", prefix, n)
			o, _, ok := m.Lookup(int(wire.Shard([]byte(name), uint32(m.Shards()))))
			for i, id := range ids {
				if ok && o.ID == id && out[i] == "" {
					out[i] = name
					found++
					break
				}
			}
		}
		return found == len(ids)
	})
	return out
}

type outcome struct {
	who string
	tok *clientlib.Token
	err error
	at  time.Time
}

// waitQueued waits until a request for name has reached its worker's
// queue, before the next request is sent, so that the requests' ages, and
// hence the victim, are known: the worker revokes holder's grant of name
// as the request queues behind it.
func waitQueued(t *testing.T, holder *party, name string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n := <-holder.revoked:
			if n == name {
				// Workers report ages in whole milliseconds: the next
				// request must queue a millisecond later at least to be
				// the younger. Real time is the point.
				time.Sleep(2 * time.Millisecond)
				return
			}
		case <-timeout:
			t.Fatalf("no request queued behind the grant of %s", name)
		}
	}
}

// TestDeadlockConversion: two PR holders both convert to EX. The second
// conversion closes the cycle and is answered ErrDeadlock at once, keeping
// its PR; when it releases, the first conversion is granted.
func TestDeadlockConversion(t *testing.T) {
	c := dlCluster(t, 1)
	a, b := dlClient(t, c), dlClient(t, c)
	ctx := dlCtx(t, 20*time.Second)
	ta, err := a.Acquire(ctx, "dl-conv", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Acquire(ctx, "dl-conv", wire.PR)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan outcome, 2)
	go func() { res <- outcome{who: "a", err: ta.Convert(ctx, wire.EX), at: time.Now()} }()
	waitQueued(t, b, "dl-conv")
	start := time.Now()
	go func() { res <- outcome{who: "b", err: tb.Convert(ctx, wire.EX), at: time.Now()} }()
	first := <-res
	if first.who != "b" || !errors.Is(first.err, clientlib.ErrDeadlock) {
		t.Fatalf("first outcome: %s %v; want b's conversion answered ErrDeadlock", first.who, first.err)
	}
	if d := first.at.Sub(start); d > deadlockBound {
		t.Fatalf("conversion deadlock answered after %v (bound %v)", d, deadlockBound)
	} else {
		t.Logf("conversion deadlock answered after %v", d)
	}
	if tb.Mode() != wire.PR || !tb.Valid() {
		t.Fatalf("victim's grant after DEADLOCK: mode %v valid %v; want PR, valid", tb.Mode(), tb.Valid())
	}
	select {
	case o := <-res:
		t.Fatalf("the other conversion ended before the victim released: %v", o.err)
	default:
	}
	if err := tb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	second := <-res
	if second.err != nil || ta.Mode() != wire.EX {
		t.Fatalf("a's conversion after the victim released: %v, mode %v; want EX", second.err, ta.Mode())
	}
}

// cycle runs one 2-token cycle: a holds x and waits for y, then b holds y
// and asks for x. It returns how long b's request took to be answered
// ErrDeadlock, checks that a's wait goes on and ends with the grant once b
// releases y.
func cycle(t *testing.T, a, b *party, x, y string) time.Duration {
	t.Helper()
	ctx := dlCtx(t, 20*time.Second)
	ta, err := a.Acquire(ctx, x, wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Acquire(ctx, y, wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan outcome, 2)
	go func() {
		tok, err := a.Acquire(ctx, y, wire.EX, clientlib.DetectDeadlock())
		res <- outcome{who: "a", tok: tok, err: err, at: time.Now()}
	}()
	waitQueued(t, b, y)
	start := time.Now()
	go func() {
		tok, err := b.Acquire(ctx, x, wire.PR, clientlib.DetectDeadlock())
		res <- outcome{who: "b", tok: tok, err: err, at: time.Now()}
	}()
	first := <-res
	if first.who != "b" || !errors.Is(first.err, clientlib.ErrDeadlock) {
		t.Fatalf("first outcome: %s %v; want b's acquire (the younger) answered ErrDeadlock", first.who, first.err)
	}
	took := first.at.Sub(start)
	if took > deadlockBound {
		t.Fatalf("cycle answered after %v (bound %v)", took, deadlockBound)
	}
	if !tb.Valid() || !ta.Valid() {
		t.Fatalf("grants after DEADLOCK: a valid %v, b valid %v; want both kept", ta.Valid(), tb.Valid())
	}
	select {
	case o := <-res:
		t.Fatalf("a's wait ended before b released: %v", o.err)
	default:
	}
	if err := tb.Release(ctx); err != nil {
		t.Fatal(err)
	}
	second := <-res
	if second.err != nil {
		t.Fatalf("a's acquire of %s after b released it: %v", y, second.err)
	}
	for _, tok := range []*clientlib.Token{ta, second.tok} {
		if err := tok.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return took
}

func logLatencies(t *testing.T, what string, ds []time.Duration) {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	t.Logf("%s: detection latency over %d cycles: min %v median %v max %v", what, len(ds),
		ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
}

// TestDeadlockCycleOneWorker: a 2-token cycle whose tokens are in two
// shards of one worker is answered DEADLOCK to the younger request.
func TestDeadlockCycleOneWorker(t *testing.T) {
	c := dlCluster(t, 1)
	a, b := dlClient(t, c), dlClient(t, c)
	var ds []time.Duration
	for i := range 3 {
		x, y := fmt.Sprintf("dl1-x%d", i), fmt.Sprintf("dl1-y%d", i)
		if wire.Shard([]byte(x), 64) == wire.Shard([]byte(y), 64) {
			y += "'"
		}
		ds = append(ds, cycle(t, a, b, x, y))
	}
	logLatencies(t, "one worker", ds)
}

// TestDeadlockCycleTwoWorkers: the same with x and y on different workers.
func TestDeadlockCycleTwoWorkers(t *testing.T) {
	c := dlCluster(t, 2)
	ids := []string{c.Workers()[0].ID(), c.Workers()[1].ID()}
	a, b := dlClient(t, c), dlClient(t, c)
	var ds []time.Duration
	for i := range 3 {
		n := namesOn(t, c, fmt.Sprintf("dl2-%d", i), ids...)
		ds = append(ds, cycle(t, a, b, n[0], n[1]))
	}
	logLatencies(t, "two workers", ds)
}

func dlCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
