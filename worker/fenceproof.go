package worker

import (
	"net"

	"github.com/tokend/tokend/fenceproof"
	"github.com/tokend/tokend/wire"
)

// msgProofNeedsAuth answers FENCE_PROOF on a worker without authentication:
// it has no cluster key, so no fence key to sign with.
var msgProofNeedsAuth = []byte("fence proofs need authentication (the cluster key)")

// handleFenceProof answers FENCE_PROOF (wire/SPEC.md §5): a proof, signed
// with the cluster's fence key, that session s holds the grant with that
// fence on that name over exactly that range, in a shard this worker serves
// at the header's epoch; GRACE while the shard recovers and has no such
// grant (it may not be reclaimed yet). It is read-only: no reply cache, no
// ack, no address change. Caller holds mu; the datagram's tag has been
// checked.
func (w *Worker) handleFenceProof(ob *outbox, s *session, h wire.Header, pkt []byte, from *net.UDPAddr) {
	rh := h.Reply()
	rh.MapVersion = w.dmap.Version
	if w.fenceKey == nil {
		w.met.drop("fence_proof_insecure")
		w.met.op(h.Type, wire.StatusBadRequest)
		rh.Status = wire.StatusBadRequest
		if p, err := (wire.ErrorBody{Message: msgProofNeedsAuth}).Append(nil, rh); err == nil {
			ob.add(p, from, h.Type, s.keys.out)
		}
		return
	}
	if !ob.stamp.Before(ob.safe) { // invariant 5
		w.met.drop("unavailable")
		w.met.op(h.Type, wire.StatusUnavailable)
		ob.add(errorReply(rh, wire.StatusUnavailable), from, h.Type, s.keys.out)
		return
	}
	var m wire.FenceProof
	if err := m.Decode(h, pkt); err != nil {
		w.badRequest(ob, s, h, from, wire.Reason(err))
		return
	}
	if wire.Shard(m.Name, uint32(len(w.shards))) != h.Shard {
		w.badRequest(ob, s, h, from, "wrong_shard")
		return
	}
	st, status, hint := w.owner(h.Shard, h.Epoch)
	if st == nil {
		w.met.drop(label(status.String()))
		w.met.op(h.Type, status)
		ob.add(notOwnerReply(rh, status, hint), from, h.Type, s.keys.out)
		return
	}
	if st.tab == nil {
		w.met.drop("handoff")
		w.met.op(h.Type, wire.StatusUnavailable)
		ob.add(awaitingReply(rh), from, h.Type, s.keys.out)
		return
	}
	g, ok := st.tab.Held(s.id, m.Name, m.Fence)
	if !ok && st.tab.InGrace() {
		// Recovering: the grant may not have been reclaimed yet. GRACE is
		// retryable, as for other token requests in the grace period.
		w.met.op(h.Type, wire.StatusGrace)
		ob.add(errorReply(rh, wire.StatusGrace), from, h.Type, s.keys.out)
		return
	}
	if !ok || !sameRange(g.Start, g.End, m.Start, m.End) {
		w.met.op(h.Type, wire.StatusNotHeld)
		ob.add(errorReply(rh, wire.StatusNotHeld), from, h.Type, s.keys.out)
		return
	}
	proof, err := fenceproof.Sign(w.fenceKey, fenceproof.Claims{
		Name: m.Name, Fence: g.Fence, Mode: g.Mode, Start: m.Start, End: m.End,
		Shard: h.Shard, Epoch: st.epoch, WorkerID: []byte(w.cfg.ID), IssuedAtMs: uint64(ob.stamp.UnixMilli()),
	})
	var p []byte
	if err == nil {
		p, err = wire.Proof{Proof: proof}.Append(nil, rh)
	}
	if err != nil { // a worker id longer than 255 bytes
		w.log.Error("fence proof not signed", "err", err)
		w.met.op(h.Type, wire.StatusInternal)
		ob.add(errorReply(rh, wire.StatusInternal), from, h.Type, s.keys.out)
		return
	}
	w.met.op(h.Type, wire.StatusOK)
	ob.add(p, from, h.Type, s.keys.out)
}

// sameRange reports whether [s1, e1) and [s2, e2) are the same range, the
// whole token in either spelling included.
func sameRange(s1, e1, s2, e2 uint64) bool {
	if wire.IsWhole(s1, e1) || wire.IsWhole(s2, e2) {
		return wire.IsWhole(s1, e1) && wire.IsWhole(s2, e2)
	}
	return s1 == s2 && e1 == e2
}
