package runner

import (
	"context"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/runner/rpc/rpctest"
)

// BenchmarkJobPickupAndOverhead runs one-step jobs through the daemon
// against the protocol test server with fetch_interval 1s, as the issue
// asks, tasks arriving at a random moment of the poll cycle, and reports:
//   - pickup-p50/p90-ms: task created → first step running;
//   - overhead-p50/p90-ms: the job's wall time on the runner (task fetched →
//     result reported) minus the steps' own time;
//   - bash-ms: the baseline, starting `bash -c true` directly once.
//
// go test -run '^$' -bench JobPickup -benchtime 20x ./runner/
func BenchmarkJobPickupAndOverhead(b *testing.B) {
	f := newFixture(b, func(o *Options) {
		o.FetchInterval = time.Second
		o.Logger = nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.runner.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var pickups, overheads, bashes []float64
	payload := "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: \"true\"\n"
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Tasks arrive at random moments relative to the poll, as real
		// pushes do; without this every task lands just after a poll.
		time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
		created := time.Now()
		id := f.srv.AddTask(task(b, payload, nil), "nix")
		wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := f.srv.WaitTask(wctx, id)
		wcancel()
		if err != nil || st.Result != runnerv1.Result_RESULT_SUCCESS {
			b.Fatalf("task %d: %v %v", id, err, st.Result)
		}
		s := st.State
		step := s.Steps[0]
		pickups = append(pickups, ms(step.StartedAt.AsTime().Sub(created)))
		wall := s.StoppedAt.AsTime().Sub(s.StartedAt.AsTime())
		own := step.StoppedAt.AsTime().Sub(step.StartedAt.AsTime())
		overheads = append(overheads, ms(wall-own))

		t0 := time.Now()
		if err := exec.Command("bash", "-c", "true").Run(); err != nil {
			b.Fatal(err)
		}
		bashes = append(bashes, ms(time.Since(t0)))
	}
	b.StopTimer()
	b.ReportMetric(pct(pickups, 50), "pickup-p50-ms")
	b.ReportMetric(pct(pickups, 90), "pickup-p90-ms")
	b.ReportMetric(pct(overheads, 50), "overhead-p50-ms")
	b.ReportMetric(pct(overheads, 90), "overhead-p90-ms")
	b.ReportMetric(pct(bashes, 50), "bash-ms")
}

// runTask has f's runner run one task of payload, which must succeed,
// and returns what the forge knows of it.
func runTask(b testing.TB, f *fixture, payload string) rpctest.Task {
	b.Helper()
	id := f.srv.AddTask(task(b, payload, nil), "nix")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if res, err := f.runner.RunOne(ctx); err != nil || res != runnerv1.Result_RESULT_SUCCESS {
		st, _ := f.srv.Task(id)
		b.Fatalf("task %d: %v %v\n%s", id, err, res, logText(st.Logs))
	}
	st, _ := f.srv.Task(id)
	return st
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(v []float64, p int) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[(len(s)-1)*p/100]
}

// BenchmarkIsolationOverhead measures what per-job isolation (a pool
// user, a cgroup created and killed, the uid swept, a private /tmp, the
// socket bound)
// adds to a job's overhead on the runner, against a runner in the same
// run with one shared job user and no cgroup; jobs of both alternate so
// they share the machine's load. Reports overhead p50/p90 of each and
// the ratio of the p50s.
//
// go test -run '^$' -bench IsolationOverhead -benchtime 20x ./runner/
func BenchmarkIsolationOverhead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("isolation switches users: run as root")
	}
	quiet := func(o *Options) { o.Logger = nil }
	base := newFixture(b, func(o *Options) { quiet(o); o.DisableCgroup = true })
	// Outside /tmp, so that the job's private /tmp is part of the cost.
	work, err := os.MkdirTemp("/run", "provenix-bench-work-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		b.Fatal(err)
	}
	iso := newFixture(b, func(o *Options) {
		quiet(o)
		o.JobUsers = testPool[:1]
		o.WorkdirParent = filepath.Join(work, "work")
	})
	if iso.runner.cgroups == nil || !iso.runner.privateTmp {
		b.Fatal("no cgroup v2 or mount namespace here: the comparison would leave them out")
	}
	payload := "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: \"true\"\n"
	overhead := func(f *fixture) float64 {
		s := runTask(b, f, payload).State
		step := s.Steps[0]
		return ms(s.StoppedAt.AsTime().Sub(s.StartedAt.AsTime()) - step.StoppedAt.AsTime().Sub(step.StartedAt.AsTime()))
	}
	var without, with []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		without = append(without, overhead(base))
		with = append(with, overhead(iso))
	}
	b.StopTimer()
	b.ReportMetric(pct(without, 50), "shared-p50-ms")
	b.ReportMetric(pct(without, 90), "shared-p90-ms")
	b.ReportMetric(pct(with, 50), "isolated-p50-ms")
	b.ReportMetric(pct(with, 90), "isolated-p90-ms")
	b.ReportMetric(pct(with, 50)/pct(without, 50), "ratio-p50")
}
