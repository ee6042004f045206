package testgitea_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"code.gitea.io/actions-proto-go/runner/v1/runnerv1connect"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"codeberg.org/provenix/provenix/internal/testgitea"
)

// The Forgejo directory, which the forge is configured to read too; the
// runner's own tests use the same path against Forgejo.
const workflowPath = ".forgejo/workflows/test.yml"

const workflow = `on: [push]
jobs:
  hello:
    runs-on: nix
    steps:
      - run: echo hi
`

// TestForgeRunsAJobForARawRunner drives one workflow job end to end with
// nothing but the runner protocol: the forge is only useful to the runner's
// tests if a push turns into a task a runner can fetch and finish.
func TestForgeRunsAJobForARawRunner(t *testing.T) {
	f := testgitea.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	owner, repo := f.CreateRepo(t, "hello")
	f.SetSecret(t, owner, repo, "GREETING", "hi")
	regToken := f.RunnerRegistrationToken(t)

	rc := runnerv1connect.NewRunnerServiceClient(&http.Client{Timeout: 10 * time.Second}, f.RunnerURL())
	reg, err := rc.Register(ctx, connect.NewRequest(&runnerv1.RegisterRequest{
		Name: "testgitea", Token: regToken, Version: "provenix-test", Labels: []string{"nix"},
	}))
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	id := runnerID{uuid: reg.Msg.Runner.Uuid, token: reg.Msg.Runner.Token}
	if _, err := rc.Declare(ctx, authed(id, &runnerv1.DeclareRequest{
		Version: "provenix-test", Labels: []string{"nix"},
	})); err != nil {
		t.Fatalf("Declare: %v", err)
	}

	// Push the workflow only now, so the task is certainly created after
	// the runner exists and FetchTask has to deliver it.
	f.PutFile(t, owner, repo, workflowPath, []byte(workflow))
	task := fetchTask(ctx, t, rc, id, 60*time.Second)

	if !strings.Contains(string(task.WorkflowPayload), "echo hi") {
		t.Errorf("workflow payload does not mention `echo hi`:\n%s", task.WorkflowPayload)
	}
	github := task.Context.GetFields()
	if got, want := github["repository"].GetStringValue(), owner+"/"+repo; got != want {
		t.Errorf("github.repository = %q, want %q", got, want)
	}
	if got := task.Secrets["GREETING"]; got != "hi" {
		t.Errorf("secret GREETING = %q, want %q", got, "hi")
	}

	now := timestamppb.Now()
	if _, err := rc.UpdateLog(ctx, authed(id, &runnerv1.UpdateLogRequest{
		TaskId: task.Id, Index: 0, NoMore: true,
		Rows: []*runnerv1.LogRow{{Time: now, Content: "hi from the raw runner"}},
	})); err != nil {
		t.Fatalf("UpdateLog: %v", err)
	}
	if _, err := rc.UpdateTask(ctx, authed(id, &runnerv1.UpdateTaskRequest{
		State: &runnerv1.TaskState{Id: task.Id, Result: runnerv1.Result_RESULT_SUCCESS, StartedAt: now, StoppedAt: timestamppb.Now()},
	})); err != nil {
		t.Fatalf("UpdateTask: %v", err)
	}

	job := f.WaitJob(t, owner, repo, 30*time.Second)
	if job.Conclusion != "success" {
		t.Fatalf("job %d %q: status %s conclusion %q, want success", job.ID, job.Name, job.Status, job.Conclusion)
	}
	if logs := f.JobLogs(t, owner, repo, job.ID); !strings.Contains(logs, "hi from the raw runner") {
		t.Errorf("job log lacks the line the runner sent:\n%s", logs)
	}
}

// runnerID is what Register hands out and every later call must present.
type runnerID struct{ uuid, token string }

func authed[T any](id runnerID, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set("x-runner-uuid", id.uuid)
	r.Header().Set("x-runner-token", id.token)
	return r
}

// fetchTask polls like a runner does, passing back the tasks version the
// forge returned, until a task arrives or timeout passes.
func fetchTask(ctx context.Context, t *testing.T, rc runnerv1connect.RunnerServiceClient, id runnerID, timeout time.Duration) *runnerv1.Task {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var version int64
	for {
		res, err := rc.FetchTask(ctx, authed(id, &runnerv1.FetchTaskRequest{TasksVersion: version}))
		if err != nil {
			t.Fatalf("FetchTask: %v", err)
		}
		if res.Msg.Task != nil {
			return res.Msg.Task
		}
		version = res.Msg.TasksVersion
		if time.Now().After(deadline) {
			t.Fatalf("FetchTask: no task after %s (tasks version %d)", timeout, version)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
