package isolate

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// poolUsers exist on CI machines: scripts/install-deps.sh creates them.
func poolUser(t *testing.T, name string) *User {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("isolation tests switch users and must run as root (CI does)")
	}
	u, err := LookupUser(name)
	if err != nil {
		t.Fatalf("%v (run scripts/install-deps.sh test to create the job user pool)", err)
	}
	return u
}

func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) S ..." — a zombie runs nothing.
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] != 'Z' && b[i+2] != 'X'
		}
	}
	return true
}

func itoa(n int) string { return strconv.Itoa(n) }

// daemonScript leaves a setsid daemon and a double-forked one behind and
// writes their pids to $1.
const daemonScript = `setsid sh -c 'echo $$ >> "$1"; exec sleep 300' sh "$1" </dev/null >/dev/null 2>&1 &
( sh -c 'echo $$ >> "$1"; exec sleep 300' sh "$1" </dev/null >/dev/null 2>&1 & ) 
nohup sh -c 'echo $$ >> "$1"; exec sleep 300' sh "$1" </dev/null >/dev/null 2>&1 &
for i in $(seq 50); do [ "$(wc -l < "$1")" -ge 3 ] && exit 0; sleep 0.05; done; exit 1`

func readPids(t *testing.T, path string) []int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	n, in := 0, false
	for _, c := range b {
		if c >= '0' && c <= '9' {
			n, in = n*10+int(c-'0'), true
		} else if in {
			out, n, in = append(out, n), 0, false
		}
	}
	return out
}

// TestCgroupKillsDaemons: setsid, double-forked and nohup'd daemons of a
// process started in a job cgroup are all gone after Kill.
func TestCgroupKillsDaemons(t *testing.T) {
	cgs, err := OpenCgroups()
	if err != nil {
		t.Fatalf("%v: this Linux host needs a writable cgroup v2 hierarchy", err)
	}
	t.Cleanup(func() { _ = cgs.Close() })
	g, err := cgs.New("job-test")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pids")
	cmd := exec.Command("sh", "-c", daemonScript, "sh", pidFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, UseCgroupFD: true, CgroupFD: g.FD()}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	pids := readPids(t, pidFile)
	if len(pids) != 3 {
		t.Fatalf("daemons %v", pids)
	}
	in, _ := g.Procs()
	for _, p := range pids {
		if !alive(p) || !slices.Contains(in, p) || !g.Contains(p) {
			t.Fatalf("daemon %d not alive in the cgroup (%v)", p, in)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := g.Kill(ctx)
	if err != nil || n != 3 {
		t.Fatalf("Kill: %d, %v", n, err)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("daemon %d survived", p)
		}
	}
	if _, err := os.Stat(g.Dir()); !os.IsNotExist(err) {
		t.Errorf("cgroup not removed: %v", err)
	}
}

// TestKillAllOfUID: every process of a uid, daemons included, dies in one
// pass; the runner itself (root) is untouched.
func TestKillAllOfUID(t *testing.T) {
	u := poolUser(t, "provenix-job-3")
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	pidFile := filepath.Join(dir, "pids")
	cmd := exec.Command("sh", "-c", daemonScript, "sh", pidFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	pids := readPids(t, pidFile)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := KillAllOf(ctx, u.UID)
	if err != nil || n < 3 {
		t.Fatalf("KillAllOf: %d, %v", n, err)
	}
	for _, p := range pids {
		if alive(p) {
			t.Errorf("daemon %d survived", p)
		}
	}
	if left, _ := PIDsOf(u.UID); len(left) != 0 {
		t.Errorf("left %v", left)
	}
}

// TestPoolNeverReusesWhileAlive: a user given back with a live process
// (and a file in the shared /tmp) is handed out again only after both
// are gone; an exclusive pool never gives one user to two jobs.
func TestPoolNeverReusesWhileAlive(t *testing.T) {
	a, b := poolUser(t, "provenix-job-3"), poolUser(t, "provenix-job-4")
	log := slog.New(slog.DiscardHandler)
	if _, err := NewPool([]*User{a}, 2, log); err == nil {
		t.Fatal("a pool of 1 accepted capacity 2")
	}
	p, err := NewPool([]*User{a, b}, 2, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l1, err := p.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := p.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l1.User.UID == l2.User.UID || !l1.Exclusive {
		t.Fatalf("two jobs got uid %d", l1.User.UID)
	}
	// The job of l1 leaves a daemon and a file in /tmp.
	leftover := filepath.Join(os.TempDir(), "provenix-isolate-test-leftover")
	cmd := exec.Command("sh", "-c", `setsid sleep 300 </dev/null >/dev/null 2>&1 & echo x > "$1"`, "sh", leftover)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: l1.User.UID, Gid: l1.User.GID}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if pids, _ := PIDsOf(l1.User.UID); len(pids) == 0 {
		t.Fatal("no leftover process to test with")
	}
	// Hand it back dirty without Release's clean-up, as after a crash
	// (which also drops the runner's lock).
	l1.lock.Close()
	p.free <- l1.User
	l3, err := p.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l3.User.UID != l1.User.UID {
		t.Fatalf("got uid %d", l3.User.UID)
	}
	if pids, _ := PIDsOf(l3.User.UID); len(pids) != 0 {
		t.Fatalf("uid %d handed out with processes %v alive", l3.User.UID, pids)
	}
	if _, err := os.Lstat(leftover); !os.IsNotExist(err) {
		t.Fatalf("leftover temporary file kept: %v", err)
	}
	for _, l := range []*Lease{l2, l3} {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPoolsOfTwoRunners: two runners of one host given the same job
// users never take one at once. The second takes another user, or waits;
// it does not take the first's running job for a leftover and kill it.
func TestPoolsOfTwoRunners(t *testing.T) {
	a, b := poolUser(t, "provenix-job-3"), poolUser(t, "provenix-job-4")
	log := slog.New(slog.DiscardHandler)
	p1, err := NewPool([]*User{a}, 1, log)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := NewPool([]*User{a, b}, 2, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l1, err := p1.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The first runner's job runs.
	job := exec.Command("sleep", "300")
	job.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: l1.User.UID, Gid: l1.User.GID}}
	if err := job.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { job.Wait(); close(exited) }()
	defer func() { job.Process.Kill(); <-exited }()

	l2, err := p2.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if l2.User.UID == l1.User.UID {
		t.Fatalf("both runners got uid %d", l2.User.UID)
	}
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	var told []string
	if l, err := p2.Acquire(short, func(why string) { told = append(told, why) }); err == nil {
		t.Fatalf("the second runner took uid %d, which the first holds", l.User.UID)
	}
	if len(told) != 1 || !strings.Contains(told[0], a.Name) {
		t.Errorf("the waiting job was told %q, want once that another runner holds %s", told, a.Name)
	}
	select {
	case <-exited:
		t.Fatal("the second runner killed the first runner's job")
	default:
	}
	// Once the first gives the user back, the second may take it.
	job.Process.Kill()
	<-exited
	if err := l1.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l3, err := p2.Acquire(ctx, nil)
	if err != nil || l3.User.UID != a.UID {
		t.Fatalf("after the first runner released it: %v", err)
	}
	for _, l := range []*Lease{l2, l3} {
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLockDirOfAnother: a lock directory a job user made (say it beat the
// runner to it after a reboot) is refused, not used: whoever owns it
// could hold or free the locks. One of the runner's own that others may
// write to is closed to them.
func TestLockDirOfAnother(t *testing.T) {
	u := poolUser(t, "provenix-job-3")
	dir := filepath.Join(t.TempDir(), "locks")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	if err := makeLockDir(dir); err == nil {
		t.Fatal("a lock directory of a job user was accepted")
	}
	if err := os.Chown(dir, os.Geteuid(), os.Getegid()); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := makeLockDir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("lock directory mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
}

// TestReleaseRemovesLeftovers: what a job leaves that outlives its
// processes (a crontab and an at job, which would start its user's
// processes during a later job; a System V shared memory segment; a
// file in /run/lock; a Nix 2.8 per-user profile link, where a planted
// channel would be what a later job's nix-env evaluates) is gone once
// the lease is released.
func TestReleaseRemovesLeftovers(t *testing.T) {
	u := poolUser(t, "provenix-job-3")
	for _, tool := range []string{"crontab", "at", "ipcmk"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (scripts/install-deps.sh test installs cron, at and util-linux)", tool, err)
		}
	}
	p, err := NewPool([]*User{u}, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := p.Acquire(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Nix makes the per-user directory, owned by the user, on its first
	// profile operation.
	profiles := nixUserDirs(u.Name)[0]
	if err := os.MkdirAll(profiles, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(profiles, int(u.UID), int(u.GID)); err != nil {
		t.Fatal(err)
	}
	lock := "/run/lock/provenix-isolate-test-leftover"
	channels := filepath.Join(profiles, "channels")
	job := exec.Command("sh", "-c", `set -e
echo '* * * * * true' | crontab -
echo true | at now + 1 hour 2>/dev/null
ipcmk -M 4096 >/dev/null
touch "$1"
ln -sfn /nix/store/00000000000000000000000000000000-planted "$2"`, "sh", lock, channels)
	job.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID}}
	if out, err := job.CombinedOutput(); err != nil {
		t.Fatalf("the job: %v %s", err, out)
	}
	crontab := filepath.Join(crontabDirs[0], u.Name)
	left := func() []string {
		var out []string
		for _, f := range []string{crontab, lock, channels} {
			if _, err := os.Lstat(f); err == nil {
				out = append(out, f)
			}
		}
		for _, d := range atDirs {
			ents, _ := os.ReadDir(d)
			for _, e := range ents {
				if owner, ok := ownerOf(filepath.Join(d, e.Name())); ok && owner == u.UID {
					out = append(out, filepath.Join(d, e.Name()))
				}
			}
		}
		if ids, err := ipcOf("/proc/sysvipc/shm", "shmid", u.UID); err != nil || len(ids) > 0 {
			out = append(out, fmt.Sprintf("shared memory %v %v", ids, err))
		}
		return out
	}
	if got := left(); len(got) != 5 {
		t.Fatalf("the job left %q; want its crontab, lock file, profile link, at job and shared memory", got)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := left(); len(got) > 0 {
		t.Fatalf("left after Release: %q", got)
	}
}

// TestReleaseSharedRemovesSchedules: a job of a shared job user leaves
// no crontab for the jobs after it either.
func TestReleaseSharedRemovesSchedules(t *testing.T) {
	u := poolUser(t, "provenix-job-4")
	l, err := NewShared(u).Acquire(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	job := exec.Command("sh", "-c", `echo '* * * * * true' | crontab -`)
	job.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID}}
	if out, err := job.CombinedOutput(); err != nil {
		t.Fatalf("the job: %v %s", err, out)
	}
	crontab := filepath.Join(crontabDirs[0], u.Name)
	if _, err := os.Stat(crontab); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(crontab); !os.IsNotExist(err) {
		t.Fatalf("crontab left after Release: %v", err)
	}
}

// TestReleaseRemovesReinstalledCrontab: a process the job left (outside
// any cgroup, as cron would start one) puts its crontab back as fast as
// it can; Release leaves the user without a crontab all the same.
func TestReleaseRemovesReinstalledCrontab(t *testing.T) {
	u := poolUser(t, "provenix-job-3")
	p, err := NewPool([]*User{u}, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		l, err := p.Acquire(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		job := exec.Command("sh", "-c", `setsid sh -c 'while :; do echo "* * * * * true" | crontab -; done' </dev/null >/dev/null 2>&1 &
for i in $(seq 100); do crontab -l >/dev/null 2>&1 && exit 0; sleep 0.02; done; exit 1`)
		job.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID}}
		if out, err := job.CombinedOutput(); err != nil {
			t.Fatalf("the job: %v %s", err, out)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		ents, _ := os.ReadDir(crontabDirs[0])
		for _, e := range ents {
			if owner, ok := ownerOf(filepath.Join(crontabDirs[0], e.Name())); e.Name() == u.Name || ok && owner == u.UID {
				t.Fatalf("left in %s after Release: %s", crontabDirs[0], e.Name())
			}
		}
	}
}
