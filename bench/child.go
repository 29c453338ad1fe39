package bench

import (
	"fmt"
	"os"
)

// EchoChild runs this process as the echo server and exits it, if the
// environment asks for one (the echo workload re-executes the bench's own
// binary with TOKEND_BENCH_ECHO set, see echo.go); otherwise it returns at
// once. Call it first thing in main, and in TestMain of tests that run the
// echo workload.
func EchoChild() {
	if kind, ok := os.LookupEnv(echoChildEnv); ok {
		if err := runEchoChild(kind, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "tokend-bench echo:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}
