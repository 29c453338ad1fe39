package allocs

import "testing"

var sink []byte

// TestPerRun: a call that allocates is reported every time; one that does
// not, as zero.
func TestPerRun(t *testing.T) {
	if n := PerRun(100, func() { sink = make([]byte, 64) }); n < 1 {
		t.Errorf("an allocating call measured %v allocations", n)
	}
	buf := make([]byte, 64)
	if n := PerRun(100, func() { sink = buf[:32] }); n != 0 {
		t.Errorf("a call that does not allocate measured %v allocations", n)
	}
}
