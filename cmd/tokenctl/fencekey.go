package main

import (
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/wire/auth"
)

const fenceKeyUsage = `fence-key [--cluster-key-file FILE | --certs-dir DIR] [-o text|json]

Print the cluster's public fence key, in hex (64 characters): the Ed25519
key that verifies fence proofs (docs/SECURITY.md §4; clientlib
Token.Proof). It is derived from the cluster key, so run this where
cluster.key is (a server's --certs-dir); the public key itself is not
secret. Give it to storage, which checks proofs with fenceproof.Verify (Go,
after fenceproof.ParsePublicKey) or tokend_fence_proof_verify (C). Servers
also publish it in etcd at /tokend/fence-key.`

// cmdFenceKey prints the public fence key of the cluster key file.
var cmdFenceKey = publicKeyCmd("fence-key", fenceKeyUsage, "fence_key", func(k auth.Key) string { return fenceproof.FormatPublicKey(fenceproof.PublicKey(k[:])) })
