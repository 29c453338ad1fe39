package tokend_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocsStayInRepo keeps the repository self-contained: docs/ARCHITECTURE.md
// is the design's source of truth, and no .go or .md file may point to a
// design document outside the repository, which a fresh clone does not have.
func TestDocsStayInRepo(t *testing.T) {
	if _, err := os.Stat("go.mod"); err != nil {
		t.Skip("not at the module root")
	}
	if _, err := os.Stat(filepath.Join("docs", "ARCHITECTURE.md")); err != nil {
		t.Fatalf("docs/ARCHITECTURE.md is missing: %v", err)
	}
	// Spelled in pieces so that this file does not match itself.
	banned := []string{".." + "/shared", "DESIGN" + ".md", "STYLE" + ".md"}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, ".md") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, s := range banned {
				if strings.Contains(line, s) {
					t.Errorf("%s:%d mentions %q: point to docs/ARCHITECTURE.md (or another file in the repository) instead", path, i+1, s)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
