package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// childEnv, when set in the environment, makes the test binary run as a
// client process (childMain) instead of running tests: scenario 3 stops
// and continues it with signals, as a real application process.
const childEnv = "TOKEND_CHAOS_CHILD"

// childMain is a client application in its own process. With
// TOKEND_CHAOS_SEEDS (comma-separated), TOKEND_KEY_FILE, TOKEND_CHAOS_TOKEN and
// TOKEND_CHAOS_REGISTER (the test's register server) it acquires the token
// EX, reads the register under its fence, says so on stdout with how long
// its token stays valid ("read <ms>"), keeps reporting that ("valid <ms>",
// every 10 ms), and when it reads a line "write" on stdin writes the
// register with its fence, without checking the token again, as an
// application that was paused between its check and its write would, and
// reports the answer ("wrote <http status>"). It exits when stdin closes.
func childMain() int {
	seeds := strings.Split(os.Getenv("TOKEND_CHAOS_SEEDS"), ",")
	name, reg := os.Getenv("TOKEND_CHAOS_TOKEN"), os.Getenv("TOKEND_CHAOS_REGISTER")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: seeds,
		OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer cl.Close()
	tok, err := cl.Acquire(ctx, name, wire.EX)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	hc := http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://%s/read?name=%s&fence=%d", reg, name, tok.Fence()))
	if err != nil || resp.StatusCode != http.StatusOK {
		fmt.Println("error read", err)
		return 1
	}
	resp.Body.Close()
	remaining := func() int64 { return time.Until(tok.ValidUntil()).Milliseconds() }
	fmt.Printf("read %d %d\n", tok.Fence(), remaining())
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				fmt.Printf("valid %d\n", remaining())
			}
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() != "write" {
			continue
		}
		close(stop)
		resp, err := hc.Post(fmt.Sprintf("http://%s/write?name=%s&fence=%d", reg, name, tok.Fence()), "", nil)
		if err != nil {
			fmt.Println("error write", err)
			return 1
		}
		resp.Body.Close()
		fmt.Printf("wrote %d\n", resp.StatusCode)
	}
	return 0
}
