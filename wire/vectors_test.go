package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.txt and the FuzzDecode seed corpus")

const (
	vSession = 0x694d9a6f8e2b1c01 // a random 63-bit session id
	vNonce   = 0x5eed0c0ffee0d00d // SESSION_OPEN request id
	vMapVer  = 17
	vEpoch   = 3
)

var (
	vClientNonce = [NonceLen]byte{0xc1, 0x1e, 0x47, 0x7e, 0x40, 0x4c, 0xe0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09}
	vWorkerNonce = [NonceLen]byte{0x30, 0x4b, 0xe4, 0x40, 0x4c, 0xe0, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19}
	vCookie      = [CookieLen]byte{0x00, 0x00, 0x30, 0x39, 0xc0, 0x0c, 0x1e, 0xc0, 0x0c, 0x1e, 0xc0, 0x0c, 0x1e, 0xc0, 0x0c, 0x1e, 0xc0, 0x0c, 0x1e, 0xc0}
	vToken       = []byte("file/7/page/3")
	vToken2      = []byte("inode:42")
	vMaxName     = func() []byte { // 255 bytes 0x00..0xfe: names are arbitrary bytes
		b := make([]byte, MaxName)
		for i := range b {
			b[i] = byte(i)
		}
		return b
	}()
	vValue64 = []byte(strings.Repeat("0123456789abcdef", 4))
	vProof   = func() []byte {
		b, err := hex.DecodeString("360a8ad832fcddeed9c28f5f3b8fd520478531cff22cdfcf5d38c7ce521cd5c0883bbfe505d00d8609da815dc0e65b29ea430d95f6132edd0b30c75117f1e604" +
			"0d66696c652f372f706167652f3300000300000003e9050000000000000000ffffffffffffffff000008230000000303772d61000001a23bd2cb00")
		if err != nil {
			panic(err)
		}
		return b
	}()
)

// vhdr is a client request header for token name (shard = Shard(name, 4096)).
func vhdr(req, ack uint64, name []byte) Header {
	return Header{Session: vSession, Request: req, Ack: ack, Shard: Shard(name, DefaultShardCount),
		Epoch: vEpoch, MapVersion: vMapVer}
}

// vreply is the reply header to request type t of vhdr(req, 0, name), with status s.
func vreply(t Type, s Status, req uint64, name []byte) Header {
	h := vhdr(req, 0, name)
	h.Type = t
	h = h.Reply()
	h.Status = s
	return h
}

type vector struct {
	name string
	h    Header
	m    message
}

// validVectors are the message vectors: every type, every status, the
// limits. Their encodings are in testdata/vectors.txt.
func validVectors() []vector {
	var v []vector
	add := func(name string, h Header, m message) { v = append(v, vector{name, h, m}) }

	// Sessions.
	add("session-open", Header{Request: vNonce}, &SessionOpen{TTLMs: 10000, Lib: []byte("go/0.1.0")})
	add("session-open-defaults", Header{Request: vNonce + 1}, &SessionOpen{})
	add("session-open-cookie", Header{Request: vNonce + 2}, &SessionOpen{TTLMs: 10000, Lib: []byte("go/0.1.0"),
		Nonce: vClientNonce, KeyName: []byte("default"), Cookie: vCookie[:]})
	so := Header{Type: TypeSessionOpen, Request: vNonce + 2}.Reply()
	so.Status, so.MapVersion = StatusCookie, vMapVer
	add("session-open-reply-cookie", so, &Cookie{Cookie: vCookie})
	so = Header{Type: TypeSessionOpen, Request: vNonce}.Reply()
	so.Session, so.MapVersion = vSession, vMapVer
	add("session-open-reply", so, &SessionReply{TTLMs: 10000, ShardCount: 4096, GraceMs: 5000, WorkerTTLMs: 5000,
		WorkerNonce: vWorkerNonce})
	so = Header{Type: TypeSessionOpen, Request: vNonce}.Reply()
	so.Status, so.MapVersion = StatusUnavailable, vMapVer
	add("session-open-reply-unavailable", so, &ErrorBody{Message: []byte("worker lease not current")})
	ka := Header{Session: vSession, Request: 5, Ack: 4, MapVersion: vMapVer}
	add("keepalive-renew", ka, &Keepalive{Renew: true, Entries: []ShardEpoch{{7, 3}, {4095, 1}}})
	ka.Request, ka.Ack = 6, 6
	add("keepalive-empty", ka, &Keepalive{})
	many := make([]ShardEpoch, MaxKeepaliveEntries)
	for i := range many {
		many[i] = ShardEpoch{Shard: uint32(i * 29), Epoch: uint32(1 + i%5)}
	}
	ka.Request = 7
	add("keepalive-max-entries", ka, &Keepalive{Entries: many})
	ka.Request, ka.Ack = 8, 8
	add("keepalive-done", ka, &Keepalive{Entries: []ShardEpoch{{7, 4}}, Done: vMapVer})
	kr := Header{Type: TypeKeepalive, Session: vSession, Request: 5, MapVersion: vMapVer}.Reply()
	add("keepalive-reply", kr, &KeepaliveReply{SessionTTLMs: 10000, ValidityMs: 4850,
		Statuses: []Status{StatusOK, StatusStaleEpoch}})
	kr.Request = 8
	add("keepalive-reply-not-renewed", kr, &KeepaliveReply{ValidityMs: 4850,
		Statuses: []Status{StatusOK, StatusNotOwner, StatusStaleEpoch}})
	kr.Request, kr.Status = 9, StatusUnknownSession
	add("keepalive-reply-unknown-session", kr, &ErrorBody{})
	sc := Header{Type: TypeSessionClose, Session: vSession, Request: 40, Ack: 40, MapVersion: vMapVer}
	add("session-close", sc, &Empty{})
	add("session-close-reply", sc.Reply(), &Empty{})
	sc = sc.Reply()
	sc.Status = StatusSessionExpired
	add("session-close-reply-expired", sc, &ErrorBody{Message: []byte("session lease expired")})

	// Acquire and its replies.
	h := vhdr(10, 10, vToken)
	add("acquire-try-ex", h, &Acquire{Try: true, Mode: EX, Start: WholeStart, End: WholeEnd, Name: vToken})
	h = vhdr(11, 10, vToken2)
	add("acquire-wait-pr-range", h, &Acquire{Mode: PR, WaitMs: 2500, Start: 4096, End: 8192, Name: vToken2})
	h = vhdr(12, 10, vMaxName)
	add("acquire-max-name", h, &Acquire{Mode: CW, WaitMs: WaitForever, Start: 1, End: WholeEnd, Name: vMaxName})
	add("acquire-detect", vhdr(13, 10, vToken), &Acquire{Detect: true, Mode: EX, WaitMs: 1000, Start: WholeStart, End: WholeEnd, Name: vToken})
	add("acquire-grow", vhdr(14, 10, vToken2), &Acquire{Grow: true, Mode: PW, WaitMs: 1000, Start: 0, End: 4096, Name: vToken2})
	add("acquire-reply-grant", vreply(TypeAcquire, StatusOK, 10, vToken), &Grant{Fence: MakeFence(vEpoch, 1001),
		Mode: EX, ValidityMs: 4800, Start: WholeStart, End: WholeEnd, ValueFlags: ValueValid, Value: []byte("v1")})
	add("acquire-reply-grant-value64", vreply(TypeAcquire, StatusOK, 11, vToken2), &Grant{Fence: MakeFence(vEpoch, 1002),
		Mode: PR, ValidityMs: 4750, Start: 4096, End: 8192, ValueFlags: ValueValid, Value: vValue64})
	add("acquire-reply-grant-no-value", vreply(TypeAcquire, StatusOK, 12, vMaxName), &Grant{Fence: MakeFence(MaxEpoch, MaxSeq),
		Mode: CW, ValidityMs: 0, Start: 1, End: WholeEnd})
	add("acquire-reply-queued", vreply(TypeAcquire, StatusQueued, 11, vToken2), &Queued{Position: 2})
	for _, s := range []Status{StatusConflict, StatusTimeout, StatusUnknownSession, StatusGrace, StatusUnavailable,
		StatusBadRequest, StatusLimit, StatusCanceled, StatusExhausted, StatusSessionExpired, StatusDeadlock, StatusUnknownRequest, StatusInternal} {
		name := "acquire-reply-" + strings.ReplaceAll(strings.ToLower(s.String()), "_", "-")
		msg := []byte(s.Text())
		if s == StatusConflict {
			msg = nil // an empty message is allowed
		}
		add(name, vreply(TypeAcquire, s, 10, vToken), &ErrorBody{Message: msg})
	}
	add("acquire-reply-not-owner", vreply(TypeAcquire, StatusNotOwner, 10, vToken),
		&NotOwner{Message: []byte("shard moved"), Addr: []byte("10.0.0.7:7700"), Epoch: 4})
	add("acquire-reply-stale-epoch-unknown-owner", vreply(TypeAcquire, StatusStaleEpoch, 10, vToken),
		&NotOwner{Message: []byte("époque"), Addr: nil, Epoch: 0}) // UTF-8 message

	// Release.
	add("release", vhdr(20, 12, vToken), &Release{Fence: MakeFence(vEpoch, 1001), Name: vToken})
	add("release-value64", vhdr(21, 12, vToken), &Release{Fence: MakeFence(vEpoch, 1001), Name: vToken,
		HasValue: true, Value: vValue64})
	add("release-empty-value", vhdr(22, 12, vToken), &Release{Fence: MakeFence(vEpoch, 1001), Name: vToken,
		HasValue: true, Value: []byte{}})
	add("release-range-prefix", vhdr(26, 12, vToken2), &Release{Fence: MakeFence(vEpoch, 1003), Name: vToken2,
		HasRange: true, Start: 0, End: 8192})
	add("release-range-suffix-value", vhdr(27, 12, vToken2), &Release{Fence: MakeFence(vEpoch, 1003), Name: vToken2,
		HasRange: true, Start: 8192, End: WholeEnd, HasValue: true, Value: []byte("v7")})
	add("release-reply", vreply(TypeRelease, StatusOK, 20, vToken), &Empty{})
	add("release-reply-not-held", vreply(TypeRelease, StatusNotHeld, 20, vToken), &ErrorBody{Message: []byte("no such grant")})

	// Convert.
	add("convert-upgrade-try", vhdr(23, 20, vToken2), &Convert{Try: true, Fence: MakeFence(vEpoch, 1002),
		Mode: EX, Name: vToken2})
	add("convert-downgrade-value", vhdr(24, 20, vToken), &Convert{Fence: MakeFence(vEpoch, 1001),
		Mode: CR, WaitMs: 100, Name: vToken, HasValue: true, Value: []byte("x")})
	add("convert-upgrade-detect", vhdr(25, 20, vToken2), &Convert{Detect: true, Fence: MakeFence(vEpoch, 1002),
		Mode: EX, WaitMs: 1000, Name: vToken2})
	add("convert-reply-grant", vreply(TypeConvert, StatusOK, 23, vToken2), &Grant{Fence: MakeFence(vEpoch, 1003),
		Mode: EX, ValidityMs: 4700, Start: 4096, End: 8192, ValueFlags: ValueValid, Value: []byte("v1")})
	add("convert-reply-queued", vreply(TypeConvert, StatusQueued, 23, vToken2), &Queued{Position: 0})

	// Cancel.
	add("cancel", vhdr(30, 11, vToken2), &Cancel{Target: 11})
	// The target may lie below the ack: a request answered QUEUED does
	// not hold the ack back.
	add("cancel-below-ack", vhdr(30, 29, vToken2), &Cancel{Target: 11})
	add("cancel-reply", vreply(TypeCancel, StatusOK, 30, vToken2), &Empty{})
	add("cancel-reply-not-held", vreply(TypeCancel, StatusNotHeld, 30, vToken2), &ErrorBody{})

	// Reclaim (the new owner is at epoch 4; the grant is from epoch 3).
	rh := vhdr(31, 30, vToken)
	rh.Epoch = 4
	add("reclaim", rh, &Reclaim{Fence: MakeFence(vEpoch, 1001), Mode: EX, Start: WholeStart, End: WholeEnd, Name: vToken})
	add("reclaim-value", rh, &Reclaim{Fence: MakeFence(vEpoch, 1001), Mode: PW, Start: WholeStart, End: WholeEnd, Name: vToken,
		HasValue: true, Value: []byte("lvb")})
	rr := rh.Reply()
	rr.Type = TypeReclaimReply
	add("reclaim-reply-grant", rr, &Grant{Fence: MakeFence(vEpoch, 1001), Mode: EX, ValidityMs: 4900,
		Start: WholeStart, End: WholeEnd, ValueFlags: ValueLost})
	rr.Status = StatusReclaimRefused
	add("reclaim-reply-refused", rr, &ErrorBody{Message: []byte("grace period over")})

	// Revocation.
	rv := vhdr(1, 0, vToken)
	add("revoke-release", rv, &Revoke{Fence: MakeFence(vEpoch, 1001), Mode: NL, Start: WholeStart, End: WholeEnd, Name: vToken})
	rv.Request = 2
	add("revoke-downgrade-range", rv, &Revoke{Fence: MakeFence(vEpoch, 1001), Mode: PR, Start: 0, End: 4096, Name: vToken})
	add("revoke-ack", vhdr(32, 32, vToken), &RevokeAck{Target: 1})

	// Asynchronous grant of the queued acquire-wait-pr-range.
	ga := vhdr(11, 0, vToken2)
	ga.Type = TypeGrantAsync
	add("grant-async", ga, &Grant{Fence: MakeFence(vEpoch, 1004), Mode: PR, ValidityMs: 4600,
		Start: 4096, End: 8192, ValueFlags: ValueValid})
	// Its acknowledgement: a fresh request id, the ack past the queued
	// request, target = the queued request's id.
	add("grant-ack", vhdr(34, 34, vToken2), &GrantAck{Target: 11})

	// Batch acquire (SPEC §21): two ranges of one token and the whole of
	// it in CR, all in the token's shard.
	ab := []BatchEntry{{EX, 0, 4096, vToken}, {PR, 4096, 8192, vToken}, {CR, WholeStart, WholeEnd, vToken}}
	add("acquire-batch", vhdr(50, 50, vToken), &AcquireBatch{Entries: ab})
	add("acquire-batch-reply-grants", vreply(TypeAcquireBatch, StatusOK, 50, vToken), &GrantBatch{ValidityMs: 4800,
		Grants: []BatchGrant{{MakeFence(vEpoch, 1010), EX, 0, 4096, ValueValid, []byte("v1")},
			{MakeFence(vEpoch, 1011), PR, 4096, 8192, ValueValid, []byte("v1")},
			{MakeFence(vEpoch, 1012), CR, WholeStart, WholeEnd, ValueLost, nil}}})
	add("acquire-batch-reply-conflict", vreply(TypeAcquireBatch, StatusConflict, 50, vToken),
		&BatchConflict{Entry: 1, Message: []byte("entry 1 conflicts")})
	add("acquire-batch-reply-grace", vreply(TypeAcquireBatch, StatusGrace, 50, vToken), &ErrorBody{Message: []byte(StatusGrace.Text())})

	// Bundles (SPEC §22): a session opened with BUNDLE, then whole
	// datagrams of that session, each as it would be sent alone.
	add("session-open-bundle", Header{Request: vNonce + 3}, &SessionOpen{TTLMs: 10000, Lib: []byte("go/0.2.0"), Bundle: true})
	so = Header{Type: TypeSessionOpen, Request: vNonce + 3}.Reply()
	so.Session, so.MapVersion = vSession, vMapVer
	add("session-open-reply-bundle", so, &SessionReply{TTLMs: 10000, ShardCount: 4096, GraceMs: 5000, WorkerTTLMs: 5000,
		Bundle: true})
	encoded := func(name string) []byte {
		for _, x := range v {
			if x.name == name {
				return mustEncode(x)
			}
		}
		panic(name)
	}
	add("bundle", Header{Type: TypeBundle, Session: vSession, Request: 10, MapVersion: 17},
		&Bundle{Datagrams: [][]byte{encoded("acquire-try-ex"), encoded("release")}})
	add("bundle-reply", Header{Type: TypeBundleReply, Session: vSession, Request: 10, MapVersion: vMapVer},
		&Bundle{Datagrams: [][]byte{encoded("acquire-reply-grant"), encoded("release-reply"), encoded("revoke-release")}})

	// Map.
	add("map-request", Header{Request: 77}, &MapRequest{FirstShard: 0})
	add("map-request-session", Header{Session: vSession, Request: 33, Ack: 33, MapVersion: 16}, &MapRequest{FirstShard: 2048})
	mr := Header{Type: TypeMapRequest, Request: 77}.Reply()
	mr.MapVersion = vMapVer
	add("map-reply", mr, &MapReply{MapVersion: vMapVer, ShardCount: 4096, GraceMs: 5000,
		Workers: []MapWorker{
			{Index: 0, Addr: []byte("10.0.0.5:7700"), ID: []byte("w-a")},
			{Index: 1, Addr: []byte("10.0.0.6:7700"), ID: []byte("w-b")},
			{Index: 3, Addr: []byte("[fd00::7]:7700"), ID: []byte("w-d")},
		},
		Runs: []MapRun{
			{First: 0, Count: 1365, Worker: 0, Epoch: 3},
			{First: 1365, Count: 1365, Worker: 1, Epoch: 5},
			{First: 2730, Count: 1000, Worker: 3, Epoch: 1},
			{First: 3730, Count: 366, Worker: NoWorker, Epoch: 2},
		}})
	mr.Request = 78
	add("map-reply-past-end", mr, &MapReply{MapVersion: vMapVer, ShardCount: 4096, GraceMs: 5000})

	// Fence proofs (the proof bytes are opaque to the codec: here the first
	// proof of fenceproof/testdata/vectors.txt).
	add("fence-proof", vhdr(34, 33, vToken), &FenceProof{Fence: MakeFence(vEpoch, 1001), Start: WholeStart, End: WholeEnd, Name: vToken})
	add("fence-proof-range", vhdr(35, 33, vToken2), &FenceProof{Fence: MakeFence(vEpoch, 1004), Start: 4096, End: 8192, Name: vToken2})
	add("fence-proof-reply", vreply(TypeFenceProof, StatusOK, 34, vToken), &Proof{Proof: vProof})
	add("fence-proof-reply-not-held", vreply(TypeFenceProof, StatusNotHeld, 35, vToken2), &ErrorBody{Message: []byte("no such grant")})
	add("fence-proof-reply-bad-request", vreply(TypeFenceProof, StatusBadRequest, 34, vToken),
		&ErrorBody{Message: []byte("fence proofs need authentication (the cluster key)")})
	return v
}

// encodeVector encodes v.
func encodeVector(v vector) ([]byte, error) { return v.m.Append(nil, v.h) }

type badVector struct {
	name string
	b    []byte
	want error
}

// mustEncode encodes v or panics.
func mustEncode(v vector) []byte {
	b, err := encodeVector(v)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", v.name, err))
	}
	return b
}

// resealed returns a copy of b changed by f, with the body length and the
// checksum fixed up afterwards (so that the check under test is reached).
func resealed(b []byte, f func(b []byte) []byte) []byte {
	c := f(append([]byte(nil), b...))
	binary.BigEndian.PutUint16(c[offLen:], uint16(len(c)-HeaderLen))
	binary.BigEndian.PutUint32(c[offCRC:], Checksum(c))
	return c
}

// withBody returns b's header with a new body, resealed.
func withBody(b []byte, body ...byte) []byte {
	return resealed(b, func(c []byte) []byte { return append(c[:HeaderLen], body...) })
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// badVectors are datagrams every decoder must reject, with the sentinel.
func badVectors() []badVector {
	byName := map[string][]byte{}
	for _, v := range validVectors() {
		byName[v.name] = mustEncode(v)
	}
	acq := byName["acquire-try-ex"]
	var v []badVector
	add := func(name string, b []byte, want error) { v = append(v, badVector{name, b, want}) }
	set := func(off int, val ...byte) func([]byte) []byte {
		return func(c []byte) []byte { copy(c[off:], val); return c }
	}
	acqBody := func(mode byte, start, end uint64, name []byte) []byte {
		return withBody(acq, cat([]byte{mode}, be32(0), be64(start), be64(end), []byte{byte(len(name))}, name)...)
	}
	fence := be64(MakeFence(vEpoch, 1001))

	// Framing, in ParseHeader's order.
	add("bad-empty", nil, ErrShort)
	add("bad-short-header", acq[:HeaderLen-1], ErrShort)
	add("bad-too-large", resealed(acq, func(c []byte) []byte { return append(c, make([]byte, MaxDatagram+1-len(c))...) }), ErrTooLarge)
	add("bad-magic", resealed(acq, set(0, 'T', 'k')), ErrBadMagic)
	add("bad-version-1", resealed(acq, set(2, 1)), ErrVersion)
	add("bad-version-3", resealed(acq, set(2, 3)), ErrVersion)
	add("bad-length-field", func() []byte {
		c := append([]byte(nil), acq...)
		binary.BigEndian.PutUint16(c[offLen:], uint16(len(c)-HeaderLen+1))
		binary.BigEndian.PutUint32(c[offCRC:], Checksum(c))
		return c
	}(), ErrLength)
	add("bad-truncated", acq[:len(acq)-1], ErrLength)
	add("bad-checksum", func() []byte { c := append([]byte(nil), acq...); c[len(c)-1] ^= 0x20; return c }(), ErrChecksum)
	add("bad-checksum-zero", set(offCRC, 0, 0, 0, 0)(append([]byte(nil), acq...)), ErrChecksum)

	// Header rules.
	add("bad-type-zero", resealed(acq, set(3, 0x00)), ErrUnknownType)
	add("bad-type-0f", resealed(acq, set(3, 0x0f)), ErrUnknownType)
	add("bad-type-revoke-ack-reply", resealed(acq, set(3, 0x89)), ErrUnknownType)
	add("bad-flags-acquire", resealed(acq, set(offFlags, 0x09)), ErrBadFlags)
	add("bad-flags-release", resealed(byName["release"], set(offFlags, 0x04)), ErrBadFlags)
	add("bad-flags-reply", resealed(byName["acquire-reply-grant"], set(offFlags, 0x01)), ErrBadFlags)
	add("bad-status-in-request", resealed(acq, set(offStatus, 1)), ErrBadStatus)
	add("bad-status-undefined", resealed(byName["acquire-reply-conflict"], set(offStatus, 19)), ErrBadStatus)
	add("bad-status-cookie-acquire", resealed(byName["acquire-reply-conflict"], set(offStatus, byte(StatusCookie))), ErrBadStatus)
	add("bad-status-queued-release", resealed(byName["release-reply-not-held"], set(offStatus, 1)), ErrBadStatus)
	add("bad-session-zero", resealed(acq, set(8, 0, 0, 0, 0, 0, 0, 0, 0)), ErrBadHeader)
	add("bad-session-top-bit", resealed(acq, set(8, 0x80)), ErrBadHeader)
	soBody := func(keyName []byte, cookie []byte) []byte {
		return withBody(byName["session-open"], cat(be32(0), []byte{0}, vClientNonce[:], []byte{byte(len(keyName))}, keyName, []byte{byte(len(cookie))}, cookie)...)
	}
	add("bad-session-open-cookie-length", soBody([]byte("default"), vCookie[:19]), ErrBadBody)
	add("bad-session-open-key-name-long", soBody(bytes.Repeat([]byte("k"), MaxKeyName+1), nil), ErrBadBody)
	add("bad-session-open-nonce-missing", withBody(byName["session-open"], cat(be32(0), []byte{0}, vClientNonce[:7])...), ErrShort)
	add("bad-cookie-reply-length", withBody(byName["session-open-reply-cookie"], cat([]byte{19}, vCookie[:19])...), ErrBadBody)
	add("bad-session-open-with-session", resealed(byName["session-open"], set(15, 1)), ErrBadHeader)
	add("bad-session-reply-ok-no-session", resealed(byName["session-open-reply"], set(8, 0, 0, 0, 0, 0, 0, 0, 0)), ErrBadHeader)
	add("bad-request-zero", resealed(acq, set(16, 0, 0, 0, 0, 0, 0, 0, 0)), ErrBadHeader)
	add("bad-ack-above-request", resealed(acq, set(31, 11)), ErrBadHeader)
	add("bad-ack-in-reply", resealed(byName["acquire-reply-grant"], set(31, 1)), ErrBadHeader)
	add("bad-ack-without-session", resealed(byName["map-request"], set(31, 1)), ErrBadHeader)
	add("bad-epoch-zero", resealed(acq, set(36, 0, 0, 0, 0)), ErrBadHeader)
	add("bad-epoch-too-big", resealed(acq, set(36, 1, 0, 0, 0)), ErrBadHeader)

	// Bodies.
	add("bad-body-empty-acquire", withBody(acq), ErrShort)
	add("bad-name-empty", acqBody(byte(EX), 0, 0, nil), ErrNameLength)
	add("bad-name-truncated", withBody(acq, acqBody(byte(EX), 0, 0, vToken)[HeaderLen:len(acq)-1]...), ErrShort)
	add("bad-name-length-past-end", withBody(acq, append(acqBody(byte(EX), 0, 0, vToken)[HeaderLen:len(acq)-len(vToken)-1], 200)...), ErrShort)
	add("bad-mode", acqBody(6, 0, 0, vToken), ErrBadMode)
	add("bad-range-empty", acqBody(byte(EX), 10, 10, vToken), ErrBadRange)
	add("bad-range-reversed", acqBody(byte(EX), 10, 5, vToken), ErrBadRange)
	add("bad-range-whole-spelled-out", acqBody(byte(EX), 0, WholeEnd, vToken), ErrBadRange)
	add("bad-trailing-byte", withBody(acq, append(append([]byte(nil), acq[HeaderLen:]...), 0)...), ErrBadBody)
	rel := byName["release-value64"]
	add("bad-value-too-long", withBody(rel, cat(fence, []byte{byte(len(vToken))}, vToken, []byte{65}, vValue64, []byte{'!'})...), ErrValueLength)
	add("bad-value-flag-missing-value", withBody(rel, cat(fence, []byte{byte(len(vToken))}, vToken)...), ErrShort)
	relRange := byName["release-range-prefix"]
	add("bad-range-release-empty", withBody(relRange, cat(fence, []byte{byte(len(vToken))}, vToken, be64(10), be64(10))...), ErrBadRange)
	add("bad-range-release-missing", withBody(relRange, cat(fence, []byte{byte(len(vToken))}, vToken)...), ErrShort)
	add("bad-fence-zero", withBody(rel, cat(be64(0), []byte{byte(len(vToken))}, vToken, []byte{0})...), ErrBadBody)
	add("bad-fence-seq-zero", withBody(rel, cat(be64(MakeFence(3, 0)), []byte{byte(len(vToken))}, vToken, []byte{0})...), ErrBadBody)
	add("bad-fence-epoch-zero", withBody(rel, cat(be64(7), []byte{byte(len(vToken))}, vToken, []byte{0})...), ErrBadBody)
	gr := byName["acquire-reply-grant"]
	grantBody := func(vflags byte, value []byte) []byte {
		return withBody(gr, cat(fence, []byte{byte(EX)}, be32(4800), be64(0), be64(0), []byte{vflags, byte(len(value))}, value)...)
	}
	add("bad-grant-value-flags-both", grantBody(ValueValid|ValueLost, nil), ErrBadFlags)
	add("bad-grant-value-flags-unknown", grantBody(0x04, nil), ErrBadFlags)
	add("bad-grant-value-without-valid", grantBody(ValueLost, []byte("v")), ErrBadBody)
	add("bad-grant-value-too-long", grantBody(ValueValid, append(vValue64, 'x')), ErrValueLength)
	add("bad-error-not-utf8", withBody(byName["acquire-reply-conflict"], 2, 0xc3, 0x28), ErrBadBody)
	add("bad-error-missing-body", withBody(byName["acquire-reply-conflict"]), ErrShort)
	add("bad-empty-body-not-empty", withBody(byName["release-reply"], 0), ErrBadBody)
	add("bad-not-owner-epoch", withBody(byName["acquire-reply-not-owner"], cat([]byte{0, 0}, be32(MaxEpoch+1))...), ErrBadBody)
	ka := byName["keepalive-renew"]
	add("bad-keepalive-too-many", withBody(ka, cat([]byte{0, MaxKeepaliveEntries + 1}, make([]byte, 8*(MaxKeepaliveEntries+1)-10))...), ErrTooLarge)
	add("bad-keepalive-count-short", withBody(ka, cat([]byte{0, 3}, be32(7), be32(3), be32(8), be32(3))...), ErrShort)
	add("bad-keepalive-epoch-zero", withBody(ka, cat([]byte{0, 1}, be32(7), be32(0))...), ErrBadBody)
	kd := byName["keepalive-done"]
	add("bad-keepalive-done-zero", withBody(kd, cat([]byte{0, 0}, be64(0))...), ErrBadBody)
	add("bad-keepalive-done-short", withBody(kd, cat([]byte{0, 0}, be32(17))...), ErrShort)
	add("bad-keepalive-done-without-flag", withBody(byName["keepalive-empty"], cat([]byte{0, 0}, be64(17))...), ErrBadBody)
	add("bad-keepalive-reply-entry-status", withBody(byName["keepalive-reply"], cat(be32(0), be32(0), []byte{0, 1, byte(StatusGrace)})...), ErrBadStatus)
	add("bad-session-reply-shard-count-zero", withBody(byName["session-open-reply"], cat(be32(10000), be32(0), be32(0), be32(5000))...), ErrBadBody)
	add("bad-cancel-target-not-before-request", withBody(byName["cancel"], be64(30)...), ErrBadBody)
	add("bad-cancel-target-zero", withBody(byName["cancel"], be64(0)...), ErrBadBody)
	add("bad-grant-ack-target-zero", withBody(byName["grant-ack"], be64(0)...), ErrBadBody)
	add("bad-grant-ack-target-not-before-request", withBody(byName["grant-ack"], be64(34)...), ErrBadBody)
	add("bad-acquire-batch-count-zero", withBody(byName["acquire-batch"], 0), ErrBadBody)
	add("bad-acquire-batch-count-nine", withBody(byName["acquire-batch"], 9), ErrBadBody)
	add("bad-acquire-batch-short", withBody(byName["acquire-batch"], cat([]byte{2, byte(EX)}, be64(0), be64(0), []byte{byte(len(vToken))}, vToken)...), ErrShort)
	add("bad-batch-conflict-entry", withBody(byName["acquire-batch-reply-conflict"], 8, 0), ErrBadBody)
	add("bad-revoke-ack-target-zero", withBody(byName["revoke-ack"], be64(0)...), ErrBadBody)
	bun, bunr := byName["bundle"], byName["bundle-reply"]
	entry := func(d []byte) []byte { return AppendBundled(nil, d) }
	add("bad-bundle-empty", withBody(bun), ErrBadBody)
	add("bad-bundle-entry-shorter-than-header", withBody(bun, cat(be16(63), acq[:63])...), ErrBadBody)
	add("bad-bundle-entry-past-end", withBody(bun, cat(be16(uint16(len(acq)+1)), acq)...), ErrShort)
	add("bad-bundle-length-cut", withBody(bun, cat(entry(acq), []byte{0})...), ErrShort)
	add("bad-bundle-session-open-inside", withBody(bun, entry(byName["session-open"])...), ErrBadBody)
	add("bad-bundle-reply-inside-request", withBody(bun, entry(byName["release-reply"])...), ErrBadBody)
	add("bad-bundle-request-inside-reply", withBody(bunr, entry(acq)...), ErrBadBody)
	add("bad-bundle-nested", withBody(bun, entry(bun)...), ErrBadBody)
	other := append([]byte(nil), acq...)
	other[15] ^= 1 // another session id
	add("bad-bundle-other-session", withBody(bun, cat(entry(acq), entry(other))...), ErrBadBody)
	add("bad-bundle-ack", resealed(bun, set(31, 1)), ErrBadHeader)
	add("bad-bundle-reply-status", resealed(bunr, set(offStatus, byte(StatusBadRequest))), ErrBadStatus)
	add("bad-bundle-flags", resealed(bun, set(offFlags, 0x01)), ErrBadFlags)
	add("bad-flags-cookie-bundle", resealed(byName["session-open-reply-cookie"], set(offFlags, FlagBundle)), ErrBadFlags)
	fp := byName["fence-proof"]
	add("bad-fence-proof-fence-zero", withBody(fp, cat(be64(0), be64(0), be64(0), []byte{byte(len(vToken))}, vToken)...), ErrBadBody)
	add("bad-fence-proof-range-empty", withBody(fp, cat(fence, be64(9), be64(9), []byte{byte(len(vToken))}, vToken)...), ErrBadRange)
	add("bad-fence-proof-epoch-zero", resealed(fp, set(36, 0, 0, 0, 0)), ErrBadHeader)
	add("bad-fence-proof-flags", resealed(fp, set(offFlags, 0x01)), ErrBadFlags)
	pr := byName["fence-proof-reply"]
	add("bad-proof-empty", withBody(pr, 0, 0), ErrBadBody)
	add("bad-proof-too-long", withBody(pr, cat(binary.BigEndian.AppendUint16(nil, MaxProof+1), make([]byte, MaxProof+1))...), ErrBadBody)
	add("bad-proof-length-past-end", withBody(pr, cat([]byte{0, 100}, make([]byte, 99))...), ErrShort)
	add("bad-proof-trailing", withBody(pr, cat([]byte{0, 1, 7, 7})...), ErrBadBody)
	add("bad-status-queued-fence-proof", resealed(byName["fence-proof-reply-not-held"], set(offStatus, 1)), ErrBadStatus)
	mp := byName["map-reply"]
	mapBody := func(ver uint64, workers []byte, runs ...[]byte) []byte {
		return withBody(mp, cat(be64(ver), be32(4096), be32(5000), workers, []byte{0, byte(len(runs))}, cat(runs...))...)
	}
	// One worker: count 1, index 2, addr "a:1", id "w".
	oneWorker := cat([]byte{0, 1}, []byte{0, 2}, []byte{3}, []byte("a:1"), []byte{1}, []byte("w"))
	run := func(first, count uint32, w uint16, epoch uint32) []byte {
		return cat(be32(first), be32(count), []byte{byte(w >> 8), byte(w)}, be32(epoch))
	}
	add("bad-map-version-mismatch", mapBody(vMapVer+1, []byte{0, 0}), ErrBadBody)
	add("bad-map-run-gap", mapBody(vMapVer, oneWorker, run(0, 10, 2, 1), run(11, 5, 2, 1)), ErrBadBody)
	add("bad-map-run-past-count", mapBody(vMapVer, oneWorker, run(4000, 97, 2, 1)), ErrBadBody)
	add("bad-map-run-unlisted-worker", mapBody(vMapVer, oneWorker, run(0, 10, 1, 1)), ErrBadBody)
	add("bad-map-run-epoch-zero", mapBody(vMapVer, oneWorker, run(0, 10, 2, 0)), ErrBadBody)
	add("bad-map-worker-empty-addr", mapBody(vMapVer, cat([]byte{0, 1, 0, 1, 0, 1}, []byte("w"))), ErrBadBody)
	add("bad-map-worker-order", mapBody(vMapVer, cat([]byte{0, 2}, oneWorker[2:], oneWorker[2:])), ErrBadBody)
	return v
}

// hashNames are the names of the hash vectors.
var hashNames = [][]byte{
	[]byte("a"), []byte("lock"), vToken, vToken2, []byte("tokend"), []byte("/tokend/workers/w-a"),
	{0x00}, {0xff, 0xfe, 0x00, 0x01}, vMaxName,
}

// crcInputs are the CRC32C vectors.
var crcInputs = [][]byte{[]byte("123456789"), make([]byte, 32), []byte("TK")}

const vectorsHeader = `# tokend wire protocol v2: golden vectors for every implementation.
# Generated by "go test ./wire -run TestVectors -update"; do not edit by hand.
# The format is described in wire/SPEC.md, section "Test vectors". In short:
# - Records are separated by blank lines; lines starting with '#' are comments.
# - A line is "key: value", optionally followed by " # comment" (ignore it).
# - Integers are decimal or 0x-prefixed hex: strtoull(value, NULL, 0) reads both.
# - Byte strings are lowercase hex without prefix; an empty string is empty.
# - Message records: "name:", "hex:" (the whole datagram), "expect:" ("ok" or
#   "error <Sentinel>"); "ok" records then list the header fields and every
#   decoded body field ("body:" names the body layout). Decoded ranges show the
#   whole token as start 0, end 18446744073709551615 (0,0 on the wire).
# - "hash: <name hex> <FNV-1a 64> <shard of 4096>" and "crc32c: <data hex>
#   <CRC32C>" lines stand in records of their own.
`

// renderVectors produces testdata/vectors.txt.
func renderVectors() (string, error) {
	var sb strings.Builder
	sb.WriteString(vectorsHeader)
	sb.WriteString("\n# CRC32C (Castagnoli, reflected, init 0xffffffff, xorout 0xffffffff)\n")
	for _, in := range crcInputs {
		fmt.Fprintf(&sb, "crc32c: %x 0x%08x\n", in, crc32.Checksum(in, castagnoli))
	}
	sb.WriteString("\n# FNV-1a 64 of the name, and the shard for 4096 shards\n")
	for _, n := range hashNames {
		fmt.Fprintf(&sb, "hash: %x 0x%016x %d\n", n, Hash(n), Shard(n, 4096))
	}
	for _, v := range validVectors() {
		b, err := encodeVector(v)
		if err != nil {
			return "", fmt.Errorf("%s: %v", v.name, err)
		}
		h, m, err := decode(b)
		if err != nil {
			return "", fmt.Errorf("%s: decode: %v", v.name, err)
		}
		fmt.Fprintf(&sb, "\nname: %s\nhex: %x\nexpect: ok\n", v.name, b)
		var d describer
		describeHeader(&d, h, b)
		describeBody(&d, m)
		for _, f := range d {
			sb.WriteString(f.String() + "\n")
		}
	}
	for _, v := range badVectors() {
		_, _, err := decode(v.b)
		if err == nil || sentinelName(err) != sentinelName(v.want) {
			return "", fmt.Errorf("%s: decode error %v, want %v", v.name, err, v.want)
		}
		fmt.Fprintf(&sb, "\nname: %s\nhex: %x\nexpect: error %s # %v\n", v.name, v.b, sentinelName(v.want), err)
	}
	return sb.String(), nil
}

const vectorsPath = "testdata/vectors.txt"
const corpusDir = "testdata/fuzz/FuzzDecode"

// corpus returns the FuzzDecode seed files: one per vector.
func corpus() map[string]string {
	files := map[string]string{}
	for _, v := range validVectors() {
		files["seed-"+v.name] = fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", mustEncode(v))
	}
	for _, v := range badVectors() {
		files["seed-"+v.name] = fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", v.b)
	}
	return files
}

// TestVectors checks that testdata/vectors.txt and the seed corpus are what
// this code produces (with -update, rewrites them).
func TestVectors(t *testing.T) {
	got, err := renderVectors()
	if err != nil {
		t.Fatal(err)
	}
	files := corpus()
	if *update {
		if err := os.WriteFile(vectorsPath, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(corpusDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(corpusDir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	want, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatalf("%v (run go test ./wire -run TestVectors -update)", err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) || i < len(wl); i++ {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s drifted from the code at line %d:\n file: %s\n code: %s\n(run go test ./wire -run TestVectors -update and review the diff)", vectorsPath, i+1, w, g)
			}
		}
	}
	for name, content := range files {
		b, err := os.ReadFile(filepath.Join(corpusDir, name))
		if err != nil || string(b) != content {
			t.Errorf("seed corpus file %s missing or stale (run with -update)", name)
		}
	}
}

// TestVectorsParse reads vectors.txt back the way a C test would (key:
// value lines, strtoull-style integers, hex bytes), re-decodes every "hex"
// and checks it against "expect" and the listed fields: the file is
// self-consistent and parseable without a JSON library.
func TestVectorsParse(t *testing.T) {
	data, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var nmsg, nbad, nhash, ncrc int
	for _, rec := range strings.Split(string(data), "\n\n") {
		var lines []field
		for _, line := range strings.Split(rec, "\n") {
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if i := strings.Index(line, " # "); i >= 0 {
				line = line[:i]
			}
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				t.Fatalf("bad line %q", line)
			}
			lines = append(lines, field{key: k, val: strings.TrimSpace(v)})
		}
		if len(lines) == 0 {
			continue
		}
		switch lines[0].key {
		case "hash":
			for _, l := range lines {
				var name []byte
				var h uint64
				var shard uint32
				if _, err := fmt.Sscanf(l.val, "%x 0x%x %d", &name, &h, &shard); err != nil {
					t.Fatalf("hash line %q: %v", l.val, err)
				}
				if Hash(name) != h || Shard(name, 4096) != shard {
					t.Errorf("hash %x: file says %x/%d", name, h, shard)
				}
				nhash++
			}
		case "crc32c":
			for _, l := range lines {
				var in []byte
				var c uint32
				if _, err := fmt.Sscanf(l.val, "%x 0x%x", &in, &c); err != nil {
					t.Fatalf("crc32c line %q: %v", l.val, err)
				}
				if crc32.Checksum(in, castagnoli) != c {
					t.Errorf("crc32c %x: file says %08x", in, c)
				}
				ncrc++
			}
		case "name":
			if len(lines) < 3 || lines[1].key != "hex" || lines[2].key != "expect" {
				t.Fatalf("record %q lacks hex/expect", lines[0].val)
			}
			var b []byte
			fmt.Sscanf(lines[1].val, "%x", &b)
			h, m, err := decode(b)
			if lines[2].val == "ok" {
				nmsg++
				if err != nil {
					t.Errorf("%s: %v", lines[0].val, err)
					continue
				}
				var d describer
				describeHeader(&d, h, b)
				describeBody(&d, m)
				if len(d) != len(lines)-3 {
					t.Errorf("%s: %d fields in file, %d decoded", lines[0].val, len(lines)-3, len(d))
					continue
				}
				for i, f := range d {
					if l := lines[3+i]; l.key != f.key || l.val != f.val {
						t.Errorf("%s: file %s=%s, decoded %s=%s", lines[0].val, l.key, l.val, f.key, f.val)
					}
				}
			} else {
				nbad++
				want := strings.TrimPrefix(lines[2].val, "error ")
				if err == nil || sentinelName(err) != want {
					t.Errorf("%s: got %v, want %s", lines[0].val, err, want)
				}
			}
		default:
			t.Fatalf("unknown record kind %q", lines[0].key)
		}
	}
	if nmsg == 0 || nbad == 0 || nhash < 5 || ncrc == 0 {
		t.Errorf("too few vectors: %d messages, %d invalid, %d hashes, %d crcs", nmsg, nbad, nhash, ncrc)
	}
}

// TestVectorCoverage: the vectors cover every type, every status, every
// body kind, the limits and every sentinel a decoder can return.
func TestVectorCoverage(t *testing.T) {
	types, statuses, kinds := map[Type]bool{}, map[Status]bool{}, map[Kind]bool{}
	var maxName, value64, whole bool
	for _, v := range validVectors() {
		b := mustEncode(v)
		h, m, err := decode(b)
		if err != nil {
			t.Fatalf("%s: %v", v.name, err)
		}
		types[h.Type], statuses[h.Status], kinds[h.Kind()] = true, true, true
		if s := bodyFields(m); strings.Contains(s, fmt.Sprintf("token: %x\n", vMaxName)) {
			maxName = true
		}
		if g, ok := m.(*Grant); ok && len(g.Value) == MaxValue {
			value64 = true
		}
		if a, ok := m.(*Acquire); ok && IsWhole(a.Start, a.End) {
			whole = true
		}
	}
	for i := 0; i < 256; i++ {
		if Type(i).Valid() && !types[Type(i)] {
			t.Errorf("no vector for type %v", Type(i))
		}
		if Status(i).Valid() && !statuses[Status(i)] {
			t.Errorf("no vector for status %v", Status(i))
		}
	}
	for k := KindEmpty; k < numKinds; k++ {
		if !kinds[k] {
			t.Errorf("no vector for body %v", k)
		}
	}
	if !maxName || !value64 || !whole {
		t.Errorf("limits not covered: max name %v, 64-byte value %v, whole range %v", maxName, value64, whole)
	}
	seen := map[string]bool{}
	for _, v := range badVectors() {
		seen[sentinelName(v.want)] = true
	}
	for _, r := range reasons {
		if n := sentinelName(r.err); !seen[n] && !errors.Is(r.err, ErrKind) {
			t.Errorf("no invalid vector for %s", n)
		}
	}
}
