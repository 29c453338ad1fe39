package worker

import "errors"

// Errors returned by this package. Callers test them with errors.Is; the
// errors returned wrap them with details.
var (
	// ErrConfig: Config is invalid (New).
	ErrConfig = errors.New("worker: invalid config")
	// ErrAdvertise: an address to register is unspecified (0.0.0.0, ::):
	// nobody could connect to it. Give the advertised address in Config.
	ErrAdvertise = errors.New("worker: an unspecified address cannot be advertised")
	// ErrClosed: the worker is closed (or was never started).
	ErrClosed = errors.New("worker: closed")
	// ErrLeaseLost: the worker's own lease is gone, so it is no longer the
	// incarnation it was.
	ErrLeaseLost = errors.New("worker: own lease lost")
	// ErrDrainIncomplete: Drain's context ended before the worker was rid
	// of its shards.
	ErrDrainIncomplete = errors.New("worker: drain incomplete")
	// ErrNoPeers: no other live, non-draining worker is registered: there
	// is nobody to drain to.
	ErrNoPeers = errors.New("worker: no other live worker to drain to")
)

// Errors kept inside the package.
var (
	// errRegistered: another incarnation still holds the worker's key.
	errRegistered = errors.New("worker: id is registered by a live incarnation")
	// errHandoffRefused: the old owner refused a pull for good; the new
	// owner recovers the shards.
	errHandoffRefused = errors.New("worker: handoff refused by the old owner")
	// errHandoffRetry: the old owner cannot answer a pull yet (its map is
	// behind); the new owner asks again.
	errHandoffRetry = errors.New("worker: old owner not ready to hand off")
	// errHandoffNothing: the old owner answered but kept nothing for a
	// shard asked for.
	errHandoffNothing = errors.New("worker: old owner has nothing to hand over")
	// errHandoffFrame: a handoff or deadlock-detector frame is malformed
	// or too large.
	errHandoffFrame = errors.New("worker: bad handoff frame")
)
