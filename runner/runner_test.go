package runner

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"google.golang.org/protobuf/types/known/structpb"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/runner/job"
	"codeberg.org/provenix/provenix/runner/rpc"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

// execJobArg makes the test binary act as the job process, so these tests
// run the real child without building the provenix binary.
const execJobArg = "provenix-test-exec-job"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == execJobArg {
		if err := job.Serve(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childBinary copies the test binary where the job user can run it.
func childBinary(t testing.TB) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(testfs.OpenDir(t), "job.test")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

type fixture struct {
	srv    *rpctest.Server
	runner *Runner
	dir    string
}

func newFixture(t testing.TB, mod func(*Options)) *fixture {
	t.Helper()
	return newBuilderFixture(t, nil, mod)
}

// newBuilderFixture is newFixture with a runner that attests with b.
func newBuilderFixture(t testing.TB, b *builder.Builder, mod func(*Options)) *fixture {
	t.Helper()
	srv := rpctest.New(t)
	reg := srv.AddRunner(rpctest.Runner{UUID: "0b5e5f5c-1111-4222-8333-444455556666", Token: "runner-token-secret", Name: "t", Labels: []string{"nix"}})
	cl, err := rpc.New(srv.URL, rpc.WithCredentials(reg.UUID, reg.Token), rpc.WithHTTPClient(srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	dir := testfs.OpenDir(t)
	opts := Options{
		Labels: []string{"nix"}, Capacity: 1, FetchInterval: 50 * time.Millisecond, FetchTimeout: time.Second,
		ReportInterval: 100 * time.Millisecond, WorkdirParent: filepath.Join(dir, "work"),
		ChildCommand: []string{childBinary(t), execJobArg}, Version: "test",
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		JobUser: testJobUser,
		// Its own: not other tests' runners, in this package or another.
		JobWindowsDir: filepath.Join(dir, "windows"),
	}
	if mod != nil {
		mod(&opts)
	}
	r, err := New(cl, b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return &fixture{srv: srv, runner: r, dir: dir}
}

// testJobUser exists on CI machines (scripts/install-deps.sh creates it).
const testJobUser = "provenix-job"

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func task(t testing.TB, payload string, secrets map[string]string) *runnerv1.Task {
	t.Helper()
	ctx, err := structpb.NewStruct(map[string]any{
		"server_url": "http://forge.test", "repository": "alice/pkgs", "repository_owner": "alice",
		"ref": "refs/heads/main", "sha": "89abcdef0123456789abcdef0123456789abcdef", "event_name": "push",
		"actor": "alice", "run_id": "12", "run_number": "3", "workflow": "build.yml", "job": "build",
		"token": "forge-task-token-xyz", "event": map[string]any{"ref": "refs/heads/main"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &runnerv1.Task{WorkflowPayload: []byte(payload), Context: ctx, Secrets: secrets}
}

func runOne(t *testing.T, f *fixture) runnerv1.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := f.runner.RunOne(ctx)
	if err != nil {
		t.Fatalf("RunOne: %v", err)
	}
	return res
}

const twoSteps = `name: build
on: push
jobs:
  build:
    runs-on: nix
    outputs:
      greeting: ${{ steps.first.outputs.greeting }}
    steps:
      - id: first
        name: first step
        run: |
          echo "hello from step one"
          echo "the secret is ${{ secrets.API_KEY }}"
          echo "greeting=hi" >> "$GITHUB_OUTPUT"
      - name: second step
        run: echo "step two sees ${{ steps.first.outputs.greeting }}"
`

// TestProtocolSequence runs a real workflow through the runner against the
// protocol test server and checks the exact RPCs and what they carried.
func TestProtocolSequence(t *testing.T) {
	f := newFixture(t, nil)
	id := f.srv.AddTask(task(t, twoSteps, map[string]string{"API_KEY": "s3cr3t-api-key"}), "nix")
	if got := runOne(t, f); got != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("result %v", got)
	}
	st, ok := f.srv.Task(id)
	if !ok {
		t.Fatal("task unknown to the server")
	}

	// Sequence: Declare, then FetchTask until the task came, then only
	// UpdateLog/UpdateTask; the last calls close the log and set the result.
	methods := f.srv.Methods()
	if methods[0] != rpctest.Declare || methods[1] != rpctest.FetchTask {
		t.Fatalf("calls start %v", methods[:2])
	}
	for _, m := range methods[2:] {
		if m != rpctest.UpdateLog && m != rpctest.UpdateTask {
			t.Fatalf("unexpected call %s after the fetch: %v", m, methods)
		}
	}
	for _, c := range f.srv.Calls() {
		if c.UUID != "0b5e5f5c-1111-4222-8333-444455556666" || c.Token != "runner-token-secret" {
			t.Fatalf("%s without runner credentials: %q %q", c.Method, c.UUID, c.Token)
		}
		if c.Method == rpctest.FetchTask && c.RequestKey == "" {
			t.Fatal("FetchTask without x-runner-request-key")
		}
	}
	logs := f.srv.CallsTo(rpctest.UpdateLog)
	if last := logs[len(logs)-1].Request.(*runnerv1.UpdateLogRequest); !last.NoMore {
		t.Error("last UpdateLog lacks no_more")
	}
	tasks := f.srv.CallsTo(rpctest.UpdateTask)
	last := tasks[len(tasks)-1].Request.(*runnerv1.UpdateTaskRequest)
	if last.State.Result != runnerv1.Result_RESULT_SUCCESS || last.State.StoppedAt == nil {
		t.Errorf("final state %v", last.State)
	}
	if !st.LogsClosed || st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Errorf("server saw logs closed=%v result=%v", st.LogsClosed, st.Result)
	}
	if st.Outputs["greeting"] != "hi" {
		t.Errorf("outputs %v", st.Outputs)
	}

	// One StepState per workflow step, indexed 0..n-1, each pointing at
	// its own lines of the job log.
	lines := st.LogLines()
	if len(st.State.Steps) != 2 {
		t.Fatalf("%d step states", len(st.State.Steps))
	}
	for i, s := range st.State.Steps {
		if s.Id != int64(i) || s.Result != runnerv1.Result_RESULT_SUCCESS || s.StartedAt == nil || s.StoppedAt == nil {
			t.Errorf("step %d state %v", i, s)
		}
		if s.LogIndex < 0 || s.LogLength <= 0 || s.LogIndex+s.LogLength > int64(len(lines)) {
			t.Fatalf("step %d log window %d+%d of %d lines", i, s.LogIndex, s.LogLength, len(lines))
		}
	}
	step0 := strings.Join(lines[st.State.Steps[0].LogIndex:st.State.Steps[0].LogIndex+st.State.Steps[0].LogLength], "\n")
	step1 := strings.Join(lines[st.State.Steps[1].LogIndex:st.State.Steps[1].LogIndex+st.State.Steps[1].LogLength], "\n")
	if !strings.Contains(step0, "hello from step one") || strings.Contains(step0, "step two sees") {
		t.Errorf("step 0 lines:\n%s", step0)
	}
	if !strings.Contains(step1, "step two sees hi") {
		t.Errorf("step 1 lines:\n%s", step1)
	}
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, "the secret is ***") {
		t.Errorf("masked secret line missing:\n%s", all)
	}
	for _, leak := range []string{"s3cr3t-api-key", "forge-task-token-xyz"} {
		if strings.Contains(all, leak) {
			t.Errorf("%q leaked into the forge's log", leak)
		}
	}
}

func TestCancelFromForge(t *testing.T) {
	f := newFixture(t, nil)
	id := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo started; sleep 120\n", nil), "nix")
	go func() {
		// Cancel once the step is running.
		for {
			if st, ok := f.srv.Task(id); ok && strings.Contains(strings.Join(st.LogLines(), "\n"), "started") {
				_ = f.srv.Cancel(id)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	start := time.Now()
	if got := runOne(t, f); got != runnerv1.Result_RESULT_CANCELLED {
		t.Fatalf("result %v", got)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("cancel took %v", d)
	}
	st, _ := f.srv.Task(id)
	if !strings.Contains(strings.Join(st.LogLines(), "\n"), "cancelled on the forge") {
		t.Errorf("no cancel line:\n%s", strings.Join(st.LogLines(), "\n"))
	}
}

func TestTimeoutCancels(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.Timeout = 2 * time.Second })
	id := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: sleep 120\n", nil), "nix")
	if got := runOne(t, f); got != runnerv1.Result_RESULT_CANCELLED {
		t.Fatalf("result %v", got)
	}
	st, _ := f.srv.Task(id)
	if st.Result != runnerv1.Result_RESULT_CANCELLED {
		t.Errorf("server result %v", st.Result)
	}
	if !strings.Contains(strings.Join(st.LogLines(), "\n"), "exceeded its timeout") {
		t.Errorf("no timeout line:\n%s", strings.Join(st.LogLines(), "\n"))
	}
}

// TestMalformedPayloadKeepsPolling: a task the runner cannot parse fails
// with a clear line, and the daemon goes on to the next task.
func TestMalformedPayloadKeepsPolling(t *testing.T) {
	f := newFixture(t, nil)
	bad := f.srv.AddTask(task(t, "jobs: [this is: not a workflow", nil), "nix")
	good := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo fine\n", nil), "nix")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
	defer wcancel()
	st, err := f.srv.WaitTask(wctx, good)
	cancel()
	if err != nil {
		t.Fatalf("good task: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Errorf("good task %v", st.Result)
	}
	b, _ := f.srv.Task(bad)
	if b.Result != runnerv1.Result_RESULT_FAILURE {
		t.Errorf("bad task %v", b.Result)
	}
	if !slices.ContainsFunc(b.LogLines(), func(l string) bool { return strings.Contains(l, "cannot run this job: invalid workflow payload") }) {
		t.Errorf("bad task log:\n%s", strings.Join(b.LogLines(), "\n"))
	}
}

// TestJobCannotReadRunnerSecrets: with the runner as root, a step runs as
// the job user and can read neither the signing key nor the .runner file.
func TestJobCannotReadRunnerSecrets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test proves privilege separation and must run as root (CI does)")
	}
	f := newFixture(t, nil)
	secretDir := filepath.Join(f.dir, "state")
	if err := os.Mkdir(secretDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(secretDir, "builder.key")
	runnerFile := filepath.Join(secretDir, ".runner")
	for _, p := range []string{key, runnerFile} {
		if err := os.WriteFile(p, []byte("TOP-SECRET-"+filepath.Base(p)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Even a file the job could reach by path is protected by its mode.
	exposed := filepath.Join(f.dir, "builder.key")
	if err := os.WriteFile(exposed, []byte("TOP-SECRET-exposed"), 0o600); err != nil {
		t.Fatal(err)
	}
	payload := fmt.Sprintf(`on: push
jobs:
  j:
    runs-on: nix
    steps:
      - id: whoami
        run: id -un
      - id: key
        continue-on-error: true
        run: cat %[1]s
      - id: runnerfile
        continue-on-error: true
        run: cat %[2]s
      - id: exposed
        continue-on-error: true
        run: cat %[3]s
      - id: env
        run: env | grep -c TOP-SECRET || true
`, key, runnerFile, exposed)
	id := f.srv.AddTask(task(t, payload, nil), "nix")
	runOne(t, f)
	st, _ := f.srv.Task(id)
	log := strings.Join(st.LogLines(), "\n")
	if strings.Contains(log, "TOP-SECRET-") {
		t.Fatalf("a job step read a runner secret:\n%s", log)
	}
	for i := 1; i <= 3; i++ {
		if r := st.State.Steps[i].Result; r != runnerv1.Result_RESULT_FAILURE {
			t.Errorf("step %d reading a secret: %v, want failure", i, r)
		}
	}
	if !strings.Contains(log, "Permission denied") {
		t.Errorf("no permission error in the log:\n%s", log)
	}
	if !strings.Contains(log, testJobUser) {
		t.Errorf("steps did not run as %s:\n%s", testJobUser, log)
	}
}

// TestGracefulShutdown: stopping the daemon lets a running job finish
// within shutdown_timeout, and cancels (and reports) one that would not.
func TestGracefulShutdown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		shutdown time.Duration
		want     runnerv1.Result
	}{
		{"finishes", time.Minute, runnerv1.Result_RESULT_SUCCESS},
		{"cancelled", 200 * time.Millisecond, runnerv1.Result_RESULT_CANCELLED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(o *Options) { o.ShutdownTimeout = tc.shutdown })
			id := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo started; sleep 3; echo finished\n", nil), "nix")
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- f.runner.Run(ctx) }()
			for {
				if st, ok := f.srv.Task(id); ok && slices.ContainsFunc(st.LogLines(), func(l string) bool { return l == "started" }) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel() // SIGTERM
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			st, _ := f.srv.Task(id)
			if st.Result != tc.want {
				t.Fatalf("result %v, want %v\n%s", st.Result, tc.want, strings.Join(st.LogLines(), "\n"))
			}
			polls := len(f.srv.CallsTo(rpctest.FetchTask))
			time.Sleep(300 * time.Millisecond)
			if len(f.srv.CallsTo(rpctest.FetchTask)) != polls {
				t.Error("the runner kept polling after shutdown")
			}
		})
	}
}
