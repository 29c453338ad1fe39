package clientlib_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/testkit/devcluster"
	"github.com/tokend/tokend/wire"
)

// TestE2EFenceProof: Token.Proof returns a proof that verifies with the
// public key derived from the cluster key and states the grant; a token
// released has none; a proof does not verify for an inflated fence.
func TestE2EFenceProof(t *testing.T) {
	c := startCluster(t, nil, 1)
	a := dial(t, c, nil, 0, clientlib.Config{})
	ctx := ctxFor(t, 10*time.Second)
	tok, err := a.Acquire(ctx, "ledger/7", wire.PW, clientlib.Range(0, 4096))
	if err != nil {
		t.Fatal(err)
	}
	proof, err := tok.Proof(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub := fenceproof.PublicKey(c.Auth().ClusterKey[:])
	claims, err := fenceproof.Verify(pub, proof)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(claims.Name, []byte("ledger/7")) || claims.Fence != tok.Fence() || claims.Mode != wire.PW ||
		claims.Start != 0 || claims.End != 4096 {
		t.Errorf("claims %+v, want ledger/7 fence %d PW [0, 4096)", claims, tok.Fence())
	}

	// An inflated fence: a client rewriting the claims cannot keep the
	// signature.
	p, err := fenceproof.Parse(proof)
	if err != nil {
		t.Fatal(err)
	}
	forged := fenceproof.Proof{Sig: p.Sig, Claims: p.Claims}
	forged.Claims.Fence = 1<<63 | 1
	if _, err := fenceproof.Verify(pub, forged.Marshal()); !errors.Is(err, fenceproof.ErrSignature) {
		t.Errorf("inflated fence: %v, want ErrSignature", err)
	}

	if err := tok.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Proof(ctx); !errors.Is(err, clientlib.ErrNotHeld) {
		t.Errorf("released token: %v, want ErrNotHeld", err)
	}
}

// TestE2EFenceProofInsecure: a cluster without authentication has no fence
// key; Proof says so with ErrBadRequest.
func TestE2EFenceProofInsecure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	ctx := ctxFor(t, 30*time.Second)
	c, err := devcluster.Start(ctx, devcluster.Options{Workers: 1, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	a := dial(t, c, nil, 0, clientlib.Config{Insecure: true})
	tok, err := a.Acquire(ctx, "ledger/7", wire.EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Proof(ctx); !errors.Is(err, clientlib.ErrBadRequest) {
		t.Errorf("insecure cluster: %v, want ErrBadRequest", err)
	}
}
