package runner

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/runner/isolate"
	"codeberg.org/provenix/provenix/usage"
)

// Connection is one forge the runner serves and what belongs to it alone,
// so that forges which do not trust each other can share a host: a
// connection's tasks are attested with its own Builder (its key, its
// tenant's NATS account), run as its own job users in its own work
// directory, and reported to its own Forge.
type Connection struct {
	// Name identifies the connection in the runner's log and job logs.
	Name  string
	Forge Forge
	// Labels are declared to this forge (label names).
	Labels []string
	// FetchInterval is the pause after an empty poll of this forge;
	// 0 means Options.FetchInterval.
	FetchInterval time.Duration
	// Builder attests this connection's jobs; nil: they run, nothing is
	// attested.
	Builder *builder.Builder
	// WorkdirParent holds one directory per running job of this
	// connection. With several connections, a root runner makes it
	// root's, mode 0700, searchable only by this connection's job users
	// (isolate.RestrictDir): another tenant's jobs cannot reach it.
	WorkdirParent string
	// JobUser and JobUsers are as in Options, for this connection's jobs.
	// Connections may share job users only when they name the same ones
	// (then they share one pool); any other overlap is an error, since a
	// user's leftover processes are killed by uid.
	JobUser  string
	JobUsers []string
	// Usage, when set, records what each job of this connection cost
	// (usage.KindJob: CPU, wall time, peak memory, bytes built and
	// staged) for its builder's tenant, on that tenant's NATS account,
	// once the job is done. Jobs without a builder are not recorded:
	// they have no tenant.
	Usage usage.Recorder
}

// conn is a Connection as the runner serves it.
type conn struct {
	Connection
	users    *isolate.Pool // nil: jobs run as the runner's own user
	userName string        // a user of users, for messages

	mu           sync.Mutex
	tasksVersion int64
}

// prepareConns checks conns, gives each its pool of job users (one pool
// per distinct set of users) and prepares its work directory.
func (r *Runner) prepareConns(in []Connection) ([]*conn, error) {
	out := make([]*conn, 0, len(in))
	names := map[string]bool{}
	pools := map[string]*isolate.Pool{} // by poolKey
	owner := map[string]string{}        // user name → poolKey
	type dirOf struct{ dir, key, name string }
	var dirs []dirOf
	for i, c := range in {
		if c.Name == "" {
			c.Name = fmt.Sprintf("connection-%d", i)
		}
		if names[c.Name] {
			return nil, fmt.Errorf("runner: two connections named %q", c.Name)
		}
		names[c.Name] = true
		if c.Forge == nil {
			return nil, fmt.Errorf("runner: connection %s: no forge client", c.Name)
		}
		if c.WorkdirParent == "" {
			return nil, fmt.Errorf("runner: connection %s: no work directory (host.workdir_parent)", c.Name)
		}
		if c.FetchInterval <= 0 {
			c.FetchInterval = r.opts.FetchInterval
		}
		abs, err := filepath.Abs(c.WorkdirParent)
		if err != nil {
			return nil, fmt.Errorf("runner: connection %s: work directory: %w", c.Name, err)
		}
		c.WorkdirParent = abs
		key, members := poolKey(c)
		for _, u := range members {
			if k, ok := owner[u]; ok && k != key {
				return nil, fmt.Errorf("runner: connection %s: job user %s also runs another connection's jobs with other users; give each tenant job users of its own", c.Name, u)
			}
			owner[u] = key
		}
		for _, d := range dirs {
			if d.key != key && (within(abs, d.dir) || within(d.dir, abs)) {
				return nil, fmt.Errorf("runner: connections %s and %s have job users of their own but work directories %s and %s inside one another; give each its own", d.name, c.Name, d.dir, abs)
			}
		}
		dirs = append(dirs, dirOf{abs, key, c.Name})

		cc := &conn{Connection: c}
		users, err := lookupJobUsers(c, members)
		if err != nil {
			return nil, fmt.Errorf("runner: connection %s: %w", c.Name, err)
		}
		if len(users) > 0 {
			cc.userName = users[0].Name
			if cc.users = pools[key]; cc.users == nil {
				if cc.users, err = jobPool(c, users, r.opts.Capacity, r.log); err != nil {
					return nil, fmt.Errorf("runner: connection %s: %w", c.Name, err)
				}
				pools[key] = cc.users
			}
		}
		if err := r.prepareWorkdirParent(cc, users, len(in) > 1); err != nil {
			return nil, fmt.Errorf("runner: connection %s: %w", c.Name, err)
		}
		if cc.users != nil && !cc.users.Exclusive() && r.opts.Capacity > 1 {
			r.log.Warn("jobs running at once share one job user and can read each other's environment, files and signing socket; set provenix.job_users to a pool of at least capacity users", "connection", c.Name, "job_user", cc.userName, "capacity", r.opts.Capacity)
		}
		if c.Builder == nil {
			r.log.Warn("no signing key or NATS configured: jobs run, nothing is attested", "connection", c.Name)
		}
		out = append(out, cc)
	}
	return out, nil
}

// poolKey names the set of job users a connection runs jobs as, and
// lists them (as configured): connections with one key share one pool.
func poolKey(c Connection) (string, []string) {
	if len(c.JobUsers) > 0 {
		sorted := slices.Sorted(slices.Values(c.JobUsers))
		return "pool:" + strings.Join(sorted, ","), c.JobUsers
	}
	name := c.JobUser
	if name == "" {
		name = "nobody"
	}
	return "shared:" + name, []string{name}
}

func within(dir, parent string) bool {
	return dir == parent || strings.HasPrefix(dir, parent+string(filepath.Separator))
}

// lookupJobUsers looks up names (poolKey's), the users c's jobs run as;
// none when the runner is not root.
func lookupJobUsers(c Connection, names []string) ([]*isolate.User, error) {
	if os.Geteuid() != 0 {
		if len(c.JobUsers) > 0 {
			return nil, errors.New("job_users needs the runner to run as root (it switches to them)")
		}
		return nil, nil
	}
	users := make([]*isolate.User, 0, len(names))
	for _, n := range names {
		u, err := isolate.LookupUser(n)
		if err != nil {
			return nil, err
		}
		users = append(users, u)
	}
	return users, nil
}

// jobPool makes the pool c's jobs take their users from: users, one per
// job, with job_users; else the one job user for every job.
func jobPool(c Connection, users []*isolate.User, capacity int, log *slog.Logger) (*isolate.Pool, error) {
	if len(c.JobUsers) == 0 {
		return isolate.NewShared(users[0]), nil
	}
	p, err := isolate.NewPool(users, capacity, log)
	if err != nil {
		return nil, fmt.Errorf("job_users: %w", err)
	}
	return p, nil
}

// prepareWorkdirParent creates the parent of c's job directories. The job
// user must be able to reach its own job directory, so every ancestor must
// be searchable by others; checking now turns a confusing "permission
// denied" inside the first job into a clear error at start. With several
// connections (restrict) and a root runner, the parent itself is
// searchable by c's job users (users) only.
func (r *Runner) prepareWorkdirParent(c *conn, users []*isolate.User, restrict bool) error {
	dir := c.WorkdirParent
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("work directory: %w", err)
	}
	if c.users == nil {
		return nil
	}
	start := dir
	if restrict {
		uids := make([]uint32, len(users))
		for i, u := range users {
			uids[i] = u.UID
		}
		if err := isolate.RestrictDir(dir, uids); err != nil {
			return fmt.Errorf("cannot keep other connections' jobs out of work directory %s: %w", dir, err)
		}
		start = filepath.Dir(dir)
	}
	for d := start; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("work directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("job user %s cannot reach work directory %s: %s is mode %v; chmod o+x it or set host.workdir_parent elsewhere (never inside the directory holding the key)", c.userName, dir, d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
