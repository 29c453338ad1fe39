package vouch

import (
	"math/rand/v2"
	"testing"
)

// TestRandomAgainstOracle feeds random rounds (out of order starts, late
// and shorter TTLs, failures, stale maps, a lost lease) to a Lease and
// checks SafeUntil after each against the rule stated naively: the latest
// proof of life among the grant and the rounds that were answered with the
// map confirmed, minus the margin; nothing once etcd said the lease is gone.
func TestRandomAgainstOracle(t *testing.T) {
	for seed := range uint64(500) {
		rng := rand.New(rand.NewPCG(seed, 2))
		ttl := (2 + rng.Int64N(9)) * second
		drift := rng.Float64() * 0.05
		sent := rng.Int64N(10 * second)
		l := Grant(sent, ttl, ttl, drift)
		margin := int64(float64(ttl)*drift) + Margin
		proof, lost := sent+ttl, false
		now := sent
		for step := range 60 {
			now += rng.Int64N(ttl / 2)
			r := Renewal{Start: now - rng.Int64N(ttl), Answered: rng.IntN(5) > 0, MapCurrent: rng.IntN(4) > 0}
			if r.Answered {
				r.TTL = ttl - rng.Int64N(ttl/2)
				if rng.IntN(60) == 0 {
					r.TTL = 0
				}
			} else {
				r.NotFound = rng.IntN(60) == 0
			}
			v, again := l.Renewed(r)
			switch {
			case lost || r.NotFound || (r.Answered && r.TTL <= 0):
				lost = true
			case r.Answered && r.MapCurrent:
				proof = max(proof, r.Start+min(ttl, r.TTL))
			}
			until, ok := l.SafeUntil()
			if ok == lost || (ok && until != proof-margin) {
				t.Fatalf("seed %d step %d: %+v -> %v: SafeUntil %d %v, want %d (lost %v)", seed, step, r, v, until, ok, proof-margin, lost)
			}
			if !lost && (again <= 0 || again > ttl/4) {
				t.Fatalf("seed %d step %d: next round in %d, want within (0, TTL/4]", seed, step, again)
			}
		}
	}
}
