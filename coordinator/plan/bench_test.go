package plan

import (
	"fmt"
	"slices"
	"testing"

	"github.com/tokend/tokend/cluster/delegation"
)

// benchWorkers returns k live workers with realistic ids and lease ids.
func benchWorkers(k int) []Worker {
	ws := make([]Worker, k)
	for i := range ws {
		ws[i] = Worker{ID: fmt.Sprintf("worker-%04d", i), Incarnation: 0x694d5765fc710000 + uint64(i)*7919}
	}
	return ws
}

// BenchmarkPlan plans 65,536 shards over 1,000 workers: from no map, after
// one join, after one leave (a crash), and with nothing to do.
func BenchmarkPlan(b *testing.B) {
	const n = 65536
	live := benchWorkers(1000)
	base, _, err := Plan(live, n, delegation.Map{})
	if err != nil {
		b.Fatal(err)
	}
	joined := append(slices.Clone(live), Worker{ID: "worker-new", Incarnation: 1})
	left := slices.Delete(slices.Clone(live), 500, 501)
	for _, bc := range []struct {
		name string
		live []Worker
		cur  delegation.Map
	}{
		{"initial", live, delegation.Map{}},
		{"join", joined, base},
		{"leave", left, base},
		{"steady", live, base},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Plan(bc.live, n, bc.cur); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkJSON(b *testing.B) {
	m, _, err := Plan(benchWorkers(1000), 65536, delegation.Map{})
	if err != nil {
		b.Fatal(err)
	}
	data, _ := m.MarshalJSON()
	b.Run("marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.MarshalJSON(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m delegation.Map
			if err := m.UnmarshalJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRuns(b *testing.B) {
	m, _, err := Plan(benchWorkers(1000), 65536, delegation.Map{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		delegation.Runs(m)
	}
}
