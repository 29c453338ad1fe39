package grace

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// model is a naive Tracker: after every event it looks at every recovery
// and every session it awaits again, and ends a recovery when each one has
// ended or has (had, at some event) a Done that counts.
type model struct {
	version  uint64
	done     map[uint64]uint64
	ended    map[uint64]bool
	recs     map[uint32]*mrec // by shard
	gen      uint64
	lastGen  uint64 // gen of the newest recovery
	lastV    uint64
	lastLive bool
}

type mrec struct {
	epoch     uint32
	version   uint64
	gen       uint64
	live      bool
	empty     bool
	await     []uint64
	satisfied map[uint64]bool
}

func (m *model) start(shard, epoch uint32, v uint64) {
	delete(m.recs, shard)
	if !(m.lastGen > 0 && m.lastV == v && !m.anyLive(m.lastGen)) {
		m.gen++
		m.lastGen, m.lastV = m.gen, v
	}
	m.recs[shard] = &mrec{epoch: epoch, version: v, gen: m.lastGen, satisfied: map[uint64]bool{}}
}

// anyLive: the recoveries of tag gen have their live sessions.
func (m *model) anyLive(gen uint64) bool {
	for _, r := range m.recs {
		if r.gen == gen && r.live {
			return true
		}
	}
	return false
}

func (m *model) step() []Ended {
	var out []Ended
	for shard, r := range m.recs {
		if !r.live {
			continue
		}
		all := true
		for _, s := range r.await {
			if d, ok := m.done[s]; ok && d >= r.version && d <= m.version {
				r.satisfied[s] = true
			}
			all = all && (r.satisfied[s] || m.ended[s])
		}
		if all {
			why := AllDone
			if r.empty {
				why = NoSessions
			}
			out = append(out, Ended{Shard: shard, Epoch: r.epoch, Reason: why})
			delete(m.recs, shard)
		}
	}
	slices.SortFunc(out, func(a, b Ended) int { return int(a.Shard) - int(b.Shard) })
	return out
}

// TestRandomAgainstModel drives a Tracker and the model with the same
// random events and compares which shards end grace, and when.
func TestRandomAgainstModel(t *testing.T) {
	endings := map[Reason]int{}
	defer func() {
		if !t.Failed() && (endings[AllDone] < 100 || endings[NoSessions] == 0) {
			t.Errorf("the random events ended too few recoveries to test much: %v", endings)
		}
	}()
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		tr := New()
		m := &model{done: map[uint64]uint64{}, ended: map[uint64]bool{}, recs: map[uint32]*mrec{}}
		var version uint64 = 1
		epochs := map[uint32]uint32{}
		sessions := []uint64{1, 2, 3, 4, 5}
		var log []string
		for i := 0; i < 200; i++ {
			var got, want []Ended
			switch k := rng.IntN(7); k {
			case 0: // a new map, maybe starting recoveries
				version += uint64(1 + rng.IntN(2))
				got, want = tr.Map(version, nil), nil
				m.version = version
				want = m.step()
				for range rng.IntN(3) {
					s := uint32(rng.IntN(6))
					epochs[s]++
					tr.Start(s, epochs[s]+1, version)
					m.start(s, epochs[s]+1, version)
				}
				log = append(log, fmt.Sprintf("map %d", version))
			case 1: // a live read answers
				gen, ok := tr.NeedLive()
				if !ok {
					continue
				}
				var live []uint64
				for _, s := range sessions {
					if !m.ended[s] && rng.IntN(4) > 0 {
						live = append(live, s)
					}
				}
				got = tr.Live(gen, live, nil)
				for _, r := range m.recs {
					if !r.live && r.gen <= gen {
						r.live, r.await, r.empty = true, slices.Clone(live), len(live) == 0
					}
				}
				want = m.step()
				log = append(log, fmt.Sprintf("live %d %v", gen, live))
			case 2, 3, 4: // a Done, for a version near the current one
				s := sessions[rng.IntN(len(sessions))]
				v := max(version+uint64(rng.IntN(5)), 3) - 2
				got = tr.Done(s, v, nil)
				m.done[s] = max(m.done[s], v)
				want = m.step()
				log = append(log, fmt.Sprintf("done %d v%d", s, v))
			case 5: // a session ends (a new one takes its place)
				j := rng.IntN(len(sessions))
				s := sessions[j]
				got = tr.End(s, nil)
				delete(m.done, s)
				m.ended[s] = true
				sessions[j] = 100 + uint64(i)
				want = m.step()
				log = append(log, fmt.Sprintf("end %d", s))
			case 6: // a shard leaves, or its grace ends at its deadline
				s := uint32(rng.IntN(6))
				tr.Drop(s)
				delete(m.recs, s)
				log = append(log, fmt.Sprintf("drop %d", s))
			}
			byShard := func(a, b Ended) int { return int(a.Shard) - int(b.Shard) }
			slices.SortFunc(got, byShard)
			for _, e := range got {
				endings[e.Reason]++
			}
			if !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: tracker ended %v, model %v\n%v", seed, i, got, want, log)
			}
		}
	}
}
