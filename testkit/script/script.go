// Package script runs the scenario scripts of tokend's pure cores
// (worker/table, worker/session, worker/vouch, worker/grace, worker/guard,
// worker/ownership, coordinator/deadlock): text files of commands and
// their expected output in the format of github.com/cockroachdb/datadriven,
// each file a subtest, `-rewrite` regenerating the expectations. Each
// package keeps its own commands; this package holds what their harnesses
// share: finding and running the files, reading arguments, and reading
// times.
package script

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// Run runs every file that glob matches (for example "testdata/*.txt") as
// a subtest named after the file without its extension. newFile is called
// once per file and returns the handler of that file's commands, so that
// each file starts from a fresh harness. A glob that matches nothing fails
// the test: a renamed directory must not pass silently.
func Run(t *testing.T, glob string, newFile func() func(*testing.T, *datadriven.TestData) string) {
	t.Helper()
	files, err := filepath.Glob(glob)
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario scripts match %q: %v", glob, err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), filepath.Ext(f)), func(t *testing.T) {
			datadriven.RunTest(t, f, newFile())
		})
	}
}

// Args are a command's arguments by key, each with its first value ("" for
// a key given alone).
type Args map[string]string

// ArgsOf returns the arguments of d.
func ArgsOf(d *datadriven.TestData) Args {
	a := make(Args, len(d.CmdArgs))
	for _, ca := range d.CmdArgs {
		a[ca.Key] = ""
		if len(ca.Vals) > 0 {
			a[ca.Key] = ca.Vals[0]
		}
	}
	return a
}

// Nanos returns argument key read by ParseNanos, or def if it is not
// given; a value that does not parse fails the test at d's position.
func (a Args) Nanos(t *testing.T, d *datadriven.TestData, key string, def int64) int64 {
	t.Helper()
	return parsed(t, d, a, key, def, ParseNanos)
}

// Float returns argument key as a number, or def if it is not given; a
// value that does not parse fails the test at d's position.
func (a Args) Float(t *testing.T, d *datadriven.TestData, key string, def float64) float64 {
	t.Helper()
	return parsed(t, d, a, key, def, func(s string) (float64, error) { return strconv.ParseFloat(s, 64) })
}

func parsed[T any](t *testing.T, d *datadriven.TestData, a Args, key string, def T, parse func(string) (T, error)) T {
	t.Helper()
	v, ok := a[key]
	if !ok {
		return def
	}
	n, err := parse(v)
	if err != nil {
		d.Fatalf(t, "%s=%q: %v", key, v, err)
	}
	return n
}

// ParseNanos reads a time or a duration in nanoseconds: a plain number is
// nanoseconds, one with the unit ms or s is scaled (1500ms, 2s, 0.25s).
// Whole numbers are read exactly, fractions as float64.
func ParseNanos(s string) (int64, error) {
	num, unit := s, int64(1)
	switch {
	case strings.HasSuffix(s, "ms"):
		num, unit = strings.TrimSuffix(s, "ms"), 1e6
	case strings.HasSuffix(s, "s"):
		num, unit = strings.TrimSuffix(s, "s"), 1e9
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		return n * unit, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, err
	}
	return int64(f * float64(unit)), nil
}
