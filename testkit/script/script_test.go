package script

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/datadriven"
)

func TestParseNanos(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "17": 17, "1500ms": 1_500_000_000, "2s": 2_000_000_000, "0.25s": 250_000_000,
		"1.5ms": 1_500_000, "-3ms": -3_000_000, "1796524640123456789": 1796524640123456789,
	} {
		if got, err := ParseNanos(in); err != nil || got != want {
			t.Errorf("ParseNanos(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "ms", "1h", "x5s", "1.2.3s"} {
		if got, err := ParseNanos(in); err == nil {
			t.Errorf("ParseNanos(%q) = %d, want an error", in, got)
		}
	}
}

// TestRun: each file is a subtest with a fresh handler, and the handler
// sees the arguments as ArgsOf reads them.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	for i, body := range []string{
		"count a=1 b\n----\n1 a=\"1\" b=\"\"\n\ncount\n----\n2\n",
		"count x=7\n----\n1 x=\"7\"\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.txt", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	files := 0
	Run(t, filepath.Join(dir, "*.txt"), func() func(*testing.T, *datadriven.TestData) string {
		files++
		n := 0
		return func(t *testing.T, d *datadriven.TestData) string {
			n++
			out := fmt.Sprint(n)
			a := ArgsOf(d)
			for _, ca := range d.CmdArgs {
				out += fmt.Sprintf(" %s=%q", ca.Key, a[ca.Key])
			}
			return out + "\n"
		}
	})
	if files != 2 {
		t.Fatalf("%d handlers made for 2 files", files)
	}
}
