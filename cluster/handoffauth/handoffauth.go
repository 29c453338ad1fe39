// Package handoffauth is the framing and the authentication of the
// exchanges on a worker's handoff listener (wire/SPEC.md section 18,
// "Authentication"): a new owner's pull of a shard's state and the
// coordinator leader's deadlock-detector query (section 19) are both one
// request frame answered by one frame, authenticated both ways under a key
// derived from the cluster key. It sits under cluster because the worker
// (both sides of a pull, the answering side of a detector query) and the
// coordinator (the detector's asking side) must agree on it and do not
// import each other.
//
// Frames are a big-endian u32 length, then JSON. A MAC covers frames whole
// as sent, their length included. The cryptography is the standard
// library's: HKDF-SHA256 and HMAC-SHA256.
package handoffauth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/tokend/tokend/wire/auth"
)

const (
	// Info is the HKDF info of the handoff key.
	Info = "tokend v2 handoff"
	// NonceLen is the length of each side's nonce.
	NonceLen = 16
	// MaxFrame bounds every frame either side sends.
	MaxFrame = 512 << 20
	// MaxProofFrame bounds the frames of a proof and of a seal.
	MaxProofFrame = 1 << 10
)

// The directions of an exchange's MACs.
const (
	DirAsker    byte = 1 // the asker's proof (a new owner, the detector)
	DirAnswerer byte = 2 // the answerer's seal over its answer (the old owner, the worker asked)
)

// Challenge is the answerer's first frame in an authenticated exchange:
// its nonce, or an error for the whole request.
type Challenge struct {
	Proto int    `json:"proto"`
	Nonce []byte `json:"nonce,omitempty"`
	Error string `json:"error,omitempty"`
}

// Proof is the asker's proof of the handoff key.
type Proof struct {
	Proof []byte `json:"proof"`
}

// Seal follows the answer of an authenticated exchange: the answerer's MAC
// over the exchange and the answer's frame.
type Seal struct {
	MAC []byte `json:"mac"`
}

// Key derives the key both sides of an exchange prove:
// HKDF-SHA256(secret = cluster key, no salt, info = Info).
func Key(cluster auth.Key) []byte {
	k, err := hkdf.Key(sha256.New, cluster[:], nil, Info, auth.KeyLen)
	if err != nil {
		panic("handoffauth: hkdf: " + err.Error()) // only for lengths above 255·32
	}
	return k
}

// NewNonce returns a fresh random nonce.
func NewNonce() ([]byte, error) {
	n := make([]byte, NonceLen)
	_, err := rand.Read(n)
	return n, err
}

// MAC computes the MAC of direction dir of one exchange:
// HMAC-SHA256(key, dir || asker's nonce || answerer's nonce || frames...):
// the request's frame for DirAsker, the request's and the answer's for
// DirAnswerer.
func MAC(key []byte, dir byte, askerNonce, answererNonce []byte, frames ...[]byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte{dir})
	m.Write(askerNonce)
	m.Write(answererNonce)
	for _, f := range frames {
		m.Write(f)
	}
	return m.Sum(nil)
}

// Exchange makes one exchange on the handoff listener at addr and returns
// the answer's frame (at most maxAnswer bytes of JSON). request returns
// the request's frame carrying nonce (nil when key is nil). With key
// (Key of the cluster key) the exchange is authenticated: the answerer
// must answer with a challenge and seal its answer; an answer whose seal
// does not verify is refused before anyone decodes it. n counts the bytes
// read. The connection ends with ctx.
//
// Errors: ErrRefused (the answerer's challenge refused the request),
// ErrNoChallenge, ErrBadSeal, ErrFrame, or the network's.
func Exchange(ctx context.Context, addr string, key []byte, request func(nonce []byte) ([]byte, error), maxAnswer int) (frame []byte, n int, err error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	// Socket deadlines are the kernel's: real time. A caller's timeout on
	// another clock ends ctx.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var nonce []byte
	if key != nil {
		if nonce, err = NewNonce(); err != nil {
			return nil, 0, err
		}
	}
	reqFrame, err := request(nonce)
	if err != nil {
		return nil, 0, err
	}
	if _, err := c.Write(reqFrame); err != nil {
		return nil, 0, err
	}
	cr := &countReader{r: bufio.NewReader(c)}
	if key == nil {
		frame, err := ReadRawFrame(cr, maxAnswer)
		return frame, cr.n, err
	}
	// An answerer without the key answers at once: its answer is read as
	// a challenge without a nonce, and refused.
	raw, err := ReadRawFrame(cr, maxAnswer)
	if err != nil {
		return nil, cr.n, err
	}
	var ch Challenge
	if err := UnmarshalFrame(raw, &ch); err != nil {
		return nil, cr.n, err
	}
	if ch.Error != "" {
		return nil, cr.n, fmt.Errorf("%w: %s", ErrRefused, ch.Error)
	}
	if len(ch.Nonce) != NonceLen {
		return nil, cr.n, ErrNoChallenge
	}
	if _, err := WriteFrame(c, Proof{Proof: MAC(key, DirAsker, nonce, ch.Nonce, reqFrame)}); err != nil {
		return nil, cr.n, err
	}
	if frame, err = ReadRawFrame(cr, maxAnswer); err != nil {
		return nil, cr.n, err
	}
	var seal Seal
	if err := ReadFrame(cr, MaxProofFrame, &seal); err != nil {
		return nil, cr.n, err
	}
	if !hmac.Equal(seal.MAC, MAC(key, DirAnswerer, nonce, ch.Nonce, reqFrame, frame)) {
		return nil, cr.n, ErrBadSeal
	}
	return frame, cr.n, nil
}

// ---- frames ----

// WriteFrame writes v as one frame.
func WriteFrame(w io.Writer, v any) (int, error) {
	b, err := MarshalFrame(v)
	if err != nil {
		return 0, err
	}
	return w.Write(b)
}

// MarshalFrame returns v as one frame.
func MarshalFrame(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrame, len(b))
	}
	return append(binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b))), b...), nil
}

// ReadFrame reads one frame of at most limit bytes of JSON into v.
func ReadFrame(r io.Reader, limit int, v any) error {
	b, err := ReadRawFrame(r, limit)
	if err != nil {
		return err
	}
	return UnmarshalFrame(b, v)
}

// ReadRawFrame reads one frame of at most limit bytes of JSON and returns
// it whole, its length included.
func ReadRawFrame(r io.Reader, limit int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || int64(n) > int64(limit) {
		return nil, fmt.Errorf("%w: length %d (limit %d)", ErrFrame, n, limit)
	}
	// Read what arrives rather than allocate what the peer claims.
	var buf bytes.Buffer
	buf.Write(hdr[:])
	if _, err := buf.ReadFrom(io.LimitReader(r, int64(n))); err != nil {
		return nil, err
	}
	if buf.Len() != 4+int(n) {
		return nil, io.ErrUnexpectedEOF
	}
	return buf.Bytes(), nil
}

// UnmarshalFrame decodes frame (as ReadRawFrame returns it) into v.
func UnmarshalFrame(frame []byte, v any) error {
	if len(frame) < 4 {
		return fmt.Errorf("%w: %d bytes", ErrFrame, len(frame))
	}
	if err := json.Unmarshal(frame[4:], v); err != nil {
		return fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return nil
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
