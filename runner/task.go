package runner

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/attest"
	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/runner/capture"
	"codeberg.org/provenix/provenix/runner/isolate"
	"codeberg.org/provenix/provenix/runner/job"
	"codeberg.org/provenix/provenix/runner/report"
	"codeberg.org/provenix/provenix/storepath"
	"codeberg.org/provenix/provenix/usage"
)

// killGrace is how long a cancelled job process gets to run its clean-up
// before its whole process group is killed.
const killGrace = 10 * time.Second

// taskRun is one task in progress.
type taskRun struct {
	conn     *conn // the connection the task came from: reports, builder, users
	task     *runnerv1.Task
	ctx      map[string]any
	rep      *report.Reporter
	workflow *attest.Workflow
	invoc    string
	started  time.Time
	box      *jobBox

	// proc is the job process's end state, once it has ended (its
	// rusage, for the usage record).
	proc *os.ProcessState

	mu       sync.Mutex
	attested map[string]bool // drv → attested (either way)
	// built and staged are the NAR bytes of what the job attested and
	// the bytes it staged (usage.Record).
	built, staged int64
}

// runTask runs one task of connection c to its end and reports it to c's
// forge; it returns the result reported. Errors become log lines and a
// failed task: the runner goes on.
func (r *Runner) runTask(ctx context.Context, c *conn, task *runnerv1.Task) runnerv1.Result {
	tctx := task.GetContext().AsMap()
	secrets := make([]string, 0, len(task.GetSecrets())+1)
	for _, v := range task.GetSecrets() {
		secrets = append(secrets, v)
	}
	if tok := job.ContextString(tctx, "token"); tok != "" {
		secrets = append(secrets, tok)
	}
	log := r.log.With("connection", c.Name, "task", task.GetId())
	debug := task.GetSecrets()["ACTIONS_STEP_DEBUG"] == "true" || task.GetVars()["ACTIONS_STEP_DEBUG"] == "true"

	parsed, perr := job.Parse(task.GetWorkflowPayload())
	var steps []job.Step
	if perr == nil {
		steps = parsed.Steps
	}
	rep := report.New(c.Forge, task.GetId(), steps, report.Options{
		Interval: r.opts.ReportInterval, Secrets: secrets, Debug: debug, Logger: log,
	})
	rep.Start(ctx)
	t := &taskRun{conn: c, task: task, ctx: tctx, rep: rep, started: time.Now(), attested: map[string]bool{}}
	t.workflow, t.invoc = workflowOf(tctx)

	host, _ := os.Hostname()
	rep.Logf("provenix runner %s on %s (%s)", r.opts.Version, host, strings.Join(c.Labels, ", "))
	result := runnerv1.Result_RESULT_FAILURE
	if perr != nil {
		log.Warn("malformed workflow payload", "err", perr)
		rep.Logf("::error::cannot run this job: %v", perr)
	} else {
		log.Info("job started", "job", parsed.JobID, "repository", t.workflow.Repository)
		result = r.execute(ctx, t, parsed)
		log.Info("job finished", "job", parsed.JobID, "result", result.String(), "seconds", time.Since(t.started).Seconds())
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := rep.Close(closeCtx, result); err != nil {
		log.Error("could not report the job's end to the forge", "err", err)
	}
	return result
}

// workflowOf reads what the provenance says about the job from the task's
// context, which the forge sent: never from the job.
func workflowOf(c map[string]any) (*attest.Workflow, string) {
	s := func(k string) string { return job.ContextString(c, k) }
	w := &attest.Workflow{
		Server: strings.TrimRight(s("server_url"), "/"), Repository: s("repository"), Ref: s("ref"), Sha: s("sha"),
		Workflow: s("workflow"), Job: s("job"), RunID: s("run_id"), Event: s("event_name"), Actor: s("actor"),
	}
	run := s("run_number")
	if run == "" {
		run = s("run_id")
	}
	invoc := ""
	if w.Server != "" && w.Repository != "" {
		invoc = fmt.Sprintf("%s/%s/actions/runs/%s", w.Server, w.Repository, run)
		if w.Job != "" {
			invoc += "#" + w.Job
		}
	}
	return w, invoc
}

// execute prepares the job directory and socket, runs the job process and
// attests what it built.
func (r *Runner) execute(ctx context.Context, t *taskRun, p *job.Parsed) runnerv1.Result {
	box, err := r.box(ctx, t.conn, t.task.GetId(), func(why string) { t.rep.Logf("%s", why) })
	if err != nil {
		t.rep.Logf("::error::%v", err)
		return runnerv1.Result_RESULT_FAILURE
	}
	t.box = box
	// Deferred first, so it runs last: the user goes back only once the
	// job directory is gone.
	defer r.release(ctx, box)
	dir, err := os.MkdirTemp(t.conn.WorkdirParent, fmt.Sprintf("task-%d-", t.task.GetId()))
	if err != nil {
		t.rep.Logf("::error::job directory: %v", err)
		return runnerv1.Result_RESULT_FAILURE
	}
	defer func() {
		if err := os.RemoveAll(dir); err != nil {
			r.log.Warn("removing job directory", "dir", dir, "err", err)
		}
	}()
	sub := map[string]string{}
	for _, name := range []string{"repo", "act", "home", "tmp", "sock"} {
		sub[name] = filepath.Join(dir, name)
		if err := os.Mkdir(sub[name], 0o700); err != nil {
			t.rep.Logf("::error::job directory: %v", err)
			return runnerv1.Result_RESULT_FAILURE
		}
	}
	uid, gid := box.ids()
	if uid >= 0 {
		if err := chownTree(dir, uid, gid); err != nil {
			t.rep.Logf("::error::job directory: %v", err)
			return runnerv1.Result_RESULT_FAILURE
		}
	}

	win := r.windows.Begin(time.Now())
	defer func() { r.windows.End(win, time.Now()) }()

	token, err := capture.NewToken()
	if err != nil {
		t.rep.Logf("::error::job token: %v", err)
		return runnerv1.Result_RESULT_FAILURE
	}
	sock := filepath.Join(sub["sock"], "runner.sock")
	srv, err := capture.ListenBound(sock, token, uid, gid, box.peerCheck(), func(ctx context.Context, drvs []string) ([]capture.Result, error) {
		return r.attest(ctx, t, win, drvs, "step")
	})
	if err != nil {
		t.rep.Logf("::error::%v", err)
		return runnerv1.Result_RESULT_FAILURE
	}
	defer srv.Close()

	env := map[string]string{}
	for k, v := range r.opts.Envs {
		env[k] = v
	}
	env[capture.EnvSocket] = sock
	env[capture.EnvToken] = token
	spec := &job.Spec{
		TaskID: t.task.GetId(), Payload: t.task.GetWorkflowPayload(), Context: t.ctx,
		Secrets: t.task.GetSecrets(), Vars: t.task.GetVars(), Env: env, Labels: t.conn.Labels,
		Workdir: sub["repo"], ActionCacheDir: sub["act"], Sandbox: t.box.sandbox(sub["tmp"]),
	}
	for id, n := range t.task.GetNeeds() {
		if spec.Needs == nil {
			spec.Needs = map[string]job.Need{}
		}
		spec.Needs[id] = job.Need{Outputs: n.GetOutputs(), Result: strings.ToLower(strings.TrimPrefix(n.GetResult().String(), "RESULT_"))}
	}

	timeout := r.opts.Timeout
	if m, err := strconv.ParseFloat(strings.TrimSpace(p.Job.TimeoutMinutes), 64); err == nil && m > 0 {
		if d := time.Duration(m * float64(time.Minute)); d < timeout {
			timeout = d
		}
	}
	if u := box.user(); u != nil {
		t.rep.Logf("provenix: the job runs as %s (isolation: %s)", u.Name, box.describe())
	}
	result, cause := r.runChild(ctx, t, spec, sub, timeout)
	if cause != "" {
		t.rep.Logf("%s", cause)
	}
	// The job has ended: nothing it started keeps running, and its
	// signing channel closes with it.
	r.reap(ctx, t, box)
	_ = srv.Close()

	// Whatever the result, what the job built is attested: a later step
	// may fail after a good build, and the provenance records the job.
	r.autoCapture(ctx, t, win)
	r.recordUsage(ctx, t)
	return result
}

// runChild starts the job process, feeds the reporter and enforces the
// timeout and the forge's cancel.
func (r *Runner) runChild(ctx context.Context, t *taskRun, spec *job.Spec, sub map[string]string, timeout time.Duration) (runnerv1.Result, string) {
	in, err := json.Marshal(spec)
	if err != nil {
		return runnerv1.Result_RESULT_FAILURE, fmt.Sprintf("::error::job spec: %v", err)
	}
	cmd := exec.Command(r.opts.ChildCommand[0], r.opts.ChildCommand[1:]...)
	cmd.Dir = sub["repo"]
	cmd.Stdin = bytes.NewReader(in)
	cmd.Env = r.childEnv(sub, t.box.user())
	cmd.SysProcAttr = t.box.procAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return runnerv1.Result_RESULT_FAILURE, fmt.Sprintf("::error::job process: %v", err)
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return runnerv1.Result_RESULT_FAILURE, fmt.Sprintf("::error::starting the job process: %v", err)
	}
	// Every way out below has waited for the process.
	defer func() { t.proc = cmd.ProcessState }()

	var done *job.Event
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var ev job.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.rep.Logf("%s", sc.Text())
				continue
			}
			t.rep.Event(ev)
			if ev.Done {
				e := ev
				done = &e
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()

	waitErr := make(chan error, 1)
	go func() {
		<-readDone
		waitErr <- cmd.Wait()
	}()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	cancelled := ""
	select {
	case err = <-waitErr:
	case <-timer.C:
		cancelled = fmt.Sprintf("::error::the job exceeded its timeout of %v and was cancelled", timeout)
	case <-t.rep.Cancelled():
		cancelled = "the job was cancelled on the forge"
	case <-ctx.Done():
		cancelled = "the runner is shutting down: the job was cancelled"
	}
	if cancelled != "" {
		t.rep.Logf("%s", cancelled)
		stopGroup(cmd.Process.Pid, waitErr)
		return runnerv1.Result_RESULT_CANCELLED, ""
	}
	if done == nil {
		msg := strings.TrimSpace(stderr.String())
		if err == nil {
			err = errors.New("no result")
		}
		return runnerv1.Result_RESULT_FAILURE, fmt.Sprintf("::error::the job process ended without a result (%v): %s", err, msg)
	}
	res := report.Result(done.JobResult)
	if res == runnerv1.Result_RESULT_UNSPECIFIED {
		res = runnerv1.Result_RESULT_FAILURE
	}
	if done.Error != "" && res != runnerv1.Result_RESULT_SUCCESS {
		return res, done.Error
	}
	return res, ""
}

// stopGroup asks the job's process group to stop, then kills it.
func stopGroup(pid int, waitErr <-chan error) {
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-waitErr:
	case <-time.After(killGrace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-waitErr
	}
	// Steps that left the group's leader behind are killed too.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// childEnv is the job process's whole environment: nothing of the
// runner's own (its NATS token, say) leaks in.
func (r *Runner) childEnv(sub map[string]string, ju *isolate.User) []string {
	path := os.Getenv("PATH")
	if p, ok := r.opts.Envs["PATH"]; ok {
		path = p
	}
	// `provenix build` inside a job must find this binary.
	if exe, err := os.Executable(); err == nil {
		path = filepath.Dir(exe) + string(os.PathListSeparator) + path
	}
	env := map[string]string{
		"PATH": path, "HOME": sub["home"], "TMPDIR": sub["tmp"], "LANG": "C.UTF-8",
		// act gives steps a pseudo-terminal; without these, git and others
		// start a pager that waits for a key nobody will press.
		"PAGER": "cat", "GIT_PAGER": "cat", "TERM": "dumb",
	}
	if ju != nil {
		env["USER"], env["LOGNAME"] = ju.Name, ju.Name
		// An unprivileged user builds through the Nix daemon.
		env["NIX_REMOTE"] = "daemon"
	} else if u := os.Getenv("USER"); u != "" {
		env["USER"] = u
	}
	for _, k := range []string{"NIX_PATH", "NIX_CONFIG", "NIX_REMOTE", "SSL_CERT_FILE", "NIX_SSL_CERT_FILE", "TZ"} {
		if v, ok := os.LookupEnv(k); ok {
			if _, set := env[k]; !set {
				env[k] = v
			}
		}
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// attest publishes drvs the job realised, as this runner's builder, with
// the closure the job built for them (builder.PublishClosure): only what
// this store built while the job ran is attested.
func (r *Runner) attest(ctx context.Context, t *taskRun, win int, drvs []string, how string) ([]capture.Result, error) {
	b := t.conn.Builder
	if b == nil {
		return nil, errors.New("this runner does not attest: it has no signing key or NATS configured")
	}
	for _, drv := range drvs {
		if err := checkDrv(ctx, b.Nix, drv); err != nil {
			t.rep.Logf("::warning::provenix: not attested %s: %v", drv, err)
			return nil, fmt.Errorf("%s: %w", drv, err)
		}
	}
	return r.attestClosure(ctx, t, drvs, how, stepEligible(r.windows, win))
}

// stepEligible is what a job may have attested, through its socket or
// automatically once it ended: what the store registered during the job
// and during no other job's time (of this runner or, sharing windows,
// of the host's others). Nix does not record who asked for a build, so a
// path built while another job ran could be that job's, and a job naming
// it must not get it labelled with its workflow. The other runners'
// windows are read once per call.
func stepEligible(w *capture.Windows, win int) func(nix.PathInfo) bool {
	exclusive := w.ExclusiveOf(win)
	return func(pi nix.PathInfo) bool { return exclusive(pi.Registered) }
}

// checkDrv holds a derivation path that came from the job to what the
// runner (maybe root) may open: a registered, regular file directly in
// the store, so a job cannot point the runner at its key through a
// symlink.
func checkDrv(ctx context.Context, n *nix.Nix, drv string) error {
	if err := storepath.Check(drv); err != nil {
		return err
	}
	if fi, err := os.Lstat(n.RealPath(drv)); err != nil || !fi.Mode().IsRegular() {
		return errors.New("not a regular file in the store")
	}
	if inv, err := n.Invalid(ctx, drv); err != nil || len(inv) > 0 {
		return errors.New("not a valid store path")
	}
	if _, err := n.ReadDerivation(drv); err != nil {
		// Not echoing the parser's words: they may quote the file.
		return errors.New("not a derivation")
	}
	return nil
}

// attestClosure publishes drvs and their built closure, the outputs
// eligible says the job built, skipping derivations the job had attested
// already, and reports each published derivation to the job.
func (r *Runner) attestClosure(ctx context.Context, t *taskRun, drvs []string, how string, eligible func(nix.PathInfo) bool) ([]capture.Result, error) {
	w := *t.workflow
	w.Capture = how
	if t.box != nil {
		w.Isolation = t.box.kinds
	}
	b := t.conn.Builder
	pubs, err := b.PublishClosure(ctx, builder.Target{
		Installable:  attest.Installable{Kind: "drv", Ref: drvs[0]},
		Workflow:     &w,
		InvocationID: t.invoc,
	}, drvs, builder.ClosureOptions{
		Started: t.started, Finished: time.Now(),
		Eligible: eligible,
		Skip: func(drv string) bool {
			t.mu.Lock()
			defer t.mu.Unlock()
			return t.attested[drv]
		},
	})
	built, staged := usage.PublishedBytes(pubs)
	t.mu.Lock()
	t.built += built
	t.staged += staged
	t.mu.Unlock()
	var out []capture.Result
	for _, p := range pubs {
		t.mu.Lock()
		t.attested[p.DrvPath] = true
		t.mu.Unlock()
		res := capture.Result{DrvPath: p.DrvPath, System: p.System, MsgID: p.MsgID, Duplicate: p.Duplicate, BuilderID: b.BuilderID}
		for _, o := range p.Outputs {
			res.Outputs = append(res.Outputs, capture.Output{Name: o.Name, Path: o.Path, NarSHA256: o.NarHashHex(), NarSize: o.NarSize})
		}
		out = append(out, res)
		with := ""
		if len(p.Sources) > 0 {
			with = fmt.Sprintf(", with %d sources", len(p.Sources))
		}
		t.rep.Logf("provenix: attested %s (%d outputs, %s) as builder %q%s", p.DrvPath, len(res.Outputs), how, b.BuilderID, with)
	}
	if err != nil {
		t.rep.Logf("::warning::provenix: not attested %v: %v", drvs, err)
		return out, err
	}
	return out, nil
}

// autoCapture attests derivations the store built while the job ran and
// that no other job could have built, with their closures.
func (r *Runner) autoCapture(ctx context.Context, t *taskRun, win int) {
	b := t.conn.Builder
	if b == nil {
		return
	}
	built, err := b.Nix.BuiltSince(ctx, t.started)
	if err != nil {
		t.rep.Logf("::warning::provenix: listing what the job built: %v", err)
		return
	}
	exclusive := stepEligible(r.windows, win)
	drvs := map[string]bool{}
	for _, b := range built {
		if !exclusive(b) {
			t.rep.Logf("provenix: %s was built while another job ran on this runner; not attested automatically (run 'provenix build' in the step for exact attribution)", b.Path)
			continue
		}
		drvs[b.Deriver] = true
	}
	// One derivation at a time: one that fails does not hold back the
	// others, and a closure published with an earlier one is skipped.
	for _, d := range slices.Sorted(maps.Keys(drvs)) {
		t.mu.Lock()
		seen := t.attested[d]
		t.mu.Unlock()
		if seen {
			continue
		}
		if inv, err := b.Nix.Invalid(ctx, d); err != nil || len(inv) > 0 {
			t.rep.Logf("::warning::provenix: not attested %s: its derivation is not in the store", d)
			continue
		}
		_, _ = r.attestClosure(ctx, t, []string{d}, "automatic", exclusive)
	}
}

func chownTree(root string, uid, gid int) error {
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// tailBuffer keeps the last 8 KiB of the job process's stderr, for the
// error line when it dies without a result.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 8<<10 {
		b.buf = b.buf[len(b.buf)-8<<10:]
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
