package check

import (
	"errors"
	"fmt"
	"slices"
	"sync"
)

// ErrStaleFence is the register's refusal of an access whose fence is
// below the highest it has seen.
var ErrStaleFence = errors.New("check: stale fence")

// Access is one access to a Register, as its log keeps it.
type Access struct {
	Write    bool
	Fence    uint64
	Accepted bool
	Len      int // length of the value read or written
}

// Register is a fenced register: the storage side of fencing (docs/ARCHITECTURE.md,
// "Tokens"). It holds a value, a list of element ids as in Jepsen's lock-set
// workload. It refuses a write whose fence is below the highest fence of any
// access it accepted, and a read whose fence is below the highest fence of
// an accepted write. Reads count for writes: once a holder has read under
// fence f, a write of an older holder must not land, or the newer holder's
// read-modify-write would overwrite it (a lost update). Readers (shared
// holders with unordered fences) do not refuse each other. Its methods are
// safe for concurrent use.
type Register struct {
	mu       sync.Mutex // guards the fields below
	maxAny   uint64     // highest fence of an accepted access
	maxWrite uint64     // highest fence of an accepted write
	val      []int64
	log      []Access
}

// Read returns a copy of the value, or ErrStaleFence.
func (r *Register) Read(fence uint64) ([]int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fence < r.maxWrite {
		r.log = append(r.log, Access{Fence: fence})
		return nil, fmt.Errorf("%w: read with %#x, highest write %#x", ErrStaleFence, fence, r.maxWrite)
	}
	r.maxAny = max(r.maxAny, fence)
	r.log = append(r.log, Access{Fence: fence, Accepted: true, Len: len(r.val)})
	return slices.Clone(r.val), nil
}

// Write replaces the value, or refuses with ErrStaleFence.
func (r *Register) Write(fence uint64, v []int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fence < r.maxAny {
		r.log = append(r.log, Access{Write: true, Fence: fence})
		return fmt.Errorf("%w: write with %#x, highest seen %#x", ErrStaleFence, fence, r.maxAny)
	}
	r.maxAny, r.maxWrite = fence, fence
	r.val = slices.Clone(v)
	r.log = append(r.log, Access{Write: true, Fence: fence, Accepted: true, Len: len(v)})
	return nil
}

// Value returns the current value (no fence: the final read of the check).
func (r *Register) Value() []int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.val)
}

// Log returns the accesses so far, in order.
func (r *Register) Log() []Access {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.log)
}

// AuditLog replays a register's log against the rules: no write accepted
// with a fence below the highest accepted access before it, no read accepted
// below the highest accepted write (a stale access accepted), and no access
// refused that the rules allow (a good one refused).
func AuditLog(log []Access) []string {
	var out []string
	var maxAny, maxWrite uint64
	for i, a := range log {
		bound := maxWrite
		if a.Write {
			bound = maxAny
		}
		switch {
		case a.Accepted && a.Fence < bound:
			out = append(out, fmt.Sprintf("access %d (write %v) accepted with fence %#x below %#x", i, a.Write, a.Fence, bound))
		case !a.Accepted && a.Fence >= bound:
			out = append(out, fmt.Sprintf("access %d (write %v) refused with fence %#x, bound %#x", i, a.Write, a.Fence, bound))
		}
		if a.Accepted {
			maxAny = max(maxAny, a.Fence)
			if a.Write {
				maxWrite = max(maxWrite, a.Fence)
			}
		}
	}
	return out
}

// LostUpdates returns the acknowledged element ids missing from the final
// value, and the ids in it more than once (each id is added by one critical
// section, so a repeat means an update was applied twice). An update is
// acknowledged when its write was accepted.
func LostUpdates(acked, final []int64) (lost, dup []int64) {
	seen := make(map[int64]int, len(final))
	for _, id := range final {
		seen[id]++
		if seen[id] == 2 {
			dup = append(dup, id)
		}
	}
	for _, id := range acked {
		if seen[id] == 0 {
			lost = append(lost, id)
		}
	}
	return lost, dup
}

// LockSet is the lock-set workload's bookkeeping across many registers:
// one register per token, and the ids whose writes were accepted.
type LockSet struct {
	mu    sync.Mutex // guards the fields below
	regs  map[string]*Register
	acked map[string][]int64
	next  int64
	stale int // writes refused for a stale fence
}

// NewLockSet returns an empty lock set.
func NewLockSet() *LockSet {
	return &LockSet{regs: map[string]*Register{}, acked: map[string][]int64{}}
}

// Register returns the register of token name.
func (ls *LockSet) Register(name string) *Register {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	r := ls.regs[name]
	if r == nil {
		r = &Register{}
		ls.regs[name] = r
	}
	return r
}

// Update is one critical section's read-modify-write under fence: read the
// set, call pause (the holder's think time, or a process pause), add a new
// id and write it back. It returns the id and whether the write was
// accepted (acknowledged); a refusal is ErrStaleFence.
func (ls *LockSet) Update(name string, fence uint64, pause func()) (int64, error) {
	r := ls.Register(name)
	v, err := r.Read(fence)
	if err != nil {
		ls.mu.Lock()
		ls.stale++
		ls.mu.Unlock()
		return 0, err
	}
	if pause != nil {
		pause()
	}
	ls.mu.Lock()
	ls.next++
	id := ls.next
	ls.mu.Unlock()
	if err := r.Write(fence, append(v, id)); err != nil {
		ls.mu.Lock()
		ls.stale++
		ls.mu.Unlock()
		return id, err
	}
	ls.mu.Lock()
	ls.acked[name] = append(ls.acked[name], id)
	ls.mu.Unlock()
	return id, nil
}

// LockSetResult is the verdict on a lock set.
type LockSetResult struct {
	Registers, Acked, Refused int
	Lost, Dup                 []int64
	Audit                     []string
}

// OK reports whether nothing was lost, duplicated or mis-fenced.
func (r LockSetResult) OK() bool { return len(r.Lost)+len(r.Dup)+len(r.Audit) == 0 }

func (r LockSetResult) String() string {
	return fmt.Sprintf("%d registers, %d acknowledged updates, %d refused for stale fences: %d lost, %d duplicated, %d audit failures",
		r.Registers, r.Acked, r.Refused, len(r.Lost), len(r.Dup), len(r.Audit))
}

// Check reads every register and compares with the acknowledged updates.
func (ls *LockSet) Check() LockSetResult {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	res := LockSetResult{Registers: len(ls.regs), Refused: ls.stale}
	for name, r := range ls.regs {
		acked := ls.acked[name]
		res.Acked += len(acked)
		lost, dup := LostUpdates(acked, r.Value())
		res.Lost = append(res.Lost, lost...)
		res.Dup = append(res.Dup, dup...)
		for _, a := range AuditLog(r.Log()) {
			res.Audit = append(res.Audit, name+": "+a)
		}
	}
	return res
}
