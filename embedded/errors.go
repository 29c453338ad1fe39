package embedded

import "errors"

// Errors returned by this package. Callers test them with errors.Is; the
// returned errors wrap them with the details (field, member name, cause).
var (
	// ErrBadConfig: a Config field is invalid; the message names the field.
	ErrBadConfig = errors.New("embedded: bad config")
	// ErrNotReady: the member started but did not become ready (joined the
	// cluster and published itself) within Config.ReadyTimeout, typically
	// because too few of the other members are up to form a quorum.
	ErrNotReady = errors.New("embedded: member not ready")
	// ErrStopped: the etcd server stopped by itself, for instance because the
	// member was removed from the cluster. Its data dir must not be reused.
	ErrStopped = errors.New("embedded: member stopped")
	// ErrDataDirNotEmpty: Replace was given a data dir that already holds
	// files; a replacement member must start from an empty one.
	ErrDataDirNotEmpty = errors.New("embedded: data dir not empty")
	// ErrNoSuchMember: Replace was asked to remove a member the cluster does
	// not have (and no unstarted member with the new peer URLs exists, which
	// would mean an earlier Replace got as far as adding it).
	ErrNoSuchMember = errors.New("embedded: no such member")
	// ErrMemberAlive: Replace refused to remove a member that still answers
	// on its client URLs. Stop it first.
	ErrMemberAlive = errors.New("embedded: member still alive")
	// ErrMemberExists: Replace found a started member already using the new
	// member's name, or another member added but not started yet.
	ErrMemberExists = errors.New("embedded: member exists")
)
