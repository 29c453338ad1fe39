package session

// Window is how many request ids below the highest one seen a session
// remembers as applied (wire/SPEC.md section 20, replays).
const Window = 1024

// window remembers which of the ids (hi-Window, hi] were applied among
// the requests whose replies are not cached. hi also follows the ids
// cached. A ring of bits indexed by id mod Window.
type window struct {
	hi   uint64 // highest id marked or cached (0: none)
	bits [Window / 64]uint64
}

// advance makes id the highest id if it is above hi, clearing the bits of
// the ids the window moves over.
func (w *window) advance(id uint64) {
	if id <= w.hi {
		return
	}
	if id-w.hi >= Window {
		clear(w.bits[:])
	} else {
		for x := w.hi + 1; x <= id; x++ {
			w.bits[(x%Window)/64] &^= 1 << (x % 64)
		}
	}
	w.hi = id
}

// below reports whether id is below the window.
func (w *window) below(id uint64) bool { return w.hi >= Window && id <= w.hi-Window }

// mark records id as applied.
func (w *window) mark(id uint64) {
	w.advance(id)
	if !w.below(id) {
		w.bits[(id%Window)/64] |= 1 << (id % 64)
	}
}

// marked reports whether id is in the window and marked.
func (w *window) marked(id uint64) bool {
	return id <= w.hi && !w.below(id) && w.bits[(id%Window)/64]&(1<<(id%64)) != 0
}

// unmark forgets id: it was not applied after all.
func (w *window) unmark(id uint64) {
	if id <= w.hi && !w.below(id) {
		w.bits[(id%Window)/64] &^= 1 << (id % 64)
	}
}
