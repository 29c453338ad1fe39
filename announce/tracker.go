package announce

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"
)

// Kind says what an Event tells.
type Kind uint8

// Event kinds.
const (
	// KindNew: a worker heard for the first time, again after it was
	// forgotten (three missed heartbeats or a bye), or restarted (a new
	// Sender id at the same address).
	KindNew Kind = iota + 1
	// KindNewer: a known worker announces a higher map version than before.
	KindNewer
	// KindHeartbeat: a known worker, nothing new.
	KindHeartbeat
	// KindBye: the worker is closing; it is forgotten.
	KindBye
)

func (k Kind) String() string {
	switch k {
	case KindNew:
		return "new"
	case KindNewer:
		return "newer"
	case KindHeartbeat:
		return "heartbeat"
	case KindBye:
		return "bye"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one accepted announcement, as a Listener delivers it.
type Event struct {
	Kind Kind
	// Worker is the announced worker address, with an unspecified host
	// (0.0.0.0, ::) replaced by the datagram's source address: where to
	// send requests.
	Worker string
	// Ann is the announcement as decoded.
	Ann Announcement
	// From is the datagram's source address and At its arrival time.
	From netip.AddrPort
	At   time.Time
}

// Peer is a worker a Listener has heard from and not forgotten.
type Peer struct {
	Worker     string // as in Event.Worker
	WorkerID   string
	MapVersion uint64 // the highest the worker announced
	LastSeen   time.Time
	Interval   time.Duration
}

// forgetAfter is how many heartbeat intervals of silence make a listener
// forget a worker.
const forgetAfter = 3

// maxPeers bounds a tracker's table: announcements of an insecure cluster
// are unauthenticated, and a flood of forged ones must not grow memory
// without bound.
const maxPeers = 4096

// Drop reasons of the tracker (and Listener.Stats labels).
const (
	dropDuplicate = "duplicate" // a (sender, seq) already seen or overtaken
	dropStale     = "stale"     // from a sender instance that was replaced or said bye
	dropFull      = "full"      // the table is full of live workers
	dropTimestamp = "timestamp" // signed, but sent more than MaxSkew from now: a replay
)

// tracker is the pure part of a Listener: which workers are alive, with
// what map version, and whether a datagram is news. Time is an input.
type tracker struct {
	max       int
	peers     map[string]*peerState // by Event.Worker
	lastPrune time.Time
}

type peerState struct {
	sender, seq uint64
	prev        uint64 // the sender id this one replaced: its late datagrams are stale
	version     uint64
	id          string
	interval    time.Duration
	seen        time.Time
	gone        bool // said bye: kept until it expires so that its late datagrams are stale
}

func newTracker(max int) *tracker {
	return &tracker{max: max, peers: map[string]*peerState{}}
}

func (p *peerState) expired(now time.Time) bool {
	return now.Sub(p.seen) > forgetAfter*p.interval
}

// workerAddr is the address to use for an announcement of addr that came
// from from: addr itself, unless its host is an unspecified IP.
func workerAddr(addr string, from netip.AddrPort) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsUnspecified() || !from.IsValid() {
		return addr
	}
	return net.JoinHostPort(from.Addr().Unmap().String(), port)
}

// observe records announcement a of worker (see workerAddr) heard at now
// and returns its kind, or the reason to drop it.
func (t *tracker) observe(a *Announcement, worker string, now time.Time) (Kind, string) {
	if now.Sub(t.lastPrune) >= time.Second || len(t.peers) >= t.max {
		t.prune(now)
	}
	p := t.peers[worker]
	if p != nil && p.expired(now) {
		delete(t.peers, worker)
		p = nil
	}
	switch {
	case p == nil:
		if a.Bye {
			return 0, dropStale
		}
		if len(t.peers) >= t.max {
			return 0, dropFull
		}
		t.peers[worker] = &peerState{sender: a.Sender, seq: a.Seq, version: a.MapVersion,
			id: a.WorkerID, interval: a.Interval, seen: now}
		return KindNew, ""
	case a.Sender == p.prev, a.Sender == p.sender && p.gone:
		return 0, dropStale
	case a.Sender != p.sender:
		// The worker restarted (or another process took its address).
		if a.Bye {
			return 0, dropStale
		}
		*p = peerState{sender: a.Sender, seq: a.Seq, prev: p.sender, version: a.MapVersion,
			id: a.WorkerID, interval: a.Interval, seen: now}
		return KindNew, ""
	case a.Seq <= p.seq:
		return 0, dropDuplicate
	case a.Bye:
		p.seq, p.seen, p.gone = a.Seq, now, true
		return KindBye, ""
	}
	p.seq, p.id, p.interval, p.seen = a.Seq, a.WorkerID, a.Interval, now
	if a.MapVersion > p.version {
		p.version = a.MapVersion
		return KindNewer, ""
	}
	return KindHeartbeat, ""
}

// prune forgets the workers that missed forgetAfter heartbeats.
func (t *tracker) prune(now time.Time) {
	t.lastPrune = now
	for w, p := range t.peers {
		if p.expired(now) {
			delete(t.peers, w)
		}
	}
}

// live returns the workers not forgotten at now, sorted by address.
func (t *tracker) live(now time.Time) []Peer {
	var out []Peer
	for w, p := range t.peers {
		if !p.gone && !p.expired(now) {
			out = append(out, Peer{Worker: w, WorkerID: p.id, MapVersion: p.version, LastSeen: p.seen, Interval: p.interval})
		}
	}
	slices.SortFunc(out, func(a, b Peer) int {
		switch {
		case a.Worker < b.Worker:
			return -1
		case a.Worker > b.Worker:
			return 1
		}
		return 0
	})
	return out
}
