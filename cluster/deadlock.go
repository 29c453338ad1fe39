package cluster

// The deadlock detector's exchange (wire/SPEC.md section 19). The leader's
// detector connects to a worker's handoff address (Worker.Handoff) and sends
// one frame (a big-endian u32 length, then JSON) holding a DeadlockRequest;
// the worker answers with one frame holding a DeadlockAnswer. These are not
// stored in etcd; they live here because the coordinator and the worker
// must agree on them and do not import each other.

// DeadlockProto is the version of the exchange.
const DeadlockProto = 1

// DeadlockRequest is what the detector sends. Proto and the Deadlock member
// tell it from a handoff pull on the same listener.
type DeadlockRequest struct {
	Proto    int            `json:"proto"`
	Deadlock *DeadlockQuery `json:"deadlock"`
	// Nonce is the detector's nonce: the exchange is authenticated under
	// the cluster key (package cluster/handoffauth; wire/SPEC.md section
	// 18). Required when the worker runs with authentication.
	Nonce []byte `json:"nonce,omitempty"`
}

// DeadlockQuery asks a worker to end Victims with DEADLOCK (each only if it
// still waits), then, if Waits, to list the waits of its requests that have
// been queued for at least MinAgeMs.
type DeadlockQuery struct {
	Incarnation string           `json:"incarnation"` // the worker incarnation meant (hex); another one refuses
	Victims     []DeadlockVictim `json:"victims,omitempty"`
	Waits       bool             `json:"waits,omitempty"`
	MinAgeMs    int64            `json:"min_age_ms,omitempty"`
}

// DeadlockVictim names a queued request chosen to fail.
type DeadlockVictim struct {
	Shard   uint32 `json:"shard"`
	Epoch   uint32 `json:"epoch"`
	Session uint64 `json:"session"`
	Req     uint64 `json:"req"`
}

// DeadlockAnswer is the worker's answer.
type DeadlockAnswer struct {
	Proto       int              `json:"proto"`
	Error       string           `json:"error,omitempty"` // the request was refused
	Worker      string           `json:"worker"`
	Incarnation string           `json:"incarnation"`
	Ended       []DeadlockVictim `json:"ended,omitempty"` // victims that were still queued and got DEADLOCK
	Waits       []WaitEdge       `json:"waits,omitempty"`
	Truncated   bool             `json:"truncated,omitempty"` // more waits than an answer carries
}

// WaitEdge is one wait of a queued request (worker/table.Edge): request
// (Session, Req) on token Token in (Shard, Epoch), queued for AgeMs, cannot
// be granted before session Holder gives up its grant Fence, or, with Fence
// 0, before Holder's request HolderReq queued ahead of it is granted.
type WaitEdge struct {
	Shard     uint32 `json:"shard"`
	Epoch     uint32 `json:"epoch"`
	Session   uint64 `json:"session"`
	Req       uint64 `json:"req"`
	AgeMs     int64  `json:"age_ms"`
	Conv      bool   `json:"conv,omitempty"`
	Token     []byte `json:"token"`
	Holder    uint64 `json:"holder"`
	Fence     uint64 `json:"fence,omitempty"`
	HolderReq uint64 `json:"holder_req,omitempty"`
}
