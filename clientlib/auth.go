package clientlib

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// Where a Client finds its key when Config.KeyFile is empty.
const (
	// KeyFileEnv names the environment variable holding the path of the
	// client key file.
	KeyFileEnv = "TOKEND_KEY_FILE"
	// DefaultKeyFile is the client key file that `go run ./cmd/tokend`
	// writes, relative to the working directory; it is used if it exists.
	DefaultKeyFile = "tokend-data/pki/client.key"
)

// clientKey is the key a Client authenticates with (wire/SPEC.md section
// 20). Read-only after Dial loads it.
type clientKey struct {
	name string
	key  auth.Key
	open auth.Key // auth.OpenKey(key)
	from string   // where it was read, for errors
}

// loadKey finds and reads the client key: Config.KeyFile, else
// $TOKEND_KEY_FILE, else DefaultKeyFile if it exists. With Config.Insecure
// there is no key (nil) and no file is read.
func loadKey(cfg *Config) (*clientKey, error) {
	if cfg.Insecure {
		return nil, nil
	}
	path := cfg.KeyFile
	if path == "" {
		path = os.Getenv(KeyFileEnv)
	}
	if path == "" {
		if _, err := os.Stat(DefaultKeyFile); err != nil {
			return nil, fmt.Errorf("%w: no client key: set Config.KeyFile, or $%s, or run where %s exists "+
				"(go run ./cmd/tokend writes it); set Config.Insecure for a cluster started with --insecure",
				ErrAuth, KeyFileEnv, DefaultKeyFile)
		}
		path = DefaultKeyFile
	}
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: client key file %s does not exist", ErrAuth, path)
		}
		return nil, fmt.Errorf("%w: client key file: %w", ErrAuth, err)
	}
	name, k, err := auth.ParseKeyFile(b)
	if err != nil {
		return nil, fmt.Errorf("%w: client key file %s: %w", ErrAuth, path, err)
	}
	return &clientKey{name: name, key: k, open: auth.OpenKey(k), from: path}, nil
}

// sessionKeys are the MACs of one session, derived from the client key,
// both nonces and the session id. auth.MAC keeps hash state: every sender
// seals with c2w under sendMu; recvLoop verifies with w2c under recvMu
// (uncontended: it is the only receiver).
type sessionKeys struct {
	sendMu sync.Mutex // guards c2w
	c2w    *auth.MAC
	recvMu sync.Mutex // guards w2c
	w2c    *auth.MAC
}

func newSessionKeys(k auth.Key, clientNonce, workerNonce auth.Nonce, session uint64) *sessionKeys {
	sk := auth.SessionKey(k, clientNonce, workerNonce, session)
	return &sessionKeys{w2c: auth.NewMAC(sk, auth.WorkerToClient), c2w: auth.NewMAC(sk, auth.ClientToWorker)}
}

// seal tags datagram b of the session and sets its checksum.
func (sk *sessionKeys) seal(b []byte) error {
	sk.sendMu.Lock()
	defer sk.sendMu.Unlock()
	return sk.c2w.Seal(b)
}

// verify reports whether datagram b carries the session's worker tag.
func (sk *sessionKeys) verify(b []byte) bool {
	sk.recvMu.Lock()
	defer sk.recvMu.Unlock()
	return sk.w2c.Verify(b)
}

// errNoSessionKeys: a session datagram to send before the session's keys
// are known (a bug: nothing but SESSION_OPEN is sent before).
var errNoSessionKeys = errors.New("clientlib: no session keys yet")

// sealSession tags b, a datagram of the session, unless the client is
// insecure (the zero tag the encoder wrote stays).
func (c *Client) sealSession(b []byte) error {
	if c.key == nil {
		return nil
	}
	sk := c.keys.Load()
	if sk == nil {
		return errNoSessionKeys
	}
	return sk.seal(b)
}

// verifySession reports whether datagram b, which names the client's
// session, carries the worker's tag; an insecure client checks nothing.
func (c *Client) verifySession(b []byte) bool {
	if c.key == nil {
		return true
	}
	sk := c.keys.Load()
	return sk != nil && sk.verify(b)
}

// zeroTag reports whether datagram b carries the all-zero auth tag of an
// unauthenticated sender.
func zeroTag(b []byte) bool {
	for _, x := range b[wire.AuthOffset : wire.AuthOffset+wire.AuthLen] {
		if x != 0 {
			return false
		}
	}
	return true
}

// authFailed counts a datagram dropped because its tag did not verify.
func (c *Client) authFailed(what string, b []byte) {
	c.authFailures.Add(1)
	c.log.Debug("dropped datagram: auth tag does not verify", "what", what, "len", len(b))
}

// Stats counts what a Client did that its API does not otherwise show.
type Stats struct {
	// AuthFailures counts datagrams dropped because their auth tag did not
	// verify under the session's (or, while opening, the open) key:
	// forgeries, or datagrams from another cluster.
	AuthFailures uint64
	// AnnouncementsDropped counts the multicast announcements the client
	// dropped, by reason (announce.Listener.Stats): "unsigned" and
	// "signature" for forgeries, "timestamp" for replays, "version" for
	// another format version; nil without Config.Announce.
	AnnouncementsDropped map[string]uint64
	// Sent counts the datagrams the client sent (retransmissions included),
	// each datagram in a BUNDLE counted.
	Sent uint64
	// Bundles (wire/SPEC.md section 22; Config.NoBundle): BundlesSent
	// counts the BUNDLEs the client sent and BundledSent the datagrams in
	// them (Sent − BundledSent + BundlesSent UDP datagrams went out);
	// BundlesReceived counts the BUNDLE_REPLYs taken and BundledReceived
	// the datagrams in them (each then checked as if it came alone),
	// BundlesDropped the BUNDLE_REPLYs dropped whole for a bad layout.
	BundlesSent, BundledSent, BundlesReceived, BundledReceived, BundlesDropped uint64
	// AcksHeld counts the REVOKE_ACKs and GRANT_ACKs held to go ahead of
	// the next request to their worker in its BUNDLE (a worker that takes
	// bundles; at most 2 ms), and AcksAlone those of them sent alone
	// because no request came meanwhile.
	AcksHeld, AcksAlone uint64
	// The token cache: CacheHits counts the Acquires served from it (no
	// datagram), CacheMisses those that went to a worker while the cache
	// was on. CacheEvictions counts the cached grants given back for the
	// cache's bounds (TokenCache, TokenCacheIdle), CacheRevoked those given
	// back on a worker's REVOKE (the application was not asked), and
	// CacheDropped those given back before an Acquire of their name that
	// they did not serve (conflicting, or no longer fresh). Cached is how
	// many grants the cache holds now. CacheSplits counts the cached grants
	// a REVOKE wanted only a prefix or suffix of (a grown range): that part
	// was given back and the rest stayed cached.
	CacheHits, CacheMisses, CacheEvictions, CacheRevoked, CacheDropped, CacheSplits uint64
	Cached                                                                          int
	// AcquireBatch: BatchGranted counts the tokens granted by
	// ACQUIRE_BATCH datagrams, BatchFallbacks the shards whose batch
	// conflicted and that were acquired token by token instead.
	BatchGranted, BatchFallbacks uint64
}

// Stats returns the Client's counters.
func (c *Client) Stats() Stats {
	s := Stats{AuthFailures: c.authFailures.Load(), Sent: c.sent.Load(),
		CacheHits: c.cacheHits.Load(), CacheMisses: c.cacheMisses.Load(), CacheEvictions: c.cacheEvictions.Load(),
		CacheRevoked: c.cacheRevoked.Load(), CacheDropped: c.cacheDropped.Load(), CacheSplits: c.cacheSplits.Load(),
		BatchGranted: c.batchGrants.Load(), BatchFallbacks: c.batchFallbacks.Load(),
		BundlesReceived: c.bundlesRecv.Load(), BundledReceived: c.bundledRecv.Load(), BundlesDropped: c.bundlesBad.Load()}
	if c.sendq != nil {
		s.BundlesSent, s.BundledSent = c.sendq.sentBundle.Load(), c.sendq.inBundles.Load()
		s.AcksHeld, s.AcksAlone = c.sendq.acksHeld.Load(), c.sendq.acksAlone.Load()
	}
	c.mu.Lock()
	s.Cached = c.cache.n
	c.mu.Unlock()
	if c.ann != nil {
		s.AnnouncementsDropped = c.ann.Stats().Dropped
	}
	return s
}
