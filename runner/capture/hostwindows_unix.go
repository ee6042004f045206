//go:build unix

package capture

import (
	"errors"
	"os"
	"syscall"
)

// lockFile takes an flock on f: exclusive or shared, without waiting.
func lockFile(f *os.File, exclusive bool) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err != syscall.EINTR {
			return err
		}
	}
}

// heldByAnother reports whether a running process holds p's flock.
func heldByAnother(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(lockFile(f, false), syscall.EWOULDBLOCK)
}

// ownedByMe reports whether fi is this process's effective user's.
func ownedByMe(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
