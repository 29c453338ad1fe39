package clientlib

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tokend/tokend/announce"
	"github.com/tokend/tokend/internal/clock"
	"github.com/tokend/tokend/wire"
)

// Library is the client library name and version sent in SESSION_OPEN
// unless Config.Library says otherwise.
const Library = "go/0.1.0"

// Config configures a Client. Seeds, or Announce enabled, is required.
type Config struct {
	// Seeds are worker UDP addresses ("host:port") to open the session with
	// and to fetch the delegation map from; the map then names every worker.
	// May be empty when Announce is enabled: then the workers heard on the
	// multicast group are the seeds (Dial waits for one until ctx ends).
	Seeds []string
	// Announce, if Announce.Enabled, makes the client listen to the
	// workers' multicast announcements (package announce): an announced map
	// version newer than the client's makes it fetch the map at once.
	// Group, interface and cluster name must match the workers'. Off by
	// default; without it the client learns map changes from replies.
	// Announce.PublicKey, the cluster's announce key (`tokenctl
	// announce-key` prints it; announce.ParsePublicKey reads it), is
	// required unless Insecure: only announcements signed with it are used,
	// the others are dropped and counted (Stats). With Insecure the client
	// accepts unsigned announcements (Announce.Insecure follows Insecure).
	Announce announce.Config
	// PacketConn is the socket to use. nil: the Client opens a UDP socket on
	// an ephemeral port and closes it in Close. A PacketConn given here is
	// not closed by Close (tests pass a faultnet.Conn).
	PacketConn net.PacketConn
	// KeyFile is the client key file ("tokend-key v1 NAME BASE64URL", as
	// `tokend certs` and `tokenctl keys add` write it): every datagram of
	// the session is authenticated with it (wire/SPEC.md section 20). ""
	// = the file named by $TOKEND_KEY_FILE, else DefaultKeyFile
	// (tokend-data/pki/client.key, where `go run ./cmd/tokend` writes it)
	// if it exists in the working directory. Without a key and without
	// Insecure, Dial fails with ErrAuth.
	KeyFile string
	// Insecure talks to a cluster started with --insecure: no key is read
	// (KeyFile is ignored), datagrams carry zero auth tags and nothing the
	// workers send is checked. An authenticating cluster refuses such a
	// client.
	Insecure bool
	// SessionTTL is the session lease TTL to ask for; 0 = the worker's
	// default (10 s). The worker may clamp it; the client renews every TTL/3.
	SessionTTL time.Duration
	// Logger receives the client's structured logs; nil = discard.
	Logger *slog.Logger
	// OnRevoke is called, on a goroutine of its own, when a worker asks this
	// client to give a token back because another request conflicts with
	// it: r says which grant (its fence and mode when the REVOKE came) and
	// what to keep (at most r.Wanted, wire.NL: nothing, on r.Start..r.End).
	// The handler should flush what it caches under t and then t.Release or
	// t.Convert down to r.Wanted, passing ctx: it ends after HandlerTimeout
	// or at Close, which bounds those calls against a dead worker. Neither
	// waits behind an upgrading Convert of the same token that is still
	// queued: that one is withdrawn first. If t.Fence() is no longer
	// r.Fence, the grant was upgraded meanwhile (the new grant gets its own
	// revocation if it conflicts too). Called at most once per (fence,
	// wanted, range). nil = the default: release the token (Lost then
	// closes and Err reports ErrRevoked). Close waits for running handlers,
	// so a handler must not call Close.
	OnRevoke func(ctx context.Context, t *Token, r Revocation)
	// OnLost is called, on a goroutine of its own, when a held token is
	// lost (Token.Lost closes; err is Token.Err: the session ended, the
	// grant was not vouched for nor reclaimed in time, the reclaim was
	// refused, the default revocation handler gave it back). It is not
	// called for the application's own Release nor for the tokens that
	// Close ends. nil = none.
	OnLost func(t *Token, err error)
	// OnJeopardy is called, on a goroutine of its own, when a held token's
	// validity (Token.ValidUntil) comes within JeopardyBefore of running
	// out without having been renewed: its worker has not vouched for it
	// lately. Stop starting work that needs the token; the token is either
	// renewed (Valid stays true) or reclaimed or, past its grace, lost
	// (OnLost). Called once per stretch of doubt per token. nil = none.
	OnJeopardy func(t *Token, validUntil time.Time)
	// JeopardyBefore is how long before ValidUntil OnJeopardy is called;
	// 0 = a third of min(W, S), the workers' lease TTL and the session TTL
	// (keepalives renew every W/4 and the session every S/3, so a healthy
	// cluster never gets this close).
	JeopardyBefore time.Duration
	// HandlerTimeout bounds the context given to OnRevoke; 0 = 3 s.
	HandlerTimeout time.Duration
	// Library names the client library in SESSION_OPEN; "" = Library.
	Library string
	// RTOMin and RTOMax bound the retransmission timeout: it starts at
	// RTOMin (default 20 ms, for loopback-class links), doubles after each
	// retransmission up to RTOMax (default 1 s), with ±25 % jitter.
	RTOMin, RTOMax time.Duration
	// Drift is the clock rate difference the client tolerates between itself
	// and the workers; default 0.01. The client margin taken off every lease
	// is d·Drift + 10 ms for a lease of length d (SPEC.md section 13).
	Drift float64
	// TokenCache turns the token cache on (see "Token cache" in the package
	// documentation): how many released grants the client keeps cached for
	// a re-acquire with no datagram; DefaultTokenCache (1024) is a good
	// size. Beyond it the least recently released is given back (RELEASE,
	// in the background). 0, the default, turns it off: every Release
	// sends RELEASE and every Acquire goes to the worker.
	TokenCache int
	// TokenCacheIdle is how long a cached grant waits for a re-acquire
	// before it is given back; 0 = DefaultTokenCacheIdle (30 s).
	TokenCacheIdle time.Duration
	// NoBundle sends every datagram alone. By default the client offers
	// bundles when it opens its session (wire/SPEC.md section 22), and
	// requests that wait to be sent together to a worker that takes them
	// go in BUNDLEs, several to a UDP datagram, which saves system calls
	// and packet processing on both sides under load; an idle client
	// sends each request at once, alone, either way. BUNDLE_REPLYs are
	// taken in both cases.
	NoBundle bool
	// Now returns the current time, with a monotonic reading; nil =
	// time.Now. Tests may inject an offset or a drifting clock; it must
	// advance at roughly real speed, since timers are real.
	Now func() time.Time

	// pollEvery is how often a QUEUED request is re-polled; 0 =
	// pollInterval. Tests only.
	pollEvery time.Duration
	// ackHold is how long an acknowledgement may wait for a request to
	// ride with (batchio.go); 0 = ackHold. Tests only.
	ackHold time.Duration
	// clock runs the client's timers and, unless Now is set, tells the
	// time; nil = clock.Real. Tests only (export_test.go).
	clock clock.Clock
}

// Defaults and fixed timings.
const (
	defaultRTOMin = 20 * time.Millisecond
	defaultRTOMax = time.Second
	defaultDrift  = 0.01
	// pollInterval is how often a QUEUED request is re-polled (SPEC.md 12).
	pollInterval = 500 * time.Millisecond
	// maxInFlight bounds the unfinished requests of a session (SPEC.md 11).
	maxInFlight = 256
	// cleanupTimeout bounds the background work after a caller gives up
	// (CANCEL of a queued request, release of a stray grant).
	cleanupTimeout = 3 * time.Second
	// closeTimeout bounds each step of Close (releasing tokens, SESSION_CLOSE).
	closeTimeout = time.Second
	// marginFixed is the constant part of the client margin.
	marginFixed = 10 * time.Millisecond
)

func (cfg *Config) setDefaults() error {
	if len(cfg.Seeds) == 0 && !cfg.Announce.Enabled {
		return fmt.Errorf("%w: no seed addresses and announcements disabled", ErrBadRequest)
	}
	if cfg.Announce.Enabled {
		cfg.Announce.Insecure = cfg.Insecure
		if cfg.Announce.PublicKey == nil && !cfg.Insecure {
			return fmt.Errorf("%w: %w", ErrAuth, announce.ErrNoKey)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Library == "" {
		cfg.Library = Library
	}
	if len(cfg.Library) > wire.MaxText {
		return fmt.Errorf("%w: library name longer than %d bytes", ErrBadRequest, wire.MaxText)
	}
	if cfg.pollEvery <= 0 {
		cfg.pollEvery = pollInterval
	}
	if cfg.RTOMin <= 0 {
		cfg.RTOMin = defaultRTOMin
	}
	if cfg.RTOMax <= 0 {
		cfg.RTOMax = defaultRTOMax
	}
	if cfg.RTOMax < cfg.RTOMin {
		cfg.RTOMax = cfg.RTOMin
	}
	if cfg.Drift <= 0 {
		cfg.Drift = defaultDrift
	}
	if cfg.JeopardyBefore < 0 || cfg.HandlerTimeout < 0 {
		return fmt.Errorf("%w: negative JeopardyBefore or HandlerTimeout", ErrBadRequest)
	}
	if cfg.HandlerTimeout == 0 {
		cfg.HandlerTimeout = cleanupTimeout
	}
	if cfg.TokenCache < 0 || cfg.TokenCacheIdle < 0 {
		return fmt.Errorf("%w: negative TokenCache or TokenCacheIdle", ErrBadRequest)
	}
	if cfg.TokenCacheIdle == 0 {
		cfg.TokenCacheIdle = DefaultTokenCacheIdle
	}
	if cfg.SessionTTL < 0 || cfg.SessionTTL/time.Millisecond > 0xFFFFFFFF {
		return fmt.Errorf("%w: session TTL %v out of range", ErrBadRequest, cfg.SessionTTL)
	}
	return nil
}

// Option modifies Acquire or Convert.
type Option interface {
	applyOption(*reqOptions)
}

// ReleaseOption modifies Release.
type ReleaseOption interface {
	applyRelease(*releaseOptions)
}

type reqOptions struct {
	start, end uint64
	try        bool
	wait       time.Duration
	hasWait    bool
	value      []byte
	hasValue   bool
	detect     bool
	grow       bool
}

type releaseOptions struct {
	value    []byte
	hasValue bool
}

// collectOptions applies opts. (Without options nothing escapes to the
// heap: the hot path passes none.)
func collectOptions(opts []Option) reqOptions {
	if len(opts) == 0 {
		return reqOptions{}
	}
	o := new(reqOptions)
	for _, opt := range opts {
		opt.applyOption(o)
	}
	return *o
}

func collectReleaseOptions(opts []ReleaseOption) releaseOptions {
	if len(opts) == 0 {
		return releaseOptions{}
	}
	o := new(releaseOptions)
	for _, opt := range opts {
		opt.applyRelease(o)
	}
	return *o
}

type optionFunc func(*reqOptions)

func (f optionFunc) applyOption(o *reqOptions) { f(o) }

// Range asks for the byte range [start, end) of the token instead of the
// whole token (Acquire only; Convert keeps the grant's range). Range(0, 0)
// is the whole token. Modes conflict only on overlapping ranges.
func Range(start, end uint64) Option {
	return optionFunc(func(o *reqOptions) { o.start, o.end = start, end })
}

// Grow lets the worker grant Acquire a larger range than asked, up to the
// whole token, when no other session holds or waits on it (wire/SPEC.md
// section 10, flag GROW); Token.Range says what was granted. With the token
// cache on, a sequential writer that acquires page after page of one object
// with Grow pays one ACQUIRE per object: the later pages are cache hits.
// A later conflicting request revokes the grant as usual (this client gives
// the whole grant back; it does not yet split it).
func Grow() Option {
	return optionFunc(func(o *reqOptions) { o.grow = true })
}

// Try makes the request fail at once with ErrConflict instead of queueing
// when the token is held in a conflicting mode.
func Try() Option {
	return optionFunc(func(o *reqOptions) { o.try = true })
}

// DetectDeadlock makes a waiting Acquire or upgrading Convert take part in
// the cluster's detection of wait-for cycles across tokens (wire/SPEC.md
// section 19): if it closes a cycle of such requests, one of them (the
// youngest) fails with ErrDeadlock instead of waiting. Use it when this
// Client is one owner, like a transaction: it keeps the tokens it holds
// until this request ends. Do not use it from a Client whose goroutines
// hold and wait independently (one may give its token back on
// revocation): a cycle through it is no deadlock. A conversion deadlock
// on one token is answered whether or not the option is given.
func DetectDeadlock() Option {
	return optionFunc(func(o *reqOptions) { o.detect = true })
}

// Wait bounds how long the request may wait in the token's queue; the worker
// answers TIMEOUT (ErrTimeout) after d. Without Wait the request waits until
// the context ends. Wait(0) is the same as Try.
func Wait(d time.Duration) Option {
	return optionFunc(func(o *reqOptions) { o.wait, o.hasWait = d, true })
}

// ValueOption sets the token's value block (0..64 bytes) as the grant is
// given back (Release) or downgraded (Convert). Only PW and EX holders may
// set it.
type ValueOption struct{ v []byte }

// SetValue returns an option that sets the token's value block to v on
// Release or on a downgrading Convert. v is copied.
func SetValue(v []byte) ValueOption { return ValueOption{append([]byte{}, v...)} }

func (o ValueOption) applyOption(r *reqOptions) { r.value, r.hasValue = o.v, true }

func (o ValueOption) applyRelease(r *releaseOptions) { r.value, r.hasValue = o.v, true }
