package isolate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// What a job can leave behind for the next job of its user, besides
// processes and files in the shared temporary directories (TempDirs):
// each is removed before the user is handed out again, and when its job
// ends.

// crontabDirs hold one crontab per user, named for it: Debian's cron,
// cronie, SUSE's cron. A crontab left by a job would start the user's
// processes, outside any job, when a later job of that user runs: they
// could read its secrets from /proc and write into its workspace.
var crontabDirs = []string{"/var/spool/cron/crontabs", "/var/spool/cron", "/var/spool/cron/tabs"}

// atDirs hold at jobs and their output, each owned by its user: Debian's
// at, and others'.
var atDirs = []string{"/var/spool/cron/atjobs", "/var/spool/cron/atspool", "/var/spool/at", "/var/spool/atjobs"}

// nixStateDir is where Nix keeps its per-user state outside the home.
var nixStateDir = "/nix/var/nix"

// nixUserDirs are the directories Nix keeps for user name outside its
// home: its profiles (nix-env, nix-channel, nix profile before Nix 2.14:
// a channel planted there is what a later job's nix-env -iA would
// evaluate) and its GC roots.
func nixUserDirs(name string) []string {
	return []string{filepath.Join(nixStateDir, "profiles", "per-user", name), filepath.Join(nixStateDir, "gcroots", "per-user", name)}
}

// removeSchedules removes u's crontab and at jobs, which would start its
// processes later. Call it before the processes are killed, so that
// nothing starts one after.
func removeSchedules(u *User) (int, error) {
	n := 0
	var errs []error
	for _, d := range crontabDirs {
		p := filepath.Join(d, u.Name)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			continue // none, or a directory of the spool (crontabs, atjobs)
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	// And files of its own there: crontab(1)'s temporary copies, left
	// by one killed while it wrote.
	m, err := RemoveOwned(u.UID, append(slices.Clone(atDirs), crontabDirs[0])...)
	return n + m, errors.Join(append(errs, err)...)
}

// removeIPC removes the System V shared memory segments, semaphore sets
// and message queues uid owns or created: they outlive their processes.
// (POSIX message queues are files in /dev/mqueue, one of TempDirs.)
func removeIPC(uid uint32) (int, error) {
	n := 0
	var errs []error
	for _, k := range []struct{ file, id, flag string }{
		{"/proc/sysvipc/shm", "shmid", "-m"},
		{"/proc/sysvipc/sem", "semid", "-s"},
		{"/proc/sysvipc/msg", "msqid", "-q"},
	} {
		ids, err := ipcOf(k.file, k.id, uid)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, id := range ids {
			out, err := exec.Command("ipcrm", k.flag, id).CombinedOutput()
			if err != nil {
				errs = append(errs, fmt.Errorf("ipcrm %s %s: %w: %s", k.flag, id, err, bytes.TrimSpace(out)))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}

// ipcOf lists the ids in a /proc/sysvipc table (idCol names their
// column) of the objects whose owner or creator is uid. No table (not
// Linux) lists none.
func ipcOf(file, idCol string, uid uint32) ([]string, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	if !sc.Scan() {
		return nil, nil
	}
	col := map[string]int{}
	for i, h := range strings.Fields(sc.Text()) {
		col[h] = i
	}
	idI, ok1 := col[idCol]
	uidI, ok2 := col["uid"]
	cuidI, ok3 := col["cuid"]
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("%s: unknown columns %q", file, sc.Text())
	}
	want := strconv.FormatUint(uint64(uid), 10)
	var ids []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) <= max(idI, uidI, cuidI) {
			continue
		}
		if f[uidI] == want || f[cuidI] == want {
			ids = append(ids, f[idI])
		}
	}
	return ids, sc.Err()
}
