// Package announce is tokend's IP multicast announcements: workers say "I am
// at this UDP address and have applied delegation map version V", and
// clients listen, so that they fetch a new map within milliseconds of a
// change and can find workers without a seed list (docs/ARCHITECTURE.md, "Discovery
// and announcements"). Announcements are hints: a client acts on one only
// by asking a worker (MAP_REQUEST, wire/SPEC.md section 15), so a lost or
// stale announcement costs at most a useless request. In a cluster that
// authenticates, workers sign their announcements with the announce signing
// key derived from the cluster key (SigningKey) and clients, given its
// public half (PublicKey; `tokenctl announce-key` prints it), drop and count
// every announcement that is unsigned, badly signed or replayed: a seedless
// client never takes a forger for a worker.
//
// The datagram format is specified in SPEC.md in this folder (magic "TA",
// version 2, CRC32C, cluster name, map version, worker address, send time,
// Ed25519 signature); Append, AppendSigned, Decode and DecodeVerify
// implement it, and never panic. Sender and Listener are the
// thin shell: sockets (golang.org/x/net/ipv4), a heartbeat timer and a
// receive goroutine around the pure tracker (tracker.go), which decides
// with time as an input which datagrams are news.
//
// # Configuration
//
// Config.Enabled is false by default. With it set, the defaults are group
// DefaultGroup (239.255.84.75:7790, RFC 2365 local scope), the loopback
// interface, cluster name DefaultCluster, a heartbeat every second and TTL 1.
// The loopback default suits a cluster on one host (tokend up, tests) and
// never puts datagrams on a LAN by accident; a cluster spread over hosts
// names its LAN interface (e.g. "eth0") on every host. Clusters sharing a
// host or LAN need distinct cluster names (or groups or ports).
//
// Multicast on loopback works on Linux although "lo" lacks the MULTICAST
// flag, provided the sender sets IP_MULTICAST_IF (this package always does)
// and lo is up; in a fresh network namespace lo is down. Available(ifname)
// probes with a real round trip: tests skip on it, the daemon disables
// announcements with a warning when it fails.
//
// # Using it
//
// Worker side, one Sender per worker process, created once the worker is
// registered (its address is final):
//
//	cfg.SigningKey = announce.SigningKey(clusterKey) // nil: unsigned (--insecure)
//	s, err := announce.NewSender(cfg, doc.UDP, doc.ID) // announces at once, then every cfg.Interval
//	...
//	s.SetMapVersion(m.Version) // after every map the worker applies; non-blocking, may be called under a lock
//	...
//	s.Close() // on shutdown, after the UDP socket is closed: sends "bye", clients forget the worker at once
//
// Client side, one Listener per client:
//
//	cfg.PublicKey = announceKey // or cfg.Insecure = true for an --insecure cluster
//	l, err := announce.Listen(cfg, func(ev announce.Event) {
//		if ev.Ann.MapVersion > myMapVersion() {
//			kickMapRefresh() // must not block: runs on the listener's goroutine
//		}
//	})
//	peers, err := l.WaitWorkers(ctx) // no seeds: the announced workers (Peer.Worker) are the seeds
//	...
//	l.Close() // leaves the group, waits for its goroutine
//
// Every accepted announcement is passed on, heartbeats included (Event.Kind
// says whether it is news), so a client whose map fetch failed retries at
// the next heartbeat. Duplicates, overtaken datagrams, other clusters and
// malformed datagrams are dropped and counted (Listener.Stats).
//
// # Integration in tokend
//
// Who sends what, when: every worker (not the coordinator, which is not on
// the data path and has no address clients can use) runs a Sender that
// announces its UDP address and the map version it has applied: at once
// when it applies a newer map, and every second. So an announced version is
// one that the announcing worker can already serve a MAP_REQUEST for.
// Clients with Announce enabled run a Listener; when an announced version
// is newer than their map they kick their map refresh (which asks their
// home worker, then the map's workers, then the seeds); with no seeds they
// wait in Dial for the first announced workers and use them as seeds.
//
// The pieces: worker/worker.go (Config.Announce; Start creates the Sender
// after registering, signing with Auth.ClusterKey's announce key; setMap
// announces each applied map), clientlib (Config.Announce with its
// PublicKey; without seeds Dial waits for announced workers; a newer
// announced version kicks the map refresh), cmd/tokend (--announce flags)
// and cmd/tokenctl (announce-key).
package announce
