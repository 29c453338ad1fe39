// Package embedded runs an etcd member inside the tokend process
// (go.etcd.io/etcd/server/v3/embed), so a deployment needs no separate etcd:
// one member for the all-in-one default, three for a real cluster ("embedded
// etcd on three servers"). The coordinator and the workers talk to it through
// an ordinary clientv3.Client; clients of the token service never do.
//
// It owns the member's life cycle and nothing else: [Start] applies defaults
// suited to a LAN (periodic auto-compaction, which etcd leaves off; the
// backend quota; zap at warn level; heartbeat and election at etcd's
// 100 ms / 1 s), waits until the member is ready and surfaces start errors
// instead of hanging; [Member.Close] stops it; [Replace] swaps a dead member
// of a cluster for a new one with an empty data directory.
//
// Security: with TLS files (Config.ClientTLS, Config.PeerTLS) the member
// serves https only, requires a client certificate of the cluster's CA on
// both sides (the common name of a client certificate is the etcd user),
// and turns etcd authentication on when it starts, idempotently and safely
// if several members of a new cluster race: user "tokend" with role
// "tokend" (read-write on /tokend/, nothing else) and user "root". The
// gRPC gateway (JSON at /v3/...) is always off. Without TLS files
// everything is plain http and open to whoever reaches the URLs.
//
// Metrics: etcd registers its collectors on prometheus.DefaultRegisterer when
// its packages are initialised; this package opens no metrics listener of its
// own. The daemon serves them by gathering the default registry alongside its
// own.
//
// Shutdown order matters: close every clientv3.Client, watch, lease
// keep-alive and concurrency.Session that talks to a member before closing
// the member. etcd stops its gRPC server gracefully and waits for open
// streams up to its request timeout (7 s with the default election timeout)
// before cutting them.
//
// The sub-package etcdtest starts members on free loopback ports for other
// packages' tests.
package embedded
