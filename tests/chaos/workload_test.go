package chaos

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/testkit/faultnet"
	"github.com/tokend/tokend/worker"
)

// workerHost returns the faultnet host of in-process worker i.
func workerHost(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 1)}) }

// clientHost returns the faultnet host of client i (one host per client,
// so that a rule per host is a rule per client link).
func clientHost(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, 0, 2 + byte(i/250), byte(i%250 + 1)})
}

// inproc is an in-process cluster whose workers and clients all sit on one
// seeded faultnet network.
type inproc struct {
	t       *testing.T
	fn      *faultnet.Network
	c       *devcluster.Cluster
	workers int
}

func startInproc(t *testing.T, seed uint64, workers int, o devcluster.Options) *inproc {
	t.Helper()
	skipShort(t)
	fn := faultnet.New(seed)
	o.Workers = workers
	o.Conn = func(i int) (worker.PacketConn, error) {
		return fn.Listen(netip.AddrPortFrom(workerHost(i), 7700).String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := devcluster.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &inproc{t: t, fn: fn, c: c, workers: workers}
}

// dial opens client i on its own faultnet host.
func (e *inproc) dial(i int, cfg clientlib.Config) (*clientlib.Client, *faultnet.Conn) {
	e.t.Helper()
	conn, err := e.fn.Listen(netip.AddrPortFrom(clientHost(i), 0).String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	cfg.Seeds, cfg.KeyFile = e.c.Seeds(), e.c.KeyFile()
	cfg.PacketConn = conn
	if cfg.OnRevoke == nil {
		// Holders give tokens back when they are done, not on request:
		// a slow holder then loses its token to the lease, the case to test.
		cfg.OnRevoke = func(context.Context, *clientlib.Token, clientlib.Revocation) {}
	}
	var cl *clientlib.Client
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cl, err = clientlib.DialConfig(ctx, cfg)
		cancel()
		if err == nil || attempt == 2 {
			break
		}
	}
	if err != nil {
		e.t.Fatalf("client %d: %v", i, err)
	}
	e.t.Cleanup(func() { cl.Close() })
	return cl, conn
}

// cutClient blackholes (on) or heals (off) every link of client i.
func (e *inproc) cutClient(i int, on bool) {
	for w := range e.workers {
		e.fn.SetHosts(clientHost(i), workerHost(w), faultnet.Rule{Cut: on})
		e.fn.SetHosts(workerHost(w), clientHost(i), faultnet.Rule{Cut: on})
	}
}

// heldTokens sums the workers' grants.
func (e *inproc) heldTokens() int {
	n := 0
	for _, w := range e.c.Workers() {
		n += w.HeldTokens()
	}
	return n
}

// waitNoGrants waits until the workers hold no grants (every client gave
// everything back): a request applied twice would leave one behind.
func (e *inproc) waitNoGrants(within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for e.heldTokens() > 0 {
		if time.Now().After(deadline) {
			e.t.Errorf("%d grants still held %v after every client gave its tokens back", e.heldTokens(), within)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
