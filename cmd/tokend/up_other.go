//go:build !linux

package main

import "syscall"

// childSysProcAttr puts a child of "tokend up" in its own process group, so
// a terminal's Ctrl-C reaches only up, which stops the children in order.
// Only Linux has a parent-death signal: elsewhere, children outlive an up
// that is killed with SIGKILL.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
