package coordinator

import "errors"

// Errors returned by this package; callers test them with errors.Is.
var (
	// ErrNotLeader: no coordinator leads now (LeaderInfo).
	ErrNotLeader = errors.New("coordinator: not the leader")
	// ErrDeposed: the term's election key is gone or was replaced, so a
	// fenced write (Leadership.Txn) was not applied.
	ErrDeposed = errors.New("coordinator: leadership lost before the write")
)

// Errors that stay inside the package.
var (
	// errMapMoved: the map changed between a replan's read and its write;
	// the delegation loop starts over.
	errMapMoved = errors.New("coordinator: delegation map changed during planning")
	// errDeadlockFrame: a worker's answer to the deadlock detector is not
	// one well-formed frame.
	errDeadlockFrame = errors.New("coordinator: bad deadlock frame")
)
