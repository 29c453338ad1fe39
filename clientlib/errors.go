package clientlib

import (
	"errors"
	"fmt"

	"github.com/tokend/tokend/wire"
)

// Errors returned by this package. Callers test them with errors.Is; an error
// that reports a worker's answer wraps exactly one of them and names the wire
// status in its text. When the caller's context ends first, the error wraps
// both ctx.Err() and the sentinel that says what was going on (ErrTimeout
// while queued, ErrUnavailable while no worker answered).
var (
	// ErrConflict: a Try request conflicts with a holder or an earlier waiter
	// (status CONFLICT).
	ErrConflict = errors.New("clientlib: conflicting token held")
	// ErrTimeout: the wait time passed while queued (status TIMEOUT, or the
	// context's deadline while the request waited in the token's queue).
	ErrTimeout = errors.New("clientlib: wait time passed")
	// ErrClosed: the Client is closed (or closing).
	ErrClosed = errors.New("clientlib: client closed")
	// ErrLost: the library can no longer be sure a grant is valid and cannot
	// get it back: the worker did not vouch for it and it was not reclaimed
	// within the grace period, or the reclaim was refused (RECLAIM_REFUSED).
	ErrLost = errors.New("clientlib: token lost")
	// ErrRevoked: the default revocation handler gave the token back because
	// another client asked for it.
	ErrRevoked = errors.New("clientlib: token released on revocation")
	// ErrNotHeld: the token is not held (already released, or the worker does
	// not know the grant: status NOT_HELD).
	ErrNotHeld = errors.New("clientlib: token not held")
	// ErrUnavailable: no worker answered, or the workers kept answering
	// "try again" (UNAVAILABLE, GRACE, LIMIT, EXHAUSTED, NOT_OWNER) until the
	// context ended.
	ErrUnavailable = errors.New("clientlib: no worker available")
	// ErrSessionExpired: the session ended (UNKNOWN_SESSION, SESSION_EXPIRED,
	// or it was not renewed in time); every token of the Client is lost.
	// Dial again for a new session.
	ErrSessionExpired = errors.New("clientlib: session expired")
	// ErrCanceled: the request was canceled (status CANCELED).
	ErrCanceled = errors.New("clientlib: request canceled")
	// ErrBadRequest: an argument is invalid (name, mode, range, value), or
	// the worker refused the request as malformed (BAD_REQUEST).
	ErrBadRequest = errors.New("clientlib: bad request")
	// ErrDeadlock: the request waited in a wait-for cycle (two converters
	// of one token, or holders that wait for each other's tokens) and was
	// chosen to fail so that the others can go on (status DEADLOCK). The
	// grants the caller holds are unchanged; give some back, then retry.
	ErrDeadlock = errors.New("clientlib: deadlock")
	// ErrAuth: the client cannot authenticate or the cluster does not
	// authenticate: no key (Config.KeyFile, $TOKEND_KEY_FILE,
	// DefaultKeyFile) nor Config.Insecure, a key file that does not
	// parse, a key the cluster does not know (its workers drop the open:
	// Dial ends with ctx), a worker that answers without authentication
	// (started with --insecure), an insecure client refused by an
	// authenticating cluster, or announcements enabled without the
	// cluster's announce key (Config.Announce.PublicKey).
	ErrAuth = errors.New("clientlib: authentication failed")
	// ErrInternal: the worker reported an internal error (INTERNAL).
	ErrInternal = errors.New("clientlib: worker internal error")
)

// errMapPageStart: a MAP reply does not start at the shard asked for; the
// next worker is asked (it stays inside the package).
var errMapPageStart = errors.New("clientlib: map reply does not start at the requested shard")

// statusSentinel maps a final wire status to this package's sentinel.
func statusSentinel(s wire.Status) error {
	switch s {
	case wire.StatusConflict:
		return ErrConflict
	case wire.StatusTimeout:
		return ErrTimeout
	case wire.StatusUnknownSession, wire.StatusSessionExpired:
		return ErrSessionExpired
	case wire.StatusBadRequest:
		return ErrBadRequest
	case wire.StatusNotHeld:
		return ErrNotHeld
	case wire.StatusReclaimRefused:
		return ErrLost
	case wire.StatusCanceled:
		return ErrCanceled
	case wire.StatusDeadlock:
		return ErrDeadlock
	case wire.StatusNotOwner, wire.StatusStaleEpoch, wire.StatusGrace,
		wire.StatusUnavailable, wire.StatusLimit, wire.StatusExhausted:
		return ErrUnavailable
	}
	return ErrInternal
}

// statusError is the error for a final non-OK answer.
func statusError(op string, r *reply) error {
	if r.msg != "" {
		return fmt.Errorf("%s: %w (worker: %s: %s)", op, statusSentinel(r.h.Status), r.h.Status, r.msg)
	}
	return fmt.Errorf("%s: %w (worker: %s)", op, statusSentinel(r.h.Status), r.h.Status)
}
