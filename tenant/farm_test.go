package tenant

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/farm"
	"codeberg.org/provenix/provenix/internal/testctx"
	"codeberg.org/provenix/provenix/queue"
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
// set them up: the pusher user runs the scheduler, a runner user submits
// a set, builds it as a worker and reads the statistics; a runner user
// cannot forge build requests.
func TestFarmPermissions(t *testing.T) {
	c := startTenants(t, nil, "a")
	pusher, runner := c.connect(t, "a", queue.RolePusher), c.connect(t, "a", queue.RoleRunner)
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
	sub, err := farm.Submit(ctx, runner, farm.SubmitOptions{Tenant: "a", Graph: g, Cache: cache})
	if err != nil {
		t.Fatalf("submit as a runner user: %v", err)
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
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("worker as a runner user: %v", err)
		}
	}()
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

	start := time.Now()
	subj, _ := queue.FarmBuildSubject("a", "x86_64-linux", farm.NoFeatures)
	_, err = runner.PublishFarm(context.Background(), subj, "forged", []byte("{}"))
	fast(t, "a runner publishes a build request", start, err, queue.ErrPermissionDenied)
}
