package delegation

import (
	"cmp"
	"slices"

	"github.com/tokend/tokend/wire"
)

// Page is the MAP_REPLY that answers a request for map m from shard first
// on (SPEC §15): runs (Runs(m); none: the whole map is one run without an
// owner) from first, the first one cut to start there, as many as fit in
// one datagram, each naming its worker by index and listing that worker's
// entry, address from addr, the first time the reply names it. A run whose
// owner has no usable address (addr returns "", or address or id is too
// long for the wire) goes out as wire.NoWorker. shards is the cluster's
// shard count; a first at or past it gets a reply without runs. The worker
// answers MAP_REQUEST with it and tokend-sim counts datagrams with it.
func Page(m Map, runs []Run, shards, first, graceMs uint32, addr func(Owner) string) wire.MapReply {
	r := wire.MapReply{MapVersion: m.Version, ShardCount: shards, GraceMs: graceMs}
	if first >= shards {
		return r
	}
	if len(runs) == 0 {
		runs = []Run{{First: 0, Count: shards, Owner: NoOwner}}
	}
	size := wire.HeaderLen + 8 + 4 + 4 + 2 + 2
	listed := map[int]bool{}
	for _, run := range runs {
		if run.First+run.Count <= first {
			continue
		}
		if run.First < first {
			run.Count -= first - run.First
			run.First = first
		}
		mr := wire.MapRun{First: run.First, Count: run.Count, Worker: wire.NoWorker, Epoch: run.Epoch}
		need := 14
		var add *wire.MapWorker
		if run.Owner != NoOwner && run.Owner < int(wire.NoWorker) {
			o := m.Workers[run.Owner]
			if a := addr(o); a != "" && len(a) <= wire.MaxText && len(o.ID) <= wire.MaxText {
				mr.Worker = uint16(run.Owner)
				if !listed[run.Owner] {
					add = &wire.MapWorker{Index: uint16(run.Owner), Addr: []byte(a), ID: []byte(o.ID)}
					need += 2 + 1 + len(a) + 1 + len(o.ID)
				}
			}
		}
		if size+need > wire.MaxDatagram {
			break
		}
		size += need
		if add != nil {
			listed[run.Owner] = true
			r.Workers = append(r.Workers, *add)
		}
		r.Runs = append(r.Runs, mr)
	}
	slices.SortFunc(r.Workers, func(a, b wire.MapWorker) int { return cmp.Compare(a.Index, b.Index) })
	return r
}
