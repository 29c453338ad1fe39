package announce

import (
	"net/netip"
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ann := func(sender, seq, version uint64) *Announcement {
		return &Announcement{Cluster: "c", Addr: "10.0.0.1:7700", WorkerID: "w1", Interval: 100 * time.Millisecond,
			Sender: sender, Seq: seq, MapVersion: version}
	}
	tr := newTracker(maxPeers)
	const w = "10.0.0.1:7700"
	steps := []struct {
		a        *Announcement
		ms       int
		kind     Kind
		drop     string
		liveWant int
	}{
		{ann(1, 1, 5), 0, KindNew, "", 1},
		{ann(1, 1, 5), 1, 0, dropDuplicate, 1},      // the same datagram twice
		{ann(1, 2, 5), 100, KindHeartbeat, "", 1},   // nothing new
		{ann(1, 4, 6), 200, KindNewer, "", 1},       // version up (seq 3 lost)
		{ann(1, 3, 5), 201, 0, dropDuplicate, 1},    // overtaken
		{ann(1, 5, 6), 300, KindHeartbeat, "", 1},   //
		{ann(2, 1, 6), 310, KindNew, "", 1},         // restarted: new sender id
		{ann(1, 6, 6), 320, 0, dropStale, 1},        // late datagram of the old instance
		{ann(2, 2, 7), 400, KindNewer, "", 1},       //
		{ann(2, 3, 6), 500, KindHeartbeat, "", 1},   // a lower version never lowers the known one
		{ann(2, 4, 7), 900, KindNew, "", 1},         // 400 ms silent > 3 intervals: forgotten, new again
		{byeOf(ann(2, 5, 7)), 950, KindBye, "", 0},  // bye: gone at once
		{ann(2, 3, 7), 960, 0, dropStale, 0},        // late datagram after bye
		{byeOf(ann(9, 1, 7)), 970, 0, dropStale, 0}, // bye of an unknown sender
		{ann(3, 1, 7), 980, KindNew, "", 1},         // a new instance after bye
	}
	for i, s := range steps {
		kind, drop := tr.observe(s.a, w, at(s.ms))
		if kind != s.kind || drop != s.drop {
			t.Fatalf("step %d: observe = %v, %q; want %v, %q", i, kind, drop, s.kind, s.drop)
		}
		if n := len(tr.live(at(s.ms))); n != s.liveWant {
			t.Fatalf("step %d: %d live, want %d", i, n, s.liveWant)
		}
	}
	ps := tr.live(at(980))
	if ps[0] != (Peer{Worker: w, WorkerID: "w1", MapVersion: 7, LastSeen: at(980), Interval: 100 * time.Millisecond}) {
		t.Fatalf("live = %+v", ps)
	}
	if len(tr.live(at(1281))) != 0 {
		t.Fatal("not forgotten after three missed heartbeats")
	}
}

func byeOf(a *Announcement) *Announcement { a.Bye = true; return a }

func TestTrackerFullAndPrune(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tr := newTracker(2)
	a := &Announcement{Cluster: "c", Addr: "x:1", Interval: time.Second, Sender: 1, Seq: 1}
	for i, w := range []string{"a:1", "b:1"} {
		if k, d := tr.observe(a, w, t0); k != KindNew {
			t.Fatalf("%d: %v %q", i, k, d)
		}
	}
	if _, d := tr.observe(a, "c:1", t0); d != dropFull {
		t.Fatalf("third worker: %q, want full", d)
	}
	// Once the first two are forgotten, there is room again.
	if k, d := tr.observe(a, "c:1", t0.Add(3*time.Second+1)); k != KindNew {
		t.Fatalf("after expiry: %v %q", k, d)
	}
	if n := len(tr.peers); n != 1 {
		t.Fatalf("%d entries after pruning, want 1", n)
	}
}

func TestWorkerAddr(t *testing.T) {
	from := netip.MustParseAddrPort("192.0.2.9:40000")
	for in, want := range map[string]string{
		"10.0.0.1:7700":  "10.0.0.1:7700",
		"0.0.0.0:7700":   "192.0.2.9:7700",
		"[::]:7700":      "192.0.2.9:7700",
		"host.example:1": "host.example:1",
		"127.0.0.1:7700": "127.0.0.1:7700",
		"[fd00::1]:7700": "[fd00::1]:7700",
	} {
		if got := workerAddr(in, from); got != want {
			t.Errorf("workerAddr(%q) = %q, want %q", in, got, want)
		}
	}
	if got := workerAddr("0.0.0.0:7700", netip.AddrPort{}); got != "0.0.0.0:7700" {
		t.Errorf("without a source: %q", got)
	}
}
