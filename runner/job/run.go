package job

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nektos/act/pkg/model"
	actrunner "github.com/nektos/act/pkg/runner"
	"github.com/sirupsen/logrus"
)

// Event is one line of the child's report. Messages are already masked by
// act (secrets and ::add-mask:: values); the parent masks secrets again.
type Event struct {
	Time  time.Time `json:"t"`
	Level string    `json:"l,omitempty"`
	Msg   string    `json:"m,omitempty"`
	// Raw marks a line of a step's own output (as opposed to act's
	// narration of what it does).
	Raw bool `json:"raw,omitempty"`
	// Step is the top-level step id the line belongs to, Stage Pre, Main
	// or Post; both empty for job set-up and tear-down.
	Step       string `json:"step,omitempty"`
	Stage      string `json:"stage,omitempty"`
	StepResult string `json:"stepResult,omitempty"`
	JobResult  string `json:"jobResult,omitempty"`
	// Done is the last event: the job's result and outputs.
	Done    bool              `json:"done,omitempty"`
	Outputs map[string]string `json:"outputs,omitempty"`
	Error   string            `json:"error,omitempty"`
}

// Run runs the task's job on the host and writes events to w, one JSON
// object per line, ending with a Done event. It returns an error only when
// the job could not be started; a failing job is a Done event with result
// failure.
func Run(ctx context.Context, spec *Spec, w io.Writer) error {
	p, err := Parse(spec.Payload)
	if err != nil {
		return err
	}
	out := &eventWriter{w: w}
	cfg, err := config(spec, p)
	if err != nil {
		return err
	}
	r, err := actrunner.New(cfg)
	if err != nil {
		return fmt.Errorf("act: %w", err)
	}
	// Needs: the forge ran the other jobs; act reads their outputs and
	// results from jobs of the same workflow, so they are added as stubs
	// that are never planned.
	for id, n := range spec.Needs {
		if _, ok := p.Workflow.Jobs[id]; ok {
			continue
		}
		p.Workflow.Jobs[id] = &model.Job{Name: id, Outputs: n.Outputs, Result: n.Result}
	}
	plan := &model.Plan{Stages: []*model.Stage{{Runs: []*model.Run{{Workflow: p.Workflow, JobID: p.JobID}}}}}

	logger := logrus.New()
	logger.SetOutput(out)
	logger.SetLevel(logrus.DebugLevel) // skipped steps are reported at debug level
	logger.SetFormatter(eventFormatter{})
	ctx = actrunner.WithJobLoggerFactory(ctx, loggerFactory{logger})

	runErr := r.NewPlanExecutor(plan)(ctx)
	done := Event{Time: time.Now(), Done: true, JobResult: p.Job.Result}
	if done.JobResult == "" {
		done.JobResult = "success"
		if runErr != nil {
			done.JobResult = "failure"
		}
	}
	if ctx.Err() != nil {
		done.JobResult = "cancelled"
	}
	if runErr != nil {
		done.Error = runErr.Error()
	}
	done.Outputs = p.Job.Outputs
	return out.write(done)
}

func config(spec *Spec, p *Parsed) (*actrunner.Config, error) {
	env := githubEnv(spec.Context)
	for k, v := range spec.Env {
		env[k] = v
	}
	ev, err := eventJSON(spec.Context)
	if err != nil {
		return nil, err
	}
	eventPath := ""
	if spec.ActionCacheDir != "" {
		if err := os.MkdirAll(spec.ActionCacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("action cache: %w", err)
		}
		f, err := os.CreateTemp(spec.ActionCacheDir, "event-*.json")
		if err != nil {
			return nil, fmt.Errorf("event payload: %w", err)
		}
		if _, err := f.WriteString(ev); err != nil {
			f.Close()
			return nil, fmt.Errorf("event payload: %w", err)
		}
		f.Close()
		eventPath = f.Name()
	}
	platforms := map[string]string{}
	for _, l := range spec.Labels {
		platforms[strings.ToLower(l)] = "-self-hosted"
	}
	for _, l := range p.Job.RunsOn() {
		// runs-on names this runner answered for; the forge matched them.
		platforms[strings.ToLower(l)] = "-self-hosted"
	}
	server := strings.TrimRight(ContextString(spec.Context, "server_url"), "/")
	res := &actionResolver{
		server:    server,
		defaults:  DefaultActionsURL(spec.Context),
		overrides: map[string]string{},
		cache:     actrunner.GoGitActionCache{Path: spec.ActionCacheDir + "/actions"},
	}
	for _, s := range p.Job.Steps {
		if err := res.rewrite(s); err != nil {
			return nil, err
		}
	}
	instance := "github.com"
	if u, err := url.Parse(server); err == nil && u.Host != "" {
		instance = u.Host
	}
	cfg := &actrunner.Config{
		Actor:          ContextString(spec.Context, "actor"),
		Workdir:        spec.Workdir,
		ActionCacheDir: spec.ActionCacheDir,
		EventName:      ContextString(spec.Context, "event_name"),
		EventPath:      eventPath,
		DefaultBranch:  "main",
		LogOutput:      true,
		Env:            env,
		Secrets:        spec.Secrets,
		Vars:           spec.Vars,
		Token:          ContextString(spec.Context, "token"),
		Platforms:      platforms,
		GitHubInstance: instance,
		// The forge gave no local copy of the repository: a checkout step
		// must really run.
		NoSkipCheckout: true,
		AutoRemove:     true,
		ActionCache:    res,
	}
	if cfg.Secrets == nil {
		cfg.Secrets = map[string]string{}
	}
	if t := cfg.Token; t != "" {
		// act masks secrets; the task token is one.
		cfg.Secrets["GITHUB_TOKEN"] = t
	}
	return cfg, nil
}

// actionResolver fetches remote actions: `owner/repo@ref` from the forge's
// default actions URL, and `https://host/owner/repo@ref` from that host.
// act only knows the first form, resolved against the server URL, so
// absolute ones are rewritten to the short form before planning and
// remembered here.
type actionResolver struct {
	server, defaults string
	overrides        map[string]string // "owner/repo" → base URL
	cache            actrunner.GoGitActionCache
}

func (a *actionResolver) rewrite(s *model.Step) error {
	if !strings.HasPrefix(s.Uses, "https://") && !strings.HasPrefix(s.Uses, "http://") {
		return nil
	}
	u, err := url.Parse(s.Uses)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: step uses %q is not a valid URL", ErrPayload, s.Uses)
	}
	parts := strings.SplitN(strings.TrimPrefix(u.Path, "/"), "/", 3)
	if len(parts) < 2 || !strings.Contains(s.Uses, "@") {
		return fmt.Errorf("%w: step uses %q: want https://host/owner/repo[/path]@ref", ErrPayload, s.Uses)
	}
	repo := parts[0] + "/" + strings.SplitN(parts[1], "@", 2)[0]
	base := u.Scheme + "://" + u.Host
	if prev, ok := a.overrides[repo]; ok && prev != base {
		return fmt.Errorf("%w: %s is used from two hosts (%s and %s)", ErrPayload, repo, prev, base)
	}
	a.overrides[repo] = base
	s.Uses = strings.TrimPrefix(u.Path, "/")
	return nil
}

func (a *actionResolver) resolve(cacheDir, rawURL string) string {
	if base, ok := a.overrides[cacheDir]; ok {
		return base + "/" + cacheDir
	}
	if a.server != "" && strings.HasPrefix(rawURL, a.server+"/") {
		return a.defaults + "/" + cacheDir
	}
	return rawURL
}

func (a *actionResolver) Fetch(ctx context.Context, cacheDir, rawURL, ref, token string) (string, error) {
	u := a.resolve(cacheDir, rawURL)
	if !sameHost(u, a.server) {
		token = "" // the task token is the forge's, never another host's
	}
	return a.cache.Fetch(ctx, cacheDir, u, ref, token)
}

func (a *actionResolver) GetTarArchive(ctx context.Context, cacheDir, sha, includePrefix string) (io.ReadCloser, error) {
	return a.cache.GetTarArchive(ctx, cacheDir, sha, includePrefix)
}

type loggerFactory struct{ l *logrus.Logger }

func (f loggerFactory) WithJobLogger() *logrus.Logger { return f.l }

// eventFormatter turns act's log entries into Events. act wraps it in its
// masking formatter, so Message arrives masked; no other field is copied,
// because act's fields (raw command lines, args) are not masked.
type eventFormatter struct{}

func (eventFormatter) Format(e *logrus.Entry) ([]byte, error) {
	ev := Event{Time: e.Time, Level: e.Level.String(), Msg: e.Message}
	if raw, _ := e.Data["raw_output"].(bool); raw {
		ev.Raw = true
	}
	if ids, ok := e.Data["stepID"].([]string); ok && len(ids) > 0 {
		ev.Step = ids[0]
	}
	if s, ok := e.Data["stage"].(string); ok {
		ev.Stage = s
	}
	if r, ok := e.Data["stepResult"]; ok {
		ev.StepResult = fmt.Sprint(r)
	}
	if r, ok := e.Data["jobResult"]; ok {
		ev.JobResult = fmt.Sprint(r)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

type eventWriter struct{ w io.Writer }

func (e *eventWriter) Write(p []byte) (int, error) { return e.w.Write(p) }

func (e *eventWriter) write(ev Event) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = e.w.Write(append(b, '\n'))
	return err
}

// Serve is the job process: it reads a Spec from r (the runner writes it
// to stdin), runs the job, and writes events to w (stdout). SIGTERM or
// SIGINT cancel the job: act then runs what must run on cancellation
// before the runner's grace period ends.
func Serve(ctx context.Context, r io.Reader, w io.Writer) error {
	var spec Spec
	dec := json.NewDecoder(io.LimitReader(r, 64<<20))
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("job spec: %w", err)
	}
	if spec.Sandbox != nil {
		if err := enterSandbox(spec.Sandbox); err != nil {
			return fmt.Errorf("job sandbox: %w", err)
		}
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	return Run(ctx, &spec, w)
}
