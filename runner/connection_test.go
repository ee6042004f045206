package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"
	"connectrpc.com/connect"

	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/runner/rpc"
	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

// TestRotationFair: with every connection due, the rotation polls them in
// turn however often one had a task; one that was empty waits out its
// own interval, and a refused one is never picked again.
func TestRotationFair(t *testing.T) {
	now := time.Unix(1000, 0)
	o := newRotation(3)
	var got []int
	for range 6 {
		i, _, err := o.pick(now)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, i) // each poll returned a task: still due
	}
	if want := []int{0, 1, 2, 0, 1, 2}; !slices.Equal(got, want) {
		t.Fatalf("picks %v, want %v", got, want)
	}
	// 1 was empty with a 10 s interval, 2 with 1 s: 0 alone is due.
	o.empty(1, now, 10*time.Second)
	o.empty(2, now, time.Second)
	for range 3 {
		if i, _, _ := o.pick(now); i != 0 {
			t.Fatalf("picked %d while only 0 is due", i)
		}
	}
	o.empty(0, now, 5*time.Second)
	if i, wait, _ := o.pick(now); i != -1 || wait != time.Second {
		t.Fatalf("nothing due: got %d, wait %v; want -1, 1s (the soonest)", i, wait)
	}
	// 2 becomes due before 0 and 1.
	if i, _, _ := o.pick(now.Add(time.Second)); i != 2 {
		t.Fatalf("after 1 s picked %d, want 2", i)
	}
	refused := errors.New("refused")
	for i := range 3 {
		o.refuse(i, refused)
	}
	if _, _, err := o.pick(now.Add(time.Hour)); !errors.Is(err, refused) {
		t.Fatalf("every forge refused: err %v", err)
	}
}

type twoForges struct {
	a, b   *rpctest.Server
	runner *Runner
}

// newTwoForges serves two fake forges, a and b, from one runner with
// capacity 1: b's connection declares the extra label "b-only".
func newTwoForges(t *testing.T, mod func(a, b *Connection)) *twoForges {
	t.Helper()
	dir := testfs.OpenDir(t)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	conn := func(name string, labels ...string) (*rpctest.Server, Connection) {
		srv := rpctest.New(t)
		reg := srv.AddRunner(rpctest.Runner{UUID: "0b5e5f5c-1111-4222-8333-44445555666" + name[:1], Token: "token-" + name, Name: "t", Labels: labels})
		cl, err := rpc.New(srv.URL, rpc.WithCredentials(reg.UUID, reg.Token), rpc.WithHTTPClient(srv.Client()))
		if err != nil {
			t.Fatal(err)
		}
		return srv, Connection{Name: name, Forge: cl, Labels: labels, FetchInterval: 50 * time.Millisecond,
			WorkdirParent: filepath.Join(dir, "work", name), JobUser: testJobUser}
	}
	a, ca := conn("a", "nix")
	b, cb := conn("b", "nix", "b-only")
	if mod != nil {
		mod(&ca, &cb)
	}
	r, err := NewConnections([]Connection{ca, cb}, Options{
		Capacity: 1, FetchTimeout: time.Second, ReportInterval: 100 * time.Millisecond,
		ChildCommand: []string{childBinary(t), execJobArg}, Version: "test", Logger: log,
		JobWindowsDir: filepath.Join(t.TempDir(), "windows"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return &twoForges{a: a, b: b, runner: r}
}

func echoJob(t *testing.T, marker string) *runnerv1.Task {
	return task(t, fmt.Sprintf("on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo %s\n", marker), nil)
}

func finished(s *rpctest.Server, ids []int64) int {
	n := 0
	for _, id := range ids {
		if st, ok := s.Task(id); ok && st.Result != runnerv1.Result_RESULT_UNSPECIFIED {
			n++
		}
	}
	return n
}

// TestConnectionsFair: forge a always has tasks waiting, yet b's task runs
// after at most two of a's (capacity 1: the slot alternates), each task's
// log and result go to the forge it came from, and each forge was
// declared its own connection's labels. A runner polling a first
// whenever it had a task would run all of a's before b's.
func TestConnectionsFair(t *testing.T) {
	f := newTwoForges(t, nil)
	var aIDs []int64
	for i := range 8 {
		aIDs = append(aIDs, f.a.AddTask(echoJob(t, fmt.Sprintf("from-forge-a-%d", i)), "nix"))
	}
	bID := f.b.AddTask(echoJob(t, "from-forge-b"), "b-only")

	ctx := testctx.New(t, 3*time.Minute)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(rctx) }()
	defer func() { stop(); <-done }()

	st, err := f.b.WaitTask(ctx, bID)
	if err != nil {
		t.Fatal(err)
	}
	aDone := finished(f.a, aIDs)
	if st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("b's task: %v\n%s", st.Result, strings.Join(st.LogLines(), "\n"))
	}
	if aDone > 2 {
		t.Errorf("b's task finished only after %d of a's: a busy forge starved b", aDone)
	}
	if !strings.Contains(strings.Join(st.LogLines(), "\n"), "from-forge-b") {
		t.Errorf("b's log lacks its own output:\n%s", strings.Join(st.LogLines(), "\n"))
	}
	// All of a's run too, and report to a.
	for _, id := range aIDs {
		st, err := f.a.WaitTask(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		log := strings.Join(st.LogLines(), "\n")
		if st.Result != runnerv1.Result_RESULT_SUCCESS || !strings.Contains(log, fmt.Sprintf("from-forge-a-%d", slices.Index(aIDs, id))) || strings.Contains(log, "from-forge-b") {
			t.Errorf("a's task %d: %v\n%s", id, st.Result, log)
		}
	}
	for _, c := range []struct {
		srv  *rpctest.Server
		want []string
	}{{f.a, []string{"nix"}}, {f.b, []string{"nix", "b-only"}}} {
		calls := c.srv.CallsTo(rpctest.Declare)
		if len(calls) == 0 {
			t.Fatal("a forge was not declared to")
		}
		if got := calls[0].Request.(*runnerv1.DeclareRequest).GetLabels(); !slices.Equal(got, c.want) {
			t.Errorf("declared %v, want %v", got, c.want)
		}
		for _, call := range c.srv.Calls() {
			if call.Method == rpctest.UpdateLog || call.Method == rpctest.UpdateTask {
				if (c.srv == f.a) != (call.Token == "token-a") {
					t.Errorf("%s with the other forge's token", call.Method)
				}
			}
		}
	}
}

// TestConnectionFetchInterval: each connection waits its own
// fetch_interval after an empty poll.
func TestConnectionFetchInterval(t *testing.T) {
	f := newTwoForges(t, func(a, _ *Connection) { a.FetchInterval = time.Hour })
	ctx := testctx.New(t, time.Minute)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(rctx) }()
	if err := f.b.WaitCalls(ctx, rpctest.FetchTask, 10); err != nil {
		t.Fatal(err)
	}
	stop()
	<-done
	if n := len(f.a.CallsTo(rpctest.FetchTask)); n != 1 {
		t.Errorf("a (fetch_interval 1h) was polled %d times while b (50ms) was polled 10", n)
	}
}

// TestConnectionRefusedOthersGoOn: a forge that refuses the runner is no
// longer polled, and the other's tasks still run.
func TestConnectionRefusedOthersGoOn(t *testing.T) {
	f := newTwoForges(t, nil)
	f.a.FailNext(rpctest.FetchTask, connect.CodeUnauthenticated, 1)
	id := f.b.AddTask(echoJob(t, "still-served"), "nix")
	ctx := testctx.New(t, 2*time.Minute)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(rctx) }()
	defer func() { stop(); <-done }()
	st, err := f.b.WaitTask(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Errorf("b's task: %v", st.Result)
	}
	if n := len(f.a.CallsTo(rpctest.FetchTask)); n != 1 {
		t.Errorf("a refused the runner but was polled %d times", n)
	}
}

// TestConnectionsWorkdirsApart: with several connections, each one's work
// directory parent is root's and closed to others (only its job users may
// search it, through an ACL); a connection sharing another's job users
// with a different set is refused.
func TestConnectionsWorkdirsApart(t *testing.T) {
	requireRoot(t)
	f := newTwoForges(t, func(a, b *Connection) {
		a.JobUsers, a.JobUser = testPool[:1], ""
		b.JobUsers, b.JobUser = testPool[1:2], ""
	})
	for _, c := range f.runner.conns {
		fi, err := os.Stat(c.WorkdirParent)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s: work directory parent owner %d mode %v: others can enter it", c.Name, st.Uid, fi.Mode().Perm())
		}
	}
	dir := testfs.OpenDir(t)
	_, err := NewConnections([]Connection{
		{Name: "a", Forge: f.runner.conns[0].Forge, Labels: []string{"nix"}, WorkdirParent: filepath.Join(dir, "a"), JobUsers: []string{"provenix-job-0", "provenix-job-1"}},
		{Name: "b", Forge: f.runner.conns[1].Forge, Labels: []string{"nix"}, WorkdirParent: filepath.Join(dir, "b"), JobUsers: []string{"provenix-job-1", "provenix-job-2"}},
	}, Options{Capacity: 1, ChildCommand: []string{"true"}})
	if err == nil || !strings.Contains(err.Error(), "provenix-job-1") {
		t.Errorf("two connections sharing provenix-job-1 with different pools: err %v", err)
	}
	_, err = NewConnections([]Connection{
		{Name: "a", Forge: f.runner.conns[0].Forge, Labels: []string{"nix"}, WorkdirParent: filepath.Join(dir, "a"), JobUsers: []string{"provenix-job-0"}},
		{Name: "b", Forge: f.runner.conns[1].Forge, Labels: []string{"nix"}, WorkdirParent: filepath.Join(dir, "a", "b"), JobUsers: []string{"provenix-job-1"}},
	}, Options{Capacity: 1, ChildCommand: []string{"true"}})
	if err == nil || !strings.Contains(err.Error(), "inside one another") {
		t.Errorf("nested work directories of two tenants: err %v", err)
	}
}

// TestRunOneConnections: one-job takes the first task of any connection
// and reports it to the forge it came from.
func TestRunOneConnections(t *testing.T) {
	f := newTwoForges(t, nil)
	id := f.b.AddTask(echoJob(t, "one-job-from-b"), "nix")
	ctx := testctx.New(t, 2*time.Minute)
	res, err := f.runner.RunOne(ctx)
	if err != nil || res != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("RunOne: %v, %v", res, err)
	}
	st, ok := f.b.Task(id)
	if !ok || st.Result != runnerv1.Result_RESULT_SUCCESS || !strings.Contains(strings.Join(st.LogLines(), "\n"), "one-job-from-b") {
		t.Errorf("b's task as b saw it: %+v", st)
	}
	if n := len(f.a.CallsTo(rpctest.UpdateTask)); n != 0 {
		t.Errorf("a got %d task updates for b's task", n)
	}
}

// TestConnectionsPrivateTmp: with each job in a mount namespace of its
// own (a work directory outside /tmp), jobs of two connections run as
// their own users inside their restricted work directories.
func TestConnectionsPrivateTmp(t *testing.T) {
	requireRoot(t)
	work := outsideTmp(t)
	f := newTwoForges(t, func(a, b *Connection) {
		a.JobUsers, a.JobUser, a.WorkdirParent = testPool[:1], "", filepath.Join(work, "a")
		b.JobUsers, b.JobUser, b.WorkdirParent = testPool[1:2], "", filepath.Join(work, "b")
	})
	if !f.runner.privateTmp {
		t.Fatal("no mount namespace for jobs on this Linux host")
	}
	job := "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo \"user $(id -un) in $PWD\"; touch /tmp/mine\n"
	ids := map[*rpctest.Server]int64{f.a: f.a.AddTask(task(t, job, nil), "nix"), f.b: f.b.AddTask(task(t, job, nil), "nix")}
	ctx := testctx.New(t, 2*time.Minute)
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(rctx) }()
	defer func() { stop(); <-done }()
	for srv, want := range map[*rpctest.Server]string{f.a: "user " + testPool[0] + " in " + filepath.Join(work, "a"), f.b: "user " + testPool[1] + " in " + filepath.Join(work, "b")} {
		st, err := srv.WaitTask(ctx, ids[srv])
		if err != nil {
			t.Fatal(err)
		}
		if log := strings.Join(st.LogLines(), "\n"); st.Result != runnerv1.Result_RESULT_SUCCESS || !strings.Contains(log, want) {
			t.Errorf("want %q, got %v:\n%s", want, st.Result, log)
		}
	}
}
