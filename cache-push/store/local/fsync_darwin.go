package local

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// fsync makes fd's data durable as os.File.Sync does on macOS: fsync
// there does not flush the disk's cache, F_FULLFSYNC does; where the
// filesystem does not support it (SMB mounts), fsync.
func fsync(fd int) error {
	_, err := ignoringEINTR(func() (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_FULLFSYNC, 0) })
	if errors.Is(err, syscall.ENOTSUP) {
		_, err = ignoringEINTR(func() (int, error) { return 0, syscall.Fsync(fd) })
	}
	return err
}
