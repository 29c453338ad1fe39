package coordinator

import (
	"bufio"
	"context"
	"crypto/hmac"
	"encoding/json"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/cluster/handoffauth"
	"github.com/tokend/tokend/embedded/etcdtest"
	"github.com/tokend/tokend/wire/auth"
)

// fakeWorker answers the deadlock detector's frames on a TCP listener with
// waits that the test sets, and records the victims it is sent. Victims are
// "ended" (and their waits dropped) as a worker would. With a key
// (handoffauth.Key of a cluster key) it authenticates the detector and
// seals its answers as a worker with Auth does (wire/SPEC.md section 18);
// badSeal makes its seals wrong.
type fakeWorker struct {
	id, inc   string
	ln        net.Listener
	wg        sync.WaitGroup
	key       []byte
	badSeal   bool
	lastNonce []byte // serve's goroutine only

	mu      sync.Mutex // guards the fields below
	waits   func(n int) []cluster.WaitEdge
	asked   int
	victims []cluster.DeadlockVictim
	refused int // queries refused: no nonce, or a wrong proof
}

func startFakeWorker(t *testing.T, cli *clientv3.Client, id, inc string, waits func(n int) []cluster.WaitEdge) *fakeWorker {
	t.Helper()
	return startFakeWorkerKey(t, cli, id, inc, nil, false, waits)
}

func startFakeWorkerKey(t *testing.T, cli *clientv3.Client, id, inc string, key []byte, badSeal bool, waits func(n int) []cluster.WaitEdge) *fakeWorker {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeWorker{id: id, inc: inc, ln: ln, key: key, badSeal: badSeal, waits: waits}
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
	reqFrame, err := handoffauth.ReadRawFrame(r, 1<<20)
	if err != nil {
		return
	}
	var req cluster.DeadlockRequest
	if handoffauth.UnmarshalFrame(reqFrame, &req) != nil || req.Deadlock == nil {
		return
	}
	var nonce []byte
	if f.key != nil {
		if !f.authenticate(c, r, reqFrame, &req) {
			f.mu.Lock()
			f.refused++
			f.mu.Unlock()
			return
		}
		nonce = f.lastNonce
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
	frame, err := handoffauth.MarshalFrame(ans)
	if err != nil {
		return
	}
	if f.key != nil {
		mac := handoffauth.MAC(f.key, handoffauth.DirAnswerer, req.Nonce, nonce, reqFrame, frame)
		if f.badSeal {
			mac[0] ^= 1
		}
		seal, _ := handoffauth.MarshalFrame(handoffauth.Seal{MAC: mac})
		frame = append(frame, seal...)
	}
	c.Write(frame)
}

// authenticate is a worker's side of an authenticated exchange: challenge
// the asker and check its proof. It leaves its nonce in lastNonce (answer
// runs on serve's goroutine only).
func (f *fakeWorker) authenticate(c net.Conn, r *bufio.Reader, reqFrame []byte, req *cluster.DeadlockRequest) bool {
	if len(req.Nonce) != handoffauth.NonceLen {
		handoffauth.WriteFrame(c, handoffauth.Challenge{Proto: 1, Error: "authentication required"})
		return false
	}
	nonce, err := handoffauth.NewNonce()
	if err != nil {
		return false
	}
	if _, err := handoffauth.WriteFrame(c, handoffauth.Challenge{Proto: 1, Nonce: nonce}); err != nil {
		return false
	}
	var p handoffauth.Proof
	if handoffauth.ReadFrame(r, handoffauth.MaxProofFrame, &p) != nil ||
		!hmac.Equal(p.Proof, handoffauth.MAC(f.key, handoffauth.DirAsker, req.Nonce, nonce, reqFrame)) {
		return false
	}
	f.lastNonce = nonce
	return true
}

func (f *fakeWorker) got() (asked int, victims []cluster.DeadlockVictim) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked, append([]cluster.DeadlockVictim(nil), f.victims...)
}

func (f *fakeWorker) refusals() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refused
}

func startDetecting(t *testing.T, cli *clientv3.Client) (*Coordinator, *prometheus.Registry) {
	t.Helper()
	return startDetectingKey(t, cli, nil)
}

// startDetectingKey starts a leader whose detector holds cluster key k
// (nil: none) and runs a round every 20 ms.
func startDetectingKey(t *testing.T, cli *clientv3.Client, k *auth.Key) (*Coordinator, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(Config{Client: cli, Name: "s1", Cluster: testCluster(8), LeaderTTL: 2 * time.Second,
		Deadlock: DeadlockConfig{Interval: 20 * time.Millisecond}, Registry: reg, ClusterKey: k})
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
// and counts one deadlock across workers. Without keys (--insecure) and
// with the cluster key on the leader and both workers.
func TestDetectorAcrossWorkers(t *testing.T) {
	k := mustKey(t)
	for _, tc := range []struct {
		name string
		k    *auth.Key
	}{{"insecure", nil}, {"authenticated", &k}} {
		t.Run(tc.name, func(t *testing.T) {
			var key []byte
			if tc.k != nil {
				key = handoffauth.Key(*tc.k)
			}
			_, cli := etcdtest.StartOne(t)
			w1 := startFakeWorkerKey(t, cli, "w1", "a1", key, false,
				steady(cluster.WaitEdge{Shard: 3, Epoch: 1, Session: 1, Req: 5, AgeMs: 900, Holder: 2, Fence: 22}))
			w2 := startFakeWorkerKey(t, cli, "w2", "a2", key, false,
				steady(cluster.WaitEdge{Shard: 7, Epoch: 2, Session: 2, Req: 9, AgeMs: 300, Holder: 1, Fence: 11}))
			_, reg := startDetectingKey(t, cli, tc.k)
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
			if r := w1.refusals() + w2.refusals(); r != 0 {
				t.Fatalf("the workers refused %d queries", r)
			}
		})
	}
}

// TestDetectorKeyMismatch: when the leader and the workers do not share
// the cluster key, no victim is ever chosen from the same cycle as
// TestDetectorAcrossWorkers. A worker with the key refuses a leader
// without it (or with another) before it lists or ends anything; a leader
// with the key refuses, and counts, an answer without a challenge (a
// worker without the key) or with a wrong seal.
func TestDetectorKeyMismatch(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	for _, tc := range []struct {
		name       string
		leader     *auth.Key
		worker     *auth.Key
		badSeal    bool
		leaderSees string // reason the leader counts; "" = the workers refuse
	}{
		{"leader without key", nil, &k, false, ""},
		{"leader with another key", &other, &k, false, ""},
		{"workers without key", &k, nil, false, "no_challenge"},
		{"wrong seal", &k, &k, true, "bad_seal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var key []byte
			if tc.worker != nil {
				key = handoffauth.Key(*tc.worker)
			}
			_, cli := etcdtest.StartOne(t)
			w1 := startFakeWorkerKey(t, cli, "w1", "a1", key, tc.badSeal,
				steady(cluster.WaitEdge{Shard: 3, Epoch: 1, Session: 1, Req: 5, AgeMs: 900, Holder: 2, Fence: 22}))
			w2 := startFakeWorkerKey(t, cli, "w2", "a2", key, tc.badSeal,
				steady(cluster.WaitEdge{Shard: 7, Epoch: 2, Session: 2, Req: 9, AgeMs: 300, Holder: 1, Fence: 11}))
			_, reg := startDetectingKey(t, cli, tc.leader)
			// 20 rounds: with a matching key the victim is chosen in the
			// third (TestDetectorAcrossWorkers).
			waitFor(t, "20 rounds", 10*time.Second, func() bool {
				return gatherCounter(t, reg, "tokend_coordinator_deadlock_rounds_total", "", "") >= 20
			})
			_, v1 := w1.got()
			_, v2 := w2.got()
			if len(v1)+len(v2) != 0 {
				t.Fatalf("victims chosen without authenticated waits: w1 %+v, w2 %+v", v1, v2)
			}
			if tc.leaderSees != "" {
				if n := gatherCounter(t, reg, "tokend_coordinator_deadlock_auth_failures_total", "reason", tc.leaderSees); n < 20 {
					t.Fatalf("%s counted %v times in 20 rounds", tc.leaderSees, n)
				}
			} else if w1.refusals() < 19 || w2.refusals() < 19 {
				t.Fatalf("the workers refused %d and %d queries in 20 rounds", w1.refusals(), w2.refusals())
			}
			if n := deadlockCount(t, reg, "across_workers"); n != 0 {
				t.Fatalf("%v deadlocks counted", n)
			}
		})
	}
}

func mustKey(t *testing.T) auth.Key {
	t.Helper()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
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
	return gatherCounter(t, reg, "tokend_coordinator_deadlocks_total", "kind", kind)
}

// gatherCounter is the value of counter name{label=value} in reg (of
// counter name without labels for label ""), 0 if it has no such series.
func gatherCounter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestDetectorWarnOncePerMinute: an unauthenticated answer is logged at
// WARN at most once a minute per worker.
func TestDetectorWarnOncePerMinute(t *testing.T) {
	w := warnings{last: map[string]time.Time{}}
	t0 := time.Unix(1000, 0)
	var got []bool
	for _, at := range []struct {
		id string
		d  time.Duration
	}{{"w1", 0}, {"w1", 30 * time.Second}, {"w2", 31 * time.Second}, {"w1", 59 * time.Second}, {"w1", 61 * time.Second}, {"w2", 62 * time.Second}} {
		got = append(got, w.due(at.id, t0.Add(at.d)))
	}
	if want := []bool{true, false, true, false, true, false}; !slices.Equal(got, want) {
		t.Fatalf("WARN due %v, want %v", got, want)
	}
}
