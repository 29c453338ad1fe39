package tokend_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/tokend/tokend"

// The layering rules of docs/ARCHITECTURE.md §10. Package names are relative
// to the module; "x/..." means x and every package under it. Every name here
// must be a package of the module (TestLayering checks), so that a rename
// cannot make a rule silently check nothing.

// pure lists the pure cores and the module packages each may import. A pure
// core imports only the standard library (minus banned) and those packages,
// contains no go statement, and neither does anything it depends on in the
// module (each of those is a pure core too).
//
// Not pure, by decision: announce (its codec, format.go, shares the package
// with the multicast sockets and has time.Duration and net.SplitHostPort in
// its API), tests/chaos/check (a history recorder that concurrent clients call,
// with a clock and a parallel checker around porcupine), cluster (etcd
// reads and writes).
var pure = map[string][]string{
	"wire":                 nil,
	"fenceproof":           {"wire"},
	"worker/table":         {"wire"},
	"worker/session":       {"wire"},
	"worker/ownership":     {"cluster/delegation"},
	"worker/grace":         nil,
	"worker/vouch":         nil,
	"worker/guard":         nil,
	"coordinator/plan":     {"cluster/delegation"},
	"coordinator/deadlock": nil,
	"cluster/delegation":   {"wire"},
}

// banned are the standard packages (with everything under them) that a pure
// core may not import: the clock, the network, the operating system,
// synchronisation, logging and randomness belong to the shells. Time comes
// in as nanoseconds (int64), as worker/table takes it, and randomness as a
// seed.
var banned = []string{"time", "net", "os", "sync", "log", "syscall", "math/rand", "crypto/rand", "unsafe"}

// Every package of the module is in one class, by its longest listed prefix;
// a new package must be placed here.
const (
	product   = "product" // what a user runs or links
	testInfra = "test"    // test infrastructure: never linked by the product
	tool      = "tool"    // bench and the root package: nothing imports them
)

var classes = map[string]string{
	"announce/...":          product,
	"clientlib/...":         product,
	"cluster/...":           product,
	"cmd/tokenctl":          product,
	"cmd/tokend":            product,
	"coordinator/...":       product,
	"embedded/...":          product,
	"fenceproof":            product, // signed fences: what storage verifies
	"internal/...":          product, // shared by the product's packages: the clock, the process harness, etcd certificates, hedging
	"wire/...":              product,
	"worker/...":            product,
	"tests/...":             testInfra, // the suites: chaos, failover, multihost, tour
	"testkit/...":           testInfra, // what tests share: devcluster, faultnet, proctest
	"deploy":                testInfra, // checks of deploy/: Docker, systemd, Kubernetes, Prometheus
	"clientlib/ctest":       testInfra,
	"cmd/tokend-faultproxy": testInfra, // the fault proxy as a process, for tests and demos
	"embedded/etcdtest":     testInfra,
	"bench/...":             tool,
	".":                     tool,
}

// forbidden: a package matching pkg may not depend (transitively, in its
// non-test files) on a package matching any of deps. Patterns outside the
// module (go.etcd.io/...) are matched as they are.
var forbidden = []struct {
	pkg, why string
	deps     []string
}{
	{"worker/...", "the worker does not depend on the coordinator or link the etcd server",
		[]string{"coordinator/...", "embedded/...", "go.etcd.io/etcd/server/..."}},
	{"coordinator/...", "the coordinator does not depend on the worker or link the etcd server",
		[]string{"worker/...", "embedded/...", "go.etcd.io/etcd/server/..."}},
	{"clientlib", "clients never talk to etcd or link server code",
		[]string{"go.etcd.io/...", "cluster/...", "coordinator/...", "worker/...", "embedded/..."}},
	{"announce/...", "announcements are shared by worker and clients: no etcd, no server or client code",
		[]string{"go.etcd.io/...", "cluster/...", "coordinator/...", "worker/...", "clientlib/...", "embedded/..."}},
	{"cluster/...", "the etcd layout is shared by worker, coordinator and tokenctl",
		[]string{"coordinator/...", "worker/...", "clientlib/...", "embedded/...", "announce/..."}},
	{"testkit/faultnet/...", "the fault network carries datagrams; it knows no server or client",
		[]string{"go.etcd.io/...", "cluster/...", "coordinator/...", "worker/...", "clientlib/...", "embedded/...", "announce/..."}},
	{"testkit/fakeworker", "the fake worker is built on the worker's pure cores, not on its shell",
		[]string{"worker", "coordinator/...", "embedded/...", "go.etcd.io/..."}},
	{"testkit/...", "test infrastructure serves the suites and never depends on them or on clientlib, whose tests use it",
		[]string{"clientlib/...", "tests/..."}},
}

// The mutual rule between worker and coordinator holds for their tests too.
var forbiddenInTests = []struct{ pkg, dep string }{
	{"worker/...", "coordinator/..."},
	{"coordinator/...", "worker/..."},
}

// listed is one package as `go list -json` prints it.
type listed struct {
	ImportPath   string
	Dir          string
	Standard     bool
	GoFiles      []string
	CgoFiles     []string
	Imports      []string
	Deps         []string
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

// goList returns every package of the module and of its dependencies, by
// import path, from `go list -deps -json ./...` (non-test files only).
func goList(t *testing.T) map[string]*listed {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps -json ./...: %v\n%s", err, stderr.Bytes())
	}
	pkgs := map[string]*listed{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(listed)
		if err := dec.Decode(p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if p.Error != nil {
			t.Errorf("%s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

// rel returns p relative to the module ("." for the root), or "" if p is
// not in the module.
func rel(p string) string {
	switch {
	case p == module:
		return "."
	case strings.HasPrefix(p, module+"/"):
		return strings.TrimPrefix(p, module+"/")
	}
	return ""
}

// matches reports whether package p (relative to the module if it is in
// it, else its full path) matches pattern ("x" or "x/...").
func matches(p, pattern string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return p == base || strings.HasPrefix(p, base+"/")
	}
	return p == pattern
}

// name is p relative to the module, or p itself if it is outside.
func name(p string) string {
	if r := rel(p); r != "" {
		return r
	}
	return p
}

// chain returns the shortest import path from one package to another, as
// "a -> b -> c", relative to the module where it can.
func chain(all map[string]*listed, from, to string) string {
	prev := map[string]string{from: ""}
	for queue := []string{from}; len(queue) > 0; queue = queue[1:] {
		p := queue[0]
		if p == to {
			var c []string
			for ; p != ""; p = prev[p] {
				c = append(c, name(p))
			}
			slices.Reverse(c)
			return strings.Join(c, " -> ")
		}
		if all[p] == nil {
			continue
		}
		for _, imp := range all[p].Imports {
			if _, seen := prev[imp]; !seen {
				prev[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return name(to)
}

func isBanned(imp string) bool {
	return slices.ContainsFunc(banned, func(b string) bool { return matches(imp, b+"/...") })
}

// goStmts returns the positions of the go statements in p's files.
func goStmts(t *testing.T, p *listed) []string {
	t.Helper()
	var found []string
	fset := token.NewFileSet()
	for _, f := range slices.Concat(p.GoFiles, p.CgoFiles) {
		af, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if g, ok := n.(*ast.GoStmt); ok {
				found = append(found, fset.Position(g.Pos()).String())
			}
			return true
		})
	}
	return found
}

// TestLayering checks the rules above on the packages as `go list -deps`
// sees them: transitive dependencies, not only direct imports.
func TestLayering(t *testing.T) {
	if _, err := os.Stat("go.mod"); err != nil {
		t.Skip("not at the module root")
	}
	all := goList(t)
	var mine []*listed // the module's packages
	for _, p := range all {
		if rel(p.ImportPath) != "" {
			mine = append(mine, p)
		}
	}
	if len(mine) == 0 {
		t.Fatal("go list found no package of the module")
	}

	// Every name in the rules is a package of the module.
	exists := func(pattern string) bool {
		if strings.HasPrefix(pattern, "go.etcd.io/") {
			return true
		}
		if pattern == "." {
			return all[module] != nil
		}
		for p := range all {
			if r := rel(p); r != "" && matches(r, pattern) {
				return true // x/... needs x or a package under it
			}
		}
		return false
	}
	named := []string{}
	for p, allowed := range pure {
		named = append(append(named, p), allowed...)
		for _, a := range allowed {
			if _, ok := pure[a]; !ok {
				t.Errorf("pure core %s may import %s, which is not a pure core: only pure cores may be allowed", p, a)
			}
		}
	}
	for p := range classes {
		named = append(named, p)
	}
	for _, r := range forbidden {
		named = append(append(named, r.pkg), r.deps...)
	}
	for _, r := range forbiddenInTests {
		named = append(named, r.pkg, r.dep)
	}
	for _, n := range named {
		if !exists(n) {
			t.Errorf("the layering rules name %s, which is not a package of the module: renamed or removed? Update arch_test.go and docs/ARCHITECTURE.md §10", n)
		}
	}

	// Every package has a class; the product links no test infrastructure
	// (nor package testing), and nothing links a tool.
	class := map[string]string{}
	for _, p := range mine {
		r, best := rel(p.ImportPath), ""
		for pattern, c := range classes {
			if matches(r, pattern) && len(pattern) > len(best) {
				best, class[r] = pattern, c
			}
		}
		if best == "" {
			t.Errorf("%s has no class: add it to classes in arch_test.go (product, test infrastructure or tool) and to docs/ARCHITECTURE.md §2", r)
		}
	}
	for _, p := range mine {
		r := rel(p.ImportPath)
		for _, d := range p.Deps {
			dr := rel(d)
			switch {
			case class[r] == product && d == "testing":
				t.Errorf("%s depends on package testing (%s): the product links no test code", r, chain(all, p.ImportPath, d))
			case dr == "" || dr == r:
			case class[r] == product && class[dr] == testInfra:
				t.Errorf("%s depends on %s (%s): the product links no test infrastructure", r, dr, chain(all, p.ImportPath, d))
			case class[dr] == tool && !(matches(r, "bench/...") && matches(dr, "bench/...")):
				t.Errorf("%s depends on %s: nothing imports bench/ or the root package", r, dr)
			case matches(dr, "cmd/..."):
				t.Errorf("%s depends on %s: nothing imports cmd/", r, dr)
			}
		}
	}

	// Forbidden dependencies.
	for _, p := range mine {
		r := rel(p.ImportPath)
		for _, rule := range forbidden {
			if !matches(r, rule.pkg) {
				continue
			}
			for _, f := range rule.deps {
				bad := slices.DeleteFunc(slices.Clone(p.Deps), func(d string) bool { return !matches(name(d), f) })
				if len(bad) > 0 {
					t.Errorf("%s depends on %s (%d package(s), %s): %s", r, f, len(bad), chain(all, p.ImportPath, bad[0]), rule.why)
				}
			}
		}
		for _, rule := range forbiddenInTests {
			if !matches(r, rule.pkg) {
				continue
			}
			for _, imp := range slices.Concat(p.TestImports, p.XTestImports) {
				if rel(imp) != "" && matches(rel(imp), rule.dep) {
					t.Errorf("%s's tests import %s: worker and coordinator do not import each other, not even in tests", r, rel(imp))
				}
			}
		}
	}

	// Pure cores.
	for pc, allowed := range pure {
		p := all[module+"/"+pc]
		if p == nil {
			continue // reported above
		}
		ok := map[string]bool{}
		var add func(string)
		add = func(q string) {
			if !ok[q] {
				ok[q] = true
				for _, a := range pure[q] {
					add(a)
				}
			}
		}
		for _, a := range allowed {
			add(a)
		}
		bad := slices.DeleteFunc(slices.Clone(p.Deps), func(d string) bool {
			return (all[d] != nil && all[d].Standard) || (rel(d) != "" && ok[rel(d)])
		})
		if len(bad) > 0 {
			t.Errorf("%s is a pure core but depends on %d package(s) outside the standard library and %v, e.g. %s", pc, len(bad), allowed, chain(all, p.ImportPath, bad[0]))
		}
		for _, imp := range p.Imports {
			if isBanned(imp) {
				t.Errorf("%s is a pure core but imports %s: the clock, network, OS, synchronisation, logging and randomness belong to the shell (banned: %v and below)", pc, imp, banned)
			}
		}
		for _, pos := range goStmts(t, p) {
			t.Errorf("%s is a pure core but starts a goroutine: %s", pc, pos)
		}
	}
}
