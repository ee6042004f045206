package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"google.golang.org/protobuf/types/known/structpb"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
	"codeberg.org/provenix/provenix/up"
)

// TestRunnerDaemonVolunteers: `provenix runner daemon` with
// provenix.volunteer builds a submitted chain for the farm while the
// forge has no job for it (with the host's Nix, signed with its key,
// published through the pusher), and still runs the job that comes
// next.
func TestRunnerDaemonVolunteers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the runner end-to-end tests run the runner as root with jobs as " + jobUser + "; run it as root (CI does)")
	}
	busybox := requireNix(t)
	requireNixDaemon(t)
	ctx := testctx.New(t, 8*time.Minute)
	bin := buildProvenix(t)
	forge := rpctest.New(t)

	const runnerName = "idle-runner"
	stack := startRunnerStack(t, "forgejo-runner:"+runnerName, "", up.Config{DataDir: t.TempDir()})
	p := stack.Paths()
	runDir := t.TempDir()
	reg := exec.CommandContext(ctx, bin, "runner", "register", "--no-interactive",
		"--instance", forge.URL, "--token", rpctest.DefaultRegistrationToken, "--name", runnerName, "--labels", "nix")
	reg.Dir = runDir
	if out, err := reg.CombinedOutput(); err != nil {
		t.Fatalf("runner register: %v\n%s", err, out)
	}
	startRunnerDaemon(t, bin, p.Dir, runDir, "idle", 1, "provenix:\n  volunteer: true\n  owner: alice\n", p, stack.NATSURL())

	sub := submitChain(t, ctx, p.Dir, busybox)
	if _, stderr := statusWatch(t, ctx, p.Dir, sub.Set.ID); !strings.Contains(stderr, "3/3 done, 0 building, 0 waiting, 0 failed, 0 blocked, 0 disputed, finished") {
		t.Fatalf("farm status --watch:\n%s", stderr)
	}
	stats, err := farm.ReadStats(ctx, stack.Conn(), up.DefaultTenant, time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if b := stats.Builders; len(b) != 1 || b[0].Builder != "forgejo-runner:"+runnerName || b[0].Owner != "alice" || b[0].Builds != 3 {
		t.Errorf("the farm's builders: %+v", b)
	}

	// A forge job still runs, right away.
	tctx, err := structpb.NewStruct(map[string]any{
		"server_url": forge.URL, "repository": "alice/pkgs", "repository_owner": "alice", "ref": "refs/heads/main",
		"sha": "89abcdef0123456789abcdef0123456789abcdef", "event_name": "push", "actor": "alice", "run_id": "1",
		"run_number": "1", "workflow": "build.yml", "job": "j", "token": "forge-task-token", "event": map[string]any{},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := forge.AddTask(&runnerv1.Task{WorkflowPayload: []byte("on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo job ran\n"),
		Context: tctx}, "nix")
	st, err := forge.WaitTask(ctx, id)
	if err != nil || st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("job: %v %v\n%s", st.Result, err, strings.Join(st.LogLines(), "\n"))
	}
}
