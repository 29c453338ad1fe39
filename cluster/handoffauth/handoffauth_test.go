package handoffauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/wire/auth"
)

// request is what the tests ask.
type request struct {
	Ask   string `json:"ask"`
	Nonce []byte `json:"nonce,omitempty"`
}

type answer struct {
	Said string `json:"said"`
}

// answerer is the answering side of an exchange as SPEC 18 says (a worker
// with Auth when key is set), with faults: no challenge, a wrong seal, an
// answer changed after it was sealed.
type answerer struct {
	key                          []byte
	noChallenge, badSeal, change bool
	proofs                       atomic.Int32 // proofs that verified
}

func (a *answerer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	reqFrame, err := ReadRawFrame(r, 1<<10)
	if err != nil {
		return
	}
	var req request
	if UnmarshalFrame(reqFrame, &req) != nil {
		return
	}
	ans, _ := MarshalFrame(answer{Said: "to " + req.Ask})
	if a.key == nil || a.noChallenge {
		c.Write(ans)
		return
	}
	if len(req.Nonce) != NonceLen {
		WriteFrame(c, Challenge{Proto: 1, Error: "authentication required"})
		return
	}
	nonce, _ := NewNonce()
	WriteFrame(c, Challenge{Proto: 1, Nonce: nonce})
	var p Proof
	if ReadFrame(r, MaxProofFrame, &p) != nil || !hmac.Equal(p.Proof, MAC(a.key, DirAsker, req.Nonce, nonce, reqFrame)) {
		return
	}
	a.proofs.Add(1)
	mac := MAC(a.key, DirAnswerer, req.Nonce, nonce, reqFrame, ans)
	if a.badSeal {
		mac[len(mac)-1] ^= 1
	}
	if a.change {
		ans, _ = MarshalFrame(answer{Said: "to " + req.Ask + "!"})
	}
	seal, _ := MarshalFrame(Seal{MAC: mac})
	c.Write(append(ans, seal...))
}

// listen serves one connection at a time with a until the test ends.
func listen(t *testing.T, a *answerer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.serve(c)
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func ask(t *testing.T, addr string, key []byte) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	frame, n, err := Exchange(ctx, addr, key, func(nonce []byte) ([]byte, error) {
		if (key == nil) != (nonce == nil) {
			t.Errorf("nonce %x with key %v", nonce, key != nil)
		}
		return MarshalFrame(request{Ask: "b", Nonce: nonce})
	}, 1<<10)
	if err != nil {
		return "", err
	}
	if n < len(frame) {
		t.Errorf("read %d bytes, the answer alone has %d", n, len(frame))
	}
	var a answer
	if err := UnmarshalFrame(frame, &a); err != nil {
		return "", err
	}
	return a.Said, nil
}

func newKey(t *testing.T) []byte {
	t.Helper()
	k, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return Key(k)
}

// TestExchange: an authenticated exchange gets the answer; each way of
// not authenticating is refused with its error, before the answer is
// returned.
func TestExchange(t *testing.T) {
	k, other := newKey(t), newKey(t)
	for _, tc := range []struct {
		name    string
		a       *answerer
		key     []byte
		want    error // nil: the answer
		refusal bool  // the asker (without a key) reads the refusal as its answer
		proofOK bool  // the answerer accepted the asker's proof
	}{
		{"authenticated", &answerer{key: k}, k, nil, false, true},
		{"both without key", &answerer{}, nil, nil, false, false},
		{"asker without key", &answerer{key: k}, nil, nil, true, false},
		{"answerer without key", &answerer{key: k, noChallenge: true}, k, ErrNoChallenge, false, false},
		{"other key", &answerer{key: k}, other, io.EOF, false, false},
		{"wrong seal", &answerer{key: k, badSeal: true}, k, ErrBadSeal, false, true},
		{"answer changed after the seal", &answerer{key: k, change: true}, k, ErrBadSeal, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			said, err := ask(t, listen(t, tc.a), tc.key)
			switch {
			case tc.refusal && (err != nil || said != ""):
				t.Fatalf("got %q, %v; want the refusal (no answer)", said, err)
			case !tc.refusal && tc.want == nil && (err != nil || said != "to b"):
				t.Fatalf("got %q, %v; want the answer", said, err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("got %q, %v; want %v", said, err, tc.want)
			}
			if got := tc.a.proofs.Load() > 0; got != tc.proofOK {
				t.Fatalf("answerer accepted a proof: %v, want %v", got, tc.proofOK)
			}
		})
	}
}

// TestExchangeRefused: an answerer's challenge with an error is ErrRefused.
func TestExchangeRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		ReadRawFrame(c, 1<<10)
		WriteFrame(c, Challenge{Proto: 1, Error: "not now"})
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	if _, err := ask(t, ln.Addr().String(), newKey(t)); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not now") {
		t.Fatalf("got %v, want ErrRefused with the reason", err)
	}
}

// TestExchangeContext: an answerer that never answers is left when ctx
// ends.
func TestExchangeContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		<-done
	})
	t.Cleanup(func() { close(done); ln.Close(); wg.Wait() })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := Exchange(ctx, ln.Addr().String(), newKey(t), func(nonce []byte) ([]byte, error) {
			return MarshalFrame(request{Ask: "b", Nonce: nonce})
		}, 1<<10)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("an exchange without an answer succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exchange did not return after its context ended")
	}
}

// TestMACDirections: the MAC depends on its direction, the order of the
// nonces and the frames.
func TestMACDirections(t *testing.T) {
	k := newKey(t)
	na, nb := bytes.Repeat([]byte{1}, NonceLen), bytes.Repeat([]byte{2}, NonceLen)
	base := MAC(k, DirAsker, na, nb, []byte("req"))
	for name, m := range map[string][]byte{
		"direction":    MAC(k, DirAnswerer, na, nb, []byte("req")),
		"nonces":       MAC(k, DirAsker, nb, na, []byte("req")),
		"frame":        MAC(k, DirAsker, na, nb, []byte("reQ")),
		"another key":  MAC(newKey(t), DirAsker, na, nb, []byte("req")),
		"extra frame":  MAC(k, DirAsker, na, nb, []byte("req"), []byte("ans")),
		"split frames": MAC(k, DirAsker, na, nb, []byte("re"), []byte("q")),
	} {
		if hmac.Equal(m, base) != (name == "split frames") {
			t.Errorf("%s: equal %v", name, hmac.Equal(m, base))
		}
	}
}

// TestReadRawFrameBad: malformed frames are errors, never a panic or an
// allocation of what the peer claims.
func TestReadRawFrameBad(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
	}{
		{"empty", "", io.EOF},
		{"short length", "\x00\x00", io.ErrUnexpectedEOF},
		{"zero length", "\x00\x00\x00\x00", ErrFrame},
		{"over the limit", "\x00\x00\x04\x01" + strings.Repeat("x", 1025), ErrFrame},
		{"huge claim", "\xff\xff\xff\xff", ErrFrame},
		{"short body", "\x00\x00\x00\x05{}", io.ErrUnexpectedEOF},
	} {
		if _, err := ReadRawFrame(strings.NewReader(tc.in), 1<<10); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	var v answer
	if err := ReadFrame(strings.NewReader("\x00\x00\x00\x02{x"), 1<<10, &v); !errors.Is(err, ErrFrame) {
		t.Errorf("bad JSON: %v, want ErrFrame", err)
	}
	if err := UnmarshalFrame([]byte{0, 1}, &v); !errors.Is(err, ErrFrame) {
		t.Errorf("a frame shorter than its length: %v, want ErrFrame", err)
	}
}

// FuzzReadFrame: any input is a frame or an error.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x02{}"))
	f.Add([]byte("\x00\x00\x00\x0b{\"proof\":1}"))
	f.Add([]byte("\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		frame, err := ReadRawFrame(bytes.NewReader(b), 1<<10)
		if err != nil {
			return
		}
		if !bytes.HasPrefix(b, frame) {
			t.Fatalf("frame %q is not a prefix of the input", frame)
		}
		var p Proof
		UnmarshalFrame(frame, &p)
	})
}
