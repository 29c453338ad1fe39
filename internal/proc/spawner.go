package proc

import (
	"os/exec"
	"runtime"
)

// Spawner starts processes from one goroutine locked to its OS thread. On
// Linux a child's parent-death signal (Spec.Pdeathsig) fires when the
// thread that started it exits, not the process, and the Go runtime may
// end a thread; a Spawner's thread lives until Close, which its owner
// calls only after every child it started has been reaped.
type Spawner struct {
	reqs chan func()
	done chan struct{}
}

// NewSpawner starts the spawner's goroutine; Close ends it.
func NewSpawner() *Spawner {
	s := &Spawner{reqs: make(chan func()), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		defer close(s.done)
		for f := range s.reqs {
			f()
		}
	}()
	return s
}

func (s *Spawner) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	s.reqs <- func() { errc <- cmd.Start() }
	return <-errc
}

// Close ends the spawner's goroutine and its thread; call it once, after
// every process it started has been reaped.
func (s *Spawner) Close() {
	close(s.reqs)
	<-s.done
}
