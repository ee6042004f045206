package isolate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// ErrPoolTooSmall: more jobs may run at once than the pool has users.
var ErrPoolTooSmall = errors.New("isolate: job user pool smaller than capacity")

// errUserBusy: another runner of this host holds the job user (lockUser).
var errUserBusy = errors.New("isolate: job user held by another runner")

// LockDir holds the host-wide locks of the job users (lockUser), shared
// by every runner of the host. /var/run: macOS has no /run (and cannot
// make one), and on Linux /var/run is /run. A directory of its own there,
// not one under /run/provenix, which systemd removes with any unit whose
// RuntimeDirectory it is: locks on files of a removed directory exclude
// nobody.
const LockDir = "/var/run/provenix-job-users"

// Pool hands each running job a user. An exclusive pool gives every job a
// user of its own; a shared pool (one job_user for all jobs) gives the
// same user to every job and promises nothing about other jobs.
type Pool struct {
	shared *User
	free   chan *User
	log    *slog.Logger
	// settle bounds how long a leftover process of a returned user may
	// take to die before the user is skipped for now.
	settle time.Duration
}

// NewPool makes an exclusive pool of users for up to capacity jobs.
func NewPool(users []*User, capacity int, log *slog.Logger) (*Pool, error) {
	if len(users) == 0 {
		return nil, errors.New("isolate: empty job user pool")
	}
	if capacity > len(users) {
		return nil, fmt.Errorf("%w: capacity %d, %d users", ErrPoolTooSmall, capacity, len(users))
	}
	seen := map[uint32]string{}
	p := &Pool{free: make(chan *User, len(users)), log: log, settle: 5 * time.Second}
	for _, u := range users {
		if other, dup := seen[u.UID]; dup {
			return nil, fmt.Errorf("isolate: job users %s and %s share uid %d", other, u.Name, u.UID)
		}
		seen[u.UID] = u.Name
		p.free <- u
	}
	if err := makeLockDir(LockDir); err != nil {
		return nil, err
	}
	return p, nil
}

// NewShared makes a pool that gives u to every job.
func NewShared(u *User) *Pool { return &Pool{shared: u} }

// Exclusive reports whether every job gets a user of its own.
func (p *Pool) Exclusive() bool { return p.shared == nil }

// Lease is one job's hold on a user.
type Lease struct {
	User      *User
	Exclusive bool
	pool      *Pool
	lock      *os.File // lockUser's, until Release
}

// Acquire waits for a free user. In an exclusive pool the user returned
// has no live process and no leftover temporary file: a user whose old
// processes will not die is skipped until they do, and so is one another
// runner of the host holds (lockUser): its processes are that runner's
// job, not leftovers. waiting, when not nil, is told once why the job
// waits, when it waits for another runner (for the job's own log: its
// author sees why it has not started).
func (p *Pool) Acquire(ctx context.Context, waiting func(why string)) (*Lease, error) {
	if p.shared != nil {
		return &Lease{User: p.shared, pool: p}, nil
	}
	told := false
	skipped := 0 // users skipped since the last pause
	for {
		var u *User
		select {
		case u = <-p.free:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		lock, err := lockUser(LockDir, u)
		if err != nil && !errors.Is(err, errUserBusy) {
			p.free <- u
			return nil, err
		}
		if err == nil {
			if err = p.scrub(ctx, u); err != nil {
				lock.Close()
			}
		}
		if err != nil {
			if errors.Is(err, errUserBusy) {
				if !told {
					// Once per job: it waits as long as that runner's job runs.
					p.log.Info("waiting for a job user: another runner of this host holds it", "user", u.Name)
					if waiting != nil {
						waiting("waiting for a job user: another runner of this host holds " + u.Name)
					}
					told = true
				}
				p.log.Debug("job user held by another runner of this host, trying another", "user", u.Name)
			} else {
				p.log.Warn("job user still busy, trying another", "user", u.Name, "err", err)
			}
			p.free <- u
			// Every free user is tried before a pause, so a free one
			// behind busy ones is taken at once.
			if skipped++; skipped < len(p.free) {
				continue
			}
			skipped = 0
			select {
			case <-time.After(time.Second):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return &Lease{User: u, Exclusive: true, pool: p, lock: lock}, nil
	}
}

// maxScrubRounds bounds scrub's rounds of removing schedules and killing.
const maxScrubRounds = 5

// scrub makes sure nothing of u is left (leftover.go): no crontab or at
// job, then no process (killed if found, as after a runner crash), no
// temporary file, no Nix profile or GC root of its own, no System V IPC
// object.
func (p *Pool) scrub(ctx context.Context, u *User) error {
	sctx, cancel := context.WithTimeout(ctx, p.settle)
	defer cancel()
	// A process of u still running could put a crontab back between its
	// removal and the kill: remove and kill again until a removal after a
	// kill finds nothing (cron reads the spool again before it starts
	// anything more).
	for round := 0; ; round++ {
		n, err := removeSchedules(u)
		if err != nil {
			return fmt.Errorf("crontab and at jobs of %s: %w", u.Name, err)
		}
		if n > 0 {
			p.log.Warn("removed a job user's crontab or at jobs", "user", u.Name, "count", n)
		}
		if round > 0 && n == 0 {
			break
		}
		if round == maxScrubRounds {
			return fmt.Errorf("%w: %s: its crontab or at jobs came back %d times", ErrStillAlive, u.Name, round)
		}
		if k, err := KillAllOf(sctx, u.UID); err != nil {
			return err
		} else if k > 0 {
			p.log.Warn("killed processes of a job user that no job held", "user", u.Name, "count", k)
		}
	}
	if _, err := RemoveOwned(u.UID, TempDirs...); err != nil {
		return fmt.Errorf("temporary files of %s: %w", u.Name, err)
	}
	if _, err := RemoveOwned(u.UID, nixUserDirs(u.Name)...); err != nil {
		return fmt.Errorf("nix profiles of %s: %w", u.Name, err)
	}
	if _, err := removeIPC(u.UID); err != nil {
		return fmt.Errorf("IPC objects of %s: %w", u.Name, err)
	}
	return nil
}

// Release returns the user once nothing of it is left. The caller has
// removed the job's directories. A user with processes that will not die
// goes back too; Acquire will not hand it out until they are gone.
//
// A shared user's processes end with the job's cgroup, and other jobs may
// be running as it: of what scrub removes, only what would start its
// processes later goes (its crontab and at jobs).
func (l *Lease) Release(ctx context.Context) error {
	if l.pool == nil {
		return nil
	}
	if !l.Exclusive {
		l.pool = nil
		if _, err := removeSchedules(l.User); err != nil {
			return fmt.Errorf("crontab and at jobs of %s: %w", l.User.Name, err)
		}
		return nil
	}
	p := l.pool
	l.pool = nil
	err := p.scrub(ctx, l.User)
	if l.lock != nil {
		l.lock.Close() // drops the flock: another runner may take the user now
	}
	p.free <- l.User
	return err
}
