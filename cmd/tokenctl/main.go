// Command tokenctl is tokend's command-line client, for people and scripts.
//
//	tokenctl acquire [flags] NAME   acquire a token and hold it until Ctrl-C, --for, or release
//	tokenctl acquire [flags] NAME -- command args...
//	                                run a command while the token is held and valid (like flock(1))
//	tokenctl release NAME           end the holders of NAME started by "tokenctl acquire" on this host
//	tokenctl status                 leader, config, workers, shards and sessions (from etcd)
//	tokenctl holders NAME           who holds and who waits for a token (asked of the worker serving it)
//	tokenctl sessions               the live client sessions (from etcd)
//	tokenctl evict SESSION          end a client session: its grants go to those waiting
//	tokenctl drain WORKER-ID        move a worker's shards away by planned handoffs (and wait)
//	tokenctl undrain WORKER-ID      let the leader give it shards again
//	tokenctl health [URL]           is the local (or named) tokend ready? For container health checks
//	tokenctl member list|add|remove|replace   the servers' etcd membership: replace a dead server
//	tokenctl keys add|list|revoke   the client keys in etcd: add one per client, revoke one (ending its sessions)
//	tokenctl announce-key           the public key clients verify the workers' multicast announcements with
//	tokenctl fence-key              the public key storage verifies fence proofs with
//
// Exit codes: 0 success (with a command: the command's status), 1 error
// (e.g. no worker answered within --timeout or --wait), 2 usage, 3 not
// acquired (conflict with --try, or the wait ran out while queued), 4 the
// token was lost, or its validity ran out, while held (a command was stopped).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Exit codes.
const (
	exitOK          = 0
	exitError       = 1
	exitUsage       = 2
	exitNotAcquired = 3
	exitLost        = 4
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usageText = `Usage:
  tokenctl acquire [flags] NAME   acquire NAME and hold it until Ctrl-C, --for, or "tokenctl release NAME"
  tokenctl acquire [flags] NAME -- command args...
                                  run the command while NAME is held and valid (like flock(1))
  tokenctl release [flags] NAME   end the holders of NAME that "tokenctl acquire" started on this host
  tokenctl status [flags]         show the leader, config, workers, shards and sessions
  tokenctl holders [flags] NAME   who holds and who waits for NAME, with modes, ranges, fences, sessions
  tokenctl sessions [flags]       list the live client sessions
  tokenctl evict [flags] SESSION  end a client session (revoke its lease): its tokens go to those waiting
  tokenctl drain [flags] ID       move worker ID's shards to the others by planned handoffs, wait until done
  tokenctl undrain [flags] ID     withdraw a drain: the leader may give worker ID shards again
  tokenctl health [flags] [URL]   exit 0 if a tokend's /readyz (default 127.0.0.1:7780) answers 200
  tokenctl member list|add|remove|replace [flags] ...
                                  list the servers' etcd members; replace a dead one
  tokenctl keys add|list|revoke [flags] [NAME]
                                  the client keys: add one per client, list them, revoke one
                                  (ending its sessions)
  tokenctl announce-key [flags]   print the announce key (from the cluster key) that clients
                                  verify multicast announcements with
  tokenctl fence-key [flags]      print the public fence key (hex, from the cluster key) that
                                  storage verifies fence proofs with
Run "tokenctl <command> -h" for its flags. Exit codes: 0 ok (or the command's
status), 1 error (e.g. unreachable), 2 usage, 3 not acquired (conflict or wait
ran out), 4 lost while held (the command was stopped).
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return exitUsage
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "acquire":
		err = cmdAcquire(ctx, args, stdout, stderr)
	case "release":
		err = cmdRelease(ctx, args, stdout, stderr)
	case "status":
		err = cmdStatus(ctx, args, stdout, stderr)
	case "holders":
		err = cmdHolders(ctx, args, stdout, stderr)
	case "sessions":
		err = cmdSessions(ctx, args, stdout, stderr)
	case "evict":
		err = cmdEvict(ctx, args, stdout, stderr)
	case "drain":
		err = cmdDrain(ctx, args, stdout, stderr)
	case "undrain":
		err = cmdUndrain(ctx, args, stdout, stderr)
	case "health":
		err = cmdHealth(ctx, args, stdout, stderr)
	case "member":
		err = cmdMember(ctx, args, stdout, stderr)
	case "keys":
		err = cmdKeys(ctx, args, stdout, stderr)
	case "announce-key":
		err = cmdAnnounceKey(ctx, args, stdout, stderr)
	case "fence-key":
		err = cmdFenceKey(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return exitOK
	default:
		fmt.Fprintf(stderr, "tokenctl: unknown command %q\n\n%s", cmd, usageText)
		return exitUsage
	}
	if err == nil {
		return exitOK
	}
	var ec exitError_
	if errors.As(err, &ec) {
		if ec.msg != "" {
			fmt.Fprintln(stderr, "tokenctl:", ec.msg)
		}
		return ec.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintln(stderr, "tokenctl:", err)
	return exitError
}

// exitError_ carries an exit code out of a command.
type exitError_ struct {
	code int
	msg  string
}

func (e exitError_) Error() string { return e.msg }

func usageErr(format string, a ...any) error {
	return exitError_{exitUsage, fmt.Sprintf(format, a...)}
}

// common flags.
type common struct {
	output string
	seeds  string
	etcd   string
	tls    etcdFlags
}

func (c *common) register(fs *flag.FlagSet, seeds, etcd bool) {
	fs.StringVar(&c.output, "o", envOr("TOKENCTL_OUTPUT", "text"), "output format: text or json")
	if seeds {
		fs.StringVar(&c.seeds, "seeds", envOr("TOKENCTL_SEEDS", "127.0.0.1:7700"), "comma-separated worker UDP addresses to start from")
	}
	if etcd {
		fs.StringVar(&c.etcd, "etcd", envOr("TOKENCTL_ETCD", "127.0.0.1:2379"), "comma-separated etcd client endpoints")
		c.tls.register(fs)
	}
}

func (c *common) check() error {
	if c.output != "text" && c.output != "json" {
		return usageErr("-o: %q is not text or json", c.output)
	}
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func newFlagSet(name string, stderr io.Writer, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("tokenctl "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tokenctl %s\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return exitError_{exitUsage, ""} // flag already printed the error
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func durationMS(d time.Duration) int64 { return d.Milliseconds() }
