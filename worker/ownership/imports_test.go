package ownership

import (
	"go/ast"
	"go/parser"
	gotoken "go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the ownership core pure (docs/ARCHITECTURE.md §10):
// besides the standard library it may import only cluster/delegation, and
// none of the packages that read a clock, do I/O, synchronise or draw
// random numbers; it starts no goroutine.
func TestImports(t *testing.T) {
	banned := map[string]bool{"time": true, "net": true, "os": true, "sync": true, "sync/atomic": true,
		"log": true, "log/slog": true, "math/rand": true, "math/rand/v2": true, "crypto/rand": true,
		"syscall": true, "unsafe": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := gotoken.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") && path != "github.com/tokend/tokend/cluster/delegation" {
				t.Errorf("%s imports %s: the ownership core may import only the standard library and cluster/delegation", f, path)
			}
			if banned[path] || strings.HasPrefix(path, "net/") || strings.HasPrefix(path, "os/") {
				t.Errorf("%s imports %s: time is an input, and the shell does the I/O", f, path)
			}
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if g, ok := n.(*ast.GoStmt); ok {
				t.Errorf("%s: go statement at %s: the ownership core starts no goroutine", f, fset.Position(g.Pos()))
			}
			return true
		})
	}
}
