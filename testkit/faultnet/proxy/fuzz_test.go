package proxy

import (
	"testing"

	"github.com/tokend/tokend/wire"
)

// FuzzRewrite: whatever a worker (or anyone reaching a client's upstream
// socket) sends, the rewriting of MAP replies and NOT_OWNER hints never
// panics, and what it produces is a datagram the wire decoder accepts.
func FuzzRewrite(f *testing.F) {
	m, _ := wire.MapReply{MapVersion: 3, ShardCount: 2, Workers: []wire.MapWorker{{Index: 0, Addr: []byte("127.0.0.1:7700"), ID: []byte("w1")}},
		Runs: []wire.MapRun{{First: 0, Count: 2, Worker: 0, Epoch: 1}}}.Append(nil, wire.Header{Type: wire.TypeMapReply, Request: 1, MapVersion: 3})
	f.Add(m)
	n, _ := wire.NotOwner{Addr: []byte("127.0.0.1:7701"), Epoch: 2}.Append(nil,
		wire.Header{Type: wire.TypeAcquire | 0x80, Status: wire.StatusNotOwner, Session: 1, Request: 2, Shard: 1, Epoch: 1})
	f.Add(n)
	f.Add([]byte("TK"))
	p, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		p.mu.Lock()
		out, ok := p.rewriteLocked(b)
		p.mu.Unlock()
		if !ok {
			return
		}
		h, err := wire.ParseHeader(out)
		if err != nil {
			t.Fatalf("rewritten datagram does not parse: %v", err)
		}
		if h.Kind() != wire.KindMapReply && h.Kind() != wire.KindNotOwner {
			t.Fatalf("rewrote a %v", h.Kind())
		}
	})
}
