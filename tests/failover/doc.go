// Package recovery holds the fault-injection tests for worker failover: they
// build the tokend binary, start real server and worker processes on
// loopback, drive them with in-process clientlib clients, and then kill
// (SIGKILL), hang (SIGSTOP/SIGCONT) or stop processes while checking the
// invariants of docs/ARCHITECTURE.md with a fenced register. It has no code of its own;
// the tests run on Linux and are skipped with -short.
//
// TOKEND_RECOVERY_KILLS=n makes TestWorkerKill kill a worker n times instead
// of 3 and report failover percentiles over them.
package failover
