//go:build unix

package isolate

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockUser takes the host-wide lock on u (lockDir/uid-N.lock): a runner
// holds it while a job of its runs as u, so that two runners of one host
// given the same job users never take one at once. Without it, each
// took the other's running job for a leftover and killed it (scrub).
// The lock is an flock on a file of the runner's own directory: the
// kernel drops it when the runner dies, and no job can reach the file to
// hold it. errUserBusy: another runner holds it.
func lockUser(lockDir string, u *User) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("uid-%d.lock", u.UID)), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("isolate: lock of job user %s: %w", u.Name, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, errUserBusy
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("isolate: lock of job user %s: %w", u.Name, err)
	}
	return f, nil
}

// makeLockDir creates dir for the job users' locks, reachable by its
// owner only, and refuses one that is not a directory of the runner's
// own (a job user could otherwise hold the locks).
func makeLockDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("isolate: job user locks: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("isolate: job user locks: %w", err)
	}
	if uid, ok := ownerOf(dir); !fi.IsDir() || !ok || int(uid) != os.Geteuid() {
		return fmt.Errorf("isolate: job user locks: %s is not a directory of uid %d", dir, os.Geteuid())
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("isolate: job user locks: %w", err)
		}
	}
	return nil
}
