package table

import "math/bits"

// slab is a growable array of T addressed by uint32 indices, with a free
// list. Index 0 is never handed out, so it serves as "none" in the links
// between records.
//
// Records live in pages that never move: a *T obtained from at stays valid
// until the record is released. The first pages are small (64, 64, 128, ...
// 2048 records) so that the thousands of mostly empty shards of a worker cost
// little; after that every page holds pageMax records, so a table with a
// million records wastes at most one page. Pointer-free record types make the
// pages invisible to the garbage collector's marking, which matters at 1M+
// held tokens.
//
// Memory is not returned to the runtime when records are released (the pages
// and the free list keep the peak size of the table); the table as a whole is
// dropped when its shard moves.
type slab[T any] struct {
	pages [][]T
	next  uint32 // next never-used index
	// free is a stack of released indices, reused last-in first-out:
	// nfree of them, in chunks of freeChunk that are never copied or
	// dropped, so that no release pays for moving the whole stack (as
	// appending to one slice would, once per growth: tens of
	// milliseconds at a million, in the middle of ending a session).
	free  [][]uint32
	nfree int
	live  int // records in use
}

const (
	pageMinShift = 6  // first page: 64 records
	pageMaxShift = 12 // later pages: 4096 records
	pageMax      = 1 << pageMaxShift
	freeChunk    = 4096 // indices per chunk of the free stack
	// maxIndex bounds slab indices so that byReq can tag grant references
	// with the top bit.
	maxIndex = 1<<31 - 1
)

// locate maps an index to its page and the offset in that page.
func locate(i uint32) (page, off uint32) {
	switch {
	case i < 1<<pageMinShift:
		return 0, i
	case i < pageMax:
		l := uint32(bits.Len32(i)) // 7..12
		return l - pageMinShift, i - 1<<(l-1)
	default:
		return i>>pageMaxShift + (pageMaxShift - pageMinShift), i & (pageMax - 1)
	}
}

// pageLen is the number of records in page p.
func pageLen(p int) int {
	switch {
	case p == 0:
		return 1 << pageMinShift
	case p <= pageMaxShift-pageMinShift:
		return 1 << (pageMinShift - 1 + p)
	default:
		return pageMax
	}
}

// at returns the record with index i, which must have been allocated.
func (s *slab[T]) at(i uint32) *T {
	p, o := locate(i)
	return &s.pages[p][o]
}

// alloc returns the index of a zeroed record.
func (s *slab[T]) alloc() uint32 {
	s.live++
	if s.nfree > 0 {
		s.nfree--
		return s.free[s.nfree/freeChunk][s.nfree%freeChunk]
	}
	if s.next == 0 {
		s.next = 1 // index 0 means "none"
	}
	i := s.next
	if i > maxIndex {
		panic("table: more than 2^31 records in one shard")
	}
	if p, _ := locate(i); int(p) == len(s.pages) {
		s.pages = append(s.pages, make([]T, pageLen(int(p))))
	}
	s.next++
	return i
}

// release zeroes record i and puts it on the free list.
func (s *slab[T]) release(i uint32) {
	var zero T
	*s.at(i) = zero
	if s.nfree == len(s.free)*freeChunk {
		s.free = append(s.free, make([]uint32, freeChunk))
	}
	s.free[s.nfree/freeChunk][s.nfree%freeChunk] = i
	s.nfree++
	s.live--
}
