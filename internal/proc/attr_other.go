//go:build !linux

package proc

import "syscall"

// sysProcAttr: only Linux has a parent-death signal; Spec.Pdeathsig is
// ignored elsewhere.
func sysProcAttr(s Spec) *syscall.SysProcAttr {
	if !s.Setpgid {
		return nil
	}
	return &syscall.SysProcAttr{Setpgid: true}
}
