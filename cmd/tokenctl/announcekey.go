package main

import (
	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/wire/auth"
)

const announceKeyUsage = `announce-key [--cluster-key-file FILE | --certs-dir DIR] [-o text|json]

Print the cluster's announce key: the public key that verifies the workers'
multicast announcements (announce/SPEC.md, "Signature"). It is derived from
the cluster key, so run this where cluster.key is (a server's --certs-dir);
the announce key itself is not secret. Give it to every client that finds
workers by announcements (clientlib Config.Announce.PublicKey, read with
announce.ParsePublicKey): without it such a client refuses to start.`

// cmdAnnounceKey prints the announce public key of the cluster key file.
var cmdAnnounceKey = publicKeyCmd("announce-key", announceKeyUsage, "announce_key", func(k auth.Key) string { return announce.FormatPublicKey(announce.PublicKey(k)) })
