package tokend_test

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/tokend/tokend"

// imports returns, for every package directory of the module, the imports of
// its non-test Go files.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		pkg := module
		if dir := filepath.ToSlash(filepath.Dir(path)); dir != "." {
			pkg += "/" + dir
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			out[pkg] = append(out[pkg], p)
		}
		if _, ok := out[pkg]; !ok {
			out[pkg] = nil
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func isStd(p string) bool { return !strings.Contains(strings.Split(p, "/")[0], ".") }

// TestLayering checks the import rules of docs/ARCHITECTURE.md §10: pure cores import only
// the standard library (and wire); worker and coordinator do not import each
// other; clients never talk to etcd; nothing imports cmd/ or bench/.
func TestLayering(t *testing.T) {
	if _, err := os.Stat("go.mod"); err != nil {
		t.Skip("not at the module root")
	}
	pure := map[string]bool{
		module + "/wire":               true,
		module + "/worker/table":       true,
		module + "/coordinator/plan":   true,
		module + "/cluster/delegation": true,
	}
	for pkg, imps := range imports(t) {
		for _, imp := range imps {
			switch {
			case pure[pkg] && !isStd(imp) && !pure[imp]:
				t.Errorf("%s is a pure core but imports %s", pkg, imp)
			case strings.HasPrefix(pkg, module+"/worker") && (imp == module+"/coordinator" || strings.HasPrefix(imp, module+"/embedded")):
				t.Errorf("%s imports %s: the worker must not depend on the server side", pkg, imp)
			case strings.HasPrefix(pkg, module+"/coordinator") && strings.HasPrefix(imp, module+"/worker"):
				t.Errorf("%s imports %s: the coordinator must not depend on the worker", pkg, imp)
			case strings.HasPrefix(pkg, module+"/clientlib") && (strings.HasPrefix(imp, "go.etcd.io/") || strings.HasPrefix(imp, module+"/worker") || strings.HasPrefix(imp, module+"/coordinator")):
				t.Errorf("%s imports %s: clients never talk to etcd or link server code", pkg, imp)
			case strings.HasPrefix(imp, module+"/cmd/") || strings.HasPrefix(imp, module+"/bench"):
				if !strings.HasPrefix(pkg, module+"/bench") {
					t.Errorf("%s imports %s: nothing imports cmd/ or bench/", pkg, imp)
				}
			}
		}
	}
}
