package clientlib_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// Take an exclusive token, write under its fence, give it back.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := clientlib.Dial(ctx, "127.0.0.1:7700")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tok, err := c.Acquire(ctx, "file/7/page/3", wire.EX)
	if err != nil {
		log.Fatal(err)
	}
	if tok.Valid() {
		// Storage refuses writes carrying a fence older than one it has seen.
		log.Printf("writing page 3 with fence %#x", tok.Fence())
	}
	if err := tok.Release(ctx); err != nil {
		log.Print(err)
	}
}

// Authenticate with a client key file: `tokenctl keys add NAME --out FILE`
// makes one, `tokend certs` writes the cluster's default one
// (pki/client.key). Without KeyFile the client reads $TOKEND_KEY_FILE, else
// tokend-data/pki/client.key in the working directory, where
// `go run ./cmd/tokend` writes it.
func ExampleDialConfig_keyFile() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := clientlib.DialConfig(ctx, clientlib.Config{
		Seeds:   []string{"10.0.0.5:7700", "10.0.0.6:7700"},
		KeyFile: "/etc/tokend/client.key",
	})
	if errors.Is(err, clientlib.ErrAuth) {
		log.Fatalf("not authenticated: %v", err) // no key, a key the cluster does not know, or an --insecure cluster
	}
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Try fails at once instead of waiting in the token's queue.
func ExampleClient_Acquire_try() {
	ctx := context.Background()
	c, err := clientlib.Dial(ctx, "127.0.0.1:7700")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Acquire(ctx, "inode:42", wire.PR, clientlib.Try())
	switch {
	case errors.Is(err, clientlib.ErrConflict):
		log.Print("someone is writing inode 42")
	case err != nil:
		log.Fatal(err)
	default:
		defer tok.Release(ctx)
	}
}

// Wait up to a second for a byte range of a token.
func ExampleClient_Acquire_range() {
	ctx := context.Background()
	c, err := clientlib.Dial(ctx, "127.0.0.1:7700")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Acquire(ctx, "file/7", wire.PW, clientlib.Range(4096, 8192), clientlib.Wait(time.Second))
	if errors.Is(err, clientlib.ErrTimeout) {
		log.Print("bytes 4096..8191 of file 7 stayed busy")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	// Leave a small note for the next holder in the token's value block.
	_ = tok.Release(ctx, clientlib.SetValue([]byte("v2")))
}

// A cache that gives tokens back when asked: flush, then downgrade or release.
func ExampleConfig_onRevoke() {
	cfg := clientlib.Config{
		Seeds: []string{"127.0.0.1:7700", "127.0.0.1:7701"},
		// ctx ends after Config.HandlerTimeout (3 s): Release and
		// Convert cannot hang on a dead worker.
		OnRevoke: func(ctx context.Context, t *clientlib.Token, r clientlib.Revocation) {
			if t.Fence() != r.Fence {
				return // upgraded since: the new grant is revoked on its own if need be
			}
			log.Printf("flushing %s [%d, %d) held %s under fence %d", t.Name(), r.Start, r.End, r.Mode, r.Fence)
			if r.Wanted == wire.NL {
				_ = t.Release(ctx)
			} else {
				_ = t.Convert(ctx, r.Wanted) // keep what the other side allows
			}
		},
	}
	c, err := clientlib.DialConfig(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// Stop using a token the moment it may have been lost.
func ExampleToken_Lost() {
	ctx := context.Background()
	c, err := clientlib.Dial(ctx, "127.0.0.1:7700")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Acquire(ctx, "leader", wire.EX)
	if err != nil {
		log.Fatal(err)
	}
	work := time.NewTicker(100 * time.Millisecond)
	defer work.Stop()
	for {
		select {
		case <-tok.Lost():
			log.Printf("no longer leader: %v", tok.Err())
			return
		case <-work.C:
			if tok.Valid() { // false while in jeopardy
				log.Printf("leading with fence %#x", tok.Fence())
			}
		}
	}
}

// Upgrade a read token to write in place; the fence changes.
func ExampleToken_Convert() {
	ctx := context.Background()
	c, err := clientlib.Dial(ctx, "127.0.0.1:7700")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	tok, err := c.Acquire(ctx, "file/7/page/3", wire.PR)
	if err != nil {
		log.Fatal(err)
	}
	if err := tok.Convert(ctx, wire.EX, clientlib.Wait(time.Second)); err != nil {
		log.Print(err)
	}
	log.Printf("mode %v fence %#x", tok.Mode(), tok.Fence())
}
