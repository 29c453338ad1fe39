// Package tokend is a distributed token service: clients acquire and release
// named, fenced, revocable tokens over UDP from sharded stateless workers,
// while an embedded etcd cluster holds only the control state. See README.md
// for the tour and docs/ARCHITECTURE.md for the design; this package holds
// only the tests that keep the layering and the documents' links honest.
package tokend
