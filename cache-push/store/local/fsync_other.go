//go:build !darwin

package local

import "syscall"

// fsync makes fd's data durable, as os.File.Sync does.
func fsync(fd int) error {
	_, err := ignoringEINTR(func() (int, error) { return 0, syscall.Fsync(fd) })
	return err
}
