// Package runner is the Provenix Forgejo Actions runner: it polls the
// forge for tasks, runs each job natively on the host in a child process
// as the job user (package job), reports logs, steps and results (package
// report), and attests the derivations the job realised with the runner's
// own key (package capture, package builder). The key, the .runner token
// and the NATS credentials never enter the job process.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/runner/capture"
	"codeberg.org/provenix/provenix/runner/isolate"
	"codeberg.org/provenix/provenix/runner/report"
	"codeberg.org/provenix/provenix/usage"
)

// Forge is the part of the forge client the runner uses.
type Forge interface {
	Declare(ctx context.Context, req *runnerv1.DeclareRequest) (*runnerv1.DeclareResponse, error)
	FetchTask(ctx context.Context, req *runnerv1.FetchTaskRequest) (*runnerv1.FetchTaskResponse, error)
	report.Client
}

// Options configure a Runner; cmd maps the config file onto them.
type Options struct {
	Labels   []string // label names, as declared
	Capacity int
	// Timeout bounds each job; ShutdownTimeout is how long Run waits for
	// running jobs after its context ends before cancelling them.
	Timeout, ShutdownTimeout time.Duration
	// FetchInterval is the pause between empty polls, FetchTimeout bounds
	// one poll, ReportInterval paces log and state reports.
	FetchInterval, FetchTimeout, ReportInterval time.Duration
	// Envs are added to every job's environment.
	Envs map[string]string
	// WorkdirParent holds one directory per running job.
	WorkdirParent string
	// JobUser runs job steps when the runner is root (default "nobody"),
	// shared by all the jobs running at once. A runner that is not root
	// runs jobs as itself.
	JobUser string
	// JobUsers, when set, is a pool of users: each running job gets one of
	// its own (Capacity must not exceed it), reused only once nothing of
	// the previous job is left. JobUser is then ignored. Needs root.
	JobUsers []string
	// DisableCgroup keeps jobs out of per-job cgroups even where cgroup v2
	// is available (leftover processes are then killed by uid only, and
	// only with JobUsers).
	DisableCgroup bool
	// DisablePrivateTmp keeps jobs in the host's mount namespace, sharing
	// /tmp (Linux, root: otherwise each job gets /tmp and /var/tmp of its
	// own, bound from its TMPDIR).
	DisablePrivateTmp bool
	// Idle, when set, is work the runner does while it runs no job (the
	// farm's builds, when the runner volunteers: provenix.volunteer). It
	// runs until its context ends; the runner ends it as soon as a fetch
	// returns a task, and waits for it to return before starting the
	// job, so forge jobs always come first and wait no longer than it
	// takes Idle to stop. It is started again once no job runs.
	Idle func(ctx context.Context) error
	// Usage, when set, records what each job cost (usage.KindJob: CPU,
	// wall time, peak memory, bytes built and staged) for the builder's
	// tenant, once the job is done. Jobs of a runner without a builder
	// are not recorded: they have no tenant.
	Usage usage.Recorder
	// Connection names the forge connection in usage records.
	Connection string
	// ChildCommand starts the job process (default: this executable with
	// "runner exec-job"); it reads a job.Spec on stdin.
	ChildCommand []string
	Version      string
	Logger       *slog.Logger
}

// Runner runs tasks from one forge.
type Runner struct {
	forge   Forge
	opts    Options
	builder *builder.Builder // nil: jobs run but nothing is attested
	log     *slog.Logger
	windows *capture.Windows
	users   *isolate.Pool    // nil: jobs run as the runner's own user
	cgroups *isolate.Cgroups // nil: no cgroup v2 to put jobs in
	// privateTmp: jobs start as root in a mount namespace of their own
	// and enter their sandbox (job.Sandbox) before running anything.
	privateTmp bool

	mu           sync.Mutex
	tasksVersion int64
}

// New checks opts and prepares a runner. b attests; without it jobs run
// but nothing is attested.
func New(forge Forge, b *builder.Builder, opts Options) (*Runner, error) {
	if opts.Capacity <= 0 {
		opts.Capacity = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 3 * time.Hour
	}
	if opts.FetchInterval <= 0 {
		opts.FetchInterval = 2 * time.Second
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 5 * time.Second
	}
	if opts.ReportInterval <= 0 {
		opts.ReportInterval = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.WorkdirParent == "" {
		return nil, errors.New("runner: no work directory (host.workdir_parent)")
	}
	if len(opts.ChildCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("runner: own executable: %w", err)
		}
		opts.ChildCommand = []string{exe, "runner", "exec-job"}
	}
	users, name, err := jobUsers(opts)
	if err != nil {
		return nil, err
	}
	if err := prepareWorkdirParent(opts.WorkdirParent, name); err != nil {
		return nil, err
	}
	r := &Runner{forge: forge, opts: opts, builder: b, log: opts.Logger, windows: capture.NewWindows(time.Hour), users: users}
	if users == nil {
		r.log.Warn("runner is not root: job steps run as this user and can read whatever it can, the signing key included; run the runner as root (jobs then run as the job user) to keep the key from them")
	} else if !users.Exclusive() && opts.Capacity > 1 {
		r.log.Warn("jobs running at once share one job user and can read each other's environment, files and signing socket; set provenix.job_users to a pool of at least capacity users", "job_user", name, "capacity", opts.Capacity)
	}
	if users != nil && !opts.DisablePrivateTmp {
		if tmp := underTmp(opts.WorkdirParent); tmp != "" {
			r.log.Warn("jobs share the host's /tmp: host.workdir_parent is under "+tmp+", which a private /tmp would hide from them", "workdir_parent", opts.WorkdirParent)
		} else if err := probePrivateMounts(); err != nil {
			r.log.Warn("jobs share the host's /tmp: no mount namespace for them", "err", err)
		} else {
			r.privateTmp = true
		}
	}
	if !opts.DisableCgroup {
		cg, err := isolate.OpenCgroups()
		if err != nil {
			r.log.Warn("jobs do not run in cgroups: a daemon a job leaves behind is killed only by uid (with provenix.job_users)", "err", err)
		} else {
			r.cgroups = cg
		}
	}
	if b == nil {
		r.log.Warn("no signing key or NATS configured: jobs run, nothing is attested")
	}
	return r, nil
}

// jobUsers makes the pool jobs take their user from; nil when the runner
// is not root. name is a user of it, for messages.
func jobUsers(opts Options) (*isolate.Pool, string, error) {
	if os.Geteuid() != 0 {
		if len(opts.JobUsers) > 0 {
			return nil, "", errors.New("runner: job_users needs the runner to run as root (it switches to them)")
		}
		return nil, "", nil
	}
	if len(opts.JobUsers) > 0 {
		users := make([]*isolate.User, 0, len(opts.JobUsers))
		for _, n := range opts.JobUsers {
			u, err := isolate.LookupUser(n)
			if err != nil {
				return nil, "", fmt.Errorf("runner: %w", err)
			}
			users = append(users, u)
		}
		p, err := isolate.NewPool(users, opts.Capacity, opts.Logger)
		if err != nil {
			return nil, "", fmt.Errorf("runner: job_users: %w", err)
		}
		return p, users[0].Name, nil
	}
	name := opts.JobUser
	if name == "" {
		name = "nobody"
	}
	u, err := isolate.LookupUser(name)
	if err != nil {
		return nil, "", fmt.Errorf("runner: %w", err)
	}
	return isolate.NewShared(u), name, nil
}

// Close removes what the runner set up for its jobs (its cgroup). Call it
// after Run or RunOne returned.
func (r *Runner) Close() error {
	if r.cgroups == nil {
		return nil
	}
	return r.cgroups.Close()
}

// prepareWorkdirParent creates the parent of job directories. The job user
// must be able to reach its own job directory, so every ancestor must be
// searchable by others; checking now turns a confusing "permission denied"
// inside the first job into a clear error at start.
func prepareWorkdirParent(dir, jobUser string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o711); err != nil {
		return fmt.Errorf("runner: work directory: %w", err)
	}
	if jobUser == "" {
		return nil
	}
	for d := abs; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("runner: work directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("runner: job user %s cannot reach work directory %s: %s is mode %v; chmod o+x it or set host.workdir_parent elsewhere (never inside the directory holding the key)", jobUser, abs, d, fi.Mode().Perm())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// Run polls for tasks and runs up to Capacity at once until ctx ends. Then
// it stops polling and waits for running jobs up to ShutdownTimeout before
// cancelling them; cancelled jobs are reported as such.
func (r *Runner) Run(ctx context.Context) error {
	r.declare(ctx)
	jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	slots := make(chan struct{}, r.opts.Capacity)
	var wg sync.WaitGroup
	var idle idleWork
	defer idle.stop()
	for ctx.Err() == nil {
		if len(slots) == 0 {
			idle.start(ctx, r.opts.Idle, r.log)
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		task, err := r.fetch(ctx)
		if err != nil || task == nil {
			<-slots
			if err != nil && ctx.Err() == nil {
				r.log.Warn("fetching a task failed", "err", err)
				if errors.Is(err, errFatal) {
					return err
				}
			}
			sleep(ctx, r.opts.FetchInterval)
			continue
		}
		idle.stop() // forge jobs first
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			r.RunTask(jobsCtx, task)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	default:
	}
	r.log.Info("shutting down: waiting for running jobs", "timeout", r.opts.ShutdownTimeout)
	select {
	case <-done:
	case <-time.After(r.opts.ShutdownTimeout):
		r.log.Warn("shutdown timeout: cancelling running jobs")
		cancelJobs()
		<-done
	}
	return nil
}

// idleRetry is how long the runner waits before starting its idle work
// again when it stopped by itself (an error: the broker is down, say).
const idleRetry = 30 * time.Second

// idleWork is Options.Idle while it runs; Run's loop alone uses it.
type idleWork struct {
	cancel context.CancelFunc
	done   chan struct{}
	// failed is set, before done is closed, when the work stopped by
	// itself (an error: the broker is down, say).
	failed time.Time
}

// start runs idle unless it is nil, runs already, or stopped by itself
// less than idleRetry ago.
func (w *idleWork) start(ctx context.Context, idle func(context.Context) error, log *slog.Logger) {
	if idle == nil {
		return
	}
	if w.done != nil {
		select {
		case <-w.done:
		default:
			return // running
		}
		if time.Since(w.failed) < idleRetry {
			return
		}
		w.cancel()
	}
	ictx, cancel := context.WithCancel(ctx)
	w.cancel, w.done, w.failed = cancel, make(chan struct{}), time.Time{}
	log.Info("no job running: volunteering")
	go func(done chan struct{}) {
		defer close(done)
		if err := idle(ictx); ictx.Err() == nil {
			log.Warn("idle work stopped by itself; trying again later", "err", err, "retry", idleRetry)
			w.failed = time.Now()
		}
	}(w.done)
}

// stop ends the idle work, if it runs, and waits for it to return.
func (w *idleWork) stop() {
	if w.done == nil {
		return
	}
	w.cancel()
	<-w.done
	w.cancel, w.done = nil, nil
}

// RunOne polls until one task arrives, runs it and returns its result.
func (r *Runner) RunOne(ctx context.Context) (runnerv1.Result, error) {
	r.declare(ctx)
	for {
		task, err := r.fetch(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, errFatal) {
				return runnerv1.Result_RESULT_UNSPECIFIED, err
			}
			r.log.Warn("fetching a task failed", "err", err)
		}
		if task != nil {
			return r.RunTask(ctx, task), nil
		}
		if err := sleep(ctx, r.opts.FetchInterval); err != nil {
			return runnerv1.Result_RESULT_UNSPECIFIED, err
		}
	}
}

var errFatal = errors.New("runner: the forge refuses this runner")

func (r *Runner) declare(ctx context.Context) {
	_, err := r.forge.Declare(ctx, &runnerv1.DeclareRequest{Version: r.opts.Version, Labels: r.opts.Labels})
	switch {
	case err == nil:
		r.log.Info("declared to the forge", "labels", r.opts.Labels, "version", r.opts.Version)
	case connect.CodeOf(err) == connect.CodeUnimplemented:
		// Older forges know labels only from registration.
		r.log.Info("forge does not support Declare; labels are those registered")
	default:
		r.log.Warn("declare failed", "err", err)
	}
}

func (r *Runner) fetch(ctx context.Context) (*runnerv1.Task, error) {
	r.mu.Lock()
	tv := r.tasksVersion
	r.mu.Unlock()
	fctx, cancel := context.WithTimeout(ctx, r.opts.FetchTimeout)
	defer cancel()
	resp, err := r.forge.FetchTask(fctx, &runnerv1.FetchTaskRequest{TasksVersion: tv})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nil, nil // a long poll that found nothing
		}
		switch connect.CodeOf(err) {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied:
			return nil, fmt.Errorf("%w: %v (re-register with 'provenix runner register')", errFatal, err)
		}
		return nil, err
	}
	r.mu.Lock()
	if v := resp.GetTasksVersion(); v > r.tasksVersion {
		r.tasksVersion = v
	}
	if resp.GetTask() != nil {
		// More tasks may wait under the same version: make the next
		// fetch look instead of trusting "nothing changed".
		r.tasksVersion = 0
	}
	r.mu.Unlock()
	return resp.GetTask(), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
