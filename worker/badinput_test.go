package worker

import (
	"math/rand/v2"
	"testing"

	"github.com/tokend/tokend/wire"
)

// TestBadInput (invariant 7): a burst of random, truncated, oversized,
// corrupted, misdirected and stale datagrams, alone and in bundles, is
// dropped or answered with an error and counted by reason; the worker
// keeps serving and its state is unchanged.
func TestBadInput(t *testing.T) {
	cli := testEtcd(t)
	w, reg := startWorker(t, cli, "w1", nil)
	serveAll(t, cli, w)
	a, b := udpClient(t, w), udpClient(t, w)
	a.open(0)
	b.open(0)
	held := a.acquire("held", wire.EX, true, 0)
	wantStatus(t, held, wire.StatusOK)
	before := w.stats()

	rng := rand.New(rand.NewPCG(7, 7))
	valid := func(session uint64, shard, epoch uint32, name string) []byte {
		h := wire.Header{Session: session, Request: 1 << 40, Ack: 0, Shard: shard, Epoch: epoch}
		p, err := wire.Acquire{Try: true, Mode: wire.EX, Start: wire.WholeStart, End: wire.WholeEnd, Name: []byte(name)}.Append(nil, h)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	sh := a.shard("held")
	const burst = 10000
	kinds := 12
	bundle := func(entries ...[]byte) []byte {
		p := wire.AppendHeader(nil, wire.Header{Type: wire.TypeBundle, Session: a.session, Request: 1 << 41})
		for _, e := range entries {
			p = append(p, e...)
		}
		wire.Seal(p)
		return p
	}
	for i := range burst {
		var p []byte
		switch i % kinds {
		case 0: // random bytes
			p = make([]byte, rng.IntN(1500))
			for j := range p {
				p[j] = byte(rng.UintN(256))
			}
		case 1: // truncated
			v := valid(a.session, sh, 1, "held")
			p = v[:rng.IntN(len(v))]
		case 2: // oversized
			p = append(valid(a.session, sh, 1, "held"), make([]byte, 1300)...)
		case 3: // bad checksum
			p = valid(a.session, sh, 1, "held")
			p[64+rng.IntN(len(p)-64)] ^= 0x20
		case 4: // unknown type, correctly sealed
			p = valid(a.session, sh, 1, "held")
			p[3] = 0x3F
			wire.Seal(p)
		case 5: // token in the wrong shard (known session): BAD_REQUEST
			p = valid(a.session, (sh+1)%testShards, 1, "held")
		case 6: // stale epoch (known session): STALE_EPOCH
			p = valid(a.session, sh, 9, "held")
		case 7: // unknown session
			p = valid(0x7000+uint64(i%3), sh, 1, "held")
		case 8: // bad body: mode 9, correctly sealed
			p = valid(a.session, sh, 1, "held")
			p[64] = 9
			wire.Seal(p)
		case 9: // a reply sent to the worker
			p = valid(a.session, sh, 1, "held")
			p[3] |= 0x80
			p[4] = 0
			p[5] = byte(wire.StatusConflict)
			wire.Seal(p)
		case 10: // a bundle of random bytes: dropped whole
			junk := make([]byte, rng.IntN(600))
			for j := range junk {
				junk[j] = byte(rng.UintN(256))
			}
			p = bundle(junk)
		case 11: // a well-formed bundle of bad datagrams: each dropped or refused alone
			bad := valid(a.session, sh, 1, "held")
			bad[64+rng.IntN(len(bad)-64)] ^= 0x20 // checksum
			p = bundle(wire.AppendBundled(nil, valid(a.session, (sh+1)%testShards, 1, "held")),
				wire.AppendBundled(nil, valid(a.session, sh, 9, "held")), wire.AppendBundled(nil, bad))
		}
		a.sendRaw(p)
		if i%200 == 199 {
			// Stay within the socket buffers: the worker has read what
			// came before once it answers a request sent after it.
			wantStatus(t, b.acquire("held", wire.EX, true, 0), wire.StatusConflict)
		}
	}
	// Everything the burst provoked has been handled once the worker
	// answers a request sent after it.
	wantStatus(t, b.acquire("held", wire.EX, true, 0), wire.StatusConflict)
	ka := a.do(wire.Keepalive{Entries: []wire.ShardEpoch{{Shard: sh, Epoch: 1}}}, 0)
	var kr wire.KeepaliveReply
	if err := kr.Decode(ka.h, ka.raw); err != nil || kr.Statuses[0] != wire.StatusOK {
		t.Fatalf("keepalive after the burst: %+v %v", kr, err)
	}
	if after := w.stats(); after != before {
		t.Fatalf("state changed by bad input: %+v -> %+v", before, after)
	}
	wantStatus(t, a.release("held", held.grant(t).Fence), wire.StatusOK)
	wantStatus(t, b.acquire("held", wire.EX, true, 0), wire.StatusOK)

	total := 0.0
	for _, reason := range []string{"short", "length", "too_large", "checksum", "unknown_type", "wrong_shard",
		"stale_epoch", "unknown_session", "bad_mode", "not_request", "bad_magic", "bad_bundle"} {
		v := gatherValue(reg, "tokend_worker_dropped_datagrams_total", "reason", reason)
		if v == 0 {
			t.Errorf("no drops counted for %q", reason)
		}
		total += v
	}
	t.Logf("%.0f of %d bad datagrams counted", total, burst)
}
