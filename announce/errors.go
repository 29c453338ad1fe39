package announce

import "errors"

// Errors returned by this package. Decode errors wrap one of the first
// group; Reason turns any of them into a metric label.
var (
	ErrShort     = errors.New("announce: datagram too short")
	ErrTooLarge  = errors.New("announce: datagram too large")
	ErrBadMagic  = errors.New("announce: bad magic")
	ErrVersion   = errors.New("announce: unsupported version")
	ErrLength    = errors.New("announce: length field does not match the datagram")
	ErrChecksum  = errors.New("announce: bad checksum")
	ErrMalformed = errors.New("announce: malformed announcement")
	ErrUnsigned  = errors.New("announce: announcement not signed")
	ErrSignature = errors.New("announce: announcement signature does not verify")

	ErrDisabled     = errors.New("announce: multicast announcements are disabled")
	ErrNotMulticast = errors.New("announce: group is not an IPv4 multicast address")
	ErrInterface    = errors.New("announce: unusable interface")
	ErrNoMulticast  = errors.New("announce: interface does not support multicast")
	ErrUnavailable  = errors.New("announce: multicast does not work on this interface")
	ErrClosed       = errors.New("announce: closed")
	ErrNoKey        = errors.New("announce: announcements need the cluster's announce key: tokenctl announce-key")
)
