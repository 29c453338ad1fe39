package worker

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/tokend/tokend/cluster"
	"github.com/tokend/tokend/wire"
)

// Bounds of ServeToken's answer.
const (
	// DescribeLimit is how many holders and waiters ServeToken lists unless
	// asked for fewer or more; the counts are always whole.
	DescribeLimit = 100
	// DescribeMaxLimit is the most it lists: what it copies under the
	// worker's lock stays small whatever the token's queue.
	DescribeMaxLimit = 10000
)

// TokenInfo is ServeToken's answer (JSON): who holds and who waits for one
// token, as this worker's table has it at At. Sessions are written as in
// /tokend/clients (hex lease ids); Client is where the worker last heard
// the session from.
type TokenInfo struct {
	Name        string       `json:"name"`     // the name's bytes (JSON replaces invalid UTF-8: see NameHex)
	NameHex     string       `json:"name_hex"` // the name in hex
	Shard       uint32       `json:"shard"`
	Epoch       uint32       `json:"epoch"`
	Worker      string       `json:"worker"`
	Grace       bool         `json:"grace"` // the shard is recovering: holders may still be reclaiming
	At          time.Time    `json:"at"`
	HolderCount int          `json:"holder_count"`
	WaiterCount int          `json:"waiter_count"`
	Holders     []HolderInfo `json:"holders"` // at most limit: the oldest grants, by fence
	Waiters     []WaiterInfo `json:"waiters"` // the first limit in line
	ValueValid  bool         `json:"value_valid"`
}

// HolderInfo is one grant of a TokenInfo.
type HolderInfo struct {
	Session    string `json:"session"`
	Client     string `json:"client,omitempty"`
	Mode       string `json:"mode"`
	Start      uint64 `json:"start"`
	End        uint64 `json:"end"`
	Fence      uint64 `json:"fence"`
	Converting bool   `json:"converting,omitempty"` // a conversion of it waits (among the waiters)
	// Since is when this worker took the grant (granted, or reclaimed
	// after a failover); absent for a grant handed over from another
	// worker, whose snapshot does not carry it.
	Since  *time.Time `json:"since,omitempty"`
	HeldMs int64      `json:"held_ms,omitempty"`
}

// WaiterInfo is one queued request of a TokenInfo.
type WaiterInfo struct {
	Position  int        `json:"position"` // 1 = next in line
	Session   string     `json:"session"`
	Client    string     `json:"client,omitempty"`
	Request   uint64     `json:"request"`
	Mode      string     `json:"mode"`
	Start     uint64     `json:"start"`
	End       uint64     `json:"end"`
	Converts  uint64     `json:"converts,omitempty"` // a conversion: the fence of the grant it converts
	Since     time.Time  `json:"since"`
	WaitingMs int64      `json:"waiting_ms"`
	Deadline  *time.Time `json:"deadline,omitempty"` // when it times out; absent: it waits for ever
}

// describeError is a refusal of ServeToken with its HTTP status.
type describeError struct {
	status int
	msg    string
}

// ServeToken answers GET ?name=NAME[&limit=N] (or hex=HEX for names that
// are not text) with the TokenInfo of one token of a shard this worker
// serves, as JSON. A name is any 1..255 bytes, URL-escaped. It answers 421
// Misdirected Request if the worker does not serve the token's shard (ask
// the map's owner), 503 while it cannot vouch for its lease, before its
// first map, or while the shard's state is being handed over, and 400 for a
// bad request. A token nobody holds or waits for is a 200 with no holders
// and no waiters. It holds the worker's lock only to copy at most limit
// holders and waiters out of the table.
func (w *Worker) ServeToken(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		rw.Header().Set("Allow", "GET, HEAD")
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	info, derr := w.describeRequest(r)
	if derr != nil {
		http.Error(rw, derr.msg, derr.status)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(rw)
	enc.SetIndent("", "  ")
	enc.Encode(info)
}

func (w *Worker) describeRequest(r *http.Request) (*TokenInfo, *describeError) {
	q := r.URL.Query()
	name := []byte(q.Get("name"))
	if h := q.Get("hex"); h != "" {
		if q.Has("name") {
			return nil, &describeError{http.StatusBadRequest, "give name or hex, not both"}
		}
		var err error
		if name, err = hex.DecodeString(h); err != nil {
			return nil, &describeError{http.StatusBadRequest, "hex: " + err.Error()}
		}
	}
	if len(name) < 1 || len(name) > wire.MaxName {
		return nil, &describeError{http.StatusBadRequest, fmt.Sprintf("a token name is 1 to %d bytes (name=, URL-escaped, or hex=)", wire.MaxName)}
	}
	limit := DescribeLimit
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > DescribeMaxLimit {
			return nil, &describeError{http.StatusBadRequest, fmt.Sprintf("limit: want 1 to %d", DescribeMaxLimit)}
		}
		limit = n
	}
	return w.describe(name, limit)
}

// describe copies what the table of name's shard has of it, under the lock,
// and dresses it up after.
func (w *Worker) describe(name []byte, limit int) (*TokenInfo, *describeError) {
	stamp := w.clk.Now()
	now := w.mono(stamp)
	w.mu.Lock()
	shards := uint32(len(w.shards))
	if shards == 0 || !w.ready {
		w.mu.Unlock()
		return nil, &describeError{http.StatusServiceUnavailable, "worker not serving yet (no map, or not registered)"}
	}
	if !stamp.Before(w.safeUntil()) {
		w.mu.Unlock()
		return nil, &describeError{http.StatusServiceUnavailable, "worker cannot vouch for its lease now (invariant 5)"}
	}
	shard := wire.Shard(name, shards)
	st := w.shards[shard]
	if st == nil {
		msg := fmt.Sprintf("shard %d not served by worker %s", shard, w.doc.ID)
		if o, e, ok := w.dmap.Lookup(int(shard)); ok {
			msg += fmt.Sprintf("; its map (version %d) gives it to %s at epoch %d", w.dmap.Version, o.ID, e)
		}
		w.mu.Unlock()
		return nil, &describeError{http.StatusMisdirectedRequest, msg}
	}
	if st.tab == nil {
		w.mu.Unlock()
		return nil, &describeError{http.StatusServiceUnavailable, fmt.Sprintf("shard %d is being handed over from %s; ask again", shard, st.from.ID)}
	}
	v, _ := st.tab.Describe(name, limit)
	info := &TokenInfo{Name: string(name), NameHex: hex.EncodeToString(name), Shard: shard, Epoch: st.epoch,
		Worker: w.doc.ID, Grace: st.tab.InGrace(), At: stamp.UTC(),
		HolderCount: v.NGrants, WaiterCount: v.NWaiters, ValueValid: v.ValueValid,
		Holders: make([]HolderInfo, len(v.Grants)), Waiters: make([]WaiterInfo, len(v.Waiters))}
	for i, g := range v.Grants {
		info.Holders[i] = HolderInfo{Session: cluster.SessionString(g.Session), Client: w.clientAddr(g.Session),
			Mode: g.Mode.String(), Start: g.Start, End: g.End, Fence: g.Fence, Converting: g.Converting}
	}
	for i, q := range v.Waiters {
		info.Waiters[i] = WaiterInfo{Position: q.Position, Session: cluster.SessionString(q.Session), Client: w.clientAddr(q.Session),
			Request: q.Req, Mode: q.Mode.String(), Start: q.Start, End: q.End, Converts: q.Fence}
	}
	w.mu.Unlock()

	// Times, off the lock: the tables' clock is nanoseconds since w.base.
	for i, g := range v.Grants {
		if g.Since != 0 {
			t := w.base.Add(time.Duration(g.Since)).UTC()
			info.Holders[i].Since = &t
			info.Holders[i].HeldMs = max(now-g.Since, 0) / int64(time.Millisecond)
		}
	}
	for i, q := range v.Waiters {
		wi := &info.Waiters[i]
		wi.Since = w.base.Add(time.Duration(q.Since)).UTC()
		wi.WaitingMs = max(now-q.Since, 0) / int64(time.Millisecond)
		if q.Deadline != math.MaxInt64 {
			d := w.base.Add(time.Duration(q.Deadline)).UTC()
			wi.Deadline = &d
		}
	}
	return info, nil
}

// clientAddr is where session id was last heard from, or "". Caller holds mu.
func (w *Worker) clientAddr(id uint64) string {
	if s := w.sessions[id]; s != nil && s.addr != nil {
		return s.addr.String()
	}
	return ""
}
