package main

import "syscall"

// childSysProcAttr puts a child of "tokend up" in its own process group, so
// a terminal's Ctrl-C reaches only up, which stops the children in order;
// and has Linux send it SIGTERM if up dies, even by SIGKILL, so no child
// outlives it.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
