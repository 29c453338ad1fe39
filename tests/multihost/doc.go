// Package multihost runs tokend the way a real deployment does: three
// servers and two workers on distinct, non-loopback addresses, and a client
// on yet another. Each "host" is a Linux network namespace that the test
// creates (ip netns), joined by veth pairs to a bridge in a namespace of
// its own, all on 10.77.0.0/24; nothing is routed outside them, so no
// traffic leaves the namespaces the test made. It checks what loopback
// tests cannot: that every address tokend registers (the workers' UDP,
// HTTP and handoff addresses, the leader's HTTP address, etcd's URLs) is
// one the other hosts can reach, even when the processes listen on
// 0.0.0.0 and are told nothing else.
//
// The test needs root and the ip command, and skips without them. It has
// no non-test code; this file is here for the package comment.
package multihost
