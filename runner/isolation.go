package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/runner/capture"
	"codeberg.org/provenix/provenix/runner/isolate"
	"codeberg.org/provenix/provenix/runner/job"
)

// reapTimeout bounds how long the runner waits for a job's leftover
// processes to die after killing them.
const reapTimeout = 30 * time.Second

// jobBox is what keeps one running job apart from the others: its user
// (nil: the runner's own) and its cgroup (nil: none), and the names of
// the isolation that gives, for the provenance.
type jobBox struct {
	lease      *isolate.Lease
	cg         *isolate.Cgroup
	privateTmp bool
	kinds      []string
	// used is what the job's cgroup used in all, once reap removed it.
	used *isolate.Stats
}

// box acquires a user of c's for the job and makes its cgroup; waiting
// is told why the job waits for a user, if it does (isolate.Pool.Acquire).
func (r *Runner) box(ctx context.Context, c *conn, taskID int64, waiting func(why string)) (*jobBox, error) {
	b := &jobBox{}
	if c.users != nil {
		l, err := c.users.Acquire(ctx, waiting)
		if err != nil {
			return nil, fmt.Errorf("job user: %w", err)
		}
		b.lease = l
		if l.Exclusive {
			b.kinds = append(b.kinds, attest.IsolationUID)
		}
	}
	if r.privateTmp && b.lease != nil {
		b.privateTmp = true
		b.kinds = append(b.kinds, attest.IsolationPrivateTmp)
	}
	if r.cgroups != nil {
		cg, err := r.cgroups.New(fmt.Sprintf("task-%d-%d", taskID, time.Now().UnixNano()))
		if err != nil {
			r.release(ctx, b)
			return nil, err
		}
		b.cg = cg
		b.kinds = append(b.kinds, attest.IsolationCgroup)
	}
	return b, nil
}

// underTmp returns the temporary directory (as a job's private one would
// cover it) that dir is in, or "".
func underTmp(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	for _, t := range []string{"/tmp", "/var/tmp"} {
		if real, err := filepath.EvalSymlinks(t); err == nil {
			t = real
		}
		if abs == t || strings.HasPrefix(abs, t+"/") {
			return t
		}
	}
	return ""
}

// describe lists the isolation for the job log.
func (b *jobBox) describe() string {
	if len(b.kinds) == 0 {
		return "none"
	}
	return strings.Join(b.kinds, ", ")
}

// user is the account the job runs as; nil means the runner's own.
func (b *jobBox) user() *isolate.User {
	if b.lease == nil {
		return nil
	}
	return b.lease.User
}

// ids are the uid and gid the job's files belong to, -1 for the runner's.
func (b *jobBox) ids() (int, int) {
	if u := b.user(); u != nil {
		return int(u.UID), int(u.GID)
	}
	return -1, -1
}

// procAttr starts the job process in its own process group, as its user
// and, from its first instruction, inside its cgroup.
func (b *jobBox) procAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if b.privateTmp {
		// Root, in a mount namespace of its own, until the job process
		// has entered its sandbox (see sandbox).
		privateMounts(a)
	} else if u := b.user(); u != nil {
		a.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
	}
	if b.cg != nil {
		intoCgroup(a, b.cg.FD())
	}
	return a
}

// sandbox is what the job process does before running the job: bind
// tmp over /tmp and become the job user. nil without a private /tmp.
func (b *jobBox) sandbox(tmp string) *job.Sandbox {
	u := b.user()
	if !b.privateTmp || u == nil {
		return nil
	}
	return &job.Sandbox{Tmp: tmp, UID: u.UID, GID: u.GID, Groups: u.Groups}
}

// peerCheck binds the signing socket to the job: the peer must be the
// job's uid and, where the job has a cgroup, one of its processes.
func (b *jobBox) peerCheck() capture.PeerCheck {
	uid := os.Getuid()
	if u := b.user(); u != nil {
		uid = int(u.UID)
	}
	cg := b.cg
	return func(p capture.Peer) error {
		if p.UID != uid {
			return fmt.Errorf("peer uid %d is not the job's", p.UID)
		}
		if cg != nil && (p.PID <= 0 || !cg.Contains(p.PID)) {
			return fmt.Errorf("peer process %d is not in the job's cgroup", p.PID)
		}
		return nil
	}
}

// reap kills whatever the job left running and says how many in the job
// log. With a user of its own, every process of that uid goes too.
func (r *Runner) reap(ctx context.Context, t *taskRun, b *jobBox) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reapTimeout)
	defer cancel()
	n := 0
	var errs []error
	if b.cg != nil {
		k, err := b.cg.Kill(ctx)
		n += k
		errs = append(errs, err)
		if s, err := b.cg.Stats(); err == nil {
			b.used = &s
		}
		b.cg = nil
	}
	if b.lease != nil && b.lease.Exclusive {
		k, err := isolate.KillAllOf(ctx, b.lease.User.UID)
		n += k
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		r.log.Error("killing the job's leftover processes", "task", t.task.GetId(), "err", err)
		t.rep.Logf("::warning::provenix: could not kill every leftover process of the job: %v", err)
	}
	if len(b.kinds) == 0 {
		return
	}
	switch n {
	case 0:
		t.rep.Logf("provenix: no process of the job was left running")
	case 1:
		t.rep.Logf("provenix: killed 1 leftover process of the job")
	default:
		t.rep.Logf("provenix: killed %d leftover processes of the job", n)
	}
}

// release gives the user back once its files are gone (the caller removed
// the job directory) and removes a cgroup reap did not.
func (r *Runner) release(ctx context.Context, b *jobBox) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reapTimeout)
	defer cancel()
	if b.cg != nil {
		_, _ = b.cg.Kill(ctx)
		b.cg = nil
	}
	if b.lease != nil {
		if err := b.lease.Release(ctx); err != nil {
			r.log.Error("job user not clean after the job", "user", b.lease.User.Name, "err", err)
		}
		b.lease = nil
	}
}
