package worker

import (
	"net"

	"github.com/tokend/tokend/wire"
	core "github.com/tokend/tokend/worker/session"
	"github.com/tokend/tokend/worker/table"
)

// handleBatch applies an ACQUIRE_BATCH (SPEC §21) that the at-most-once
// check let through: every entry must name a token of the header's shard;
// the table grants all or none (table.AcquireAll) and the one reply,
// GRANT_BATCH, BATCH_CONFLICT or an error, is cached like any final reply.
func (w *Worker) handleBatch(ob *outbox, s *session, h, rh wire.Header, pkt []byte, from *net.UDPAddr) {
	var m wire.AcquireBatch
	if err := m.Decode(h, pkt); err != nil {
		w.badRequest(ob, s, h, from, wire.Reason(err))
		return
	}
	s.core.Ack(h.Ack, ob.now)
	entries := make([]table.BatchEntry, len(m.Entries))
	for i, e := range m.Entries {
		if wire.Shard(e.Name, uint32(len(w.shards))) != h.Shard {
			w.badRequest(ob, s, h, from, "wrong_shard")
			return
		}
		entries[i] = table.BatchEntry{Name: e.Name, Mode: e.Mode, Start: e.Start, End: e.End}
	}
	st := w.servable(ob, s, h, rh, from)
	if st == nil {
		return
	}
	if s.nameBound+len(entries) > w.cfg.Limits.NamesPerSession {
		s.nameBound = w.names(s)
	}
	if s.nameBound+len(entries) > w.cfg.Limits.NamesPerSession {
		w.limited(ob, h, from, limNames, s.keys.out)
		return
	}
	s.nameBound += len(entries)
	s.addr = from
	s.shards[h.Shard] = struct{}{}
	w.out = st.tab.AcquireAll(s.id, h.Request, entries, ob.now, w.out[:0])
	grants, failed := table.BatchGrants(w.out, nil)
	rh.MapVersion = w.dmap.Version
	var (
		reply []byte
		err   error
	)
	switch {
	case failed == nil:
		reply, err = wire.GrantBatch{ValidityMs: validity(ob.safe, ob.stamp), Grants: grants}.Append(nil, rh)
	case failed.Status == wire.StatusConflict:
		reply, err = wire.BatchConflict{Entry: uint8(failed.Entry)}.Append(nil, rh)
	default:
		reply = errorReply(rh, failed.Status)
	}
	status := wire.StatusOK
	if failed != nil {
		status = failed.Status
	}
	if err != nil || reply == nil {
		w.log.Error("cannot encode batch reply", "err", err, "status", status)
	} else {
		s.core.Applied(core.Outcome{Req: h.Request, Type: h.Type, Shard: h.Shard, Status: status, Pkt: reply})
		w.trackRevokes(s)
		w.met.op(h.Type, status)
		ob.add(reply, s.addr, h.Type, s.keys.out)
	}
	// What the clock did before the batch (timeouts, wakes, revokes).
	w.apply(ob, h.Shard, st, w.out, nil)
	w.timeShard(h.Shard, st.tab)
}
