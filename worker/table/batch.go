package table

import "github.com/tokend/tokend/wire"

// AcquireAll grants every entry to request (session, req) at once, or none
// of them: it never queues. On success it appends one KindReply per entry,
// in entry order, each StatusOK with its grant and Entry set to its index.
// Otherwise it appends exactly one KindReply with the status and Entry set
// to the entry that failed: StatusConflict (that entry conflicts with a
// grant or an earlier waiter), StatusBadRequest (malformed, or two entries
// of the batch overlap on one token in incompatible modes), StatusGrace,
// StatusLimit, StatusExhausted or StatusSessionExpired (the session is
// being ended: EndSession); the table is then unchanged.
//
// A batch is atomic within this table (one shard); batches across shards
// are the client's business (SPEC §21).
func (t *Table) AcquireAll(session, req uint64, entries []BatchEntry, now int64, out []Output) []Output {
	out = t.advance(now, out)
	fail := func(i int, st Status) []Output {
		return append(out, Output{Kind: KindReply, Status: st, Session: session, Req: req, Entry: i})
	}
	if session == 0 || len(entries) == 0 || len(entries) > MaxBatch {
		return fail(0, StatusBadRequest)
	}
	for i := range entries {
		e := &entries[i]
		if !validName(e.Name) || !e.Mode.Valid() || e.Start >= e.End {
			return fail(i, StatusBadRequest)
		}
		for j := range i {
			o := &entries[j]
			if string(o.Name) == string(e.Name) && overlaps(o.Start, o.End, e.Start, e.End) &&
				!wire.Compatible(o.Mode, e.Mode) {
				return fail(i, StatusBadRequest)
			}
		}
	}
	if t.isEnding(session) {
		return fail(0, StatusSessionExpired)
	}
	if t.grace {
		return fail(0, StatusGrace)
	}
	si := t.sessions[session]
	if lim := t.cfg.MaxGrantsPerSession; lim > 0 && si != 0 && int(t.sess.at(si).n)+len(entries) > lim {
		return fail(0, StatusLimit)
	}
	for i := range entries {
		e := &entries[i]
		if ti, _ := t.lookup(e.Name); ti != 0 && !t.admissible(t.toks.at(ti), 0, e.Mode, e.Start, e.End, false) {
			return fail(i, StatusConflict)
		}
	}
	if MaxSeq-t.seq < uint64(len(entries)) {
		return fail(0, StatusExhausted)
	}
	if si == 0 {
		si = t.newSession(session)
	}
	for i := range entries {
		e := &entries[i]
		fence, _ := t.nextFence() // checked above
		ti, h := t.lookup(e.Name)
		if ti == 0 {
			ti = t.newToken(e.Name, h)
		}
		gi := t.addGrant(ti, si, e.Mode, e.Start, e.End, fence, req)
		o := t.grantOut(KindReply, session, req, gi)
		o.Entry = i
		out = append(out, o)
	}
	return out
}

// BatchGrants reads AcquireAll's outputs for the reply: the grants in entry
// order, appended to grants, or the output of the entry that failed (then
// grants holds nothing of this batch). Outputs other than replies (there
// are none today) are skipped.
func BatchGrants(outs []Output, grants []wire.BatchGrant) ([]wire.BatchGrant, *Output) {
	var failed *Output
	for i := range outs {
		o := &outs[i]
		if o.Kind != KindReply {
			continue
		}
		if o.Status != StatusOK {
			failed = o
			continue
		}
		g := wire.BatchGrant{Fence: o.Fence, Mode: o.Mode, Start: o.Start, End: o.End, ValueFlags: uint8(o.VFlags)}
		if o.VFlags&ValueValid != 0 {
			g.Value = []byte(o.Value)
		}
		grants = append(grants, g)
	}
	return grants, failed
}
