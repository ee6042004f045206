package runner

import (
	"os/exec"
	"syscall"
)

// intoCgroup makes the job process start in the cgroup (clone3 with
// CLONE_INTO_CGROUP), so no instant of it runs outside.
func intoCgroup(a *syscall.SysProcAttr, fd int) {
	a.UseCgroupFD = true
	a.CgroupFD = fd
}

// privateMounts starts the job process in a mount namespace of its own
// (Go then marks every mount in it private, so nothing propagates back).
func privateMounts(a *syscall.SysProcAttr) {
	a.Unshareflags |= syscall.CLONE_NEWNS
}

// probePrivateMounts checks that a mount namespace can be made here (a
// container may forbid it).
func probePrivateMounts() error {
	bin, err := exec.LookPath("true")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	return cmd.Run()
}
