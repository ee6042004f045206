// Package job runs one Forgejo Actions job on the host with the act engine
// (github.com/nektos/act) and reports what happens as a stream of JSON
// events. It is the unprivileged half of the runner: it runs in a child
// process, as the job user, with nothing of the runner's but the task
// itself — the runner's key, its .runner token and its NATS credentials
// stay in the parent, which reads the events and talks to the forge.
package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"

	"github.com/nektos/act/pkg/model"
)

// ErrPayload marks a workflow payload the runner cannot run: malformed
// YAML, no job, more than one job, or a job without steps.
var ErrPayload = errors.New("invalid workflow payload")

// Spec is everything the child needs to run a task. The parent writes it
// as JSON to the child's stdin.
type Spec struct {
	TaskID  int64  `json:"taskId"`
	Payload []byte `json:"payload"`
	// Context is the task's github context as the forge sent it.
	Context map[string]any    `json:"context"`
	Secrets map[string]string `json:"secrets,omitempty"`
	Vars    map[string]string `json:"vars,omitempty"`
	Needs   map[string]Need   `json:"needs,omitempty"`
	// Env is added to every step's environment: the runner's envs and
	// env_file, and the per-job socket of the runner's attestation service.
	Env map[string]string `json:"env,omitempty"`
	// Labels are the runner's label names; every one maps to the host.
	Labels []string `json:"labels,omitempty"`
	// Workdir is where act looks for git metadata of the repository; it
	// starts empty, as the forge sends no checkout. The job's workspace
	// (GITHUB_WORKSPACE), RUNNER_TEMP and fetched actions live under
	// ActionCacheDir, which the parent removes after the job.
	Workdir        string `json:"workdir"`
	ActionCacheDir string `json:"actionCacheDir"`
	// Sandbox, when set, is entered before anything else: the runner then
	// starts the job process as root in a mount namespace of its own, and
	// the process gives itself a private /tmp and becomes the job user.
	Sandbox *Sandbox `json:"sandbox,omitempty"`
}

// Sandbox is what the job process does as root before it runs the job.
type Sandbox struct {
	// Tmp is bound over /tmp and /var/tmp: the job's own, 0700 directory.
	Tmp    string   `json:"tmp"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}

// Need is the result of a job this one needs, as the forge reports it.
type Need struct {
	Outputs map[string]string `json:"outputs,omitempty"`
	Result  string            `json:"result"`
}

// Step is one workflow step as the forge numbers it.
type Step struct {
	Index int
	ID    string // the step's id, or its index as act names unnamed steps
	Name  string
}

// Parsed is a task's single job.
type Parsed struct {
	Workflow *model.Workflow
	JobID    string
	Job      *model.Job
	Steps    []Step
}

// Parse reads the single-job workflow payload Forgejo sends with a task.
func Parse(payload []byte) (*Parsed, error) {
	if len(strings.TrimSpace(string(payload))) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrPayload)
	}
	wf, err := model.ReadWorkflow(strings.NewReader(string(payload)), false)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPayload, err)
	}
	if wf == nil || len(wf.Jobs) != 1 {
		n := 0
		if wf != nil {
			n = len(wf.Jobs)
		}
		return nil, fmt.Errorf("%w: want exactly one job, found %d", ErrPayload, n)
	}
	var id string
	for k := range wf.Jobs {
		id = k
	}
	j := wf.GetJob(id)
	if j == nil {
		return nil, fmt.Errorf("%w: job %q is empty", ErrPayload, id)
	}
	if j.Uses != "" {
		// A reusable-workflow call is expanded by the forge into its own
		// jobs; a payload still carrying one is not runnable here.
		return nil, fmt.Errorf("%w: job %q calls reusable workflow %q, which the forge should have expanded", ErrPayload, id, j.Uses)
	}
	if len(j.Steps) == 0 {
		return nil, fmt.Errorf("%w: job %q has no steps", ErrPayload, id)
	}
	p := &Parsed{Workflow: wf, JobID: id, Job: j}
	for i, s := range j.Steps {
		if s == nil {
			return nil, fmt.Errorf("%w: job %q step %d is empty", ErrPayload, id, i)
		}
		if s.Type() == model.StepTypeInvalid {
			return nil, fmt.Errorf("%w: job %q step %d needs exactly one of run or uses", ErrPayload, id, i)
		}
		sid := s.ID
		if sid == "" {
			sid = fmt.Sprint(i) // act's own name for a step without id
		}
		p.Steps = append(p.Steps, Step{Index: i, ID: sid, Name: s.String()})
	}
	return p, nil
}

// ContextString reads a string key of the task's github context.
func ContextString(ctx map[string]any, key string) string {
	if v, ok := ctx[key].(string); ok {
		return v
	}
	return ""
}

// githubEnv maps the task context to the GITHUB_* variables act builds the
// github context from, so expressions and steps see the forge's values
// rather than act's defaults.
func githubEnv(c map[string]any) map[string]string {
	env := map[string]string{}
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, ok := c[k].(string)
		if !ok || k == "token" {
			continue
		}
		switch {
		case strings.HasPrefix(k, "gitea_"), strings.HasPrefix(k, "forgejo_"):
			// Forge extensions travel too, as FORGEJO_*/GITEA_* variables.
			env[strings.ToUpper(k)] = v
		default:
			env["GITHUB_"+strings.ToUpper(k)] = v
		}
	}
	// act reads the commit from SHA_REF.
	if sha := ContextString(c, "sha"); sha != "" {
		env["SHA_REF"] = sha
	}
	// OIDC: Forgejo names these forgejo_actions_id_token_request_*; actions
	// such as sigstore's expect the GitHub names.
	if u := ContextString(c, "forgejo_actions_id_token_request_url"); u != "" {
		env["ACTIONS_ID_TOKEN_REQUEST_URL"] = u
	}
	if t := ContextString(c, "forgejo_actions_id_token_request_token"); t != "" {
		env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = t
	}
	if t := ContextString(c, "gitea_runtime_token"); t != "" {
		env["ACTIONS_RUNTIME_TOKEN"] = t
	}
	env["GITHUB_ACTIONS"] = "true"
	env["CI"] = "true"
	return env
}

// DefaultActionsURL is where `uses: owner/repo@ref` resolves: the forge's
// configured default actions instance, else the forge itself.
func DefaultActionsURL(c map[string]any) string {
	for _, k := range []string{"forgejo_default_actions_url", "gitea_default_actions_url"} {
		if u := strings.TrimRight(ContextString(c, k), "/"); u != "" {
			return u
		}
	}
	return strings.TrimRight(ContextString(c, "server_url"), "/")
}

// eventJSON is the event payload act writes to GITHUB_EVENT_PATH.
func eventJSON(c map[string]any) (string, error) {
	ev, ok := c["event"]
	if !ok || ev == nil {
		return "{}", nil
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return "", fmt.Errorf("event payload: %w", err)
	}
	return string(b), nil
}

// sameHost reports whether two URLs name the same scheme and host, so the
// task token is only ever sent back to the forge that issued it.
func sameHost(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && ua.Host != "" && strings.EqualFold(ua.Host, ub.Host) && ua.Scheme == ub.Scheme
}
