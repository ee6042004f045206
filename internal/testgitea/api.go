package testgitea

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"
)

// jobPoll is how often WaitJob asks the API; short, because the API is local.
const jobPoll = 200 * time.Millisecond

// errJobPending marks WaitJob's reasons to keep waiting.
var errJobPending = errors.New("job not finished")

// Job is one Actions job as the API reports it.
type Job struct {
	ID         int64
	RunID      int64
	Name       string
	Status     string // queued, waiting, in_progress or completed
	Conclusion string // success, failure, cancelled or skipped once completed
}

// CreateRepo creates a repository owned by the admin, initialised with a
// README on branch main, and returns its owner and name.
func (f *Forge) CreateRepo(t testing.TB, name string) (owner, repo string) {
	t.Helper()
	r, _, err := f.client.CreateRepo(gitea.CreateRepoOption{
		Name:          name,
		AutoInit:      true,
		Readme:        "Default",
		DefaultBranch: "main",
	})
	if err != nil {
		t.Fatalf("testgitea: create repo %s: %v", name, err)
	}
	return r.Owner.UserName, r.Name
}

// PutFile creates or updates path on main through the contents API. The
// commit is a push, so it triggers workflows like a git push does.
func (f *Forge) PutFile(t testing.TB, owner, repo, path string, content []byte) {
	t.Helper()
	opts := gitea.FileOptions{Message: "testgitea: put " + path, BranchName: "main"}
	data := base64.StdEncoding.EncodeToString(content)
	cur, resp, err := f.client.GetContents(owner, repo, "main", path)
	switch {
	case errNotFound(resp, err):
		_, _, err = f.client.CreateFile(owner, repo, path, gitea.CreateFileOptions{FileOptions: opts, Content: data})
	case err != nil:
		t.Fatalf("testgitea: look up %s/%s:%s: %v", owner, repo, path, err)
	default:
		_, _, err = f.client.UpdateFile(owner, repo, path, gitea.UpdateFileOptions{FileOptions: opts, SHA: cur.SHA, Content: data})
	}
	if err != nil {
		t.Fatalf("testgitea: put %s/%s:%s: %v", owner, repo, path, err)
	}
}

// SetSecret creates or replaces a repository Actions secret.
func (f *Forge) SetSecret(t testing.TB, owner, repo, name, value string) {
	t.Helper()
	if _, err := f.client.CreateRepoActionSecret(owner, repo, name, gitea.CreateOrUpdateSecretOption{Data: value}); err != nil {
		t.Fatalf("testgitea: set secret %s on %s/%s: %v", name, owner, repo, err)
	}
}

// RunnerRegistrationToken returns an instance-level registration token, so
// the runner may take jobs of any repository.
func (f *Forge) RunnerRegistrationToken(t testing.TB) string {
	t.Helper()
	tok, _, err := f.client.CreateAdminActionRunnerRegistrationToken()
	if err != nil {
		t.Fatalf("testgitea: runner registration token: %v", err)
	}
	return tok.Token
}

// WaitJob waits until the first job of the repository's newest workflow run
// has completed, and returns it. It fails the test after timeout with the
// last state it saw.
func (f *Forge) WaitJob(t testing.TB, owner, repo string, timeout time.Duration) Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		job, err := f.newestJob(owner, repo)
		if err == nil && job.Status == "completed" {
			return job
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("%w: job %d %q is %s", errJobPending, job.ID, job.Name, job.Status)
			}
			t.Fatalf("testgitea: wait for job in %s/%s after %s: %v", owner, repo, timeout, err)
		}
		time.Sleep(jobPoll)
	}
}

// JobFailed returns an error with its log when the repository's newest
// job has completed without success, and nil while it runs, before it
// starts, or once it succeeded: a test waiting for what a job writes can
// stop at once, and say why, when the job failed.
func (f *Forge) JobFailed(t testing.TB, owner, repo string) error {
	t.Helper()
	job, err := f.newestJob(owner, repo)
	if err != nil || job.Status != "completed" || job.Conclusion == "success" {
		return nil
	}
	return fmt.Errorf("job %d %q of %s/%s ended: %s\n%s", job.ID, job.Name, owner, repo, job.Conclusion, f.JobLogs(t, owner, repo, job.ID))
}

func (f *Forge) newestJob(owner, repo string) (Job, error) {
	runs, _, err := f.client.ListRepoActionRuns(owner, repo, gitea.ListRepoActionRunsOptions{
		ListOptions: gitea.ListOptions{Page: 1, PageSize: 1}, // newest first
	})
	if err != nil {
		return Job{}, fmt.Errorf("list runs: %w", err)
	}
	if len(runs.WorkflowRuns) == 0 {
		return Job{}, fmt.Errorf("%w: no workflow run yet", errJobPending)
	}
	run := runs.WorkflowRuns[0]
	jobs, _, err := f.client.ListRepoActionRunJobs(owner, repo, run.ID, gitea.ListRepoActionJobsOptions{})
	if err != nil {
		return Job{}, fmt.Errorf("list jobs of run %d: %w", run.ID, err)
	}
	if len(jobs.Jobs) == 0 {
		return Job{}, fmt.Errorf("%w: run %d has no jobs yet", errJobPending, run.ID)
	}
	// The API lists jobs in creation order; the first is the first in the
	// workflow file.
	j := jobs.Jobs[0]
	return Job{ID: j.ID, RunID: run.ID, Name: j.Name, Status: j.Status, Conclusion: j.Conclusion}, nil
}

// JobLogs returns the job's log as the API serves it: one line per log row,
// each prefixed with its timestamp.
func (f *Forge) JobLogs(t testing.TB, owner, repo string, jobID int64) string {
	t.Helper()
	b, _, err := f.client.GetRepoActionJobLogs(owner, repo, jobID)
	if err != nil {
		t.Fatalf("testgitea: logs of job %d in %s/%s: %v", jobID, owner, repo, err)
	}
	return string(b)
}

// errNotFound reports whether an SDK call failed with 404.
func errNotFound(resp *gitea.Response, err error) bool {
	return err != nil && resp != nil && resp.StatusCode == http.StatusNotFound
}

// HeadSHA returns the commit main points at.
func (f *Forge) HeadSHA(t testing.TB, owner, repo string) string {
	t.Helper()
	b, _, err := f.client.GetRepoBranch(owner, repo, "main")
	if err != nil {
		t.Fatalf("testgitea: branch main of %s/%s: %v", owner, repo, err)
	}
	return b.Commit.ID
}

// Status is owner/repo@sha's current status named context (the newest
// one, as the combined status shows it), or nil.
func (f *Forge) Status(t testing.TB, owner, repo, sha, context string) *gitea.Status {
	t.Helper()
	comb, _, err := f.client.GetCombinedStatus(owner, repo, sha)
	if err != nil {
		t.Fatalf("testgitea: statuses of %s/%s@%s: %v", owner, repo, sha, err)
	}
	for _, st := range comb.Statuses {
		if st.Context == context {
			return st
		}
	}
	return nil
}

// WaitStatus waits until owner/repo@sha's current status named context
// is in state, and returns it.
func (f *Forge) WaitStatus(t testing.TB, owner, repo, sha, context string, state gitea.StatusState, timeout time.Duration) *gitea.Status {
	t.Helper()
	for deadline := time.Now().Add(timeout); ; time.Sleep(jobPoll) {
		st := f.Status(t, owner, repo, sha, context)
		if st != nil && st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("testgitea: status %s of %s/%s@%s is %+v after %s, want %s", context, owner, repo, sha, st, timeout, state)
		}
	}
}

// CreateRelease creates tag on main and a published release of it, and
// returns the release's id.
func (f *Forge) CreateRelease(t testing.TB, owner, repo, tag string) int64 {
	t.Helper()
	r, _, err := f.client.CreateRelease(owner, repo, gitea.CreateReleaseOption{
		TagName: tag, Target: "main", Title: tag, Note: "testgitea release",
	})
	if err != nil {
		t.Fatalf("testgitea: release %s of %s/%s: %v", tag, owner, repo, err)
	}
	return r.ID
}

// CreateTag creates a lightweight tag on main without a release.
func (f *Forge) CreateTag(t testing.TB, owner, repo, tag string) {
	t.Helper()
	if _, _, err := f.client.CreateTag(owner, repo, gitea.CreateTagOption{TagName: tag, Target: "main"}); err != nil {
		t.Fatalf("testgitea: tag %s of %s/%s: %v", tag, owner, repo, err)
	}
}
