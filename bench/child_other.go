//go:build !linux

package bench

import "syscall"

// childAttr: nothing special here; a worker process also stops when its
// standard input closes, which happens when the bench dies.
func childAttr() *syscall.SysProcAttr { return nil }
