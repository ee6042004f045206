package runner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	runnerv1 "code.gitea.io/actions-proto-go/runner/v1"

	"codeberg.org/provenix/provenix/builder"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/internal/testfs"
	"codeberg.org/provenix/provenix/internal/testkey"
	"codeberg.org/provenix/provenix/internal/testnix"
	"codeberg.org/provenix/provenix/internal/testqueue"
	"codeberg.org/provenix/provenix/nix"
	"codeberg.org/provenix/provenix/queue"
	natsserver "codeberg.org/provenix/provenix/queue/server"
	"codeberg.org/provenix/provenix/usage"
)

// usageStack is a runner as its operator runs it: as root, jobs as the
// job user building through the Nix daemon, a builder attesting into an
// embedded NATS, and usage records published there.
type usageStack struct {
	conn    *queue.Conn
	builder *builder.Builder
	sample  string // examples/hello.nix, where the job user reads it
	busybox string
}

func newUsageStack(t testing.TB) *usageStack {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the usage test runs jobs as " + testJobUser + " through the Nix daemon: run it as root (CI does)")
	}
	bb := testnix.Busybox(t)
	(&testnix.Env{Name: "host"}).Daemon(t)
	_, conn := testqueue.Embedded(t, natsserver.Config{})
	signer, _ := testkey.Signer(t)
	b := &builder.Builder{Nix: &nix.Nix{Options: nix.OfflineOptions()}, Queue: conn, Signer: signer,
		BuilderID: "forgejo-runner:usage", Tenant: "default", Version: "test"}
	src, err := os.ReadFile(filepath.Join("..", "examples", "hello.nix"))
	if err != nil {
		t.Fatal(err)
	}
	sample := filepath.Join(testfs.OpenDir(t), "hello.nix")
	if err := os.WriteFile(sample, src, 0o644); err != nil {
		t.Fatal(err)
	}
	return &usageStack{conn: conn, builder: b, sample: sample, busybox: bb}
}

// jobOptions are what the stack's runners need besides the fixture's.
func (s *usageStack) jobOptions(o *Options) {
	o.Envs = map[string]string{"NIX_CONFIG": "substituters =\nexperimental-features = nix-command"}
	o.Timeout = 5 * time.Minute
}

// burnLoops is how many turns of a bash loop the test's step burns:
// about 2 s of CPU on this machine.
const burnLoops = 400000

// stepCPU matches what bash's `time` printed (TIMEFORMAT below).
var stepCPU = regexp.MustCompile(`step-cpu ([0-9.]+) ([0-9.]+)`)

// TestUsageOfAJob runs a forge job whose step burns CPU in a shell loop
// and builds the sample with nix-build, and checks its usage record:
// the CPU seconds within 10% of what bash's `time` measured inside the
// step, bytes built equal to the NAR size of the output (as the store and
// the published result say), bytes staged equal to what the result
// staged, and the job's forge, repository, workflow and connection.
func TestUsageOfAJob(t *testing.T) {
	s := newUsageStack(t)
	pub, err := usage.NewPublisher(s.conn)
	if err != nil {
		t.Fatal(err)
	}
	f := newBuilderFixture(t, s.builder, func(o *Options) {
		s.jobOptions(o)
		o.Usage = pub
		o.Connection = "forge-a"
	})
	ctx := testctx.New(t, 5*time.Minute)
	since := time.Now()
	msg := fmt.Sprintf("usage test %d", time.Now().UnixNano())
	payload := fmt.Sprintf(`on: push
jobs:
  j:
    runs-on: nix
    steps:
      - shell: bash
        run: |
          TIMEFORMAT='step-cpu %%3U %%3S'
          time { i=0; while [ $i -lt %d ]; do i=$((i+1)); done; nix-build %s -A hello --arg busybox %s --argstr message %q --no-out-link; }
`, burnLoops, s.sample, s.busybox, msg)
	id := f.srv.AddTask(task(t, payload, nil), "nix")
	if res, err := f.runner.RunOne(ctx); err != nil || res != runnerv1.Result_RESULT_SUCCESS {
		st, _ := f.srv.Task(id)
		t.Fatalf("job: %v %v\n%s", res, err, logText(st.Logs))
	}
	st, _ := f.srv.Task(id)
	logs := logText(st.Logs)
	m := stepCPU.FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no step-cpu line in the log:\n%s", logs)
	}
	user, _ := strconv.ParseFloat(m[1], 64)
	sys, _ := strconv.ParseFloat(m[2], 64)
	measured := user + sys

	var recs []*usage.Record
	filter, _ := usage.Filter("", "")
	refused, err := usage.Read(ctx, s.conn, filter, since, func(r *usage.Record) error {
		recs = append(recs, r)
		return nil
	})
	if err != nil || refused != 0 || len(recs) != 1 {
		t.Fatalf("usage records: %d (%d refused), %v", len(recs), refused, err)
	}
	r := recs[0]
	got := r.CPU().Seconds()
	t.Logf("step measured %.3f s CPU (user %.3f, system %.3f); the record says %.3f s from %s; wall %s, peak memory %d (%s)",
		measured, user, sys, got, r.CPUFrom, r.Wall(), r.PeakMemory, r.MemoryFrom)
	if measured < 1 {
		t.Fatalf("the step burnt only %.3f s: too little to compare", measured)
	}
	// The record is the job's cgroup: the step and, around it, the job's
	// own processes (the shell, the job process shipping logs), which
	// take more under a loaded machine. So it may exceed the step by more
	// than it may fall short of it.
	if d := got - measured; d < -measured/10 || d > measured/4 {
		t.Errorf("recorded CPU %.3f s, the step's own time %.3f s: want from 10%% less to 25%% more", got, measured)
	}
	if f.runner.cgroups != nil && r.CPUFrom != usage.FromCgroup {
		t.Errorf("CPU from %q, though the job had a cgroup", r.CPUFrom)
	}
	if r.PeakMemory <= 0 || r.MemoryFrom == "" {
		t.Errorf("no peak memory: %d %q", r.PeakMemory, r.MemoryFrom)
	}
	if r.Wall() < time.Duration(measured*float64(time.Second))/2 || r.Wall() > 5*time.Minute {
		t.Errorf("wall time %s", r.Wall())
	}
	want := usage.Record{Kind: usage.KindJob, Tenant: "default", Builder: "forgejo-runner:usage", Connection: "forge-a",
		Forge: "http://forge.test", Repository: "alice/pkgs", Workflow: "build.yml", Job: "build", RunID: "12", TaskID: id}
	if r.Kind != want.Kind || r.Tenant != want.Tenant || r.Builder != want.Builder || r.Connection != want.Connection || r.Forge != want.Forge ||
		r.Repository != want.Repository || r.Workflow != want.Workflow || r.Job != want.Job || r.RunID != want.RunID || r.TaskID != want.TaskID {
		t.Errorf("record %+v\nwant the job's %+v", r, want)
	}

	// Bytes built: the NAR sizes of the outputs the job attested, as the
	// store has them and as the results say (the host's store is shared
	// with whatever else runs: the job attests what was built while it
	// ran, which may be more than its own nix-build); bytes staged: each
	// NAR its results staged once (this NATS had none before).
	results := testqueue.Results(t, s.conn)
	var built, staged int64
	keys := map[string]bool{}
	var sample bool
	for _, res := range results {
		for _, o := range res.Outputs {
			infos, err := s.builder.Nix.PathInfos(ctx, o.Path)
			if err != nil {
				t.Fatal(err)
			}
			if infos[0].NarSize != o.NarSize {
				t.Errorf("%s: the result says %d bytes, the store %d", o.Path, o.NarSize, infos[0].NarSize)
			}
			built += int64(o.NarSize)
			sample = sample || strings.HasSuffix(o.Path, "-provenix-hello")
		}
		for _, o := range append(res.Outputs, res.Sources...) {
			if !keys[o.StagingKey] {
				keys[o.StagingKey] = true
				staged += int64(o.NarSize)
			}
		}
	}
	if !sample {
		t.Fatalf("the job's own build was not attested:\n%s", logs)
	}
	t.Logf("%d results attested: %d bytes built, %d staged", len(results), built, staged)
	if r.BytesBuilt != built {
		t.Errorf("bytes built %d, want %d (the NAR sizes of the attested outputs)", r.BytesBuilt, built)
	}
	if r.BytesStaged != staged {
		t.Errorf("bytes staged %d, want %d (the outputs' and sources' NARs)", r.BytesStaged, staged)
	}
}

func logText(rows []*runnerv1.LogRow) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(r.GetContent())
		b.WriteByte('\n')
	}
	return b.String()
}

// BenchmarkUsageOverhead measures what accounting adds to a job: the same
// small real job (a shell step that burns about 0.1 s of CPU, as the job
// user in its cgroup, with a builder that looks for what to attest in a
// store of its own, so that other builds on the host do not add noise)
// on two runners in the same run, one recording usage into an embedded
// NATS and one not, alternating so that they share the machine's load.
// It reports each one's wall time on the runner (task fetched → result
// reported), p50 and mean, their ratios, and the time the recorder
// itself took per job against the job's wall time.
//
// go test -run '^$' -bench UsageOverhead -benchtime 40x ./runner/
func BenchmarkUsageOverhead(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("jobs run as " + testJobUser + ": run as root")
	}
	testnix.Busybox(b)
	_, conn := testqueue.Embedded(b, natsserver.Config{})
	signer, _ := testkey.Signer(b)
	opts := nix.OfflineOptions()
	opts["sandbox"] = "false"
	bl := &builder.Builder{Nix: &nix.Nix{Root: b.TempDir(), Options: opts}, Queue: conn, Signer: signer,
		BuilderID: "forgejo-runner:bench", Tenant: "default", Version: "test"}
	pub, err := usage.NewPublisher(conn)
	if err != nil {
		b.Fatal(err)
	}
	timed := &timedRecorder{next: pub}
	quiet := func(o *Options) { o.Logger = nil }
	without := newBuilderFixture(b, bl, quiet)
	with := newBuilderFixture(b, bl, func(o *Options) { quiet(o); o.Usage = timed })
	if with.runner.cgroups == nil {
		b.Fatal("no cgroup v2 here: the job's CPU would come from rusage alone")
	}
	payload := "on: push\njobs:\n  j:\n    runs-on: nix\n    steps:\n      - run: i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done\n"
	run := func(f *fixture) float64 {
		s := runTask(b, f, payload).State
		return ms(s.StoppedAt.AsTime().Sub(s.StartedAt.AsTime()))
	}
	var off, on []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off = append(off, run(without))
		on = append(on, run(with))
	}
	b.StopTimer()
	if timed.calls != b.N {
		b.Fatalf("%d usage records for %d jobs", timed.calls, b.N)
	}
	b.ReportMetric(pct(off, 50), "without-p50-ms")
	b.ReportMetric(pct(on, 50), "with-p50-ms")
	b.ReportMetric(mean(off), "without-mean-ms")
	b.ReportMetric(mean(on), "with-mean-ms")
	b.ReportMetric(pct(on, 50)/pct(off, 50), "ratio-p50")
	b.ReportMetric(mean(on)/mean(off), "ratio-mean")
	b.ReportMetric(ms(timed.total)/float64(timed.calls), "record-ms")
	b.ReportMetric(ms(timed.total)/float64(timed.calls)/mean(on)*100, "record-%-of-job")
}

func mean(v []float64) float64 {
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(max(len(v), 1))
}

// timedRecorder times the recorder's calls.
type timedRecorder struct {
	next  usage.Recorder
	calls int
	total time.Duration
}

func (r *timedRecorder) Record(ctx context.Context, rec *usage.Record) error {
	t0 := time.Now()
	err := r.next.Record(ctx, rec)
	r.total += time.Since(t0)
	r.calls++
	return err
}
