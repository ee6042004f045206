package testnix

import (
	"fmt"
	"os"
	"syscall"
)

// mountOnce mounts src on dst (a bind mount when fstype is "") unless
// something is mounted on dst already.
func mountOnce(src, dst, fstype string) error {
	mounted, err := isMountPoint(dst)
	if err != nil || mounted {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	flags := uintptr(0)
	if fstype == "" {
		flags = syscall.MS_BIND
	}
	if err := syscall.Mount(src, dst, fstype, flags, ""); err != nil {
		return fmt.Errorf("mount %s on %s: %w", src, dst, err)
	}
	return nil
}
