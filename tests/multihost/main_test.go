package multihost

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/tokend/tokend/testkit/proctest"
)

// httpGetEnv makes the test binary a one-shot HTTP client: the test runs
// it inside the client's namespace to prove an advertised HTTP address is
// reachable from another host.
const httpGetEnv = "MULTIHOST_HTTP_GET"

func TestMain(m *testing.M) {
	if u := os.Getenv(httpGetEnv); u != "" {
		os.Exit(httpGet(u))
	}
	os.Exit(proctest.Main(m, "tokend-multihost-", 10*time.Second))
}

// httpGet fetches u and returns 0 if it answered 200.
func httpGet(u string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	fmt.Printf("%s %s", resp.Status, b)
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
