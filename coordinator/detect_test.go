package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/embedded/etcdtest"
)

// fakeWorker answers the deadlock detector's frames on a TCP listener with
// waits that the test sets, and records the victims it is sent. Victims are
// "ended" (and their waits dropped) as a worker would.
type fakeWorker struct {
	id, inc string
	ln      net.Listener
	wg      sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	waits   func(n int) []cluster.WaitEdge
	asked   int
	victims []cluster.DeadlockVictim
}

func startFakeWorker(t *testing.T, cli *clientv3.Client, id, inc string, waits func(n int) []cluster.WaitEdge) *fakeWorker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWorker{id: id, inc: inc, ln: ln, waits: waits}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	b, _ := json.Marshal(cluster.Worker{ID: id, Incarnation: inc, UDP: "127.0.0.1:1", Handoff: ln.Addr().String(), Version: cluster.Version})
	if _, err := cli.Put(context.Background(), cluster.WorkerKey(id), string(b)); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeWorker) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.answer(c)
	}
}

func (f *fakeWorker) answer(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(r, body); err != nil {
		return
	}
	var req cluster.DeadlockRequest
	if json.Unmarshal(body, &req) != nil || req.Deadlock == nil {
		return
	}
	ans := cluster.DeadlockAnswer{Proto: cluster.DeadlockProto, Worker: f.id, Incarnation: f.inc}
	f.mu.Lock()
	ans.Ended = req.Deadlock.Victims
	f.victims = append(f.victims, req.Deadlock.Victims...)
	if req.Deadlock.Waits {
		for _, e := range f.waits(f.asked) {
			ended := false
			for _, v := range f.victims {
				ended = ended || v.Session == e.Session && v.Req == e.Req
			}
			if !ended {
				ans.Waits = append(ans.Waits, e)
			}
		}
		f.asked++
	}
	f.mu.Unlock()
	b, _ := json.Marshal(ans)
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...))
}

func (f *fakeWorker) got() (asked int, victims []cluster.DeadlockVictim) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked, append([]cluster.DeadlockVictim(nil), f.victims...)
}

func startDetecting(t *testing.T, cli *clientv3.Client) (*Coordinator, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(Config{Client: cli, Name: "s1", Cluster: testCluster(8), LeaderTTL: 2 * time.Second,
		Deadlock: DeadlockConfig{Interval: 20 * time.Millisecond}, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, reg
}

func steady(ws ...cluster.WaitEdge) func(int) []cluster.WaitEdge {
	return func(int) []cluster.WaitEdge { return ws }
}

// TestDetectorAcrossWorkers: s1 waits on w1 for s2's grant, s2 waits on w2
// for s1's; the leader sends the younger request, s2's, to w2 as the victim
// and counts one deadlock across workers.
func TestDetectorAcrossWorkers(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	w1 := startFakeWorker(t, cli, "w1", "a1", steady(cluster.WaitEdge{Shard: 3, Epoch: 1, Session: 1, Req: 5, AgeMs: 900, Holder: 2, Fence: 22}))
	w2 := startFakeWorker(t, cli, "w2", "a2", steady(cluster.WaitEdge{Shard: 7, Epoch: 2, Session: 2, Req: 9, AgeMs: 300, Holder: 1, Fence: 11}))
	_, reg := startDetecting(t, cli)
	waitFor(t, "a victim at w2", 10*time.Second, func() bool { _, v := w2.got(); return len(v) > 0 })
	_, v2 := w2.got()
	if want := (cluster.DeadlockVictim{Shard: 7, Epoch: 2, Session: 2, Req: 9}); len(v2) != 1 || v2[0] != want {
		t.Fatalf("victims at w2 %+v, want [%+v]", v2, want)
	}
	if _, v1 := w1.got(); len(v1) != 0 {
		t.Fatalf("victims at w1 %+v, want none", v1)
	}
	waitFor(t, "the deadlock counted", 5*time.Second, func() bool {
		return deadlockCount(t, reg, "across_workers") == 1
	})
}

// TestDetectorNeedsTwoRounds: a wait that is not the same in two
// consecutive rounds (here w2's holder fence changes every round, as
// snapshots of a busy token would) never makes a cycle.
func TestDetectorNeedsTwoRounds(t *testing.T) {
	_, cli := etcdtest.StartOne(t)
	w1 := startFakeWorker(t, cli, "w1", "a1", steady(cluster.WaitEdge{Shard: 3, Epoch: 1, Session: 1, Req: 5, AgeMs: 900, Holder: 2, Fence: 22}))
	w2 := startFakeWorker(t, cli, "w2", "a2", func(n int) []cluster.WaitEdge {
		return []cluster.WaitEdge{{Shard: 7, Epoch: 2, Session: 2, Req: 9, AgeMs: 300, Holder: 1, Fence: 11 + uint64(n)}}
	})
	startDetecting(t, cli)
	waitFor(t, "20 rounds at both workers", 10*time.Second, func() bool {
		a1, _ := w1.got()
		a2, _ := w2.got()
		return a1 >= 20 && a2 >= 20
	})
	_, v1 := w1.got()
	_, v2 := w2.got()
	if len(v1)+len(v2) != 0 {
		t.Fatalf("victims chosen from unconfirmed waits: w1 %+v, w2 %+v", v1, v2)
	}
}

func deadlockCount(t *testing.T, reg *prometheus.Registry, kind string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tokend_coordinator_deadlocks_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
