// Package allocs measures allocations per call in tests that run beside
// live goroutines (a worker's loops, a client's receive loop).
// testing.AllocsPerRun counts every goroutine's allocations, so those
// loops make it report an allocation now and then; a real allocation in
// the measured call shows in every attempt.
package allocs

import "testing"

// attempts is how many times PerRun measures before it reports.
const attempts = 3

// PerRun is testing.AllocsPerRun(runs, f) at its lowest of a few attempts:
// 0 as soon as one attempt sees none.
func PerRun(runs int, f func()) float64 {
	var n float64
	for range attempts {
		if n = testing.AllocsPerRun(runs, f); n == 0 {
			break
		}
	}
	return n
}
