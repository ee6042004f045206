package job

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// enterSandbox binds the job's private directory over /tmp and /var/tmp
// in this process's mount namespace (the runner made it private to the
// job, and Go marked every mount private in it, so nothing propagates to
// the host), then drops to the job user for good.
func enterSandbox(s *Sandbox) error {
	if os.Geteuid() != 0 {
		return errors.New("the job process must start as root to enter its sandbox")
	}
	if s.UID == 0 {
		return errors.New("refusing to run a job as uid 0")
	}
	// The directory is held open: once /tmp is covered, a path to it
	// under /tmp would name the new /tmp instead.
	fd, err := syscall.Open(s.Tmp, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("private /tmp: %w", err)
	}
	defer syscall.Close(fd)
	src := fmt.Sprintf("/proc/self/fd/%d", fd)
	for _, dst := range []string{"/tmp", "/var/tmp"} {
		if _, err := os.Stat(dst); err != nil {
			continue
		}
		if err := syscall.Mount(src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("private %s: %w", dst, err)
		}
	}
	groups := make([]int, len(s.Groups))
	for i, g := range s.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(int(s.GID), int(s.GID), int(s.GID)); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(int(s.UID), int(s.UID), int(s.UID)); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	// No way back: every uid is the job's, so the capabilities are gone.
	if os.Geteuid() != int(s.UID) || os.Getuid() != int(s.UID) || syscall.Setuid(0) == nil {
		return errors.New("could not drop root")
	}
	return nil
}
