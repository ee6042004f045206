package tenant

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// visibleSet is the cache as the farm sees it.
type visibleSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (v *visibleSet) Has(_ context.Context, p string) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.m[p], nil
}

// TestFarmPermissions runs the farm with a tenant's users as operators
// set them up: the pusher user runs the scheduler, the submitter user
// stages a closure, submits a set, follows it and cancels another, a
// runner user builds the set as a worker (claims) and reads the
// statistics; a runner user cannot forge build requests, nor submit,
// cancel or rewrite a set's records: one bad builder cannot stall or
// cancel the others' sets.
func TestFarmPermissions(t *testing.T) {
	c := startTenants(t, nil, "a")
	pusher, runner := c.connect(t, "a", queue.RolePusher), c.connect(t, "a", queue.RoleRunner)
	submitter := c.connect(t, "a", queue.RoleSubmitter)
	ctx := testctx.New(t, time.Minute)
	if err := pusher.EnsureStreams(ctx, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pusher.EnsureFarm(ctx, queue.StreamOptions{}); err != nil {
		t.Fatalf("pusher EnsureFarm: %v", err)
	}
	if err := runner.EnsureFarm(ctx, queue.StreamOptions{}); !errors.Is(err, queue.ErrPermissionDenied) {
		t.Errorf("runner EnsureFarm: %v, want permission denied", err)
	}
	cache := &visibleSet{m: map[string]bool{}}
	sched, err := farm.NewScheduler(farm.SchedulerConfig{Conn: pusher, Cache: cache, ResyncEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := sched.Open(ctx); err != nil {
		t.Fatalf("scheduler as the pusher user: %v", err)
	}
	defer sched.Close(context.Background())

	a := &farm.Node{DrvPath: "/nix/store/0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a-a.drv", System: "x86_64-linux",
		Outputs: map[string]string{"out": "/nix/store/1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a-a"}}
	b := &farm.Node{DrvPath: "/nix/store/0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b-b.drv", System: "x86_64-linux",
		Outputs: map[string]string{"out": "/nix/store/1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b-b"}, Inputs: map[string][]string{a.DrvPath: {"out"}}}
	g, err := farm.NewGraph([]*farm.Node{a, b})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = farm.Submit(ctx, runner, farm.SubmitOptions{Tenant: "a", Graph: g, Cache: cache})
	fast(t, "a runner submits a set", start, err, queue.ErrPermissionDenied)

	// The submitter stages the set's closure in its own scope, as
	// `provenix submit --builder-id a-submitter` does, and no other.
	id := farm.NewSetID()
	closure := farm.ClosureKey(queue.SubmitterBuilderID("a"), id)
	if _, err := submitter.Stage(ctx, closure, strings.NewReader("a .drv closure export")); err != nil {
		t.Fatalf("submitter stages the closure: %v", err)
	}
	start = time.Now()
	_, err = submitter.Stage(ctx, farm.ClosureKey("a-runner", id), strings.NewReader("a .drv closure export"))
	fast(t, "the submitter stages in the runner's scope", start, err, queue.ErrPermissionDenied)
	sub, err := farm.Submit(ctx, submitter, farm.SubmitOptions{Tenant: "a", Graph: g, Cache: cache, ID: id, Closure: closure})
	if err != nil {
		t.Fatalf("submit as the submitter user: %v", err)
	}

	// A bad builder tries to cancel the set, or to stall it with a lie:
	// a's state failed, the set's or a node's record rewritten.
	start = time.Now()
	_, err = farm.Cancel(ctx, runner, sub.Set.ID)
	fast(t, "a runner cancels a set", start, err, queue.ErrPermissionDenied)
	hashA := strings.Split(farm.ClaimKey(sub.Set.ID, a.DrvPath, "a-runner"), ".")[2]
	lie := []byte(`{"version":1,"drvPath":"` + a.DrvPath + `","status":"failed"}`)
	for _, key := range []string{"state." + sub.Set.ID + "." + hashA, "set." + sub.Set.ID, "node." + sub.Set.ID + "." + hashA, "class.a.x86_64-linux.none"} {
		start = time.Now()
		err = runner.KVPut(ctx, queue.BucketFarm, key, lie)
		fast(t, "a runner writes "+key, start, err, queue.ErrPermissionDenied)
	}
	// Nor through a claim it may write: a "Nats-Rollup: all" header would
	// purge every other record of the bucket.
	if ack := rollupAll(t, c, "a", queue.RoleRunner, "$KV."+queue.BucketFarm+"."+farm.ClaimKey(sub.Set.ID, a.DrvPath, "a-runner")); !strings.Contains(ack, "rollup") {
		t.Errorf("a runner's claim with Nats-Rollup: all: %s, want the rollup refused", ack)
	}
	if st, err := farm.GetStatus(ctx, submitter, sub.Set.ID); err != nil {
		t.Fatalf("status as the submitter user: %v", err)
	} else if st.Set.Canceled != nil || st.Counts[farm.Failed] != 0 {
		t.Fatalf("the runner's writes changed the set: %s", st)
	}

	// A bad builder tries to fail a in another builder's name: it
	// writes a claim in that builder's name (denied: a runner user
	// writes under its own builder's key only; in its own key the claim
	// is nobody's), then reports the failure on that builder's subject
	// (denied: a runner user publishes its own builder's reports only),
	// and on its own subject (refused by the scheduler: the report names
	// another builder than its subject's).
	within(t, "a dispatched", func() bool {
		st, err := farm.GetStatus(ctx, submitter, sub.Set.ID)
		return err == nil && st.Counts[farm.Dispatched] == 1
	})
	claim, _ := json.Marshal(farm.Claim{Version: farm.RecordVersion, Replica: 0, Attempt: 1, Builder: "a-honest", Owner: "a-honest", Delivered: 1 << 40, At: time.Now().UTC()})
	start = time.Now()
	err = runner.KVPut(ctx, queue.BucketFarm, farm.ClaimKey(sub.Set.ID, a.DrvPath, "a-honest"), claim)
	fast(t, "a runner writes another builder's claim", start, err, queue.ErrPermissionDenied)
	if err := runner.KVPut(ctx, queue.BucketFarm, farm.ClaimKey(sub.Set.ID, a.DrvPath, "a-runner"), claim); err != nil {
		t.Fatalf("a runner writes under its own claim key: %v", err)
	}
	forged := &farm.Report{Version: farm.RecordVersion, Set: sub.Set.ID, Tenant: "a", DrvPath: a.DrvPath, Replica: 0, Attempt: 1,
		Builder: "a-honest", Owner: "a-honest", Outcome: farm.BuildFailed, ExitCode: 1, Time: time.Now().UTC()}
	start = time.Now()
	fast(t, "a runner reports in another builder's name", start, farm.PublishReport(context.Background(), runner, forged), queue.ErrPermissionDenied)
	own, _ := queue.FarmReportSubject("a", "a-runner")
	data, _ := json.Marshal(forged)
	if _, _, err := runner.PublishFarm(ctx, own, "forged", data); err != nil {
		t.Fatalf("a runner publishes on its own report subject: %v", err)
	}
	within(t, "the forged report handled", func() bool { return reportsHandled(t, pusher, 1) })
	if st, err := farm.GetStatus(ctx, submitter, sub.Set.ID); err != nil {
		t.Fatal(err)
	} else if d := st.Derivations; len(d) != 2 || len(d[0].Failures)+len(d[1].Failures) != 0 {
		t.Fatalf("a report naming another builder counted: %s", st)
	}

	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	w := &farm.Worker{Conn: runner, Tenant: "a", Machine: farm.Machine{System: "x86_64-linux"}, Builder: "a-runner",
		Build: func(ctx context.Context, r *farm.Request) (*farm.BuildStats, error) {
			// The pusher publishes what the runner built.
			for _, o := range r.Outputs {
				cache.mu.Lock()
				cache.m[o] = true
				cache.mu.Unlock()
				if err := pusher.PublishEvent(ctx, "a", queue.EventPublished, map[string]string{"tenant": "a", "storePath": o}); err != nil {
					return nil, err
				}
			}
			return &farm.BuildStats{CPUSeconds: 1}, nil
		}}
	go func() { done <- w.Run(wctx) }()
	stopWorker := sync.OnceFunc(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker as a runner user: %v", err)
		}
	})
	defer stopWorker()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := farm.GetStatus(ctx, runner, sub.Set.ID)
		if err != nil {
			t.Fatalf("status as a runner user: %v", err)
		}
		if st.Finished() {
			if st.Counts[farm.Done] != 2 {
				t.Fatalf("status %s", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not finished: %s", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The worker stops first: it would build the other set's first
	// derivation if the scheduler dispatched it before the cancel (CI
	// saw 3 builds under load), and the stats below count its builds.
	stopWorker()
	// The submitter follows the finished set, and cancels another.
	if err := farm.Follow(ctx, submitter, sub.Set.ID, time.Millisecond, func(*farm.Progress) {}); err != nil {
		t.Errorf("follow as the submitter user: %v", err)
	}
	other, err := farm.Submit(ctx, submitter, farm.SubmitOptions{Tenant: "a", Graph: g, Cache: &visibleSet{m: map[string]bool{}}})
	if err != nil {
		t.Fatalf("submit as the submitter user: %v", err)
	}
	if set, err := farm.Cancel(ctx, submitter, other.Set.ID); err != nil || set.Canceled == nil {
		t.Fatalf("cancel as the submitter user: %v %+v", err, set)
	}
	if sums, err := farm.Summaries(ctx, submitter, "a", time.Now().Add(-time.Hour)); err != nil || len(sums) != 2 {
		t.Errorf("summaries as the submitter user: %v %+v", err, sums)
	}

	// A dispute the runner's build was in, as the pusher publishes it:
	// the stats read it from the events stream (and only the tenant's
	// disputed events).
	dispute := map[string]any{"time": time.Now().UTC(), "tenant": "a", "storePath": "/nix/store/00000000000000000000000000000000-x",
		"nars": map[string][]string{"aa": {"a-runner"}, "bb": {"other"}}, "summary": map[string]any{"differing": 1, "causes": []string{"timestamp"}}}
	if err := pusher.PublishEvent(ctx, "a", queue.EventDisputed, dispute); err != nil {
		t.Fatal(err)
	}
	var stats *farm.Stats
	for range 100 {
		if stats, err = farm.ReadStats(ctx, runner, "a", time.Now().Add(-time.Hour)); err != nil {
			t.Fatalf("stats as a runner user: %v", err)
		}
		if len(stats.Builders) == 1 && stats.Builders[0].Builds == 2 && stats.Builders[0].Disputes == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(stats.Builders) != 1 || stats.Builders[0].Builds != 2 || stats.Builders[0].CPUSeconds != 2 || stats.Builders[0].DisputeText() != "1 dispute: timestamp ×1" {
		t.Errorf("stats as a runner user: %+v", stats.Builders)
	}

	start = time.Now()
	subj, _ := queue.FarmBuildSubject("a", "x86_64-linux", farm.NoFeatures)
	_, _, err = runner.PublishFarm(context.Background(), subj, "forged", []byte("{}"))
	fast(t, "a runner publishes a build request", start, err, queue.ErrPermissionDenied)
	// The scheduler asks whether a request was delivered (a worker that
	// keeps it without a claim): the worker consumed subj, up to the
	// set's requests.
	if delivered, err := pusher.FarmRequestDelivered(ctx, subj, 1); err != nil || !delivered {
		t.Errorf("the pusher asks whether request 1 was delivered: %v, %v; want true", delivered, err)
	}
	unused, _ := queue.FarmBuildSubject("a", "aarch64-linux", farm.NoFeatures)
	cannotTakeOver(t, runner, queue.StreamFarm, queue.FarmConsumer(subj), subj, unused)
}

// cannotTakeOver checks that runner may neither change the shared
// consumer name of a work queue's subject subj, which its publisher
// provided (MaxAckPending 1 and one message kept would stall every other
// message of subj for good), nor take subj or unused, a subject nobody
// consumes yet, with a consumer of its own (a work queue allows one
// consumer per subject: every message of it would go to that runner, and
// the workers could not start).
func cannotTakeOver(t *testing.T, runner *queue.Conn, stream, name, subj, unused string) {
	t.Helper()
	for _, cfg := range []jetstream.ConsumerConfig{
		{Durable: name, FilterSubject: subj, AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1},
		{Durable: "squat", FilterSubject: unused, AckPolicy: jetstream.AckExplicitPolicy},
	} {
		// A request the server's permissions refuse gets no answer.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := runner.JetStream().CreateOrUpdateConsumer(ctx, stream, cfg)
		cancel()
		if err == nil {
			t.Errorf("a runner set consumer %s of %s on %s", cfg.Durable, cfg.FilterSubject, stream)
		}
	}
	// What the runner may read of them, as its workers do.
	ctx := testctx.New(t, 20*time.Second)
	if k, err := runner.JetStream().Consumer(ctx, stream, name); err != nil {
		t.Fatal(err)
	} else if n := k.CachedInfo().Config.MaxAckPending; n == 1 {
		t.Errorf("consumer %s: MaxAckPending %d, as the runner set it", name, n)
	}
	if _, err := runner.JetStream().Consumer(ctx, stream, "squat"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("the runner's own consumer on %s: %v, want none", unused, err)
	}
}

// rollupAll publishes, as tenant's user of role, a message on subj with
// a "Nats-Rollup: all" header (which purges every other message of its
// stream where rollups are allowed), and returns the stream's answer.
func rollupAll(t *testing.T, c *cluster, tenant string, role queue.Role, subj string) string {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(c.tenants[tenant].Path(SeedFile(role)))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(c.srv.URL, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m := nats.NewMsg(subj)
	m.Header.Set("Nats-Rollup", "all")
	m.Data = []byte("{}")
	r, err := nc.RequestMsg(m, 10*time.Second)
	if err != nil {
		t.Fatalf("publish on %s with Nats-Rollup: all: %v", subj, err)
	}
	return string(r.Data)
}

// within fails t unless cond holds within 10 s.
func within(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reportsHandled reports whether the schedulers' consumer of reports
// has handled n reports (acked or terminated), none pending.
func reportsHandled(t *testing.T, pusher *queue.Conn, n uint64) bool {
	t.Helper()
	ctx := testctx.New(t, time.Minute)
	c, err := pusher.JetStream().Consumer(ctx, queue.StreamFarmReports, queue.FarmConsumer(queue.FarmReportFilter))
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.Delivered.Stream == n && info.NumAckPending == 0 && info.NumPending == 0
}
