package bench

import "syscall"

// childAttr puts a worker process in a process group of its own (a Ctrl-C
// on the terminal reaches the bench, which stops it in order) and has the
// kernel kill it should the bench die first.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
