// Package ctest drives the C client (clientlib/c) from Go. It builds the
// library and its test programs with the system C compiler into a temporary
// directory (and skips only when there is none), then:
//
//   - checks the C codec against the golden vectors (wire/testdata/vectors.txt)
//     and against package wire on tens of thousands of mutated datagrams
//     (same error class, and every valid datagram re-encodes to itself);
//   - runs the C API tests (tests/test_api.c);
//   - runs the C end-to-end scenarios (tests/e2e.c) against an in-process fake
//     worker cluster written with package wire: two UDP workers sharing one
//     token table, with loss, duplication, a worker crash (new epoch, grace,
//     reclaim), a shard move (NOT_OWNER, map refresh), a hung client (lost
//     callback) and a killed one (session expiry);
//   - runs the same scenarios against a real all-in-one tokend, once its worker
//     answers MAP_REQUEST on UDP (until then that part skips).
//
// The folder holds no other Go file: cgo is not allowed in tests, and C files
// next to Go files would break "go build".
package ctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokend/tokend/clientlib"
	"github.com/tokend/tokend/wire"
)

// ---------------------------------------------------------------- building C

func cDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("..", "c"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func vectorsPath(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "wire", "testdata", "vectors.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func findCC(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("CC"), "cc", "gcc", "clang"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no C compiler (cc) found: the C client is not tested")
	return ""
}

var (
	sanOnce sync.Once
	sanOK   bool
)

// sanitizers reports whether cc can build and run an ASan/UBSan program here.
func sanitizers(t *testing.T, cc string) bool {
	sanOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ctest-san")
		if err != nil {
			return
		}
		defer os.RemoveAll(dir)
		src := filepath.Join(dir, "t.c")
		os.WriteFile(src, []byte("#include <stdlib.h>\nint main(void){void *p=malloc(4);free(p);return 0;}\n"), 0o644)
		bin := filepath.Join(dir, "t")
		if out, err := exec.Command(cc, "-fsanitize=address,undefined", "-o", bin, src).CombinedOutput(); err != nil {
			t.Logf("no sanitizer build: %v %s", err, out)
			return
		}
		sanOK = exec.Command(bin).Run() == nil
	})
	return sanOK
}

var cFlags = []string{"-std=c99", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-pthread"}

var sanFlags = []string{"-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"}

var programs = map[string]string{
	"test_codec": "tests/test_codec.c",
	"test_api":   "tests/test_api.c",
	"tokend-e2e": "tests/e2e.c",
	"revoke":     "examples/revoke.c", // includes <tokend.h>, as installed
}

// buildC compiles the library and the named programs into a new temporary
// directory and returns it.
func buildC(t *testing.T, san bool, progs ...string) string {
	t.Helper()
	cc := findCC(t)
	src := cDir(t)
	out := t.TempDir()
	flags := append([]string{}, cFlags...)
	if san {
		flags = append(flags, sanFlags...)
	}
	lib := []string{"codec.c", "net.c", "engine.c", "client.c"}
	objs := make([]string, len(lib))
	errs := make([]error, len(lib))
	var wg sync.WaitGroup
	for i, f := range lib {
		objs[i] = filepath.Join(out, strings.TrimSuffix(f, ".c")+".o")
		wg.Add(1)
		go func() {
			defer wg.Done()
			args := append(append([]string{}, flags...), "-c", filepath.Join(src, f), "-o", objs[i])
			if o, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("cc %s: %v\n%s", f, err, o)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range progs {
		args := append(append([]string{}, flags...), "-I", src, "-o", filepath.Join(out, p), filepath.Join(src, programs[p]))
		args = append(append(args, objs...), "-pthread")
		if o, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
			t.Fatalf("cc %s: %v\n%s", p, err, o)
		}
	}
	return out
}

// run runs a C program with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS=print_stacktrace=1")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return string(out), err
}

// ---------------------------------------------------------------- codec

func TestCodecVectors(t *testing.T) {
	for _, san := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "asan"}[san]
		t.Run(name, func(t *testing.T) {
			if san && !sanitizers(t, findCC(t)) {
				t.Skip("no ASan/UBSan here")
			}
			dir := buildC(t, san, "test_codec")
			out, err := run(t, 2*time.Minute, filepath.Join(dir, "test_codec"), vectorsPath(t))
			if err != nil || !strings.Contains(out, " 0 failures") {
				t.Fatalf("test_codec: %v\n%s", err, out)
			}
			t.Log(strings.TrimSpace(out))
		})
	}
}

// goDecode decodes a datagram completely with package wire.
func goDecode(b []byte) error {
	h, err := wire.ParseHeader(b)
	if err != nil {
		return err
	}
	switch h.Kind() {
	case wire.KindEmpty:
		var m wire.Empty
		return m.Decode(h, b)
	case wire.KindSessionOpen:
		var m wire.SessionOpen
		return m.Decode(h, b)
	case wire.KindSessionReply:
		var m wire.SessionReply
		return m.Decode(h, b)
	case wire.KindKeepalive:
		var m wire.Keepalive
		return m.Decode(h, b)
	case wire.KindKeepaliveReply:
		var m wire.KeepaliveReply
		return m.Decode(h, b)
	case wire.KindAcquire:
		var m wire.Acquire
		return m.Decode(h, b)
	case wire.KindRelease:
		var m wire.Release
		return m.Decode(h, b)
	case wire.KindConvert:
		var m wire.Convert
		return m.Decode(h, b)
	case wire.KindCancel:
		var m wire.Cancel
		return m.Decode(h, b)
	case wire.KindReclaim:
		var m wire.Reclaim
		return m.Decode(h, b)
	case wire.KindRevokeAck:
		var m wire.RevokeAck
		return m.Decode(h, b)
	case wire.KindMapRequest:
		var m wire.MapRequest
		return m.Decode(h, b)
	case wire.KindMapReply:
		var m wire.MapReply
		return m.Decode(h, b)
	case wire.KindRevoke:
		var m wire.Revoke
		return m.Decode(h, b)
	case wire.KindGrant:
		var m wire.Grant
		return m.Decode(h, b)
	case wire.KindQueued:
		var m wire.Queued
		return m.Decode(h, b)
	case wire.KindError:
		var m wire.ErrorBody
		return m.Decode(h, b)
	case wire.KindNotOwner:
		var m wire.NotOwner
		return m.Decode(h, b)
	}
	return fmt.Errorf("no decoder for kind %v", h.Kind())
}

var sentinels = []struct {
	err  error
	name string
}{
	{wire.ErrShort, "ErrShort"}, {wire.ErrTooLarge, "ErrTooLarge"}, {wire.ErrBadMagic, "ErrBadMagic"},
	{wire.ErrVersion, "ErrVersion"}, {wire.ErrLength, "ErrLength"}, {wire.ErrChecksum, "ErrChecksum"},
	{wire.ErrReserved, "ErrReserved"}, {wire.ErrUnknownType, "ErrUnknownType"}, {wire.ErrBadFlags, "ErrBadFlags"},
	{wire.ErrBadStatus, "ErrBadStatus"}, {wire.ErrBadHeader, "ErrBadHeader"}, {wire.ErrNameLength, "ErrNameLength"},
	{wire.ErrValueLength, "ErrValueLength"}, {wire.ErrBadMode, "ErrBadMode"}, {wire.ErrBadRange, "ErrBadRange"},
	{wire.ErrBadBody, "ErrBadBody"},
}

func sentinelName(err error) string {
	if err == nil {
		return "OK"
	}
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return "other(" + err.Error() + ")"
}

func vectorDatagrams(t *testing.T) [][]byte {
	t.Helper()
	data, err := os.ReadFile(vectorsPath(t))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "hex: "); ok {
			b, err := hex.DecodeString(strings.TrimSpace(h))
			if err == nil && len(b) > 0 {
				out = append(out, b)
			}
		}
	}
	if len(out) < 100 {
		t.Fatalf("only %d datagrams in the vectors", len(out))
	}
	return out
}

// mutate returns a variant of b: bytes changed, fields set to edge values,
// cut or grown, usually re-sealed (consistent length and CRC) so that the
// change reaches the deeper checks.
func mutate(r *rand.Rand, b []byte) []byte {
	m := append([]byte{}, b...)
	switch r.IntN(6) {
	case 0, 1: // change 1..3 bytes
		for k := 1 + r.IntN(3); k > 0 && len(m) > 0; k-- {
			i := r.IntN(len(m))
			if r.IntN(2) == 0 {
				m[i] = byte(r.IntN(256))
			} else {
				m[i] ^= 1 << r.IntN(8)
			}
		}
	case 2: // a body byte changed to a boundary value
		if len(m) > 64 {
			m[64+r.IntN(len(m)-64)] = []byte{0, 1, 5, 6, 64, 65, 0x7f, 0x80, 0xc0, 0xff}[r.IntN(10)]
		}
	case 3: // cut or grow
		if r.IntN(2) == 0 && len(m) > 64 {
			m = m[:64+r.IntN(len(m)-64)]
		} else {
			for k := 1 + r.IntN(8); k > 0; k-- {
				m = append(m, byte(r.IntN(256)))
			}
		}
	case 4: // a header field to an edge value
		if len(m) >= 64 {
			switch r.IntN(8) {
			case 0:
				m[3] = []byte{0x00, 0x0b, 0x41, 0x42, 0x81, 0x89, 0x8a, 0xff}[r.IntN(8)]
			case 1:
				m[4] = byte(r.IntN(4))
			case 2:
				m[5] = []byte{0, 1, 4, 5, 15, 16, 255}[r.IntN(7)]
			case 3:
				m[8] ^= 0x80
			case 4:
				copy(m[16:24], make([]byte, 8))
			case 5:
				copy(m[24:32], m[16:24])
				m[31]++
			case 6:
				copy(m[36:40], []byte{0, 0, 0, 0})
			case 7:
				copy(m[36:40], []byte{1, 0, 0, 0})
			}
		}
	case 5: // insert or delete a body byte
		if len(m) > 65 {
			i := 64 + r.IntN(len(m)-64)
			if r.IntN(2) == 0 {
				m = append(m[:i], m[i+1:]...)
			} else {
				m = append(m[:i], append([]byte{byte(r.IntN(256))}, m[i:]...)...)
			}
		}
	}
	if r.IntN(10) != 0 {
		wire.Seal(m) // ignores datagrams it cannot seal
	}
	return m
}

// TestCodecDifferential feeds the same datagrams to package wire and to the C
// decoder: both must agree on the outcome (same error class), and every
// datagram the C side accepts must re-encode to the same bytes.
func TestCodecDifferential(t *testing.T) {
	dir := buildC(t, false, "test_codec")
	seeds := vectorDatagrams(t)
	seed := uint64(20261123)
	if s := os.Getenv("CTEST_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	n := 40000
	if testing.Short() {
		n = 5000
	}
	if s := os.Getenv("CTEST_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	cases := append([][]byte{}, seeds...)
	for len(cases) < n {
		m := seeds[r.IntN(len(seeds))]
		for k := 1 + r.IntN(2); k > 0; k-- {
			m = mutate(r, m)
		}
		cases = append(cases, m)
	}
	var in bytes.Buffer
	for _, c := range cases {
		in.WriteString(hex.EncodeToString(c))
		in.WriteByte('\n')
	}
	cmd := exec.Command(filepath.Join(dir, "test_codec"), "--classify")
	cmd.Stdin = &in
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("test_codec --classify: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(cases) {
		t.Fatalf("%d answers for %d datagrams", len(lines), len(cases))
	}
	valid, bad := 0, 0
	classes := map[string]int{}
	for i, c := range cases {
		f := strings.Fields(lines[i])
		want := sentinelName(goDecode(c))
		classes[want]++
		if want == "OK" {
			valid++
		}
		if len(f) != 2 || f[0] != want || (want == "OK" && f[1] != "same") {
			bad++
			if bad <= 15 {
				t.Errorf("datagram %d: Go says %s, C says %q\n  %x", i, want, lines[i], c)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d datagrams disagree", bad, len(cases))
	}
	t.Logf("%d datagrams, %d valid; classes %v", len(cases), valid, classes)
}

func TestAPI(t *testing.T) {
	for _, san := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "asan"}[san]
		t.Run(name, func(t *testing.T) {
			if san && !sanitizers(t, findCC(t)) {
				t.Skip("no ASan/UBSan here")
			}
			dir := buildC(t, san, "test_api")
			out, err := run(t, 2*time.Minute, filepath.Join(dir, "test_api"))
			if err != nil || !strings.Contains(out, "test_api: ok") {
				t.Fatalf("test_api: %v\n%s", err, out)
			}
		})
	}
	t.Run("valgrind", func(t *testing.T) {
		vg, err := exec.LookPath("valgrind")
		if err != nil {
			t.Skip("valgrind is not installed")
		}
		if testing.Short() {
			t.Skip("slow")
		}
		dir := buildC(t, false, "test_api")
		out, err := run(t, 5*time.Minute, vg, "-q", "--error-exitcode=99", "--leak-check=full",
			"--errors-for-leak-kinds=all", filepath.Join(dir, "test_api"))
		if err != nil || !strings.Contains(out, "test_api: ok") {
			t.Fatalf("test_api under valgrind: %v\n%s", err, out)
		}
	})
}

// ---------------------------------------------------------------- a fake worker cluster

const (
	fakeShards     = 64
	fakeW          = 1500 * time.Millisecond // worker lease TTL
	fakeMargin     = 50 * time.Millisecond
	fakeGrace      = fakeW // the default (SPEC 13); it must exceed the keepalive period W/3
	fakeSessionTTL = 2 * time.Second
)

type fakeGrant struct {
	tok        *fakeToken
	fence      uint64
	mode       wire.Mode
	start, end uint64
	sess       *fakeSession
}

type fakeWaiter struct {
	sess       *fakeSession
	hdr        wire.Header // the request's header (the reply's comes from it)
	mode       wire.Mode
	start, end uint64
	deadline   time.Time // zero: no limit
	convert    *fakeGrant
	tok        *fakeToken
}

type fakeToken struct {
	name       string
	shard      uint32
	grants     []*fakeGrant
	queue      []*fakeWaiter
	value      []byte
	valueFlags uint8
}

// A reply cache entry: a final reply, or a queued waiter (its current state).
type fakeEntry struct {
	reply  []byte
	waiter *fakeWaiter
	async  *fakeGrant // granted after QUEUED (CANCEL releases it)
}

type fakeRevoke struct {
	id     uint64
	g      *fakeGrant
	wanted wire.Mode
	start  uint64
	end    uint64
	next   time.Time
	rto    time.Duration
}

type fakeSession struct {
	id        uint64
	ttl       time.Duration
	expires   time.Time
	addr      *net.UDPAddr
	ack       uint64
	cache     map[uint64]*fakeEntry
	revokeSeq uint64
	revokes   map[uint64]*fakeRevoke
	ignored   bool // a partition: everything from it is dropped
}

type fakeWorker struct {
	idx  int
	conn *net.UDPConn
	addr string
}

type fakeCluster struct {
	t       *testing.T
	mu      sync.Mutex
	workers []*fakeWorker
	owner   [fakeShards]int
	epoch   [fakeShards]uint32
	seq     [fakeShards]uint64
	version uint64

	sessions map[uint64]*fakeSession
	opens    map[string][]byte // source address + nonce -> SESSION_OPEN reply
	tokens   map[string]*fakeToken

	graceUntil  time.Time
	reclaimable map[string]*fakeGrant // session/name/fence -> grant held before a crash

	dropRate, dupRate float64
	blackholed        map[int]bool // workers that drop everything (hung, still in the map)
	rng               *rand.Rand
	counts            map[string]int
	done              chan struct{}
	wg                sync.WaitGroup
}

func newFakeCluster(t *testing.T, nworkers int) *fakeCluster {
	f := &fakeCluster{
		t:           t,
		version:     1,
		sessions:    map[uint64]*fakeSession{},
		opens:       map[string][]byte{},
		tokens:      map[string]*fakeToken{},
		reclaimable: map[string]*fakeGrant{},
		rng:         rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7)),
		counts:      map[string]int{},
		blackholed:  map[int]bool{},
		done:        make(chan struct{}),
	}
	for s := range f.epoch {
		f.epoch[s] = uint32(1 + s/16) // four runs with epochs 1..4: paginated maps
		f.owner[s] = s * nworkers / fakeShards
	}
	for i := 0; i < nworkers; i++ {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		f.workers = append(f.workers, &fakeWorker{idx: i, conn: conn, addr: conn.LocalAddr().String()})
	}
	for _, w := range f.workers { // all sockets first: serve reads f.workers
		f.wg.Add(1)
		go f.serve(w)
	}
	f.wg.Add(1)
	go f.tick()
	t.Cleanup(f.close)
	return f
}

func (f *fakeCluster) close() {
	close(f.done)
	for _, w := range f.workers {
		w.conn.Close()
	}
	f.wg.Wait()
}

func (f *fakeCluster) addr() string { return f.workers[0].addr }

func (f *fakeCluster) count(what string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[what]
}

// logCounts logs what the fake saw, when the test failed.
func (f *fakeCluster) logCounts(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Logf("fake counts: %v", f.counts)
		}
	})
}

func (f *fakeCluster) setLoss(drop, dup float64) {
	f.mu.Lock()
	f.dropRate, f.dupRate = drop, dup
	f.mu.Unlock()
}

// send a datagram from worker w, with the configured loss and duplication.
func (f *fakeCluster) send(w *fakeWorker, b []byte, to *net.UDPAddr) {
	if to == nil || f.rng.Float64() < f.dropRate {
		return
	}
	w.conn.WriteToUDP(b, to)
	if f.rng.Float64() < f.dupRate {
		w.conn.WriteToUDP(b, to)
	}
}

func (f *fakeCluster) serve(w *fakeWorker) {
	defer f.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := w.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		b := append([]byte{}, buf[:n]...)
		f.mu.Lock()
		if f.rng.Float64() >= f.dropRate && !f.blackholed[w.idx] {
			f.handle(w, b, from)
		}
		f.mu.Unlock()
	}
}

func (f *fakeCluster) reply(w *fakeWorker, to *net.UDPAddr, h wire.Header, status wire.Status, body interface {
	Append([]byte, wire.Header) ([]byte, error)
}) []byte {
	h.Status = status
	h.MapVersion = f.version
	b, err := body.Append(nil, h)
	if err != nil {
		f.t.Errorf("fake: encoding a %v reply: %v", h.Type, err)
		return nil
	}
	f.send(w, b, to)
	return b
}

func (f *fakeCluster) errReply(w *fakeWorker, to *net.UDPAddr, h wire.Header, st wire.Status, msg string) []byte {
	return f.reply(w, to, h.Reply(), st, wire.ErrorBody{Message: []byte(msg)})
}

func (f *fakeCluster) handle(w *fakeWorker, b []byte, from *net.UDPAddr) {
	h, err := wire.ParseHeader(b)
	if err != nil || !h.Type.IsRequest() {
		f.counts["dropped"]++
		return
	}
	f.counts[h.Type.String()]++
	now := time.Now()
	switch h.Type {
	case wire.TypeMapRequest:
		var m wire.MapRequest
		if m.Decode(h, b) == nil {
			f.mapReply(w, from, h, m.FirstShard)
		}
		return
	case wire.TypeSessionOpen:
		var m wire.SessionOpen
		if m.Decode(h, b) != nil {
			return
		}
		key := from.String() + "/" + strconv.FormatUint(h.Request, 10)
		if r, ok := f.opens[key]; ok {
			f.send(w, r, from)
			return
		}
		s := &fakeSession{id: 1 + f.rng.Uint64N(1<<62), ttl: fakeSessionTTL, addr: from,
			cache: map[uint64]*fakeEntry{}, revokes: map[uint64]*fakeRevoke{}}
		if m.TTLMs != 0 {
			s.ttl = time.Duration(m.TTLMs) * time.Millisecond
		}
		s.expires = now.Add(s.ttl)
		f.sessions[s.id] = s
		rh := h.Reply()
		rh.Session = s.id
		f.opens[key] = f.reply(w, from, rh, wire.StatusOK, wire.SessionReply{
			TTLMs: uint32(s.ttl / time.Millisecond), ShardCount: fakeShards,
			GraceMs: uint32(fakeGrace / time.Millisecond), WorkerTTLMs: uint32(fakeW / time.Millisecond)})
		return
	}
	s := f.sessions[h.Session]
	if s == nil {
		if h.Type != wire.TypeRevokeAck {
			f.errReply(w, from, h, wire.StatusUnknownSession, "no such session")
		}
		return
	}
	if s.ignored {
		return
	}
	s.addr = from
	if h.Request < s.ack {
		f.counts["stale"]++
		return
	}
	if h.Ack > s.ack {
		s.ack = h.Ack
		for id, e := range s.cache {
			if id < s.ack && (e.waiter == nil || e.reply != nil) {
				delete(s.cache, id)
			}
		}
	}
	switch h.Type {
	case wire.TypeRevokeAck:
		var m wire.RevokeAck
		if m.Decode(h, b) == nil {
			delete(s.revokes, m.Target)
		}
		return
	case wire.TypeKeepalive:
		var m wire.Keepalive
		if m.Decode(h, b) != nil {
			return
		}
		rep := wire.KeepaliveReply{ValidityMs: uint32((fakeW - fakeMargin) / time.Millisecond)}
		if m.Renew {
			s.expires = now.Add(s.ttl)
			rep.SessionTTLMs = uint32(s.ttl / time.Millisecond)
		}
		for _, e := range m.Entries {
			st := wire.StatusOK
			if e.Shard >= fakeShards || f.owner[e.Shard] != w.idx {
				st = wire.StatusNotOwner
			} else if f.epoch[e.Shard] != e.Epoch {
				st = wire.StatusStaleEpoch
			}
			if st != wire.StatusOK {
				f.counts["keepalive "+st.String()]++
			}
			rep.Statuses = append(rep.Statuses, st)
		}
		f.reply(w, from, h.Reply(), wire.StatusOK, rep)
		return
	case wire.TypeSessionClose:
		f.endSession(s)
		f.reply(w, from, h.Reply(), wire.StatusOK, wire.Empty{})
		return
	}
	if e, ok := s.cache[h.Request]; ok {
		f.counts["cached"]++
		f.send(w, f.entryReply(e), from)
		return
	}
	// token requests: ownership, grace, then apply once and cache
	if h.Shard >= fakeShards || f.owner[h.Shard] != w.idx || f.epoch[h.Shard] != h.Epoch {
		st := wire.StatusStaleEpoch
		if h.Shard >= fakeShards || f.owner[h.Shard] != w.idx {
			st = wire.StatusNotOwner
		}
		hint := wire.NotOwner{Message: []byte("not here")}
		if h.Shard < fakeShards {
			hint.Addr = []byte(f.workers[f.owner[h.Shard]].addr)
			hint.Epoch = f.epoch[h.Shard]
		}
		f.counts[st.String()]++
		f.reply(w, from, h.Reply(), st, hint)
		return
	}
	if now.Before(f.graceUntil) && h.Type != wire.TypeReclaim {
		f.counts["GRACE"]++
		f.errReply(w, from, h, wire.StatusGrace, "recovering")
		return
	}
	var entry *fakeEntry
	switch h.Type {
	case wire.TypeAcquire:
		var m wire.Acquire
		if m.Decode(h, b) != nil {
			return
		}
		entry = f.acquire(w, s, h, &m, now)
	case wire.TypeRelease:
		var m wire.Release
		if m.Decode(h, b) != nil {
			return
		}
		entry = f.release(w, s, h, &m)
	case wire.TypeConvert:
		var m wire.Convert
		if m.Decode(h, b) != nil {
			return
		}
		entry = f.convert(w, s, h, &m, now)
	case wire.TypeCancel:
		var m wire.Cancel
		if m.Decode(h, b) != nil {
			return
		}
		entry = f.cancel(w, s, h, &m)
	case wire.TypeReclaim:
		var m wire.Reclaim
		if m.Decode(h, b) != nil {
			return
		}
		entry = f.reclaim(w, s, h, &m, now)
	}
	if entry != nil {
		s.cache[h.Request] = entry
		f.send(w, f.entryReply(entry), from)
	}
}

func (f *fakeCluster) mapReply(w *fakeWorker, to *net.UDPAddr, h wire.Header, first uint32) {
	m := wire.MapReply{MapVersion: f.version, ShardCount: fakeShards, GraceMs: uint32(fakeGrace / time.Millisecond)}
	for _, x := range f.workers {
		m.Workers = append(m.Workers, wire.MapWorker{Index: uint16(x.idx), Addr: []byte(x.addr), ID: []byte(fmt.Sprintf("fake-%d", x.idx))})
	}
	if first < fakeShards { // one run per page: clients must paginate
		end := first
		for end < fakeShards && f.owner[end] == f.owner[first] && f.epoch[end] == f.epoch[first] {
			end++
		}
		m.Runs = []wire.MapRun{{First: first, Count: end - first, Worker: uint16(f.owner[first]), Epoch: f.epoch[first]}}
	}
	rh := h.Reply()
	rh.MapVersion = f.version
	f.reply(w, to, rh, wire.StatusOK, m)
}

// entryReply is the current answer for a cached request id.
func (f *fakeCluster) entryReply(e *fakeEntry) []byte {
	if e.reply != nil {
		return e.reply
	}
	wt := e.waiter
	pos := 0
	for i, x := range wt.tok.queue {
		if x == wt {
			pos = i
		}
	}
	h := wt.hdr.Reply()
	h.Status = wire.StatusQueued
	h.MapVersion = f.version
	b, _ := wire.Queued{Position: uint32(pos)}.Append(nil, h)
	return b
}

func (f *fakeCluster) token(name []byte, shard uint32) *fakeToken {
	tk := f.tokens[string(name)]
	if tk == nil {
		tk = &fakeToken{name: string(name), shard: shard}
		f.tokens[string(name)] = tk
	}
	return tk
}

func overlap(a0, a1, b0, b1 uint64) bool { return a0 < b1 && b0 < a1 }

func (f *fakeCluster) conflicts(tk *fakeToken, mode wire.Mode, start, end uint64, self *fakeGrant) []*fakeGrant {
	var out []*fakeGrant
	for _, g := range tk.grants {
		if g != self && overlap(g.start, g.end, start, end) && !wire.Compatible(g.mode, mode) {
			out = append(out, g)
		}
	}
	return out
}

func (f *fakeCluster) newGrant(tk *fakeToken, s *fakeSession, mode wire.Mode, start, end uint64) *fakeGrant {
	f.seq[tk.shard]++
	g := &fakeGrant{tok: tk, fence: wire.MakeFence(f.epoch[tk.shard], f.seq[tk.shard]), mode: mode, start: start, end: end, sess: s}
	tk.grants = append(tk.grants, g)
	return g
}

func (f *fakeCluster) grantBody(g *fakeGrant) wire.Grant {
	b := wire.Grant{Fence: g.fence, Mode: g.mode, ValidityMs: uint32((fakeW - fakeMargin) / time.Millisecond),
		Start: g.start, End: g.end, ValueFlags: g.tok.valueFlags}
	if g.tok.valueFlags == wire.ValueValid {
		b.Value = g.tok.value
	}
	return b
}

func (f *fakeCluster) grantReply(h wire.Header, g *fakeGrant) []byte {
	rh := h.Reply()
	rh.MapVersion = f.version
	b, err := f.grantBody(g).Append(nil, rh)
	if err != nil {
		f.t.Errorf("fake: grant: %v", err)
	}
	return b
}

func (f *fakeCluster) finalErr(h wire.Header, st wire.Status, msg string) *fakeEntry {
	rh := h.Reply()
	rh.Status = st
	rh.MapVersion = f.version
	b, _ := wire.ErrorBody{Message: []byte(msg)}.Append(nil, rh)
	return &fakeEntry{reply: b}
}

func (f *fakeCluster) okEmpty(h wire.Header) *fakeEntry {
	rh := h.Reply()
	rh.MapVersion = f.version
	b, _ := wire.Empty{}.Append(nil, rh)
	return &fakeEntry{reply: b}
}

// wanted: the highest mode a holder in mode held may keep next to mode m.
func wanted(held, m wire.Mode) wire.Mode {
	for w := wire.EX; w > wire.NL; w-- {
		if wire.Covers(held, w) && wire.Compatible(w, m) {
			return w
		}
	}
	return wire.NL
}

func (f *fakeCluster) revoke(g *fakeGrant, m wire.Mode, start, end uint64, now time.Time) {
	want := wanted(g.mode, m)
	for _, r := range g.sess.revokes {
		if r.g == g && r.wanted == want {
			return
		}
	}
	g.sess.revokeSeq++
	r := &fakeRevoke{id: g.sess.revokeSeq, g: g, wanted: want, start: start, end: end, next: now, rto: 20 * time.Millisecond}
	g.sess.revokes[r.id] = r
	f.sendRevoke(g.sess, r, now)
}

func (f *fakeCluster) sendRevoke(s *fakeSession, r *fakeRevoke, now time.Time) {
	g := r.g
	h := wire.Header{Type: wire.TypeRevoke, Session: s.id, Request: r.id, Shard: g.tok.shard,
		Epoch: f.epoch[g.tok.shard], MapVersion: f.version}
	b, err := wire.Revoke{Fence: g.fence, Mode: r.wanted, Start: r.start, End: r.end, Name: []byte(g.tok.name)}.Append(nil, h)
	if err != nil {
		f.t.Errorf("fake: revoke: %v", err)
		return
	}
	f.counts["REVOKE"]++
	f.send(f.workers[f.owner[g.tok.shard]], b, s.addr)
	r.next = now.Add(r.rto)
	r.rto = min(2*r.rto, time.Second)
}

func (f *fakeCluster) queue(w *fakeWorker, s *fakeSession, h wire.Header, tk *fakeToken, mode wire.Mode, start, end uint64,
	waitMs uint32, conv *fakeGrant, now time.Time) *fakeEntry {
	wt := &fakeWaiter{sess: s, hdr: h, mode: mode, start: start, end: end, convert: conv, tok: tk}
	if waitMs != wire.WaitForever {
		wt.deadline = now.Add(time.Duration(waitMs) * time.Millisecond)
	}
	tk.queue = append(tk.queue, wt)
	for _, g := range f.conflicts(tk, mode, start, end, conv) {
		f.revoke(g, mode, start, end, now)
	}
	return &fakeEntry{waiter: wt}
}

func (f *fakeCluster) acquire(w *fakeWorker, s *fakeSession, h wire.Header, m *wire.Acquire, now time.Time) *fakeEntry {
	if wire.Shard(m.Name, fakeShards) != h.Shard {
		return f.finalErr(h, wire.StatusBadRequest, "wrong shard")
	}
	tk := f.token(m.Name, h.Shard)
	if len(f.conflicts(tk, m.Mode, m.Start, m.End, nil)) == 0 && len(tk.queue) == 0 {
		return &fakeEntry{reply: f.grantReply(h, f.newGrant(tk, s, m.Mode, m.Start, m.End))}
	}
	if m.Try || m.WaitMs == 0 {
		return f.finalErr(h, wire.StatusConflict, "")
	}
	return f.queue(w, s, h, tk, m.Mode, m.Start, m.End, m.WaitMs, nil, now)
}

func (f *fakeCluster) findGrant(s *fakeSession, name []byte, fence uint64) *fakeGrant {
	if tk := f.tokens[string(name)]; tk != nil {
		for _, g := range tk.grants {
			if g.sess == s && g.fence == fence {
				return g
			}
		}
	}
	return nil
}

func (f *fakeCluster) dropGrant(g *fakeGrant) {
	tk := g.tok
	for i, x := range tk.grants {
		if x == g {
			tk.grants = append(tk.grants[:i], tk.grants[i+1:]...)
			break
		}
	}
	for id, r := range g.sess.revokes {
		if r.g == g {
			delete(g.sess.revokes, id)
		}
	}
}

func (f *fakeCluster) release(w *fakeWorker, s *fakeSession, h wire.Header, m *wire.Release) *fakeEntry {
	g := f.findGrant(s, m.Name, m.Fence)
	if g == nil {
		return f.finalErr(h, wire.StatusNotHeld, "no such grant")
	}
	if m.HasValue {
		if !g.mode.Writes() {
			return f.finalErr(h, wire.StatusBadRequest, "reader sets value")
		}
		g.tok.value = append([]byte{}, m.Value...)
		g.tok.valueFlags = wire.ValueValid
	}
	f.dropGrant(g)
	f.runQueue(g.tok, time.Now())
	return f.okEmpty(h)
}

func (f *fakeCluster) convert(w *fakeWorker, s *fakeSession, h wire.Header, m *wire.Convert, now time.Time) *fakeEntry {
	g := f.findGrant(s, m.Name, m.Fence)
	if g == nil {
		return f.finalErr(h, wire.StatusNotHeld, "no such grant")
	}
	if m.HasValue {
		if !g.mode.Writes() {
			return f.finalErr(h, wire.StatusBadRequest, "reader sets value")
		}
		g.tok.value = append([]byte{}, m.Value...)
		g.tok.valueFlags = wire.ValueValid
	}
	if wire.Covers(g.mode, m.Mode) { // downgrade: immediate, same fence
		g.mode = m.Mode
		f.runQueue(g.tok, now)
		return &fakeEntry{reply: f.grantReply(h, g)}
	}
	if len(f.conflicts(g.tok, m.Mode, g.start, g.end, g)) == 0 && len(g.tok.queue) == 0 {
		f.upgrade(g, m.Mode)
		return &fakeEntry{reply: f.grantReply(h, g)}
	}
	if m.Try || m.WaitMs == 0 {
		return f.finalErr(h, wire.StatusConflict, "")
	}
	return f.queue(w, s, h, g.tok, m.Mode, g.start, g.end, m.WaitMs, g, now)
}

func (f *fakeCluster) upgrade(g *fakeGrant, mode wire.Mode) {
	f.seq[g.tok.shard]++
	g.fence = wire.MakeFence(f.epoch[g.tok.shard], f.seq[g.tok.shard])
	g.mode = mode
}

// runQueue grants waiters in FIFO order while the first one can be granted.
func (f *fakeCluster) runQueue(tk *fakeToken, now time.Time) {
	for len(tk.queue) > 0 {
		wt := tk.queue[0]
		if len(f.conflicts(tk, wt.mode, wt.start, wt.end, wt.convert)) > 0 {
			return
		}
		tk.queue = tk.queue[1:]
		var g *fakeGrant
		if wt.convert != nil {
			g = wt.convert
			f.upgrade(g, wt.mode)
		} else {
			g = f.newGrant(tk, wt.sess, wt.mode, wt.start, wt.end)
		}
		e := wt.sess.cache[wt.hdr.Request]
		if e == nil {
			continue
		}
		e.reply = f.grantReply(wt.hdr, g)
		e.async = g
		h := wt.hdr.Reply()
		h.Type = wire.TypeGrantAsync
		h.MapVersion = f.version
		b, err := f.grantBody(g).Append(nil, h)
		if err != nil {
			f.t.Errorf("fake: grant async: %v", err)
			continue
		}
		f.counts["GRANT_ASYNC"]++
		f.send(f.workers[f.owner[tk.shard]], b, wt.sess.addr)
	}
}

func (f *fakeCluster) unqueue(wt *fakeWaiter) {
	q := wt.tok.queue
	for i, x := range q {
		if x == wt {
			wt.tok.queue = append(q[:i], q[i+1:]...)
			return
		}
	}
}

func (f *fakeCluster) cancel(w *fakeWorker, s *fakeSession, h wire.Header, m *wire.Cancel) *fakeEntry {
	e := s.cache[m.Target]
	switch {
	case e != nil && e.waiter != nil && e.reply == nil:
		f.unqueue(e.waiter)
		e.reply = f.finalErr(e.waiter.hdr, wire.StatusCanceled, "canceled").reply
		f.runQueue(e.waiter.tok, time.Now())
		return f.okEmpty(h)
	case e != nil && e.async != nil:
		f.dropGrant(e.async) // granted meanwhile: released
		f.runQueue(e.async.tok, time.Now())
		e.async = nil
		return f.okEmpty(h)
	}
	return f.finalErr(h, wire.StatusNotHeld, "no such request")
}

func (f *fakeCluster) reclaim(w *fakeWorker, s *fakeSession, h wire.Header, m *wire.Reclaim, now time.Time) *fakeEntry {
	f.counts["reclaim"]++
	if g := f.findGrant(s, m.Name, m.Fence); g != nil { // after a handoff the grant is here
		return &fakeEntry{reply: f.grantReply(h, g)}
	}
	key := fmt.Sprintf("%d/%s/%d", s.id, m.Name, m.Fence)
	g := f.reclaimable[key]
	if g == nil || !now.Before(f.graceUntil) || len(f.conflicts(g.tok, g.mode, g.start, g.end, nil)) > 0 {
		return f.finalErr(h, wire.StatusReclaimRefused, "cannot reclaim")
	}
	delete(f.reclaimable, key)
	g.tok.grants = append(g.tok.grants, g)
	g.tok.valueFlags, g.tok.value = wire.ValueLost, nil
	f.counts["reclaimed"]++
	return &fakeEntry{reply: f.grantReply(h, g)}
}

func (f *fakeCluster) endSession(s *fakeSession) {
	delete(f.sessions, s.id)
	for _, tk := range f.tokens {
		kept := tk.grants[:0]
		for _, g := range tk.grants {
			if g.sess != s {
				kept = append(kept, g)
			}
		}
		tk.grants = kept
		q := tk.queue[:0]
		for _, wt := range tk.queue {
			if wt.sess != s {
				q = append(q, wt)
			}
		}
		tk.queue = q
		f.runQueue(tk, time.Now())
	}
}

func (f *fakeCluster) tick() {
	defer f.wg.Done()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case now := <-t.C:
			f.mu.Lock()
			for _, s := range f.sessions {
				if now.After(s.expires) {
					f.counts["expired"]++
					f.endSession(s)
					continue
				}
				for _, r := range s.revokes {
					if !now.Before(r.next) {
						f.sendRevoke(s, r, now)
					}
				}
			}
			for _, tk := range f.tokens {
				for _, wt := range append([]*fakeWaiter{}, tk.queue...) {
					if !wt.deadline.IsZero() && now.After(wt.deadline) {
						f.unqueue(wt)
						if e := wt.sess.cache[wt.hdr.Request]; e != nil {
							e.reply = f.finalErr(wt.hdr, wire.StatusTimeout, "timeout").reply
						}
						f.runQueue(tk, now)
					}
				}
			}
			if !f.graceUntil.IsZero() && now.After(f.graceUntil) {
				f.reclaimable = map[string]*fakeGrant{}
				f.graceUntil = time.Time{}
			}
			f.mu.Unlock()
		}
	}
}

// crash: every shard restarts at a new epoch with an empty table and reply
// caches; held grants may be reclaimed during the grace period.
func (f *fakeCluster) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.epoch {
		f.epoch[s]++
		f.seq[s] = 0
	}
	f.version++
	for _, tk := range f.tokens {
		for _, g := range tk.grants {
			f.reclaimable[fmt.Sprintf("%d/%s/%d", g.sess.id, tk.name, g.fence)] = g
		}
		tk.grants, tk.queue = nil, nil
	}
	for _, s := range f.sessions {
		s.cache = map[uint64]*fakeEntry{}
		s.revokes = map[uint64]*fakeRevoke{}
	}
	f.graceUntil = time.Now().Add(fakeGrace)
}

// move: every shard goes to the next worker at a new epoch, its state
// handed over (a planned rebalance: no grace period).
func (f *fakeCluster) move() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.epoch {
		f.owner[s] = (f.owner[s] + 1) % len(f.workers)
		f.epoch[s]++
	}
	f.version++
}

// blackhole: worker i stops answering anything (hung), but stays in the map.
func (f *fakeCluster) blackhole(i int) {
	f.mu.Lock()
	f.blackholed[i] = true
	f.mu.Unlock()
}

// restore: worker i answers again after blackhole.
func (f *fakeCluster) restore(i int) {
	f.mu.Lock()
	delete(f.blackholed, i)
	f.mu.Unlock()
}

// nameOn returns a token name with the prefix whose shard worker i serves.
func (f *fakeCluster) nameOn(prefix string, i int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := 0; ; k++ {
		n := fmt.Sprintf("%s-%d", prefix, k)
		if f.owner[wire.Shard([]byte(n), fakeShards)] == i {
			return n
		}
	}
}

// partition: drop everything from the session holding `fence`.
func (f *fakeCluster) partition(fence uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, tk := range f.tokens {
		for _, g := range tk.grants {
			if g.fence == fence {
				g.sess.ignored = true
				return true
			}
		}
	}
	return false
}

// ---------------------------------------------------------------- running scenarios

// proc is a running C program whose stdout lines arrive on a channel.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	out   *bytes.Buffer
	mu    sync.Mutex
	done  chan error
}

func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), lines: make(chan string, 100), out: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), "ASAN_OPTIONS=detect_leaks=1")
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = &lockedWriter{p: p}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

type lockedWriter struct{ p *proc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// expect waits for a line with the prefix and returns it.
func (p *proc) expect(t *testing.T, prefix string, within time.Duration) string {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("exited before %q:\n%s", prefix, p.output())
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
			if strings.HasPrefix(l, "FAIL") {
				t.Fatalf("%s\n%s", l, p.output())
			}
		case <-timeout:
			t.Fatalf("no %q within %v:\n%s", prefix, within, p.output())
		}
	}
}

func (p *proc) wait(t *testing.T, within time.Duration) {
	t.Helper()
	for range p.lines {
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, p.output())
		}
	case <-time.After(within):
		t.Fatalf("did not exit within %v:\n%s", within, p.output())
	}
}

var fenceRE = regexp.MustCompile(`^fence (\d+)(?: ms (\d+))?`)

func parseFence(t *testing.T, line string) (fence uint64, ms int64) {
	t.Helper()
	m := fenceRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("not a fence line: %q", line)
	}
	fence, _ = strconv.ParseUint(m[1], 10, 64)
	if m[2] != "" {
		ms, _ = strconv.ParseInt(m[2], 10, 64)
	}
	return fence, ms
}

var scenarios = []string{"basic", "conflict", "shared", "ranges", "revoke", "convert", "value", "many"}

func runScenario(t *testing.T, bin, addr, s string) {
	t.Helper()
	out, err := run(t, 90*time.Second, bin, addr, s)
	if err != nil || !strings.Contains(out, "ok "+s) {
		t.Fatalf("%s: %v\n%s", s, err, out)
	}
}

// killedClient: a holder killed with SIGKILL loses its token when its session
// expires; a waiter then gets it with a larger fence.
func killedClient(t *testing.T, bin, addr, name string, ttl time.Duration) {
	holder := start(t, bin, addr, "hold", name, "60000")
	f1, _ := parseFence(t, holder.expect(t, "fence", 30*time.Second))
	holder.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	out, err := run(t, 60*time.Second, bin, addr, "wait", name, "20000")
	if err != nil {
		t.Fatalf("waiter: %v\n%s", err, out)
	}
	f2, _ := parseFence(t, out)
	took := time.Since(killed)
	if f2 <= f1 {
		t.Errorf("fence %d after the killed holder's %d", f2, f1)
	}
	if took < ttl/4 || took > 3*ttl+3*time.Second {
		t.Errorf("the token passed %v after the kill; session TTL %v", took, ttl)
	}
	t.Logf("token passed %v after SIGKILL (TTL %v), fences %d -> %d", took, ttl, f1, f2)
}

// fencesAcross: two clients take turns on one token; each sees increasing
// fences, and no fence is granted twice.
func fencesAcross(t *testing.T, bin, addr, name string) {
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = run(t, 90*time.Second, bin, addr, "fences", name, "25")
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i, out := range outs {
		if errs[i] != nil || !strings.Contains(out, "ok fences") {
			t.Fatalf("client %d: %v\n%s", i, errs[i], out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "fence ") {
				f, _ := parseFence(t, l)
				if seen[f] {
					t.Errorf("fence %d granted twice", f)
				}
				seen[f] = true
			}
		}
	}
	if len(seen) != 50 {
		t.Errorf("%d distinct fences, want 50", len(seen))
	}
}

func TestFakeWorker(t *testing.T) {
	variants := []bool{false, true}
	if testing.Short() {
		variants = variants[:1]
	}
	for _, san := range variants {
		name := map[bool]string{false: "plain", true: "asan"}[san]
		t.Run(name, func(t *testing.T) {
			if san && !sanitizers(t, findCC(t)) {
				t.Skip("no ASan/UBSan here")
			}
			bin := filepath.Join(buildC(t, san, "tokend-e2e"), "tokend-e2e")
			t.Run("scenarios", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				for _, s := range scenarios {
					t.Run(s, func(t *testing.T) {
						t.Parallel()
						runScenario(t, bin, f.addr(), s)
					})
				}
			})
			t.Run("lossy", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.setLoss(0.1, 0.1)
				repeat := 1 // CTEST_REPEAT=n hunts for rare failures
				if n, err := strconv.Atoi(os.Getenv("CTEST_REPEAT")); err == nil && n > 1 {
					repeat = n
				}
				for i := 0; i < repeat; i++ {
					for _, s := range []string{"basic", "conflict", "revoke", "convert", "ranges"} {
						runScenario(t, bin, f.addr(), s)
					}
				}
				if f.count("cached") == 0 {
					t.Errorf("no retransmission was answered from the reply cache")
				}
			})
			t.Run("killed-client", func(t *testing.T) {
				f := newFakeCluster(t, 1)
				killedClient(t, bin, f.addr(), "killed", fakeSessionTTL)
				if f.count("expired") == 0 {
					t.Errorf("no session expired")
				}
			})
			t.Run("fences", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				fencesAcross(t, bin, f.addr(), "fenced")
			})
			t.Run("hung-client-lost", func(t *testing.T) {
				f := newFakeCluster(t, 1)
				p := start(t, bin, f.addr(), "lost", "hung", "10000")
				fence, _ := parseFence(t, p.expect(t, "fence", 10*time.Second))
				if !f.partition(fence) {
					t.Fatal("no grant with that fence")
				}
				l := p.expect(t, "lost after", 15*time.Second)
				p.wait(t, 10*time.Second)
				t.Log(l)
			})
			t.Run("release-on-hung-worker", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.logCounts(t)
				p := start(t, bin, f.addr(), "stuck", f.nameOn("stuck", 1), f.nameOn("alive", 0))
				p.expect(t, "fence", 10*time.Second)
				f.blackhole(1)
				t.Log(p.expect(t, "release gave up", 15*time.Second))
				p.wait(t, 10*time.Second)
			})
			t.Run("worker-crash", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.logCounts(t)
				p := start(t, bin, f.addr(), "survive", "crash", "1500")
				p.expect(t, "fence", 10*time.Second)
				f.crash()
				p.expect(t, "survived", 15*time.Second)
				p.wait(t, 10*time.Second)
				if f.count("reclaimed") == 0 || f.count("keepalive STALE_EPOCH") == 0 {
					t.Errorf("reclaimed %d, STALE_EPOCH keepalive entries %d", f.count("reclaimed"), f.count("keepalive STALE_EPOCH"))
				}
			})
			t.Run("jeopardy-then-lost", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.logCounts(t)
				p := start(t, bin, f.addr(), "jeopardy", f.nameOn("jeopardy", 1), "lost")
				p.expect(t, "fence", 10*time.Second)
				f.blackhole(1)
				t.Log(p.expect(t, "jeopardy with", 25*time.Second))
				p.wait(t, 10*time.Second)
			})
			t.Run("jeopardy-recovered", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.logCounts(t)
				p := start(t, bin, f.addr(), "jeopardy", f.nameOn("jeopardy", 1), "recover")
				p.expect(t, "fence", 10*time.Second)
				f.blackhole(1)
				time.Sleep(fakeW) // past the jeopardy threshold, well before deadline + grace
				f.restore(1)
				t.Log(p.expect(t, "jeopardy with", 25*time.Second))
				p.wait(t, 10*time.Second)
			})
			t.Run("long-wait", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				longWait(t, bin, f.addr(), "longwait", 3*fakeSessionTTL, fakeW)
			})
			t.Run("shard-move", func(t *testing.T) {
				f := newFakeCluster(t, 2)
				f.logCounts(t)
				p := start(t, bin, f.addr(), "survive", "moved", "1500")
				p.expect(t, "fence", 10*time.Second)
				f.move()
				p.expect(t, "survived", 15*time.Second)
				p.wait(t, 10*time.Second)
				if f.count("reclaim") == 0 || f.count("keepalive NOT_OWNER") == 0 {
					t.Errorf("reclaims %d, NOT_OWNER keepalive entries %d", f.count("reclaim"), f.count("keepalive NOT_OWNER"))
				}
			})
		})
	}
}

// TestReadmeExample: the on_revoke example in clientlib/c/README.md is
// examples/revoke.c verbatim, and it works: it holds a token until another
// client asks for it, then flushes and releases it.
func TestReadmeExample(t *testing.T) {
	src, err := os.ReadFile(filepath.Join(cDir(t), "examples", "revoke.c"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(cDir(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const marker = "<!-- examples/revoke.c (verbatim) -->\n```c\n"
	_, block, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("README.md has no %q", marker)
	}
	if block, _, ok = strings.Cut(block, "```\n"); !ok || block != string(src) {
		t.Fatalf("README.md's copy of examples/revoke.c differs from the file: update the README")
	}
	dir := buildC(t, false, "revoke", "tokend-e2e")
	f := newFakeCluster(t, 2)
	p := start(t, filepath.Join(dir, "revoke"), f.addr(), "readme-revoke")
	p.expect(t, "holding readme-revoke", 10*time.Second)
	out, err := run(t, 30*time.Second, filepath.Join(dir, "tokend-e2e"), f.addr(), "wait", "readme-revoke", "10000")
	if err != nil {
		t.Fatalf("the other client: %v\n%s", err, out)
	}
	t.Log(p.expect(t, "revoked: flushed", 10*time.Second))
	p.wait(t, 10*time.Second)
}

// ---------------------------------------------------------------- a real tokend

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startTokend builds cmd/tokend once into a temp dir and starts it all-in-one
// on loopback with a 2 s session TTL (and the extra flags); it returns the
// worker's UDP address.
func startTokend(t *testing.T, extra ...string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tokend")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/tokend/tokend/cmd/tokend").CombinedOutput(); err != nil {
		t.Fatalf("go build tokend: %v\n%s", err, out)
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	udpAddr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	cmd := exec.Command(bin,
		"--data-dir", filepath.Join(dir, "data"),
		"--client-urls", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		"--peer-urls", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		"--http-addr", httpAddr,
		"--udp-addr", udpAddr,
		"--session-ttl", "2s",
		"--log-level", "warn")
	cmd.Args = append(cmd.Args, extra...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("tokend output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("tokend exited early:\n%s", out.String())
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return udpAddr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokend not ready within 60 s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// workerServesUDP sends MAP_REQUESTs for 2 s and reports whether a valid MAP
// reply came back.
func workerServesUDP(t *testing.T, addr string) bool {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp4", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req := uint64(0x5eed0c0ffee0d00d)
	b, err := wire.MapRequest{}.Append(nil, wire.Header{Type: wire.TypeMapRequest, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		conn.Write(b)
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := conn.Read(buf)
		if err != nil {
			continue
		}
		h, err := wire.ParseHeader(buf[:n])
		if err != nil || h.Type != wire.TypeMapReply || h.Request != req || h.Status != wire.StatusOK {
			continue
		}
		var m wire.MapReply
		if m.Decode(h, buf[:n]) == nil {
			return true
		}
	}
	return false
}

// longWait: a waiter queued for hold behind a holder gets a grant that is
// valid on return with more than W/4 left, stays valid, and is never
// reported lost (issue 11; SPEC.md 13, "asynchronous grant").
func longWait(t *testing.T, bin, addr, name string, hold, w time.Duration) {
	t.Helper()
	out, err := run(t, hold+60*time.Second, bin, addr, "longwait", name,
		strconv.Itoa(int(hold/time.Millisecond)), strconv.Itoa(int(w/time.Millisecond)))
	if err != nil || !strings.Contains(out, "ok longwait") {
		t.Fatalf("longwait: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "validity ") {
			t.Logf("W %v, queued %v: %s", w, hold, l)
		}
	}
}

// TestLongWait runs longWait against a real tokend with short TTLs (session
// 2 s, worker 2 s, grace 2 s), so that a wait of 3 session TTLs is longer
// than W + grace: before the fix such a grant came back already lost.
func TestLongWait(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tokend")
	}
	bin := filepath.Join(buildC(t, false, "tokend-e2e"), "tokend-e2e")
	addr := startTokend(t, "--worker-ttl", "2s", "--grace", "2s")
	if !workerServesUDP(t, addr) {
		t.Skip("worker does not serve UDP yet")
	}
	longWait(t, bin, addr, "e2e-longwait", 6*time.Second, 2*time.Second)
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts tokend")
	}
	bin := filepath.Join(buildC(t, false, "tokend-e2e"), "tokend-e2e")
	addr := startTokend(t)
	if !workerServesUDP(t, addr) {
		t.Skip("worker does not serve UDP yet")
	}
	t.Run("scenarios", func(t *testing.T) {
		for _, s := range scenarios {
			t.Run(s, func(t *testing.T) { runScenario(t, bin, addr, s) })
		}
	})
	t.Run("killed-client", func(t *testing.T) { killedClient(t, bin, addr, "e2e-killed", 2*time.Second) })
	t.Run("fences-two-c-clients", func(t *testing.T) { fencesAcross(t, bin, addr, "e2e-fences") })
	t.Run("c-and-go-clients", func(t *testing.T) { cAndGo(t, bin, addr, "e2e-c-and-go") })
}

// cAndGo runs a C client and a Go client taking turns on one exclusive
// token. One shard sequence must have served both: every fence is unique,
// each client's own fences increase, and together they are one contiguous
// run of sequence numbers in one epoch (the token's shard sees no other
// traffic here), so no grant was made twice or skipped.
func cAndGo(t *testing.T, bin, addr, name string) {
	const n = 20
	var cOut string
	var cErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		cOut, cErr = run(t, 90*time.Second, bin, addr, "fences", name, strconv.Itoa(n))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Hold each grant for its turn instead of giving it back on revoke
	// (the default), so the C client really waits for the Go one.
	cl, err := clientlib.DialConfig(ctx, clientlib.Config{Seeds: []string{addr},
		OnRevoke: func(context.Context, *clientlib.Token, clientlib.Revocation) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var goFences []uint64
	for i := 0; i < n; i++ {
		tok, err := cl.Acquire(ctx, name, wire.EX)
		if err != nil {
			t.Fatalf("Go acquire %d: %v", i, err)
		}
		if len(goFences) > 0 && tok.Fence() <= goFences[len(goFences)-1] {
			t.Errorf("Go fence %d after %d", tok.Fence(), goFences[len(goFences)-1])
		}
		goFences = append(goFences, tok.Fence())
		time.Sleep(5 * time.Millisecond) // hold a little, so the C client has to wait its turn
		if err := tok.Release(ctx); err != nil {
			t.Fatalf("Go release %d: %v", i, err)
		}
	}
	<-done
	if cErr != nil || !strings.Contains(cOut, "ok fences") {
		t.Fatalf("C client: %v\n%s", cErr, cOut)
	}
	all := append([]uint64(nil), goFences...)
	for _, l := range strings.Split(cOut, "\n") {
		if strings.HasPrefix(l, "fence ") {
			f, _ := parseFence(t, l)
			all = append(all, f)
		}
	}
	if len(all) != 2*n {
		t.Fatalf("%d fences, want %d", len(all), 2*n)
	}
	slices.Sort(all)
	for i := 1; i < len(all); i++ {
		if wire.FenceEpoch(all[i]) != wire.FenceEpoch(all[0]) || wire.FenceSeq(all[i]) != wire.FenceSeq(all[i-1])+1 {
			t.Fatalf("fences of the two clients are not one contiguous sequence: %d then %d", all[i-1], all[i])
		}
	}
	interleaved := 0
	for i := 1; i < len(all); i++ {
		if slices.Contains(goFences, all[i]) != slices.Contains(goFences, all[i-1]) {
			interleaved++
		}
	}
	t.Logf("C and Go fences form one sequence %d..%d; the holder changed %d times", wire.FenceSeq(all[0]), wire.FenceSeq(all[len(all)-1]), interleaved)
}
