package sim

import (
	"fmt"

	"github.com/tokend/tokend/cluster/delegation"
	"github.com/tokend/tokend/wire"
)

// MapCost is what one map version costs, from the real encodings.
type MapCost struct {
	Runs       int // delegation.Runs
	JSONBytes  int // the etcd value (delegation.Map.MarshalJSON)
	Datagrams  int // MAP_REPLY datagrams of one full fetch (wire.MapReply.Append)
	FetchBytes int // their bytes
}

// mapCost measures m: its runs, its JSON value and its full fetch.
func mapCost(m delegation.Map, addr func(delegation.Owner) string, graceMs uint32) (MapCost, error) {
	b, err := m.MarshalJSON()
	if err != nil {
		return MapCost{}, err
	}
	runs := delegation.Runs(m)
	n, bytes, err := fetch(m, runs, addr, graceMs, 0, uint32(m.Shards()), nil)
	return MapCost{Runs: len(runs), JSONBytes: len(b), Datagrams: n, FetchBytes: bytes}, err
}

// fetch pages shards [first, end) of m into MAP_REPLY datagrams with
// delegation.Page, as a worker answers MAP_REQUEST (the client asking again
// from the first shard not covered), and returns
// how many datagrams and bytes that takes. Every datagram is encoded with
// wire.MapReply.Append, which checks it, and given to each if not nil.
func fetch(m delegation.Map, runs []delegation.Run, addr func(delegation.Owner) string, graceMs uint32, first, end uint32, each func(pkt []byte)) (int, int, error) {
	var (
		n, bytes int
		buf      = make([]byte, 0, wire.MaxDatagram)
	)
	ri := 0
	for first < end {
		for ri < len(runs) && runs[ri].First+runs[ri].Count <= first {
			ri++
		}
		hi := ri
		for hi < len(runs) && runs[hi].First < end {
			hi++
		}
		r := delegation.Page(m, runs[ri:hi], uint32(m.Shards()), first, graceMs, addr)
		if len(r.Runs) == 0 {
			return n, bytes, fmt.Errorf("sim: a MAP_REPLY cannot carry the run at shard %d", first)
		}
		last := r.Runs[len(r.Runs)-1]
		first = last.First + last.Count
		h := wire.Header{Request: 1, MapVersion: m.Version}
		pkt, err := r.Append(buf[:0], h)
		if err != nil {
			return n, bytes, fmt.Errorf("sim: MAP_REPLY: %w", err)
		}
		n++
		bytes += len(pkt)
		if each != nil {
			each(pkt)
		}
	}
	return n, bytes, nil
}

// rangeDoc returns the part of m covering shards [first, first+count) as a
// map of its own (a per-range document of the Planned design): the owners
// it names and their shards, renumbered from 0.
func rangeDoc(m delegation.Map, first, count int) delegation.Map {
	d := delegation.Map{Version: m.Version, Owner: make([]int32, count), Epoch: make([]uint32, count)}
	idx := map[int32]int32{}
	for s := range count {
		o := m.Owner[first+s]
		d.Epoch[s] = m.Epoch[first+s]
		if o == delegation.NoOwner {
			d.Owner[s] = delegation.NoOwner
			continue
		}
		j, ok := idx[o]
		if !ok {
			j = int32(len(d.Workers))
			idx[o] = j
			d.Workers = append(d.Workers, m.Workers[o])
		}
		d.Owner[s] = j
	}
	return d
}

// rangeCost is the cost of the per-range documents that contain a changed
// shard: their JSON bytes (written to etcd and sent to each watcher) and
// the MAP_REPLY datagrams that fetch those ranges.
func rangeCost(m delegation.Map, changed []bool, per int, addr func(delegation.Owner) string, graceMs uint32) (docs, jsonBytes, datagrams int, err error) {
	runs := delegation.Runs(m)
	for first := 0; first < m.Shards(); first += per {
		cnt := min(per, m.Shards()-first)
		hit := false
		for s := first; s < first+cnt && !hit; s++ {
			hit = changed[s]
		}
		if !hit {
			continue
		}
		b, err := rangeDoc(m, first, cnt).MarshalJSON()
		if err != nil {
			return 0, 0, 0, err
		}
		n, _, err := fetch(m, runs, addr, graceMs, uint32(first), uint32(first+cnt), nil)
		if err != nil {
			return 0, 0, 0, err
		}
		docs++
		jsonBytes += len(b)
		datagrams += n
	}
	return docs, jsonBytes, datagrams, nil
}
