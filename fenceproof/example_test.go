package fenceproof_test

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"

	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/wire"
)

// Store guards one object per token name with signed fences, as
// docs/SECURITY.md §4 shows.
type Store struct {
	pub     ed25519.PublicKey // fenceproof.ParsePublicKey(output of tokenctl fence-key)
	mu      sync.Mutex        // guards highest
	highest map[string]uint64 // token name -> highest fence accepted
}

func (s *Store) Write(token string, off, n uint64, proof []byte, data []byte) error {
	c, err := fenceproof.Verify(s.pub, proof)
	if err != nil {
		return err // forged, altered, or another cluster's
	}
	if string(c.Name) != token || off < c.Start || off >= c.End || n > c.End-off || !c.Mode.Writes() {
		return errors.New("the proof is for another token, range or mode")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Fence < s.highest[token] {
		return errors.New("stale fence: a later holder has written")
	}
	s.highest[token] = c.Fence
	return nil // apply data
}

// A storage check: a proof verifies with the cluster's public fence key;
// an older holder's proof is refused by the fence comparison, and an
// inflated fence has no valid signature.
func Example() {
	clusterKey := make([]byte, 32) // the workers' cluster.key; storage never sees it
	priv := fenceproof.PrivateKey(clusterKey)
	pub, _ := fenceproof.ParsePublicKey(fenceproof.FormatPublicKey(fenceproof.PublicKey(clusterKey)))
	s := &Store{pub: pub, highest: map[string]uint64{}}

	grant := func(fence uint64) []byte { // what a worker answers FENCE_PROOF with
		p, _ := fenceproof.Sign(priv, fenceproof.Claims{Name: []byte("ledger"), Fence: fence, Mode: wire.EX,
			Start: wire.WholeStart, End: wire.WholeEnd, Shard: 7, Epoch: 3, WorkerID: []byte("w-a"), IssuedAtMs: 1796300000000})
		return p
	}
	old, cur := grant(wire.MakeFence(3, 10)), grant(wire.MakeFence(3, 11))
	fmt.Println(s.Write("ledger", 0, 4096, cur, nil))
	fmt.Println(s.Write("ledger", 0, 4096, old, nil))

	p, _ := fenceproof.Parse(cur)
	inflated := fenceproof.Proof{Sig: p.Sig, Claims: p.Claims}
	inflated.Claims.Fence = 1<<63 | 1
	fmt.Println(s.Write("ledger", 0, 4096, inflated.Marshal(), nil))
	// Output:
	// <nil>
	// stale fence: a later holder has written
	// fenceproof: signature does not verify
}
