package delegation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
)

// MarshalJSON writes m in the one-line JSON form documented in the package
// comment. It refuses an invalid map (the error wraps ErrBadMap).
func (m Map) MarshalJSON() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	runs := Runs(m)
	// Group the owned runs by owner, keeping shard order: a counting sort.
	start := make([]int, len(m.Workers)+1)
	owned := 0
	for _, r := range runs {
		if r.Owner != NoOwner {
			start[r.Owner+1]++
			owned++
		}
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	byOwner := make([]Run, owned)
	fill := append([]int(nil), start[:len(m.Workers)]...)
	for _, r := range runs {
		if r.Owner != NoOwner {
			byOwner[fill[r.Owner]] = r
			fill[r.Owner]++
		}
	}

	b := make([]byte, 0, 64+20*owned+64*len(m.Workers))
	b = append(b, `{"version":`...)
	b = strconv.AppendUint(b, m.Version, 10)
	b = append(b, `,"shards":`...)
	b = strconv.AppendInt(b, int64(len(m.Owner)), 10)
	b = append(b, `,"workers":[`...)
	for i, w := range m.Workers {
		if i > 0 {
			b = append(b, ',')
		}
		id, err := json.Marshal(w.ID)
		if err != nil {
			return nil, err
		}
		b = append(b, `{"id":`...)
		b = append(b, id...)
		b = append(b, `,"incarnation":"`...)
		b = strconv.AppendUint(b, w.Incarnation, 16)
		b = append(b, `","ranges":[`...)
		for j, r := range byOwner[start[i]:start[i+1]] {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, '[')
			b = strconv.AppendUint(b, uint64(r.First), 10)
			b = append(b, ',')
			b = strconv.AppendUint(b, uint64(r.Count), 10)
			b = append(b, ',')
			b = strconv.AppendUint(b, uint64(r.Epoch), 10)
			b = append(b, ']')
		}
		b = append(b, "]}"...)
	}
	b = append(b, "]}"...)
	return b, nil
}

// jsonMap is the decoded shape of the JSON form.
type jsonMap struct {
	Version uint64 `json:"version"`
	Shards  int64  `json:"shards"`
	Workers []struct {
		ID          string     `json:"id"`
		Incarnation string     `json:"incarnation"`
		Ranges      [][]uint64 `json:"ranges"`
	} `json:"workers"`
}

// UnmarshalJSON reads the JSON form documented in the package comment into
// m, replacing its contents. Errors about the content wrap ErrBadMap.
func (m *Map) UnmarshalJSON(data []byte) error {
	if bytes.Equal(bytes.TrimSpace(data), []byte("null")) {
		return nil
	}
	var j jsonMap
	if err := json.Unmarshal(data, &j); err != nil {
		return fmt.Errorf("%w: %w", ErrBadMap, err)
	}
	if j.Shards < 0 || j.Shards > MaxShards {
		return fmt.Errorf("%w: %d shards (want 0..%d)", ErrBadMap, j.Shards, MaxShards)
	}
	n := int(j.Shards)
	out := Unowned(j.Version, n)
	if n == 0 {
		out.Owner, out.Epoch = nil, nil
	}
	if len(j.Workers) > 0 {
		out.Workers = make([]Owner, len(j.Workers))
	}
	for i, w := range j.Workers {
		inc, err := strconv.ParseUint(w.Incarnation, 16, 64)
		if err != nil {
			return fmt.Errorf("%w: worker %q: incarnation %q is not hex: %w", ErrBadMap, w.ID, w.Incarnation, err)
		}
		out.Workers[i] = Owner{w.ID, inc}
		for _, r := range w.Ranges {
			if len(r) != 3 {
				return fmt.Errorf("%w: worker %q: range %v is not [first,count,epoch]", ErrBadMap, w.ID, r)
			}
			first, count, epoch := r[0], r[1], r[2]
			switch {
			case count == 0:
				return fmt.Errorf("%w: worker %q: empty range %v", ErrBadMap, w.ID, r)
			case first >= uint64(n) || count > uint64(n)-first:
				return fmt.Errorf("%w: worker %q: range %v is outside the %d shards", ErrBadMap, w.ID, r, n)
			case epoch == 0 || epoch > MaxEpoch:
				return fmt.Errorf("%w: worker %q: range %v has epoch outside 1..%d", ErrBadMap, w.ID, r, MaxEpoch)
			}
			for s := first; s < first+count; s++ {
				if out.Owner[s] != NoOwner {
					return fmt.Errorf("%w: shard %d is in two ranges", ErrBadMap, s)
				}
				out.Owner[s], out.Epoch[s] = int32(i), uint32(epoch)
			}
		}
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*m = out
	return nil
}
