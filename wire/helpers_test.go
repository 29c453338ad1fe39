package wire

import (
	"fmt"
	"strings"
)

// message is what every message struct pointer implements; the tests use it to
// treat messages generically (the package itself does not need it).
type message interface {
	Append(dst []byte, h Header) ([]byte, error)
	Decode(h Header, b []byte) error
}

// newBody returns a pointer to a zero message struct of kind k, or nil.
func newBody(k Kind) message {
	switch k {
	case KindEmpty:
		return &Empty{}
	case KindSessionOpen:
		return &SessionOpen{}
	case KindSessionReply:
		return &SessionReply{}
	case KindCookie:
		return &Cookie{}
	case KindKeepalive:
		return &Keepalive{}
	case KindKeepaliveReply:
		return &KeepaliveReply{}
	case KindAcquire:
		return &Acquire{}
	case KindRelease:
		return &Release{}
	case KindConvert:
		return &Convert{}
	case KindCancel:
		return &Cancel{}
	case KindReclaim:
		return &Reclaim{}
	case KindRevokeAck:
		return &RevokeAck{}
	case KindGrantAck:
		return &GrantAck{}
	case KindAcquireBatch:
		return &AcquireBatch{}
	case KindGrantBatch:
		return &GrantBatch{}
	case KindBatchConflict:
		return &BatchConflict{}
	case KindBundle:
		return &Bundle{}
	case KindMapRequest:
		return &MapRequest{}
	case KindMapReply:
		return &MapReply{}
	case KindRevoke:
		return &Revoke{}
	case KindGrant:
		return &Grant{}
	case KindQueued:
		return &Queued{}
	case KindError:
		return &ErrorBody{}
	case KindNotOwner:
		return &NotOwner{}
	case KindFenceProof:
		return &FenceProof{}
	case KindProof:
		return &Proof{}
	}
	return nil
}

// kindOf returns the kind of a message struct pointer.
func kindOf(m message) Kind {
	for k := KindEmpty; k < numKinds; k++ {
		if fmt.Sprintf("%T", newBody(k)) == fmt.Sprintf("%T", m) {
			return k
		}
	}
	return KindInvalid
}

// decode is the full decode of SPEC.md: header, then the message its kind names.
func decode(b []byte) (Header, message, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return h, nil, err
	}
	m := newBody(h.Kind())
	if m == nil {
		return h, nil, fmt.Errorf("valid header %+v has no message kind", h)
	}
	return h, m, m.Decode(h, b)
}

// sentinelName returns the name of the sentinel err wraps, as used in
// testdata/vectors.txt.
func sentinelName(err error) string {
	names := map[string]string{
		"short": "ErrShort", "too_large": "ErrTooLarge", "bad_magic": "ErrBadMagic",
		"version": "ErrVersion", "length": "ErrLength", "checksum": "ErrChecksum",
		"unknown_type": "ErrUnknownType", "bad_flags": "ErrBadFlags",
		"bad_status": "ErrBadStatus", "bad_header": "ErrBadHeader", "name_length": "ErrNameLength",
		"value_length": "ErrValueLength", "bad_mode": "ErrBadMode", "bad_range": "ErrBadRange",
		"bad_body": "ErrBadBody", "kind": "ErrKind",
	}
	if n, ok := names[Reason(err)]; ok {
		return n
	}
	return fmt.Sprintf("unknown(%v)", err)
}

// field is one "key: value # comment" line of a vector.
type field struct{ key, val, comment string }

func (f field) String() string {
	s := f.key + ":"
	if f.val != "" {
		s += " " + f.val
	}
	if f.comment != "" {
		s += " # " + f.comment
	}
	return s
}

// describer collects fields.
type describer []field

func (d *describer) add(key, val, comment string) { *d = append(*d, field{key, val, comment}) }
func (d *describer) u(key string, v uint64)       { d.add(key, fmt.Sprint(v), "") }
func (d *describer) bool(key string, v bool) {
	if v {
		d.add(key, "1", "")
	} else {
		d.add(key, "0", "")
	}
}
func (d *describer) bytes(key string, p []byte) { d.add(key, fmt.Sprintf("%x", p), printable(p)) }
func (d *describer) mode(m Mode)                { d.add("mode", fmt.Sprint(uint8(m)), m.String()) }
func (d *describer) fence(f uint64) {
	d.add("fence", fmt.Sprint(f), fmt.Sprintf("epoch %d seq %d", FenceEpoch(f), FenceSeq(f)))
}

// decodedRange is a range as decoders return it (whole: 0, WholeEnd).
func decodedRange(start, end uint64) (uint64, uint64) {
	if IsWhole(start, end) {
		return 0, WholeEnd
	}
	return start, end
}
func (d *describer) rng(start, end uint64) {
	if IsWhole(start, end) {
		d.add("start", "0", "")
		d.add("end", fmt.Sprint(WholeEnd), "whole token, 0,0 on the wire")
		return
	}
	d.u("start", start)
	d.u("end", end)
}

// printable renders p as a quoted comment if it is non-empty printable ASCII.
func printable(p []byte) string {
	if len(p) == 0 {
		return ""
	}
	for _, c := range p {
		if c < 0x20 || c > 0x7e || c == '"' || c == '#' {
			return ""
		}
	}
	return `"` + string(p) + `"`
}

var flagNames = map[Type][]string{
	TypeKeepalive: {"RENEW", "DONE"},
	TypeAcquire:   {"TRY"},
	TypeRelease:   {"VALUE"},
	TypeConvert:   {"TRY", "VALUE"},
}

// describeHeader lists the header fields (the codec-owned ones as well).
func describeHeader(d *describer, h Header, b []byte) {
	d.add("type", fmt.Sprintf("0x%02x", uint8(h.Type)), h.Type.String())
	var fl []string
	for i, n := range flagNames[h.Type] {
		if h.Flags&(1<<i) != 0 {
			fl = append(fl, n)
		}
	}
	d.add("flags", fmt.Sprintf("0x%02x", h.Flags), strings.Join(fl, "|"))
	d.add("status", fmt.Sprint(uint8(h.Status)), h.Status.String())
	d.u("body_len", uint64(len(b)-HeaderLen))
	d.u("session", h.Session)
	d.u("request", h.Request)
	d.u("ack", h.Ack)
	d.u("shard", uint64(h.Shard))
	d.u("epoch", uint64(h.Epoch))
	d.u("map_version", h.MapVersion)
	d.add("crc", fmt.Sprintf("0x%08x", Checksum(b)), "")
	d.add("body", h.Kind().String(), "")
}

// describeBody lists every field of a decoded message, in wire order.
func describeBody(d *describer, m message) {
	switch m := m.(type) {
	case *Empty:
	case *SessionOpen:
		d.u("ttl_ms", uint64(m.TTLMs))
		d.bytes("lib", m.Lib)
		d.bytes("nonce", m.Nonce[:])
		d.bytes("key_name", m.KeyName)
		d.bytes("cookie", m.Cookie)
	case *SessionReply:
		d.u("ttl_ms", uint64(m.TTLMs))
		d.u("shard_count", uint64(m.ShardCount))
		d.u("grace_ms", uint64(m.GraceMs))
		d.u("worker_ttl_ms", uint64(m.WorkerTTLMs))
		d.bytes("worker_nonce", m.WorkerNonce[:])
	case *Cookie:
		d.bytes("cookie", m.Cookie[:])
	case *Keepalive:
		d.bool("renew", m.Renew)
		d.u("entries", uint64(len(m.Entries)))
		for i, e := range m.Entries {
			d.u(fmt.Sprintf("entry.%d.shard", i), uint64(e.Shard))
			d.u(fmt.Sprintf("entry.%d.epoch", i), uint64(e.Epoch))
		}
		d.u("done", m.Done)
	case *KeepaliveReply:
		d.u("session_ttl_ms", uint64(m.SessionTTLMs))
		d.u("validity_ms", uint64(m.ValidityMs))
		d.u("entries", uint64(len(m.Statuses)))
		for i, s := range m.Statuses {
			d.add(fmt.Sprintf("entry.%d.status", i), fmt.Sprint(uint8(s)), s.String())
		}
	case *Acquire:
		d.bool("try", m.Try)
		d.bool("detect", m.Detect)
		d.bool("grow", m.Grow)
		d.mode(m.Mode)
		d.u("wait_ms", uint64(m.WaitMs))
		d.rng(m.Start, m.End)
		d.bytes("token", m.Name)
	case *Release:
		d.fence(m.Fence)
		d.bytes("token", m.Name)
		d.bool("has_range", m.HasRange)
		if m.HasRange {
			d.rng(m.Start, m.End)
		} else {
			d.u("start", 0)
			d.u("end", 0)
		}
		d.bool("has_value", m.HasValue)
		d.bytes("value", m.Value)
	case *Convert:
		d.bool("try", m.Try)
		d.bool("detect", m.Detect)
		d.fence(m.Fence)
		d.mode(m.Mode)
		d.u("wait_ms", uint64(m.WaitMs))
		d.bytes("token", m.Name)
		d.bool("has_value", m.HasValue)
		d.bytes("value", m.Value)
	case *Cancel:
		d.u("target", m.Target)
	case *Reclaim:
		d.fence(m.Fence)
		d.mode(m.Mode)
		d.rng(m.Start, m.End)
		d.bytes("token", m.Name)
		d.bool("has_value", m.HasValue)
		d.bytes("value", m.Value)
	case *RevokeAck:
		d.u("target", m.Target)
	case *GrantAck:
		d.u("target", m.Target)
	case *MapRequest:
		d.u("first_shard", uint64(m.FirstShard))
	case *MapReply:
		d.u("map_version", m.MapVersion)
		d.u("shard_count", uint64(m.ShardCount))
		d.u("grace_ms", uint64(m.GraceMs))
		d.u("workers", uint64(len(m.Workers)))
		for i, w := range m.Workers {
			d.u(fmt.Sprintf("worker.%d.index", i), uint64(w.Index))
			d.bytes(fmt.Sprintf("worker.%d.addr", i), w.Addr)
			d.bytes(fmt.Sprintf("worker.%d.id", i), w.ID)
		}
		d.u("runs", uint64(len(m.Runs)))
		for i, r := range m.Runs {
			d.u(fmt.Sprintf("run.%d.first", i), uint64(r.First))
			d.u(fmt.Sprintf("run.%d.count", i), uint64(r.Count))
			c := ""
			if r.Worker == NoWorker {
				c = "no owner"
			}
			d.add(fmt.Sprintf("run.%d.worker", i), fmt.Sprint(r.Worker), c)
			d.u(fmt.Sprintf("run.%d.epoch", i), uint64(r.Epoch))
		}
	case *Revoke:
		d.fence(m.Fence)
		d.mode(m.Mode)
		d.rng(m.Start, m.End)
		d.bytes("token", m.Name)
	case *Grant:
		d.fence(m.Fence)
		d.mode(m.Mode)
		d.u("validity_ms", uint64(m.ValidityMs))
		d.rng(m.Start, m.End)
		var c []string
		if m.ValueFlags&ValueValid != 0 {
			c = append(c, "VALID")
		}
		if m.ValueFlags&ValueLost != 0 {
			c = append(c, "LOST")
		}
		d.add("value_flags", fmt.Sprintf("0x%02x", m.ValueFlags), strings.Join(c, "|"))
		d.bytes("value", m.Value)
	case *Queued:
		d.u("position", uint64(m.Position))
	case *ErrorBody:
		d.bytes("message", m.Message)
	case *NotOwner:
		d.bytes("message", m.Message)
		d.bytes("owner_addr", m.Addr)
		d.u("owner_epoch", uint64(m.Epoch))
	case *FenceProof:
		d.fence(m.Fence)
		d.rng(m.Start, m.End)
		d.bytes("token", m.Name)
	case *Proof:
		d.bytes("proof", m.Proof)
	case *AcquireBatch:
		d.u("count", uint64(len(m.Entries)))
		for i, e := range m.Entries {
			d.add(fmt.Sprintf("entry.%d.mode", i), fmt.Sprint(uint8(e.Mode)), e.Mode.String())
			st, en := decodedRange(e.Start, e.End)
			d.u(fmt.Sprintf("entry.%d.start", i), st)
			d.u(fmt.Sprintf("entry.%d.end", i), en)
			d.bytes(fmt.Sprintf("entry.%d.token", i), e.Name)
		}
	case *GrantBatch:
		d.u("validity_ms", uint64(m.ValidityMs))
		d.u("count", uint64(len(m.Grants)))
		for i, g := range m.Grants {
			d.add(fmt.Sprintf("grant.%d.fence", i), fmt.Sprint(g.Fence), fmt.Sprintf("epoch %d seq %d", FenceEpoch(g.Fence), FenceSeq(g.Fence)))
			d.add(fmt.Sprintf("grant.%d.mode", i), fmt.Sprint(uint8(g.Mode)), g.Mode.String())
			st, en := decodedRange(g.Start, g.End)
			d.u(fmt.Sprintf("grant.%d.start", i), st)
			d.u(fmt.Sprintf("grant.%d.end", i), en)
			d.u(fmt.Sprintf("grant.%d.value_flags", i), uint64(g.ValueFlags))
			d.bytes(fmt.Sprintf("grant.%d.value", i), g.Value)
		}
	case *BatchConflict:
		d.u("conflict_entry", uint64(m.Entry))
		d.bytes("message", m.Message)
	case *Bundle:
		d.u("count", uint64(len(m.Datagrams)))
		for i, dg := range m.Datagrams {
			d.add(fmt.Sprintf("datagram.%d", i), fmt.Sprintf("%x", dg), Type(dg[3]).String())
		}
	default:
		panic(fmt.Sprintf("describeBody: %T", m))
	}
}

// bodyFields returns the message description as text, for comparisons.
func bodyFields(m message) string {
	var d describer
	describeBody(&d, m)
	var sb strings.Builder
	for _, f := range d {
		fmt.Fprintf(&sb, "%s: %s\n", f.key, f.val)
	}
	return sb.String()
}
