package wire

import "fmt"

// Status is the status byte of a reply (0 in requests and server-initiated
// messages). The codes are defined here once for worker and clients; SPEC.md
// has the same table.
type Status uint8

// Status codes of v1.
const (
	StatusOK             Status = 0   // done; the type's own reply body follows
	StatusQueued         Status = 1   // ACQUIRE/CONVERT waits in the token's queue
	StatusConflict       Status = 2   // TRY request conflicts
	StatusTimeout        Status = 3   // wait_ms passed while queued
	StatusNotOwner       Status = 4   // this worker does not serve the shard
	StatusStaleEpoch     Status = 5   // the request's epoch is not the shard's current one
	StatusUnknownSession Status = 6   // no such session
	StatusGrace          Status = 7   // shard recovering: only RECLAIM accepted
	StatusUnavailable    Status = 8   // worker cannot vouch for its lease now
	StatusBadRequest     Status = 9   // well-formed but not acceptable
	StatusNotHeld        Status = 10  // no such grant (or queued request)
	StatusLimit          Status = 11  // too many waiters, requests or cached replies
	StatusReclaimRefused Status = 12  // the grant cannot be reclaimed
	StatusCanceled       Status = 13  // the queued request was canceled
	StatusExhausted      Status = 14  // fence space of the shard's epoch used up
	StatusSessionExpired Status = 15  // the session's lease ran out
	StatusDeadlock       Status = 16  // the queued request closes a wait-for cycle: it was chosen to fail
	StatusCookie         Status = 17  // SESSION_OPEN: send it again with this cookie
	StatusUnknownRequest Status = 18  // the new owner of a handed-off shard does not know this request id
	StatusInternal       Status = 255 // worker bug
)

type statusInfo struct {
	name, text string
	retry      bool
}

var statuses = [256]statusInfo{
	StatusOK:             {"OK", "success", false},
	StatusQueued:         {"QUEUED", "queued behind conflicting holders or waiters", false},
	StatusConflict:       {"CONFLICT", "conflicts with a holder or waiter (TRY)", false},
	StatusTimeout:        {"TIMEOUT", "wait time passed while queued", false},
	StatusNotOwner:       {"NOT_OWNER", "this worker does not serve the shard", true},
	StatusStaleEpoch:     {"STALE_EPOCH", "shard epoch is not current", true},
	StatusUnknownSession: {"UNKNOWN_SESSION", "no such session", false},
	StatusGrace:          {"GRACE", "shard is recovering: only RECLAIM is accepted", true},
	StatusUnavailable:    {"UNAVAILABLE", "worker cannot vouch for its lease now", true},
	StatusBadRequest:     {"BAD_REQUEST", "request not acceptable", false},
	StatusNotHeld:        {"NOT_HELD", "no such grant or queued request", false},
	StatusLimit:          {"LIMIT", "too many waiters or requests", true},
	StatusReclaimRefused: {"RECLAIM_REFUSED", "grant cannot be reclaimed", false},
	StatusCanceled:       {"CANCELED", "queued request was canceled", false},
	StatusExhausted:      {"EXHAUSTED", "fence space of this shard epoch is used up", true},
	StatusSessionExpired: {"SESSION_EXPIRED", "session lease expired", false},
	StatusDeadlock:       {"DEADLOCK", "request would deadlock: chosen as the victim of a wait-for cycle", false},
	StatusCookie:         {"COOKIE", "open again with the cookie", true},
	StatusUnknownRequest: {"UNKNOWN_REQUEST", "request id unknown to the shard's new owner: send it again under a fresh id", false},
	StatusInternal:       {"INTERNAL", "internal worker error", false},
}

// Valid reports whether s is a v1 status code.
func (s Status) Valid() bool { return statuses[s].name != "" }

// String returns the code's name as in SPEC.md ("OK", "NOT_OWNER", ...).
func (s Status) String() string {
	if !s.Valid() {
		return fmt.Sprintf("Status(%d)", uint8(s))
	}
	return statuses[s].name
}

// Text returns a short lower-case description for messages and logs.
func (s Status) Text() string {
	if !s.Valid() {
		return "unknown status"
	}
	return statuses[s].text
}

// Retryable reports whether s says "not applied, try again": NOT_OWNER,
// STALE_EPOCH, GRACE, UNAVAILABLE, LIMIT and EXHAUSTED. A worker does not
// cache such replies, and the client retries later with the same request id
// (after refreshing its map for NOT_OWNER and STALE_EPOCH), so that a late
// duplicate can never be applied as well. Every other status is final: it
// is cached and the request id is finished (QUEUED: not yet).
func (s Status) Retryable() bool { return statuses[s].retry }
