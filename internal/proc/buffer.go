package proc

import (
	"bytes"
	"sync"
)

// Buffer keeps what a process writes (as its standard output or error)
// while others read it: all of it, the last Max bytes if Max > 0, or
// nothing if Max < 0. Set Max before the first Write.
type Buffer struct {
	Max int

	mu sync.Mutex // guards b
	b  []byte
}

func (s *Buffer) Write(p []byte) (int, error) {
	if s.Max < 0 {
		return len(p), nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	if over := len(s.b) - s.Max; s.Max > 0 && over > 0 {
		s.b = append(s.b[:0], s.b[over:]...)
	}
	return len(p), nil
}

// String returns what is kept.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}

// Tail returns at most the last n bytes kept.
func (s *Buffer) Tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b[max(len(s.b)-n, 0):])
}

// LineWriter hands each complete line written to it, without its newline,
// to a function. It is safe for concurrent use; Flush hands on a last line
// that has no newline.
type LineWriter struct {
	mu   sync.Mutex // guards buf and serialises calls of line
	buf  []byte
	line func(line []byte)
}

// NewLineWriter returns a LineWriter that calls line for every line; line
// must not keep its argument.
func NewLineWriter(line func(line []byte)) *LineWriter { return &LineWriter{line: line} }

func (w *LineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let a large block go
	}
	return len(p), nil
}

// Flush hands on what is left after the last newline, if anything.
func (w *LineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(w.buf)
		w.buf = nil
	}
}
