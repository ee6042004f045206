package runner

import "syscall"

// intoCgroup makes the job process start in the cgroup (clone3 with
// CLONE_INTO_CGROUP), so no instant of it runs outside.
func intoCgroup(a *syscall.SysProcAttr, fd int) {
	a.UseCgroupFD = true
	a.CgroupFD = fd
}
