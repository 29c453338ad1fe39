package proc

import "syscall"

func sysProcAttr(s Spec) *syscall.SysProcAttr {
	if !s.Setpgid && s.Pdeathsig == 0 {
		return nil
	}
	return &syscall.SysProcAttr{Setpgid: s.Setpgid, Pdeathsig: s.Pdeathsig}
}
