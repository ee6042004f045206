// Package isolate keeps the jobs of one runner apart from each other: a
// Unix user per running job, taken from a pool the runner manages, and a
// cgroup per job, so that nothing a job starts outlives it.
//
// The contract a runner relies on:
//   - A Lease's user is no other running job's (in an exclusive pool), and
//     when Acquire returns it, no process of that uid is alive and no
//     temporary file it owns is left in the shared temporary directories.
//   - Cgroup.Kill ends every process of the job, daemons included
//     (setsid, double fork, nohup: none of these leaves a cgroup), and
//     returns only once the cgroup is empty and removed.
//   - KillUID ends every process of a uid in one kernel pass (kill(-1) as
//     that uid), so a fork loop cannot outrun it.
package isolate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"
)

var (
	// ErrNoCgroup: no writable cgroup v2 hierarchy (or not Linux).
	ErrNoCgroup = errors.New("isolate: no writable cgroup v2 hierarchy")
	// ErrUnsupported: the operation does not exist on this system.
	ErrUnsupported = errors.New("isolate: not supported on this system")
	// ErrStillAlive: processes of a uid or cgroup survived being killed.
	ErrStillAlive = errors.New("isolate: processes survived the kill")
)

// User is an account job processes run as.
type User struct {
	Name     string
	UID, GID uint32
	Groups   []uint32 // supplementary groups (nix-users, for the daemon)
}

// LookupUser resolves an account that may run jobs: never root.
func LookupUser(name string) (*User, error) {
	if name == "root" {
		return nil, errors.New("job user root would give job steps the runner's key; pick an unprivileged user")
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("job user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("job user %q has non-numeric ids %s:%s", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("job user %q has uid 0", name)
	}
	ju := &User{Name: name, UID: uint32(uid), GID: uint32(gid)}
	if gids, err := u.GroupIds(); err == nil {
		for _, g := range gids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil && n != 0 {
				ju.Groups = append(ju.Groups, uint32(n))
			}
		}
	}
	return ju, nil
}

// KillAllOf kills every process of uid and waits until none is left or
// ctx ends. It returns how many processes there were.
func KillAllOf(ctx context.Context, uid uint32) (int, error) {
	if uid == 0 {
		return 0, errors.New("isolate: refusing to kill the processes of uid 0")
	}
	pids, err := PIDsOf(uid)
	if err != nil {
		return 0, err
	}
	n := len(pids)
	for len(pids) > 0 {
		if err := KillUID(uid); err != nil {
			return n, err
		}
		select {
		case <-ctx.Done():
			return n, fmt.Errorf("%w: uid %d: %d processes (%v)", ErrStillAlive, uid, len(pids), pids)
		case <-time.After(10 * time.Millisecond):
		}
		if pids, err = PIDsOf(uid); err != nil {
			return n, err
		}
	}
	return n, nil
}

// TempDirs are the shared temporary directories whose entries a job's
// uid may own after the job (Debian's world-writable ones, and POSIX
// message queues); they are removed before the uid is reused.
var TempDirs = []string{os.TempDir(), "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"}

// RemoveOwned removes the entries of dirs owned by uid (not recursing
// into other owners' directories). Call it only once no process of uid
// is alive, so nothing can race the removal.
func RemoveOwned(uid uint32, dirs ...string) (int, error) {
	if uid == 0 {
		return 0, errors.New("isolate: refusing to remove the files of uid 0")
	}
	n := 0
	var errs []error
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, e := range ents {
			p := filepath.Join(d, e.Name())
			owner, ok := ownerOf(p)
			if !ok || owner != uid {
				continue
			}
			// RemoveAll unlinks a symbolic link itself and walks with
			// openat, so a link planted by the job is not followed.
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}
