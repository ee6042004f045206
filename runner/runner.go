// Package runner is the Provenix Forgejo Actions runner: it polls the
// forge for tasks, runs each job natively on the host in a child process
// as the job user (package job), reports logs, steps and results (package
// report), and attests the derivations the job realised with the runner's
// own key (package capture, package builder). The key, the .runner token
// and the NATS credentials never enter the job process.
package runner

import (
	"cmp"
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

// Options configure a Runner; cmd maps the config file onto them. What
// belongs to one forge (its labels, fetch interval, builder, job users and
// work directory) is in Connection; for New's single connection it is
// taken from here.
type Options struct {
	Labels []string // label names, as declared (New's connection)
	// Capacity is how many jobs run at once, shared by all connections:
	// one pool of slots.
	Capacity int
	// Timeout bounds each job; ShutdownTimeout is how long Run waits for
	// running jobs after its context ends before cancelling them.
	Timeout, ShutdownTimeout time.Duration
	// FetchInterval is the pause between empty polls of a connection
	// (the default of Connection.FetchInterval), FetchTimeout bounds one
	// poll, ReportInterval paces log and state reports.
	FetchInterval, FetchTimeout, ReportInterval time.Duration
	// Envs are added to every job's environment.
	Envs map[string]string
	// WorkdirParent holds one directory per running job (New's
	// connection).
	WorkdirParent string
	// JobUser runs job steps when the runner is root (default "nobody"),
	// shared by all the jobs running at once. A runner that is not root
	// runs jobs as itself. (New's connection.)
	JobUser string
	// JobUsers, when set, is a pool of users: each running job gets one of
	// its own (Capacity must not exceed it), reused only once nothing of
	// the previous job is left. JobUser is then ignored. Needs root.
	// (New's connection.)
	JobUsers []string
	// DisableCgroup keeps jobs out of per-job cgroups even where cgroup v2
	// is available (leftover processes are then killed by uid only, and
	// only with JobUsers).
	DisableCgroup bool
	// DisablePrivateTmp keeps jobs in the host's mount namespace, sharing
	// /tmp (Linux, root: otherwise each job gets /tmp and /var/tmp of its
	// own, bound from its TMPDIR).
	DisablePrivateTmp bool
	// JobWindowsDir is where the root runners of this host share their
	// jobs' windows (hostWindows); DefaultJobWindowsDir when empty.
	JobWindowsDir string
	// Idle, when set, is work the runner does while it runs no job (the
	// farm's builds, when the runner volunteers: provenix.volunteer). It
	// runs until its context ends; the runner ends it as soon as a fetch
	// returns a task, and waits for it to return before starting the
	// job, so forge jobs always come first and wait no longer than it
	// takes Idle to stop. It is started again once no job runs.
	Idle func(ctx context.Context) error
	// Usage records what each job of New's connection cost (see
	// Connection.Usage), and Connection names that connection (in logs
	// and usage records).
	Usage      usage.Recorder
	Connection string
	// ChildCommand starts the job process (default: this executable with
	// "runner exec-job"); it reads a job.Spec on stdin.
	ChildCommand []string
	Version      string
	Logger       *slog.Logger
}

// Runner runs tasks from one or several forges (connections), up to
// Options.Capacity at once in all.
type Runner struct {
	conns   []*conn
	opts    Options
	log     *slog.Logger
	windows *capture.Windows
	cgroups *isolate.Cgroups // nil: no cgroup v2 to put jobs in
	// privateTmp: jobs start as root in a mount namespace of their own
	// and enter their sandbox (job.Sandbox) before running anything.
	privateTmp bool
}

// New checks opts and prepares a runner for one forge. b attests; without
// it jobs run but nothing is attested.
func New(forge Forge, b *builder.Builder, opts Options) (*Runner, error) {
	return NewConnections([]Connection{{
		Name: opts.Connection, Forge: forge, Builder: b, Labels: opts.Labels, FetchInterval: opts.FetchInterval,
		WorkdirParent: opts.WorkdirParent, JobUser: opts.JobUser, JobUsers: opts.JobUsers,
		Usage: opts.Usage,
	}}, opts)
}

// NewConnections checks conns and opts and prepares a runner serving every
// connection from this one process: Options.Capacity slots shared by all,
// polled in turn (see Run), each task run with its own connection's
// builder, job users and work directory and reported to its own forge.
func NewConnections(conns []Connection, opts Options) (*Runner, error) {
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
	if len(conns) == 0 {
		return nil, errors.New("runner: no forge connection")
	}
	if len(opts.ChildCommand) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("runner: own executable: %w", err)
		}
		opts.ChildCommand = []string{exe, "runner", "exec-job"}
	}
	r := &Runner{opts: opts, log: opts.Logger, windows: capture.NewWindows(time.Hour)}
	cs, err := r.prepareConns(conns)
	if err != nil {
		return nil, err
	}
	r.conns = cs
	root := cs[0].users != nil
	if root {
		// The host's other runners share its Nix daemon: a build of
		// their job while ours runs must not pass for ours.
		if r.windows, err = hostWindows(cmp.Or(opts.JobWindowsDir, DefaultJobWindowsDir)); err != nil {
			r.log.Warn("job windows not shared with the host's other runners: a build one of their jobs makes while a job of this runner runs may be attested as this job's", "err", err)
			r.windows = capture.NewWindows(time.Hour)
		}
	}
	if !root {
		r.log.Warn("runner is not root: job steps run as this user and can read whatever it can, the signing key included; run the runner as root (jobs then run as the job user) to keep the key from them")
	}
	if root && !opts.DisablePrivateTmp {
		var under []string
		for _, c := range cs {
			if tmp := underTmp(c.WorkdirParent); tmp != "" {
				under = append(under, c.WorkdirParent)
			}
		}
		if len(under) > 0 {
			r.log.Warn("jobs share the host's /tmp: a work directory is under /tmp or /var/tmp, which a private /tmp would hide from them", "workdir_parent", under)
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
	return r, nil
}

// Close removes what the runner set up for its jobs (its cgroup). Call it
// after Run or RunOne returned.
func (r *Runner) Close() error {
	if r.cgroups == nil {
		return nil
	}
	return r.cgroups.Close()
}

// Run polls for tasks and runs up to Capacity at once until ctx ends. When
// a slot is free it polls the connections in turn (rotation), so that a
// busy forge cannot starve another. Then it stops polling and waits for
// running jobs up to ShutdownTimeout before cancelling them; cancelled
// jobs are reported as such. A forge that refuses the runner is not polled
// again; Run returns once every forge has refused it.
func (r *Runner) Run(ctx context.Context) error {
	r.declare(ctx)
	jobsCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	slots := make(chan struct{}, r.opts.Capacity)
	var wg sync.WaitGroup
	var idle idleWork
	defer idle.stop()
	rot := newRotation(len(r.conns))
	for ctx.Err() == nil {
		if len(slots) == 0 {
			idle.start(ctx, r.opts.Idle, r.log)
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		i, wait, err := rot.pick(time.Now())
		if err != nil {
			<-slots
			return err
		}
		if i < 0 {
			<-slots
			_ = sleep(ctx, wait)
			continue
		}
		c := r.conns[i]
		task, err := r.fetch(ctx, c)
		if err != nil || task == nil {
			<-slots
			if err != nil && ctx.Err() == nil {
				r.log.Warn("fetching a task failed", "connection", c.Name, "err", err)
				if errors.Is(err, errFatal) {
					r.log.Error("the forge refuses this runner: no longer polled", "connection", c.Name)
					rot.refuse(i, err)
					continue
				}
			}
			rot.empty(i, time.Now(), c.FetchInterval)
			continue
		}
		idle.stop() // forge jobs first
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			r.runTask(jobsCtx, c, task)
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

// RunOne polls the connections in turn until one task arrives, runs it
// and returns its result.
func (r *Runner) RunOne(ctx context.Context) (runnerv1.Result, error) {
	r.declare(ctx)
	rot := newRotation(len(r.conns))
	for {
		i, wait, err := rot.pick(time.Now())
		if err != nil {
			return runnerv1.Result_RESULT_UNSPECIFIED, err
		}
		if i < 0 {
			if err := sleep(ctx, wait); err != nil {
				return runnerv1.Result_RESULT_UNSPECIFIED, err
			}
			continue
		}
		c := r.conns[i]
		task, err := r.fetch(ctx, c)
		switch {
		case task != nil:
			return r.runTask(ctx, c, task), nil
		case err != nil && ctx.Err() != nil:
			return runnerv1.Result_RESULT_UNSPECIFIED, err
		case errors.Is(err, errFatal):
			r.log.Error("the forge refuses this runner", "connection", c.Name, "err", err)
			rot.refuse(i, err)
			continue
		case err != nil:
			r.log.Warn("fetching a task failed", "connection", c.Name, "err", err)
		}
		rot.empty(i, time.Now(), c.FetchInterval)
	}
}

var errFatal = errors.New("runner: the forge refuses this runner")

// declare tells each forge the labels of its connection.
func (r *Runner) declare(ctx context.Context) {
	for _, c := range r.conns {
		_, err := c.Forge.Declare(ctx, &runnerv1.DeclareRequest{Version: r.opts.Version, Labels: c.Labels})
		switch {
		case err == nil:
			r.log.Info("declared to the forge", "connection", c.Name, "labels", c.Labels, "version", r.opts.Version)
		case connect.CodeOf(err) == connect.CodeUnimplemented:
			// Older forges know labels only from registration.
			r.log.Info("forge does not support Declare; labels are those registered", "connection", c.Name)
		default:
			r.log.Warn("declare failed", "connection", c.Name, "err", err)
		}
	}
}

func (r *Runner) fetch(ctx context.Context, c *conn) (*runnerv1.Task, error) {
	c.mu.Lock()
	tv := c.tasksVersion
	c.mu.Unlock()
	fctx, cancel := context.WithTimeout(ctx, r.opts.FetchTimeout)
	defer cancel()
	resp, err := c.Forge.FetchTask(fctx, &runnerv1.FetchTaskRequest{TasksVersion: tv})
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
	c.mu.Lock()
	if v := resp.GetTasksVersion(); v > c.tasksVersion {
		c.tasksVersion = v
	}
	if resp.GetTask() != nil {
		// More tasks may wait under the same version: make the next
		// fetch look instead of trusting "nothing changed".
		c.tasksVersion = 0
	}
	c.mu.Unlock()
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

// DefaultJobWindowsDir is where the root runners of a host share their
// jobs' windows: beside the job users' locks, root's only.
var DefaultJobWindowsDir = filepath.Join(isolate.LockDir, "windows")

// hostWindows are job windows shared, through dir, with the host's other
// runners.
func hostWindows(dir string) (*capture.Windows, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return capture.NewHostWindows(time.Hour, dir)
}
