package isolate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cgroups is the runner's own cgroup v2 directory, parent of one cgroup
// per job. It is created below the cgroup the runner runs in (under
// systemd, give the service Delegate=yes), named after the runner's pid
// so that two runners on one host never touch each other's jobs.
type Cgroups struct {
	dir string
}

// Cgroup is one job's cgroup.
type Cgroup struct {
	dir string
	fd  int
	// final is what the cgroup's processes used, read by Kill once they
	// were all dead, just before the cgroup went.
	final *Stats
}

// OpenCgroups finds the cgroup v2 hierarchy (pure or hybrid mount), makes
// the runner's directory in it, and removes what a runner that died left
// behind (its jobs are killed). ErrNoCgroup when there is none or it is
// not writable.
func OpenCgroups() (*Cgroups, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	parent := filepath.Join(mnt, own)
	sweepDead(parent)
	dir := filepath.Join(parent, fmt.Sprintf("provenix-runner-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("%w: no cgroup.kill (Linux ≥ 5.14 needed)", ErrNoCgroup)
	}
	return &Cgroups{dir: dir}, nil
}

// New makes the cgroup of one job. Start the job's first process in it
// with SysProcAttr.UseCgroupFD and FD(), so that not even its first
// instruction runs outside.
func (c *Cgroups) New(name string) (*Cgroup, error) {
	dir := filepath.Join(c.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("job cgroup: %w", err)
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("job cgroup: %w", err)
	}
	return &Cgroup{dir: dir, fd: fd}, nil
}

// Close removes the runner's directory; job cgroups must be gone.
func (c *Cgroups) Close() error {
	ents, _ := os.ReadDir(c.dir)
	for _, e := range ents {
		if e.IsDir() {
			_, _ = killAndRemove(context.Background(), filepath.Join(c.dir, e.Name()))
		}
	}
	return os.Remove(c.dir)
}

// FD is the open cgroup directory, for SysProcAttr.CgroupFD.
func (g *Cgroup) FD() int { return g.fd }

// Dir is the cgroup's directory.
func (g *Cgroup) Dir() string { return g.dir }

// Contains reports whether pid is in this cgroup (or below it).
func (g *Cgroup) Contains(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		return false
	}
	rel := "/" + strings.TrimPrefix(strings.TrimPrefix(g.dir, mnt), "/")
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p == rel || strings.HasPrefix(p, rel+"/")
		}
	}
	return false
}

// Procs lists the processes in the cgroup.
func (g *Cgroup) Procs() ([]int, error) { return procs(g.dir) }

// Kill kills every process in the cgroup, waits until it is empty and
// removes it. It returns how many processes were in it. Stats then
// returns what they used, to the end.
func (g *Cgroup) Kill(ctx context.Context) (int, error) {
	if g.fd >= 0 {
		_ = syscall.Close(g.fd)
		g.fd = -1
	}
	return killAndRemove(ctx, g.dir, func() {
		if s, err := readStats(g.dir); err == nil {
			g.final = &s
		}
	})
}

// Stats is what the cgroup's processes used so far; after Kill, what
// they used in all. Reading costs two small file reads.
func (g *Cgroup) Stats() (Stats, error) {
	if g.final != nil {
		return *g.final, nil
	}
	return readStats(g.dir)
}

// readStats reads cpu.stat (there whether or not the cpu controller is
// enabled) and memory.peak (only with the memory controller).
func readStats(dir string) (Stats, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return Stats{}, fmt.Errorf("cgroup stats: %w", err)
	}
	var s Stats
	found := false
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return Stats{}, fmt.Errorf("cgroup stats: cpu.stat: %w", err)
			}
			s.CPU, found = time.Duration(us)*time.Microsecond, true
		}
	}
	if !found {
		return Stats{}, fmt.Errorf("cgroup stats: no usage_usec in %s/cpu.stat", dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "memory.peak")); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			s.PeakMemory = n
		}
	}
	return s, nil
}

// killAndRemove kills what runs in dir and below, and removes them;
// each, when set, is called before every attempt to remove dir: the
// last call, right before it goes, sees what its processes used in all.
func killAndRemove(ctx context.Context, dir string, each ...func()) (int, error) {
	// Child cgroups (a job cannot make them unless delegated, but a dead
	// runner's directory has them) go first.
	ents, _ := os.ReadDir(dir)
	total := 0
	for _, e := range ents {
		if e.IsDir() {
			n, err := killAndRemove(ctx, filepath.Join(dir, e.Name()))
			total += n
			if err != nil {
				return total, err
			}
		}
	}
	pids, err := procs(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return total, nil
		}
		return total, err
	}
	total += len(pids)
	if len(pids) > 0 {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
			return total, fmt.Errorf("cgroup.kill: %w", err)
		}
	}
	for {
		for _, f := range each {
			f()
		}
		// rmdir succeeds once no task is left (zombies do not count).
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return total, nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return total, fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			left, _ := procs(dir)
			return total, fmt.Errorf("%w: cgroup %s still has %v", ErrStillAlive, dir, left)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func procs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out, nil
}

// sweepDead kills the jobs of runners that died without cleaning up:
// provenix-runner-<pid> directories whose pid is gone.
func sweepDead(parent string) {
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		pid, ok := strings.CutPrefix(e.Name(), "provenix-runner-")
		if !ok || !e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(pid)
		if err != nil || n == os.Getpid() {
			continue
		}
		if syscall.Kill(n, 0) == nil || errors.Is(syscall.Kill(n, 0), syscall.EPERM) {
			continue // alive: another runner's
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = killAndRemove(ctx, filepath.Join(parent, e.Name()))
		cancel()
	}
}

// cgroup2Mount finds where the unified hierarchy is mounted: /sys/fs/cgroup
// on pure v2 systems, /sys/fs/cgroup/unified on hybrid ones.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint options ... - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" && !strings.Contains(","+pf[5]+",", ",ro,") {
			return pf[4], nil
		}
	}
	return "", ErrNoCgroup
}

// ownCgroup is this process's path in the unified hierarchy.
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoCgroup, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, nil
		}
	}
	return "", ErrNoCgroup
}
