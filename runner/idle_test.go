package runner

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfarm"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/nix"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/volunteer"
)

// slowFarmSample takes a few seconds to build, long enough for a forge
// job to arrive in the middle.
const slowFarmSample = `{ busybox, message }:
let
  bb = builtins.path { name = "busybox"; path = builtins.dirOf busybox; filter = p: t: baseNameOf p == baseNameOf busybox; };
in {
  slow = derivation { name = "farm-slow"; inherit message; system = builtins.currentSystem;
    builder = "${bb}/${baseNameOf busybox}"; args = [ "sh" "-c" "sleep 3; echo $message > $out" ]; };
}
`

// TestIdleVolunteerYieldsToJobs: a runner with nothing to do builds the
// farm's requests with real Nix; a forge task that arrives mid-build
// stops the farm build, starts within the fetch interval (plus the time
// the build takes to stop), and the farm request, released at once, is
// built to the end by the runner once the job is done.
func TestIdleVolunteerYieldsToJobs(t *testing.T) {
	bb := testnix.Busybox(t)
	_, conn := testqueue.Embedded(t, natsserver.Config{})
	ctx := testctx.New(t, 5*time.Minute)
	const tenant = "default"
	roots, _ := testfarm.Submit(t, conn, tenant, slowFarmSample, bb, 1, "slow")
	testfarm.StartScheduler(t, conn)

	// The runner's builder: its own store, key and builder id.
	signer, _ := testkey.Signer(t)
	opts := nix.OfflineOptions()
	opts["sandbox"] = "false"
	b := &builder.Builder{Nix: &nix.Nix{Root: t.TempDir(), Options: opts}, Queue: conn, Signer: signer,
		BuilderID: "forgejo-runner:t", Tenant: tenant, Version: "test", StageClosures: true}
	v := &volunteer.Volunteer{Conn: conn, Builder: b, Systems: []string{"x86_64-linux"}}
	if err := v.Validate(); err != nil {
		t.Fatal(err)
	}
	w := v.FarmWorker(conn, farm.Machine{System: "x86_64-linux"}, "")
	claims := make(chan uint64, 10)
	w.OnClaim = func(r *farm.Request, res farm.ClaimResult) {
		if res == farm.Claimed {
			claims <- 1
		}
	}
	const fetchInterval = time.Second
	f := newFixture(t, func(o *Options) {
		o.FetchInterval = fetchInterval
		o.Idle = w.Run
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// Idle: the runner takes the farm request and builds it.
	select {
	case <-claims:
	case <-time.After(time.Minute):
		t.Fatal("the idle runner took no farm request")
	}
	time.Sleep(500 * time.Millisecond) // mid-build (it takes 3 s)
	if r := testqueue.LastResult(t, conn, tenant, "x86_64-linux", roots[0]); r != nil {
		t.Fatalf("built already: %+v", r)
	}

	// A forge job arrives: it starts within the fetch interval.
	t0 := time.Now()
	jobID := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo job ran\n", nil), "nix")
	var assigned time.Duration
	for {
		st, _ := f.srv.Task(jobID)
		if st.Runner != "" && assigned == 0 {
			assigned = time.Since(t0)
		}
		if st.State != nil || len(st.Logs) > 0 {
			break
		}
		if time.Since(t0) > time.Minute {
			t.Fatal("the job never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	started := time.Since(t0)
	t.Logf("job fetched after %s, started after %s", assigned, started)
	if started > fetchInterval+time.Second {
		t.Errorf("the job started %s after it arrived: the farm build held it past the fetch interval (%s)", started, fetchInterval)
	}
	if r := testqueue.LastResult(t, conn, tenant, "x86_64-linux", roots[0]); r != nil {
		t.Errorf("the farm build went on to the end while the job ran: %+v", r)
	}
	st, err := f.srv.WaitTask(ctx, jobID)
	if err != nil || st.Result != runnerv1.Result_RESULT_SUCCESS {
		t.Fatalf("job %v %v", st.Result, err)
	}

	// Idle again: the released request comes back and is built to the end.
	select {
	case <-claims:
	case <-time.After(time.Minute):
		t.Fatal("the farm request was not taken again")
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if r := testqueue.LastResult(t, conn, tenant, "x86_64-linux", roots[0]); r != nil {
			if r.Builder != "forgejo-runner:t" {
				t.Errorf("built by %s", r.Builder)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the farm request was never built")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// One report: a build, no failure (the stopped build counts for nothing).
	var built, failed int
	for range 100 {
		built, failed = 0, 0
		if err := conn.ReadFarmReports(ctx, time.Now().Add(-time.Hour), func(subject string, data []byte) error {
			rep, err := farm.DecodeReport(subject, data)
			switch {
			case err != nil:
			case rep.Outcome == farm.BuildFailed:
				failed++
			default:
				built++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if built > 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if built != 1 || failed != 0 {
		t.Errorf("reports: %d built, %d failed", built, failed)
	}
}

// TestIdleLifecycle: the idle work runs while no job does, is stopped
// (and has returned) before a job starts, starts again after it, and
// one that fails by itself is not restarted in a loop.
func TestIdleLifecycle(t *testing.T) {
	var (
		mu      sync.Mutex
		starts  int
		running bool
		overlap bool
	)
	f := newFixture(t, func(o *Options) {
		o.Idle = func(ctx context.Context) error {
			mu.Lock()
			starts++
			running = true
			mu.Unlock()
			<-ctx.Done()
			mu.Lock()
			running = false
			mu.Unlock()
			return nil
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(ctx) }()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
		}
	}
	waitFor("idle work started", func() bool { mu.Lock(); defer mu.Unlock(); return starts == 1 && running })
	// When the job is reported running, the idle work has returned.
	id := f.srv.AddTask(task(t, "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: echo job ran\n", nil), "nix")
	waitFor("job started", func() bool {
		st, _ := f.srv.Task(id)
		if st.State != nil || len(st.Logs) > 0 {
			mu.Lock()
			idleRan := running
			mu.Unlock()
			// Only while the job still runs: it is short, and once it is
			// done the idle work starts again, maybe before this poll.
			// Its result is reported before that.
			if st, _ := f.srv.Task(id); idleRan && st.Result == runnerv1.Result_RESULT_UNSPECIFIED {
				mu.Lock()
				overlap = true
				mu.Unlock()
			}
			return true
		}
		return false
	})
	if _, err := f.srv.WaitTask(testctx.New(t, time.Minute), id); err != nil {
		t.Fatal(err)
	}
	waitFor("idle work started again", func() bool { mu.Lock(); defer mu.Unlock(); return starts == 2 && running })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if overlap {
		t.Error("the idle work ran while the job did")
	}
	if running {
		t.Error("the idle work outlived Run")
	}

	// Idle work that fails by itself waits idleRetry before it runs again.
	var fails atomic.Int32
	f = newFixture(t, func(o *Options) {
		o.Idle = func(context.Context) error { fails.Add(1); return errors.New("broker down") }
	})
	ctx, cancel = context.WithCancel(context.Background())
	go func() { done <- f.runner.Run(ctx) }()
	time.Sleep(500 * time.Millisecond) // 10 fetch intervals
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := fails.Load(); n != 1 {
		t.Errorf("failing idle work started %d times in 500ms, want 1", n)
	}
}
