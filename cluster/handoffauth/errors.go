package handoffauth

import "errors"

// Errors of the package; test them with errors.Is. The errors returned
// wrap them with details.
var (
	// ErrFrame: a frame is malformed or over its limit.
	ErrFrame = errors.New("handoffauth: bad frame")
	// ErrRefused: the answerer refused the request in its challenge (for
	// instance "authentication required").
	ErrRefused = errors.New("handoffauth: request refused")
	// ErrNoChallenge: the answerer of an authenticated exchange answered
	// without a challenge (it holds no key).
	ErrNoChallenge = errors.New("handoffauth: answer without a challenge")
	// ErrBadSeal: the answer's MAC is missing or wrong.
	ErrBadSeal = errors.New("handoffauth: answer's seal does not verify")
)
