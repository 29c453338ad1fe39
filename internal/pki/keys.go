package pki

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tokend/tokend/wire/auth"
)

// The key files of the datagram authentication (wire/SPEC.md section 20),
// made next to the certificates by [WriteKeys]:
//
//	cluster.key   the cluster key: servers and workers only; it seals the
//	              client keys and the session keys stored in etcd
//	client.key    the client key named "default", registered in etcd by
//	              the servers at start: the one credential of the simple case
const (
	ClusterKeyFile       = "cluster.key"
	DefaultClientKeyFile = "client.key"
	// ClusterKeyName is the name in the cluster key's file. It is not a
	// client key: ValidClientKeyName refuses it.
	ClusterKeyName = "cluster"
	// DefaultClientKeyName is the name of the key in client.key.
	DefaultClientKeyName = "default"
)

// ValidClientKeyName reports whether name may name a client key: a valid
// key name (auth.ValidKeyName) other than the cluster key's.
func ValidClientKeyName(name string) bool {
	return auth.ValidKeyName(name) && name != ClusterKeyName
}

// WriteKeys makes cluster.key and client.key in dir (created 0700 if
// missing), each with a fresh random key, mode 0600. A file that exists is
// kept, never overwritten, if it is a key file of the right name; otherwise
// WriteKeys fails with ErrBadFile naming it. Result lists what was made and
// what kept.
func WriteKeys(dir string) (Result, error) {
	var res Result
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	for _, f := range []struct{ file, name string }{
		{ClusterKeyFile, ClusterKeyName},
		{DefaultClientKeyFile, DefaultClientKeyName},
	} {
		path := filepath.Join(dir, f.file)
		switch name, _, err := ReadKeyFile(path); {
		case err == nil && name == f.name:
			res.Kept = append(res.Kept, path)
			continue
		case err == nil:
			return res, fmt.Errorf("%w: %s holds the key %q, want %q", ErrBadFile, path, name, f.name)
		case !errors.Is(err, fs.ErrNotExist):
			return res, err
		}
		k, err := auth.NewKey()
		if err != nil {
			return res, err
		}
		switch err := WriteKeyFile(path, f.name, k); {
		case errors.Is(err, fs.ErrExist):
			// Made by someone else meanwhile: theirs stands.
			res.Kept = append(res.Kept, path)
		case err != nil:
			return res, err
		default:
			res.Created = append(res.Created, path)
		}
	}
	return res, nil
}

// WriteKeyFile writes the key file of name and k to path, mode 0600. It
// never replaces a file: if path exists it fails with an error that
// matches fs.ErrExist. A reader never sees half a file.
func WriteKeyFile(path, name string, k auth.Key) error {
	if !auth.ValidKeyName(name) {
		return fmt.Errorf("%w: key name %q: use 1 to %d characters of A-Z a-z 0-9 . _ -", ErrBadName, name, auth.MaxKeyName)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(auth.FormatKeyFile(name, k))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// A hard link, unlike a rename, fails if path exists.
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists already; not replaced: %w", path, fs.ErrExist)
		}
		return err
	}
	return nil
}

// ReadKeyFile reads a key file (wire/auth's format). It refuses, with
// ErrBadFile, a file that others than its owner and group may access
// (chmod 600 it; a group may read it, as a Kubernetes Secret mounted 0440
// with an fsGroup is) and one that does not parse; the error names the file and never
// shows the key. A missing file is an error matching fs.ErrNotExist.
func ReadKeyFile(path string) (name string, k auth.Key, err error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", auth.Key{}, err
		}
		return "", auth.Key{}, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", auth.Key{}, fmt.Errorf("%w: %v", ErrBadFile, err)
	}
	if !fi.Mode().IsRegular() {
		return "", auth.Key{}, fmt.Errorf("%w: %s is not a regular file", ErrBadFile, path)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return "", auth.Key{}, fmt.Errorf("%w: %s has mode %04o: others than its owner and group must not have access to a key file (chmod 600 %s)", ErrBadFile, path, perm, path)
	}
	// A key file is one short line; more is not a key file.
	b, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return "", auth.Key{}, fmt.Errorf("%w: %s: %v", ErrBadFile, path, err)
	}
	name, k, err = auth.ParseKeyFile(b)
	if err != nil {
		return "", auth.Key{}, fmt.Errorf("%w: %s: %v", ErrBadFile, path, err)
	}
	return name, k, nil
}
