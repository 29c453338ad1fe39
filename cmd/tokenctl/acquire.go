package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// holding is what acquire prints and what a holder file records.
type holding struct {
	Name       string `json:"name"`
	Mode       string `json:"mode"`
	Start      uint64 `json:"start"`
	End        uint64 `json:"end"`
	Fence      uint64 `json:"fence"`
	Session    string `json:"session"`
	PID        int    `json:"pid"`
	ValidForMs int64  `json:"valid_for_ms"`
	Value      string `json:"value,omitempty"`
	ValueValid bool   `json:"value_valid"`
}

const acquireUsage = `acquire [flags] NAME [-- command args...]

Without a command: acquire NAME, print the grant and hold it until Ctrl-C,
--for, --yield or "tokenctl release NAME".

With a command (like flock(1)): acquire NAME, run the command while the grant
is valid, release it when the command ends, and exit with the command's
status (128 + signal if it died of one). The command gets TOKEND_TOKEN,
TOKEND_FENCE (the grant's fence: give it to storage) and TOKEND_VALID_UNTIL_MS
(Unix time in ms until which the grant was valid when the command started;
tokenctl renews it in the background). The command runs in a process group of
its own (--foreground: in tokenctl's); SIGINT, SIGQUIT, SIGTERM and SIGHUP sent
to tokenctl are passed on to it. When the grant's validity runs out without
renewal (its worker failed or cannot be reached), the group gets SIGTERM, then
SIGKILL after --kill-grace, and tokenctl exits 4; when the grant is lost,
SIGKILL at once. A command that writes to storage without checking the fence
is not protected against a write that is already in flight when it is killed.

The client authenticates with the key in --key-file (default
<certs-dir>/client.key: ./tokend-data/pki/client.key is the one tokend's
first start makes); --insecure for a cluster started with --insecure.

Exit codes: 0 ok (or the command's status), 1 error (e.g. no worker answered
within --timeout or --wait), 2 usage, 3 not acquired (conflict with --try, or
--wait ran out while queued), 4 the token was lost while held.`

func cmdAcquire(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("acquire", stderr, acquireUsage)
	var c common
	c.register(fs, true, false)
	modeS := fs.String("mode", "ex", "mode: NL CR CW PR PW EX, or shared/exclusive")
	rangeS := fs.String("range", "", "byte range START:END (end exclusive; default the whole token)")
	try := fs.Bool("try", false, "fail at once (exit 3) instead of waiting")
	wait := fs.Duration("wait", 0, "give up after this long, connecting included (exit 3 if queued that long); 0 waits until Ctrl-C")
	timeout := fs.Duration("timeout", 10*time.Second, "give up connecting (and a --try) when no worker answers within this long (exit 1)")
	hold := fs.Duration("for", 0, "release after holding this long; 0 holds until Ctrl-C or release")
	yield := fs.Bool("yield", false, "release at once when another client asks for the token (revoke)")
	detach := fs.Bool("detach", false, "hold in the background; print the grant and return (end it with tokenctl release NAME)")
	value := fs.String("value", "", "set the token's value block (<= 64 bytes) on release (PW/EX only)")
	killGrace := fs.Duration("kill-grace", time.Second, "with a command: SIGKILL this long after SIGTERM when the grant's validity runs out")
	foreground := fs.Bool("foreground", false, "with a command: run it in tokenctl's process group (for commands that read the terminal); then only the command itself is signalled")
	var key keyFlags
	key.register(fs)
	readyFile := fs.String("ready-file", "", "") // internal: used by --detach
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageErr("acquire: want a token NAME")
	}
	name := fs.Arg(0)
	var argv []string
	if rest := fs.Args()[1:]; len(rest) > 0 {
		if rest[0] != "--" || len(rest) < 2 {
			return usageErr("acquire: want NAME, or NAME -- command args... (got %q after NAME)", strings.Join(rest, " "))
		}
		argv = rest[1:]
	}
	if len(name) == 0 || len(name) > wire.MaxName {
		return usageErr("acquire: NAME must be 1..%d bytes", wire.MaxName)
	}
	if argv != nil && (*detach || *hold > 0 || *yield) {
		return usageErr("acquire: --detach, --for and --yield are for holding without a command")
	}
	mode, err := wire.ParseMode(*modeS)
	if err != nil {
		return usageErr("--mode: %v", err)
	}
	if *timeout <= 0 {
		return usageErr("--timeout: must be positive")
	}
	var opts []clientlib.Option
	start, end := wire.WholeStart, wire.WholeEnd
	if *rangeS != "" {
		start, end, err = parseRange(*rangeS)
		if err != nil {
			return usageErr("--range: %v", err)
		}
		opts = append(opts, clientlib.Range(start, end))
	}
	if *try {
		opts = append(opts, clientlib.Try())
	}
	if len(*value) > wire.MaxValue {
		return usageErr("--value: %d bytes, at most %d", len(*value), wire.MaxValue)
	}
	keyFile, err := key.resolve(fs)
	if err != nil {
		return err
	}
	if *detach {
		return detachHolder(ctx, args, stdout, c.output)
	}
	seeds := splitList(c.seeds)
	if len(seeds) == 0 {
		return usageErr("--seeds: at least one worker address is needed")
	}

	began := time.Now()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	revoked := make(chan struct{}, 1)
	// Connecting is bounded by --timeout, and by --wait if that is shorter:
	// seeds that never answer must not hang a script.
	dialFor := *timeout
	if *wait > 0 && *wait < dialFor {
		dialFor = *wait
	}
	dctx, dcancel := context.WithTimeout(ctx, dialFor)
	cli, err := clientlib.DialConfig(dctx, clientlib.Config{
		Seeds:    seeds,
		Library:  "tokenctl",
		KeyFile:  keyFile,
		Insecure: key.insecure,
		OnRevoke: func(_ context.Context, t *clientlib.Token, r clientlib.Revocation) {
			if argv == nil {
				fmt.Fprintf(stderr, "tokenctl: revoke: another client wants %s; keep at most %s\n", t.Name(), r.Wanted)
			}
			select {
			case revoked <- struct{}{}:
			default:
			}
		},
	})
	dcancel()
	if err != nil {
		if ctx.Err() != nil {
			return readyFail(*readyFile, exitError_{exitNotAcquired, "interrupted while connecting"})
		}
		switch {
		case errors.Is(err, clientlib.ErrAuth) && key.insecure:
			return readyFail(*readyFile, exitError_{exitError, fmt.Sprintf("the cluster authenticates its clients: drop --insecure and give a client key file (--key-file): %v", err)})
		case errors.Is(err, clientlib.ErrAuth):
			return readyFail(*readyFile, exitError_{exitError, fmt.Sprintf("cannot authenticate with the key file %s (--key-file): %v", keyFile, err)})
		}
		return readyFail(*readyFile, exitError_{exitError, fmt.Sprintf("cannot reach tokend: no session opened with the seeds %s within %v (--seeds, --timeout): %v",
			strings.Join(seeds, ", "), dialFor, err)})
	}
	defer cli.Close()

	// The acquire is bounded too: a --try by --timeout (one round trip), a
	// --wait by what is left of it plus time for the worker's TIMEOUT answer.
	// Without either it waits until Ctrl-C.
	actx := ctx
	var answerBy time.Duration
	switch {
	case *try:
		answerBy = *timeout
	case *wait > 0:
		left := max(*wait-time.Since(began), time.Millisecond)
		opts = append(opts, clientlib.Wait(left))
		answerBy = left + time.Second
	}
	if answerBy > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, answerBy)
		defer cancel()
	}
	tok, err := cli.Acquire(actx, name, mode, opts...)
	switch {
	case err == nil:
	case errors.Is(err, clientlib.ErrConflict):
		return readyFail(*readyFile, exitError_{exitNotAcquired, fmt.Sprintf("%s is held in a conflicting mode", name)})
	case errors.Is(err, clientlib.ErrTimeout):
		return readyFail(*readyFile, exitError_{exitNotAcquired, fmt.Sprintf("%s: not acquired within %v", name, *wait)})
	case ctx.Err() != nil:
		return readyFail(*readyFile, exitError_{exitNotAcquired, "interrupted while waiting"})
	case errors.Is(err, clientlib.ErrUnavailable):
		return readyFail(*readyFile, exitError_{exitError, fmt.Sprintf("%s: no answer from the worker that owns its shard (the one the map from the seeds %s names) within %v: %v",
			name, strings.Join(seeds, ", "), time.Since(began).Round(10*time.Millisecond), err)})
	default:
		return readyFail(*readyFile, err)
	}

	if argv != nil {
		sigs, stopSigs := commandSignals()
		stop() // from here signals go to the command
		runErr := runUnder(tok, argv, *killGrace, *foreground, sigs, stdout, stderr)
		stopSigs()
		var ec exitError_
		if errors.As(runErr, &ec) && ec.code == exitLost {
			return runErr // no release: Close ends the session, bounded, even with a dead worker
		}
		var ropts []clientlib.ReleaseOption
		if *value != "" {
			ropts = append(ropts, clientlib.SetValue([]byte(*value)))
		}
		rctx, cancel := releaseCtx()
		defer cancel()
		if err := tok.Release(rctx, ropts...); err != nil && !errors.Is(err, clientlib.ErrLost) &&
			!errors.Is(err, clientlib.ErrNotHeld) && !errors.Is(err, clientlib.ErrSessionExpired) && runErr == nil {
			return fmt.Errorf("releasing %s: %w", name, err)
		}
		return runErr
	}

	// Never report a grant that is already lost, nor one in jeopardy.
	if err := waitValid(tok, time.Millisecond, "it could be reported"); err != nil {
		return readyFail(*readyFile, err)
	}
	v, vok := tok.Value()
	h := holding{
		Name: name, Mode: tok.Mode().String(), Fence: tok.Fence(), PID: os.Getpid(),
		Session:    fmt.Sprintf("%x", cli.Session()),
		ValidForMs: durationMS(time.Until(tok.ValidUntil())),
		Value:      string(v), ValueValid: vok,
	}
	h.Start, h.End = tok.Range()
	holderPath, err := writeHolder(h)
	if err != nil {
		fmt.Fprintf(stderr, "tokenctl: warning: cannot record the holder (tokenctl release will not find it): %v\n", err)
	} else {
		defer os.Remove(holderPath)
	}
	if *readyFile != "" {
		if err := writeJSONFile(*readyFile, h); err != nil {
			return err
		}
	} else if c.output == "json" {
		printJSON(stdout, h)
	} else {
		fmt.Fprintf(stdout, "acquired %s %s %s fence %d (epoch %d, seq %d) session %s\n",
			name, h.Mode, rangeString(h.Start, h.End), h.Fence, wire.FenceEpoch(h.Fence), wire.FenceSeq(h.Fence), h.Session)
	}

	var timer <-chan time.Time
	if *hold > 0 {
		timer = time.After(*hold)
	}
	var ropts []clientlib.ReleaseOption
	if *value != "" {
		ropts = append(ropts, clientlib.SetValue([]byte(*value)))
	}
hold:
	for {
		select {
		case <-tok.Lost():
			return exitError_{exitLost, fmt.Sprintf("%s was lost (session expired or the grant could not be kept): %v", name, tok.Err())}
		case <-revoked:
			if *yield {
				break hold
			}
		case <-timer:
			break hold
		case <-ctx.Done():
			break hold
		}
	}
	rctx, cancel := releaseCtx()
	defer cancel()
	if err := tok.Release(rctx, ropts...); err != nil && !errors.Is(err, clientlib.ErrLost) {
		return fmt.Errorf("releasing %s: %w", name, err)
	}
	if *readyFile == "" && c.output == "text" {
		fmt.Fprintf(stdout, "released %s\n", name)
	}
	return nil
}

func readyFail(readyFile string, err error) error {
	if readyFile != "" {
		msg := err.Error()
		code := exitError
		var ec exitError_
		if errors.As(err, &ec) {
			code = ec.code
		}
		writeJSONFile(readyFile, map[string]any{"error": msg, "code": code})
	}
	return err
}

// detachHolder starts this command again in the background without
// --detach, waits until it has acquired (or failed), and reports.
func detachHolder(ctx context.Context, args []string, stdout io.Writer, output string) error {
	dir, err := os.MkdirTemp("", "tokenctl-ready-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ready := filepath.Join(dir, "ready.json")
	var child []string
	for _, a := range args {
		if a == "--detach" || a == "-detach" || a == "--detach=true" || a == "-detach=true" {
			continue
		}
		child = append(child, a)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, append([]string{"acquire", "--ready-file", ready}, child...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if b, err := os.ReadFile(ready); err == nil && json.Valid(b) {
			var res map[string]any
			json.Unmarshal(b, &res)
			if msg, ok := res["error"].(string); ok {
				code, _ := res["code"].(float64)
				return exitError_{int(code), msg}
			}
			var h holding
			json.Unmarshal(b, &h)
			cmd.Process.Release()
			if output == "json" {
				return printJSON(stdout, h)
			}
			fmt.Fprintf(stdout, "acquired %s %s %s fence %d session %s; held by pid %d (tokenctl release %s)\n",
				h.Name, h.Mode, rangeString(h.Start, h.End), h.Fence, h.Session, h.PID, h.Name)
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("background holder exited before acquiring: %v", err)
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
			return exitError_{exitNotAcquired, "interrupted while waiting"}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// holderDir is where holders record themselves for "tokenctl release".
func holderDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "tokenctl")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("tokenctl-%d", os.Getuid()))
}

func holderPrefix(name string) string { return hex.EncodeToString([]byte(name)) + "." }

func writeHolder(h holding) (string, error) {
	dir := holderDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, holderPrefix(h.Name)+strconv.Itoa(h.PID)+".json")
	return path, writeJSONFile(path, h)
}

func parseRange(s string) (uint64, uint64, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want START:END", s)
	}
	start, err := strconv.ParseUint(a, 0, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: bad start: %v", s, err)
	}
	end, err := strconv.ParseUint(b, 0, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%q: bad end: %v", s, err)
	}
	if start >= end {
		return 0, 0, fmt.Errorf("%q: start must be below end", s)
	}
	if start == wire.WholeStart && end == wire.WholeEnd {
		return start, end, nil
	}
	return start, end, nil
}

func rangeString(start, end uint64) string {
	if start == wire.WholeStart && end == wire.WholeEnd {
		return "[whole]"
	}
	return fmt.Sprintf("[%d,%d)", start, end)
}
