package bench

import (
	"fmt"
	"os"

	"github.com/tokend/tokend/wire"
	"github.com/tokend/tokend/wire/auth"
)

// The raw-datagram clients (holder.go, sessions.go) authenticate as
// wire/SPEC.md section 20 asks, with package wire/auth: SESSION_OPEN
// without a cookie, the COOKIE answer, the same open with the cookie
// tagged with the open key, and an OK reply verified under the session key
// its session id and nonces make; then every datagram of the session
// tagged, and every reply verified, with the session key's MACs. Replies
// that do not verify are dropped and counted.

// rawKey is the client key of a raw-datagram client; nil for a cluster
// started with --insecure (zero tags, no cookie).
type rawKey struct {
	name string
	key  auth.Key
	open auth.Key // auth.OpenKey(key)
}

// loadRawKey reads tgt's client key file (nil, nil for an insecure target).
func loadRawKey(tgt target) (*rawKey, error) {
	if tgt.insecure() {
		return nil, nil
	}
	b, err := os.ReadFile(tgt.keyFile)
	if err != nil {
		return nil, fmt.Errorf("bench: client key file: %w", err)
	}
	name, k, err := auth.ParseKeyFile(b)
	if err != nil {
		return nil, fmt.Errorf("bench: client key file %s: %w", tgt.keyFile, err)
	}
	return &rawKey{name: name, key: k, open: auth.OpenKey(k)}, nil
}

// openMACs returns the MACs of the open key (each keeps hash state: one
// pair per goroutine); nil, nil without a key.
func (k *rawKey) openMACs() (c2w, w2c *auth.MAC) {
	if k == nil {
		return nil, nil
	}
	return auth.NewMAC(k.open, auth.ClientToWorker), auth.NewMAC(k.open, auth.WorkerToClient)
}

// openDatagram appends SESSION_OPEN m with request id to dst. With a key
// it carries the key's name and nonce, and with a cookie it is tagged with
// the open key (c2w, from openMACs); without a cookie it is not tagged.
func (k *rawKey) openDatagram(dst []byte, m wire.SessionOpen, id uint64, nonce auth.Nonce, cookie []byte, c2w *auth.MAC) ([]byte, error) {
	if k != nil {
		m.Nonce, m.KeyName, m.Cookie = nonce, []byte(k.name), cookie
	}
	start := len(dst)
	b, err := m.Append(dst, wire.Header{Request: id})
	if err != nil || k == nil || len(cookie) == 0 {
		return b, err
	}
	return b, c2w.Seal(b[start:])
}

// verifyOpenReply reports whether h (datagram b), an answer to the
// SESSION_OPEN with nonce, is authentic: COOKIE is not tagged; OK is
// tagged with the session key it makes, which verifyOpenReply returns;
// any other answer with the open key (w2c, from openMACs). Without a key
// everything is accepted.
func (k *rawKey) verifyOpenReply(h wire.Header, b []byte, nonce auth.Nonce, w2c *auth.MAC) (auth.Key, bool) {
	if k == nil {
		return auth.Key{}, true
	}
	switch h.Status {
	case wire.StatusCookie:
		return auth.Key{}, true
	case wire.StatusOK:
		var r wire.SessionReply
		if r.Decode(h, b) != nil {
			return auth.Key{}, false
		}
		sk := auth.SessionKey(k.key, nonce, auth.Nonce(r.WorkerNonce), h.Session)
		return sk, auth.NewMAC(sk, auth.WorkerToClient).Verify(b)
	}
	return auth.Key{}, w2c.Verify(b)
}

// sessionMACs returns the MACs of session key sk; nil, nil without a key.
func (k *rawKey) sessionMACs(sk auth.Key) (c2w, w2c *auth.MAC) {
	if k == nil {
		return nil, nil
	}
	return auth.NewMAC(sk, auth.ClientToWorker), auth.NewMAC(sk, auth.WorkerToClient)
}

// sealWith tags datagram b with c2w, unless the client has no key (nil:
// the encoder's zero tag stays).
func sealWith(c2w *auth.MAC, b []byte) error {
	if c2w == nil {
		return nil
	}
	return c2w.Seal(b)
}

// verifiedBy reports whether datagram b verifies under w2c (always true
// without a key: w2c nil).
func verifiedBy(w2c *auth.MAC, b []byte) bool {
	return w2c == nil || w2c.Verify(b)
}

// errNoKey: a raw client without a key met a cluster that authenticates.
var errNoKey = fmt.Errorf("%w: the worker answered COOKIE: it authenticates clients, and this client has no key", errHolder)
