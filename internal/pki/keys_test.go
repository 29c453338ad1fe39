package pki

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokend/tokend/wire/auth"
)

// TestWriteKeys: the first run makes cluster.key ("cluster") and
// client.key ("default"), 0600, with different random keys; a second run
// keeps both byte for byte; a file of the wrong name or that does not
// parse is refused, not replaced.
func TestWriteKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	res, err := WriteKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Created) != 2 || len(res.Kept) != 0 {
		t.Fatalf("created %v, kept %v", res.Created, res.Kept)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", fi.Mode().Perm())
	}
	var keys []auth.Key
	for _, f := range []struct{ file, name string }{{ClusterKeyFile, ClusterKeyName}, {DefaultClientKeyFile, DefaultClientKeyName}} {
		path := filepath.Join(dir, f.file)
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f.file, fi, err)
		}
		name, k, err := ReadKeyFile(path)
		if err != nil || name != f.name {
			t.Fatalf("%s: name %q, %v", f.file, name, err)
		}
		keys = append(keys, k)
	}
	if keys[0] == keys[1] || keys[0] == (auth.Key{}) {
		t.Error("the cluster key and the client key are equal or zero")
	}
	before, _ := os.ReadFile(filepath.Join(dir, ClusterKeyFile))
	res, err = WriteKeys(dir)
	if err != nil || len(res.Created) != 0 || len(res.Kept) != 2 {
		t.Fatalf("second run: created %v, kept %v, %v", res.Created, res.Kept, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, ClusterKeyFile)); string(after) != string(before) {
		t.Error("the second run changed cluster.key")
	}

	// client.key holding another name is refused and left alone.
	k, _ := auth.NewKey()
	other := filepath.Join(t.TempDir(), "pki")
	os.MkdirAll(other, 0o700)
	if err := WriteKeyFile(filepath.Join(other, DefaultClientKeyFile), "alice", k); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteKeys(other); !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), `"alice"`) {
		t.Errorf("client.key named alice: %v", err)
	}
	if name, _, _ := ReadKeyFile(filepath.Join(other, DefaultClientKeyFile)); name != "alice" {
		t.Errorf("client.key replaced: %q", name)
	}
}

// TestKeyFileSafety: WriteKeyFile never replaces a file; ReadKeyFile
// accepts a file its group may read and refuses one others may access, garbage (without echoing it), and says
// "not exist" for a missing file.
func TestKeyFileSafety(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k.key")
	k1, _ := auth.NewKey()
	k2, _ := auth.NewKey()
	if err := WriteKeyFile(path, "alice", k1); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(path, "alice", k2); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second write: %v, want fs.ErrExist", err)
	}
	if _, got, err := ReadKeyFile(path); err != nil || got != k1 {
		t.Errorf("after a refused overwrite: %v", err)
	}
	if err := WriteKeyFile(filepath.Join(dir, "bad.key"), "no spaces", k1); !errors.Is(err, ErrBadName) {
		t.Errorf("bad name: %v", err)
	}

	os.Chmod(path, 0o440) // a Kubernetes Secret with an fsGroup
	if _, got, err := ReadKeyFile(path); err != nil || got != k1 {
		t.Errorf("mode 0440: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o604, 0o602} {
		os.Chmod(path, mode)
		if _, _, err := ReadKeyFile(path); !errors.Is(err, ErrBadFile) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	garbage := filepath.Join(dir, "garbage.key")
	os.WriteFile(garbage, []byte("tokend-key v1 alice s3cr3t-not-base64\n"), 0o600)
	if _, _, err := ReadKeyFile(garbage); !errors.Is(err, ErrBadFile) || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("garbage: %v", err)
	}
	if _, _, err := ReadKeyFile(filepath.Join(dir, "missing.key")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if ValidClientKeyName(ClusterKeyName) || !ValidClientKeyName(DefaultClientKeyName) || ValidClientKeyName("a b") {
		t.Error("ValidClientKeyName")
	}
}
